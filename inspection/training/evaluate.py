"""Evaluation of predictions, torch-free: thresholds and box rule calibrated on val, metrics measured on test.

    >>> result = evaluate_predictions(val_predictions, test_predictions, manifest, cfg, "ours")
    >>> result["metrics"]["image"]["auroc"], result["metrics"]["box@0.3"]["f1"], result["box_rule"]

Predictions come from any backend (PyTorch in inspection/training/predict.py, ONNX Runtime or TensorRT at export): the
same calibration and the same box function (inspection/core/boxes.py) as the line runtime.
"""
from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from inspection.core.boxes import (
    LEVELS,
    BoxRule,
    full_roi,
    map_boxes,
    map_to_roi,
    mask_to_boxes,
)
from inspection.core.decision import verdict
from inspection.core.imageio import read_image, read_truth
from inspection.core.layout import GOOD, Manifest
from inspection.training.metrics import (
    aupro,
    box_metrics,
    box_recall_by,
    calibrate_threshold,
    hit_rate,
    image_metrics,
    missed_by_cause,
    pixel_auroc,
    size_class,
)

GOOD_LEVEL_QUANTILE = 0.5  # the level good parts reach: the median over good val parts of each map's peak
PIXEL_SIDE = 128  # pixel metrics are computed at this longest side to keep memory flat,
PIXEL_SHORT = 32  # and at least this shortest side (very wide images: line-scan fabric)


@dataclass
class Predictions:
    scores: np.ndarray   # (N,) defect score (the model's: 1 - p(good), blended with the map's top-k mean)
    probs: np.ndarray    # (N, K)
    maps: np.ndarray     # (N, h, w) in [0, 1] (attention, or Grad-CAM normalized)
    distances: np.ndarray | None = None  # (N, h, w) feature distance to the good parts (None: model without a bank)


def _upsampled(amap: np.ndarray, item, roi) -> tuple[np.ndarray, tuple[int, int]]:
    """Map upsampled to the ROI in original pixels, and the ROI offset."""
    return map_to_roi(amap, (item.height, item.width), roi)


def _far(pred: Predictions, i: int, item, roi, rule: BoxRule) -> np.ndarray | None:
    """The feature distance map of item i upsampled like its attention map, for the rule's `novelty` level (None
    where the model has no feature bank or the level is off)."""
    if pred.distances is None or not rule.novelty_distance:
        return None
    return _upsampled(pred.distances[i], item, roi)[0]


def novelty_distance(pred: Predictions, items, share: float) -> float:
    """The distance that `share` of the validation good parts' map cells stay within (0 without a feature bank,
    good parts or share: the `novelty` level keeps every region)."""
    good = [i for i, it in enumerate(items) if it.defect_type == GOOD]
    if pred.distances is None or not good or not share:
        return 0.0
    return float(np.quantile(pred.distances[good], share))


def _region(item, root: Path | None, roi, rule: BoxRule) -> np.ndarray | None:
    """The image region the model saw, for the rule's `refine` level (None when the rule does not refine or
    no dataset folder is given: the map's regions are boxed whole)."""
    if not rule.refine or root is None:
        return None
    x, y, w, h = full_roi((item.height, item.width), roi)
    return read_image(root / item.path)[y:y + h, x:x + w]


def _truths(items, root: Path) -> dict[int, np.ndarray]:
    """Pixel truth (HxW bool) of the items usable for localization, each file read once: good images (all
    False), and defect images with a mask or a non-empty corrected map (on factory data, where nobody draws
    masks, the reviewers' corrected maps are the pixel truth)."""
    truths = {}
    for i, it in enumerate(items):
        if it.defect_type == GOOD:
            truths[i] = np.zeros((it.height, it.width), bool)
        elif (m := read_truth(it.mask and root / it.mask, it.corrected and root / it.corrected,
                              (it.height, it.width))) is not None:
            truths[i] = m
    return truths


def good_level(pred: Predictions, items) -> float:
    """What the validation good parts' maps reach: the median of their peaks (a box threshold under it boxes the
    surface of a typical good part)."""
    good = [i for i, it in enumerate(items) if it.defect_type == GOOD]
    return float(np.quantile(pred.maps[good].reshape(len(good), -1).max(1), GOOD_LEVEL_QUANTILE)) if good else 0.0


# A baseline's own best rule (`search`): its threshold on a grid over its map's whole scale (Grad-CAM's scale is
# not ours; a saturated map's best level can sit at 0.98, a faint one's at 0.02), and each of the levels that
# reshape boxes on or off, whichever gives the best box F1 on validation.
SEARCH = {"threshold": (0.01, 0.02, 0.03, 0.04, *(round(v, 2) for v in np.arange(0.05, 0.96, 0.05)),
                        0.96, 0.97, 0.98, 0.99),
          "refine": (0.0, BoxRule().refine), "area_share": (0.0, BoxRule().area_share)}


