"""The dataset folder layout, torch-free: items, masks, corrected maps, the manifest and its split.

    root/good/**/*.png                 normal parts (any image format PIL/OpenCV reads; 8/16-bit; gray or color)
    root/defect/<type>/**/*.png        defective parts, one folder per defect type
    root/masks/<type>/<same path>.png  optional pixel masks (evaluation only)
    root/corrected/<good|defect/<type>>/<same path>.png|.npy   optional corrected attention maps
    root/split.json                    optional split file (else a deterministic split by content hash)

    >>> manifest = scan_dataset("data/synthetic", cfg.data)
    >>> manifest.split("val"), manifest.classes, manifest.content_hash

The line side, the gate and the review export read datasets through this module; the torch dataset, sampler
and augmentation are in inspection/training/loader.py.
"""
from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from inspection.core.errors import UserError
from inspection.core.imageio import IMAGE_SUFFIXES, ImageError, decode_image, read_mask

GOOD = "good"
SPLITS = ("train", "val", "test")


class DatasetError(UserError, ValueError):
    """A dataset that cannot be used as a whole; the message names the folder or file."""


@dataclass
class Item:
    path: str                     # relative to the dataset root, with forward slashes
    defect_type: str              # "good" or the defect folder name
    sha256: str
    width: int
    height: int
    split: str = ""
    mask: str | None = None
    corrected: str | None = None


@dataclass
class Manifest:
    root: str
    classes: list[str]            # index 0 is always "good"
    items: list[Item]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    seed: int = 0

    def class_index(self, item: Item) -> int:
        if len(self.classes) == 2 and self.classes[1] == "defect":
            return 0 if item.defect_type == GOOD else 1
        return self.classes.index(item.defect_type)

    def split(self, name: str) -> list[Item]:
        return [it for it in self.items if it.split == name]

    @property
    def content_hash(self) -> str:
        """Hash of (path, content hash, label, split) of every item: same data and split, same hash."""
        rows = sorted((it.path, it.sha256, it.defect_type, it.split) for it in self.items)
        return hashlib.sha256(json.dumps(rows).encode()).hexdigest()

    def save(self, path: str | Path) -> None:
        data = {"root": self.root, "classes": self.classes, "seed": self.seed, "content_hash": self.content_hash,
                "counts": self.counts(), "skipped": self.skipped, "items": [asdict(it) for it in self.items]}
        Path(path).write_text(json.dumps(data, indent=1))

    @classmethod
    def load(cls, path: str | Path) -> "Manifest":
        data = json.loads(Path(path).read_text())
        return cls(data["root"], data["classes"], [Item(**it) for it in data["items"]],
                   [tuple(s) for s in data.get("skipped", [])], data.get("seed", 0))

    def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {s: {} for s in SPLITS}
        for it in self.items:
            out.setdefault(it.split, {})
            out[it.split][it.defect_type] = out[it.split].get(it.defect_type, 0) + 1
        return out


