"""Training checkpoint → model package (ONNX FP32 + INT8, rescore graph, metadata), checked against PyTorch.

    >>> export_package("runs/model/best.pt", "runs/model/package")   # manifest: runs/model/manifest.json

Steps: export both graphs (dynamic batch, opset 18) → onnx.checker → parity with PyTorch on real val/test
images (refuses to write a package beyond the tolerance) → calibrate thresholds on val and measure on test
through ONNX Runtime, per variant → INT8 static quantization calibrated on training images → metadata.json.
The package is written to a temporary folder and renamed into place, so a failed export leaves nothing.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch import nn

from inspection.core.boxes import BoxRule, full_roi
from inspection.core.errors import UserError
from inspection.core.layout import GOOD, Manifest
from inspection.core.novelty import distance_map
from inspection.deploy.package import (
    FORMAT,
    FORMAT_VERSION,
    file_sha256,
    write_metadata,
)
from inspection.deploy.runtime import open_session
from inspection.model.abn import ABN, load_checkpoint, rescore_formula, score_formula
from inspection.training.evaluate import Predictions, evaluate_predictions
from inspection.training.loader import InspectionDataset

OPSET = 18
PARITY_TOLERANCE = 1e-4
OUTPUTS = ("probs", "defect_score", "attention")
FEATURES = "features"  # the backbone features at the map's cells, output where the model has a feature bank
RESCORE_OUTPUTS = ("probs", "defect_score")


class ExportError(UserError, RuntimeError):
    """Export refused: the message says which check failed and by how much."""


def _outputs(bank: np.ndarray | None) -> list[str]:
    """The inference graph's outputs: the features too where the model has a feature bank."""
    return [*OUTPUTS, FEATURES] if bank is not None else list(OUTPUTS)


class InferenceGraph(nn.Module):
    """What the line runs: probabilities, defect score (ABN.defect_score), the attention map, and with a feature
    bank the backbone features F (the box rule's `novelty` level measures their distance to the bank)."""

    def __init__(self, model: ABN):
        super().__init__()
        self.model = model
        self.with_features = getattr(model, "novelty_bank", None) is not None

    def forward(self, image: torch.Tensor):
        out = self.model(image)
        scores = (out.logits.softmax(1), self.model.defect_score(out.logits, out.attention), out.attention)
        return (*scores, out.features) if self.with_features else scores


class RescoreGraph(nn.Module):
    """Re-scoring with an operator-corrected map at the model's map resolution (docs/method.md, JP7542802B2)."""

    def __init__(self, model: ABN):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor, attention: torch.Tensor):
        attention = attention.clamp(0, 1)
        logits = self.model.perceive(self.model.features(image), attention)
        return logits.softmax(1), self.model.defect_score(logits, attention, corrected=True)


def _export_onnx(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str]) -> None:
    import warnings

    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, args, dynamo=True, opset_version=OPSET, input_names=inputs,
                                    output_names=outputs, dynamic_shapes={k: {0: batch} for k in inputs},
                                    verbose=False)
    program.save(str(path), external_data=False)


def _add_props(path: Path, props: dict) -> None:
    import onnx

    model = onnx.load(str(path))
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = f"inspection.{key}", value if isinstance(value, str) else json.dumps(value)
    onnx.save(model, str(path))
    onnx.checker.check_model(str(path), full_check=True)


def _batch(dataset: InspectionDataset, idx) -> np.ndarray:
    return np.stack([dataset[i]["image"].numpy() for i in idx]).astype(np.float32)


def _ort_predictions(session, dataset: InspectionDataset, bank: np.ndarray | None,
                     batch_size: int = 32) -> Predictions:
    """Predictions of a split through an ONNX Runtime session; with a bank, the feature distance of every cell."""
    probs, scores, maps, far = [], [], [], []
    names = _outputs(bank)
    for i in range(0, len(dataset), batch_size):
        out = session.run(names, {"image": _batch(dataset, range(i, min(i + batch_size, len(dataset))))})
        probs.append(out[0]), scores.append(out[1]), maps.append(out[2])
        if bank is not None:
            far += [distance_map(f, bank) for f in out[3]]
    return Predictions(np.concatenate(scores), np.concatenate(probs), np.concatenate(maps).astype(np.float32),
                       np.stack(far) if far else None)


