"""Attention map → defect boxes in original-image pixels (numpy/OpenCV only; shared by eval and line side).

The rule of METHOD.md: upsample A to the image (bilinear), threshold, connected components, drop
components under a minimum area, box each one and score it by the peak (or mean) attention inside.

    >>> boxes = attention_to_boxes(att, frame_hw=(480, 640), threshold=0.5, min_area=20)
    >>> boxes[0].xyxy, boxes[0].score
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Box:
    """Axis-aligned box in original-image pixels; x1/y1 are exclusive (x1 - x0 = width)."""

    x0: int
    y0: int
    x1: int
    y1: int
    score: float
    area: int  # pixels of the component, not of the box

    @property
    def xyxy(self) -> tuple[int, int, int, int]:
        return (self.x0, self.y0, self.x1, self.y1)

    def to_dict(self) -> dict:
        return asdict(self)


def full_roi(frame_hw: tuple[int, int], roi: tuple[int, int, int, int] | None) -> tuple[int, int, int, int]:
    """The crop (x, y, w, h) the model saw, clipped to the frame; None means the whole frame."""
    fh, fw = frame_hw
    if roi is None:
        return (0, 0, fw, fh)
    x, y, w, h = (int(v) for v in roi)
    x0, y0 = max(0, min(x, fw - 1)), max(0, min(y, fh - 1))
    x1, y1 = max(x0 + 1, min(x + w, fw)), max(y0 + 1, min(y + h, fh))
    return (x0, y0, x1 - x0, y1 - y0)


def upsample_attention(attention: np.ndarray, frame_hw: tuple[int, int],
                       roi: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """Bilinear upsampling of an (h, w) map to the full frame (zeros outside the ROI), float32."""
    x, y, w, h = full_roi(frame_hw, roi)
    up = cv2.resize(np.asarray(attention, np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    if (x, y, w, h) == (0, 0, frame_hw[1], frame_hw[0]):
        return up
    full = np.zeros(frame_hw, np.float32)
    full[y:y + h, x:x + w] = up
    return full


def components_to_boxes(binary: np.ndarray, values: np.ndarray | None = None, min_area: int = 0,
                        score: str = "peak", offset: tuple[int, int] = (0, 0)) -> list[Box]:
    """Boxes of the 8-connected components of a bool image, scored by `values` inside each one."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(binary.astype(np.uint8), connectivity=8)
    boxes = []
    for i in range(1, n):
        x, y, w, h, area = (int(v) for v in stats[i])
        if area < min_area:
            continue
        if values is None:
            s = 1.0
        else:
            inside = values[y:y + h, x:x + w][labels[y:y + h, x:x + w] == i]
            s = float(inside.max() if score == "peak" else inside.mean())
        boxes.append(Box(x + offset[0], y + offset[1], x + w + offset[0], y + h + offset[1], s, area))
    return sorted(boxes, key=lambda b: -b.score)


def attention_to_boxes(attention: np.ndarray, frame_hw: tuple[int, int], threshold: float = 0.5,
                       min_area: int = 0, roi: tuple[int, int, int, int] | None = None,
                       score: str = "peak") -> list[Box]:
    """Defect boxes from an attention map that covers `roi` of a frame of size `frame_hw` (H, W)."""
    if attention.ndim != 2:
        raise ValueError(f"attention map must be 2-D (h, w), got shape {attention.shape}")
    if score not in ("peak", "mean"):
        raise ValueError(f"box score must be 'peak' or 'mean', got {score!r}")
    x, y, w, h = full_roi(frame_hw, roi)
    up = cv2.resize(np.asarray(attention, np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    return components_to_boxes(up >= threshold, up, min_area, score, offset=(x, y))


def mask_to_boxes(mask: np.ndarray, min_area: int = 0) -> list[Box]:
    """Ground-truth boxes: one per connected component of a defect mask."""
    return components_to_boxes(mask > 0, None, min_area)
