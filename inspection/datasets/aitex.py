"""AITEX (woven fabric, line-scan camera) converted into the dataset folder layout, with a committed split.

Source: J. Silvestre-Blanes, T. Albero-Albero, I. Miralles, R. Pérez-Llorens, J. Moreno, "A Public Fabric
Database for Defect Detection Methods and Results", Autex Research Journal 19(4), 2019. Published by AITEX
for research (cite it; never commit the images); the images in the repository read here come with no licence
of their own (its LICENSE, MIT, covers its author's code); they are the Kaggle copy
nexuswho/aitex-fabric-image-database, said elsewhere to be CC BY-NC-ND 4.0: non-commercial use, no
redistributed adaptations. Reads a local git copy (a bare mirror is enough; no network) of the public
repository jraad/fabric_defect_detection, folder data/aitex/ only (object_detection/ holds derived crops):
141 defect-free images in NODefect_images/<fabric roll>/, 106 defective ones in Defect_images/, gray,
256 px high and 4096 wide (one 3796), named NNNN_<defect code>_<fabric code>.png; masks in Mask_images/.

    python -m inspection.datasets.aitex fabric.git data/aitex
    python -m inspection.datasets.aitex fabric.git --new-split   # rewrites split_files/aitex.json by the rule

Writes OUT/good/<name>.png, OUT/defect/<type>/<name>.png, OUT/masks/<type>/<name>.png (255 = defect) and
OUT/split.json (from the committed split_files/aitex.json; it stops if the source holds an image that file
does not list, or lacks one it lists). Images are written as 8-bit gray PNG (some sources are RGBA with equal
channels and opaque alpha: the same pixels). Masks are anti-aliased (gray times alpha where a mask has alpha):
a defect is a connected region of drawn pixels that reaches 128 somewhere, taken whole (a threshold at 128 alone
would cut the lines drawn under a pixel wide, broken yarn 0010-0013 and crease 0069, into up to 17 pieces).
0044 and 0097 hold two defects, with _mask1/_mask2 beside _mask: the union is taken.
0100_025_08 (warp ball) has no mask and the mask of 0106_010_03 (broken pick) is all zero: both stay
defective images without a mask (an empty mask would claim there is no defect pixel).

Types by the code table of the paper and the repository: 002 broken end, 006 broken yarn, 010 broken pick,
019 fuzzyball, 022 cut selvage, 025 warp ball, 030 nep; the codes with fewer than 6 images (016 weft curling 3,
023 crease 5, 027 knots, 029 contamination, 036 weft crack 1 each) are pooled into defect/other: a type of a
handful cannot reach every split (the trainer refuses a class with under 3 images), and a dozen such types
is not trainable. The name keeps the code.

The split rule (make_split): per type (good counted as one), images ordered by fabric code then name and
dealt in turn train, val, train, test, train: about 60/20/20 of each type, a type's fabrics spread over the
splits (each good fabric 12/4/4). No two images are pixel-identical, and no pair of high-passed patches
matches better than the fabric's own repeating weave does, so no near-copies are grouped. Deterministic.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import cv2
import numpy as np

from inspection.core.imageio import decoded
from inspection.datasets.splits import checked_split, converter_main, finish, git_archive, write_mask

SPLIT_FILE = Path(__file__).parent / "split_files" / "aitex.json"
SPLIT_CYCLE = ("train", "val", "train", "test", "train")
TYPES = {"002": "broken_end", "006": "broken_yarn", "010": "broken_pick", "016": "weft_curling",
         "019": "fuzzyball", "022": "cut_selvage", "023": "crease", "025": "warp_ball", "027": "knots",
         "029": "contamination", "030": "nep", "036": "weft_crack"}
POOLED = {"016", "023", "027", "029", "036"}  # under 6 images each in this set: defect/other
ROOT = "data/aitex/"
NAME = re.compile(r"^\d{4}_(\d{2,3})_(\d{2})$")  # 2 digits: one good image is named 0018_00_01
MASK = re.compile(r"^(\d{4}_\d{3}_\d{2})_mask\d?$")


def binary_mask(data: bytes, name: str) -> np.ndarray:
    """An anti-aliased mask (gray, or gray RGBA whose alpha carries the edge) → uint8, 255 on each drawn region that
    reaches 128."""
    m = decoded(data, name)
    if m is None:
        raise SystemExit(f"{name}: not a readable mask image")
    if m.ndim == 3:  # composite on black: a half-transparent white edge pixel is half a defect pixel
        alpha = m[..., 3].astype(np.float32) / 255 if m.shape[2] == 4 else 1.0
        m = cv2.cvtColor(m[..., :3], cv2.COLOR_BGR2GRAY) * alpha
    # A defect is a connected region of the drawn (non-zero) pixels that reaches 128 somewhere: thresholding the
    # pixels themselves at 128 would cut a line drawn under a pixel wide into pieces (up to 17 in one image),
    # each then counted as a defect of its own; the faint rim alone (no pixel >= 128) is no defect.
    n, labels, _, _ = cv2.connectedComponentsWithStats((m > 0).astype(np.uint8), connectivity=8)
    strong = np.zeros(n, bool)
    strong[np.unique(labels[m >= 128])] = True
    strong[0] = False
    return np.where(strong[labels], 255, 0).astype(np.uint8)


def rel_path(member: str) -> str:
    """The output path of a source image: good/<name>.png or defect/<type>/<name>.png."""
    stem = Path(member).stem
    m = NAME.match(stem)
    good = member.startswith(ROOT + "NODefect_images/")
    if not m or not (good or m.group(1) in TYPES):
        raise SystemExit(f"{member}: expected a name NNNN_<defect code>_<fabric code>.png, the defect code one "
                         f"of {', '.join(TYPES)}")
    if good:
        return f"good/{stem}.png"
    return f"defect/{'other' if m.group(1) in POOLED else TYPES[m.group(1)]}/{stem}.png"


def make_split(rels: list[str]) -> dict[str, list[str]]:
    """The rule the committed split was made by: per type, by fabric code then name, dealt over SPLIT_CYCLE."""
    split: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    by_type: dict[str, list[str]] = {}
    for rel in rels:
        by_type.setdefault(rel.rsplit("/", 1)[0], []).append(rel)
    for group in by_type.values():
        for i, rel in enumerate(sorted(group, key=lambda r: (Path(r).stem[-2:], r))):
            split[SPLIT_CYCLE[i % len(SPLIT_CYCLE)]].append(rel)
    return {k: sorted(v) for k, v in split.items()}


def read_source(git_dir: str | Path) -> dict[str, bytes]:
    """The files under data/aitex/ except object_detection/, by path (git archive of the mirror's HEAD)."""
    folders = [ROOT + f for f in ("NODefect_images", "Defect_images", "Mask_images")]
    return git_archive(git_dir, folders, "jraad/fabric_defect_detection")


def plan(files: dict[str, bytes]) -> dict[str, tuple[str, list[str]]]:
    """Output path → (source image, its mask files); stops on a mask without an image or a name clash."""
    images = sorted(n for n in files if not n.startswith(ROOT + "Mask_images/"))
    masks: dict[str, list[str]] = {}
    for name in sorted(n for n in files if n.startswith(ROOT + "Mask_images/")):
        m = MASK.match(Path(name).stem)
        if not m:
            raise SystemExit(f"{name}: expected a mask name NNNN_<defect code>_<fabric code>_mask[1|2].png")
        masks.setdefault(m.group(1), []).append(name)
    out: dict[str, tuple[str, list[str]]] = {}
    for name in images:
        rel = rel_path(name)
        if rel in out:
            raise SystemExit(f"{name} and {out[rel][0]}: two images of one name")
        out[rel] = (name, masks.pop(Path(name).stem, []) if rel.startswith("defect/") else [])
    if masks:
        raise SystemExit(f"{', '.join(sorted(masks))}: masks without a defective image in Defect_images/")
    return out


def convert(git_dir: str | Path, out: str | Path, split_file: str | Path = SPLIT_FILE) -> dict:
    """Write the dataset folder; return the (good, defect) counts per split."""
    out, files = Path(out), read_source(git_dir)
    entries = plan(files)
    split = checked_split(Path(split_file), set(entries))
    for rel, (name, mask_names) in entries.items():
        image = decoded(files[name], name, cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise SystemExit(f"{name}: not a readable PNG")
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(out / rel), image)
        if mask_names:
            mask = np.zeros(image.shape, np.uint8)
            for mask_name in mask_names:
                part = binary_mask(files[mask_name], mask_name)
                if part.shape != image.shape:
                    raise SystemExit(f"{mask_name}: mask is {part.shape[1]}x{part.shape[0]} px but its image "
                                     f"{name} is {image.shape[1]}x{image.shape[0]}")
                mask |= part
            if not mask.any():  # an all-zero mask marks no defect: the image stays defective, unmasked
                continue
            write_mask(out, rel, mask)
    return finish(out, split)


if __name__ == "__main__":
    converter_main(sys.argv[1:], __doc__, convert, lambda mirror: make_split(list(plan(read_source(mirror)))),
                   SPLIT_FILE)
