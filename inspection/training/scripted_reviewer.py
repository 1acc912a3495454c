"""A reviewer driven by the truth, for tests and benchmarks: judges logged parts through the store's review API
and corrects their maps with the review station's round brushes, as an operator would.

    >>> scripted_review(Path("runs/line/failures"), "data/synthetic")   # number of parts reviewed
    >>> corrected, strokes = correct_map(att, mask)                      # one map at frame resolution

A part whose source image is under good/ is a false alarm; one under defect/<type>/ is a confirmed defect of that
type. Its map (the line's, upsampled to the frame as the station shows it) is corrected by `correct_map`:

- erase: every hot region (map ≥ HOT, what the overlay shows as a defect) that lies outside the defect is
  erased with its visible foot (down to VISIBLE, where the overlay's colours start) by the erase brush, whose
  round footprint reaches ERASE_MARGIN px beyond; on a false alarm that is every hot region. The part of a hot
  region that overhangs the defect (a blob larger than the defect) is erased the same way.
- add: a defect the map missed (less than half of its pixels hot) or drew too large (its hot region reaches
  beyond the defect by more than the defect's own painted area) is painted at full strength with the smallest
  brush of the station's sizes at least as wide as the defect (24 px by default, scaled by 1.25 per [ / ] key,
  2-200 px), stroked along it: the paint covers the defect and overshoots its sides by half the brush's excess
  width. A defect whose hot region already fits is left as it is.

The reviewer never sees the mask itself: it sees where the defect is and paints it with a brush, so thin cracks
come out wider and round pits rounder than their masks.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from inspection.core.boxes import upsample_attention
from inspection.core.imageio import ImageError, read_frame, read_mask
from inspection.core.mapfile import read_map_file
from inspection.deploy.store.sql import SQLiteStore

HOT = 0.5             # a map value the overlay shows as a defect (the training's MAP_HOT)
VISIBLE = 0.25        # the overlay's colours start here (JET cyan): an erased hot region goes down to this level
ERASE_MARGIN = 6      # px the erase brush's footprint reaches beyond a hot region (a quarter of the 24-px default)
BRUSH_SIZES = tuple(sorted({int(round(min(200.0, max(2.0, 24 * 1.25 ** k)))) for k in range(-12, 12)}))


def brush_for(width: float) -> int:
    """The smallest of the station's brush diameters at least `width` px wide (the largest if none is)."""
    return next((d for d in BRUSH_SIZES if d >= width), BRUSH_SIZES[-1])


def _disc(radius: int) -> np.ndarray:
    r = max(0, int(radius))
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def correct_map(att: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """The operator's corrected map (frame resolution, [0, 1]) for a map `att` and the truth `mask` (None or
    empty: a good part), and what was done: {"erased": px, "painted": px, "defects": n, "missed": n,
    "too_large": n}."""
    att = np.clip(np.asarray(att, np.float32), 0, 1)
    out = att.copy()
    keep = np.zeros(att.shape, np.uint8)      # the defects and the paint's margin: the erase brush stays off
    paint = np.zeros(att.shape, bool)
    missed = too_large = 0
    n = 0
    if mask is not None and np.any(mask):
        n, labels = cv2.connectedComponents((np.asarray(mask) > 0).astype(np.uint8), connectivity=8)
        for k in range(1, n):
            comp = (labels == k).astype(np.uint8)
            width = 2 * float(cv2.distanceTransform(np.pad(comp, 1), cv2.DIST_L2, 5).max())
            d = brush_for(width)
            region = cv2.dilate(comp, _disc(round((d - width) / 2)))
            keep |= region
            blob = _touching((att >= HOT).astype(np.uint8), region)
            if (att[comp > 0] >= HOT).mean() < 0.5:   # missed or too weak: painted over
                paint |= region > 0
                missed += 1
            elif (blob & (region == 0)).sum() > region.sum():  # too large: painted where it is (the rest erased)
                paint |= region > 0
                too_large += 1
        n -= 1
    visible = ((att >= VISIBLE) & (keep == 0)).astype(np.uint8)
    blobs = _touching(visible, (att >= HOT) & (keep == 0)).astype(np.uint8)   # hot regions with their visible foot
    erase = (cv2.dilate(blobs, _disc(ERASE_MARGIN)) > 0) & (keep == 0) if blobs.any() else np.zeros(att.shape, bool)
    out[erase] = 0.0
    out[paint] = 1.0
    return out, {"erased": int(erase.sum()), "painted": int(paint.sum()), "defects": int(n), "missed": missed,
                 "too_large": too_large}


def _touching(binary: np.ndarray, region: np.ndarray) -> np.ndarray:
    """The 8-connected components of `binary` that overlap `region` (bool)."""
    n, labels = cv2.connectedComponents(binary, connectivity=8)
    hit = np.unique(labels[(region > 0) & (binary > 0)])
    return np.isin(labels, hit[hit > 0])


def scripted_review(log: Path, data: str | Path, reviewer: str = "script") -> int:
    """Reviews every unreviewed record of the failure log in `log` whose part is an image of the dataset folder
    `data` (matched by file stem), with a corrected map from `correct_map`; returns how many."""
    data = Path(data)
    sources = {p.stem: p for sub in ("good", "defect") for p in (data / sub).rglob("*.*")}
    store = SQLiteStore(Path(log) / "failures.db", log, fsync=False)
    n = 0
    for r in store.records(limit=10**6, review_status="unreviewed"):
        source = sources.get(r.part_id)
        if "map" not in r.files or source is None:
            continue
        small = read_map_file(store.folder / r.files["map"])
        if small is None:
            continue
        path = store.stored_file(r.files.get("image"), "image")
        try:
            hw = read_frame(path).shape[:2] if path is not None else small.shape
        except ImageError:
            hw = small.shape
        att = upsample_attention(small, hw)  # the stored image is what the model judged (a model ROI: not here)
        if source.relative_to(data).parts[0] == "good":
            store.add_review(r.id, reviewer, "false_alarm", corrected=correct_map(att)[0])
        else:
            kind = source.parent.name
            mask_path = next((data / "masks" / kind).glob(f"{source.stem}.*"), None)
            mask = None if mask_path is None else read_mask(mask_path)
            if mask is not None and mask.shape != hw:
                mask = cv2.resize(mask.astype(np.uint8), (hw[1], hw[0]), interpolation=cv2.INTER_NEAREST) > 0
            store.add_review(r.id, reviewer, "defect", kind,
                             corrected=None if mask is None else correct_map(att, mask)[0])
        n += 1
    store.close()
    return n
