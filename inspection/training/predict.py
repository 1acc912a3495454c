"""Evaluate a trained model: defect scores, maps (attention or Grad-CAM), calibrated thresholds, metrics.

    >>> result = evaluate_checkpoint("runs/abn/best.pt", manifest, name="ABN + L_normal")
    >>> result["metrics"]["image"]["auroc"], result["metrics"]["box@0.3"]["f1"]

Thresholds (image decision and attention → box level) are calibrated on the validation split and then
applied unchanged to the test split, the numbers reported. The PyTorch side (predictions, Grad-CAM) is here;
calibration and metrics are torch-free in inspection/training/evaluate.py (export uses them on ONNX predictions).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from inspection.core.layout import GOOD, Manifest
from inspection.core.novelty import distance_map, select_bank
from inspection.model.abn import load_checkpoint
from inspection.training.evaluate import Predictions, evaluate_predictions
from inspection.training.loader import InspectionDataset


def gradcam(model, images: torch.Tensor, layer: str = "last") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Grad-CAM of the defect log-odds (logsumexp of defect classes − good) on the last conv block (as the
    method is normally read) or on the branch-point features F ("features", stride 8: finer, but shallow);
    returns the logits, the map and F."""
    with torch.enable_grad():
        feats = model.features(images)
        if layer == "features":
            feats = feats.detach().requires_grad_(True)
            acts = model.perception(feats)
        else:
            acts = model.perception(feats).detach().requires_grad_(True)
        logits = model.fc(acts.mean(dim=(2, 3)))
        target = torch.logsumexp(logits[:, 1:], dim=1) - logits[:, 0]
        cam_on = feats if layer == "features" else acts
        (grads,) = torch.autograd.grad(target.sum(), cam_on)
        cam = torch.relu((grads.mean(dim=(2, 3), keepdim=True) * cam_on).sum(1))
    return logits.detach(), cam.detach(), feats.detach()


def predict(model, dataset: InspectionDataset, kind: str, batch_size: int = 32, progress: bool = False,
            gradcam_layer: str = "last") -> Predictions:
    """Scores, probabilities and maps of a split; with the model's feature bank (model.novelty_bank), each map
    cell's feature distance to the good parts too (inspection/core/novelty.py)."""
    model.eval()
    scores, probs, maps, far = [], [], [], []
    bank = getattr(model, "novelty_bank", None)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
    if progress:
        from tqdm import tqdm
        loader = tqdm(loader, desc="predict", leave=False, file=sys.stderr)
    for batch in loader:
        x = batch["image"]
        if kind == "cnn":
            logits, amap, features = gradcam(model, x, gradcam_layer)
        else:
            with torch.no_grad():
                out = model(x)
            logits, amap, features = out.logits, out.attention, out.features
        p = logits.softmax(1)
        probs.append(p.numpy())
        scores.append((1 - p[:, 0] if kind == "cnn" else model.defect_score(logits, amap)).numpy())
        maps.append(amap.numpy())
        if bank is not None:
            far += [distance_map(f, bank) for f in features.float().numpy()]
    return Predictions(np.concatenate(scores), np.concatenate(probs), np.concatenate(maps).astype(np.float32),
                       np.stack(far) if far else None)


def feature_bank(model, manifest: Manifest, data_cfg, batch_size: int = 32) -> np.ndarray:
    """The model's feature bank: backbone features of the good training parts' map cells, at most BANK_CELLS of
    them (inspection/core/novelty.py)."""
    train = InspectionDataset(manifest, "train", data_cfg)
    good = [i for i, it in enumerate(train.items) if it.defect_type == GOOD]
    if not good:
        raise ValueError(f"dataset {manifest.root}: no good parts in the train split to fit the feature bank on")
    model.eval()
    cells = []
    with torch.no_grad():
        for batch in torch.utils.data.DataLoader(torch.utils.data.Subset(train, good), batch_size=batch_size):
            f = model.features(batch["image"]).float()
            cells.append(f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]).numpy())
    return select_bank(np.concatenate(cells))


def add_feature_bank(checkpoint: str | Path, manifest: Manifest) -> np.ndarray:
    """Fit the feature bank of a checkpoint on its training parts and store it there (key `novelty_bank`; the
    file is replaced atomically)."""
    path = Path(checkpoint)
    model, cfg, _ = load_checkpoint(path)
    bank = feature_bank(model, manifest, cfg.data)
    state = torch.load(path, map_location="cpu", weights_only=True)
    state["novelty_bank"] = torch.from_numpy(bank)
    tmp = path.with_suffix(".bank.tmp")
    torch.save(state, tmp)
    tmp.replace(path)
    return bank


def evaluate(model, kind: str, manifest: Manifest, cfg, name: str, progress: bool = False,
             search: bool = False) -> dict:
    """Calibrate on val, measure on test. Returns metrics and per-image test results for the report. `search`:
    the box rule that does best on val (a baseline's own best rule)."""
    val = InspectionDataset(manifest, "val", cfg.data)
    test = InspectionDataset(manifest, "test", cfg.data)
    layer = cfg.eval.gradcam_layer
    pv, pt = (predict(model, val, kind, progress=progress, gradcam_layer=layer),
              predict(model, test, kind, progress=progress, gradcam_layer=layer))
    cam_scale = None
    if kind == "cnn":  # one global scale from validation, so that good parts keep low maps (per-image max would not)
        cam_scale = float(np.quantile(pv.maps.reshape(len(pv.maps), -1).max(1), 0.99)) or 1.0
        pv.maps = np.clip(pv.maps / cam_scale, 0, 1)
        pt.maps = np.clip(pt.maps / cam_scale, 0, 1)
    result = evaluate_predictions(pv, pt, manifest, cfg, name, kind, search)
    result["cam_scale"] = cam_scale
    return result


def evaluate_checkpoint(path: str | Path, manifest: Manifest, name: str | None = None, progress: bool = False,
                        cfg_override=None, search: bool = False) -> dict:
    """Evaluate a checkpoint on a manifest; eval settings from cfg_override (else the checkpoint's own)."""
    model, cfg, ckpt = load_checkpoint(path)
    if cfg_override is not None:
        cfg = cfg.model_copy(update={"eval": cfg_override.eval})
    if list(ckpt["classes"]) != list(manifest.classes):
        raise ValueError(f"{path}: model classes {ckpt['classes']} differ from the dataset's {manifest.classes}")
    return evaluate(model, ckpt["kind"], manifest, cfg, name or Path(path).parent.name, progress, search)
