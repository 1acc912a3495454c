"""The nightly loop end to end on synthetic data, with a model that learns in seconds (ImageNet EfficientNet-Lite0).

A first model from a small subset (16 good + 8 per type) goes to production; the line runner judges a stream of
224 new parts and logs its failures; a scripted reviewer judges them from the truth through the store API the
review station uses (false alarms with erased maps, defects with painted maps); `retrain` fine-tunes, gates on a
separate golden set and promotes a candidate with a higher AUROC, fewer false alarms and misses, and boxes as good.
Then a candidate fine-tuned on shuffled labels is rejected and production stays where it was.
"""
import json
import shutil

import numpy as np
import pytest

from inspection.core.layout import scan_dataset
from inspection.datasets.synthetic import generate
from inspection.deploy.line.runner import LineRunner
from inspection.deploy.line.station import load_station
from inspection.deploy.registry import Registry, resolve_package
from inspection.deploy.store.sql import SQLiteStore
from inspection.model.config import load_config
from inspection.training.export import export_package
from inspection.training.retrain import retrain
from inspection.training.scripted_reviewer import scripted_review
from inspection.training.train import train

pytestmark = pytest.mark.slow  # trains and fine-tunes models

TYPES = ("scratch", "hole", "stain")


@pytest.fixture(scope="module")
def plant(tmp_path_factory):
    root = tmp_path_factory.mktemp("loop")
    generate(root / "base", n_good=16, n_per_type=8, size=128, seed=3, defect_types=TYPES)
    generate(root / "stream", n_good=128, n_per_type=32, size=128, seed=21, defect_types=TYPES)
    generate(root / "golden", n_good=96, n_per_type=24, size=128, seed=11, defect_types=TYPES)
    cfg = load_config(None, [f"data.root={root / 'base'}", "data.image_size=[128, 128]",
                             "model.backbone=efficientnet_lite0", "model.pretrained=true", "train.epochs=6",
                             "train.batch_size=8", "train.warmup_epochs=0", "eval.overlays=0",
                             # a line's operating point: at most 10 % false rejects on val (max-F1 on 8 val parts
                             # can make a weak v1 flag every part, whose zero miss rate no candidate can beat)
                             "eval.threshold_mode=false_reject", "eval.target_false_reject=0.1"])
    manifest = scan_dataset(root / "base", cfg.data)
    best = train(cfg, manifest, root / "v1-run", progress=False)
    reg = Registry(root / "models")
    reg.add(export_package(best, root / "v1", manifest, version="v1", progress=False), checkpoint=best)
    reg.promote("v1")
    station = load_station(None, [f"package={reg.root / 'current'}", f"source.path={root / 'stream'}",
                                  "source.kind=simulated", f"log.folder={root / 'log'}", "jsonl=", "reload_s=0",
                                  "log.fsync=false", "queue.policy=block"])
    line = LineRunner(station).run()
    return {"root": root, "registry": reg, "line": line, "reviewed": scripted_review(root / "log", root / "stream")}


def test_reviews_of_a_line_run_make_a_better_model_that_is_promoted(plant):
    root, reg = plant["root"], plant["registry"]
    assert plant["line"]["frames_total"] == 224 and plant["reviewed"] == plant["line"]["log_records_total"] > 50
    result = retrain(reg.root, root / "log", root / "golden", root / "retrain", root / "base", min_reviews=10,
                     overrides=["train.epochs=4"], progress=False)
    decision = json.loads(next((root / "retrain").glob("*/gate/decision.json")).read_text())
    cand, prod = decision["candidate"]["metrics"], decision["production"]["metrics"]
    print("golden, production v1 → candidate:",
          {k: (round(prod[k], 3), round(cand[k], 3)) for k in ("auroc", "false_reject", "miss", "box_f1@0.3")})
    assert result["status"] == "promoted", result["reasons"]
    assert cand["auroc"] > prod["auroc"] + 0.1 and cand["false_reject"] < prod["false_reject"] - 0.1
    assert cand["miss"] < prod["miss"] and cand["box_f1@0.3"] >= prod["box_f1@0.3"] - 0.02  # boxes held (gate)
    assert reg.current() == result["version"] and reg.list()[-1]["parent"] == "v1"
    # the runners' hot reload follows the pointer: it now names the candidate's package
    meta = json.loads((resolve_package(reg.root / "current") / "metadata.json").read_text())
    assert meta["model_version"] == result["candidate"]


def test_a_candidate_trained_on_shuffled_labels_is_rejected(plant, tmp_path):
    root, reg = plant["root"], plant["registry"]
    before = reg.current()
    log = tmp_path / "log"  # a careless reviewer: every verdict reversed, in a copy of the day's log
    shutil.copytree(root / "log", log)
    store = SQLiteStore(log / "failures.db", log, fsync=False)
    rng = np.random.default_rng(0)
    for status, flipped in (("confirmed", "false_alarm"), ("false_alarm", "defect")):
        for r in store.records(limit=10**6, review_status=status):
            store.add_review(r.id, "careless", flipped, None if flipped == "false_alarm" else str(rng.choice(TYPES)))
    store.close()
    shuffled = tmp_path / "base"  # and the replayed data with its labels dealt at random
    images = sorted(p for p in (root / "base").rglob("*.png") if p.relative_to(root / "base").parts[0] != "masks")
    labels = [p.relative_to(root / "base").parent for p in images]
    for path, k in zip(images, rng.permutation(len(labels))):
        label = labels[k]
        (shuffled / label).mkdir(parents=True, exist_ok=True)
        (shuffled / label / path.name).symlink_to(path)
    result = retrain(reg.root, log, root / "golden", tmp_path / "retrain", shuffled, min_reviews=10,
                     overrides=["train.epochs=2"], progress=False)
    assert result["status"] == "rejected" and reg.current() == before
    assert sum("WORSE" in r for r in result["reasons"]) >= 2, result["reasons"]
    assert "REJECT" in next((tmp_path / "retrain").glob("*/gate/report.md")).read_text()
