"""Attention map → defect boxes in original-image pixels (numpy/OpenCV only; shared by eval and line side).

The rule (a `BoxRule`): upsample A to the image (bilinear); a defect is a connected region where A reaches the
seed level: `threshold`, and `peak_share` of the map's own peak (a faint blob beside a strong defect is not a
second defect); each region grows down to its foot, `low` times the seed level (hysteresis: a faint part of a
defect joins its region), and is boxed where its log-odds
lie at least `relative` of the way from the foot to the region's peak (a soft blob around a small defect is
boxed near its tip, a plateau whole); boxes closer than `merge` (a share of the longer side of the region
the model saw) become one (a crack that the map breaks into beads is one defect); regions under `min_area`
pixels, or under `area_share` of the largest region's area on the same part (a speck beside a defect, where
the map saturates and peaks cannot tell them apart), are dropped; with the model's feature distances, regions
whose features good parts also show are dropped (`novelty`) and each region may grow over the pixels around it
that are as new to the good parts (`grow`: a large defect the map lights only in part); where the frame is
given, each box is drawn around the part of its region where the image stands out from the surface around the
region (`refine`: at least that share of the strongest deviation; a blob of stride-8 cells is larger than a
small defect, the pixels are not); each box is scored by the peak (or mean) attention inside.

    >>> boxes = attention_to_boxes(att, frame_hw=(480, 640), threshold=0.5, low=0.5, relative=0.5, min_area=20)
    >>> boxes = attention_to_boxes(att, frame_hw=(480, 640), rule=BoxRule.from_dict(package_variant["box_rule"]),
    ...                            frame=frame)  # the frame: boxes refined to the pixels that stand out
    >>> boxes[0].xyxy, boxes[0].score
"""
from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass, fields

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


@dataclass(frozen=True)
class Level:
    """One level of the box rule: its neutral value (off; what an older package that lacks it means), the values
    the ablation tries (and calibration chooses among, for the calibrated levels), its bounds, and what it does,
    in words (config docs, report, package)."""

    neutral: float
    candidates: tuple[float, ...]
    low: float
    high: float
    high_open: bool
    words: str
    calibrated: bool = False

    def check(self, name: str, value) -> None:
        number = isinstance(value, numbers.Real) and not isinstance(value, bool)
        ok = number and self.low <= value and (value < self.high if self.high_open else value <= self.high)
        if not ok:
            raise ValueError(f"box rule: {name} must be in [{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
                             f" ({self.words.split(';')[0]}), got {value!r}")


# The levels, in the order the rule applies them. Only the threshold is calibrated, among levels of the map's own
# probability scale (never under what the validation good parts' maps reach: see inspection/training/evaluate.py). Of
# the others, measured one at a time on four real sets (mean and worst set, docs/method.md), only novelty is on by
# default; the rest are off unless the config sets them, and packages keep the levels they were exported with.
LEVELS: dict[str, Level] = {
    "threshold": Level(0.5, (0.5, 0.6, 0.7, 0.8, 0.9), 0, 1, False,
                       "seed level: a region is a defect where the map reaches it", calibrated=True),
    "peak_share": Level(0.0, (0.0, 0.5, 0.7), 0, 1, False,
                        "seeds must also reach this share of the map's peak (a faint blob beside a strong defect "
                        "is not a second one); 0 = off"),
    "low": Level(1.0, (1.0, 0.7, 0.5), 0.01, 1, False,
                 "hysteresis: each region grows down to this share of the seed level; 1 = off"),
    "relative": Level(0.0, (0.0, 0.5, 0.7, 0.85), 0, 1, True,
                      "extent: each region is boxed where its log-odds lie at least this share of the way from its "
                      "foot to its peak (a soft blob around a small defect is boxed near its tip); 0 = whole region"),
    "refine": Level(0.0, (0.0, 0.2, 0.3, 0.4), 0, 1, True,
                    "boxes are drawn around the pixels of each region whose deviation from the surface around "
                    "the region is at least this share of the strongest one (needs the frame; a region where "
                    "nothing stands out keeps its box); 0 = the whole region"),
    "novelty": Level(0.0, (0.0, 0.8, 0.9, 0.95, 0.99, 0.995, 0.999), 0, 1, True,
                     "regions whose backbone features are all as close to the good training parts' as this share "
                     "of the good validation parts' cells are dropped (part borders, texture: seen on good parts; "
                     "needs the model's feature bank); 0 = off"),
    "grow": Level(0.0, (0.0, 0.5, 0.7, 0.8), 0, 1, True,
                  "each region grows over the pixels around it that are new to the good parts too: feature "
                  "distance at least the novelty level's and this share of the highest inside the region (a "
                  "large defect the map lights only in part); needs the novelty level; 0 = off"),
    "merge": Level(0.0, (0.0, 0.02, 0.05), 0, 1, False,
                   "boxes closer than this share of the ROI's longer side merge (a crack the map breaks into "
                   "beads); 0 = off"),
    "area_share": Level(0.0, (0.0, 0.05, 0.1, 0.2, 0.3), 0, 1, False,
                        "regions under this share of the part's largest region's area are dropped (a speck "
                        "beside a defect); 0 = off"),
}


