"""Evaluate a trained model: defect scores, maps (attention or Grad-CAM), calibrated thresholds, metrics.

    >>> result = evaluate_checkpoint("runs/abn/best.pt", manifest, name="ABN + L_normal")
    >>> result["metrics"]["image"]["auroc"], result["metrics"]["box@0.3"]["f1"]

Thresholds (image decision and attention → box level) are calibrated on the validation split and then
applied unchanged to the test split, the numbers reported.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from inspection.boxes import components_to_boxes, full_roi, mask_to_boxes
from inspection.data import GOOD, InspectionDataset, Manifest
from inspection.imageio import read_truth
from inspection.metrics import aupro, box_metrics, calibrate_threshold, image_metrics, pixel_auroc
from inspection.model import load_checkpoint

BOX_QUANTILES = np.linspace(0.50, 0.999, 60)  # candidate box levels: upper quantiles of the model's own val maps
PIXEL_SIDE = 128  # pixel metrics are computed at this longest side to keep memory flat


@dataclass
class Predictions:
    scores: np.ndarray   # (N,) defect score = 1 - p(good)
    probs: np.ndarray    # (N, K)
    maps: np.ndarray     # (N, h, w) in [0, 1] (attention, or Grad-CAM normalized)


def gradcam(model, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM of the defect logit (logsumexp of defect classes − good) on the trunk features F."""
    feats = model.features(images).detach().requires_grad_(True)
    logits = model.fc(model.perception(feats).mean(dim=(2, 3)))
    target = torch.logsumexp(logits[:, 1:], dim=1) - logits[:, 0]
    (grads,) = torch.autograd.grad(target.sum(), feats)
    cam = torch.relu((grads.mean(dim=(2, 3), keepdim=True) * feats).sum(1))
    return logits.detach(), cam.detach()


def predict(model, dataset: InspectionDataset, kind: str, batch_size: int = 32, progress: bool = False) -> Predictions:
    model.eval()
    scores, probs, maps = [], [], []
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
    if progress:
        from tqdm import tqdm
        loader = tqdm(loader, desc="predict", leave=False, file=sys.stderr)
    for batch in loader:
        x = batch["image"]
        if kind == "cnn":
            logits, amap = gradcam(model, x)
        else:
            with torch.no_grad():
                out = model(x)
            logits, amap = out.logits, out.attention
        p = logits.softmax(1)
        probs.append(p.numpy())
        scores.append((1 - p[:, 0]).numpy())
        maps.append(amap.numpy())
    return Predictions(np.concatenate(scores), np.concatenate(probs), np.concatenate(maps).astype(np.float32))


def _upsampled(amap: np.ndarray, item, roi) -> tuple[np.ndarray, tuple[int, int]]:
    """Map upsampled to the ROI in original pixels, and the ROI offset."""
    x, y, w, h = full_roi((item.height, item.width), roi)
    return cv2.resize(amap, (w, h), interpolation=cv2.INTER_LINEAR), (x, y)


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


def calibrate_box_threshold(pred: Predictions, items, root: Path, cfg) -> float:
    """Attention level that maximizes box F1 @ IoU 0.3 on validation (fixed value when set or no masks).

    Candidates are upper quantiles of the validation maps' pixel values, not a fixed grid, so that a model whose
    maps live in a narrow band (e.g. 0.1-0.3 after the normal loss) is calibrated as finely as one using 0-1.
    """
    if cfg.eval.boxes.threshold is not None:
        return cfg.eval.boxes.threshold
    truths = _truths(items, root)
    if all(items[i].defect_type == GOOD for i in truths):
        return 0.5
    ups = [_upsampled(pred.maps[i], items[i], cfg.data.roi) for i in truths]
    truth = [np.array([b.xyxy for b in mask_to_boxes(m)]).reshape(-1, 4) for m in truths.values()]
    values = np.concatenate([up[::4, ::4].ravel() for up, _ in ups])
    best, best_t = -1.0, 0.5
    for t in np.unique(np.quantile(values, BOX_QUANTILES)):
        boxes = [np.array([b.xyxy for b in components_to_boxes(up >= t, up, cfg.eval.boxes.min_area, offset=off)])
                 .reshape(-1, 4) for up, off in ups]
        f1 = box_metrics(boxes, truth, 0.3)["f1"]
        if f1 > best:
            best, best_t = f1, float(t)
    return best_t


def _pixel_pair(up: np.ndarray, off, item, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    full = np.zeros((item.height, item.width), np.float32)
    full[off[1]:off[1] + up.shape[0], off[0]:off[0] + up.shape[1]] = up
    s = PIXEL_SIDE / max(item.height, item.width)
    size = (max(1, round(item.width * s)), max(1, round(item.height * s)))
    return (cv2.resize(full, size, interpolation=cv2.INTER_AREA),
            cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_AREA) >= 0.5)