def check_parity(model: ABN, root: Path, x: np.ndarray, tolerance: float = PARITY_TOLERANCE) -> dict:
    """Max |ONNX Runtime − PyTorch| of every output on the batch x (and rescore on altered maps); raise if over.
    The features (unbounded, tens in size) are compared relative to their largest magnitude."""
    with torch.no_grad():
        ref = InferenceGraph(model)(torch.from_numpy(x))
        altered = 1 - ref[2]  # a map unlike the model's own, as an operator's correction would be
        ref_rescore = RescoreGraph(model)(torch.from_numpy(x), altered)
    names = _outputs(getattr(model, "novelty_bank", None))
    got = open_session(root / "model.onnx").run(names, {"image": x})
    got_rescore = open_session(root / "rescore.onnx").run(list(RESCORE_OUTPUTS), {"image": x,
                                                                                  "attention": altered.numpy()})
    diffs = {name: float(np.abs(g - r.numpy()).max() / (max(1.0, float(np.abs(r.numpy()).max()))
                                                          if name == FEATURES else 1.0))
             for name, g, r in zip(names, got, ref)}
    diffs.update({f"rescore_{name}": float(np.abs(g - r.numpy()).max())
                  for name, g, r in zip(RESCORE_OUTPUTS, got_rescore, ref_rescore)})
    bad = {k: v for k, v in diffs.items() if not v <= tolerance}
    if bad:
        raise ExportError(f"ONNX output differs from PyTorch beyond {tolerance:g} on {len(x)} images: "
                          + ", ".join(f"{k} {v:.2e}" for k, v in bad.items()) + "; package not written")
    return diffs


