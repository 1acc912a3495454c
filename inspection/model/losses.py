"""The training losses: L = L_classify + L_att + W_normal · L_normal + W_defect · L_defect (+ W_spread · L_spread
+ γ · L_map).

L_normal (the Toshiba patent's) asks the map to be low on good images; L_defect, its counterpart, asks the
map's few highest cells to be high on defective images: without it nothing makes the map rise where the
defect is, and on real parts the map went flat at a low level, defects included.

    >>> total, terms = abn_loss(out, labels, good_index=0, w_normal=1.0, w_defect=1.0)
    >>> terms   # {'classify': ..., 'att': ..., 'normal': ..., 'defect': ..., 'spread': ..., 'map': ..., 'total': ...}
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def normal_loss(attention: torch.Tensor, is_normal: torch.Tensor) -> torch.Tensor:
    """L_normal: mean attention over the h·w pixels of each normal image, averaged over normal images."""
    if not bool(is_normal.any()):
        return attention.sum() * 0.0
    return attention[is_normal].mean(dim=(1, 2)).mean()


MAP_HOT = 0.5  # a map cell at or above this is hot: what the review overlay shows as a defect, where boxes start
TERMS = ("classify", "att", "normal", "defect", "spread", "map", "total")  # the terms abn_loss reports, in order


def top_count(cells: int, topk: float) -> int:
    """k, the number of a map's highest cells the losses read: topk · cells, at least 1."""
    return max(1, round(topk * cells))


def spread_loss(attention: torch.Tensor, is_defect: torch.Tensor, topk: float = 0.02,
                cells: str = "all") -> torch.Tensor:
    """L_spread: on defective images, the mean map over the cells outside its k highest (k as in L_defect),
    averaged over those images: L_normal's pull towards zero on what is not the defect. Nothing else keeps a
    defective part's map from lighting far beyond its defect (the image label says only that a defect is there).

    `cells` "cold" pulls only the cells under MAP_HOT among them (the sum still over all cells outside the top
    k): a region the map already calls a defect keeps its size, however many cells it covers, and only the
    lukewarm cells around and between are pulled down, where "all" holds every map to about k hot cells.
    "joined" keeps only the hot regions that hold a top-k cell (8-connected, at MAP_HOT): the defect's own
    region keeps its size, hot regions elsewhere are pulled down with the lukewarm cells."""
    if cells not in ("all", "cold", "joined"):
        raise ValueError(f"train.spread_cells must be 'all', 'cold' or 'joined', got {cells!r}")
    if not bool(is_defect.any()):
        return attention.sum() * 0.0
    maps = attention[is_defect]
    a = maps.flatten(1)
    k = top_count(a.shape[1], topk)
    if k >= a.shape[1]:
        return attention.sum() * 0.0
    top = torch.zeros_like(a, dtype=torch.bool).scatter_(1, a.topk(k, dim=1).indices, True)
    kept = top if cells == "all" else top | (a.detach() >= MAP_HOT)
    if cells == "joined":
        kept = _joined(top.view_as(maps), kept.view_as(maps)).flatten(1)
    return ((a * ~kept).sum(1) / (a.shape[1] - k)).mean()


