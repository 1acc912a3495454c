"""One part: its page, files and attention map; the review (verdict, defect type, corrected map) and re-scoring
with a corrected map through the rescore.onnx of the package that judged it (deps.ReviewApp.runtime_for); the
map is drawn over the region of the stored image that model saw (the record's model_roi)."""
from __future__ import annotations

import base64
import binascii
from pathlib import Path

import cv2
import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from inspection.core.boxes import upsample_attention
from inspection.core.imageio import ImageError, check_pixels, read_file
from inspection.core.mapfile import decode_map, read_map_file
from inspection.deploy.review.accounts import User
from inspection.deploy.review.deps import (
    ReviewApp,
    csrf,
    get_state,
    json_body,
    page,
    user,
)
from inspection.deploy.review.routes.queue import QUERY_KEYS, filters_of, query_string
from inspection.deploy.runtime import FrameError, read_frame
from inspection.deploy.store.schema import REVIEW_VERDICTS, FailureRecord, ReviewError
from inspection.deploy.store.sql import SQLStore
from inspection.deploy.store.summary import part_picture

FILES = ("image", "overlay", "map")          # kinds of a part's own files that the browser may fetch
THUMB = 240                    # px, the long side of a queue-grid thumbnail
MAX_BULK = 500                 # parts in one bulk review (a queue page holds at most 500)
MAX_MAP_PIXELS = 4096 * 4096   # a corrected map larger than its frame is refused from the PNG header, before decoding
routes = APIRouter()


def record(st: ReviewApp, part_id: int) -> FailureRecord:
    r = st.store.get(part_id) if 0 < part_id < 2**63 else None  # SQL integers are 64-bit
    if r is None:
        raise HTTPException(404, f"no logged part with id {part_id}")
    return r


@routes.get("/parts/{part_id}", response_class=HTMLResponse)
def part_page(request: Request, part_id: int, u: User = Depends(user), st: ReviewApp = Depends(get_state)):
    r = record(st, part_id)
    q = {k: request.query_params.get(k, "") for k in QUERY_KEYS}
    try:
        newer, older = st.store.neighbours(r, **filters_of(q))
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None
    frame = _frame(st.store, r)
    size = None if frame is None else (frame.shape[1], frame.shape[0])
    rt, rescore_off = st.runtime_for(r)
    return page(request, "part.html", u, r=r, qs=query_string(q), newer=newer, older=older,
                history=st.store.reviews(r.id), image_ok=size is not None, size=size,
                image_missing=r.files.get("image", "(none logged)") if size is None else None,
                defect_types=st.defect_types(r), can_rescore=rt is not None, rescore_off=rescore_off,
                package_version=rt.version if rt else None)


@routes.get("/parts/{part_id}/file/{kind}")
def part_file(part_id: int, kind: str, u: User = Depends(user), st: ReviewApp = Depends(get_state)):
    path = _file(st.store, record(st, part_id), kind) if kind in FILES else None
    if path is None:
        raise HTTPException(404, f"part {part_id} has no {kind[:20]!r} file")
    try:  # checked as if decoded here: a browser is not sent an image bomb or a format the line never writes
        data = read_file(path)
        check_pixels(data, path.name)
    except ImageError as exc:
        raise HTTPException(404, f"part {part_id}: its {kind} file is not shown: {exc}") from None
    return Response(data, media_type=_media(path), headers={"Cache-Control": "private, max-age=3600"})


@routes.get("/parts/{part_id}/attention.png")
def attention_png(part_id: int, corrected: int = 0, u: User = Depends(user), st: ReviewApp = Depends(get_state)):
    """The map to paint on, 8-bit at the frame's size: the latest correction, or the model's map upsampled."""
    r = record(st, part_id)
    att = _attention(st, r, bool(corrected), _hw(_frame(st.store, r)))
    if att is None:
        raise HTTPException(404, f"part {part_id} has no attention map")
    return Response(cv2.imencode(".png", (att * 255 + 0.5).astype(np.uint8))[1].tobytes(), media_type="image/png",
                    headers={"Cache-Control": "no-store"})


