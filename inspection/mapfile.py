"""The attention-map file format of the failure log and the reviews: a 16-bit gray PNG, value = A · 65535.

    >>> data = encode_map(att)             # HxW float in [0, 1] → PNG bytes
    >>> att = decode_map(data)             # PNG bytes (16- or 8-bit, gray or color: red) → HxW float32 in [0, 1]
    >>> att = read_map_file(path)          # the same from a file; None when missing or unreadable

OpenCV and numpy only (the line side and the review station use it).
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def encode_map(att: np.ndarray) -> bytes:
    return cv2.imencode(".png", (np.clip(att, 0, 1) * 65535 + 0.5).astype(np.uint16))[1].tobytes()


def decode_map(data: bytes | np.ndarray) -> np.ndarray | None:
    """None for unreadable data and for an image whose header declares more pixels than MAX_PIXELS."""
    from inspection.imageio import HEADER_BYTES, ImageError, check_pixels

    try:
        check_pixels(bytes(data[:HEADER_BYTES]))
    except ImageError:
        return None
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        return None
    if img.ndim == 3:
        img = img[..., 2]  # OpenCV decodes to BGR(A): a color map carries its value in red
    return img.astype(np.float32) / (65535 if img.dtype == np.uint16 else 255)


def read_map_file(path: str | Path | None) -> np.ndarray | None:
    try:
        return decode_map(Path(path).read_bytes()) if path is not None else None
    except OSError:
        return None