def _joined(seed: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """The cells of `allowed` 8-connected to a `seed` cell through `allowed` cells (boolean, N×h×w)."""
    region = seed & allowed
    while True:
        grown = (F.max_pool2d(region.float(), 3, stride=1, padding=1) > 0) & allowed
        if torch.equal(grown, region):
            return region
        region = grown


def defect_loss(attention: torch.Tensor, is_defect: torch.Tensor, topk: float = 0.02,
                on_good: bool = True, pool: str = "topk") -> torch.Tensor:
    """L_defect: the mean of the k highest map cells (k = topk · h·w, at least 1) read as the image's defect
    probability, with binary cross-entropy against the label: high on defective images (−log p), and with
    `on_good` low on good ones (−log(1 − p)), averaged over the images it applies to.

    The good side matters: L_normal, a mean over all cells, barely feels a small hot spot (an image border, a
    bright edge) that is hot on every part; the top-k of a defective image then settles on that spot instead of
    the defect. The log keeps a gradient where the map starts near 0 or 1.

    `pool` "region" reads the probability as region_probability does (the mean of the cells at or above 0.5, at
    most k; the top-k mean where none is): the loss then pushes only the cells already hot, and asks no number
    of cells to light, where "topk" asks k cells whatever the defect's size.
    """
    if pool not in ("topk", "region"):
        raise ValueError(f"train.defect_pool must be 'topk' or 'region', got {pool!r}")
    use = torch.ones_like(is_defect) if on_good else is_defect
    if not bool(use.any()):
        return attention.sum() * 0.0
    read = map_probability if pool == "topk" else region_probability
    p = read(attention[use], topk).clamp(1e-6, 1 - 1e-6)
    return F.binary_cross_entropy(p, is_defect[use].float())


def map_probability(attention: torch.Tensor, topk: float = 0.02) -> torch.Tensor:
    """The map's own defect probability per image: the mean of its k highest cells (k = topk · h·w, at least 1),
    the quantity L_defect trains."""
    a = attention.flatten(1)
    return a.topk(top_count(a.shape[1], topk), dim=1).values.mean(1)


def region_probability(attention: torch.Tensor, topk: float = 0.02) -> torch.Tensor:
    """An operator-corrected map's defect probability: the mean of its cells at or above 0.5 (the box rule's
    region), at most its k highest; the top-k mean where no cell reaches 0.5. A painted pit of two cells then
    counts as the defect it is, where map_probability would average it with k − 2 cold cells; a map erased below
    0.5 keeps map_probability."""
    a = attention.flatten(1)
    k = top_count(a.shape[1], topk)
    top = a.topk(k, dim=1).values
    n = (a >= 0.5).sum(1)
    m = n.clamp(1, k)
    hot = (top * (torch.arange(k, device=a.device)[None] < m[:, None])).sum(1) / m
    return torch.where(n > 0, hot, top.mean(1))


SLIVER = 0.6  # map_target "share": the target of a cell a defect only touches (one it covers is 1)


def resize_target(target: torch.Tensor, size: tuple[int, int], cells: str = "touched") -> torch.Tensor:
    """(B, H, W) target maps at the map's size: when shrinking, `cells` "touched" gives a cell the highest value
    inside it (a painted or masked defect marks every cell it touches, however thin, at full strength); "share"
    scales that by the share s of the cell the defect covers, 1 / (2 - s) from SLIVER up to 1 (covered): the
    bilinear map's 0.5 level then falls near the defect's edge inside the cell, where "touched" puts it on the
    cell's border. Bilinear when growing."""
    if cells not in ("touched", "share"):
        raise ValueError(f"train.map_target must be 'touched' or 'share', got {cells!r}")
    if tuple(target.shape[-2:]) == tuple(size):
        return target
    t = target[:, None].float()
    if t.shape[-2] >= size[0] and t.shape[-1] >= size[1]:
        top = F.adaptive_max_pool2d(t, size)[:, 0]
        if cells == "touched":
            return top
        share = F.adaptive_avg_pool2d(t, size)[:, 0] / top.clamp(min=1e-6)
        return top * (1 / (2 - share)).clamp(min=SLIVER)
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False)[:, 0]


