"""DAGM 2007 class 8 (generated textures with one kind of defect) converted into the dataset folder layout.

Source: M. Wieler, T. Hahn, "Weakly Supervised Learning for Industrial Optical Inspection", DAGM 2007
competition (Heidelberg Collaboratory for Image Processing); for non-commercial research (cite it; never commit
the images); the repository read here states no licence. Reads a local git copy (a bare mirror is enough; no
network) of the public repository nyraa/anomaly-detection-using-autoencoder, folders Class8/Train and
Class8/Test only: 1,150 gray 512x512 PNGs each (1,000 good, 150 defective), the defects marked by coarse
ellipses in Label/NNNN_label.PNG and listed in Label/Labels.txt (number, 1 if defective, image, 0, label).

    python -m inspection.datasets.dagm8 dagm.git data/dagm8
    python -m inspection.datasets.dagm8 dagm.git --new-split   # rewrites split_files/dagm8.json by the rule

Writes OUT/good/<train|test>_NNNN.png, OUT/defect/defect/<train|test>_NNNN.png, OUT/masks/defect/... (the
ellipse, 255 = defect) and OUT/split.json (from the committed split_files/dagm8.json; it stops if the source
holds an image that file does not list, or lacks one it lists). One defect type: the set has one per class.

The split rule (make_split): DAGM's own Test folder is the test split; its Train folder is divided per class
(good, defect), in name order, dealt in turn train, train, val, train: 75/25 train/val. No two images are
pixel-identical and no near-copies were found (each texture is generated anew). Deterministic.
"""
from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np

from inspection.core.imageio import decoded
from inspection.datasets.splits import checked_split, converter_main, finish, git_archive, write_mask

SPLIT_FILE = Path(__file__).parent / "split_files" / "dagm8.json"
TRAIN_CYCLE = ("train", "train", "val", "train")  # the original Train: 3/4 train, 1/4 val
ROOT = "Class8/"


def make_split(rels: list[str]) -> dict[str, list[str]]:
    """The rule the committed split was made by: test_ images are test; train_ ones dealt over TRAIN_CYCLE."""
    split: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for kind in ("good/", "defect/"):
        train = sorted(r for r in rels if r.startswith(kind) and Path(r).name.startswith("train_"))
        for i, rel in enumerate(train):
            split[TRAIN_CYCLE[i % len(TRAIN_CYCLE)]].append(rel)
    split["test"] = [r for r in rels if Path(r).name.startswith("test_")]
    return {k: sorted(v) for k, v in split.items()}


def read_source(git_dir: str | Path) -> dict[str, bytes]:
    """The files of Class8/Train and Class8/Test, by path (git archive of the mirror's HEAD)."""
    folders = [ROOT + "Train", ROOT + "Test"]
    return git_archive(git_dir, folders, "nyraa/anomaly-detection-using-autoencoder", suffixes=None)


def plan(files: dict[str, bytes]) -> dict[str, tuple[str, str | None]]:
    """Output path → (source image, its label image or None), by each folder's Labels.txt."""
    out: dict[str, tuple[str, str | None]] = {}
    for folder in ("Train", "Test"):
        base = f"{ROOT}{folder}/"
        index = base + "Label/Labels.txt"
        if index not in files:
            raise SystemExit(f"{index}: missing (the index of the defective images)")
        images = {n for n in files if n.startswith(base) and n.count("/") == 2 and n.upper().endswith(".PNG")}
        labels = {n for n in files if n.startswith(base + "Label/") and n.upper().endswith(".PNG")}
        listed: set[str] = set()
        for line in files[index].decode().splitlines()[1:]:  # the first line holds the class number
            if not line.strip():
                continue
            cells = line.split("\t")
            if len(cells) < 5 or cells[1] not in ("0", "1") or (cells[1] == "1") != (cells[4] != "0"):
                raise SystemExit(f"{index}: expected 'number<TAB>0|1<TAB>image<TAB>0<TAB>label|0', got {line!r}")
            image, label = base + cells[2], (base + "Label/" + cells[4] if cells[1] == "1" else None)
            for name in filter(None, (image, label)):
                if name not in files:
                    raise SystemExit(f"{index} lists {name}, which is missing")
                listed.add(name)
            stem = f"{folder.lower()}_{Path(image).stem}"
            out[f"defect/defect/{stem}.png" if label else f"good/{stem}.png"] = (image, label)
        unlisted = sorted((images | labels) - listed)
        if unlisted:
            raise SystemExit(f"{index} does not list {', '.join(unlisted[:5])}{' ...' if len(unlisted) > 5 else ''}")
    return out


def convert(git_dir: str | Path, out: str | Path, split_file: str | Path = SPLIT_FILE) -> dict:
    """Write the dataset folder; return the (good, defect) counts per split."""
    out, files = Path(out), read_source(git_dir)
    entries = plan(files)
    split = checked_split(Path(split_file), set(entries))
    for rel, (image, label) in entries.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(files[image])
        if label:
            pixels = decoded(files[image], image, cv2.IMREAD_GRAYSCALE)
            mask = decoded(files[label], label, cv2.IMREAD_GRAYSCALE)
            if pixels is None or mask is None or mask.shape != pixels.shape:
                raise SystemExit(f"{label}: not a readable mask of the size of its image {image}")
            write_mask(out, rel, np.where(mask >= 128, 255, 0).astype(np.uint8))
    return finish(out, split)


if __name__ == "__main__":
    converter_main(sys.argv[1:], __doc__, convert, lambda mirror: make_split(list(plan(read_source(mirror)))),
                   SPLIT_FILE)
