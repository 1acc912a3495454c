"""The CLI on a tiny dataset: train (ours, plain ABN, CNN), resume, eval with report; errors exit cleanly."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from inspection.cli import main
from inspection.model.abn import CheckpointError, load_checkpoint
from inspection.training.metrics import MISS_CAUSES, OFF_SIZES

TINY = ["--set", "data.image_size=[64, 64]", "--set", "model.backbone=tiny", "--set", "model.pretrained=false",
        "--set", "train.batch_size=8", "--set", "train.lr=0.003", "--set", "eval.overlays=4", "--quiet"]


@pytest.fixture(scope="module")
def trained(tiny_dataset, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    for kind in ("abn", "abn0", "cnn"):
        assert main(["train", "--data", str(tiny_dataset), "--out", str(runs / kind), "--kind", kind,
                     "--set", "train.epochs=2", *TINY]) == 0
    return runs


def test_train_writes_checkpoints_logs_and_curves(trained):
    for kind in ("abn", "abn0", "cnn"):
        run = trained / kind
        for name in ("best.pt", "last.pt", "history.csv", "history.json", "training_curves.png", "manifest.json",
                     "config.yaml"):
            assert (run / name).exists(), f"{kind}: {name}"
        history = json.loads((run / "history.json").read_text())
        assert [h["epoch"] for h in history] == [1, 2]
        assert all(h["train_total"] > 0 for h in history)
    abn = json.loads((trained / "abn" / "history.json").read_text())
    abn0 = json.loads((trained / "abn0" / "history.json").read_text())
    assert abn[0]["train_normal"] > 0 and abn0[0]["train_normal"] > 0  # logged in both, weighted only in ours
    model, cfg, ckpt = load_checkpoint(trained / "abn0" / "best.pt")
    assert cfg.train.w_normal == 0.0 and ckpt["kind"] == "abn"


def test_resume_continues_from_last_checkpoint(trained, tiny_dataset, capsys):
    run = trained / "abn"
    before = torch.load(run / "last.pt", weights_only=False)["epoch"]
    assert main(["train", "--data", str(tiny_dataset), "--out", str(run), "--set", "train.epochs=3", *TINY]) == 0
    history = json.loads((run / "history.json").read_text())
    assert before == 1 and [h["epoch"] for h in history] == [1, 2, 3]


def test_training_into_a_folder_of_another_datasets_run_touches_nothing(trained, tiny_dataset, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(tiny_dataset, other)
    next(p for p in sorted((other / "good").iterdir()) if p.is_file()).unlink()  # another dataset
    run = trained / "abn"
    before = {p: p.read_bytes() for p in (run / "config.yaml", run / "manifest.json")}
    assert main(["train", "--data", str(other), "--out", str(run), *TINY]) == 2
    assert "another model kind or dataset" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in before} == before


def test_eval_compares_checkpoints_and_writes_report(trained, tiny_dataset, tmp_path, capsys):
    out = tmp_path / "report"
    args = ["eval", "--data", str(tiny_dataset), "--out", str(out), "--quiet"]
    for kind in ("abn", "abn0", "cnn"):
        args += ["--checkpoint", str(trained / kind / "best.pt")]
    assert main(args) == 0
    for name in ("report.html", "results.md", "metrics.json", "roc_pr.png", "overlays.png"):
        assert (out / name).stat().st_size > 0, name
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"abn", "abn0", "cnn"}
    for m in metrics.values():
        assert 0 <= m["metrics"]["image"]["auroc"] <= 1
        assert 0 <= m["metrics"]["box@0.3"]["f1"] <= 1 and 0 <= m["metrics"]["aupro"] <= 1
        rule = m["box_rule"]
        assert 0 <= rule["threshold"] <= 1 and 0 < rule["low"] <= 1 and 0 <= rule["relative"] < 1
        assert 0 <= m["metrics"]["hit_rate"] <= 1 and m["metrics"]["boxes_per_failed_good"] >= 0
        assert set(m["metrics"]["per_type_localization"]) == {"hole", "scratch", "stain"}
        missed = m["metrics"]["missed@0.3"]  # every true defect is found or missed for one named cause
        assert missed["n"] == m["metrics"]["box@0.3"]["n_true"] > 0
        assert sum(missed[k] for k in ("found", *MISS_CAUSES)) == missed["n"]
        assert sum(missed[k] for k in OFF_SIZES) <= missed["box off"]
        assert missed["area ratio"] > 0 or np.isnan(missed["area ratio"])
        assert missed["found"] == round(m["metrics"]["box@0.3"]["recall"] * missed["n"])
    text = (out / "results.md").read_text()
    assert "box F1@0.3" in text and "### Per defect type" in text and "| abn | hole |" in text
    assert "### Where the true defects went (IoU 0.3)" in text and "| abn | " in text.split("went (IoU 0.3)")[1]


def test_errors_exit_with_a_message(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "nowhere"), "--quiet"]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  backbone: 3\n")
    assert main(["train", "--config", str(bad), "--quiet"]) == 2
    assert "model.backbone" in capsys.readouterr().err


def test_help_everywhere():
    for cmd in ([], ["generate"], ["train"], ["eval"], ["demo"]):
        r = subprocess.run([sys.executable, "-m", "inspection.cli", *cmd, "--help"], capture_output=True, text=True)
        assert r.returncode == 0 and "usage: inspection" in r.stdout


def test_checkpoint_from_other_architecture_is_refused(trained, tmp_path):
    ckpt = torch.load(trained / "abn" / "best.pt", weights_only=False)
    ckpt["config"]["model"]["backbone"] = "resnet18"
    torch.save(ckpt, tmp_path / "wrong.pt")
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(tmp_path / "wrong.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")


def test_eval_without_masks_reports_image_metrics_only(trained, dataset_copy, tmp_path):
    import shutil

    shutil.rmtree(dataset_copy / "masks")
    out = tmp_path / "report"
    assert main(["eval", "--data", str(dataset_copy), "--out", str(out), "--quiet",
                 "--checkpoint", str(trained / "abn" / "best.pt")]) == 0
    metrics = json.loads((out / "metrics.json").read_text())["abn"]["metrics"]
    assert 0 <= metrics["image"]["auroc"] <= 1 and "box@0.3" not in metrics
    assert (out / "overlays.png").stat().st_size > 0


def test_corrected_maps_enter_training_as_l_map(dataset_copy, tmp_path):
    import numpy as np

    from inspection.core.layout import scan_dataset
    from tests.conftest import tiny_config

    cfg = tiny_config(dataset_copy, **{"train.epochs": 1})
    train_items = [it for it in scan_dataset(dataset_copy, cfg.data).split("train") if it.defect_type != "good"]
    for it in train_items:  # every defective training image gets an operator map
        target = dataset_copy / "corrected" / it.path
        target = target.with_suffix(".npy")
        target.parent.mkdir(parents=True, exist_ok=True)
        np.save(target, np.eye(8, dtype=np.float32))
    assert main(["train", "--data", str(dataset_copy), "--out", str(tmp_path / "run"), "--set", "train.epochs=1",
                 *TINY]) == 0
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert history[0]["train_map"] > 0
    assert main(["train", "--data", str(dataset_copy), "--out", str(tmp_path / "run0"), "--set", "train.epochs=1",
                 "--set", "train.gamma_map=0", *TINY]) == 0
    assert json.loads((tmp_path / "run0" / "history.json").read_text())[0]["train_map"] == 0


@pytest.mark.slow
def test_demo_trains_reports_and_exports_a_package(tiny_dataset, tmp_path):
    from inspection.deploy.package import load_package
    from inspection.training.demo import run_demo
    from tests.conftest import tiny_config

    result = run_demo(tiny_config(tiny_dataset, **{"train.epochs": 1}), tmp_path / "demo", progress=False,
                      baselines=False)
    assert (tmp_path / "demo" / "report" / "report.html").stat().st_size > 0
    meta = load_package(result["package"])
    assert set(meta["variants"]) == {"fp32", "int8"} and result["timings"]["export"] > 0
    line = result["line"]["summary"]
    verdicts = (tmp_path / "demo" / "line" / "verdicts.jsonl").read_text().splitlines()
    assert line["frames_total"] == len(verdicts) == len(result["results"][0]["images"])
    log = (tmp_path / "demo" / "line" / "review_log.md").read_text()
    assert f"{line['log_records_total']} logged parts" in log
    assert line["log_records_total"] == sum('"verdict": "pass"' not in v for v in verdicts)
