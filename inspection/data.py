"""Dataset folder format, manifest with content hashes, deterministic split, loader and balanced sampling.

Layout (any image format PIL reads: PNG, JPEG, BMP, TIFF; 8/16-bit; gray or color; any size):

    root/good/**/*.png                 normal parts
    root/defect/<type>/**/*.png        defective parts, one folder per defect type
    root/masks/<type>/<same path>.png  optional pixel masks (evaluation only)
    root/corrected/<good|defect/<type>>/<same path>.png|.npy   optional corrected attention maps

    >>> manifest = scan_dataset("data/synthetic", cfg.data)
    >>> train = InspectionDataset(manifest, "train", cfg.data, augment=True)
"""
from __future__ import annotations

import hashlib
import json
import math
import random
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from inspection.imageio import IMAGE_SUFFIXES, ImageError, decode_image, read_image, read_map, read_mask
from inspection.preprocess import prepare

GOOD = "good"
SPLITS = ("train", "val", "test")


class DatasetError(ValueError):
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


def scan_dataset(root: str | Path, data_cfg, progress: bool = False) -> Manifest:
    """Read a dataset folder, check every file, hash contents and split it; bad images are skipped and listed."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist")
    good_dir, defect_dir = root / "good", root / "defect"
    if not good_dir.is_dir():
        raise DatasetError(f"dataset {root} has no good/ folder (expected good/ and defect/<type>/ with images)")
    if not defect_dir.is_dir():
        raise DatasetError(f"dataset {root} has no defect/ folder (expected defect/<type>/ with images)")
    types = sorted(p.name for p in defect_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not types:
        raise DatasetError(f"dataset {root}: defect/ has no <type>/ subfolders (e.g. defect/scratch/)")
    sources = [(GOOD, good_dir)] + [(t, defect_dir / t) for t in types]
    candidates, skipped = [], []
    for kind, folder in sources:
        files, bad = _image_files(folder)
        candidates += [(kind, f) for f in files]
        skipped += bad
    iterator = candidates
    if progress:
        from tqdm import tqdm
        iterator = tqdm(candidates, desc="scan", unit="img", file=sys.stderr)
    items, mask_errors = [], []
    for kind, path in iterator:
        rel = path.relative_to(root).as_posix()
        try:
            data = path.read_bytes()
            img = decode_image(data, path)
        except (OSError, ImageError) as exc:
            skipped.append((str(path), str(exc)))
            continue
        item = Item(rel, kind, hashlib.sha256(data).hexdigest(), img.shape[1], img.shape[0])
        if kind != GOOD:
            inner = path.relative_to(defect_dir / kind)
            mask = _find_sibling(root / "masks" / kind, inner, (".png", ".bmp", ".tif", ".tiff", path.suffix))
            if mask is not None:
                m = read_mask(mask)
                if m.shape != img.shape[:2]:
                    mask_errors.append(f"{mask}: mask is {m.shape[1]}x{m.shape[0]} px but its image {path} "
                                       f"is {img.shape[1]}x{img.shape[0]}")
                item.mask = mask.relative_to(root).as_posix()
        corrected = _find_sibling(root / "corrected", Path(rel), (".png", ".npy"))
        if corrected is not None:
            item.corrected = corrected.relative_to(root).as_posix()
        items.append(item)
    if mask_errors:
        raise DatasetError("masks do not match their images:\n  " + "\n  ".join(mask_errors))
    kinds = {it.defect_type for it in items}
    if GOOD not in kinds:
        raise DatasetError(f"dataset {root}: good/ holds no readable images ({len(skipped)} files skipped)")
    if kinds == {GOOD}:
        raise DatasetError(f"dataset {root}: defect/<type>/ folders hold no readable images; "
                           f"training needs both good and defective examples")
    present = [t for t in types if t in kinds]
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


class InspectionDataset(Dataset):
    """Items of one split as normalized tensors; decoded+resized images are cached in memory.

    Training targets for L_map: an item's corrected map, else its mask when its path is in `mask_targets`."""

    def __init__(self, manifest: Manifest, split: str, data_cfg, augment: bool = False,
                 mask_targets: set[str] | frozenset = frozenset()):
        self.manifest, self.cfg, self.augment = manifest, data_cfg, augment
        self.mask_targets = mask_targets
        self.items = manifest.split(split)
        if not self.items:
            raise DatasetError(f"dataset {manifest.root}: the {split} split is empty")
        self.root = Path(manifest.root)
        self.labels = [manifest.class_index(it) for it in self.items]
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self.mean = torch.tensor(data_cfg.mean).view(3, 1, 1)
        self.std = torch.tensor(data_cfg.std).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.items)

    def load(self, i: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(image (3, H, W) float in [0, 1], corrected map (H, W) or None) at the model's input size."""
        if i in self._cache:
            return self._cache[i]
        it = self.items[i]
        img = prepare(read_image(self.root / it.path), self.cfg.image_size, self.cfg.roi)
        image = torch.from_numpy(img).permute(2, 0, 1).to(torch.float16)
        target = None
        if it.corrected or it.path in self.mask_targets:
            m = read_map(self.root / it.corrected) if it.corrected else read_mask(self.root / it.mask).astype(np.float32)
            full = np.zeros((it.height, it.width), np.float32)
            if m.shape != full.shape:  # maps may be stored at the model's map resolution: stretch to the image
                import cv2
                m = cv2.resize(m, (it.width, it.height), interpolation=cv2.INTER_LINEAR)
            target = torch.from_numpy(prepare(np.repeat(m[..., None], 3, 2), self.cfg.image_size, self.cfg.roi)[..., 0])
        if self.cfg.cache:
            self._cache[i] = (image, target)
        return image, target

    def _augment(self, image: torch.Tensor, target: torch.Tensor | None, rng: random.Random):
        import torchvision.transforms.v2.functional as TF

        a = self.cfg.augment
        stack = image if target is None else torch.cat([image, target[None]])
        if a.hflip and rng.random() < 0.5:
            stack = stack.flip(-1)
        if a.vflip and rng.random() < 0.5:
            stack = stack.flip(-2)
        if a.rotate_deg or a.shift:
            h, w = stack.shape[-2:]
            angle = rng.uniform(-a.rotate_deg, a.rotate_deg)
            tx, ty = (round(rng.uniform(-a.shift, a.shift) * s) for s in (w, h))
            stack = TF.affine(stack, angle=angle, translate=[tx, ty], scale=1.0, shear=[0.0, 0.0],
                              interpolation=TF.InterpolationMode.BILINEAR)
        image = stack[:3]
        if a.brightness or a.contrast:
            b = 1 + rng.uniform(-a.brightness, a.brightness)
            c = 1 + rng.uniform(-a.contrast, a.contrast)
            m = image.mean()
            image = ((image * b - m) * c + m).clamp(0, 1)
        return image, (None if target is None else stack[3])

    def __getitem__(self, i: int) -> dict:
        image, target = self.load(i)
        image = image.float()
        target = None if target is None else target.float()
        if self.augment:
            image, target = self._augment(image, target, random.Random(torch.randint(0, 2**31, ()).item()))
        h, w = image.shape[-2:]
        return {"image": (image - self.mean) / self.std, "label": self.labels[i], "index": i,
                "target_map": torch.zeros(h, w) if target is None else target, "has_target": target is not None}


class BalancedBatchSampler(Sampler):
    """Batches with half normal and half defective images (each pool reshuffled when used up)."""

    def __init__(self, is_good: list[bool], batch_size: int, steps: int, seed: int = 0, rank: int = 0,
                 world: int = 1):
        """Under DDP (`world` processes) every rank draws the same global batch and yields its `rank`-th
        share: batch_size / world images, half good and half defective like the whole batch."""
        self.good = [i for i, g in enumerate(is_good) if g]
        self.defect = [i for i, g in enumerate(is_good) if not g]
        self.is_good = set(self.good)
        if not self.good or not self.defect:
            raise DatasetError("balanced sampling needs both good and defective training images")
        if world > 1 and batch_size % (2 * world):
            raise DatasetError(f"train.batch_size {batch_size} is the global batch: with {world} processes it "
                               f"must be a multiple of {2 * world} (as many good as defective images each)")
        self.batch_size, self.steps, self.seed, self.epoch = batch_size, steps, seed, 0
        self.rank, self.world = rank, world

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        rng = random.Random(self.seed * 100003 + self.epoch)
        self.epoch += 1
        pools = {"good": [], "defect": []}

        def take(name, source):
            if not pools[name]:
                pools[name] = rng.sample(source, len(source))
            return pools[name].pop()

        n_good = self.batch_size // 2
        for _ in range(self.steps):
            batch = [take("good", self.good) for _ in range(n_good)]
            batch += [take("defect", self.defect) for _ in range(self.batch_size - n_good)]
            rng.shuffle(batch)
            if self.world > 1:
                good = [i for i in batch if i in self.is_good]
                batch = good[self.rank::self.world] + [i for i in batch if i not in self.is_good][self.rank::self.world]
            yield batch


def default_steps(n_train: int, batch_size: int) -> int:
    return max(1, math.ceil(n_train / batch_size))
