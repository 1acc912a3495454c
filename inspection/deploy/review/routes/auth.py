"""Log in and out (the session cookie; a login sent from another site's page is refused)."""
from __future__ import annotations

from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool

from inspection.deploy.review.accounts import AuthError, User
from inspection.deploy.review.deps import (
    COOKIE,
    ReviewApp,
    csrf,
    form,
    get_state,
    local_path,
    page,
)

routes = APIRouter()


@routes.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str = "/", st: ReviewApp = Depends(get_state)):
    return page(request, "login.html", None, next=local_path(next), error=None)


@routes.post("/login")
async def login(request: Request, st: ReviewApp = Depends(get_state)):
    # login CSRF (another site logging a browser into an account of its choosing): a browser names the page a
    # form was sent from; a login sent from another site's page is refused
    origin = request.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != request.headers.get("host", ""):
        raise HTTPException(403, "log in from this review station's own page")
    fields = await form(request)
    nxt = local_path(fields.get("next", "/"))
    try:
        token, _ = await run_in_threadpool(st.accounts.login, str(fields.get("user", ""))[:200],
                                           str(fields.get("password", ""))[:1000],
                                           request.client.host if request.client else "unknown")
    except AuthError as exc:
        refused = page(request, "login.html", None, next=nxt, error=str(exc))
        refused.status_code = 401
        return refused
    resp = RedirectResponse(nxt, 303)
    resp.set_cookie(COOKIE, token, httponly=True, samesite="strict", secure=st.cfg.secure_cookies,
                    max_age=12 * 3600)
    return resp


@routes.post("/logout")
def logout(request: Request, u: User = Depends(csrf), st: ReviewApp = Depends(get_state)):
    st.accounts.logout(request.cookies.get(COOKIE))
    resp = RedirectResponse("/login", 303)
    resp.delete_cookie(COOKIE)
    return resp
