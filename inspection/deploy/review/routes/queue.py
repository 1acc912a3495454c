"""The queue of logged parts: filters, counts by review status and by product, key-based paging (HTML and
JSON)."""
from __future__ import annotations

import math
import time
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse

from inspection.deploy.review.accounts import User
from inspection.deploy.review.deps import ReviewApp, get_state, page, user
from inspection.deploy.store.schema import DAY, FailureRecord
from inspection.deploy.store.sql import FILTERS

PAGE = 50
QUERY_KEYS = ("station", "product", "verdict", "review_status", "defect_type", "model_version", "date_from",
              "date_to", "score_min", "score_max", "view")   # view: list (default) | grid; kept in links, not a filter
PAGING = ("before", "limit")
routes = APIRouter()


def queue(request: Request, st: ReviewApp) -> dict:
    q = {k: request.query_params.get(k, "") for k in QUERY_KEYS}
    unknown = sorted(set(request.query_params) - {*QUERY_KEYS, *PAGING})
    if unknown:  # a misspelt filter would otherwise show every part as if it had filtered
        raise HTTPException(400, f"unknown query parameter {unknown[0][:40]!r}; expected "
                                 f"{', '.join((*QUERY_KEYS, *PAGING))}")
    try:
        filters = filters_of(q)
        before = _cursor(request.query_params.get("before"))
        limit = min(max(int(request.query_params.get("limit", PAGE)), 1), 500)
        rows = st.store.records(limit=limit + 1, before=before, **filters)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None
    more = len(rows) > limit
    rows = rows[:limit]
    status_counts = st.store.count_by_status(**filters)
    product_counts = st.store.count_by_product(**{**filters, "product": None})  # each product under the others
    return {"query": q, "filters": filters, "rows": rows, "total": sum(status_counts.values()),
            "status_counts": status_counts, "product_counts": {k: v for k, v in product_counts.items() if k},
            "next": f"{rows[-1].ts!r}:{rows[-1].id}" if more else None}


@routes.get("/", response_class=HTMLResponse)
def queue_page(request: Request, u: User = Depends(user), st: ReviewApp = Depends(get_state)):
    started = time.perf_counter()
    qs = queue(request, st)
    view = "grid" if qs["query"]["view"] == "grid" else "list"
    other = query_string({**qs["query"], "view": "" if view == "grid" else "grid"})
    return page(request, "queue.html", u, **qs, qs=query_string(qs["query"]), stations=st.store.stations(),
                products=st.store.products(), view=view, other_view=other,
                verdicts=("fail", "review", "error"), statuses=("unreviewed", "confirmed", "false_alarm", "unsure"),
                defect_types=st.defect_types(), ms=1000 * (time.perf_counter() - started))


@routes.get("/api/parts")
def queue_api(request: Request, u: User = Depends(user), st: ReviewApp = Depends(get_state)):
    qs = queue(request, st)
    return {"total": qs["total"], "status_counts": qs["status_counts"], "product_counts": qs["product_counts"],
            "next": qs["next"], "parts": [_part_json(r) for r in qs["rows"]]}


def filters_of(q: dict) -> dict:
    """Query parameters → store filters; dates are local days, the end day included."""
    f = {k: q[k] or None for k in ("station", "product", "verdict", "review_status", "defect_type", "model_version",
                                   "score_min", "score_max")}
    for key, name, plus in (("date_from", "ts_from", 0), ("date_to", "ts_to", 86400)):
        if q.get(key):
            try:
                if not DAY.fullmatch(q[key]):
                    raise ValueError
                f[name] = time.mktime(time.strptime(q[key], "%Y-%m-%d")) + plus
            except ValueError:
                raise ValueError(f"{key} must be a date YYYY-MM-DD, got {q[key]!r}") from None
    assert set(f) <= set(FILTERS)
    return f


def _cursor(text: str | None) -> tuple[float, int] | None:
    if not text:
        return None
    try:
        ts, rid = text.split(":")
        if not (math.isfinite(float(ts)) and abs(int(rid)) < 2**63):
            raise ValueError
        return float(ts), int(rid)
    except ValueError:
        raise ValueError(f"before must be <ts>:<id> from the previous page, got {text!r}") from None


def query_string(q: dict) -> str:
    return urlencode({k: v for k, v in q.items() if v})


def _part_json(r: FailureRecord) -> dict:
    return {"id": r.id, "part_id": r.part_id, "station": r.station, "product": r.product, "ts": r.ts,
            "verdict": r.verdict, "score": r.score, "defect_type": r.defect_type, "review_status": r.review_status,
            "model_version": r.model_version, "roi": r.roi, "model_roi": r.model_roi, "boxes": r.boxes,
            "damaged": r.damaged}
