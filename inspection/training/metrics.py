"""Image-level and localization metrics (scikit-learn, SciPy, OpenCV); no torch.

    >>> t = calibrate_threshold(val_is_defect, val_scores, mode="max_f1")
    >>> image_metrics(test_is_defect, test_scores, t)          # auroc, ap, f1, false_reject, ...
    >>> box_metrics(pred_boxes_per_image, true_boxes_per_image, iou=0.3)
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
)


def calibrate_threshold(is_defect, scores, mode: str = "max_f1", target_false_reject: float = 0.01,
                        target_miss: float = 0.0) -> float:
    """Decision threshold (fail when score >= t) from validation scores.

    max_f1: the split of best F1, placed half-way between the two validation scores it separates (the
    lowest flagged and the highest passed), not on the lowest flagged score itself: on a small validation set
    that score is one defect's, and a threshold right on it misses every slightly weaker defect (measured
    on the golden sets of 19 small models: misses fell in 17, e.g. 0.41 → 0.09). false_reject: the lowest threshold
    whose false-reject rate on good parts is at most the target, the most sensitive setting the line tolerates.
    miss: the highest threshold whose miss rate on defects is at most the target (the fewest false rejects
    that still catch the share of defects QA asks for), half-way below the lowest defect it must flag.
    """
    y, s = np.asarray(is_defect, bool), np.asarray(scores, float)
    if y.all() or not y.any():
        raise ValueError("threshold calibration needs both good and defective validation images")
    if mode == "max_f1":
        p, r, t = precision_recall_curve(y, s)
        f1 = 2 * p[:-1] * r[:-1] / np.maximum(p[:-1] + r[:-1], 1e-12)
        return _half_way_below(s, t[int(np.argmax(f1))])
    if mode == "false_reject":
        good = np.sort(s[~y])
        k = int(np.floor(target_false_reject * len(good)))  # at most k good parts may reach the threshold
        return float(np.nextafter(good[len(good) - 1 - k], np.inf)) if k < len(good) else float(good[0])
    if mode == "miss":
        defects = np.sort(s[y])
        return _half_way_below(s, defects[int(np.floor(target_miss * len(defects)))])  # those below: missed
    raise ValueError(f"eval.threshold_mode: expected 'max_f1', 'false_reject' or 'miss', got {mode!r}")


def _half_way_below(scores: np.ndarray, lowest_flagged: float) -> float:
    """The threshold half-way between the lowest score to flag and the highest score below it."""
    passed = scores[scores < lowest_flagged]
    return float((lowest_flagged + passed.max()) / 2 if len(passed) else lowest_flagged)


def false_reject_at_miss(is_defect, scores, miss_rate: float = 0.0) -> float:
    """False-reject rate of good parts at the threshold that misses at most `miss_rate` of defects."""
    y, s = np.asarray(is_defect, bool), np.asarray(scores, float)
    d = np.sort(s[y])
    k = int(np.floor(miss_rate * len(d)))
    t = d[k]  # defects below t are missed: k of them
    return float(np.mean(s[~y] >= t))


def image_metrics(is_defect, scores, threshold: float) -> dict:
    y, s = np.asarray(is_defect, bool), np.asarray(scores, float)
    pred = s >= threshold
    tp, fp, fn = int((pred & y).sum()), int((pred & ~y).sum()), int((~pred & y).sum())
    precision = tp / max(tp + fp, 1)
    recall = tp / max(tp + fn, 1)
    both = y.any() and (~y).any()
    return {
        "auroc": float(roc_auc_score(y, s)) if both else float("nan"),
        "ap": float(average_precision_score(y, s)) if both else float("nan"),
        "f1": 2 * precision * recall / max(precision + recall, 1e-12),
        "precision": precision, "recall": recall,
        "false_reject": float(pred[~y].mean()) if (~y).any() else float("nan"),
        "miss": float((~pred[y]).mean()) if y.any() else float("nan"),
        "false_reject_at_miss_5pct": false_reject_at_miss(y, s, 0.05) if both else float("nan"),
        "threshold": float(threshold), "n_good": int((~y).sum()), "n_defect": int(y.sum()),
    }


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of (N, 4) and (M, 4) xyxy boxes (exclusive x1/y1); a test checks it against torchvision.ops."""
    a, b = np.asarray(a, float).reshape(-1, 4), np.asarray(b, float).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-12)


def match_boxes(pred, true, iou: float) -> int:
    """Number of one-to-one matches (Hungarian on IoU) with IoU >= `iou`."""
    return int(matched_true(pred, true, iou).sum())