def quantize_int8(fp32: Path, out: Path, calibration: np.ndarray) -> None:
    """Static QDQ INT8, per-channel 7-bit weights, activations calibrated (min/max) on the given images.

    reduce_range: without VNNI, x86 runs u8×s8 through VPMADDUBSW, whose int16 pair sums saturate; with full
    8-bit weights the demo model's test AUROC fell from 0.992 to 0.973, with 7-bit weights it stays at 0.995.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(np.array_split(calibration, max(1, len(calibration) // 8)))

        def get_next(self):
            b = next(self.batches, None)
            return None if b is None else {"image": np.ascontiguousarray(b)}

    pre = out.with_suffix(".pre.onnx")
    logger, level = logging.getLogger(), logging.getLogger().level
    logger.setLevel(logging.ERROR)  # the quantizer logs a warning per BatchNorm it leaves in float
    try:
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        # the classifier, softmax and sigmoid stay float: quantized, scores would come in steps of 1/255
        tail = [n.name for n in onnx.load(str(pre)).graph.node if n.op_type in ("Gemm", "Softmax", "Sigmoid")]
        quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=tail,
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
    finally:
        logger.setLevel(level)
        pre.unlink(missing_ok=True)


def _channels(images: np.ndarray, mean, std) -> str:
    """gray / color / mixed: what the model saw (gray sources are replicated to 3 equal channels)."""
    raw = images * np.asarray(std, np.float32)[:, None, None] + np.asarray(mean, np.float32)[:, None, None]
    gray = [bool(np.abs(im[0] - im[1]).max() < 2e-3 and np.abs(im[1] - im[2]).max() < 2e-3) for im in raw]
    return "gray" if all(gray) else "color" if not any(gray) else "mixed"


def _evaluate_variant(path: Path, val: InspectionDataset, test: InspectionDataset, manifest: Manifest, cfg,
                      bank: np.ndarray | None) -> dict:
    session = open_session(path)
    result = evaluate_predictions(_ort_predictions(session, val, bank), _ort_predictions(session, test, bank),
                                  manifest, cfg, path.name)
    return {"file": path.name, "threshold": float(result["threshold"]), "box_threshold": float(result["box_threshold"]),
            "box_rule": result["box_rule"],
            "metrics": result["metrics"]}


def export_package(checkpoint: str | Path, out_dir: str | Path, manifest: Manifest | None = None, *,
                   int8: bool = True, int8_calibration: str = "all", calibration_images: int = 96,
                   version: str | None = None, parity_images: int = 32, tolerance: float = PARITY_TOLERANCE,
                   force: bool = False, progress: bool = True) -> Path:
    """Write a checked model package for an ABN checkpoint; return its folder. Steps: check the inputs, export
    the two ONNX graphs, check parity with PyTorch, calibrate and measure each variant, write the metadata; all
    in a temporary folder renamed into place at the end (nothing is left behind on an error)."""
    t0 = time.time()
    say = (lambda msg: print(f"export [{time.time() - t0:5.1f} s] {msg}", file=sys.stderr)) if progress else (
        lambda msg: None)
    checkpoint, out = Path(checkpoint), Path(out_dir)
    model, cfg, ckpt, manifest = _check_inputs(checkpoint, out, manifest, force, int8_calibration)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        say("exporting model.onnx and rescore.onnx")
        att_hw, props = _export_graphs(model, cfg, manifest, checkpoint, tmp)
        val, test = InspectionDataset(manifest, "val", cfg.data), InspectionDataset(manifest, "test", cfg.data)
        sample = _parity_sample(val, test, parity_images)
        say(f"parity with PyTorch on {len(sample)} val/test images")
        parity = check_parity(model, tmp, sample, tolerance)
        say("calibrating thresholds (val) and measuring (test) through ONNX Runtime")
        bank = model.novelty_bank
        if bank is not None:
            np.save(tmp / "novelty.npy", bank)
        variants = {"fp32": _evaluate_variant(tmp / "model.onnx", val, test, manifest, cfg, bank)}
        calib = _calibration_images(manifest, cfg, int8_calibration, calibration_images)
        int8_info = None
        if int8:
            say(f"INT8 quantization calibrated on {len(calib)} training images ({int8_calibration})")
            variants["int8"], int8_info = _int8_variant(tmp, calib, sample, val, test, manifest, cfg, bank)
            int8_info["calibration_set"] = int8_calibration
        meta = _metadata(cfg, manifest, ckpt, checkpoint, props["checkpoint_sha256"], version, variants,
                         np.concatenate([sample, calib]),
                         {"images": len(sample), "tolerance": tolerance, "max_abs_diff": parity}, int8_info, att_hw,
                         bank)
        write_metadata(tmp, meta)
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(f"package written to {out}")
    return out


def _check_inputs(checkpoint: Path, out: Path, manifest: Manifest | None, force: bool, int8_calibration: str):
    """The model, config, checkpoint and manifest to export, or ExportError saying what is wrong."""
    if out.exists() and not force:
        raise ExportError(f"{out}: already exists; choose a new folder or pass --force to replace it")
    model, cfg, ckpt = load_checkpoint(checkpoint)
    if ckpt["kind"] != "abn" or not isinstance(model, ABN):
        raise ExportError(f"{checkpoint}: a {ckpt['kind']!r} checkpoint has no attention branch; only ABN models "
                          "are exported for the line (the Grad-CAM baseline is for comparison only)")
    if manifest is None:
        path = checkpoint.parent / "manifest.json"
        if not path.exists():
            raise ExportError(f"{path}: not found; pass the training manifest (--manifest) so that thresholds can be "
                              "calibrated and parity checked on real images")
        manifest = Manifest.load(path)
    if list(manifest.classes) != list(ckpt["classes"]):
        raise ExportError(f"{checkpoint}: model classes {ckpt['classes']} differ from the manifest's "
                          f"{manifest.classes}")
    if int8_calibration not in ("good", "all"):
        raise ValueError(f"int8_calibration must be 'good' or 'all', got {int8_calibration!r}")
    return model, cfg, ckpt, manifest


def _export_graphs(model, cfg, manifest: Manifest, checkpoint: Path, tmp: Path) -> tuple[list[int], dict]:
    """model.onnx (image → outputs) and rescore.onnx (image, corrected map → outputs), with their properties;
    returns the map's size and the properties."""
    h, w = cfg.data.image_size
    example = torch.zeros(2, 3, h, w)
    with torch.no_grad():
        att_hw = list(model(example).attention.shape[-2:])
    _export_onnx(InferenceGraph(model), (example,), tmp / "model.onnx", ["image"],
                 _outputs(getattr(model, "novelty_bank", None)))
    _export_onnx(RescoreGraph(model), (example, torch.zeros(2, *att_hw)), tmp / "rescore.onnx",
                 ["image", "attention"], list(RESCORE_OUTPUTS))
    props = {"format": FORMAT, "classes": list(manifest.classes), "checkpoint_sha256": file_sha256(checkpoint)}
    for name in ("model.onnx", "rescore.onnx"):
        _add_props(tmp / name, props)
    return att_hw, props


