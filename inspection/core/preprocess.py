"""Frame → model input, the one definition shared by training, evaluation and the line side (numpy/OpenCV).

    >>> x = prepare(read_image(path), image_size=(192, 192), roi=None)      # HxWx3 float32 in [0, 1]
    >>> batch = to_input([x], mean, std)                                    # (B, 3, H, W) float32
"""
from __future__ import annotations

import cv2
import numpy as np

from inspection.core.boxes import full_roi


def prepare(image: np.ndarray, image_size: tuple[int, int], roi=None) -> np.ndarray:
    """Crop the ROI (x, y, w, h in original pixels) and resize to image_size (H, W); HxWx3 float32."""
    x, y, w, h = full_roi(image.shape[:2], roi)
    crop = image[y:y + h, x:x + w]
    ih, iw = image_size
    interp = cv2.INTER_AREA if (w > iw or h > ih) else cv2.INTER_LINEAR
    return cv2.resize(crop, (iw, ih), interpolation=interp).astype(np.float32, copy=False)


def to_input(images: list[np.ndarray], mean, std) -> np.ndarray:
    """Stack prepared HxWx3 images into a normalized (B, 3, H, W) float32 batch."""
    batch = np.stack(images).astype(np.float32)
    batch = (batch - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))


def _crops(data_cfg, items) -> np.ndarray:
    """(N, 2) width and height of each item's ROI crop, the part the model sees."""
    return np.array([full_roi((it.height, it.width), data_cfg.roi)[2:] for it in items], float).reshape(-1, 2)


def input_size(data_cfg, items) -> tuple[int, int]:
    """The model input (H, W): `data_cfg.image_size`, or for 'auto' the shape of the parts the model will see
    (each item's ROI crop): their median aspect ratio at their median area, capped at `data_cfg.max_pixels`
    (more pixels find smaller defects and cost time in proportion), each side a multiple of 32."""
    if data_cfg.image_size != "auto":
        return tuple(data_cfg.image_size)
    crops = _crops(data_cfg, items)
    if not len(crops):
        raise ValueError("data.image_size auto: no images to take the input shape from")
    aspect = float(np.median(crops[:, 1] / crops[:, 0]))  # height / width
    area = min(float(np.median(crops[:, 0] * crops[:, 1])), float(data_cfg.max_pixels))
    side = lambda v: int(min(2048, max(32, round(v / 32) * 32)))  # noqa: E731
    return side(np.sqrt(area * aspect)), side(np.sqrt(area / aspect))


def scale_note(data_cfg, items, size: tuple[int, int], stride: int) -> str:
    """What the input size means for defects: how much the parts (their median ROI crop) shrink per side and how
    many of a part's pixels one map cell covers; with a hint when marks a few pixels wide would fade."""
    crops = _crops(data_cfg, items)
    w, h = np.median(crops, axis=0) if len(crops) else size[::-1]
    sy, sx = h / size[0], w / size[1]
    note = (f"input {size[0]}x{size[1]} from parts of median {h:.0f}x{w:.0f} px (shrunk {sy:.1f}x / {sx:.1f}x): "
            f"one map cell covers about {sy * stride:.0f}x{sx * stride:.0f} px of a part")
    if max(sy, sx) >= 2:
        note += (f"; marks under about {max(sy, sx):.0f} px across lose most of their contrast: for such defects "
                 "raise data.max_pixels (or set data.image_size) or crop to the part with data.roi")
    return note