def calibrate_box_rule(pred: Predictions, items, truths: dict[int, np.ndarray], flagged: np.ndarray,
                       cfg, root: Path | None = None, search: bool = False) -> BoxRule:
    """The box rule for a model: the config's levels (by default the untuned rule, BoxRule()), with the
    threshold never under what the validation good parts' maps reach (good_level: boxing under it would box the
    surface of a typical good part). Levels the config leaves null and calibration may choose (the threshold)
    are moved from the default only where that raises box F1 @ IoU 0.3 on validation, over the parts the line
    would box (those that fail or go to review); ties keep the default; with no pixel truth the default stands.

    The candidates are fixed levels of the map's own probability scale (inspection/boxes.LEVELS), so
    calibration cannot degenerate to a level that boxes a whole part. `root`: the dataset folder, whose images
    the `refine` level reads (None: regions boxed whole). `search` (the baselines): the rule that boxes best on
    validation among SEARCH, whatever the config says, with no floor.
    """
    b = cfg.eval.boxes
    fixed = {k: getattr(b, k) for k in LEVELS if getattr(b, k) is not None and not (search and k in SEARCH)}
    rule = dataclasses.replace(BoxRule(), **fixed, min_area=b.min_area, score=b.score)
    floor = 0.0 if search else min(good_level(pred, items), 1.0)
    rule = dataclasses.replace(rule, threshold=max(rule.threshold, floor),
                               novelty_distance=novelty_distance(pred, items, rule.novelty))
    free = list(SEARCH) if search else [n for n in BoxRule.calibrated() if n not in fixed]
    if not free or all(items[i].defect_type == GOOD for i in truths):
        return rule
    candidates = dict(SEARCH) if search else {n: LEVELS[n].candidates for n in free}
    if not search:
        candidates["threshold"] = [t for t in LEVELS["threshold"].candidates if t >= floor] or [floor]
    ups = {i: (*_upsampled(pred.maps[i], items[i], cfg.data.roi), _region(items[i], root, cfg.data.roi, rule),
               _far(pred, i, items[i], cfg.data.roi, rule)) for i in truths if flagged[i]}
    truth = [_xyxy(mask_to_boxes(truths[i])) for i in truths]

    def f1(r: BoxRule) -> float:
        boxes = [_xyxy(map_boxes(ups[i][0], r, ups[i][1], ups[i][2], ups[i][3])) if i in ups else np.zeros((0, 4))
                 for i in truths]
        return box_metrics(boxes, truth, 0.3)["f1"]

    best = f1(rule)
    for values in itertools.product(*(candidates[n] for n in free)):
        trial = dataclasses.replace(rule, **dict(zip(free, values)))
        score = f1(trial)
        if score > best:
            best, rule = score, trial
    return rule


def _xyxy(boxes) -> np.ndarray:
    return np.array([b.xyxy for b in boxes], float).reshape(-1, 4)


