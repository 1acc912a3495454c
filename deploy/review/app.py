"""The review station: QA engineers judge flagged parts, correct attention maps and re-score them, in a browser.

    inspection users add ana --role lead --log runs/demo/line/failures   # once: the first QA lead
    inspection review --log runs/demo/line/failures --package runs/demo/ours/package

Pages (server-rendered, plain HTML + one small script per page): the queue (filters, counts, key-based paging),
a part (overlay with opacity, boxes, verdict buttons and keyboard shortcuts, brush correction, re-score),
statistics (fail and false-alarm rates per station and day), and admin (users, defect types, audit, dataset
export; QA leads only). Reviews go through the failure store's interface (append-only history); accounts,
sessions and the audit trail live in their own file outside the log folder. Torch-free: re-scoring runs the package's
`rescore.onnx` through the runtime. One FastAPI router per area (auth, queue, parts, stats, admin); the
shared state reaches the routes as a dependency (`get_state`), and `create_app` only assembles them.
"""
from __future__ import annotations

import base64
import binascii
import hmac
import io
import math
import time
import zipfile
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from urllib.parse import quote, urlencode, urlsplit
from tempfile import TemporaryDirectory

import cv2
import numpy as np
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from deploy.review.auth import ROLES, Accounts, AuthError, User, default_accounts
from deploy.reviewed import export_reviewed
from deploy.runtime import FrameError, Runtime, read_frame
from deploy.store import (FILTERS, REVIEW_VERDICTS, FailureRecord, FailureStore, ReviewError, StoreUnavailable,
                          open_store)
from inspection.boxes import upsample_attention
from inspection.mapfile import decode_map, read_map_file

HERE = Path(__file__).parent
COOKIE = "review_session"
PAGE = 50
FILES = ("image", "overlay", "map")          # kinds of a part's own files that the browser may fetch
TEMPLATES = Jinja2Templates(directory=HERE / "templates")
QUERY_KEYS = ("station", "verdict", "review_status", "defect_type", "model_version", "date_from", "date_to",
              "score_min", "score_max")


@dataclass
class ReviewConfig:
    log: Path                                # failure-log folder (failures.db + files)
    package: Path | None = None              # model package for re-scoring (None: re-scoring is off)
    accounts: Path | None = None             # default: <log>.accounts.db beside the log folder
    secure_cookies: bool = False             # set behind HTTPS
    defect_types: list[str] = field(default_factory=list)
    db: str = ""                             # failure-log database: "" = <log>/failures.db, or postgresql://...


class ReviewApp:
    """State shared by the routes: the store, the accounts, the re-scoring runtime."""

    def __init__(self, cfg: ReviewConfig, store: FailureStore | None = None):
        self.cfg = cfg
        self.store = store or open_store(cfg.db, cfg.log, create=False, offline_ok=True)
        self.accounts = Accounts(cfg.accounts or default_accounts(cfg.log))
        self.runtime = Runtime(cfg.package, backend="cpu", threads=2) if cfg.package else None

    def defect_types(self) -> list[str]:
        default = self.cfg.defect_types or ([c for c in self.runtime.classes if c != "good"] if self.runtime else [])
        return self.accounts.setting("defect_types", default)


MAX_BODY = 24 * 2**20          # bytes of a request body: a corrected map of a 12 MP frame as a PNG data URL fits
MAX_MAP_PIXELS = 4096 * 4096   # a corrected map larger than its frame is refused from the PNG header, before decoding


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes gets 413 before it is read into memory, whether it
    announces its length or streams it in chunks."""

    def __init__(self, app, limit: int = MAX_BODY):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.limit:
            return await JSONResponse({"error": f"request body over {self.limit // 2**20} MB"}, 413)(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise HTTPException(413, f"request body over {self.limit // 2**20} MB")
            return message

        await self.app(scope, counted, send)


# -- sessions, CSRF, roles -----------------------------------------------------------------------------------
def get_state(request: Request) -> ReviewApp:
    return request.app.state.review


def user(request: Request) -> User:
    u = get_state(request).accounts.session(request.cookies.get(COOKIE))
    if u is None:
        raise HTTPException(401, "log in first")
    return u


async def csrf(request: Request, u: User = Depends(user)) -> User:
    """Every state-changing request carries the session's CSRF token (header or form field)."""
    token = request.headers.get("x-csrf-token") or (await _form(request)).get("csrf", "")
    # bytes: compare_digest refuses str with non-ASCII characters (a 500 before)
    if not token or not hmac.compare_digest(str(token).encode("utf-8", "replace"), u.csrf.encode()):
        raise HTTPException(403, "missing or wrong CSRF token; reload the page")
    return u


