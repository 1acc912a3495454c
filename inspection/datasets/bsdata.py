"""BSData (ball-screw drive surfaces with pitting) converted into the dataset folder layout, split by spot.

Source: T. Schlagenhauf, M. Landwehr, J. Fleischer, "Industrial Machine Tool Element Surface Defect Dataset",
Data in Brief 39, 2021 (arXiv 2103.13003); licence CC BY-SA 4.0 (cite it; never commit the images). Reads a
local git copy (a bare mirror is enough; no network) of the public repository 2Obe/BSData: 1,104 colour JPEGs
in data/, 394 of them with labelme polygons of pitting in label/ (the others are defect-free).

    python -m inspection.datasets.bsdata bsdata.git data/bsdata

Writes OUT/good/<name>.jpg, OUT/defect/pitting/<name>.jpg, OUT/masks/pitting/<name>.png (filled polygons,
255 = pitting) and OUT/split.json. Most images are a time series of the same 16 spots of one drive
(<spot> = the two numbers before "_crop" in the name), photographed as pitting grew; a spot's images are
near-copies, so the split keeps each spot whole: about 60/20/20 by spot (train/val/test), the images of
the second drive type (named KGT1-..., all pitted) dealt by name in the same proportions. Deterministic.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

from inspection.core.imageio import decoded
from inspection.datasets.splits import write_split

SPLIT_CYCLE = ("train", "test", "train", "val", "train")  # groups dealt in turn: 3/5 train, 1/5 val, 1/5 test
SPOT = re.compile(r"^\d+_\d+_(\d+_\d+)_crop")


def labelme_mask(label: dict, shape: tuple[int, int]) -> np.ndarray:
    """A labelme annotation's polygons (and rectangles/circles) → uint8 mask, 255 inside; other shapes ignored."""
    h, w = shape
    mask = np.zeros((h, w), np.uint8)
    for s in label.get("shapes") or []:
        pts = np.asarray(s.get("points") or [], np.float64).reshape(-1, 2)
        kind = s.get("shape_type") or "polygon"
        if kind == "polygon" and len(pts) >= 3:
            cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 255)
        elif kind == "rectangle" and len(pts) == 2:
            (x0, y0), (x1, y1) = np.round(pts).astype(int)
            cv2.rectangle(mask, (min(x0, x1), min(y0, y1)), (max(x0, x1), max(y0, y1)), 255, -1)
        elif kind == "circle" and len(pts) == 2:
            c, e = pts
            cv2.circle(mask, tuple(int(v) for v in np.round(c)), int(round(float(np.hypot(*(e - c))))), 255, -1)
    return mask


def group_of(name: str) -> str:
    """The physical spot an image shows (its near-copies share it); the file stem for names of another form."""
    m = SPOT.match(name)
    return f"spot_{m.group(1)}" if m else Path(name).stem


def _git(git_dir: Path, *args: str) -> bytes:
    return subprocess.run(["git", "--git-dir", str(git_dir), *args], check=True, capture_output=True).stdout


def convert(git_dir: str | Path, out: str | Path) -> dict:
    """Write the dataset folder; return the (good, defect) counts per split."""
    git_dir, out = Path(git_dir), Path(out)
    try:
        names = _git(git_dir, "ls-tree", "-r", "--name-only", "HEAD").decode().splitlines()
    except (OSError, subprocess.CalledProcessError) as exc:
        why = getattr(exc, "stderr", b"").decode(errors="replace").strip() or exc
        raise SystemExit(f"{git_dir}: not a git copy of BSData ({why})") from None
    images = sorted(n for n in names if n.count("/") == 1 and n.startswith("data/") and n.lower().endswith(".jpg"))
    labels = {Path(n).stem: n for n in names if n.startswith("label/") and n.endswith(".json")}
    if not images:
        raise SystemExit(f"{git_dir}: no data/*.jpg: not a git copy of BSData")
    groups: dict[str, list[str]] = {}
    for name in images:
        stem = Path(name).stem
        data = _git(git_dir, "show", f"HEAD:{name}")
        rel = f"good/{stem}.jpg"
        if stem in labels:
            label = json.loads(_git(git_dir, "show", f"HEAD:{labels[stem]}"))
            image = decoded(data, name, cv2.IMREAD_GRAYSCALE)
            if image is None:
                raise SystemExit(f"{name}: not a readable JPEG")
            mask = labelme_mask(label, image.shape)
            if mask.any():
                rel = f"defect/pitting/{stem}.jpg"
                (out / "masks" / "pitting").mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(out / "masks" / "pitting" / f"{stem}.png"), mask)
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
        groups.setdefault(group_of(stem), []).append(rel)
    spots = [groups[g] for g in sorted(groups) if g.startswith("spot_")]
    return write_split(out, [spots, [groups[g] for g in sorted(groups) if not g.startswith("spot_")]], SPLIT_CYCLE)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    print(f"{sys.argv[2]}: (good, defect) per split {convert(sys.argv[1], sys.argv[2])}")
