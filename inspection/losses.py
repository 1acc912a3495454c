"""The training losses of METHOD.md: L = L_classify + L_att + W_normal · L_normal (+ γ · L_map).

    >>> total, terms = abn_loss(out, labels, good_index=0, w_normal=1.0)
    >>> terms   # {'classify': ..., 'att': ..., 'normal': ..., 'map': ..., 'total': ...}
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def normal_loss(attention: torch.Tensor, is_normal: torch.Tensor) -> torch.Tensor:
    """L_normal: mean attention over the h·w pixels of each normal image, averaged over normal images."""
    if not bool(is_normal.any()):
        return attention.sum() * 0.0
    return attention[is_normal].mean(dim=(1, 2)).mean()


def map_loss(attention: torch.Tensor, target: torch.Tensor, has_target: torch.Tensor) -> torch.Tensor:
    """L_map: mean squared difference to corrected maps (resized to A), over images that have one."""
    if not bool(has_target.any()):
        return attention.sum() * 0.0
    t = target[has_target]
    if t.shape[-2:] != attention.shape[-2:]:
        t = F.interpolate(t[:, None].float(), size=attention.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return ((attention[has_target] - t) ** 2).mean()


def classify_loss(logits: torch.Tensor, labels: torch.Tensor, use: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy, optionally on a subset of the batch (the patent's strict variant)."""
    if use is not None:
        if not bool(use.any()):
            return logits.sum() * 0.0
        logits, labels = logits[use], labels[use]
    return F.cross_entropy(logits, labels)


def abn_loss(out, labels: torch.Tensor, good_index: int, w_normal: float, strict: bool = False,
             target_maps: torch.Tensor | None = None, has_target: torch.Tensor | None = None,
             gamma_map: float = 0.0) -> tuple[torch.Tensor, dict[str, float]]:
    """Total ABN loss and its terms. `strict`: classification terms on defective images only."""
    logits, att_logits, attention = out
    is_normal = labels == good_index
    use = ~is_normal if strict else None
    l_cls = classify_loss(logits, labels, use)
    l_att = classify_loss(att_logits, labels, use)
    l_norm = normal_loss(attention, is_normal)
    total = l_cls + l_att + w_normal * l_norm
    l_map = torch.zeros((), device=attention.device)
    if target_maps is not None and has_target is not None and gamma_map > 0:
        l_map = map_loss(attention, target_maps, has_target)
        total = total + gamma_map * l_map
    terms = {k: v.item() for k, v in
             {"classify": l_cls, "att": l_att, "normal": l_norm, "map": l_map, "total": total}.items()}
    return total, terms
