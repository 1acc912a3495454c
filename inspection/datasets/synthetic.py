"""Synthetic inspection data: textured parts under varying light, five defect types with exact masks.

Writes the dataset folder layout the trainer reads (good/, defect/<type>/, masks/<type>/):

    >>> from inspection.datasets.synthetic import generate
    >>> generate("data/synthetic", n_good=200, n_per_type=30, seed=0)

Each image is one part (a rounded plate of brushed metal, cast iron, fabric or wood) lying on a dark
conveyor, shifted and rotated a little, lit from a random side. Defects vary in size and contrast,
some are faint; some good parts carry benign marks that look like defects (pores, grain, knots).
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

SURFACES = ("metal", "cast", "fabric", "wood")
DEFECT_TYPES = ("scratch", "crack", "hole", "stain", "chip")
SURFACE_COLORS = {  # RGB base colours in [0, 1]
    "metal": (0.62, 0.64, 0.66),
    "cast": (0.42, 0.41, 0.40),
    "fabric": (0.30, 0.38, 0.55),
    "wood": (0.62, 0.45, 0.28),
}


def _noise(rng: np.random.Generator, h: int, w: int, scale: float) -> np.ndarray:
    """Smooth value noise in [-1, 1] with features about `scale` pixels wide."""
    sh, sw = max(2, int(h / scale) + 2), max(2, int(w / scale) + 2)
    small = rng.standard_normal((sh, sw)).astype(np.float32)
    big = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    return big / (np.abs(big).max() + 1e-6)


def _texture(rng: np.random.Generator, surface: str, h: int, w: int) -> np.ndarray:
    """Gray texture around 0 (roughly [-0.25, 0.25]) for one surface type."""
    white = rng.standard_normal((h, w)).astype(np.float32)
    if surface == "metal":
        k = int(rng.integers(31, 81))
        streaks = cv2.blur(white, (k, 1)) * np.sqrt(k) * 0.05
        return streaks + 0.04 * _noise(rng, h, w, 40)
    if surface == "cast":
        grain = cv2.GaussianBlur(white, (0, 0), 1.2) * 0.12
        return grain + 0.08 * _noise(rng, h, w, 25) + 0.05 * _noise(rng, h, w, 6)
    if surface == "fabric":
        period = rng.uniform(5.0, 8.0)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        jitter = 1.5 * _noise(rng, h, w, 30)
        weave = np.sin(2 * np.pi * (xx + jitter) / period) * np.sin(2 * np.pi * (yy - jitter) / period)
        return 0.09 * weave + 0.03 * cv2.GaussianBlur(white, (0, 0), 0.8)
    if surface == "wood":
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        warp = 12 * _noise(rng, h, w, 60)
        rings = np.sin(2 * np.pi * (yy + warp + 0.15 * xx) / rng.uniform(9, 16))
        fibres = cv2.blur(white, (41, 1)) * 0.25
        return 0.10 * rings + fibres + 0.04 * _noise(rng, h, w, 50)
    raise ValueError(f"unknown surface {surface!r}; expected one of {SURFACES}")


def _part_mask(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Float mask of a rounded plate covering most of the frame, slightly shifted and rotated."""
    mask = np.zeros((h, w), np.uint8)
    mh, mw = int(h * rng.uniform(0.80, 0.88)), int(w * rng.uniform(0.80, 0.88))
    cy, cx = h / 2 + rng.uniform(-0.03, 0.03) * h, w / 2 + rng.uniform(-0.03, 0.03) * w
    r = int(min(mh, mw) * 0.12)
    box = ((cx, cy), (mw - 2 * r, mh - 2 * r), rng.uniform(-4, 4))
    pts = cv2.boxPoints(box).astype(np.int32)
    cv2.fillConvexPoly(mask, pts, 1)
    mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)))
    return mask.astype(np.float32)


