"""The OpenVINO backend: FP32 parity with ONNX Runtime, INT8 and BF16 accuracy, auto's choice, refusals, a line run.

`make setup` installs the openvino extra, so these run wherever the suite runs.
"""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from inspection.cli import main
from inspection.core.novelty import distance_map
from inspection.core.preprocess import to_input
from inspection.deploy import openvino as ov_backend
from inspection.deploy.openvino import OpenVINOSession, OpenVINOUnavailable, intel_cpu
from inspection.deploy.package import load_package
from inspection.deploy.runtime import Runtime, read_frame
from inspection.model.config import config_from_dict
from inspection.training.evaluate import Predictions, evaluate_predictions
from inspection.training.export import _parity_sample
from inspection.training.loader import InspectionDataset


def _parity_images(exported) -> np.ndarray:
    """The images export checks parity on (half val, half test, spread over each)."""
    cfg, manifest = exported["cfg"], exported["manifest"]
    return _parity_sample(InspectionDataset(manifest, "val", cfg.data), InspectionDataset(manifest, "test", cfg.data),
                          32)


def test_openvino_fp32_matches_onnxruntime_on_the_parity_sample(exported):
    x = _parity_images(exported)
    ort, ov = Runtime(exported["package"], "cpu"), Runtime(exported["package"], "openvino")
    assert ov.backend == "openvino" and ov.session.model.get_property("INFERENCE_PRECISION_HINT").to_string() == "f32"
    names = ["probs", "defect_score", "attention", "features"]
    diffs = {}
    for name, a, b in zip(names, ort._run(x), ov._run(x)):
        scale = max(1.0, float(np.abs(a).max())) if name == "features" else 1.0  # as export compares features
        diffs[name] = float(np.abs(a - b).max()) / scale
    assert max(diffs.values()) <= 1e-4, diffs
    assert ov.threshold == ort.threshold and ov.box_rule == ort.box_rule  # the FP32 variant's own calibration


def _metrics(rt: Runtime, exported) -> dict:
    """Image AUROC and box F1@0.3 on the test split through rt, thresholds and box rule calibrated on val through
    rt: export's procedure for each variant."""
    manifest = exported["manifest"]
    preds = []
    for split in ("val", "test"):
        frames = [read_frame(Path(manifest.root) / it.path) for it in manifest.split(split)]
        probs, scores, maps, features = rt._run(to_input([rt.prepare(f, "BGR") for f in frames], rt.mean, rt.std))
        preds.append(Predictions(scores, probs, maps, np.stack([distance_map(f, rt.bank) for f in features])))
    cfg = config_from_dict(load_package(exported["package"])["training"]["config"])
    m = evaluate_predictions(*preds, manifest, cfg, rt.precision)["metrics"]
    return {"auroc": m["image"]["auroc"], "box_f1": m["box@0.3"]["f1"]}


def _conv_precisions(rt: Runtime) -> set[str]:
    """The precisions OpenVINO runs the model's convolutions in (its compiled model's runtime info)."""
    return {op.get_rt_info()["runtimePrecision"].astype(str) for op in rt.session.model.get_runtime_model().get_ops()
            if op.get_rt_info()["layerType"].astype(str) in ("Convolution", "GroupConvolution")}


def test_openvino_int8_runs_the_packages_int8_model_in_8_bits(exported):
    """The package's own Q/DQ graph: image AUROC within 0.005 and box F1@0.3 within 0.02 of the INT8 variant
    through ONNX Runtime (whose accuracy export measured and stored), by the variant's own thresholds, with every
    convolution run in 8 bits. (Against FP32: the demo's test split, docs/runtime.md; this tiny set's 2-epoch
    model separates too little for 0.005 of AUROC to mean anything.)"""
    ort8, ov8 = Runtime(exported["package"], "cpu", "int8"), Runtime(exported["package"], "openvino", "int8")
    assert ov8.threshold == ort8.threshold == load_package(exported["package"])["variants"]["int8"]["threshold"]
    want, got = _metrics(ort8, exported), _metrics(ov8, exported)
    assert abs(got["auroc"] - want["auroc"]) <= 0.005 and abs(got["box_f1"] - want["box_f1"]) <= 0.02, (got, want)
    assert _conv_precisions(ov8) <= {"i8", "u8"}, _conv_precisions(ov8)