def _pixel_pair(up: np.ndarray, off, item, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The map (area mean per cell) and the truth on the pixel metrics' grid: PIXEL_SIDE on the longer side,
    PIXEL_SHORT at least on the shorter; a cell is a defect cell where any of its pixels is (a defect smaller
    than a cell would otherwise vanish from the truth, as a fabric's 7 px knot on a 4096 px wide image did)."""
    full = np.zeros((item.height, item.width), np.float32)
    full[off[1]:off[1] + up.shape[0], off[0]:off[0] + up.shape[1]] = up
    s = min(1.0, max(PIXEL_SIDE / max(item.height, item.width), PIXEL_SHORT / min(item.height, item.width)))
    size = (max(1, round(item.width * s)), max(1, round(item.height * s)))
    return (cv2.resize(full, size, interpolation=cv2.INTER_AREA),
            cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_AREA) > 0)


def evaluate_predictions(pv: Predictions, pt: Predictions, manifest: Manifest, cfg, name: str,
                         kind: str = "abn", search: bool = False) -> dict:
    """Metrics from predictions on the val and test splits (any backend: PyTorch, ONNX Runtime, TensorRT).

    Boxes are drawn, as on the line, only on parts that fail or go to review. `search`: the box rule that does
    best on validation (calibrate_box_rule), for a baseline whose map is not on our model's scale."""
    root = Path(manifest.root)
    val_items, test_items = manifest.split("val"), manifest.split("test")
    val_defect = np.array([it.defect_type != GOOD for it in val_items])
    test_defect = np.array([it.defect_type != GOOD for it in test_items])
    threshold = calibrate_threshold(val_defect, pv.scores, cfg.eval.threshold_mode, cfg.eval.target_false_reject,
                                    cfg.eval.target_miss)
    band = cfg.eval.review_band
    val_flagged = np.array([verdict(float(s), threshold, band) != "pass" for s in pv.scores])
    test_flagged = np.array([verdict(float(s), threshold, band) != "pass" for s in pt.scores])
    rule = calibrate_box_rule(pv, val_items, _truths(val_items, root), val_flagged, cfg, root, search)

    metrics = {"image": image_metrics(test_defect, pt.scores, threshold)}
    peak = pt.maps.reshape(len(pt.maps), -1).max(1)
    metrics["image"]["auroc_attention_peak"] = image_metrics(test_defect, peak, 0.5)["auroc"]
    metrics["attention_mean_good"] = float(pt.maps[~test_defect].mean())
    metrics["attention_mean_defect"] = float(pt.maps[test_defect].mean())
    metrics["per_type_detection"] = {
        t: float(np.mean(pt.scores[[it.defect_type == t for it in test_items]] >= threshold))
        for t in sorted({it.defect_type for it in test_items} - {GOOD})}
    good_flagged = test_flagged & ~test_defect

    per_image, rows = [], []
    inside = []
    truths = _truths(test_items, root)
    for i, it in enumerate(test_items):
        up, off = _upsampled(pt.maps[i], it, cfg.data.roi)
        boxes = (map_boxes(up, rule, off, _region(it, root, cfg.data.roi, rule), _far(pt, i, it, cfg.data.roi, rule))
                 if test_flagged[i] else [])
        truth = mask_to_boxes(truths[i]) if i in truths else None
        per_image.append({"path": it.path, "defect_type": it.defect_type, "score": float(pt.scores[i]),
                          "fail": bool(pt.scores[i] >= threshold), "flagged": bool(test_flagged[i]),
                          "boxes": [x.to_dict() for x in boxes],
                          "true_boxes": None if truth is None else [x.xyxy for x in truth], "map_index": i})
        if i in truths:
            m, k = _pixel_pair(up, off, it, truths[i])
            x, y, w, h = full_roi((it.height, it.width), cfg.data.roi)
            sizes = [size_class(t.area / (w * h)) for t in truth]
            rows.append(Row(it.defect_type, _xyxy(boxes), _xyxy(truth), m, k, truths[i], up, off, boxes, sizes,
                            bool(test_flagged[i])))
            if it.defect_type != GOOD:
                inside.append(float(m[k].mean()) if k.any() else float("nan"))
    boxes_on_good = [len(per_image[i]["boxes"]) for i in np.flatnonzero(good_flagged)]
    metrics["boxes_per_failed_good"] = float(np.mean(boxes_on_good)) if boxes_on_good else 0.0
    metrics["failed_good"] = int(good_flagged.sum())
    if any(r.defect_type != GOOD for r in rows):
        metrics.update(_localization(rows, rule.threshold))
        metrics["attention_inside_defects"] = float(np.nanmean(inside))
        good_rows = [r for r in rows if r.defect_type == GOOD]
        metrics["per_type_localization"] = {
            t: _localization([r for r in rows if r.defect_type == t] + good_rows, rule.threshold)
            for t in sorted({r.defect_type for r in rows} - {GOOD})}
    return {"name": name, "kind": kind, "metrics": metrics, "threshold": threshold,
            "box_threshold": rule.threshold, "box_rule": rule.to_dict(), "images": per_image, "maps": pt.maps,
            "val_scores": pv.scores.tolist(),
            "test_is_defect": test_defect.tolist(), "test_scores": pt.scores.tolist(), "root": str(root),
            "roi": cfg.data.roi}


class Row(NamedTuple):
    """One test image with pixel truth, as the localization metrics read it."""

    defect_type: str
    pred: np.ndarray          # (N, 4) predicted boxes, frame pixels
    true: np.ndarray          # (M, 4) true boxes, one per connected defect region
    pixel_map: np.ndarray     # map at PIXEL_SIDE
    pixel_mask: np.ndarray    # truth at PIXEL_SIDE
    truth: np.ndarray         # full-frame bool truth
    up: np.ndarray            # map upsampled to the region the model saw
    offset: tuple[int, int]   # that region's corner in the frame
    boxes: list               # predicted Box objects
    sizes: list[str]          # size class of each true region (share of the region the model saw)
    flagged: bool             # the part failed or went to review (boxes are drawn only then)


def _localization(rows: list[Row], threshold: float) -> dict:
    """Box P/R/F1 at IoU 0.1, 0.3 and 0.5, box recall by defect size and by the number of defects on the part,
    pixel AUROC, AUPRO, hit rate, and why the true defects a box did not find at IoU 0.3 were missed (the map's
    box `threshold` decides "map dark")."""
    pred, true = [r.pred for r in rows], [r.true for r in rows]
    out = {f"box@{iou}": box_metrics(pred, true, iou) for iou in (0.1, 0.3, 0.5)}
    out["recall_by_size@0.3"] = box_recall_by(pred, true, [r.sizes for r in rows], 0.3)
    out["recall_by_count@0.3"] = box_recall_by(
        pred, true, [["single" if len(r.true) == 1 else "several"] * len(r.true) for r in rows], 0.3)
    out["pixel_auroc"] = pixel_auroc([r.pixel_map for r in rows], [r.pixel_mask for r in rows])
    out["aupro"] = aupro([r.pixel_map for r in rows], [r.pixel_mask for r in rows])
    bad = [r for r in rows if r.defect_type != GOOD]
    out["hit_rate"] = hit_rate([r.truth for r in bad], [r.up for r in bad], [r.offset for r in bad],
                               [r.boxes for r in bad])
    out["missed@0.3"] = missed_by_cause([r.truth for r in bad], [r.up for r in bad], [r.offset for r in bad],
                                        [r.boxes for r in bad], [r.flagged for r in bad], threshold)
    return out
