"""The one-command demo: generate data → train ours and both baselines → evaluate → report → export →
line run on the test split (simulated camera) → review log of the failures it logged.

    >>> run_demo(load_config("configs/demo.yaml"), "runs/demo")

The three models share data, split, schedule and evaluation; they differ only in what docs/method.md compares:
  ours        ABN with W_normal > 0 (the Toshiba normal-attention loss)
  plain ABN   the same with W_normal = 0
  Grad-CAM    a plain CNN on the same backbone, maps from Grad-CAM
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from inspection.core.layout import scan_dataset
from inspection.model.config import Config
from inspection.training.export import export_package
from inspection.training.loader import progress_bar
from inspection.training.predict import evaluate_checkpoint
from inspection.training.report import write_report
from inspection.training.train import plain_abn, train, with_input_size

DEMO_DATA = {"n_good": 200, "n_per_type": 30, "size": 192, "seed": 0}


def run_demo(cfg: Config, out_dir: str | Path, generate_kwargs: dict | None = None, progress: bool = True,
             baselines: bool = True) -> dict:
    out = Path(out_dir)
    t0 = time.time()
    timings = {}
    root = Path(cfg.data.root)
    if not (root / "good").is_dir():
        from inspection.datasets.synthetic import generate

        print(f"generating synthetic dataset in {root}", file=sys.stderr)
        generate(root, progress=progress, **(generate_kwargs or DEMO_DATA))
    timings["generate"] = time.time() - t0
    manifest = scan_dataset(root, cfg.data, progress=progress_bar("scan") if progress else None)
    print(f"dataset {root}: {json.dumps(manifest.counts())}, {len(manifest.skipped)} skipped", file=sys.stderr)
    cfg = with_input_size(cfg, manifest)

    runs = [("ours", "ABN + L_normal (ours)", "abn", cfg)]
    if baselines:
        runs += [("plain_abn", "plain ABN (W_normal=0)", "abn", plain_abn(cfg)),
                 ("gradcam", "CNN + Grad-CAM", "cnn", cfg)]
    results, curves = [], {}
    for key, name, kind, run_cfg in runs:
        t = time.time()
        best = train(run_cfg, manifest, out / key, kind=kind, progress=progress)
        timings[f"train_{key}"] = time.time() - t
        t = time.time()
        results.append(evaluate_checkpoint(best, manifest, name, cfg_override=cfg, search=key != "ours"))
        timings[f"eval_{key}"] = time.time() - t
        curves[key] = out / key / "training_curves.png"
    t = time.time()
    package = export_package(out / "ours" / "best.pt", out / "ours" / "package", manifest, force=True,
                             progress=progress)
    timings["export"] = time.time() - t
    t = time.time()
    line = run_line(package, manifest, out / "line", progress)
    timings["line"] = time.time() - t
    timings["total"] = time.time() - t0
    extra = (f"Dataset `{root}` ({len(manifest.items)} images, manifest {manifest.content_hash[:12]}), "
             f"backbone `{cfg.model.backbone}` at {cfg.data.image_size[0]}x{cfg.data.image_size[1]}, "
             f"attention stride {cfg.model.attention_stride}, W_normal={cfg.train.w_normal}, "
             f"{cfg.train.epochs} epochs. Wall time {timings['total']:.0f} s.\n")
    report = write_report(results, out / "report", cfg.eval.overlays, extra, curves)
    (out / "report" / "timings.json").write_text(json.dumps(timings, indent=1))
    print(f"report: {report}\nmodel package: {package}\nline run: {json.dumps(line['summary'])}\n"
          f"review log: {line['review_log']}\n"
          f"review in the browser: inspection users add NAME --role lead --log {out / 'line' / 'failures'}; "
          f"inspection review --log {out / 'line' / 'failures'} --package {package}", file=sys.stderr)
    return {"report": str(report), "timings": timings, "results": results, "package": str(package), "line": line}


def run_line(package: Path, manifest, out: Path, progress: bool = True) -> dict:
    """Replay the test split through the line runner (simulated camera); write the review log."""
    from inspection.deploy.line.runner import LineRunner
    from inspection.deploy.line.station import load_station
    from inspection.deploy.store.summary import write_review_log

    frames = out / "frames"
    shutil.rmtree(out, ignore_errors=True)
    for it in manifest.split("test"):
        dst = frames / it.path
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(manifest.root) / it.path, dst)
    cfg = load_station(None, [f"package={package}", f"source.path={frames}", "source.kind=simulated",
                              "queue.policy=block", f"jsonl={out / 'verdicts.jsonl'}", f"log.folder={out / 'failures'}",
                              "reload_s=0", "station=demo-line"])
    runner = LineRunner(cfg)
    if progress:
        print(f"line run: {len(manifest.split('test'))} test parts through {package}", file=sys.stderr)
    summary = runner.run()
    review_log = write_review_log(runner.store, out)
    return {"summary": summary, "review_log": str(review_log), "verdicts": str(out / "verdicts.jsonl")}
