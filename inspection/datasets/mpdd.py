"""MPDD metal plates (painted plates on a hook, rust and scratches) converted into the dataset folder layout.

Source: S. Jezek, M. Jonak, R. Burget, P. Dvorak, M. Skotak, "Deep learning-based defect detection of metal
parts: evaluating current methods in complex conditions", ICUMT 2021. MPDD's own repository (stepanje/MPDD)
asks for the citation and states no licence; MPDD is commonly listed as CC BY-NC-SA 4.0 (cite it; no
commercial use; never commit the images); the repository read here states no licence either.
Reads a local git copy (a bare mirror is enough; no network) of the public repository
BupeshKumarR/defect-segmentation-for-mpdd, folder data_supervised/metal_plate/{train,val,test}/{images,masks}
only (eda/ holds plots): MPDD's metal_plate class re-split by that repository and resized to 512x512 colour
PNGs, every image with a mask of the same name (0/255; empty for a good plate), named <split>_NNNNN.png.

    python -m inspection.datasets.mpdd mpdd.git data/mpdd
    python -m inspection.datasets.mpdd mpdd.git --new-split   # rewrites split_files/mpdd.json by the rule

Writes OUT/good/<split>_NNNNN.png, OUT/defect/defect/<split>_NNNNN.png, OUT/masks/defect/<split>_NNNNN.png
(255 = defect) and OUT/split.json (from the committed split_files/mpdd.json; it stops if the source holds an
image that file does not list, or lacks one it lists). An image is defective when its mask is not empty. The
names no longer carry MPDD's defect type (major_rust, scratch, total_rust), so there is one type, defect.
Ten files are byte-for-byte copies of others (train_00084-00093: eight of train images, two of val images):
images with the same pixels are kept once, under the first name in path order (their masks must agree),
which leaves MPDD's 80 good and 71 defective plates.

The split rule (make_split): the repository's split (about 56/13/31, its val drawn from its train) is not
used; per class (good, defect), images in path order dealt in turn train, val, train, test, train: about
60/20/20, each source folder spread over all three. No near-copies beyond the ten duplicates were found
(several photos show a plate from another side; they are not copies). Deterministic.
"""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import cv2
import numpy as np

from inspection.core.imageio import decoded
from inspection.datasets.splits import checked_split, converter_main, finish, git_archive, write_mask

SPLIT_FILE = Path(__file__).parent / "split_files" / "mpdd.json"
SPLIT_CYCLE = ("train", "val", "train", "test", "train")
ROOT = "data_supervised/metal_plate/"


def make_split(rels: list[str]) -> dict[str, list[str]]:
    """The rule the committed split was made by: per class, in path order, dealt over SPLIT_CYCLE."""
    split: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for kind in ("good/", "defect/"):
        for i, rel in enumerate(sorted(r for r in rels if r.startswith(kind))):
            split[SPLIT_CYCLE[i % len(SPLIT_CYCLE)]].append(rel)
    return {k: sorted(v) for k, v in split.items()}


def read_source(git_dir: str | Path) -> dict[str, bytes]:
    """The PNGs of the three split folders, by path (git archive of the mirror's HEAD)."""
    folders = [ROOT + s for s in ("train", "val", "test")]
    return git_archive(git_dir, folders, "BupeshKumarR/defect-segmentation-for-mpdd")


def plan(files: dict[str, bytes]) -> dict[str, tuple[bytes, np.ndarray]]:
    """Output path → (image file, mask 0/255), one per distinct image; stops on a missing or mismatched mask."""
    out: dict[str, tuple[bytes, np.ndarray]] = {}
    first: dict[str, tuple[str, np.ndarray]] = {}  # pixel hash → (first image, its mask)
    for name in sorted(n for n in files if "/images/" in n):
        mask_name = name.replace("/images/", "/masks/")
        if mask_name not in files:
            raise SystemExit(f"{name}: no mask {mask_name}")
        image = decoded(files[name], name)
        mask = decoded(files[mask_name], mask_name, cv2.IMREAD_GRAYSCALE)
        if image is None or mask is None:
            raise SystemExit(f"{name if image is None else mask_name}: not a readable PNG")
        if mask.shape != image.shape[:2]:
            raise SystemExit(f"{mask_name}: mask is {mask.shape[1]}x{mask.shape[0]} px but its image {name} "
                             f"is {image.shape[1]}x{image.shape[0]}")
        mask = np.where(mask >= 128, 255, 0).astype(np.uint8)
        digest = hashlib.sha256(image.tobytes() + str(image.shape).encode()).hexdigest()
        if digest in first:  # a copy: kept once; a copy with another mask would make the truth ambiguous
            if not np.array_equal(first[digest][1], mask):
                raise SystemExit(f"{name} copies {first[digest][0]} but their masks differ")
            continue
        first[digest] = (name, mask)
        stem = Path(name).stem
        out[f"defect/defect/{stem}.png" if mask.any() else f"good/{stem}.png"] = (files[name], mask)
    return out


def convert(git_dir: str | Path, out: str | Path, split_file: str | Path = SPLIT_FILE) -> dict:
    """Write the dataset folder; return the (good, defect) counts per split."""
    out = Path(out)
    entries = plan(read_source(git_dir))
    if not entries:
        raise SystemExit(f"{git_dir}: no images in {ROOT}{{train,val,test}}/images/")
    split = checked_split(Path(split_file), set(entries))
    for rel, (data, mask) in entries.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
        if rel.startswith("defect/"):
            write_mask(out, rel, mask)
    return finish(out, split)


if __name__ == "__main__":
    converter_main(sys.argv[1:], __doc__, convert, lambda mirror: make_split(list(plan(read_source(mirror)))),
                   SPLIT_FILE)
