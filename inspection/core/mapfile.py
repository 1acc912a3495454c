"""The attention-map file format of the failure log and the reviews: a 16-bit gray PNG, value = A · 65535.

    >>> data = encode_map(att)             # HxW float in [0, 1] → PNG bytes
    >>> att = decode_map(data)             # PNG bytes (16- or 8-bit, gray or color: red) → HxW float32 in [0, 1]
    >>> att = read_map_file(path)          # the same from a file; None when missing or unreadable
    >>> small = shrink_map(att, (h, w))    # a frame-sized map at the model's map size, as training reads it

OpenCV and numpy only (the line side and the review station use it).
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def encode_map(att: np.ndarray) -> bytes:
    return cv2.imencode(".png", (np.clip(att, 0, 1) * 65535 + 0.5).astype(np.uint16))[1].tobytes()


def decode_map(data: bytes) -> np.ndarray | None:
    """None for unreadable data and for an image that check_pixels refuses (more pixels than MAX_PIXELS, a
    format not accepted)."""
    from inspection.core.imageio import ImageError, decode_frame

    try:
        img = decode_frame(bytes(data))
    except ImageError:
        return None
    if img.ndim == 3:
        img = img[..., 2]  # OpenCV decodes to BGR(A): a color map carries its value in red
    return img.astype(np.float32) / (65535 if img.dtype == np.uint16 else 255)


def read_map_file(path: str | Path | None) -> np.ndarray | None:
    from inspection.core.imageio import ImageError, read_file

    try:
        return decode_map(read_file(path)) if path is not None else None
    except ImageError:
        return None


def shrink_map(att: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """A map brought to (h, w) as L_map's targets are: when shrinking, each cell takes the highest value inside
    it (the bins of torch's adaptive max pooling), so a thin painted crack marks every cell it touches at full
    strength where an area average would dilute it to its share of the cell; bilinear when growing."""
    a = np.asarray(att, np.float32)
    h, w = hw
    if a.shape == (h, w):
        return a.copy()
    if a.shape[0] < h or a.shape[1] < w:
        return cv2.resize(a, (w, h), interpolation=cv2.INTER_LINEAR)
    H, W = a.shape

    def bins(n: int, m: int):
        return [(i * n // m, -(-(i + 1) * n // m)) for i in range(m)]

    rows = np.stack([a[y0:y1].max(0) for y0, y1 in bins(H, h)])
    return np.stack([rows[:, x0:x1].max(1) for x0, x1 in bins(W, w)], axis=1)