@routes.get("/parts/{part_id}/thumb.jpg")
def thumbnail(part_id: int, u: User = Depends(user), st: ReviewApp = Depends(get_state)):
    """The queue grid's picture of a part (store/summary.py part_picture: image, map and boxes as the line's
    overlay looked), at most THUMB px on the long side."""
    r = record(st, part_id)
    picture = part_picture(st.store, r, st.model_roi(r))
    if picture is None:
        raise HTTPException(404, f"part {part_id} has no image to show")
    s = THUMB / max(picture.shape[:2])
    if s < 1:
        picture = cv2.resize(picture, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
    return Response(cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes(),
                    media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


def verdict_fields(body: dict, known: list[str]) -> tuple[str, str | None, str]:
    """(verdict, defect type or None, comment) of a review request, checked against the known defect types;
    HTTP 400 naming the field."""
    verdict, defect_type, comment = body.get("verdict"), body.get("defect_type") or None, body.get("comment", "")
    if not isinstance(verdict, str) or verdict not in REVIEW_VERDICTS:
        raise HTTPException(400, f"verdict must be one of {', '.join(REVIEW_VERDICTS)}, got {str(verdict)[:40]!r}")
    if defect_type is not None and (not isinstance(defect_type, str) or len(defect_type) > 64
                                    or (known and defect_type not in known)):
        raise HTTPException(400, "defect_type must be one of " + (", ".join(known) or "the configured types")
                            + f", got {str(defect_type)[:40]!r}")
    if not isinstance(comment, str):
        raise HTTPException(400, "comment must be text")
    return verdict, (defect_type if verdict == "defect" else None), comment[:2000]


@routes.post("/api/parts/{part_id}/review")
async def review(request: Request, part_id: int, u: User = Depends(csrf), st: ReviewApp = Depends(get_state)):
    body = await json_body(request)
    r = record(st, part_id)
    verdict, defect_type, comment = verdict_fields(body, await run_in_threadpool(st.defect_types, r))
    corrected = await run_in_threadpool(lambda: _decode_map(body.get("corrected"), _hw(_frame(st.store, r))))
    try:
        rid = await run_in_threadpool(lambda: st.store.add_review(r.id, u.name, verdict, defect_type, comment,
                                                                  corrected=corrected, roi=st.model_roi(r)))
    except ReviewError as exc:
        raise HTTPException(400, str(exc)) from None
    return {"review_id": rid, "history": [_review_json(v) for v in st.store.reviews(r.id)]}


@routes.post("/api/reviews")
async def bulk_review(request: Request, u: User = Depends(csrf), st: ReviewApp = Depends(get_state)):
    """One verdict for several parts (a run of false alarms from one station): a review of each part, as if
    judged one by one, and an audit entry per part marked as part of a group. Every id is checked before anything
    is written."""
    body = await json_body(request)
    ids = body.get("ids")
    if not (isinstance(ids, list) and 0 < len(ids) <= MAX_BULK
            and all(isinstance(i, int) and not isinstance(i, bool) for i in ids)):
        raise HTTPException(400, f"ids must be a list of 1 to {MAX_BULK} part ids (integers)")
    records = [record(st, i) for i in dict.fromkeys(ids)]
    known = sorted({t for r in records for t in await run_in_threadpool(st.defect_types, r)})  # any of their types
    verdict, defect_type, comment = verdict_fields(body, known)
    done = []
    for r in records:
        try:
            rid = await run_in_threadpool(st.store.add_review, r.id, u.name, verdict, defect_type, comment)
        except ReviewError as exc:
            done.append({"id": r.id, "error": str(exc)})
            continue
        st.accounts.audit(u.name, "review", {"part": r.id, "verdict": verdict, "defect_type": defect_type,
                                             "group": len(records)})
        done.append({"id": r.id, "review_id": rid, "review_status": st.store.get(r.id).review_status})
    return {"reviewed": done}


@routes.post("/api/parts/{part_id}/rescore")
async def rescore(request: Request, part_id: int, u: User = Depends(csrf), st: ReviewApp = Depends(get_state)):
    if not st.sources:
        raise HTTPException(409, "re-scoring is off: start the review station with --package")
    body = await json_body(request)
    r = record(st, part_id)
    return await run_in_threadpool(_rescore, st, r, body, u)


def _rescore(st: ReviewApp, r: FailureRecord, body: dict, u: User) -> dict:  # decoding and ONNX: off the event loop
    part_id = r.id
    rt, why = st.runtime_for(r)
    if rt is None:
        raise HTTPException(409, why)
    frame = _frame(st.store, r)
    if frame is None:
        raise HTTPException(409, f"part {part_id}: its image file is missing or unreadable, so it cannot be "
                                 "re-scored")
    corrected = _decode_map(body.get("corrected"), frame.shape[:2])
    if corrected is None:
        raise HTTPException(400, "send the corrected map (field 'corrected', a PNG data URL)")
    try:
        shapes = (frame.shape[:2], tuple(rt.attention_size))
        if corrected.shape not in shapes:
            raise HTTPException(400, f"corrected map for part {r.part_id} has shape {corrected.shape}; expected "
                                     + " or ".join(f"{h}x{w}" for h, w in shapes) + " (frame or model map)")
        after = rt.rescore(frame, corrected, color="BGR")
        before = rt.rescore(frame, _attention(st, r, False, None), color="BGR")  # the logged map as it is
    except FrameError as exc:
        raise HTTPException(400, str(exc)) from None
    st.accounts.audit(u.name, "rescore", {"part": part_id, "score": after["defect_score"]})
    return {"before": before, "after": after, "logged_score": r.score, "model_version": rt.version,
            "part_model_version": r.model_version, "product": r.product}


def _file(store: SQLStore, r: FailureRecord, kind: str) -> Path | None:
    return store.stored_file(r.files.get(kind), kind)


def _media(path: Path) -> str:
    return {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".bmp": "image/bmp",
            ".tif": "image/tiff", ".tiff": "image/tiff"}.get(path.suffix.lower(), "application/octet-stream")


def _frame(store: SQLStore, r: FailureRecord) -> np.ndarray | None:
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
    return upsample_attention(att, hw, state.model_roi(r))


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


def _review_json(v) -> dict:
    return {"id": v.id, "reviewer": v.reviewer, "ts": v.ts, "verdict": v.verdict, "defect_type": v.defect_type,
            "comment": v.comment, "corrected": "corrected_full" in v.files}