@dataclass(frozen=True)
class BoxRule:
    """The levels of the box rule (LEVELS): the defaults are the untuned rule every model starts from;
    calibration on validation may change them and the result is stored per model variant."""

    threshold: float = 0.5  # the map is a per-cell defect probability: a region is where it reaches one half
    low: float = 1.0
    relative: float = 0.0
    refine: float = 0.0
    merge: float = 0.0
    peak_share: float = 0.0
    area_share: float = 0.0
    novelty: float = 0.99  # the one level on by default: chosen on four real sets (docs/method.md)
    novelty_distance: float = 0.0  # the feature distance `novelty` stands for, set from validation; 0 = keep all
    grow: float = 0.0
    min_area: int = 16  # pixels of the frame: a speck under 4x4 px is no defect a box can show
    score: str = "peak"

    def __post_init__(self):
        for name, level in LEVELS.items():
            level.check(name, getattr(self, name))
        d = self.novelty_distance
        if not (isinstance(d, numbers.Real) and not isinstance(d, bool) and np.isfinite(d) and d >= 0):
            raise ValueError(f"box rule: novelty_distance must be a finite distance >= 0, got {d!r}")
        if not (isinstance(self.min_area, numbers.Integral) and self.min_area >= 0):
            raise ValueError(f"box rule: min_area must be >= 0 pixels, got {self.min_area!r}")
        if self.score not in ("peak", "mean"):
            raise ValueError(f"box rule: score must be 'peak' or 'mean', got {self.score!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "BoxRule":
        """From stored levels; a level that is missing (an older package) is off (its neutral value)."""
        neutral = {**{name: level.neutral for name, level in LEVELS.items()}, "min_area": 0}
        return cls(**{**neutral, **{f.name: d[f.name] for f in fields(cls) if f.name in d}})

    @staticmethod
    def calibrated() -> tuple[str, ...]:
        """The levels calibration may choose (the others keep the default unless the config sets them)."""
        return tuple(name for name, level in LEVELS.items() if level.calibrated)

    @staticmethod
    def ablation() -> dict[str, tuple[float, ...]]:
        """Each level's values to try, one level at a time (benchmarks/box_rule.py)."""
        return {name: level.candidates for name, level in LEVELS.items()}

    @staticmethod
    def text() -> str:
        """The rule in words, for the package metadata and the docs."""
        return ("upsample the map to the region the model saw (bilinear); " +
                "; ".join(f"{name}: {level.words}" for name, level in LEVELS.items()) +
                "; regions under min_area pixels are dropped; each box is scored by the peak (or mean) inside")

    def describe(self) -> str:
        """These levels in words (the report)."""
        seed = f"regions reaching {self.threshold:.3g}"
        if self.peak_share:
            seed += f" and {self.peak_share:g} of the map's peak"
        parts = [f"boxes on {seed}"]
        if self.low < 1:
            parts.append(f"grown down to {self.low:g} of that level")
        if self.relative:
            parts.append(f"boxed where {self.relative:g} of the way from foot to peak (log-odds)")
        if self.refine:
            parts.append(f"boxed around the pixels that stand out at {self.refine:g} of the strongest deviation")
        if self.merge:
            parts.append(f"boxes closer than {self.merge:g} of the ROI's longer side merged")
        if self.novelty and self.novelty_distance:
            parts.append(f"regions whose features all lie within the distance {self.novelty:.0%} of good cells reach "
                         f"({self.novelty_distance:.3g}) dropped")
        if self.grow and self.novelty and self.novelty_distance:
            parts.append(f"regions grown over the new pixels around them at {self.grow:g} of their highest feature "
                         "distance")
        if self.area_share:
            parts.append(f"regions under {self.area_share:g} of the largest one's area dropped")
        return ", ".join(parts)


def full_roi(frame_hw: tuple[int, int], roi: tuple[int, int, int, int] | None) -> tuple[int, int, int, int]:
    """The crop (x, y, w, h) the model saw, clipped to the frame; None means the whole frame."""
    fh, fw = frame_hw
    if roi is None:
        return (0, 0, fw, fh)
    x, y, w, h = (int(v) for v in roi)
    x0, y0 = max(0, min(x, fw - 1)), max(0, min(y, fh - 1))
    x1, y1 = max(x0 + 1, min(x + w, fw)), max(y0 + 1, min(y + h, fh))
    return (x0, y0, x1 - x0, y1 - y0)


def map_to_roi(attention: np.ndarray, frame_hw: tuple[int, int],
               roi: tuple[int, int, int, int] | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """An (h, w) map upsampled (bilinear) to the ROI it covers, in frame pixels, and the ROI's corner (x, y):
    the one upsampling of a map that boxes, metrics and overlays share."""
    x, y, w, h = full_roi(frame_hw, roi)
    return cv2.resize(np.asarray(attention, np.float32), (w, h), interpolation=cv2.INTER_LINEAR), (x, y)


def upsample_attention(attention: np.ndarray, frame_hw: tuple[int, int],
                       roi: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """The map on the whole frame (zeros outside the ROI), float32."""
    up, (x, y) = map_to_roi(attention, frame_hw, roi)
    if up.shape == tuple(frame_hw):
        return up
    full = np.zeros(frame_hw, np.float32)
    full[y:y + up.shape[0], x:x + up.shape[1]] = up
    return full


def components_to_boxes(binary: np.ndarray, values: np.ndarray | None = None, min_area: int = 0,
                        score: str = "peak", offset: tuple[int, int] = (0, 0), seed: float | None = None,
                        merge_gap: float = 0.0, relative: float = 0.0, foot: float = 0.0,
                        area_share: float = 0.0, image: np.ndarray | None = None, refine: float = 0.0,
                        novelty: np.ndarray | None = None, novelty_distance: float = 0.0) -> list[Box]:
    """Boxes of the 8-connected components of a bool image, scored by `values` inside each one.

    seed: keep only components where `values` reach it (hysteresis); novelty (the feature distance map, the shape
    of `values`): drop components where it stays under `novelty_distance` (0: keep all); relative: box only the
    pixels of each component whose log-odds lie at least this share of the way from `foot` (the level that cut
    the component) to the component's peak (log-odds, because a map near 1 saturates: 0.9998 and 0.99998 are 8.5
    and 10.8 in log-odds); refine (with `image`, the pixels under `binary`): box only the component's pixels
    that stand out from the surface around it (_standing_out); merge_gap: merge boxes whose gap in x and in y is
    at most this many pixels (their areas add up, the score is the peak or the area-weighted mean); area_share:
    drop (merged) components whose area is under this share of the largest one's.
    """
    n, labels, stats, _ = cv2.connectedComponentsWithStats(binary.astype(np.uint8), connectivity=8)
    parts = []  # [x0, y0, x1, y1, peak, sum, area]
    for i in range(1, n):
        x, y, w, h, area = (int(v) for v in stats[i])
        if values is None:
            parts.append([x, y, x + w, y + h, float(area), float(area), area])
            continue
        window = values[y:y + h, x:x + w]
        member = labels[y:y + h, x:x + w] == i
        inside = window[member]
        peak = float(inside.max())
        if seed is not None and peak < seed:
            continue
        if novelty is not None and novelty_distance > 0 and novelty[y:y + h, x:x + w][member].max() < novelty_distance:
            continue
        if relative > 0:
            z_foot, z_peak = _log_odds(foot), _log_odds(peak)
            level = 1 / (1 + np.exp(-(z_foot + relative * (z_peak - z_foot))))  # back to the map's scale
            ys, xs = np.nonzero(member & (window >= min(level, peak)))
            x, y = x + int(xs.min()), y + int(ys.min())
            w, h = int(xs.max() - xs.min()) + 1, int(ys.max() - ys.min()) + 1
        if refine > 0 and image is not None:
            x, y, w, h = _standing_out(image, labels, i, (x, y, w, h), refine)
        parts.append([x, y, x + w, y + h, peak, float(inside.sum()), area])
    if merge_gap > 0:
        parts = _merge_near(parts, merge_gap)
    if area_share > 0 and parts:
        biggest = max(p[6] for p in parts)
        parts = [p for p in parts if p[6] >= area_share * biggest]
    boxes = []
    for x0, y0, x1, y1, peak, total, area in parts:
        if area < min_area:
            continue
        s = 1.0 if values is None else peak if score == "peak" else total / area
        boxes.append(Box(x0 + offset[0], y0 + offset[1], x1 + offset[0], y1 + offset[1], s, area))
    return sorted(boxes, key=lambda b: -b.score)


REFINE_PAD = 0.5     # the surface around a region: its box widened by this share of its longer side on each side
REFINE_FLOOR = 3.0   # a region whose pixels deviate less than this (in MADs of the surface) keeps its box
REFINE_SIDE = 384    # a window longer than this (pixels) is refined on a copy shrunk to it (bounded cost per region)


def _standing_out(image: np.ndarray, labels: np.ndarray, i: int, box: tuple[int, int, int, int],
                  share: float) -> tuple[int, int, int, int]:
    """The box (x, y, w, h) around the pixels of component i that deviate most from the surface around it: each
    pixel's deviation from the median of the window's pixels outside the component, in MADs of those pixels,
    largest over the channels, smoothed (sigma 1 px); the pixels at least `share` of the strongest deviation.
    The component's box where too few pixels surround it or nothing stands out (REFINE_FLOOR)."""
    x, y, w, h = box
    pad = int(REFINE_PAD * max(w, h)) + 2
    x0, y0 = max(0, x - pad), max(0, y - pad)
    x1, y1 = min(labels.shape[1], x + w + pad), min(labels.shape[0], y + h + pad)
    img = np.asarray(image[y0:y1, x0:x1], np.float32).reshape(y1 - y0, x1 - x0, -1)
    window = labels[y0:y1, x0:x1]
    member, outside = (window == i).astype(np.uint8), (window == 0).astype(np.uint8)
    scale = min(1.0, REFINE_SIDE / max(x1 - x0, y1 - y0))  # a large region is refined on a smaller copy
    if scale < 1:
        size = (max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale)))
        img = cv2.resize(img, size, interpolation=cv2.INTER_AREA).reshape(size[1], size[0], -1)
        member, outside = (cv2.resize(m, size, interpolation=cv2.INTER_NEAREST) for m in (member, outside))
    surface = img[outside > 0]  # (n, channels): the window outside every region
    if len(surface) < 16 or not member.any():
        return box
    ref = np.median(surface, 0)
    mad = np.maximum(np.median(np.abs(surface - ref), 0), 1e-6)
    dev = cv2.GaussianBlur(np.ascontiguousarray((np.abs(img - ref) / mad).max(-1)), (0, 0), 1.0)
    dev[member == 0] = 0
    top = float(dev.max())
    if top < REFINE_FLOOR:
        return box
    ys, xs = np.nonzero(dev >= share * top)
    bx0, by0 = max(x, x0 + int(xs.min() / scale)), max(y, y0 + int(ys.min() / scale))
    bx1 = min(x + w, x0 + int(np.ceil((xs.max() + 1) / scale)))
    by1 = min(y + h, y0 + int(np.ceil((ys.max() + 1) / scale)))
    return bx0, by0, max(1, bx1 - bx0), max(1, by1 - by0)


def _log_odds(p: float) -> float:
    p = min(max(float(p), 1e-6), 1 - 1e-6)
    return float(np.log(p / (1 - p)))


def _merge_near(parts: list[list], gap: float) -> list[list]:
    """Union of boxes whose gaps in x and in y are both at most `gap`, repeated until none is left."""
    merged = True
    while merged and len(parts) > 1:
        merged = False
        for i in range(len(parts)):
            for j in range(i + 1, len(parts)):
                a, b = parts[i], parts[j]
                if max(a[0], b[0]) - min(a[2], b[2]) <= gap and max(a[1], b[1]) - min(a[3], b[3]) <= gap:
                    parts[i] = [min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]),
                                max(a[4], b[4]), a[5] + b[5], a[6] + b[6]]
                    del parts[j]
                    merged = True
                    break
            if merged:
                break
    return parts


