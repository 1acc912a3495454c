"""Promotion gate: the same model passes, a worse one is rejected with reasons, and the report is written."""
import json
import shutil
from pathlib import Path

import pytest
import torch

from inspection.model.abn import build_model
from inspection.training.export import export_package
from inspection.training.gate import gate


def test_an_equal_candidate_is_promoted_with_a_report(exported, tmp_path):
    root = exported["manifest"].root
    d = gate(exported["package"], exported["package"], root, tmp_path / "gate")
    assert d["promote"] and all(r.endswith("ok") for r in d["reasons"])
    assert d["candidate"]["metrics"]["box_f1@0.3"] >= 0 and d["images"] == len(exported["manifest"].items)
    for name in ("decision.json", "report.md", "roc.png", "examples.png"):
        assert (tmp_path / "gate" / name).stat().st_size > 0
    assert json.loads((tmp_path / "gate" / "decision.json").read_text())["promote"] is True
    # 24 golden defects: one miss is 0.042, coarser than the 0.02 tolerance; the report says so
    assert any(n.startswith("miss: one part is 0.042 of the golden set's 24 defects") for n in d["notes"])
    assert "- note: miss: one part" in (tmp_path / "gate" / "report.md").read_text()
    first = gate(exported["package"], None, root, tmp_path / "first")
    assert first["promote"] and "no production model" in first["reasons"][0]


def test_a_candidate_that_misses_defects_is_rejected(exported, tmp_path):
    lax = tmp_path / "lax"
    shutil.copytree(exported["package"], lax)
    meta = json.loads((lax / "metadata.json").read_text())
    meta["variants"]["fp32"]["threshold"] = 0.999  # passes nearly everything
    meta["model_version"] = "lax"
    (lax / "metadata.json").write_text(json.dumps(meta))
    d = gate(lax, exported["package"], exported["manifest"].root, tmp_path / "gate")
    assert not d["promote"]
    assert any(r.startswith("miss") and r.endswith("WORSE") for r in d["reasons"])
    assert "REJECT lax" in (tmp_path / "gate" / "report.md").read_text()


def test_an_untrained_model_is_rejected(exported, tmp_path):
    cfg = exported["cfg"]
    torch.manual_seed(123)
    model = build_model(cfg.model, len(exported["manifest"].classes))
    ckpt = torch.load(exported["best"], weights_only=True)
    ckpt["state_dict"] = model.state_dict()
    run = tmp_path / "random"
    run.mkdir()
    torch.save(ckpt, run / "best.pt")
    pkg = export_package(run / "best.pt", run / "package", exported["manifest"], int8=False, progress=False)
    d = gate(pkg, exported["package"], exported["manifest"].root, tmp_path / "gate")
    assert not d["promote"] and any("WORSE" in r for r in d["reasons"])


def test_a_golden_set_without_both_classes_is_refused(exported, tmp_path):
    only_good = tmp_path / "golden"
    shutil.copytree(exported["manifest"].root + "/good", only_good / "good")
    with pytest.raises(ValueError, match="both good and defective"):
        gate(exported["package"], None, only_good, tmp_path / "gate")


def test_corrected_maps_stand_in_for_masks(exported, tmp_path):
    """Factory data has no masks: the reviewers' corrected maps are the pixel truth for box F1 and calibration."""
    import cv2

    from inspection.core.imageio import read_mask
    from inspection.core.layout import scan_dataset
    from inspection.model.abn import load_checkpoint
    from inspection.training.gate import golden_items, score_package
    from inspection.training.predict import evaluate

    root = exported["manifest"].root
    reviewed = tmp_path / "reviewed"
    shutil.copytree(root, reviewed, ignore=shutil.ignore_patterns("masks"))
    for mask in (Path(root) / "masks").rglob("*.png"):
        rel = mask.relative_to(Path(root) / "masks")
        dst = reviewed / "corrected" / "defect" / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(dst), read_mask(mask).astype("uint8") * 255)
    with_masks, with_maps = golden_items(root), golden_items(reviewed)
    assert not any(it["mask"] for it in with_maps) and sum(bool(it["corrected"]) for it in with_maps) > 10
    f1 = [score_package(exported["package"], items)["metrics"]["box_f1@0.3"] for items in (with_masks, with_maps)]
    assert f1[0] == pytest.approx(f1[1])
    model, cfg, _ = load_checkpoint(exported["best"])
    results = [evaluate(model, "abn", scan_dataset(r, cfg.data), cfg, "x") for r in (root, reviewed)]
    assert results[1]["box_rule"] == pytest.approx(results[0]["box_rule"])
    assert results[1]["metrics"]["box@0.3"] == pytest.approx(results[0]["metrics"]["box@0.3"])