def _lighting(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Multiplicative light field: directional gradient plus a soft vignette."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    grad = ((xx / w - 0.5) * np.cos(angle) + (yy / h - 0.5) * np.sin(angle)) * rng.uniform(0.1, 0.45)
    vignette = ((xx / w - 0.5) ** 2 + (yy / h - 0.5) ** 2) * rng.uniform(0.0, 0.5)
    return rng.uniform(0.75, 1.2) * (1.0 + grad - vignette)


def _random_point_on(rng: np.random.Generator, part: np.ndarray, margin: int) -> tuple[int, int]:
    inner = cv2.erode(part.astype(np.uint8), np.ones((2 * margin + 1, 2 * margin + 1), np.uint8))
    ys, xs = np.nonzero(inner)
    i = rng.integers(len(ys))
    return int(xs[i]), int(ys[i])


def _polyline(rng: np.random.Generator, start, length: float, wiggle: float, steps: int) -> np.ndarray:
    angle = rng.uniform(0, 2 * np.pi)
    pts, (x, y) = [], start
    for _ in range(steps):
        pts.append((x, y))
        angle += rng.normal(0, wiggle)
        x, y = x + np.cos(angle) * length / steps, y + np.sin(angle) * length / steps
    pts.append((x, y))
    return np.array(pts, np.float32)


def _draw_defect(rng, kind: str, img: np.ndarray, part: np.ndarray, faint: bool) -> np.ndarray:
    """Draw one defect on `img` (HxW gray intensity, modified in place); return its exact bool mask."""
    h, w = img.shape
    s = min(h, w)
    mask = np.zeros((h, w), np.uint8)
    contrast = rng.uniform(0.08, 0.14) if faint else rng.uniform(0.2, 0.45)
    sign = -1.0 if rng.random() < 0.7 else 1.0
    if kind in ("scratch", "crack"):
        start = _random_point_on(rng, part, int(0.15 * s))
        if kind == "scratch":
            pts = _polyline(rng, start, rng.uniform(0.15, 0.45) * s, 0.03, 8)
            thick = int(rng.integers(1, 3))
        else:
            pts = _polyline(rng, start, rng.uniform(0.12, 0.35) * s, 0.5, 14)
            thick, sign = int(rng.integers(1, 3)), -1.0
        cv2.polylines(mask, [np.round(pts).astype(np.int32)], False, 1, thick, cv2.LINE_8)
        if kind == "crack" and rng.random() < 0.6:  # a branch
            j = int(rng.integers(3, len(pts) - 2))
            branch = _polyline(rng, tuple(pts[j]), rng.uniform(0.05, 0.15) * s, 0.6, 6)
            cv2.polylines(mask, [np.round(branch).astype(np.int32)], False, 1, 1, cv2.LINE_8)
        mask &= part.astype(np.uint8)
        img += sign * contrast * mask
    elif kind == "hole":
        r = rng.uniform(0.02, 0.05) * s
        cx, cy = _random_point_on(rng, part, int(r) + 4)
        cv2.circle(mask, (cx, cy), int(round(r)), 1, -1)
        rim = cv2.dilate(mask, np.ones((3, 3), np.uint8)) - mask
        depth = contrast * (0.6 if faint else 1.6)
        img -= depth * mask
        img += 0.5 * contrast * rim
        mask = np.maximum(mask, rim)
    elif kind == "stain":
        r = rng.uniform(0.05, 0.12) * s
        cx, cy = _random_point_on(rng, part, int(r) + 4)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        dist = np.sqrt(((xx - cx) / rng.uniform(0.6, 1.4)) ** 2 + (yy - cy) ** 2) / r
        field = 1.0 - dist + 0.35 * _noise(rng, h, w, r / 2)
        mask = ((field > 0) & (part > 0)).astype(np.uint8)
        soft = np.clip(field * 3, 0, 1) * mask
        img += sign * 0.8 * contrast * soft
    elif kind == "chip":
        ys, xs = np.nonzero(part)
        edge = cv2.morphologyEx(part.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8))
        eys, exs = np.nonzero(edge)
        i = rng.integers(len(eys))
        r = rng.uniform(0.04, 0.08) * s
        pts = cv2.ellipse2Poly((int(exs[i]), int(eys[i])), (int(r), int(r * rng.uniform(0.5, 1.0))),
                               int(rng.uniform(0, 180)), 0, 360, 30)
        pts = pts + rng.integers(-2, 3, pts.shape)
        cv2.fillPoly(mask, [pts.astype(np.int32)], 1)
        mask &= part.astype(np.uint8)
        part[mask > 0] = 0.0
    else:
        raise ValueError(f"unknown defect type {kind!r}; expected one of {DEFECT_TYPES}")
    return mask > 0