def lead(u: User = Depends(csrf)) -> User:
    if not u.lead:
        raise HTTPException(403, "QA leads only")
    return u


def lead_view(u: User = Depends(user)) -> User:
    if not u.lead:
        raise HTTPException(403, "QA leads only")
    return u


def page(request: Request, name: str, u: User | None, **ctx) -> HTMLResponse:
    return TEMPLATES.TemplateResponse(request, name, {"user": u, **ctx})


# -- login -----------------------------------------------------------------------------------------------
auth_routes = APIRouter()


@auth_routes.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str = "/", st: ReviewApp = Depends(get_state)):
    return page(request, "login.html", None, next=_local(next), error=None)


@auth_routes.post("/login")
async def login(request: Request, st: ReviewApp = Depends(get_state)):
    # login CSRF (another site logging a browser into an account of its choosing): a browser names the page a
    # form was sent from; a login sent from another site's page is refused
    origin = request.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != request.headers.get("host", ""):
        raise HTTPException(403, "log in from this review station's own page")
    form = await _form(request)
    nxt = _local(form.get("next", "/"))
    try:
        token, _ = await run_in_threadpool(st.accounts.login, str(form.get("user", ""))[:200],
                                           str(form.get("password", ""))[:1000],
                                           request.client.host if request.client else "unknown")
    except AuthError as exc:
        refused = page(request, "login.html", None, next=nxt, error=str(exc))
        refused.status_code = 401
        return refused
    resp = RedirectResponse(nxt, 303)
    resp.set_cookie(COOKIE, token, httponly=True, samesite="strict", secure=st.cfg.secure_cookies,
                    max_age=12 * 3600)
    return resp


@auth_routes.post("/logout")
def logout(request: Request, u: User = Depends(csrf), st: ReviewApp = Depends(get_state)):
    st.accounts.logout(request.cookies.get(COOKIE))
    resp = RedirectResponse("/login", 303)
    resp.delete_cookie(COOKIE)
    return resp


# -- the queue -------------------------------------------------------------------------------------------
queue_routes, part_routes = APIRouter(), APIRouter()


def queue(request: Request, st: ReviewApp) -> dict:
    q = {k: request.query_params.get(k, "") for k in QUERY_KEYS}
    try:
        filters = _filters(q)
        before = _cursor(request.query_params.get("before"))
        limit = min(max(int(request.query_params.get("limit", PAGE)), 1), 500)
        rows = st.store.records(limit=limit + 1, before=before, **filters)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None
    more = len(rows) > limit
    rows = rows[:limit]
    status_counts = st.store.count_by_status(**filters)
    return {"query": q, "filters": filters, "rows": rows, "total": sum(status_counts.values()),
            "status_counts": status_counts, "next": f"{rows[-1].ts!r}:{rows[-1].id}" if more else None}


@queue_routes.get("/", response_class=HTMLResponse)
def queue_page(request: Request, u: User = Depends(user), st: ReviewApp = Depends(get_state)):
    started = time.perf_counter()
    qs = queue(request, st)
    return page(request, "queue.html", u, **qs, qs=_qs(qs["query"]), stations=st.store.stations(),
                verdicts=("fail", "review", "error"), statuses=("unreviewed", "confirmed", "false_alarm", "unsure"),
                defect_types=st.defect_types(), ms=1000 * (time.perf_counter() - started))


@queue_routes.get("/api/parts")
def queue_api(request: Request, u: User = Depends(user), st: ReviewApp = Depends(get_state)):
    qs = queue(request, st)
    return {"total": qs["total"], "status_counts": qs["status_counts"], "next": qs["next"],
            "parts": [_part_json(r) for r in qs["rows"]]}


# -- one part --------------------------------------------------------------------------------------------
def record(st: ReviewApp, part_id: int) -> FailureRecord:
    r = st.store.get(part_id) if 0 < part_id < 2**63 else None  # SQL integers are 64-bit
    if r is None:
        raise HTTPException(404, f"no logged part with id {part_id}")
    return r