def evaluate(model, kind: str, manifest: Manifest, cfg, name: str, progress: bool = False) -> dict:
    """Calibrate on val, measure on test. Returns metrics and per-image test results for the report."""
    val = InspectionDataset(manifest, "val", cfg.data)
    test = InspectionDataset(manifest, "test", cfg.data)
    pv, pt = predict(model, val, kind, progress=progress), predict(model, test, kind, progress=progress)
    cam_scale = None
    if kind == "cnn":  # one global scale from validation, so that good parts keep low maps (per-image max would not)
        cam_scale = float(np.quantile(pv.maps.reshape(len(pv.maps), -1).max(1), 0.99)) or 1.0
        pv.maps = np.clip(pv.maps / cam_scale, 0, 1)
        pt.maps = np.clip(pt.maps / cam_scale, 0, 1)
    result = evaluate_predictions(pv, pt, manifest, cfg, name, kind)
    result["cam_scale"] = cam_scale
    return result


def evaluate_predictions(pv: Predictions, pt: Predictions, manifest: Manifest, cfg, name: str,
                         kind: str = "abn") -> dict:
    """Metrics from predictions on the val and test splits (any backend: PyTorch, ONNX Runtime, TensorRT)."""
    root = Path(manifest.root)
    val_items, test_items = manifest.split("val"), manifest.split("test")
    val_defect = np.array([it.defect_type != GOOD for it in val_items])
    test_defect = np.array([it.defect_type != GOOD for it in test_items])
    threshold = calibrate_threshold(val_defect, pv.scores, cfg.eval.threshold_mode, cfg.eval.target_false_reject,
                                    cfg.eval.target_miss)
    box_t = calibrate_box_threshold(pv, val_items, root, cfg)

    metrics = {"image": image_metrics(test_defect, pt.scores, threshold)}
    peak = pt.maps.reshape(len(pt.maps), -1).max(1)
    metrics["image"]["auroc_attention_peak"] = image_metrics(test_defect, peak, 0.5)["auroc"]
    metrics["attention_mean_good"] = float(pt.maps[~test_defect].mean())
    metrics["attention_mean_defect"] = float(pt.maps[test_defect].mean())
    metrics["per_type_detection"] = {
        t: float(np.mean(pt.scores[[it.defect_type == t for it in test_items]] >= threshold))
        for t in sorted({it.defect_type for it in test_items} - {GOOD})}

    per_image, pred_boxes, true_boxes, pix_maps, pix_masks = [], [], [], [], []
    truths = _truths(test_items, root)
    for i, it in enumerate(test_items):
        up, off = _upsampled(pt.maps[i], it, cfg.data.roi)
        boxes = components_to_boxes(up >= box_t, up, cfg.eval.boxes.min_area, cfg.eval.boxes.score, offset=off)
        truth = mask_to_boxes(truths[i]) if i in truths else None
        per_image.append({"path": it.path, "defect_type": it.defect_type, "score": float(pt.scores[i]),
                          "fail": bool(pt.scores[i] >= threshold), "boxes": [b.to_dict() for b in boxes],
                          "true_boxes": None if truth is None else [b.xyxy for b in truth], "map_index": i})
        if i in truths:
            pred_boxes.append(np.array([b.xyxy for b in boxes]).reshape(-1, 4))
            true_boxes.append(np.array([b.xyxy for b in truth]).reshape(-1, 4))
            m, k = _pixel_pair(up, off, it, truths[i])
            pix_maps.append(m)
            pix_masks.append(k)
    if any(test_items[i].defect_type != GOOD for i in truths):
        for iou in (0.3, 0.5):
            metrics[f"box@{iou}"] = box_metrics(pred_boxes, true_boxes, iou)
        metrics["pixel_auroc"] = pixel_auroc(pix_maps, pix_masks)
        metrics["aupro"] = aupro(pix_maps, pix_masks)
    return {"name": name, "kind": kind, "metrics": metrics, "threshold": threshold, "box_threshold": box_t,
            "images": per_image, "maps": pt.maps, "val_scores": pv.scores.tolist(),
            "test_is_defect": test_defect.tolist(), "test_scores": pt.scores.tolist(), "root": str(root),
            "roi": cfg.data.roi}


def evaluate_checkpoint(path: str | Path, manifest: Manifest, name: str | None = None, progress: bool = False,
                        cfg_override=None) -> dict:
    """Evaluate a checkpoint on a manifest; eval settings from cfg_override (else the checkpoint's own)."""
    model, cfg, ckpt = load_checkpoint(path)
    if cfg_override is not None:
        cfg = cfg.model_copy(update={"eval": cfg_override.eval})
    if list(ckpt["classes"]) != list(manifest.classes):
        raise ValueError(f"{path}: model classes {ckpt['classes']} differ from the dataset's {manifest.classes}")
    return evaluate(model, ckpt["kind"], manifest, cfg, name or Path(path).parent.name, progress)