def matched_true(pred, true, iou: float, ious: np.ndarray | None = None) -> np.ndarray:
    """Which true boxes a predicted box matches one-to-one (Hungarian on IoU) with IoU >= `iou`: (M,) bool.
    `ious`: box_iou(pred, true) where the caller has it already."""
    found = np.zeros(len(true), bool)
    if len(pred) == 0 or len(true) == 0:
        return found
    m = box_iou(pred, true) if ious is None else ious
    rows, cols = linear_sum_assignment(-m)
    found[cols[m[rows, cols] >= iou]] = True
    return found


SIZE_CLASSES = (("tiny", 0.001), ("small", 0.01), ("large", float("inf")))  # share of the part's area: < 0.1 %, < 1 %


def size_class(share: float) -> str:
    """'tiny' under 0.1 % of the part's area, 'small' under 1 %, else 'large'."""
    return next(name for name, upper in SIZE_CLASSES if share < upper)


def box_recall_by(pred_per_image, true_per_image, groups_per_image, iou: float = 0.3) -> dict:
    """Box recall per group of true boxes (e.g. by size class or by the number of defects on the part):
    {group: {"recall", "found", "n"}}; groups_per_image holds one label per true box."""
    found: dict[str, list[int]] = {}
    for p, t, g in zip(pred_per_image, true_per_image, groups_per_image):
        for label, hit in zip(g, matched_true(p, t, iou)):
            found.setdefault(label, [0, 0])
            found[label][0] += int(hit)
            found[label][1] += 1
    return {k: {"recall": f / n, "found": f, "n": n} for k, (f, n) in sorted(found.items())}


def box_metrics(pred_per_image, true_per_image, iou: float = 0.3) -> dict:
    """Micro-averaged box precision / recall / F1 over images (lists of (N_i, 4) xyxy arrays)."""
    tp = sum(match_boxes(p, t, iou) for p, t in zip(pred_per_image, true_per_image))
    n_pred = sum(len(p) for p in pred_per_image)
    n_true = sum(len(t) for t in true_per_image)
    precision = tp / n_pred if n_pred else (1.0 if n_true == 0 else 0.0)
    recall = tp / n_true if n_true else 1.0
    f1 = 2 * precision * recall / max(precision + recall, 1e-12)
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "n_pred": n_pred, "n_true": n_true}


def hit_rate(masks: list[np.ndarray], maps: list[np.ndarray], offsets: list[tuple[int, int]], boxes: list) -> float:
    """Share of true defect regions (8-connected components of each image's mask) that hold the map's peak
    inside their bounding box or that a predicted box touches (overlaps a pixel of the region).

    masks: full-frame bool masks; maps: each map upsampled to the region the model saw, whose corner in the
    frame is `offsets`; boxes: each image's predicted Box list (frame pixels, exclusive x1/y1).
    """
    import cv2

    hits = total = 0
    for mask, up, (ox, oy), pred in zip(masks, maps, offsets, boxes):
        n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
        py, px = np.unravel_index(int(np.argmax(up)), up.shape)
        py, px = py + oy, px + ox
        for i in range(1, n):
            x, y, w, h = (int(v) for v in stats[i][:4])
            hit = x <= px < x + w and y <= py < y + h
            hit = hit or any((labels[b.y0:b.y1, b.x0:b.x1] == i).any() for b in pred)
            hits, total = hits + hit, total + 1
    return hits / total if total else float("nan")


MISS_CAUSES = ("passed", "map dark", "shared box", "box off", "no box")
OFF_SIZES = ("box off, too large", "box off, too small")  # of "box off": the box at least twice / at most half