def map_loss(attention: torch.Tensor, target: torch.Tensor, has_target: torch.Tensor,
             form: str = "balanced", cells: str = "touched") -> torch.Tensor:
    """L_map: squared difference to corrected maps (resized to A), over the images that have one.

    form "l2": the mean over every cell (the patent's plain form). A correction of a few cells (a thin crack
    painted, a small false hot spot erased) then weighs as little as its share of the map (about 0.007 for one
    cell of a 12x12 map) beside the cells nobody touched.
    form "balanced": per image, the hot cells (where the target or the map is at least MAP_HOT, which is where
    an operator paints or erases) and the other cells each weigh half; an image with no hot cell gets the plain
    mean. A correction on a share s of the cells thus moves the gradient there by 1 / (2s) against "l2" (50x
    at 1 %), and the untouched cells by 1 / (2(1 - s)).
    """
    if not bool(has_target.any()):
        return attention.sum() * 0.0
    a = attention[has_target]
    t = resize_target(target[has_target], a.shape[-2:], cells)
    err = (a - t) ** 2
    if form == "l2":
        return err.mean()
    if form != "balanced":
        raise ValueError(f"map loss form must be 'balanced' or 'l2', got {form!r}")
    hot = ((t >= MAP_HOT) | (a.detach() >= MAP_HOT)).float()
    n_hot, n_cold = hot.sum((1, 2)), (1 - hot).sum((1, 2))
    hot_mean = (err * hot).sum((1, 2)) / n_hot.clamp(min=1)
    cold_mean = (err * (1 - hot)).sum((1, 2)) / n_cold.clamp(min=1)
    per_image = torch.where((n_hot > 0) & (n_cold > 0), 0.5 * hot_mean + 0.5 * cold_mean, err.mean((1, 2)))
    return per_image.mean()


def classify_loss(logits: torch.Tensor, labels: torch.Tensor, use: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy, optionally on a subset of the batch (the patent's strict variant)."""
    if use is not None:
        if not bool(use.any()):
            return logits.sum() * 0.0
        logits, labels = logits[use], labels[use]
    return F.cross_entropy(logits, labels)


def abn_loss(out, labels: torch.Tensor, good_index: int, w_normal: float, strict: bool = False,
             target_maps: torch.Tensor | None = None, has_target: torch.Tensor | None = None,
             gamma_map: float = 0.0, w_defect: float = 0.0, defect_topk: float = 0.02,
             defect_on_good: bool = True, map_form: str = "balanced",
             synthetic: torch.Tensor | None = None, defect_pool: str = "topk",
             map_target: str = "touched", w_spread: float = 0.0,
             spread_cells: str = "all") -> tuple[torch.Tensor, dict[str, float]]:
    """Total ABN loss and its terms. `strict`: classification terms on defective images only. `synthetic`: good
    images carrying pasted defects (inspection/data.paste_defects): their pastes are their L_map target and
    they have no other term. L_defect's top-k would ask more cells to light than a small paste covers (2 % of
    a KolektorSDD map is 13 cells, a paste 1-3), and the map then learns to light the part's own specks."""
    logits, att_logits, attention = out.logits, out.att_logits, out.attention
    real = torch.ones_like(labels, dtype=torch.bool) if synthetic is None else ~synthetic.bool()
    is_normal = (labels == good_index) & real
    use = real & ~is_normal if strict else real  # images whose class labels count
    l_cls = classify_loss(logits, labels, use)
    l_att = classify_loss(att_logits, labels, use)
    l_norm = normal_loss(attention, is_normal)
    l_def = defect_loss(attention[real], ~is_normal[real], defect_topk, defect_on_good, defect_pool)
    l_spread = (spread_loss(attention[real], ~is_normal[real], defect_topk, spread_cells) if w_spread > 0
                else torch.zeros((), device=attention.device))
    total = l_cls + l_att + w_normal * l_norm + w_defect * l_def + w_spread * l_spread
    l_map = torch.zeros((), device=attention.device)
    if target_maps is not None and has_target is not None and gamma_map > 0:
        l_map = map_loss(attention, target_maps, has_target, map_form, map_target)
        total = total + gamma_map * l_map
    terms = dict(zip(TERMS, (v.item() for v in (l_cls, l_att, l_norm, l_def, l_spread, l_map, total))))
    return total, terms
