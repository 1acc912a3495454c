"""`inspection` commands on the training side (PyTorch): generate, train, eval, export, gate, retrain, demo.
Each imports what it needs when it runs, so the line side's commands start without torch."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from inspection.cli.line_commands import add_db_arg

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "default.yaml"


def _config(args):
    from inspection.model.config import load_config

    path = args.config or (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None)
    overrides = list(args.set or [])
    if getattr(args, "data", None):
        overrides.append(f"data.root={args.data}")
    return load_config(path, overrides)


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config (default: configs/default.yaml)")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=5 (repeatable)")
    p.add_argument("--data", help="dataset folder (same as --set data.root=...)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _report_skipped(manifest) -> None:
    if manifest.skipped:
        print(f"skipped {len(manifest.skipped)} file(s):", file=sys.stderr)
        for path, reason in manifest.skipped[:20]:
            print(f"  {path}: {reason}", file=sys.stderr)


def cmd_generate(args) -> int:
    from inspection.datasets.synthetic import generate

    summary = generate(args.out, n_good=args.good, n_per_type=args.per_type, size=args.size, seed=args.seed,
                       size_jitter=args.size_jitter, gray_fraction=args.gray, jpeg_fraction=args.jpeg,
                       multi_fraction=args.multi, progress=not args.quiet)
    print(json.dumps(summary))
    return 0


def cmd_train(args) -> int:
    from inspection.core.layout import scan_dataset
    from inspection.training.loader import progress_bar
    from inspection.training.train import plain_abn, train

    cfg = _config(args)
    if args.kind == "abn0":
        cfg = plain_abn(cfg)
    manifest = scan_dataset(cfg.data.root, cfg.data, progress=None if args.quiet else progress_bar("scan"))
    _report_skipped(manifest)
    out = args.out or cfg.train.out_dir
    best = train(cfg, manifest, out, kind="cnn" if args.kind == "cnn" else "abn", resume=not args.restart,
                 progress=not args.quiet)
    print(json.dumps({"checkpoint": str(best)}))
    return 0


def cmd_eval(args) -> int:
    from inspection.core.layout import Manifest, scan_dataset
    from inspection.model.abn import CheckpointError, load_checkpoint
    from inspection.training.loader import progress_bar
    from inspection.training.predict import evaluate
    from inspection.training.report import markdown_table, write_report

    results = []
    manifest = None
    for path in args.checkpoint:
        model, cfg, ckpt = load_checkpoint(path)
        if args.config or args.set or args.data:
            cfg = _config(args).model_copy(update={"model": cfg.model})
        if manifest is None:
            if args.manifest:
                manifest = Manifest.load(args.manifest)
            else:
                manifest = scan_dataset(cfg.data.root, cfg.data, progress=None if args.quiet else progress_bar("scan"))
                _report_skipped(manifest)
        if list(ckpt["classes"]) != list(manifest.classes):
            raise CheckpointError(f"{path}: model classes {ckpt['classes']} differ from the dataset's "
                                  f"{manifest.classes}")
        results.append(evaluate(model, ckpt["kind"], manifest, cfg, Path(path).parent.name, not args.quiet,
                                args.best_rule))
    report = write_report(results, args.out, cfg.eval.overlays)
    print(markdown_table(results))
    print(json.dumps({"report": str(report)}))
    return 0


def cmd_export(args) -> int:
    from inspection.core.layout import Manifest
    from inspection.training.export import export_package

    manifest = Manifest.load(args.manifest) if args.manifest else None
    out = args.out or str(Path(args.checkpoint).parent / "package")
    package = export_package(args.checkpoint, out, manifest, int8=not args.no_int8,
                             int8_calibration=args.int8_calibration, version=args.version, force=args.force,
                             progress=not args.quiet)
    meta = json.loads((package / "metadata.json").read_text())
    summary = {"package": str(package), "model_version": meta["model_version"],
               "parity_max_abs_diff": max(meta["parity"]["max_abs_diff"].values())}
    for name, v in meta["variants"].items():
        m = v["metrics"]
        summary[name] = {"threshold": round(v["threshold"], 4), "auroc": round(m["image"]["auroc"], 4),
                         "box_f1@0.3": round(m["box@0.3"]["f1"], 4) if "box@0.3" in m else None}
    print(json.dumps(summary))
    return 0


def cmd_gate(args) -> int:
    from inspection.training.gate import gate

    d = gate(args.candidate, args.production, args.golden, args.out)
    print("\n".join(d["reasons"] + [f"note: {n}" for n in d["notes"]]), file=sys.stderr)
    print(json.dumps({"promote": d["promote"], "report": str(Path(args.out) / "report.md")}))
    return 0 if d["promote"] else 1


def cmd_retrain(args) -> int:
    from inspection.training.retrain import retrain

    result = retrain(args.registry, args.log, args.golden, args.out, args.data, args.min_reviews,
                     list(args.set or []), progress=not args.quiet, db=args.db, product=args.product)
    print(json.dumps(result))
    return 0


def cmd_demo(args) -> int:
    from inspection.training.demo import run_demo

    if args.config is None:
        args.config = str(DEFAULT_CONFIG.parent / "demo.yaml")
    cfg = _config(args)
    result = run_demo(cfg, args.out, progress=not args.quiet, baselines=not args.no_baselines)
    from inspection.training.report import markdown_table

    print(markdown_table(result["results"]))
    print(json.dumps({"report": result["report"], "package": result["package"],
                      "review_log": result["line"]["review_log"],
                      "seconds": round(result["timings"]["total"], 1)}))
    return 0


def add_commands(sub) -> None:
    """The training side's subcommands."""
    _add_data_commands(sub)
    _add_model_commands(sub)


