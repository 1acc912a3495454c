"""`inspection` commands on the line side (torch-free): predict, run, failures, review, users, models."""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path


def cmd_predict(args) -> int:
    from inspection.core.imageio import IMAGE_SUFFIXES
    from inspection.deploy.runtime import FrameError, Runtime, read_frame

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

    from inspection.deploy.line.runner import LineRunner
    from inspection.deploy.line.station import load_station

    overrides = list(args.set or [])
    if args.package:
        overrides.append(f"package={args.package}")
    if args.product:
        overrides.append(f"product={args.product}")
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
    from inspection.deploy.store.factory import open_store
    from inspection.deploy.store.summary import write_review_log

    folder = Path(args.log)
    store = open_store(args.db, folder, create=False)
    if args.export_reviewed:
        from inspection.deploy.store.to_dataset import export_reviewed
        print(json.dumps({"dataset": args.export_reviewed, **export_reviewed(store, args.export_reviewed)}))
        return 0
    path = write_review_log(store, args.out or folder, args.limit)
    print(path.read_text())
    return 0


def cmd_review(args) -> int:
    import uvicorn

    from inspection.deploy.review.app import ReviewConfig, create_app

    packages = [Path(p) for p in args.package]
    if args.station:  # the station's products' packages (or its one package)
        from inspection.deploy.line.station import load_station

        station = load_station(args.station)
        packages += [Path(p.package or station.package) for p in station.products] or [Path(station.package)]
    cfg = ReviewConfig(Path(args.log), packages[0] if packages else None,
                       Path(args.accounts) if args.accounts else None, args.secure_cookies, db=args.db,
                       packages=packages[1:])
    app = create_app(cfg)
    if not app.state.review.accounts.users():
        print(f"error: no review accounts yet; create a QA lead first:\n  inspection users add NAME --role lead "
              f"--log {args.log}", file=sys.stderr)
        return 2
    print(f"review station on http://{args.host}:{args.port} (failure log {args.log}, re-scoring "
          f"{'with the package that judged each part, from ' + ', '.join(map(str, packages)) if packages else 'off'})",
          file=sys.stderr)
    # X-Forwarded-For is trusted only from the proxies named (uvicorn's default trusts 127.0.0.1, so any client
    # on the same host could pose as any address and pass the per-address login hold)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", proxy_headers=bool(args.trusted_proxy),
                forwarded_allow_ips=",".join(args.trusted_proxy) or None)
    return 0


def cmd_users(args) -> int:
    import getpass

    from inspection.deploy.review.accounts import Accounts, default_accounts

    folder = Path(args.log)
    if not folder.is_dir():
        print(f"error: {folder}: no such failure-log folder", file=sys.stderr)
        return 2
    accounts = Accounts(args.accounts or default_accounts(folder))
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
    print(f"{args.action}: {args.name} done")
    return 0


def cmd_models(args) -> int:
    from inspection.deploy.registry import Registry

    if args.action in ("add", "promote") and not args.target:
        print(f"error: models {args.action} needs a {'package folder' if args.action == 'add' else 'version'}",
              file=sys.stderr)
        return 2
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


def add_commands(sub) -> None:
    """The line side's subcommands."""
    _add_station_commands(sub)
    _add_review_commands(sub)


def _add_station_commands(sub) -> None:
    p = sub.add_parser("predict", help="judge image files with a model package (torch-free runtime)")
    p.add_argument("--package", required=True, help="model package folder")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--backend", choices=["auto", "tensorrt", "ort-tensorrt", "cuda", "openvino", "cpu"], default="auto")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16", "int8"], default="fp32")
    p.add_argument("--batch", type=int, default=16)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("run", help="run a station: frames in, verdicts out, failures logged (torch-free)")
    p.add_argument("--station", help="station YAML (default: every default of configs/station.yaml)")
    p.add_argument("--package", help="model package folder or pointer file (same as --set package=...)")
    p.add_argument("--product", help="the product to prepare at start, an id of the station's products (same as "
                                     "--set product=...); the PLC or MQTT may switch later")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a station value")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("failures", help="summarize a failure log: counts, newest records, overlay sheet")
    p.add_argument("--log", default="runs/line/failures", help="the runner's log.folder")
    p.add_argument("--out", help="where review_log.md/.png go (default: the log folder)")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--export-reviewed", metavar="DIR", help="write reviewed parts as a training dataset folder")
    add_db_arg(p)
    p.set_defaults(func=cmd_failures)

    p = sub.add_parser("models", help="model registry: list, add a package, promote, roll back")
    p.add_argument("action", choices=["list", "add", "promote", "rollback"])
    p.add_argument("target", nargs="?", help="add: a package folder; promote: a version")
    p.add_argument("--registry", default="models", help="registry folder (default: models)")
    p.add_argument("--parent", help="add: the version this one was trained from (default: the current one)")
    p.add_argument("--note", help="a reason, kept in the history")
    p.add_argument("--checkpoint", help="add: the package's best.pt, kept for later fine-tuning (retrain)")
    p.add_argument("--promote", action="store_true", help="add: promote it at once (a station's first model)")
    p.set_defaults(func=cmd_models)


def _add_review_commands(sub) -> None:
    p = sub.add_parser("review", help="serve the review station (browser) on a failure log (torch-free)")
    p.add_argument("--log", default="runs/line/failures", help="the runner's log.folder")
    p.add_argument("--package", action="append", default=[],
                   help="model package, registry pointer or registry folder for re-scoring; repeatable (one per "
                        "product): each part is re-scored with the package of its model version (default: off)")
    p.add_argument("--station", help="station YAML: re-score with its products' packages (added to --package)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (0.0.0.0: the whole network)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--secure-cookies", action="store_true", help="behind HTTPS: cookies only over TLS")
    p.add_argument("--trusted-proxy", action="append", default=[], metavar="ADDRESS",
                   help="a TLS proxy in front whose X-Forwarded-For/-Proto headers are believed (repeatable; "
                        "default: none, the client address is the connection's)")
    p.add_argument("--accounts", help="accounts/audit SQLite file (default: <log>.accounts.db beside the --log folder)")
    add_db_arg(p)
    p.set_defaults(func=cmd_review)

    p = sub.add_parser("users", help="review-station accounts: list, add, passwd, disable, enable")
    p.add_argument("action", choices=["list", "add", "passwd", "disable", "enable"])
    p.add_argument("name", nargs="?")
    p.add_argument("--role", default="operator", choices=["operator", "lead"])
    p.add_argument("--log", default="runs/line/failures",
                   help="the failure-log folder (accounts: <log>.accounts.db beside it)")
    p.add_argument("--accounts", help="accounts SQLite file (default: <log>.accounts.db beside the --log folder)")
    p.add_argument("--if-missing", action="store_true", help="add: leave an existing user as it is (scripts)")
    p.set_defaults(func=cmd_users)


def add_db_arg(p) -> None:
    p.add_argument("--db", default=os.environ.get("INSPECTION_DB", ""),
                   help="failure-log database: a SQLite file or postgresql://user@host/db (default: "
                        "$INSPECTION_DB, else failures.db in the --log folder); password from PGPASSWORD")
