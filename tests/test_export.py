"""Export → model package → torch-free runtime: parity, round trip, INT8, re-scoring and every refusal."""
import dataclasses
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from inspection.cli import main
from inspection.core.boxes import BoxRule, attention_to_boxes
from inspection.core.imageio import read_image
from inspection.core.novelty import BANK_CELLS, distance_map
from inspection.core.preprocess import to_input
from inspection.deploy.package import PackageError, load_package
from inspection.deploy.runtime import FrameError, Runtime, frame_to_rgb, read_frame
from inspection.model.abn import CheckpointError, load_checkpoint
from inspection.training.export import ExportError, export_package
from inspection.training.predict import evaluate


def test_package_holds_graphs_metadata_and_parity(exported):
    meta = load_package(exported["package"])
    assert {"model.onnx", "model.int8.onnx", "rescore.onnx"} <= set(meta["files"])
    assert meta["classes"] == exported["manifest"].classes
    assert meta["input"]["size"] == [64, 64] and meta["input"]["channels"] == "mixed"  # tiny set: gray and color
    assert meta["training"]["manifest_hash"] == exported["manifest"].content_hash
    assert max(meta["parity"]["max_abs_diff"].values()) <= 1e-4
    assert set(meta["variants"]) == {"fp32", "int8"}
    for v in meta["variants"].values():
        assert 0 <= v["threshold"] <= 1 and 0 <= v["metrics"]["image"]["auroc"] <= 1
    assert not list(exported["root"].glob(".package.partial-*"))


