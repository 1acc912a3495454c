"""How far each map cell's features lie from the good parts' (numpy only; shared by evaluation and the line).

After training, up to BANK_CELLS feature vectors of the good training parts' cells (the backbone features F at the
branch point, one C-vector per cell of the attention map), chosen to cover them all, are kept as the model's
feature bank (checkpoint key
`novelty_bank`, package file novelty.npy). A cell's distance is the Euclidean distance of its features to the
nearest bank vector. The box rule's `novelty` level (inspection/core/boxes.py) drops a map region whose cells all lie
as close to the bank as most cells of the good validation parts do: the map can be hot on a part's border or
texture, but good parts look the same there, while a defect is new.

    >>> bank = select_bank(good_cells)                                      # (m, C), at training's end
    >>> far = distance_map(features, bank, where=hot_cells(attention, 0.8))   # (h, w); 0 where not asked
"""
from __future__ import annotations

import cv2
import numpy as np

BANK_CELLS = 4000
BANK_POOL = 200_000  # cells the bank is chosen from (drawn at random when there are more): bounded fitting time


def select_bank(cells: np.ndarray, size: int = BANK_CELLS, seed: int = 0) -> np.ndarray:
    """At most `size` rows of `cells` (n, C) that cover them: a greedy k-center coreset (each next row is the one
    farthest from the rows chosen so far), seeded, as float32. A random sample keeps mostly the common cells of
    a part's surface and few of its rare ones (borders, edges), which then look new; a coverage keeps them all."""
    cells = np.asarray(cells, np.float32)
    if cells.ndim != 2 or not len(cells):
        raise ValueError(f"feature bank: expected good cells as a non-empty (n, C) array, got shape {cells.shape}")
    rng = np.random.default_rng(seed)
    if len(cells) > BANK_POOL:
        cells = cells[np.sort(rng.choice(len(cells), BANK_POOL, replace=False))]
    if len(cells) <= size:
        return np.ascontiguousarray(cells)
    norms = (cells ** 2).sum(1)
    i = int(rng.integers(len(cells)))
    chosen, d2 = [i], norms + norms[i] - 2 * cells @ cells[i]  # squared distance to the nearest chosen row
    for _ in range(size - 1):
        i = int(d2.argmax())
        chosen.append(i)
        np.minimum(d2, norms + norms[i] - 2 * cells @ cells[i], out=d2)
    return np.ascontiguousarray(cells[np.sort(chosen)])


def nearest(cells: np.ndarray, bank: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """(n,) Euclidean distance of each row of `cells` (n, C) to its nearest row of `bank` (m, C)."""
    cells, bank = np.asarray(cells, np.float32), np.asarray(bank, np.float32)
    if cells.ndim != 2 or bank.ndim != 2 or cells.shape[1] != bank.shape[1]:
        raise ValueError(f"feature distance: cells {cells.shape} and bank {bank.shape} must be (n, C) and (m, C) "
                         "with the same C")
    norms = (bank ** 2).sum(1)
    out = np.empty(len(cells), np.float32)
    for i in range(0, len(cells), chunk):
        x = cells[i:i + chunk]
        d2 = (x ** 2).sum(1, keepdims=True) + norms[None] - 2 * x @ bank.T
        out[i:i + chunk] = np.sqrt(np.maximum(d2.min(1), 0))
    return out


def distance_map(features: np.ndarray, bank: np.ndarray, where: np.ndarray | None = None) -> np.ndarray:
    """(h, w) distance of each cell of `features` (C, h, w) to the bank; only the cells of `where` (h, w) are
    computed, the others are 0."""
    c, h, w = features.shape
    cells = np.moveaxis(np.asarray(features, np.float32), 0, -1).reshape(-1, c)
    out = np.zeros(h * w, np.float32)
    idx = np.arange(h * w) if where is None else np.flatnonzero(np.asarray(where).reshape(-1))
    if len(idx):
        out[idx] = nearest(cells[idx], bank)
    return out.reshape(h, w)


def hot_cells(attention: np.ndarray, level: float, shape: tuple[int, int] | None = None) -> np.ndarray:
    """The cells whose distance the box rule reads on regions that reach `level`: the cells at `level` or more
    and their 8 neighbours (bilinear upsampling reads the four cells around each pixel of a region); `shape`:
    the features' (h, w) where the map is finer than them (a feature cell is asked for when any of its map cells
    is)."""
    hot = (np.asarray(attention) >= level).astype(np.uint8)
    if shape is not None and hot.shape != tuple(shape):
        hot = (cv2.resize(hot.astype(np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_AREA) > 0)
        hot = hot.astype(np.uint8)
    return cv2.dilate(hot, np.ones((3, 3), np.uint8)) > 0
