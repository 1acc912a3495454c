"""Retrain from reviews: line run → scripted reviewer → retrain → gate → registry; and the safety rails."""
import fcntl
import json
import shutil
from pathlib import Path

import pytest

from inspection.datasets.synthetic import generate
from inspection.deploy.line.runner import LineRunner
from inspection.deploy.line.station import load_station
from inspection.deploy.registry import Registry
from inspection.training.retrain import RetrainError, retrain
from inspection.training.scripted_reviewer import scripted_review


@pytest.fixture(scope="module")
def plant(exported, tmp_path_factory):
    """A registry with production v1, a failure log from a line run over the data, and a separate golden set."""
    root = tmp_path_factory.mktemp("plant")
    src = root / "v1"
    shutil.copytree(exported["package"], src)
    meta = json.loads((src / "metadata.json").read_text())
    meta["model_version"] = "v1"
    (src / "metadata.json").write_text(json.dumps(meta))
    reg = Registry(root / "models")
    reg.add(src, checkpoint=exported["best"])
    reg.promote("v1")
    cfg = load_station(None, [f"package={root / 'models' / 'current'}", f"source.path={exported['manifest'].root}",
                              "source.kind=simulated", f"log.folder={root / 'log'}", "jsonl=", "reload_s=0",
                              "log.fsync=false"])
    LineRunner(cfg).run()
    golden = root / "golden"
    generate(golden, n_good=12, n_per_type=4, size=96, seed=11, defect_types=("scratch", "hole", "stain"),
             progress=False)
    return {"root": root, "registry": reg, "log": root / "log", "golden": golden, "data": exported["manifest"].root}


def test_retrain_from_reviews_gates_and_updates_the_registry_consistently(plant, tmp_path):
    reviewed = scripted_review(plant["log"], plant["data"])
    assert reviewed > 5
    out = tmp_path / "retrain"
    result = retrain(plant["registry"].root, plant["log"], plant["golden"], out, plant["data"], min_reviews=3,
                     overrides=["train.epochs=1", "train.gamma_map=1.0"], progress=False)
    assert result["status"] in ("promoted", "rejected") and result["new_reviews"] == reviewed
    run = Path(result["report"]).parent.parent
    manifest = json.loads((run / "model" / "manifest.json").read_text())
    with_maps = [it for it in manifest["items"] if it["corrected"]]
    assert len(with_maps) == result["reviewed"]["corrected"] > 0  # the corrected maps are training targets
    # the line ran over the training data itself: every reviewed part replaces its replayed copy, none twice
    merged = result["merged"]
    assert merged["replaced_by_review"] == merged["reviewed"] == reviewed and merged["repeated_reviews"] == 0
    assert len(manifest["items"]) == len(exported_items(plant))
    reg = plant["registry"]
    if result["status"] == "promoted":
        assert reg.current() == result["version"] and (reg.path(result["version"]) / "checkpoint.pt").exists()
        assert reg.list()[-1]["parent"] == "v1"
    else:
        assert reg.current() == "v1" and any("WORSE" in r for r in result["reasons"])
    assert (run / "gate" / "roc.png").exists()
    again = retrain(reg.root, plant["log"], plant["golden"], out, plant["data"], min_reviews=3, progress=False)
    assert again["status"] == "nothing to do" and again["new_reviews"] == 0


def exported_items(plant) -> list:
    return [p for sub in ("good", "defect") for p in (Path(plant["data"]) / sub).rglob("*.*")]


def test_one_retrain_at_a_time_and_an_interrupted_one_changes_nothing(plant, tmp_path, monkeypatch):
    scripted_review(plant["log"], plant["data"])  # (no-op when an earlier test reviewed them)
    out = tmp_path / "retrain"
    out.mkdir()
    with open(out / ".retrain.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(RetrainError, match="another retrain is running"):
            retrain(plant["registry"].root, plant["log"], plant["golden"], out, plant["data"], min_reviews=1)
    before = plant["registry"].current()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    import inspection.training.retrain as module
    monkeypatch.setattr(module, "gate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        retrain(plant["registry"].root, plant["log"], plant["golden"], out, plant["data"], min_reviews=1,
                overrides=["train.epochs=1"], progress=False)
    assert plant["registry"].current() == before and not (out / "state.json").exists()


def test_retrain_refuses_what_it_cannot_do(plant, tmp_path):
    empty = Registry(tmp_path / "empty")
    with pytest.raises(RetrainError, match="no production model"):
        retrain(empty.root, plant["log"], plant["golden"], tmp_path / "r1")
    with pytest.raises(RetrainError, match="no failure log"):
        retrain(plant["registry"].root, tmp_path / "nolog", plant["golden"], tmp_path / "r2")


def test_a_model_trained_with_a_split_file_still_learns_from_its_reviews(plant, exported, tmp_path):
    """The merged data is split afresh: the earlier data's split file names none of the reviewed parts."""
    import torch

    scripted_review(plant["log"], plant["data"])  # (no-op when an earlier test reviewed them)
    split = tmp_path / "split.json"
    items = exported["manifest"].items
    split.write_text(json.dumps({s: [it.path for it in items if it.split == s] for s in ("train", "val", "test")}))
    ckpt = torch.load(exported["best"], weights_only=False)
    ckpt["config"]["data"]["split_file"] = str(split)  # production was trained with a split file
    torch.save(ckpt, tmp_path / "best.pt")
    reg = Registry(tmp_path / "models")
    reg.add(plant["registry"].path("v1"), checkpoint=tmp_path / "best.pt")
    reg.promote("v1")
    result = retrain(reg.root, plant["log"], plant["golden"], tmp_path / "retrain", plant["data"], min_reviews=1,
                     overrides=["train.epochs=1"], progress=False)
    manifest = json.loads((Path(result["report"]).parent.parent / "model" / "manifest.json").read_text())
    assert sum(bool(it["corrected"]) for it in manifest["items"]) == result["reviewed"]["corrected"] > 0


def test_merge_keeps_the_newest_review_of_a_part_and_replaces_its_older_data(tmp_path):
    """The same part (same pixels) judged twice: the record with the higher ID decides, whatever its folder."""
    import cv2
    import numpy as np

    from inspection.training.retrain import _merge

    part = np.full((16, 16), 90, np.uint8)
    other = np.full((16, 16), 30, np.uint8)
    reviewed, base, out = tmp_path / "reviewed", tmp_path / "base", tmp_path / "out"
    for rel, img in (("good/s1_p7_0009.png", part), ("defect/scratch/s1_p7_0012.png", part),
                     ("good/s1_p8_0003.png", other)):
        (reviewed / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(reviewed / rel), img)
    (base / "good").mkdir(parents=True)
    (base / "defect" / "scratch").mkdir(parents=True)
    cv2.imwrite(str(base / "good" / "p7.png"), part)  # the same part in the earlier data
    cv2.imwrite(str(base / "defect" / "scratch" / "q.png"), np.full((16, 16), 200, np.uint8))
    counts = _merge(base, reviewed, out)
    kept = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert kept == ["defect/scratch/q.png", "defect/scratch/s1_p7_0012.png", "good/s1_p8_0003.png"]
    assert counts == {"replayed": 1, "reviewed": 2, "replaced_by_review": 1, "repeated_reviews": 1}
