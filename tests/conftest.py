"""Shared fixtures: a tiny synthetic dataset with mixed formats, sizes and channels, and a tiny config."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from inspection.config import load_config
from inspection_datasets.synthetic import generate


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """36 good + 3 types x 8 defects; gray and color, PNG and JPEG, sizes 72-120 px, with masks."""
    root = tmp_path_factory.mktemp("data") / "tiny"
    generate(root, n_good=36, n_per_type=8, size=96, seed=3, defect_types=("scratch", "hole", "stain"),
             size_jitter=0.25, gray_fraction=0.3, jpeg_fraction=0.3)
    return root


@pytest.fixture
def dataset_copy(tiny_dataset, tmp_path):
    dst = tmp_path / "data"
    shutil.copytree(tiny_dataset, dst)
    return dst


def tiny_config(root, **overrides):
    sets = [f"data.root={root}", "data.image_size=[64, 64]", "model.backbone=tiny", "model.pretrained=false",
            "train.epochs=2", "train.batch_size=8", "train.lr=0.003", "eval.overlays=4"]
    sets += [f"{k}={v}" for k, v in overrides.items()]
    return load_config(None, sets)


@pytest.fixture(scope="session")
def exported(tiny_dataset, tmp_path_factory):
    """A tiny ABN trained for 2 epochs, a plain CNN, and the ABN's exported package."""
    from deploy.export import export_package
    from inspection.data import scan_dataset
    from training.train import train

    runs = tmp_path_factory.mktemp("export")
    cfg = tiny_config(tiny_dataset)
    manifest = scan_dataset(tiny_dataset, cfg.data)
    best = train(cfg, manifest, runs / "abn", kind="abn", progress=False)
    cnn = train(tiny_config(tiny_dataset, **{"train.epochs": 1}), manifest, runs / "cnn", kind="cnn", progress=False)
    package = export_package(best, runs / "package", progress=False)
    return {"best": best, "cnn": cnn, "package": package, "manifest": manifest, "cfg": cfg, "root": runs}


def always_fail(package, dst: Path) -> Path:
    """A copy of a package whose threshold fails every part (the runner then logs every frame)."""
    shutil.copytree(package, dst)
    meta = json.loads((dst / "metadata.json").read_text())
    meta["variants"]["fp32"]["threshold"] = 0.0
    meta["decision"]["review_band"] = 0.0
    (dst / "metadata.json").write_text(json.dumps(meta))
    return dst
