"""A plain summary of the failure log (the review queue, before the review station opens it in a browser).

    >>> write_review_log(SQLiteStore(db, folder), "runs/demo/line")   # review_log.md + review_log.png

numpy/OpenCV only.
"""
from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np

from inspection.deploy.runtime import FrameError, read_frame
from inspection.deploy.store.sql import SQLStore

TILE = 160


def contact_sheet(store: SQLStore, records, columns: int = 4) -> np.ndarray | None:
    """Overlays of the given records in a grid, each labelled with part ID and score (BGR uint8)."""
    tiles = []
    for r in records:
        path = store.stored_file(r.files.get("overlay"), "overlay") or store.stored_file(r.files.get("image"), "image")
        try:
            img = read_frame(path) if path else None  # header checked before decoding (no bombs)
        except FrameError:
            img = None
        if img is not None:
            img = (img / 257).astype(np.uint8) if img.dtype == np.uint16 else img.astype(np.uint8)
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR) if img.ndim == 2 else img[..., :3]
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
    """review_log.md (counts and the newest records) and review_log.png (their overlays); returns the .md."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = store.records(limit=limit)
    counts = {v: store.count(verdict=v) for v in ("fail", "review", "error")}
    lines = [f"# Review log: {store.folder}", "",
             f"{store.count()} logged parts ({', '.join(f'{n} {v}' for v, n in counts.items())}), "
             f"{store.count(review_status='unreviewed')} unreviewed. Newest {len(records)}:", "",
             "| id | part | station | time | verdict | score | defect type | boxes | overlay |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        boxes = "; ".join(f"({b['x0']},{b['y0']})-({b['x1']},{b['y1']}) {b['score']:.2f}" for b in r.boxes
                          if "x0" in b) or (r.boxes[0].get("error", "") if r.boxes else "")
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.ts))
        score = "" if r.score is None else f"{r.score:.3f}"
        lines.append(f"| {r.id} | {r.part_id} | {r.station} | {stamp} | {r.verdict} | {score} | "
                     f"{r.defect_type or ''} | {boxes} | {r.files.get('overlay', '')} |")
    sheet = contact_sheet(store, records[:16])
    if sheet is not None:
        cv2.imwrite(str(out / "review_log.png"), sheet)
        lines += ["", "![newest logged parts](review_log.png)"]
    path = out / "review_log.md"
    path.write_text("\n".join(lines) + "\n")
    return path
