"""The one-command demo: generate data → train ours and both baselines → evaluate → report → export.

    >>> run_demo(load_config("configs/demo.yaml"), "runs/demo")

The three models share data, split, schedule and evaluation; they differ only in what METHOD.md compares:
  ours        ABN with W_normal > 0 (the Toshiba normal-attention loss)
  plain ABN   the same with W_normal = 0
  Grad-CAM    a plain CNN on the same backbone, maps from Grad-CAM
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from deploy.export import export_package
from inspection.config import Config
from inspection.data import scan_dataset
from training.evaluate import evaluate_checkpoint
from training.report import write_report
from training.train import train

DEMO_DATA = {"n_good": 200, "n_per_type": 30, "size": 192, "seed": 0}


def run_demo(cfg: Config, out_dir: str | Path, generate_kwargs: dict | None = None, progress: bool = True,
             baselines: bool = True) -> dict:
    out = Path(out_dir)
    t0 = time.time()
    timings = {}
    root = Path(cfg.data.root)
    if not (root / "good").is_dir():
        from inspection_datasets.synthetic import generate

        print(f"generating synthetic dataset in {root}", file=sys.stderr)
        generate(root, progress=progress, **(generate_kwargs or DEMO_DATA))
    timings["generate"] = time.time() - t0
    manifest = scan_dataset(root, cfg.data, progress=progress)
    print(f"dataset {root}: {json.dumps(manifest.counts())}, {len(manifest.skipped)} skipped", file=sys.stderr)

    runs = [("ours", "ABN + L_normal (ours)", "abn", cfg)]
    if baselines:
        plain = cfg.model_copy(deep=True)
        plain.train.w_normal = 0.0
        runs += [("plain_abn", "plain ABN (W_normal=0)", "abn", plain), ("gradcam", "CNN + Grad-CAM", "cnn", cfg)]
    results, curves = [], {}
    for key, name, kind, run_cfg in runs:
        t = time.time()
        best = train(run_cfg, manifest, out / key, kind=kind, progress=progress)
        timings[f"train_{key}"] = time.time() - t
        t = time.time()
        results.append(evaluate_checkpoint(best, manifest, name, cfg_override=cfg))
        timings[f"eval_{key}"] = time.time() - t
        curves[key] = out / key / "training_curves.png"
    t = time.time()
    package = export_package(out / "ours" / "best.pt", out / "ours" / "package", manifest, force=True,
                             progress=progress)
    timings["export"] = time.time() - t
    timings["total"] = time.time() - t0
    extra = (f"Dataset `{root}` ({len(manifest.items)} images, manifest {manifest.content_hash[:12]}), "
             f"backbone `{cfg.model.backbone}` at {cfg.data.image_size[0]}x{cfg.data.image_size[1]}, "
             f"attention stride {cfg.model.attention_stride}, W_normal={cfg.train.w_normal}, "
             f"{cfg.train.epochs} epochs. Wall time {timings['total']:.0f} s.\n")
    report = write_report(results, out / "report", cfg.eval.overlays, extra, curves)
    (out / "report" / "timings.json").write_text(json.dumps(timings, indent=1))
    print(f"report: {report}\nmodel package: {package}", file=sys.stderr)
    return {"report": str(report), "timings": timings, "results": results, "package": str(package)}