def test_openvino_bf16_keeps_the_fp32_accuracy(exported):
    """BF16 (AMX or AVX-512 BF16) on the FP32 graph: within 0.005 AUROC and 0.02 box F1@0.3 of FP32, FP32's
    thresholds; refused with a message on a CPU without BF16."""
    if "BF16" not in ov_backend.cpu_capabilities():
        with pytest.raises(OpenVINOUnavailable, match="needs a CPU with BF16"):
            Runtime(exported["package"], "openvino", "bf16")
        return
    fp32, bf16 = Runtime(exported["package"], "cpu"), Runtime(exported["package"], "openvino", "bf16")
    assert bf16.threshold == fp32.threshold and bf16.box_rule == fp32.box_rule
    want, got = _metrics(fp32, exported), _metrics(bf16, exported)
    assert abs(got["auroc"] - want["auroc"]) <= 0.005 and abs(got["box_f1"] - want["box_f1"]) <= 0.02, (got, want)
    assert _conv_precisions(bf16) == {"bf16"}, _conv_precisions(bf16)


def test_auto_takes_openvino_on_an_intel_cpu_and_onnxruntime_without_it(exported, monkeypatch):
    assert Runtime(exported["package"]).backend == ("openvino" if intel_cpu() else "cpu")
    assert Runtime(exported["package"], precision="int8").backend == ("openvino" if intel_cpu() else "cpu")
    if intel_cpu() and "BF16" in ov_backend.cpu_capabilities():  # whatever GPU provider: nothing else runs bf16
        assert Runtime(exported["package"], precision="bf16").backend == "openvino"
    monkeypatch.setitem(sys.modules, "openvino", None)  # a line PC without the openvino extra
    ov_backend._core.cache_clear()
    try:
        assert Runtime(exported["package"]).backend == "cpu"
        with pytest.raises(OpenVINOUnavailable, match=r"not installed \(pip install 'inspection\[openvino\]'\)"):
            Runtime(exported["package"], "openvino")
    finally:
        ov_backend._core.cache_clear()


def test_what_openvino_cannot_run_is_refused_with_a_message(exported, monkeypatch):
    with pytest.raises(RuntimeError, match="bf16 needs OpenVINO"):
        Runtime(exported["package"], "cpu", "bf16")
    with pytest.raises(ValueError, match="OpenVINO precision must be one of fp32, bf16, int8"):
        Runtime(exported["package"], "openvino", "fp16")
    # a CPU without BF16 or INT8 support (older Atom/Celeron line PCs): OpenVINO's own capability list says so
    monkeypatch.setattr(ov_backend, "cpu_capabilities", lambda: ["FP32"])
    for precision, needs in (("bf16", "BF16"), ("int8", "INT8")):
        with pytest.raises(OpenVINOUnavailable, match=f"precision {precision} needs a CPU with {needs}"):
            OpenVINOSession(exported["package"] / "model.onnx", precision)


def test_a_line_runs_on_openvino_with_the_verdicts_of_onnxruntime(exported, tmp_path, capsys):
    root = exported["manifest"].root
    runs = {}
    for backend in ("openvino", "cpu"):
        out = tmp_path / backend
        assert main(["run", "--set", f"package={exported['package']}", "--set", "source.kind=folder",
                     "--set", f"source.path={root}", "--set", f"jsonl={out / 'verdicts.jsonl'}",
                     "--set", f"log.folder={out / 'log'}", "--set", "log.fsync=false", "--set", "reload_s=0",
                     "--set", f"backend={backend}"]) == 0
        assert f"on {backend} (fp32)" in capsys.readouterr().err  # the self-check names the backend it started
        runs[backend] = {x["part_id"]: x for x in map(json.loads, (out / "verdicts.jsonl").read_text().splitlines())}
    assert runs["openvino"].keys() == runs["cpu"].keys() and len(runs["cpu"]) > 50
    for part, x in runs["openvino"].items():
        y = runs["cpu"][part]
        assert x["verdict"] == y["verdict"] and abs(x["score"] - y["score"]) <= 1e-4, (part, x, y)
        assert [b["x0"] for b in x["boxes"]] == [b["x0"] for b in y["boxes"]], (part, x, y)