def grow_regions(hot: np.ndarray, far: np.ndarray, distance: float, share: float) -> np.ndarray:
    """`hot` (bool, h x w) with each 8-connected region grown over the connected pixels around it whose feature
    distance (`far`, h x w) reaches `distance` and `share` of the highest distance inside the region: a defect
    the map lights only in part (its most telling cells) is as new to the good parts all over, while the halo
    around a small defect fades from the defect's own distance."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats((hot | (far >= distance)).astype(np.uint8), connectivity=8)
    out = hot.copy()
    for i in range(1, n):
        x, y, w, h = (int(v) for v in stats[i][:4])
        member = labels[y:y + h, x:x + w] == i
        core = member & hot[y:y + h, x:x + w]
        if not core.any() or core.sum() == member.sum():
            continue
        window = far[y:y + h, x:x + w]
        passes = member & (window >= max(distance, share * float(window[core].max()))) | core
        _, pieces = cv2.connectedComponents(passes.astype(np.uint8), connectivity=8)
        keep = np.unique(pieces[core])
        out[y:y + h, x:x + w] |= np.isin(pieces, keep[keep > 0])
    return out


def map_boxes(up: np.ndarray, rule: BoxRule, offset: tuple[int, int] = (0, 0),
              image: np.ndarray | None = None, novelty: np.ndarray | None = None) -> list[Box]:
    """The box rule on a map already upsampled to the region the model saw (`offset`: its corner in the frame);
    `image`: that region of the frame (H, W[, C], any dtype), for the rule's `refine` level (None: unrefined);
    `novelty`: the feature distance map upsampled the same way, for the `novelty` level (None: no region
    dropped)."""
    if image is not None and np.asarray(image).shape[:2] != up.shape:
        raise ValueError(f"box refinement: image region {np.asarray(image).shape[:2]} does not match the map's "
                         f"{up.shape}")
    seed = rule.threshold
    if rule.peak_share > 0 and up.size:
        seed = max(seed, rule.peak_share * float(up.max()))
    foot = seed * rule.low
    binary = up >= foot
    if rule.grow and rule.novelty and rule.novelty_distance and novelty is not None:
        binary = grow_regions(binary, novelty, rule.novelty_distance, rule.grow)
    return components_to_boxes(binary, up, rule.min_area, rule.score, offset, seed=seed,
                               merge_gap=rule.merge * max(up.shape), relative=rule.relative, foot=foot,
                               area_share=rule.area_share, image=image, refine=rule.refine,
                               novelty=novelty if rule.novelty else None, novelty_distance=rule.novelty_distance)


def attention_to_boxes(attention: np.ndarray, frame_hw: tuple[int, int], rule: BoxRule | None = None,
                       roi: tuple[int, int, int, int] | None = None, frame: np.ndarray | None = None,
                       novelty: np.ndarray | None = None, **levels) -> list[Box]:
    """Defect boxes from an attention map that covers `roi` of a frame of size `frame_hw` (H, W); the rule's
    levels as a BoxRule or as keywords (threshold=0.5, low=..., ...); `frame` (H, W[, C]): the image, for the
    rule's `refine` level (without it boxes are the map's regions whole); `novelty` (h, w): each map cell's
    feature distance to the good parts (inspection/core/novelty.py), for the rule's `novelty` level."""
    if attention.ndim != 2:
        raise ValueError(f"attention map must be 2-D (h, w), got shape {attention.shape}")
    rule = rule if rule is not None else BoxRule(**levels)
    up, (x, y) = map_to_roi(attention, frame_hw, roi)
    h, w = up.shape
    crop = None if frame is None or not rule.refine else np.asarray(frame)[y:y + h, x:x + w]
    far = None if novelty is None else map_to_roi(novelty, frame_hw, roi)[0]
    return map_boxes(up, rule, offset=(x, y), image=crop, novelty=far)


def mask_to_boxes(mask: np.ndarray, min_area: int = 0) -> list[Box]:
    """Ground-truth boxes: one per connected component of a defect mask."""
    return components_to_boxes(mask > 0, None, min_area)
