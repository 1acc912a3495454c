"""Attention overlays with predicted (red) and true (green) boxes (numpy/OpenCV; shared with the line side).

    >>> rgb = overlay(image, attention_full_frame, pred_boxes, true_boxes, alpha=0.45)
"""
from __future__ import annotations

import cv2
import numpy as np


def to_uint8(image: np.ndarray) -> np.ndarray:
    return image if image.dtype == np.uint8 else (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


def overlay(image: np.ndarray, attention: np.ndarray, pred_boxes=(), true_boxes=(), alpha: float = 0.45,
            label: str | None = None) -> np.ndarray:
    """RGB uint8 image with a JET attention overlay (map already at image size, values in [0, 1])."""
    rgb = to_uint8(image)
    heat = cv2.applyColorMap(to_uint8(attention), cv2.COLORMAP_JET)[..., ::-1]
    out = cv2.addWeighted(rgb, 1 - alpha, heat, alpha, 0)
    thick = max(1, round(max(rgb.shape[:2]) / 200))
    for b in true_boxes:
        x0, y0, x1, y1 = (int(v) for v in (b.xyxy if hasattr(b, "xyxy") else b))
        cv2.rectangle(out, (x0, y0), (x1 - 1, y1 - 1), (0, 255, 0), thick)
    for b in pred_boxes:
        x0, y0, x1, y1 = (int(v) for v in (b.xyxy if hasattr(b, "xyxy") else b))
        cv2.rectangle(out, (x0, y0), (x1 - 1, y1 - 1), (255, 40, 40), thick)
    if label:
        cv2.putText(out, label, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    return out
