"""What the review station's routes share: its state (store, accounts, the packages that re-score), the session,
CSRF and role checks as FastAPI dependencies, page rendering and request parsing.

Each part is drawn and re-scored with the package that judged it: found by the record's model version among
the packages, registry pointers and registry folders the station was given (a station with several products
gives one per product); a part whose model is in none of them can still be judged, and re-scoring says why it
is off."""
from __future__ import annotations

import collections
import hmac
import threading
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

from fastapi import Depends, HTTPException, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from inspection.deploy.package import PackageError, load_package
from inspection.deploy.registry import resolve_package
from inspection.deploy.review.accounts import Accounts, User, default_accounts
from inspection.deploy.runtime import Runtime
from inspection.deploy.store.factory import open_store
from inspection.deploy.store.schema import FailureRecord
from inspection.deploy.store.sql import SQLStore

HERE = Path(__file__).parent
COOKIE = "review_session"
TEMPLATES = Jinja2Templates(directory=HERE / "templates")


@dataclass
class ReviewConfig:
    log: Path                                # failure-log folder (failures.db + files)
    package: Path | None = None              # model package or registry pointer for re-scoring (None: off)
    accounts: Path | None = None             # default: <log>.accounts.db beside the log folder
    secure_cookies: bool = False             # set behind HTTPS
    defect_types: list[str] = field(default_factory=list)
    db: str = ""                             # failure-log database: "" = <log>/failures.db, or postgresql://...
    packages: list[Path] = field(default_factory=list)  # more packages, registry pointers or registry folders (the
                                             # other products'); each part is re-scored with the one that judged it

MODELS_LOADED = 4  # re-scoring models kept in memory (the most recently used)


class ReviewApp:
    """State shared by the routes: the store, the accounts, the packages that re-score."""

    def __init__(self, cfg: ReviewConfig, store: SQLStore | None = None):
        self.cfg = cfg
        self.store = store or open_store(cfg.db, cfg.log, create=False, offline_ok=True)
        self.accounts = Accounts(cfg.accounts or default_accounts(cfg.log))
        self.sources = [Path(p) for p in ([cfg.package] if cfg.package else []) + list(cfg.packages)]
        self.runtime = self._open(resolve_package(self.sources[0])) if self.sources else None  # the first one
        self._models: collections.OrderedDict[Path, Runtime] = collections.OrderedDict()
        if self.runtime is not None:
            self._models[self.runtime.root] = self.runtime
        self._found: dict[str, Path] = {}  # model version → its package (versions are never changed in place)
        self._lock = threading.Lock()

    @staticmethod
    def _open(path: Path) -> Runtime:
        return Runtime(path, backend="cpu", threads=2)

    def package_for(self, version: str) -> Path | None:
        """The package of a model version among those given: a package folder of that version, a registry
        pointer's registry (versions/<version>), a registry folder; None when none has it."""
        if version in self._found:
            return self._found[version]
        if not version or Path(version).name != version or version.startswith("."):  # stored text: not a path
            return None
        for source in self.sources:
            if (source / "versions").is_dir():
                candidates = [source / "versions" / version]  # a registry folder
            elif source.is_file():  # a pointer: its registry keeps every version beside it
                candidates = [source.parent / "versions" / version, resolve_package(source)]
            else:
                candidates = [source]
            for folder in candidates:
                try:
                    found = load_package(folder, verify_files=False)["model_version"] == version
                except PackageError:
                    continue
                if found:
                    self._found[version] = folder
                    return folder
        return None

    def runtime_for(self, record: FailureRecord) -> tuple[Runtime | None, str]:
        """The model that judged the part, loaded, or None and why re-scoring is off for it."""
        if not self.sources:
            return None, "re-scoring is off: start the review station with --package"
        folder = self.package_for(record.model_version)
        if folder is None:
            product = f" of product {record.product}" if record.product else ""
            return None, (f"re-scoring is off for this part: its model {record.model_version}{product} is in none "
                          f"of the packages or registries this station was given "
                          f"({', '.join(str(s) for s in self.sources)})")
        with self._lock:
            rt = self._models.get(folder)
            if rt is not None:
                self._models.move_to_end(folder)
                return rt, ""
        try:
            rt = self._open(folder)
        except (PackageError, RuntimeError, ValueError) as exc:
            return None, f"re-scoring is off for this part: its model's package {folder} cannot be loaded ({exc})"
        with self._lock:
            self._models[folder] = rt
            while len(self._models) > MODELS_LOADED:
                self._models.popitem(last=False)
        return rt, ""

    def model_roi(self, record: FailureRecord) -> list | None:
        """The region of the stored image the model saw: the record's; for parts logged before it was recorded,
        the judging package's own ROI (the first package's when that one is not found)."""
        if record.model_roi is not None:
            return record.model_roi
        rt = self.runtime_for(record)[0] or self.runtime
        return rt.roi if rt is not None else None

    def defect_types(self, record: FailureRecord | None = None) -> list[str]:
        """The defect types to choose from: set by a QA lead, else the classes of the part's model (the first
        package's without a part)."""
        rt = (self.runtime_for(record)[0] if record is not None else None) or self.runtime
        default = self.cfg.defect_types or ([c for c in rt.classes if c != "good"] if rt else [])
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