@part_routes.get("/parts/{part_id}", response_class=HTMLResponse)
def part_page(request: Request, part_id: int, u: User = Depends(user), st: ReviewApp = Depends(get_state)):
    r = record(st, part_id)
    q = {k: request.query_params.get(k, "") for k in QUERY_KEYS}
    try:
        newer, older = st.store.neighbours(r, **_filters(q))
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None
    frame = _frame(st.store, r)
    size = None if frame is None else (frame.shape[1], frame.shape[0])
    return page(request, "part.html", u, r=r, qs=_qs(q), newer=newer, older=older,
                history=st.store.reviews(r.id), image_ok=size is not None, size=size,
                image_missing=r.files.get("image", "(none logged)") if size is None else None,
                defect_types=st.defect_types(), can_rescore=st.runtime is not None,
                package_version=st.runtime.version if st.runtime else None)


@part_routes.get("/parts/{part_id}/file/{kind}")
def part_file(part_id: int, kind: str, u: User = Depends(user), st: ReviewApp = Depends(get_state)):
    path = _file(st.store, record(st, part_id), kind) if kind in FILES else None
    if path is None:
        raise HTTPException(404, f"part {part_id} has no {kind[:20]!r} file")
    return Response(path.read_bytes(), media_type=_media(path), headers={"Cache-Control": "private, max-age=3600"})


@part_routes.get("/parts/{part_id}/attention.png")
def attention_png(part_id: int, corrected: int = 0, u: User = Depends(user), st: ReviewApp = Depends(get_state)):
    """The map to paint on, 8-bit at the frame's size: the latest correction, or the model's map upsampled."""
    r = record(st, part_id)
    att = _attention(st, r, bool(corrected), _hw(_frame(st.store, r)))
    if att is None:
        raise HTTPException(404, f"part {part_id} has no attention map")
    return Response(cv2.imencode(".png", (att * 255 + 0.5).astype(np.uint8))[1].tobytes(), media_type="image/png",
                    headers={"Cache-Control": "no-store"})


@part_routes.post("/api/parts/{part_id}/review")
async def review(request: Request, part_id: int, u: User = Depends(csrf), st: ReviewApp = Depends(get_state)):
    body = await _json(request)
    r = record(st, part_id)
    verdict, defect_type, comment = body.get("verdict"), body.get("defect_type") or None, body.get("comment", "")
    if not isinstance(verdict, str) or verdict not in REVIEW_VERDICTS:
        raise HTTPException(400, f"verdict must be one of {', '.join(REVIEW_VERDICTS)}, got {str(verdict)[:40]!r}")
    known = st.defect_types()
    if defect_type is not None and (not isinstance(defect_type, str) or len(defect_type) > 64
                                    or (known and defect_type not in known)):
        raise HTTPException(400, "defect_type must be one of " + (", ".join(known) or "the configured types")
                            + f", got {str(defect_type)[:40]!r}")
    if not isinstance(comment, str):
        raise HTTPException(400, "comment must be text")
    defect_type = defect_type if verdict == "defect" else None
    corrected = await run_in_threadpool(lambda: _decode_map(body.get("corrected"), _hw(_frame(st.store, r))))
    try:
        rid = await run_in_threadpool(st.store.add_review, r.id, u.name, verdict, defect_type, comment[:2000],
                                      corrected=corrected)
    except ReviewError as exc:
        raise HTTPException(400, str(exc)) from None
    return {"review_id": rid, "history": [_review_json(v) for v in st.store.reviews(r.id)]}


@part_routes.post("/api/parts/{part_id}/rescore")
async def rescore(request: Request, part_id: int, u: User = Depends(csrf), st: ReviewApp = Depends(get_state)):
    if st.runtime is None:
        raise HTTPException(409, "re-scoring is off: start the review station with --package")
    body = await _json(request)
    r = record(st, part_id)
    return await run_in_threadpool(_rescore, st, r, body, u)


