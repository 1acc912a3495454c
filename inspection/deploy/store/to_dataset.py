"""Reviewed parts → a dataset folder in the trainer's layout (for retraining and offline use).

    >>> export_reviewed(store, "data/reviewed-2026-11-23")            # product="housing-b": that product's only
    {'good': 12, 'defect': 30, 'corrected': 9, 'skipped': {'unsure': 2, 'no image': 1}}

    out/good/<station>_<part>_<id>.png            false alarms: the part was good
    out/defect/<type>/<station>_<part>_<id>.png   confirmed defects, by the type the reviewer gave
    out/corrected/<same relative path>.png        the latest corrected attention map, at frame resolution

The latest review of each part decides; `unsure` parts are left out. Files are copied byte for byte, named
by station, part and record ID, so exporting again adds only what is new. numpy-free, torch-free.
"""
from __future__ import annotations

from pathlib import Path

from inspection.core.imageio import ImageError, check_pixels, read_file
from inspection.deploy.atomic import write_atomic
from inspection.deploy.store.schema import safe_name
from inspection.deploy.store.sql import SQLStore


def export_reviewed(store: SQLStore, out_dir: str | Path, page: int = 1000, product: str | None = None) -> dict:
    """Write the reviewed parts (of one product, if given) as a dataset folder; the counts of what was written."""
    out = Path(out_dir)
    counts = {"good": 0, "defect": 0, "corrected": 0, "skipped": {}}

    def skip(reason: str) -> None:
        counts["skipped"][reason] = counts["skipped"].get(reason, 0) + 1

    for status in ("confirmed", "false_alarm"):
        offset = 0
        while batch := store.records(limit=page, offset=offset, review_status=status, product=product):
            offset += len(batch)
            for record in batch:
                reviews = store.reviews(record.id)
                if not reviews:
                    skip("status without a review")
                    continue
                last = reviews[-1]
                image = store.stored_file(record.files.get("image"), "image")
                if image is None:
                    skip("no image")
                    continue
                try:
                    data = read_file(image)
                    check_pixels(data, image)
                except ImageError:
                    skip("image refused before decoding")
                    continue
                name = f"{safe_name(record.station)}_{safe_name(record.part_id)}_{record.id}{image.suffix}"
                if last.verdict == "false_alarm":
                    rel = Path("good") / name
                else:
                    kind = safe_name(last.defect_type or record.defect_type or "defect")
                    rel = Path("defect") / kind / name
                _copy(data, out / rel)
                counts["good" if rel.parts[0] == "good" else "defect"] += 1
                corrected = next((r.files["corrected_full"] for r in reversed(reviews) if "corrected_full" in r.files),
                                 None)
                try:
                    corrected = store.stored_file(corrected, "corrected_full")
                    data = None if corrected is None else read_file(corrected)
                    if data is not None:
                        check_pixels(data, corrected)
                except ImageError:
                    data = None
                if data is not None:
                    _copy(data, (out / "corrected" / rel).with_suffix(".png"))
                    counts["corrected"] += 1
    return counts


def _copy(data: bytes, dst: Path) -> None:
    if dst.exists() and dst.stat().st_size == len(data):
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(dst, data, fsync=False)
