"""The pasted defects' shapes: blobs, thin strokes, diffuse regions and clusters of pits, on hand-made images."""
import random

import cv2
import numpy as np
import pytest
import torch

from inspection.training.pastes import SHAPES, blob, cluster, diffuse, paste_defects, stroke

H, W = 96, 160


def _components(mask: np.ndarray) -> int:
    return cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)[0] - 1


@pytest.mark.parametrize("seed", range(30))
def test_each_shape_is_what_its_name_says(seed):
    rng = random.Random(seed)
    b = blob(H, W, rng)
    assert b.dtype == np.uint8 and set(np.unique(b)) <= {0, 1} and _components(b) == 1
    assert b.sum() <= np.pi * (H / 12 + 1) ** 2  # half-axes at most a twelfth of the shorter side

    s = stroke(H, W, rng)
    assert _components(s) >= 1 and s.sum() >= 2
    inner = cv2.distanceTransform(s, cv2.DIST_L2, 3)
    assert (inner > 2).mean() < 0.1  # thin: 1-3 px wide, a little wider only where it bends
    ys, xs = np.nonzero(s)
    assert max(np.ptp(xs), np.ptp(ys)) >= min(H, W) / 12 / 4  # long compared with its width

    d = diffuse(H, W, rng)
    assert _components(d) == 1 and d.sum() >= 20  # one region, a large one
    assert cv2.distanceTransform(d, cv2.DIST_L2, 3).max() >= 2  # and thick: not a line

    replay = random.Random(seed + 1000)
    cx, cy, spread = replay.uniform(0, W), replay.uniform(0, H), max(4.0, min(H, W) / 12)
    pits = []  # the pits cluster() draws with the same generator: centre and radius
    for _ in range(replay.randint(3, 12)):
        pits.append((round(cx + replay.gauss(0, spread)), round(cy + replay.gauss(0, spread)), replay.randint(1, 3)))
    spots = {(px, py) for px, py, _ in pits}
    c = cluster(H, W, random.Random(seed + 1000))
    n, _, stats, centres = cv2.connectedComponentsWithStats(c, connectivity=8)
    assert 1 <= n - 1 <= len(pits)  # one region per pit kept: those off the image or touching another left out
    x, y, w, h, area = stats[1:].T
    whole = (x > 0) & (y > 0) & (x + w < W) & (y + h < H)  # pits clear of the border are whole discs
    found = {tuple(p) for p in np.rint(centres[1:][whole]).astype(int)}
    assert found <= spots  # each region is a drawn pit
    alone = {(px, py) for i, (px, py, r) in enumerate(pits)  # inside the image, far from every other pit drawn
             if r < px < W - 1 - r and r < py < H - 1 - r
             and all(np.hypot(px - qx, py - qy) > r + q + 2 for j, (qx, qy, q) in enumerate(pits) if j != i)}
    assert alone <= found  # ... and each pit that touches nothing is kept
    assert set(area[whole]) <= {5, 13, 29}, area  # radius 1, 2 or 3 px: two pits never merge into one
    assert np.ptp(centres[1:], axis=0).max() <= 8 * max(4, min(H, W) / 12)  # one neighbourhood, not the image


def test_clusters_hold_several_separate_pits():
    counts = [_components(cluster(H, W, random.Random(s))) for s in range(50)]
    assert np.mean([c >= 3 for c in counts]) > 0.8  # pits drawn off the image or onto another are skipped


@pytest.mark.parametrize("shape", SHAPES)
def test_pastes_change_only_their_place_and_are_their_own_target(shape):
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, H, W, generator=g) * 0.5 + 0.25
    for seed in range(10):
        out, mask = paste_defects(image, random.Random(seed), (shape,))
        assert out.shape == image.shape and mask.shape == (H, W) and set(mask.unique().tolist()) <= {0.0, 1.0}
        assert 0 <= out.min() and out.max() <= 1
        changed = (out != image).any(0).numpy()
        near = cv2.dilate(mask.numpy().astype(np.uint8), np.ones((13, 13), np.uint8)) > 0
        if shape == "diffuse":  # a soft rim fades out just around the target
            assert not changed[~near].any()
        else:
            assert not changed[mask.numpy() == 0].any()
        if mask.sum():
            assert changed[mask.numpy() == 1].mean() > 0.5  # the pastes show: darker or brighter than the surface
    assert torch.equal(paste_defects(image, random.Random(3), SHAPES)[0], paste_defects(image, random.Random(3),
                                                                                          SHAPES)[0])


def test_a_mix_of_shapes_draws_each_of_them():
    image = torch.full((3, H, W), 0.5)
    seen = set()
    for seed in range(40):
        rng = random.Random(seed)
        _, mask = paste_defects(image, rng, SHAPES)
        seen.add(_components(mask.numpy().astype(np.uint8)) > 3)  # clusters give many regions
    assert seen == {True, False}
