"""QA leads only: users and roles, the defect types offered, the audit trail, the reviewed parts as a dataset."""
from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path
from tempfile import TemporaryDirectory
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from inspection.deploy.review.accounts import ROLES, AuthError, User
from inspection.deploy.review.deps import (
    ReviewApp,
    form,
    get_state,
    lead,
    lead_view,
    page,
)
from inspection.deploy.store.to_dataset import export_reviewed

routes = APIRouter()


@routes.get("/admin", response_class=HTMLResponse)
def admin(request: Request, u: User = Depends(lead_view), message: str = "", st: ReviewApp = Depends(get_state)):
    return page(request, "admin.html", u, users=st.accounts.users(), roles=ROLES, message=message,
                defect_types=", ".join(st.defect_types()), audit=st.accounts.audit_log(100))


@routes.post("/admin/users")
async def admin_users(request: Request, u: User = Depends(lead), st: ReviewApp = Depends(get_state)):
    f = await form(request)
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
        return RedirectResponse(f"/admin?message={quote(str(exc))}", 303)
    return RedirectResponse("/admin?message=saved", 303)


@routes.post("/admin/settings")
async def admin_settings(request: Request, u: User = Depends(lead), st: ReviewApp = Depends(get_state)):
    types = [t.strip() for t in str((await form(request)).get("defect_types", "")).split(",") if t.strip()]
    bad = [t for t in types if not all(c.isalnum() or c in "-_" for c in t)]
    if bad or not types:
        message = quote(f"defect types: letters, digits, - and _ only; got {bad or types}")
        return RedirectResponse(f"/admin?message={message}", 303)
    st.accounts.set_setting("defect_types", types, by=u.name)
    return RedirectResponse("/admin?message=saved", 303)


@routes.post("/admin/export")
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
