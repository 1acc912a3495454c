"""The torch side of a dataset: loader (decoded, resized, cached), augmentation and balanced sampling.

The folder layout, the manifest and the split are in inspection/core/layout.py (torch-free).

    >>> manifest = scan_dataset("data/synthetic", cfg.data)
    >>> train = InspectionDataset(manifest, "train", cfg.data, augment=True)
"""
from __future__ import annotations

import math
import random
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from inspection.core.imageio import read_image, read_map, read_mask
from inspection.core.layout import DatasetError, Manifest
from inspection.core.preprocess import input_size, prepare
from inspection.training.pastes import paste_defects


class InspectionDataset(Dataset):
    """Items of one split as normalized tensors; decoded+resized images are cached in memory.

    Training targets for L_map: an item's corrected map, else its mask when its path is in `mask_targets`; with
    `synthetic` > 0 (augmented sets only), that share of the good images get pasted defects (paste_defects) and
    their shapes as the target ("synthetic": True)."""

    def __init__(self, manifest: Manifest, split: str, data_cfg, augment: bool = False,
                 mask_targets: set[str] | frozenset = frozenset(), synthetic: float = 0.0,
                 shapes: tuple[str, ...] = ("blob",)):
        self.manifest, self.cfg, self.augment = manifest, data_cfg, augment
        self.mask_targets, self.synthetic, self.shapes = mask_targets, synthetic, tuple(shapes)
        self.items = manifest.split(split)
        if not self.items:
            raise DatasetError(f"dataset {manifest.root}: the {split} split is empty")
        self.root = Path(manifest.root)
        self.size = input_size(data_cfg, manifest.items)
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
        img = prepare(read_image(self.root / it.path), self.size, self.cfg.roi)
        image = torch.from_numpy(img).permute(2, 0, 1).to(torch.float16)
        target = None
        if it.corrected or it.path in self.mask_targets:
            if it.corrected:
                m = read_map(self.root / it.corrected)
            else:
                m = read_mask(self.root / it.mask).astype(np.float32)
            full = np.zeros((it.height, it.width), np.float32)
            if m.shape != full.shape:  # maps may be stored at the model's map resolution: stretch to the image
                import cv2
                m = cv2.resize(m, (it.width, it.height), interpolation=cv2.INTER_LINEAR)
            target = torch.from_numpy(prepare(np.repeat(m[..., None], 3, 2), self.size, self.cfg.roi)[..., 0])
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
        pasted = False
        if self.augment:
            rng = random.Random(torch.randint(0, 2**31, ()).item())
            image, target = self._augment(image, target, rng)
            if self.synthetic and self.labels[i] == 0 and target is None and rng.random() < self.synthetic:
                image, target = paste_defects(image, rng, self.shapes)
                pasted = True
        h, w = image.shape[-2:]
        return {"image": (image - self.mean) / self.std, "label": self.labels[i], "index": i,
                "target_map": torch.zeros(h, w) if target is None else target, "has_target": target is not None,
                "synthetic": pasted}


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


def progress_bar(desc: str, unit: str = "img"):
    """A wrapper that shows a bar on stderr while an iterable is consumed (scan_dataset's `progress`)."""
    from tqdm import tqdm

    return lambda items: tqdm(items, desc=desc, unit=unit, file=sys.stderr)


def default_steps(n_train: int, batch_size: int) -> int:
    return max(1, math.ceil(n_train / batch_size))