def test_onnx_matches_pytorch_with_dynamic_batch(exported):
    model, cfg, _ = load_checkpoint(exported["best"])
    rt = Runtime(exported["package"], backend="cpu")
    x = np.random.default_rng(0).normal(size=(5, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        out = model(torch.from_numpy(x))
    for n in (1, 5):
        probs, scores, att = rt.run_batch(x[:n])
        assert np.abs(probs - out.logits[:n].softmax(1).numpy()).max() <= 1e-4
        assert np.abs(att - out.attention[:n].numpy()).max() <= 1e-4
        assert np.abs(scores - model.defect_score(out.logits, out.attention)[:n].numpy()).max() <= 1e-4


def test_round_trip_gives_the_pytorch_evaluators_decisions_and_boxes(exported):
    model, cfg, _ = load_checkpoint(exported["best"])
    result = evaluate(model, "abn", exported["manifest"], cfg, "torch")
    rt = Runtime(exported["package"], backend="cpu")
    assert rt.threshold == pytest.approx(result["threshold"], abs=1e-6)
    assert rt.box_rule.to_dict() == pytest.approx(result["box_rule"], abs=1e-6)
    root = exported["manifest"].root
    for ref in result["images"]:
        frame = read_image(f"{root}/{ref['path']}")
        probs, scores, att = rt.run_batch(_input(rt, frame))
        assert scores[0] == pytest.approx(ref["score"], abs=2e-3)
        assert (scores[0] >= rt.threshold) == ref["fail"]
        verdict = rt.inspect([frame])[0]
        assert verdict.score == pytest.approx(float(scores[0]), abs=1e-5)
        assert verdict.verdict == rt.decide(float(scores[0])) and (verdict.verdict != "pass") == ref["flagged"]
        assert len(verdict.boxes) == len(ref["boxes"])  # boxes only on parts that fail or go to review
        for b, r in zip(verdict.boxes, ref["boxes"]):
            assert max(abs(p - q) for p, q in zip(b.xyxy, (r["x0"], r["y0"], r["x1"], r["y1"]))) <= 1
        if verdict.verdict != "pass":  # the runtime's boxes: the shared rule on its map, with the package's levels
            # (it computes the feature distance of the cells the rule reads only: the same boxes as every cell's)
            far = distance_map(rt.session.run(["features"], {"image": _input(rt, frame)})[0][0], rt.bank)
            assert [b.xyxy for b in verdict.boxes] == [b.xyxy for b in attention_to_boxes(
                att[0], frame.shape[:2], rt.box_rule, rt.roi, novelty=far)]
            # with the grow level on, every cell's distance: regions grow over new cells around them
            rt.box_rule = dataclasses.replace(rule := rt.box_rule, grow=0.5)
            assert [b.xyxy for b in rt.inspect([frame])[0].boxes] == [b.xyxy for b in attention_to_boxes(
                att[0], frame.shape[:2], rt.box_rule, rt.roi, novelty=far)]
            rt.box_rule = rule


def test_the_feature_bank_travels_from_training_to_the_line(exported, tmp_path):
    from inspection.deploy.package import write_metadata

    model, _, _ = load_checkpoint(exported["best"])
    bank = model.novelty_bank  # fitted on the good training parts at the end of training
    with torch.no_grad():
        channels = model.features(torch.zeros(1, 3, 64, 64)).shape[1]
    assert bank.shape[1] == channels and 0 < len(bank) <= BANK_CELLS
    meta = load_package(exported["package"])
    assert meta["novelty"] == {"file": "novelty.npy", "output": "features", "cells": len(bank), "channels": channels}
    assert np.array_equal(np.load(exported["package"] / "novelty.npy"), bank)
    assert meta["parity"]["max_abs_diff"]["features"] <= 1e-4
    for v in meta["variants"].values():  # the level's distance is set per variant from its own validation cells
        assert v["box_rule"]["novelty"] == BoxRule().novelty and v["box_rule"]["novelty_distance"] > 0
    rt = Runtime(exported["package"], backend="cpu")
    assert np.array_equal(rt.bank, bank) and rt.box_rule.novelty_distance > 0

    # a package written before the bank: no novelty.npy, no level in its rule; its boxes are the rule's without it
    old = tmp_path / "old"
    shutil.copytree(exported["package"], old)
    (old / "novelty.npy").unlink()
    stale = json.loads((old / "metadata.json").read_text())
    stale.pop("novelty")
    for v in stale["variants"].values():
        v["box_rule"] = {k: x for k, x in v["box_rule"].items() if not k.startswith("novelty")}
        v["threshold"] = 0.0  # every part fails: every part is boxed
    stale["decision"]["review_band"] = 0.0
    write_metadata(old, stale)
    before = Runtime(old, backend="cpu")
    assert before.bank is None and before.box_rule.novelty == 0
    frame = read_image(f"{exported['manifest'].root}/{exported['manifest'].split('test')[-1].path}")
    att = before.run_batch(_input(before, frame))[2][0]
    result = before.inspect([frame])[0]
    assert result.verdict == "fail" and [b.xyxy for b in result.boxes] == [
        b.xyxy for b in attention_to_boxes(att, frame.shape[:2], before.box_rule, before.roi)]
    # a damaged bank is refused, naming the file
    np.save(old / "novelty.npy", np.zeros(3, np.float32))
    write_metadata(old, {**stale, "novelty": meta["novelty"]})
    with pytest.raises(PackageError, match="novelty.npy: the feature bank must be"):
        Runtime(old, backend="cpu")


def _input(rt, frame):
    from inspection.core.preprocess import to_input
    return to_input([rt.prepare(frame)], rt.mean, rt.std)


def test_decision_has_a_review_band_around_the_threshold(exported):
    rt = Runtime(exported["package"], backend="cpu")
    band = rt.review_band
    assert band == 0.1 and rt.decide(1.0) == "fail" and rt.decide(0.0) == "pass"
    assert rt.decide(0.6, 0.5) == "fail" and rt.decide(0.5, 0.5) == "review" and rt.decide(0.4, 0.5) == "review"
    assert rt.decide(0.4 - 1e-6, 0.5) == "pass"
    # near the ends the band is clipped half-way, so a sure defect still fails and a clean part still passes
    assert rt.decide(1.0, 0.95) == "fail" and rt.decide(0.97, 0.95) == "review" and rt.decide(0.84, 0.95) == "pass"
    assert rt.decide(0.0, 0.04) == "pass" and rt.decide(0.03, 0.04) == "review" and rt.decide(0.15, 0.04) == "fail"


def test_int8_variant_runs_with_its_own_calibration(exported):
    meta = load_package(exported["package"])
    fp32, int8 = Runtime(exported["package"], "cpu"), Runtime(exported["package"], "cpu", precision="int8")
    assert int8.threshold == meta["variants"]["int8"]["threshold"]
    assert meta["int8"]["calibration_set"] == "all" and meta["int8"]["calibration_images"] > 0
    x = np.stack([_input(fp32, read_image(f"{exported['manifest'].root}/{it.path}"))[0]
                  for it in exported["manifest"].split("test")])
    s32, s8 = fp32.run_batch(x)[1], int8.run_batch(x)[1]
    assert len(np.unique(np.round(s8, 6))) > len(s8) // 2  # scores stay continuous (float softmax)
    assert np.corrcoef(s32, s8)[0, 1] > 0.9


def test_rescore_with_the_models_own_map_reproduces_its_scores(exported):
    rt = Runtime(exported["package"], backend="cpu")
    frame = read_image(f"{exported['manifest'].root}/{exported['manifest'].split('test')[-1].path}")
    r = rt.inspect([frame])[0]
    same = rt.rescore(frame, r.attention)
    assert same["probs"] == pytest.approx(r.probs, abs=1e-4)  # the same perception branch on the same map
    w, k_share = exported["cfg"].model.map_score, exported["cfg"].train.defect_topk
    top = np.sort(r.attention.ravel())[::-1]
    k, hot = max(1, round(k_share * top.size)), int((top >= 0.5).sum())
    term = top[:min(hot, k)].mean() if hot else top[:k].mean()  # an operator's map: its region >= 0.5, at most k
    assert same["defect_score"] == pytest.approx((1 - w) * (1 - r.probs["good"]) + w * term, abs=1e-4)
    if hot == 0 or hot >= k:
        assert same["defect_score"] == pytest.approx(r.score, abs=1e-4)  # then the line's top-k mean, the same
    big = np.kron(r.attention, np.ones((4, 4), np.float32))  # maps at any resolution are resized
    assert rt.rescore(frame, big)["defect_score"] == pytest.approx(same["defect_score"], abs=0.05)
    pit = np.zeros_like(r.attention)
    pit[0, 0] = 1.0  # one painted cell counts as a defect, not as one of k cells
    assert rt.rescore(frame, pit)["defect_score"] >= w
    erased = rt.rescore(frame, np.zeros_like(r.attention))
    assert erased["defect_score"] != pytest.approx(r.score, abs=1e-4)
    with pytest.raises(FrameError, match="2-D"):
        rt.rescore(frame, np.zeros((2, 4, 4)))
    with pytest.raises(FrameError, match="NaN"):
        rt.rescore(frame, np.full(r.attention.shape, np.nan))


def test_export_refuses_what_it_cannot_check(exported, tmp_path):
    with pytest.raises(ExportError, match="no attention branch"):
        export_package(exported["cnn"], tmp_path / "cnn", progress=False)
    with pytest.raises(ExportError, match="already exists"):
        export_package(exported["best"], exported["package"], progress=False)
    with pytest.raises(ExportError, match="differs from PyTorch"):
        export_package(exported["best"], tmp_path / "strict", int8=False, tolerance=-1.0, progress=False)
    assert not (tmp_path / "strict").exists() and not list(tmp_path.glob(".strict*"))
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(exported["best"], lone / "best.pt")
    with pytest.raises(ExportError, match="manifest"):
        export_package(lone / "best.pt", tmp_path / "p", progress=False)


def test_checkpoint_of_another_architecture_is_refused(exported, tmp_path):
    ckpt = torch.load(exported["best"], weights_only=True)
    ckpt["config"]["model"]["backbone"] = "resnet18"
    torch.save(ckpt, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="do not fit"):
        export_package(tmp_path / "other.pt", tmp_path / "p", progress=False)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert main(["export", "--checkpoint", str(tmp_path / "junk.pt"), "--out", str(tmp_path / "q"), "--quiet"]) == 2


@pytest.fixture
def package_copy(exported, tmp_path):
    dst = tmp_path / "pkg"
    shutil.copytree(exported["package"], dst)
    return dst


def _edit_meta(pkg, fn):
    meta = json.loads((pkg / "metadata.json").read_text())
    fn(meta)
    (pkg / "metadata.json").write_text(json.dumps(meta))


def _sha(path) -> str:
    from inspection.deploy.package import file_sha256

    return file_sha256(Path(path))


def _point_outside(pkg, name):
    """The fp32 variant names a graph outside the package, listed with its correct hash."""
    shutil.copy(pkg / "model.onnx", pkg.parent / "outside.onnx")
    _edit_meta(pkg, lambda m: (m["files"].update({name: {"sha256": _sha(pkg.parent / "outside.onnx")}}),
                               m["variants"]["fp32"].update(file=name)))


def _relink(path):
    target = path.parent.parent / path.name
    shutil.move(path, target)
    path.symlink_to(target)


@pytest.mark.parametrize("damage, message", [
    (lambda p: (p / "model.onnx").write_bytes((p / "model.onnx").read_bytes()[:1000]), "SHA-256 differs"),
    (lambda p: (p / "rescore.onnx").unlink(), "missing"),
    (lambda p: (p / "metadata.json").unlink(), "not a model package"),
    (lambda p: (p / "metadata.json").write_text("{\"format\": "), "not JSON"),
    (lambda p: _edit_meta(p, lambda m: m["input"].pop("mean")), "missing field 'input.mean'"),
    (lambda p: _edit_meta(p, lambda m: m["decision"].update(review_band="wide")), "'decision.review_band' must be"),
    (lambda p: _edit_meta(p, lambda m: m.update(format_version=99)), "newer than this software reads"),
    (lambda p: _edit_meta(p, lambda m: m["variants"]["fp32"].pop("threshold")), "variants.fp32.threshold"),
    (lambda p: _edit_meta(p, lambda m: m["input"].update(size=[64])), "input.size"),
    (lambda p: _edit_meta(p, lambda m: m.update(classes=["scratch", "good"])), "start with 'good'"),
    # hostile packages: files outside the folder (with their right hash), links, unhashed files, deep JSON
    (lambda p: _point_outside(p, "../outside.onnx"), "plain file names"),
    (lambda p: _point_outside(p, str(p.parent / "outside.onnx")), "plain file names"),
    (lambda p: _edit_meta(p, lambda m: m["files"].update({"/etc/passwd": {"sha256": _sha("/etc/passwd")}})),
     "plain file names"),
    (lambda p: _relink(p / "rescore.onnx"), "not a plain file"),
    (lambda p: (p / "weights.bin").write_bytes(b"\0" * 64), "weights.bin not listed"),
    (lambda p: (p / "metadata.json").write_text("[" * 100_000 + "]" * 100_000), "not JSON"),
])
def test_damaged_packages_are_refused_by_name(package_copy, damage, message):
    damage(package_copy)
    with pytest.raises(PackageError, match=message):
        Runtime(package_copy, backend="cpu")


def test_missing_variant_and_unknown_backend_are_clear(exported, package_copy):
    _edit_meta(package_copy, lambda m: m["variants"].pop("int8"))
    with pytest.raises(PackageError, match="no int8 model"):
        Runtime(package_copy, backend="cpu", precision="int8")
    with pytest.raises(ValueError, match="backend must be"):
        Runtime(exported["package"], backend="gpu")
    import onnxruntime
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(RuntimeError, match="install onnxruntime-gpu"):
            Runtime(exported["package"], backend="cuda")
        with pytest.raises(RuntimeError, match="fp16 needs TensorRT"):
            Runtime(exported["package"], backend="cpu", precision="fp16")
        # auto falls back to the CPU, and says so: OpenVINO on an Intel CPU where installed, else ONNX Runtime
        from inspection.deploy.openvino import intel_cpu
        assert Runtime(exported["package"]).backend == ("openvino" if intel_cpu() else "cpu")


def test_tensorrt_without_tensorrt_says_what_is_missing(exported, monkeypatch):
    from inspection.deploy.tensorrt import TensorRTUnavailable

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # a line PC without TensorRT, whatever this one has
    with pytest.raises(TensorRTUnavailable, match="not installed"):
        Runtime(exported["package"], backend="tensorrt")


def test_frames_of_the_wrong_kind_are_refused(exported):
    rt = Runtime(exported["package"], backend="cpu")
    ok = np.zeros((90, 100, 3), np.uint8)
    assert rt.inspect([ok])[0].verdict in ("pass", "review", "fail")
    for frame, message in [(np.zeros((90, 100, 2), np.uint8), "HxW"), (np.zeros((4, 4), np.uint8), "at least 8x8"),
                           (np.full((90, 100, 3), 200.0), r"in \[0, 1\]"), (np.zeros((90, 100), np.int64), "dtype"),
                           (np.zeros((40, 400, 3), np.uint8), "aspect"), ("frame.png", "numpy array")]:
        with pytest.raises(FrameError, match=message):
            rt.inspect([frame])
    with pytest.raises(FrameError, match="trained on color"):
        frame_to_rgb(np.zeros((50, 50), np.uint8), channels="color")
    with pytest.raises(FrameError, match="trained on gray"):
        frame_to_rgb(np.zeros((50, 50, 3), np.uint8), channels="gray")
    bgr = np.zeros((20, 20, 3), np.uint8)
    bgr[..., 0] = 255
    assert frame_to_rgb(bgr, "BGR")[0, 0].tolist() == [0, 0, 1] and frame_to_rgb(bgr)[0, 0].tolist() == [1, 0, 0]
    assert frame_to_rgb(np.full((20, 20), 65535, np.uint16)).max() == 1.0


def test_model_input_is_the_full_frame_conversion_resized(exported):
    """Gray and BGR frames are resized before they become RGB: the model sees exactly the same numbers."""
    from inspection.core.preprocess import prepare

    rt = Runtime(exported["package"], backend="cpu")
    rng = np.random.default_rng(0)
    for frame, color in [(rng.integers(0, 256, (240, 260, 3), dtype=np.uint8), "BGR"),
                         (rng.integers(0, 256, (240, 260, 3), dtype=np.uint8), "RGB"),
                         (rng.integers(0, 65536, (240, 260), dtype=np.uint16), "BGR"),
                         (rng.random((60, 70, 3), dtype=np.float32), "BGR")]:  # smaller than the input: enlarged
        want = prepare(frame_to_rgb(frame, color), rt.image_size, rt.roi)
        got = rt.prepare(frame, color)
        assert got.shape == want.shape and got.flags.c_contiguous and np.array_equal(got, want)


def test_roi_larger_than_the_frame_is_refused(package_copy):
    _edit_meta(package_copy, lambda m: m["input"].update(roi=[10, 10, 80, 80]))
    rt = Runtime(package_copy, backend="cpu", check_aspect=False)
    with pytest.raises(FrameError, match="ROI"):
        rt.inspect([np.zeros((60, 60, 3), np.uint8)])
    boxes_frame = rt.inspect([np.zeros((100, 120, 3), np.uint8)])[0]
    assert all(b.x0 >= 10 and b.y0 >= 10 and b.x1 <= 90 and b.y1 <= 90 for b in boxes_frame.boxes)


def test_predict_cli_judges_files_and_reports_bad_ones(exported, tmp_path, capsys):
    root = exported["manifest"].root
    items = exported["manifest"].split("test")[:3]
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    args = ["predict", "--package", str(exported["package"]), "--backend", "cpu"]
    assert main(args + [f"{root}/{it.path}" for it in items] + [str(tmp_path / "broken.png")]) == 1
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(lines) == 4
    assert "not a readable image" in lines[-1]["error"]
    assert all(x["verdict"] in ("pass", "review", "fail") for x in lines[:3])
    rt = Runtime(exported["package"], backend="cpu")
    first = rt.inspect([read_frame(f"{root}/{items[0].path}")], "BGR")[0]
    assert lines[0]["score"] == pytest.approx(first.score, abs=1e-6)


def test_engines_are_built_outside_the_package_hashed_and_never_through_a_symlink(exported, tmp_path, monkeypatch):
    """An engine is code: the runtime never reads one from the package folder (whoever can write a package could
    plant one there), keeps its own cache (owner-only, no symlinks on the way) and loads an engine only when it
    matches the hash written when it was built."""
    import hashlib

    from inspection.deploy.package import PackageError
    from inspection.deploy.runtime import (
        Runtime,
        default_engine_cache,
        engine_cache_dir,
    )
    from inspection.deploy.tensorrt import verified_engine

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_engine_cache() == tmp_path / "xdg" / "inspection" / "engines"
    pkg = tmp_path / "pkg"
    shutil.copytree(exported["package"], pkg)
    (pkg / "engines").symlink_to(tmp_path, target_is_directory=True)  # a planted link out of the package
    Runtime(pkg, backend="cpu")
    assert not (tmp_path / "unknown-gpu-trtort-bundled").exists()
    folder = engine_cache_dir(tmp_path / "cache")
    assert folder.is_dir() and (folder.stat().st_mode & 0o777) == 0o700
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(PackageError, match="symlink"):
        engine_cache_dir(tmp_path / "linked")
    engine = folder / "abc-fp32-b8.engine"
    engine.write_bytes(b"serialized engine")
    assert not verified_engine(engine)  # planted: no hash from a build
    Path(f"{engine}.sha256").write_text(hashlib.sha256(b"serialized engine").hexdigest())
    assert verified_engine(engine)
    engine.write_bytes(b"replaced engine")
    assert not verified_engine(engine)


@pytest.mark.slow
def test_the_small_defects_profile_trains_exports_runs_and_rescores(tiny_dataset, tmp_path):
    """configs/small-defects.yaml (map_stride 4, L_spread): the package's map is twice as fine as F; L_spread
    trains; parity, boxes and re-scoring hold."""
    import json

    from conftest import tiny_config

    from inspection.cli import DEFAULT_CONFIG
    from inspection.core.layout import scan_dataset
    from inspection.training.train import train

    cfg = tiny_config(tiny_dataset, DEFAULT_CONFIG.parent / "small-defects.yaml", **{"train.epochs": 1})
    assert cfg.model.map_stride == 4 and cfg.train.w_spread > 0
    best = train(cfg, scan_dataset(tiny_dataset, cfg.data), tmp_path / "run", progress=False)
    assert json.loads((tmp_path / "run" / "history.json").read_text())[0]["train_spread"] > 0
    package = export_package(best, tmp_path / "package", progress=False)
    meta = load_package(package)
    assert meta["attention"]["size"] == [16, 16] and max(meta["parity"]["max_abs_diff"].values()) <= 1e-4
    rt = Runtime(package, backend="cpu")
    frame = read_frame(next(Path(tiny_dataset).glob("defect/*/*")))
    result = rt.inspect([frame], color="BGR")[0]
    assert result.attention.shape == (16, 16)
    fine = rt.rescore(frame, result.attention, color="BGR")
    coarse = rt.rescore(frame, result.attention.reshape(8, 2, 8, 2).mean((1, 3)), color="BGR")  # an 8x8 map
    assert 0 <= fine["defect_score"] <= 1 and 0 <= coarse["defect_score"] <= 1
    model, _, _ = load_checkpoint(best)
    with torch.no_grad():
        x = torch.from_numpy(rt_input := to_input([rt.prepare(frame, "BGR")], rt.mean, rt.std))
        ref = model.defect_score(model.forward_with_attention(x, torch.from_numpy(result.attention)[None]),
                                 torch.from_numpy(result.attention)[None])
    assert fine["defect_score"] == pytest.approx(float(ref[0]), abs=1e-4) and rt_input.shape == (1, 3, 64, 64)