def _benign_mark(rng, surface: str, img: np.ndarray, part: np.ndarray) -> None:
    """Defect-like but normal features of good parts: pores, brushing marks, knots, loose threads."""
    h, w = img.shape
    s = min(h, w)
    x, y = _random_point_on(rng, part, int(0.12 * s))
    if surface == "metal":  # a long faint streak along the brushing direction
        length = int(rng.uniform(0.2, 0.5) * s)
        cv2.line(img, (x - length // 2, y), (x + length // 2, y), float(img[y, x] + 0.05), 1)
    elif surface == "cast":  # small casting pores, much smaller than holes
        for _ in range(int(rng.integers(3, 8))):
            px, py = _random_point_on(rng, part, 6)
            cv2.circle(img, (px, py), 1, float(img[py, px] - 0.12), -1)
    elif surface == "wood":  # a knot: concentric dark ellipse
        r = int(rng.uniform(0.03, 0.06) * s)
        for k in range(3):
            cv2.ellipse(img, (x, y), (r * (3 - k), r * (3 - k) // 2), 0, 0, 360, float(img[y, x] - 0.04), 1)
    elif surface == "fabric":  # a slightly thicker thread
        cv2.line(img, (x, y - int(0.2 * s)), (x, y + int(0.2 * s)), float(img[y, x] + 0.05), 2)


def render_part(rng: np.random.Generator, surface: str, size: tuple[int, int],
                defects: tuple[str, ...] = (), faint: bool = False, benign: bool = False):
    """Render one part; return (uint8 HxWx3 RGB image, bool HxW mask of all defects)."""
    h, w = size
    part = _part_mask(rng, h, w)
    gray = 0.5 + _texture(rng, surface, h, w)
    if benign:
        _benign_mark(rng, surface, gray, part)
    mask = np.zeros((h, w), bool)
    for kind in defects:
        mask |= _draw_defect(rng, kind, gray, part, faint)
    soft = cv2.GaussianBlur(part, (0, 0), 0.8)
    tint = np.array(SURFACE_COLORS[surface], np.float32) * rng.uniform(0.9, 1.1, 3).astype(np.float32)
    surface_rgb = (gray * 2.0)[..., None] * tint
    conveyor = 0.08 + 0.03 * _noise(rng, h, w, 8)[..., None]
    img = soft[..., None] * surface_rgb + (1 - soft[..., None]) * conveyor
    img = img * _lighting(rng, h, w)[..., None]
    img += rng.normal(0, 0.012, img.shape).astype(np.float32)  # sensor noise
    return (np.clip(img, 0, 1) * 255).astype(np.uint8), mask


def _save(path: Path, rgb: np.ndarray, gray: bool, fmt: str) -> Path:
    path = path.with_suffix("." + fmt)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) if gray else cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, 92] if fmt == "jpg" else []
    if not cv2.imwrite(str(path), out, params):
        raise OSError(f"cannot write {path}")
    return path


def generate(out_dir: str | Path, n_good: int = 200, n_per_type: int = 30, size: int = 256,
             seed: int = 0, surfaces: tuple[str, ...] = SURFACES, defect_types: tuple[str, ...] = DEFECT_TYPES,
             faint_fraction: float = 0.15, benign_fraction: float = 0.3, size_jitter: float = 0.0,
             gray_fraction: float = 0.0, jpeg_fraction: float = 0.0, multi_fraction: float = 0.0,
             progress: bool = False) -> dict:
    """Write a synthetic dataset to `out_dir` in the trainer's folder layout; return a summary dict.

    multi_fraction: share of defective parts that carry 2-4 defects of their type instead of one (a part with
    several pits or scratches: every one of them is a true box)."""
    if not 0 <= multi_fraction <= 1:
        raise ValueError(f"multi_fraction: expected a share in [0, 1], got {multi_fraction!r}")
    for name in surfaces:
        if name not in SURFACES:
            raise ValueError(f"surfaces: unknown surface {name!r}; expected some of {SURFACES}")
    for name in defect_types:
        if name not in DEFECT_TYPES:
            raise ValueError(f"defect_types: unknown type {name!r}; expected some of {DEFECT_TYPES}")
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    jobs = [("good", i) for i in range(n_good)] + [(t, i) for t in defect_types for i in range(n_per_type)]
    counts: dict[str, int] = {}
    it = jobs
    if progress:
        from tqdm import tqdm
        it = tqdm(jobs, desc="generate", unit="img")
    for label, i in it:
        r = np.random.default_rng(rng.integers(2**63))
        surface = surfaces[int(r.integers(len(surfaces)))]
        jit = 1.0 + r.uniform(-size_jitter, size_jitter)
        hw = (int(size * jit) // 2 * 2, int(size * jit * r.uniform(1 - size_jitter / 2, 1 + size_jitter / 2)) // 2 * 2)
        gray = r.random() < gray_fraction
        fmt = "jpg" if r.random() < jpeg_fraction else "png"
        stem = f"{label}_{i:04d}_{surface}"
        if label == "good":
            img, _ = render_part(r, surface, hw, benign=r.random() < benign_fraction)
            _save(out / "good" / stem, img, gray, fmt)
        else:
            n = int(r.integers(2, 5)) if multi_fraction and r.random() < multi_fraction else 1
            img, mask = render_part(r, surface, hw, (label,) * n, faint=r.random() < faint_fraction,
                                    benign=r.random() < benign_fraction / 2)
            _save(out / "defect" / label / stem, img, gray, fmt)
            mpath = out / "masks" / label / (stem + ".png")
            mpath.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(mpath), mask.astype(np.uint8) * 255)
        counts[label] = counts.get(label, 0) + 1
    summary = {"root": str(out), "seed": seed, "size": size, "counts": counts, "surfaces": list(surfaces),
               "multi_fraction": multi_fraction}
    (out / "synthetic.json").write_text(json.dumps(summary, indent=2))
    return summary