def missed_by_cause(masks: list[np.ndarray], maps: list[np.ndarray], offsets: list[tuple[int, int]], boxes: list,
                    flagged: list[bool], threshold: float, iou: float = 0.3) -> dict:
    """Where the true defect regions (8-connected components of each mask) end up at IoU `iou`: "found" (a box
    matches it one-to-one), or the first reason that applies of MISS_CAUSES: "passed" (the part passed, so no
    boxes were drawn), "map dark" (the map stays under the box threshold everywhere on the region), "shared box"
    (a box that touches it also touches another true region: one box over several defects), "box off" (a box
    touches it, at IoU under `iou`: too large, too small or shifted), "no box" (the map reaches the threshold on
    it, yet no box touches it: its region was dropped). Counts, with "n" the number of true regions; of the
    "box off" ones, those whose touching box of best IoU is at least twice ("too large") or at most half ("too
    small") the true box's area; and "area ratio", the median over the true regions a box touches (found or
    not) of that box's area over the true box's (1: boxes as large as the defects; nan: no box touches one).

    masks: full-frame bool masks; maps: each map upsampled to the region the model saw, whose corner in the frame
    is `offsets`; boxes: each image's predicted Box list; flagged: whether each part failed or went to review."""
    import cv2
    from scipy.ndimage import maximum

    out = dict.fromkeys(("n", "found", *MISS_CAUSES, *OFF_SIZES), 0)
    ratios = []
    for mask, up, (ox, oy), pred, flag in zip(masks, maps, offsets, boxes, flagged):
        n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
        if n < 2:
            continue
        true = np.array([[x, y, x + w, y + h] for x, y, w, h in stats[1:, :4]], float)
        xyxy = np.array([b.xyxy for b in pred], float).reshape(-1, 4)
        ious = box_iou(xyxy, true)  # (boxes, true regions)
        found = matched_true(xyxy, true, iou, ious)
        sizes = np.prod(xyxy[:, 2:] - xyxy[:, :2], 1)[:, None] / np.prod(true[:, 2:] - true[:, :2], 1)[None]
        full = np.zeros(mask.shape, np.float32)  # the map on the frame (0 outside the region the model saw)
        full[oy:oy + up.shape[0], ox:ox + up.shape[1]] = up
        peaks = maximum(full, labels, np.arange(1, n))  # the map's highest value on each true region
        seen = [np.unique(labels[b.y0:b.y1, b.x0:b.x1]) for b in pred]  # true regions under each box
        for j in range(1, n):
            out["n"] += 1
            ratio = None  # the area ratio of the box of best IoU, where a box overlaps the region's box
            if len(pred) and ious[:, j - 1].max() > 0:
                ratio = sizes[ious[:, j - 1].argmax(), j - 1]
                ratios.append(ratio)
            if found[j - 1]:
                cause = "found"
            elif not flag:
                cause = "passed"
            elif peaks[j - 1] < threshold:
                cause = "map dark"
            else:
                under = [s for s in seen if j in s]
                cause = ("no box" if not under else
                         "shared box" if any(len(s[(s > 0) & (s != j)]) for s in under) else "box off")
            out[cause] += 1
            if cause == "box off":
                out[OFF_SIZES[0]] += int(ratio >= 2)
                out[OFF_SIZES[1]] += int(ratio <= 0.5)
    out["area ratio"] = float(np.median(ratios)) if ratios else float("nan")
    return out


def pixel_auroc(maps: list[np.ndarray], masks: list[np.ndarray]) -> float:
    s = np.concatenate([m.ravel() for m in maps])
    y = np.concatenate([m.ravel() for m in masks]).astype(bool)
    if y.all() or not y.any():
        return float("nan")
    return float(roc_auc_score(y, s))


def aupro(maps: list[np.ndarray], masks: list[np.ndarray], fpr_limit: float = 0.3, steps: int = 200) -> float:
    """Area under the per-region-overlap curve up to `fpr_limit` FPR, normalized to [0, 1] (MVTec AD)."""
    import cv2

    regions, normal = [], []
    for amap, mask in zip(maps, masks):
        mask = mask.astype(bool)
        normal.append(amap[~mask])
        n, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
        regions += [np.sort(amap[labels == i]) for i in range(1, n)]
    if not regions:
        return float("nan")
    normal_sorted = np.sort(np.concatenate(normal))
    all_scores = np.concatenate([normal_sorted] + regions)
    thresholds = np.unique(np.quantile(all_scores, np.linspace(0, 1, steps)))[::-1]
    fpr = 1 - np.searchsorted(normal_sorted, thresholds, side="left") / len(normal_sorted)
    pro = np.mean([1 - np.searchsorted(r, thresholds, side="left") / len(r) for r in regions], axis=0)
    fpr, pro = np.concatenate([[0.0], fpr]), np.concatenate([[0.0], pro])
    keep = fpr <= fpr_limit
    x, y = fpr[keep], pro[keep]
    if x[-1] < fpr_limit and keep.sum() < len(fpr):  # interpolate the curve at the limit
        i = int(keep.sum())
        w = (fpr_limit - fpr[i - 1]) / max(fpr[i] - fpr[i - 1], 1e-12)
        x, y = np.append(x, fpr_limit), np.append(y, pro[i - 1] + w * (pro[i] - pro[i - 1]))
    return float(np.trapezoid(y, x) / fpr_limit)
