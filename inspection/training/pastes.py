"""Synthetic defects pasted on good training images, in the shapes real defects take; their masks are L_map targets.

    >>> image, mask = paste_defects(image, rng, shapes=("blob", "stroke", "diffuse", "cluster"))

Each paste is a region filled with the part's own surface from elsewhere in the image, darker or brighter
(PASTE_GAIN), so it carries no texture the part does not have: only its shape and its contrast tell it apart.
The shapes (`train.paste_shapes`):
    blob      an ellipse from a few pixels to a sixth of the shorter side, any elongation and angle (pits, holes)
    stroke    a thin bent line, 1-3 px wide, a twelfth to half of the shorter side long (cracks, scratches)
    diffuse   a large irregular region of weaker contrast with a soft rim (stains, uneven regions)
    cluster   3-12 small pits close together, each its own defect (pitting, porosity)
"""
from __future__ import annotations

import math
import random

import cv2
import numpy as np
import torch

SHAPES = ("blob", "stroke", "diffuse", "cluster")
MOST_PASTES = 3  # 1 to 3 pastes per image; 6 was measured and not kept (docs/trials.md)
PASTE_GAIN = ((0.5, 0.8), (1.25, 1.6))  # a pasted patch is this much darker or brighter than where it came from
DIFFUSE_GAIN = ((0.7, 0.85), (1.15, 1.35))  # a diffuse region: weaker contrast, as stains and uneven wear have


def blob(h: int, w: int, rng: random.Random) -> np.ndarray:
    """An ellipse, half long axis from 2 px to a twelfth of the shorter side (log-uniform), any shape and angle."""
    a = math.exp(rng.uniform(math.log(2), math.log(max(3.0, min(h, w) / 12))))
    b = max(1.0, a * rng.uniform(0.2, 1.0))
    mask = np.zeros((h, w), np.uint8)
    cv2.ellipse(mask, (rng.randrange(w), rng.randrange(h)), (round(a), round(b)), rng.uniform(0, 180), 0, 360, 1, -1)
    return mask


def stroke(h: int, w: int, rng: random.Random) -> np.ndarray:
    """A bent polyline of 2-4 segments, 1-3 px wide, a twelfth to half of the shorter side long in all."""
    side = min(h, w)
    length = rng.uniform(side / 12, side / 2)
    n = rng.randint(2, 4)
    x, y, angle = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0, 2 * math.pi)
    points = [(x, y)]
    for _ in range(n):
        angle += rng.uniform(-0.6, 0.6)
        x, y = x + math.cos(angle) * length / n, y + math.sin(angle) * length / n
        points.append((x, y))
    mask = np.zeros((h, w), np.uint8)
    cv2.polylines(mask, [np.round(points).astype(np.int32)], False, 1, rng.randint(1, 3))
    return mask


def diffuse(h: int, w: int, rng: random.Random) -> np.ndarray:
    """An irregular region a sixth to a third of the shorter side across: smooth noise (a coarse random grid,
    upsampled and blurred) above a level, kept inside an ellipse so that it is one region."""
    side = min(h, w)
    r = rng.uniform(side / 12, side / 6)
    grid = np.random.default_rng(rng.randrange(2 ** 31)).random((6, 6)).astype(np.float32)
    size = max(4, int(2 * r))
    noise = cv2.GaussianBlur(cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC), (0, 0), size / 8)
    envelope = np.zeros((size, size), np.uint8)
    cv2.ellipse(envelope, (size // 2, size // 2), (size // 2, max(1, int(size // 2 * rng.uniform(0.5, 1.0)))),
                rng.uniform(0, 180), 0, 360, 1, -1)
    region = ((noise >= np.quantile(noise, 0.35)) & (envelope > 0)).astype(np.uint8)
    region = _largest(region)
    mask = np.zeros((h, w), np.uint8)
    y, x = rng.randrange(max(1, h - size)), rng.randrange(max(1, w - size))
    crop = region[:h - y, :w - x]
    mask[y:y + crop.shape[0], x:x + crop.shape[1]] = crop
    return mask


def cluster(h: int, w: int, rng: random.Random) -> np.ndarray:
    """3-12 pits of radius 1-3 px within a neighbourhood a sixth of the shorter side across, never touching."""
    side = min(h, w)
    cx, cy, spread = rng.uniform(0, w), rng.uniform(0, h), max(4.0, side / 12)
    mask = np.zeros((h, w), np.uint8)
    for _ in range(rng.randint(3, 12)):
        one = np.zeros((h, w), np.uint8)
        x, y, r = round(cx + rng.gauss(0, spread)), round(cy + rng.gauss(0, spread)), rng.randint(1, 3)
        cv2.circle(one, (x, y), r, 1, -1)
        if one.any() and not (cv2.dilate(mask, np.ones((3, 3), np.uint8)) & one).any():
            mask |= one
    return mask


def _largest(region: np.ndarray) -> np.ndarray:
    n, labels, stats, _ = cv2.connectedComponentsWithStats(region, connectivity=8)
    if n <= 1:
        return region
    return (labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))).astype(np.uint8)


DRAW = {"blob": blob, "stroke": stroke, "diffuse": diffuse, "cluster": cluster}


def paste_defects(image: torch.Tensor, rng: random.Random,
                  shapes: tuple[str, ...] = ("blob",)) -> tuple[torch.Tensor, torch.Tensor]:
    """1 to MOST_PASTES synthetic defects of the given shapes (each drawn at random among them) on a (3, H, W)
    image in [0, 1], each filled with the part's own surface from elsewhere, darker or brighter. Returns the image
    and the (H, W) mask of the pastes (1 inside)."""
    h, w = image.shape[-2:]
    mask = np.zeros((h, w), np.uint8)
    out = image.clone()
    for _ in range(rng.randint(1, MOST_PASTES)):
        kind = rng.choice(shapes) if len(shapes) > 1 else shapes[0]  # one shape: the draws of the ellipses alone
        one = DRAW[kind](h, w, rng)
        if not one.any():
            continue
        lo, hi = rng.choice(DIFFUSE_GAIN if kind == "diffuse" else PASTE_GAIN)
        source = torch.roll(image, (rng.randrange(h), rng.randrange(w)), (-2, -1)) * rng.uniform(lo, hi)
        alpha = torch.from_numpy(one.astype(np.float32))
        if kind == "diffuse":  # a soft rim, as a stain fades out; the target is where the paste is at least half
            soft = cv2.GaussianBlur(one.astype(np.float32), (0, 0), 1.5)
            alpha = torch.from_numpy(np.where(soft >= 1 / 255, soft, 0).astype(np.float32))  # no invisible tails
            one = (alpha.numpy() >= 0.5).astype(np.uint8)
            if not one.any():
                continue
        out = out * (1 - alpha) + source.clamp(0, 1) * alpha
        mask |= one
    return out, torch.from_numpy(mask.astype(np.float32))