def _rescore(st: ReviewApp, r: FailureRecord, body: dict, u: User) -> dict:  # decoding and ONNX: off the event loop
    part_id = r.id
    frame = _frame(st.store, r)
    if frame is None:
        raise HTTPException(409, f"part {part_id}: its image file is missing or unreadable, so it cannot be "
                                 "re-scored")
    corrected = _decode_map(body.get("corrected"), frame.shape[:2])
    if corrected is None:
        raise HTTPException(400, "send the corrected map (field 'corrected', a PNG data URL)")
    try:
        shapes = (frame.shape[:2], tuple(st.runtime.attention_size))
        if corrected.shape not in shapes:
            raise HTTPException(400, f"corrected map for part {r.part_id} has shape {corrected.shape}; expected "
                                     + " or ".join(f"{h}x{w}" for h, w in shapes) + " (frame or model map)")
        after = st.runtime.rescore(frame, corrected, color="BGR")
        before = st.runtime.rescore(frame, _attention(st, r, False, frame.shape[:2]), color="BGR")
    except FrameError as exc:
        raise HTTPException(400, str(exc)) from None
    st.accounts.audit(u.name, "rescore", {"part": part_id, "score": after["defect_score"]})
    return {"before": before, "after": after, "logged_score": r.score, "model_version": st.runtime.version,
            "part_model_version": r.model_version}


# -- statistics ------------------------------------------------------------------------------------------
stat_routes = APIRouter()


@stat_routes.get("/stats", response_class=HTMLResponse)
def stats(request: Request, days: int = 30, u: User = Depends(user), st: ReviewApp = Depends(get_state)):
    rows = st.store.daily(min(max(days, 1), 366))
    return page(request, "stats.html", u, rows=rows, days=days, chart=_chart(rows))


@stat_routes.get("/api/stats")
def stats_api(days: int = 30, u: User = Depends(user), st: ReviewApp = Depends(get_state)):
    return {"days": st.store.daily(min(max(days, 1), 366))}


# -- QA lead: users, settings, audit, export ------------------------------------------------------------
admin_routes = APIRouter()


@admin_routes.get("/admin", response_class=HTMLResponse)
def admin(request: Request, u: User = Depends(lead_view), message: str = "", st: ReviewApp = Depends(get_state)):
    return page(request, "admin.html", u, users=st.accounts.users(), roles=ROLES, message=message,
                defect_types=", ".join(st.defect_types()), audit=st.accounts.audit_log(100))


@admin_routes.post("/admin/users")
async def admin_users(request: Request, u: User = Depends(lead), st: ReviewApp = Depends(get_state)):
    f = await _form(request)
    try:
        if f.get("action") == "add":
            st.accounts.add_user(str(f.get("name", "")), str(f.get("password", "")), str(f.get("role", "")),
                                    by=u.name)
        elif f.get("action") == "password":
            st.accounts.set_password(str(f.get("name", "")), str(f.get("password", "")), by=u.name)
        elif f.get("action") in ("disable", "enable"):
            if f.get("name") == u.name:
                raise AuthError("you cannot disable your own account")
            st.accounts.set_active(str(f.get("name", "")), f.get("action") == "enable", by=u.name)
        else:
            raise AuthError(f"unknown action {f.get('action')!r}")
    except AuthError as exc:
        return RedirectResponse(f"/admin?message={_url(str(exc))}", 303)
    return RedirectResponse("/admin?message=saved", 303)


@admin_routes.post("/admin/settings")
async def admin_settings(request: Request, u: User = Depends(lead), st: ReviewApp = Depends(get_state)):
    types = [t.strip() for t in str((await _form(request)).get("defect_types", "")).split(",") if t.strip()]
    bad = [t for t in types if not all(c.isalnum() or c in "-_" for c in t)]
    if bad or not types:
        return RedirectResponse(f"/admin?message={_url(f'defect types: letters, digits, - and _ only; got {bad or types}')}", 303)
    st.accounts.set_setting("defect_types", types, by=u.name)
    return RedirectResponse("/admin?message=saved", 303)


@admin_routes.post("/admin/export")
def admin_export(u: User = Depends(lead), st: ReviewApp = Depends(get_state)):
    """The reviewed parts as a dataset folder in the trainer's layout, zipped (good/, defect/<type>/, corrected/)."""
    buf = io.BytesIO()
    with TemporaryDirectory() as tmp:
        counts = export_reviewed(st.store, Path(tmp) / "reviewed")
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
            for path in sorted((Path(tmp) / "reviewed").rglob("*")):
                if path.is_file():
                    z.write(path, path.relative_to(tmp).as_posix())
    st.accounts.audit(u.name, "export", counts)
    name = f"reviewed-{time.strftime('%Y%m%d-%H%M%S')}.zip"
    return Response(buf.getvalue(), media_type="application/zip",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})


