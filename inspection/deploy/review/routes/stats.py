"""Statistics: fail and false-alarm rates per station, product and day (a table and an inline SVG chart)."""
from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse

from inspection.deploy.review.accounts import User
from inspection.deploy.review.deps import ReviewApp, esc, get_state, page, user

routes = APIRouter()


@routes.get("/stats", response_class=HTMLResponse)
def stats(request: Request, days: int = 30, u: User = Depends(user), st: ReviewApp = Depends(get_state)):
    rows = st.store.daily(min(max(days, 1), 366))
    return page(request, "stats.html", u, rows=rows, days=days, chart=_chart(rows),
                products=any(r["product"] for r in rows))


@routes.get("/api/stats")
def stats_api(days: int = 30, u: User = Depends(user), st: ReviewApp = Depends(get_state)):
    return {"days": st.store.daily(min(max(days, 1), 366))}


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

    def x(i):
        return pad + (width - 2 * pad) * (i / (n - 1) if n > 1 else 0.5)

    def y(v):
        return height - pad - (height - 2 * pad) * v

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="fail and false-alarm rate per day">',
             f'<line x1="{pad}" y1="{y(0)}" x2="{width - pad}" y2="{y(0)}" stroke="#999"/>',
             f'<line x1="{pad}" y1="{y(1)}" x2="{width - pad}" y2="{y(1)}" stroke="#eee"/>',
             f'<text x="4" y="{y(1) + 4}" font-size="11">100%</text>',
             f'<text x="12" y="{y(0) + 4}" font-size="11">0%</text>']
    for i, d in enumerate(order):
        if n <= 14 or i % max(1, n // 10) == 0:
            parts.append(f'<text x="{x(i)}" y="{height - 12}" font-size="10" text-anchor="middle">{esc(d[5:])}</text>')
    for k, (name, (vals, color)) in enumerate(series.items()):
        pts = [(x(i), y(v)) for i, v in enumerate(vals) if v is not None]
        if pts:
            parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="'
                         + " ".join(f"{a:.1f},{b:.1f}" for a, b in pts) + '"/>')
            parts += [f'<circle cx="{a:.1f}" cy="{b:.1f}" r="3" fill="{color}"/>' for a, b in pts]
        parts.append(f'<text x="{pad + 160 * k}" y="14" font-size="12" fill="{color}">■ {name}</text>')
    return "".join(parts) + "</svg>"