def _image_files(folder: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    files, skipped = [], []
    for p in sorted(folder.rglob("*")):
        if p.is_dir() or p.name.startswith("."):
            continue
        if p.suffix.lower() in IMAGE_SUFFIXES:
            files.append(p)
        elif p.name not in ("Thumbs.db", "desktop.ini"):
            skipped.append((str(p), f"not an image file (expected one of {', '.join(IMAGE_SUFFIXES)})"))
    return files, skipped


def _find_sibling(base: Path, rel: Path, suffixes) -> Path | None:
    """base/rel with any of the suffixes (masks and maps may be PNG for a JPEG image)."""
    for suf in suffixes:
        cand = base / rel.with_suffix(suf)
        if cand.exists():
            return cand
    return None


def _rank(seed: int, rel: str) -> str:
    return hashlib.sha256(f"{seed}:{rel}".encode()).hexdigest()


def _auto_split(items: list[Item], fractions, seed: int, binary: bool) -> None:
    """Stratified by class (each defect type in per_type mode), ordered by a seeded hash of the path."""
    by_type: dict[str, list[Item]] = {}
    for it in items:
        key = ("defect" if it.defect_type != GOOD else GOOD) if binary else it.defect_type
        by_type.setdefault(key, []).append(it)
    for kind, group in sorted(by_type.items()):
        group.sort(key=lambda it: _rank(seed, it.path))
        n = len(group)
        n_val = max(1, round(n * fractions.val))
        n_test = max(1, round(n * fractions.test))
        if n - n_val - n_test < 1:
            raise DatasetError(f"class {kind!r} has {n} images; at least 3 are needed to split into "
                               f"train/val/test (add images, or use data.label_mode: binary to pool defect types)")
        for i, it in enumerate(group):
            it.split = "val" if i < n_val else "test" if i < n_val + n_test else "train"


def _apply_split_file(items: list[Item], split_file: Path) -> list[Item]:
    try:
        spec = json.loads(split_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"split file {split_file}: cannot read JSON ({exc})") from None
    if not isinstance(spec, dict) or set(spec) - set(SPLITS) or not all(isinstance(v, list) for v in spec.values()):
        raise DatasetError(f"split file {split_file}: expected {{\"train\": [...], \"val\": [...], \"test\": [...]}} "
                           f"with relative image paths, got keys {sorted(spec) if isinstance(spec, dict) else spec!r}")
    by_path = {it.path: it for it in items}
    seen: dict[str, str] = {}
    for name, paths in spec.items():
        for rel in paths:
            rel = str(rel).replace("\\", "/")
            if rel not in by_path:
                raise DatasetError(f"split file {split_file}: {name} lists {rel!r}, which is not a readable image "
                                   f"under good/ or defect/<type>/ of the dataset")
            if rel in seen:
                raise DatasetError(f"split file {split_file}: {rel!r} is in both {seen[rel]} and {name}")
            seen[rel] = name
            by_path[rel].split = name
    return [it for it in items if it.split]


@dataclass
class Found:
    """One image of a dataset folder, found by its place in the layout (not yet read)."""

    kind: str                     # "good" or the defect type (its folder under defect/)
    path: Path
    mask: Path | None = None      # masks/<type>/<same path>, any image suffix
    corrected: Path | None = None  # corrected/<good|defect/<type>>/<same path>.png|.npy


def find_images(root: str | Path, complete: bool = True) -> tuple[list[Found], list[tuple[str, str]]]:
    """Every image under good/ and defect/<type>/ with its mask and corrected map, and the files skipped (path,
    reason). The one reader of the layout. complete: raise DatasetError when a folder of the layout is missing
    (else take what is there: a set of reviewed parts may hold only good/)."""
    root = Path(root)
    good_dir, defect_dir = root / "good", root / "defect"
    types = sorted(p.name for p in defect_dir.iterdir() if p.is_dir() and not p.name.startswith(".")) \
        if defect_dir.is_dir() else []
    if complete:
        if not root.is_dir():
            raise DatasetError(f"dataset folder {root} does not exist")
        if not good_dir.is_dir():
            raise DatasetError(f"dataset {root} has no good/ folder (expected good/ and defect/<type>/ with images)")
        if not defect_dir.is_dir():
            raise DatasetError(f"dataset {root} has no defect/ folder (expected defect/<type>/ with images)")
        if not types:
            raise DatasetError(f"dataset {root}: defect/ has no <type>/ subfolders (e.g. defect/scratch/)")
    found, skipped = [], []
    for kind, folder in ([(GOOD, good_dir)] if good_dir.is_dir() else []) + [(t, defect_dir / t) for t in types]:
        files, bad = _image_files(folder)
        skipped += bad
        for path in files:
            mask = None if kind == GOOD else _find_sibling(
                root / "masks" / kind, path.relative_to(folder), (".png", ".bmp", ".tif", ".tiff", path.suffix))
            found.append(Found(kind, path, mask, _find_sibling(root / "corrected", path.relative_to(root),
                                                               (".png", ".npy"))))
    return found, skipped


def scan_dataset(root: str | Path, data_cfg, progress: Callable[[list], Iterable] | None = None) -> Manifest:
    """Read a dataset folder, check every file, hash contents and split it; bad images are skipped and listed.
    `progress`: wraps the list of files to show a bar (inspection.training.loader.progress_bar)."""
    root = Path(root)
    candidates, skipped = find_images(root)
    iterator = progress(candidates) if progress else candidates
    items, mask_errors = [], []
    for found in iterator:
        path, kind = found.path, found.kind
        rel = path.relative_to(root).as_posix()
        try:
            data = path.read_bytes()
            img = decode_image(data, path)
        except (OSError, ImageError) as exc:
            skipped.append((str(path), str(exc)))
            continue
        item = Item(rel, kind, hashlib.sha256(data).hexdigest(), img.shape[1], img.shape[0])
        if found.mask is not None:
            m = read_mask(found.mask)
            if m.shape != img.shape[:2]:
                mask_errors.append(f"{found.mask}: mask is {m.shape[1]}x{m.shape[0]} px but its image {path} "
                                   f"is {img.shape[1]}x{img.shape[0]}")
            item.mask = found.mask.relative_to(root).as_posix()
        if found.corrected is not None:
            item.corrected = found.corrected.relative_to(root).as_posix()
        items.append(item)
    if mask_errors:
        raise DatasetError("masks do not match their images:\n  " + "\n  ".join(mask_errors))
    kinds = {it.defect_type for it in items}
    if GOOD not in kinds:
        raise DatasetError(f"dataset {root}: good/ holds no readable images ({len(skipped)} files skipped)")
    if kinds == {GOOD}:
        raise DatasetError(f"dataset {root}: defect/<type>/ folders hold no readable images; "
                           f"training needs both good and defective examples")
    present = sorted(kinds - {GOOD})
    classes = [GOOD, "defect"] if data_cfg.label_mode == "binary" else [GOOD] + present
    if data_cfg.split_file:
        items = _apply_split_file(items, Path(data_cfg.split_file))
    else:
        _auto_split(items, data_cfg.split, data_cfg.seed, data_cfg.label_mode == "binary")
    manifest = Manifest(str(root), classes, items, skipped, data_cfg.seed)
    for name in ("train", "val"):
        split_kinds = {it.defect_type == GOOD for it in manifest.split(name)}
        if split_kinds != {True, False}:
            raise DatasetError(f"dataset {root}: the {name} split needs both good and defective images "
                               f"(check the split file or add images)")
    return manifest


def mask_targets(manifest: Manifest, n: int, seed: int = 0) -> set[str]:
    """The `n` defect training images (a seeded pick) whose pixel masks serve as L_map targets (mixed
    supervision, `train.mask_supervision`); all of them when fewer have masks. Empty for n = 0."""
    if n <= 0:
        return set()
    masked = sorted((it for it in manifest.split("train") if it.defect_type != GOOD and it.mask),
                    key=lambda it: _rank(seed, it.path))
    if not masked:
        raise DatasetError(f"train.mask_supervision={n}: the train split of {manifest.root} has no defect image "
                           f"with a mask (masks/<type>/<same path as the image>); set it to 0 to train on image "
                           f"labels only")
    if len(masked) < n:
        print(f"train.mask_supervision={n}: only {len(masked)} masked defect images in the train split; "
              f"using all of them", file=sys.stderr)
    return {it.path for it in masked[:n]}