def create_app(cfg: ReviewConfig, store: FailureStore | None = None) -> FastAPI:
    app = FastAPI(title="Inspection review station", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(BodyLimit)
    app.state.review = ReviewApp(cfg, store)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    for router in (auth_routes, queue_routes, part_routes, stat_routes, admin_routes):
        app.include_router(router)

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault("Content-Security-Policy", CSP)  # scripts are files of ours, never inline
        return response

    @app.exception_handler(HTTPException)
    async def refused(request: Request, exc: HTTPException):
        wants_html = request.method == "GET" and "text/html" in request.headers.get("accept", "")
        if exc.status_code == 401 and wants_html:
            return RedirectResponse(f"/login?next={request.url.path}", 303)
        if wants_html:
            return HTMLResponse(f"<h1>{exc.status_code}</h1><p>{_esc(exc.detail)}</p><a href='/'>back</a>",
                                exc.status_code)
        return JSONResponse({"error": exc.detail}, exc.status_code)

    @app.exception_handler(StoreUnavailable)
    async def store_down(request: Request, exc: StoreUnavailable):  # database restarting: try again shortly
        return await refused(request, HTTPException(503, f"the failure log is unavailable: {exc}"))

    @app.get("/health")
    def health(st: ReviewApp = Depends(get_state)):
        try:
            st.store.count(review_status="unreviewed")
        except StoreUnavailable as exc:
            return JSONResponse({"ok": False, "error": f"the failure log is unavailable: {exc}"}, 503)
        return {"ok": True, "rescore": st.runtime is not None}

    return app


# -- helpers -------------------------------------------------------------------------------------------------------
def _filters(q: dict) -> dict:
    """Query parameters → store filters; dates are local days, the end day included."""
    f = {k: q[k] or None for k in ("station", "verdict", "review_status", "defect_type", "model_version", "score_min",
                                   "score_max")}
    for key, name, plus in (("date_from", "ts_from", 0), ("date_to", "ts_to", 86400)):
        if q.get(key):
            try:
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


def _qs(q: dict) -> str:
    return urlencode({k: v for k, v in q.items() if v})


def _url(text: str) -> str:
    return quote(text)


def _local(path: str) -> str:
    """Only same-site paths after login (no open redirect)."""
    return path if path.startswith("/") and not path.startswith("//") and "\\" not in path else "/"


def _esc(text) -> str:
    return escape(str(text))


def _file(store: FailureStore, r: FailureRecord, kind: str) -> Path | None:
    return store.stored_file(r.files.get(kind), kind)


def _media(path: Path) -> str:
    return {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".bmp": "image/bmp",
            ".tif": "image/tiff", ".tiff": "image/tiff"}.get(path.suffix.lower(), "application/octet-stream")


def _frame(store: FailureStore, r: FailureRecord) -> np.ndarray | None:
    """The part's stored frame as the camera gave it, or None when it is missing or unreadable."""
    path = _file(store, r, "image")
    try:
        return None if path is None else read_frame(path)
    except FrameError:
        return None


def _hw(frame: np.ndarray | None) -> tuple[int, int] | None:
    return None if frame is None else frame.shape[:2]


def _attention(state: ReviewApp, r: FailureRecord, corrected: bool, hw: tuple[int, int] | None) -> np.ndarray | None:
    """[0, 1] map at the frame's size hw (the model's size when the frame is missing)."""
    if corrected:
        for review in reversed(state.store.reviews(r.id)):
            path = state.store.stored_file(review.files.get("corrected_full"), "corrected_full")
            if path is not None:
                return read_map_file(path)
    att = read_map_file(_file(state.store, r, "map"))
    if att is None or hw is None:
        return att
    return upsample_attention(att, hw, state.runtime.roi if state.runtime else None)


def _decode_map(data, hw: tuple[int, int] | None) -> np.ndarray | None:
    """A corrected map from the browser: a PNG data URL (gray or RGBA, value in the red channel) → [0, 1]."""
    if data in (None, ""):
        return None
    if not isinstance(data, str):
        raise HTTPException(400, "corrected map must be a PNG data URL string")
    try:
        raw = base64.b64decode(data.split(",", 1)[1] if data.startswith("data:") else data, validate=True)
    except (binascii.Error, IndexError):
        raise HTTPException(400, "corrected map is not valid base64") from None
    if raw[:8] != b"\x89PNG\r\n\x1a\n" or raw[12:16] != b"IHDR":
        raise HTTPException(400, "corrected map must be a PNG")
    w, h = int.from_bytes(raw[16:20], "big"), int.from_bytes(raw[20:24], "big")
    if w * h > (hw[0] * hw[1] if hw else MAX_MAP_PIXELS) or w * h > MAX_MAP_PIXELS:
        raise HTTPException(400, f"corrected map is {w}x{h} px, larger than its part's image"
                                 + (f" ({hw[1]}x{hw[0]})" if hw else ""))
    att = decode_map(raw)
    if att is None:
        raise HTTPException(400, "corrected map is not a readable PNG")
    if hw is not None and att.shape != hw and abs(att.shape[1] / att.shape[0] - hw[1] / hw[0]) < 0.02 * hw[1] / hw[0]:
        att = cv2.resize(att, (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR)  # painted on a scaled-down canvas
    return att


async def _form(request: Request) -> dict:
    """The posted form (cached by Starlette, so a dependency and the route may both read it); {} for JSON."""
    if not request.headers.get("content-type", "").startswith(("application/x-www-form-urlencoded",
                                                                "multipart/form-data")):
        return {}
    return dict(await request.form())


async def _json(request: Request) -> dict:
    try:
        body = await request.json()
    except (ValueError, RecursionError):  # RecursionError: deeply nested arrays
        raise HTTPException(400, "request body must be JSON (at most a few hundred levels deep)") from None
    if not isinstance(body, dict):
        raise HTTPException(400, "request body must be a JSON object")
    return body


def _part_json(r: FailureRecord) -> dict:
    return {"id": r.id, "part_id": r.part_id, "station": r.station, "ts": r.ts, "verdict": r.verdict,
            "score": r.score, "defect_type": r.defect_type, "review_status": r.review_status,
            "model_version": r.model_version, "boxes": r.boxes, "damaged": r.damaged}


def _review_json(v) -> dict:
    return {"id": v.id, "reviewer": v.reviewer, "ts": v.ts, "verdict": v.verdict, "defect_type": v.defect_type,
            "comment": v.comment, "corrected": "corrected_full" in v.files}


CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def _chart(rows: list[dict], width: int = 760, height: int = 220) -> str:
    """An inline SVG: fail rate and false-alarm rate per day (all stations together)."""
    days: dict[str, list[int]] = {}
    for r in rows:
        d = days.setdefault(r["day"], [0, 0, 0, 0])
        d[0] += r["inspected"]
        d[1] += r["fail"]
        d[2] += r["false_alarm"]
        d[3] += r["false_alarm"] + r["confirmed"]
    if not days:
        return "<p>No parts inspected in this period.</p>"
    order = sorted(days)
    series = {"fail rate": ([days[d][1] / days[d][0] if days[d][0] else None for d in order], "#d62728"),
              "false-alarm rate": ([days[d][2] / days[d][3] if days[d][3] else None for d in order], "#1f77b4")}
    pad, n = 40, len(order)
    x = (lambda i: pad + (width - 2 * pad) * (i / (n - 1) if n > 1 else 0.5))
    y = (lambda v: height - pad - (height - 2 * pad) * v)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="fail and false-alarm rate per day">',
             f'<line x1="{pad}" y1="{y(0)}" x2="{width - pad}" y2="{y(0)}" stroke="#999"/>',
             f'<line x1="{pad}" y1="{y(1)}" x2="{width - pad}" y2="{y(1)}" stroke="#eee"/>',
             f'<text x="4" y="{y(1) + 4}" font-size="11">100%</text><text x="12" y="{y(0) + 4}" font-size="11">0%</text>']
    for i, d in enumerate(order):
        if n <= 14 or i % max(1, n // 10) == 0:
            parts.append(f'<text x="{x(i)}" y="{height - 12}" font-size="10" text-anchor="middle">{_esc(d[5:])}</text>')
    for k, (name, (vals, color)) in enumerate(series.items()):
        pts = [(x(i), y(v)) for i, v in enumerate(vals) if v is not None]
        if pts:
            parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="'
                         + " ".join(f"{a:.1f},{b:.1f}" for a, b in pts) + '"/>')
            parts += [f'<circle cx="{a:.1f}" cy="{b:.1f}" r="3" fill="{color}"/>' for a, b in pts]
        parts.append(f'<text x="{pad + 160 * k}" y="14" font-size="12" fill="{color}">■ {name}</text>')
    return "".join(parts) + "</svg>"
