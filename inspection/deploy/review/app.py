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

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from inspection.deploy.review.deps import HERE, ReviewApp, ReviewConfig, esc, get_state
from inspection.deploy.review.routes import admin, auth, parts, queue, stats
from inspection.deploy.store.schema import StoreUnavailable
from inspection.deploy.store.sql import SQLStore

__all__ = ["ReviewConfig", "create_app"]
MAX_BODY = 24 * 2**20          # bytes of a request body: a corrected map of a 12 MP frame as a PNG data URL fits


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
            response = JSONResponse({"error": f"request body over {self.limit // 2**20} MB"}, 413)
            return await response(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise HTTPException(413, f"request body over {self.limit // 2**20} MB")
            return message

        await self.app(scope, counted, send)


CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def create_app(cfg: ReviewConfig, store: SQLStore | None = None) -> FastAPI:
    app = FastAPI(title="Inspection review station", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(BodyLimit)
    app.state.review = ReviewApp(cfg, store)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    for area in (auth, queue, parts, stats, admin):
        app.include_router(area.routes)

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
            return HTMLResponse(f"<h1>{exc.status_code}</h1><p>{esc(exc.detail)}</p><a href='/'>back</a>",
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
