"""A reviewer driven by the truth, for tests and benchmarks: judges logged parts through the store's review API.

    >>> scripted_review(Path("runs/line/failures"), "data/synthetic")   # number of parts reviewed

A part whose source image is under good/ is a false alarm (its corrected map: erased); one under
defect/<type>/ is a confirmed defect of that type, its corrected map the true mask at the map's resolution.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from deploy.store import SQLiteStore
from inspection.imageio import read_mask


def scripted_review(log: Path, data: str | Path, reviewer: str = "script") -> int:
    data = Path(data)
    sources = {p.stem: p for sub in ("good", "defect") for p in (data / sub).rglob("*.*")}
    store = SQLiteStore(Path(log) / "failures.db", log, fsync=False)
    n = 0
    for r in store.records(limit=10**6, review_status="unreviewed"):
        source = sources.get(r.part_id)
        if "map" not in r.files or source is None:
            continue
        h, w = cv2.imread(str(store.folder / r.files["map"]), cv2.IMREAD_UNCHANGED).shape
        if source.relative_to(data).parts[0] == "good":
            store.add_review(r.id, reviewer, "false_alarm", corrected=np.zeros((h, w), np.float32))
        else:
            kind = source.parent.name
            mask_path = next((data / "masks" / kind).glob(f"{source.stem}.*"), None)
            corrected = None if mask_path is None else cv2.resize(read_mask(mask_path).astype(np.float32), (w, h),
                                                                  interpolation=cv2.INTER_AREA)
            store.add_review(r.id, reviewer, "defect", kind, corrected=corrected)
        n += 1
    store.close()
    return n
