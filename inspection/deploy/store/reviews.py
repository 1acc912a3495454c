"""Reviews in the failure log: appended, never overwritten; a corrected map stored at the model's and the frame's
resolution (16-bit PNG, inspection/core/mapfile.py); the part's review status follows its latest review.
"""
from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

from inspection.deploy.atomic import write_atomic
from inspection.deploy.store.schema import (
    REVIEW_VERDICTS,
    FailureRecord,
    Review,
    ReviewError,
    safe_name,
)


class Reviews:
    """Part of SQLStore (uses its _rows, _transaction, _lock, get, stored_file, folder and fsync)."""

    def set_review_status(self, record_id: int, status: str) -> None:
        with self._lock, self._transaction() as ex:
            ex("UPDATE failures SET review_status = ? WHERE id = ?", (status, record_id))

    def add_review(self, failure_id: int, reviewer: str, verdict: str, defect_type: str | None = None,
                   comment: str = "", corrected=None, roi=None) -> int:
        """Append a review (history is never overwritten) and set the part's review status from it.

        `corrected`: an operator-corrected attention map in [0, 1], at the model's map resolution or at the
        frame's; both resolutions are stored (16-bit PNG) and become training targets (L_map). `roi`: the region
        [x, y, w, h] of the stored image the model saw (the model-resolution copy of a frame-sized map covers only
        that region); default: the record's model_roi.
        """
        if verdict not in REVIEW_VERDICTS:
            raise ReviewError(f"review verdict must be one of {', '.join(REVIEW_VERDICTS)}, got {verdict!r}")
        if not str(reviewer).strip():
            raise ReviewError("a review needs the reviewer's name")
        record = self.get(failure_id)
        if record is None:
            raise ReviewError(f"no logged part with id {failure_id}")
        roi = record.model_roi if roi is None else roi
        files = self._corrected_files(record, corrected, roi) if corrected is not None else {}
        with self._lock:
            rel_dir = Path(record.files["map"]).parent if files else None  # beside the part's own map (checked)
            token, stored, written = uuid.uuid4().hex[:10], {}, []
            try:
                if files:
                    try:
                        self.own_dir(rel_dir)
                    except OSError as exc:
                        raise ReviewError(f"part {record.part_id}: corrected map not written: {exc}") from None
                for kind, data in files.items():
                    path = self.folder / rel_dir / f"{safe_name(record.part_id)}-{token}-{kind}.png"
                    write_atomic(path, data, self.fsync)
                    written.append(path)
                    stored[kind] = (rel_dir / path.name).as_posix()
                with self._transaction() as ex:
                    review_id = ex("INSERT INTO reviews (failure_id, reviewer, ts, verdict, defect_type, comment, "
                                   "files) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
                                   (failure_id, reviewer, time.time(), verdict, defect_type, comment,
                                    json.dumps(stored))).fetchone()["id"]
                    ex("UPDATE failures SET review_status = ? WHERE id = ?", (REVIEW_VERDICTS[verdict], failure_id))
            except BaseException:
                for path in written:
                    path.unlink(missing_ok=True)
                raise
            return review_id

    def _corrected_files(self, record: FailureRecord, corrected, roi=None) -> dict[str, bytes]:
        import numpy as np

        from inspection.core.boxes import full_roi, upsample_attention
        from inspection.core.mapfile import encode_map, shrink_map

        att = np.asarray(corrected, np.float32)
        if "map" not in record.files:
            raise ReviewError(f"part {record.part_id} has no attention map to correct (verdict {record.verdict})")
        map_path, image_path = self.stored_file(record.files["map"], "map"), self.stored_file(record.files.get("image"),
                                                                                           "image")
        model, frame = _stored_shape(map_path), _stored_shape(image_path)  # (h, w) from the headers: no decoding
        if model is None:
            raise ReviewError(f"part {record.part_id}: its attention map file is missing or unreadable")
        shapes = [model] + ([frame] if frame is not None else [])
        if att.ndim != 2 or att.shape not in shapes:
            raise ReviewError(f"corrected map for part {record.part_id} has shape {att.shape}; expected "
                              + " or ".join(f"{h}x{w}" for h, w in shapes) + " (model map or frame)")
        if not np.isfinite(att).all():
            raise ReviewError(f"corrected map for part {record.part_id} holds NaN or infinite values")
        att = np.clip(att, 0, 1)
        h, w = model
        x, y, cw, ch = full_roi(att.shape, roi if att.shape != (h, w) else None)  # the crop the model saw
        small = shrink_map(att[y:y + ch, x:x + cw], (h, w))
        full = att if frame is None or att.shape == frame else \
            upsample_attention(att, frame, roi)  # a model-resolution map: into the crop, 0 outside
        return {kind: encode_map(a) for kind, a in (("corrected", small), ("corrected_full", full))}

    def reviews(self, failure_id: int) -> list[Review]:
        """Every review of a part, oldest first (the last one sets its status)."""
        rows = self._rows("SELECT * FROM reviews WHERE failure_id = ? ORDER BY id", (failure_id,))
        return [Review(**{**r, "files": json.loads(r["files"])}) for r in rows]

    def reviews_since(self, ts: float, product: str | None = None) -> tuple[int, float]:
        """(number of reviews written after ts, time of the newest one or ts); of one product's parts if given."""
        sql, args = "SELECT COUNT(*) AS n, MAX(ts) AS newest FROM reviews WHERE ts > ?", [ts]
        if product is not None:
            sql = ("SELECT COUNT(*) AS n, MAX(r.ts) AS newest FROM reviews r JOIN failures f ON f.id = r.failure_id "
                   "WHERE r.ts > ? AND f.product = ?")
            args.append(product)
        row = self._rows(sql, args)[0]
        return int(row["n"]), float(row["newest"] if row["newest"] is not None else ts)



def _stored_shape(path: Path | None) -> tuple[int, int] | None:
    """(height, width) of a stored image from its headers (inspection/core/imageio.py); None when missing or
    refused."""
    from inspection.core.imageio import ImageError, check_pixels, read_file

    if path is None:
        return None
    try:
        w, h = check_pixels(read_file(path), path)
    except ImageError:
        return None
    return h, w
