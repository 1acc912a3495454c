"""Frame → model input, the one definition shared by training, evaluation and the line side (numpy/OpenCV).

    >>> x = prepare(read_image(path), image_size=(192, 192), roi=None)      # HxWx3 float32 in [0, 1]
    >>> batch = to_input([x], mean, std)                                    # (B, 3, H, W) float32
"""
from __future__ import annotations

import cv2
import numpy as np

from inspection.boxes import full_roi


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