def _add_data_commands(sub) -> None:
    p = sub.add_parser("generate", help="write a synthetic dataset in the training folder layout")
    p.add_argument("--out", default="data/synthetic", help="output folder")
    p.add_argument("--good", type=int, default=200, help="number of good parts")
    p.add_argument("--per-type", type=int, default=30, help="defective parts per defect type")
    p.add_argument("--size", type=int, default=256, help="image side in pixels")
    p.add_argument("--size-jitter", type=float, default=0.0, help="vary image sizes by up to this fraction")
    p.add_argument("--gray", type=float, default=0.0, help="fraction of grayscale images")
    p.add_argument("--jpeg", type=float, default=0.0, help="fraction of JPEG images")
    p.add_argument("--multi", type=float, default=0.0,
                   help="fraction of defective parts with 2-4 defects of their type (default 0: one each)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("train", help="train a model on a dataset folder")
    _add_config_args(p)
    p.add_argument("--out", help="run folder (default: train.out_dir)")
    p.add_argument("--kind", choices=["abn", "abn0", "cnn"], default="abn",
                   help="abn: ours; abn0: plain ABN (W_normal = W_defect = 0); cnn: plain CNN for Grad-CAM")
    p.add_argument("--restart", action="store_true", help="ignore last.pt in the run folder")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate checkpoints side by side and write a report")
    _add_config_args(p)
    p.add_argument("--checkpoint", action="append", required=True, help="best.pt of a run (repeatable)")
    p.add_argument("--manifest", help="use this manifest.json instead of scanning the dataset")
    p.add_argument("--out", default="runs/report", help="report folder")
    p.add_argument("--best-rule", action="store_true",
                   help="box each model with the rule that boxes best on val (threshold over the whole map scale, "
                        "refine and area share on or off): how a baseline's map compares at its best")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("export", help="export a checkpoint to a checked model package (ONNX FP32 + INT8)")
    p.add_argument("--checkpoint", required=True, help="best.pt of an ABN run")
    p.add_argument("--out", help="package folder (default: <run>/package)")
    p.add_argument("--manifest", help="dataset manifest for parity and calibration (default: <run>/manifest.json)")
    p.add_argument("--no-int8", action="store_true", help="skip the INT8 model")
    p.add_argument("--int8-calibration", choices=["all", "good"], default="all",
                   help="training images that calibrate INT8 activations (default: all classes)")
    p.add_argument("--version", help="model version name (default: date-time and checkpoint hash)")
    p.add_argument("--force", action="store_true", help="replace an existing package folder")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_export)


def _add_model_commands(sub) -> None:
    p = sub.add_parser("gate", help="compare a candidate package with production on a golden set (exit 1: reject)")
    p.add_argument("--candidate", required=True, help="candidate model package")
    p.add_argument("--production", help="production package or registry pointer (e.g. models/current)")
    p.add_argument("--golden", required=True, help="golden dataset folder (good/, defect/<type>/, masks/)")
    p.add_argument("--out", default="runs/gate", help="where decision.json, report.md and roc.png go")
    p.set_defaults(func=cmd_gate)

    p = sub.add_parser("retrain", help="fine-tune production on reviewed parts, gate, promote (cron/systemd)")
    p.add_argument("--registry", default="models")
    p.add_argument("--log", default="runs/line/failures", help="the failure log holding the reviews")
    p.add_argument("--golden", required=True, help="golden dataset folder, never trained on")
    p.add_argument("--data", help="earlier training data replayed with the reviews (dataset folder)")
    p.add_argument("--out", default="runs/retrain")
    p.add_argument("--min-reviews", type=int, default=20, help="fewer new reviews: nothing to do")
    p.add_argument("--product", help="only the reviews of this product's parts (a station with several products: "
                                     "its registry, golden set and data go with it)")
    add_db_arg(p)
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                   help="training overrides, e.g. --set train.epochs=3 --set train.freeze_features=true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_retrain)

    p = sub.add_parser("demo", help="generate data, train ours and both baselines, write the report")
    _add_config_args(p)
    p.add_argument("--out", default="runs/demo", help="output folder")
    p.add_argument("--no-baselines", action="store_true", help="train only our model")
    p.set_defaults(func=cmd_demo)
