"""What the review station's routes share: its state (store, accounts, re-scoring runtime), the session, CSRF
and role checks as FastAPI dependencies, page rendering and request parsing."""
from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

from fastapi import Depends, HTTPException, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from inspection.deploy.review.accounts import Accounts, User, default_accounts
from inspection.deploy.runtime import Runtime
from inspection.deploy.store.factory import open_store
from inspection.deploy.store.sql import SQLStore

HERE = Path(__file__).parent
COOKIE = "review_session"
TEMPLATES = Jinja2Templates(directory=HERE / "templates")


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

    def __init__(self, cfg: ReviewConfig, store: SQLStore | None = None):
        self.cfg = cfg
        self.store = store or open_store(cfg.db, cfg.log, create=False, offline_ok=True)
        self.accounts = Accounts(cfg.accounts or default_accounts(cfg.log))
        self.runtime = Runtime(cfg.package, backend="cpu", threads=2) if cfg.package else None

    def defect_types(self) -> list[str]:
        default = self.cfg.defect_types or ([c for c in self.runtime.classes if c != "good"] if self.runtime else [])
        return self.accounts.setting("defect_types", default)


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
    token = request.headers.get("x-csrf-token") or (await form(request)).get("csrf", "")
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


async def form(request: Request) -> dict:
    """The posted form (cached by Starlette, so a dependency and the route may both read it); {} for JSON."""
    if not request.headers.get("content-type", "").startswith(("application/x-www-form-urlencoded",
                                                                "multipart/form-data")):
        return {}
    return dict(await request.form())


async def json_body(request: Request) -> dict:
    """The request's JSON object; 415 for another content type (a form's body is read by the CSRF check already,
    and a JSON route never takes a form), 400 for a body that is not a JSON object."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise HTTPException(415, f"request body must be JSON with Content-Type: application/json, got "
                                 f"{ctype[:60] or 'no content type'!r}")
    try:
        body = await request.json()
    except (ValueError, RecursionError):  # RecursionError: deeply nested arrays
        raise HTTPException(400, "request body must be JSON (at most a few hundred levels deep)") from None
    if not isinstance(body, dict):
        raise HTTPException(400, "request body must be a JSON object")
    return body


def local_path(path: str) -> str:
    """Only same-site paths after login (no open redirect)."""
    return path if path.startswith("/") and not path.startswith("//") and "\\" not in path else "/"


def esc(text) -> str:
    return escape(str(text))
