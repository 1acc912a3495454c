"""KolektorSDD (real commutator surfaces) converted into the dataset folder layout, with a split by physical part.

Source: Tabernik et al., "Segmentation-based deep-learning approach for surface-defect detection", J. Intell.
Manuf. 2019; licence CC BY-NC-SA 4.0 (cite it; no commercial use; never commit the images). Reads a local git
copy (a bare mirror is enough; no network) of the public repository stoy95536/KolektorSDD_Yolov8_Datasets: the
399 images renumbered 000-398, eight per physical part, cracks as YOLO polygons.

    python -m inspection.datasets.kolektorsdd ksdd.git data/kolektorsdd

Writes OUT/good/kos_NNN.jpg, OUT/defect/crack/kos_NNN.jpg, OUT/masks/crack/kos_NNN.png (filled polygons,
255 = crack) and OUT/split.json: train/val/test about 60/20/20 by physical part (its eight images stay
together), the parts with a crack dealt over all three splits. Deterministic.
"""
from __future__ import annotations

import io
import subprocess
import sys
import tarfile
from pathlib import Path

import cv2
import numpy as np

from inspection.core.imageio import decoded
from inspection.datasets.splits import write_split

SPLIT_CYCLE = ("train", "train", "train", "val", "test")  # parts dealt in turn: 3/5 train, 1/5 val, 1/5 test


def polygon_mask(label_text: str, shape: tuple[int, int]) -> np.ndarray:
    """YOLO segmentation lines (class x1 y1 x2 y2 ..., normalized) → uint8 mask, 255 inside the polygons."""
    h, w = shape
    mask = np.zeros((h, w), np.uint8)
    for line in label_text.splitlines():
        if line.strip():
            xy = np.array(line.split()[1:], np.float64).reshape(-1, 2) * (w, h)
            cv2.fillPoly(mask, [np.round(xy).astype(np.int32)], 255)
    return mask


def convert(git_dir: str | Path, out: str | Path) -> dict:
    """Write the dataset folder; return the (good, defect) counts per split."""
    out = Path(out)
    try:
        tar = subprocess.run(["git", "--git-dir", str(git_dir), "archive", "HEAD", "Datasets"], check=True,
                             capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise SystemExit(f"{git_dir}: not a git copy of KolektorSDD_Yolov8_Datasets with a Datasets/ folder "
                         f"({getattr(exc, 'stderr', b'').decode(errors='replace').strip() or exc})") from None
    archive = tarfile.open(fileobj=io.BytesIO(tar))
    members = {m.name: m for m in archive.getmembers()}
    parts: dict[int, list[str]] = {}
    for name in sorted(n for n in members if n.endswith(".jpg")):
        stem, folder = Path(name).stem, Path(name).parent.name
        data = archive.extractfile(members[name]).read()
        label = members.get(f"Datasets/labels/{folder}/{stem}.txt")
        text = archive.extractfile(label).read().decode() if label else ""
        rel = f"good/kos_{stem}.jpg"
        if text.strip():
            shape = decoded(data, stem, cv2.IMREAD_GRAYSCALE).shape
            rel = f"defect/crack/kos_{stem}.jpg"
            mask_path = out / "masks" / "crack" / f"kos_{stem}.png"
            mask_path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(mask_path), polygon_mask(text, shape))
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
        parts.setdefault(int(stem) // 8, []).append(rel)
    cracked = [p for p in sorted(parts) if any(r.startswith("defect/") for r in parts[p])]
    return write_split(out, [[parts[p] for p in cracked], [parts[p] for p in sorted(parts) if p not in cracked]],
                       SPLIT_CYCLE)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    print(f"{sys.argv[2]}: (good, defect) per split {convert(sys.argv[1], sys.argv[2])}")
