"""A plain summary of the failure log (the review queue, before the review station opens it in a browser), and
the picture of a logged part that it and the review station's grid show.

    >>> write_review_log(SQLiteStore(db, folder), "runs/demo/line")   # review_log.md + review_log.png
    >>> part_picture(store, record)                                    # BGR uint8: image, map and boxes

numpy/OpenCV only.
"""
from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np

from inspection.core.boxes import upsample_attention
from inspection.core.mapfile import read_map_file
from inspection.core.overlay import overlay
from inspection.deploy.runtime import FrameError, read_frame
from inspection.deploy.store.schema import FailureRecord
from inspection.deploy.store.sql import SQLStore

TILE = 160


def part_picture(store: SQLStore, r: FailureRecord, model_roi=None) -> np.ndarray | None:
    """A logged part as BGR uint8: its image with the attention map and boxes drawn over it as the line's overlay
    looked (the line no longer writes one: it is drawn here, from the stored image and map); the overlay file of
    a part logged by an earlier version; its image with boxes when it has no map; None when no image is readable.
    model_roi: where on the image the model saw (the record's when None)."""
    for kind in ("overlay", "image"):
        path = store.stored_file(r.files.get(kind), kind)
        try:
            img = read_frame(path) if path is not None else None  # header checked before decoding (no bombs)
        except FrameError:
            img = None
        if img is not None:
            break
    if img is None:
        return None
    img = (img / 257).astype(np.uint8) if img.dtype == np.uint16 else img.astype(np.uint8)
    img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR) if img.ndim == 2 else np.ascontiguousarray(img[..., :3])
    if kind == "overlay":
        return img
    boxes = [(b["x0"], b["y0"], b["x1"], b["y1"]) for b in r.boxes if "x0" in b]
    att = read_map_file(store.stored_file(r.files.get("map"), "map"))
    if att is None:
        return overlay(img[..., ::-1], np.zeros(img.shape[:2], np.float32), boxes, alpha=0)[..., ::-1].copy()
    full = upsample_attention(att, img.shape[:2], model_roi if model_roi is not None else r.model_roi)
    label = None if r.score is None else f"{r.verdict} {r.score:.3f}"
    return overlay(img[..., ::-1], full, boxes, label=label)[..., ::-1].copy()


def contact_sheet(store: SQLStore, records, columns: int = 4) -> np.ndarray | None:
    """Pictures of the given records (part_picture) in a grid, each labelled with part ID and score (BGR uint8)."""
    tiles = []
    for r in records:
        img = part_picture(store, r)
        if img is None:
            img = np.full((TILE, TILE, 3), 60, np.uint8)
            cv2.putText(img, "no image", (30, TILE // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1)
        s = TILE / max(img.shape[:2])
        img = cv2.resize(img, (max(1, round(img.shape[1] * s)), max(1, round(img.shape[0] * s))))
        tile = np.full((TILE + 18, TILE, 3), 255, np.uint8)
        tile[:img.shape[0], :img.shape[1]] = img
        score = "error" if r.score is None else f"{r.score:.2f}"
        cv2.putText(tile, f"{r.part_id[:16]} {score}", (2, TILE + 13), cv2.FONT_HERSHEY_SIMPLEX, 0.36, (0, 0, 0), 1,
                    cv2.LINE_AA)
        tiles.append(tile)
    if not tiles:
        return None
    while len(tiles) % columns:
        tiles.append(np.full_like(tiles[0], 255))
    rows = [np.hstack(tiles[i:i + columns]) for i in range(0, len(tiles), columns)]
    return np.vstack(rows)


def write_review_log(store: SQLStore, out_dir: str | Path, limit: int = 20) -> Path:
    """review_log.md (counts and the newest records) and review_log.png (their pictures); returns the .md."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = store.records(limit=limit)
    counts = {v: store.count(verdict=v) for v in ("fail", "review", "error")}
    lines = [f"# Review log: {store.folder}", "",
             f"{store.count()} logged parts ({', '.join(f'{n} {v}' for v, n in counts.items())}), "
             f"{store.count(review_status='unreviewed')} unreviewed. Newest {len(records)}:", "",
             "| id | part | station | time | verdict | score | defect type | boxes | image |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        boxes = "; ".join(f"({b['x0']},{b['y0']})-({b['x1']},{b['y1']}) {b['score']:.2f}" for b in r.boxes
                          if "x0" in b) or (r.boxes[0].get("error", "") if r.boxes else "")
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.ts))
        score = "" if r.score is None else f"{r.score:.3f}"
        lines.append(f"| {r.id} | {r.part_id} | {r.station} | {stamp} | {r.verdict} | {score} | "
                     f"{r.defect_type or ''} | {boxes} | {r.files.get('image', '')} |")
    sheet = contact_sheet(store, records[:16])
    if sheet is not None:
        cv2.imwrite(str(out / "review_log.png"), sheet)
        lines += ["", "![newest logged parts](review_log.png)"]
    path = out / "review_log.md"
    path.write_text("\n".join(lines) + "\n")
    return path