def _parity_sample(val, test, n: int) -> np.ndarray:
    """Up to n images spread over val and test (half each), for the parity check."""
    n_val = min(len(val), n // 2 or 1)
    return np.concatenate([_batch(val, np.linspace(0, len(val) - 1, n_val).astype(int)),
                           _batch(test, np.linspace(0, len(test) - 1, min(len(test), n - n_val) or 1).astype(int))])


def _calibration_images(manifest: Manifest, cfg, which: str, n: int) -> np.ndarray:
    """Up to n training images spread over the set (all classes, or good parts only), for INT8 calibration."""
    train = InspectionDataset(manifest, "train", cfg.data)
    pool = [i for i, it in enumerate(train.items) if which == "all" or it.defect_type == GOOD]
    return _batch(train, [pool[int(k)] for k in np.linspace(0, len(pool) - 1, min(len(pool), n))])


def _int8_variant(tmp: Path, calib: np.ndarray, sample: np.ndarray, val, test, manifest: Manifest,
                  cfg, bank: np.ndarray | None) -> tuple[dict, dict]:
    """model.int8.onnx (static quantization calibrated on `calib`), its calibrated thresholds and metrics, and how
    far its outputs are from FP32 on the parity sample."""
    quantize_int8(tmp / "model.onnx", tmp / "model.int8.onnx", calib)
    variant = _evaluate_variant(tmp / "model.int8.onnx", val, test, manifest, cfg, bank)
    names = _outputs(bank)
    q = open_session(tmp / "model.int8.onnx").run(names, {"image": sample})
    f = open_session(tmp / "model.onnx").run(names, {"image": sample})
    return variant, {"calibration_images": len(calib),
                     "max_abs_diff_vs_fp32": {k: float(np.abs(a - b).max()) for k, a, b in zip(names, q, f)}}


def _metadata(cfg, manifest: Manifest, ckpt: dict, checkpoint: Path, ck_sha: str, version: str | None,
              variants: dict, images: np.ndarray, parity: dict, int8_info: dict | None, att_hw: list,
              bank: np.ndarray | None) -> dict:
    """metadata.json: what the line runtime needs to run the package exactly as it was measured."""
    crops = [full_roi((it.height, it.width), cfg.data.roi) for it in manifest.items]
    aspects = [c[2] / c[3] for c in crops]
    h, w = cfg.data.image_size
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "model_version": version or f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{ck_sha[:8]}",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "classes": list(manifest.classes),
        "input": {"name": "image", "size": [h, w], "layout": "NCHW", "dtype": "float32", "color": "RGB",
                  "scale": "pixels / max value (255 or 65535), then (x - mean) / std",
                  "mean": list(cfg.data.mean), "std": list(cfg.data.std), "roi": cfg.data.roi,
                  "resize": "crop roi, then cv2.resize to size: INTER_AREA when shrinking, else INTER_LINEAR",
                  "channels": _channels(images, cfg.data.mean, cfg.data.std),
                  "aspect_range": [round(min(aspects), 4), round(max(aspects), 4)]},
        "outputs": {"probs": "(B, K) softmax over classes",
                    "defect_score": f"(B,) {score_formula(cfg.model.map_score, cfg.train.defect_topk)}",
                    "attention": "(B, h, w) attention map in [0, 1]",
                    **({FEATURES: "(B, C, h, w) backbone features at the map's cells (the box rule's novelty level: "
                                  "distance to the nearest row of novelty.npy)"} if bank is not None else {})},
        "attention": {"name": "attention", "size": att_hw},
        "rescore": {"inputs": "image as above, attention (B, h, w) an operator-corrected map in [0, 1]",
                    "defect_score": f"(B,) {rescore_formula(cfg.model.map_score, cfg.train.defect_topk)}"},
        "decision": {"review_band": cfg.eval.review_band, "threshold_mode": cfg.eval.threshold_mode,
                     "target_false_reject": cfg.eval.target_false_reject, "target_miss": cfg.eval.target_miss,
                     "rule": "fail if score >= threshold + band; review if within the band; else pass; "
                             "the band reaches at most half-way to 0 and to 1"},
        "boxes": {"min_area": cfg.eval.boxes.min_area, "score": cfg.eval.boxes.score,
                  "calibrated": cfg.eval.boxes.threshold is None,
                  "rule": "on parts that fail or go to review, with the levels of variants.*.box_rule: "
                          + BoxRule.text()},
        "novelty": None if bank is None else {"file": "novelty.npy", "output": FEATURES, "cells": int(len(bank)),
                                              "channels": int(bank.shape[1])},
        "variants": variants,
        "parity": parity,
        "int8": int8_info,
        "training": {"manifest_hash": ckpt.get("manifest_hash") or manifest.content_hash,
                     "eval_manifest_hash": manifest.content_hash, "checkpoint": str(checkpoint),
                     "checkpoint_sha256": ck_sha, "epoch": ckpt.get("epoch"),
                     "config": cfg.model_dump(mode="json")},
        "opset": OPSET,
    }
    return meta


def _replace(tmp: Path, out: Path) -> None:
    """Move the finished package into place; an existing one (--force) is swapped out, then removed."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
