"""Gain per review round: line run → scripted review (true masks) → retrain → gate, three rounds, γ on and off.

    python benchmarks/review_rounds.py [--checkpoint runs/demo/ours/best.pt] [--rounds 3] [--epochs 2]

Starts from the demo model (production v0). A fresh synthetic "line stream" (new parts, another seed) is cut
into rounds; each round the line runner judges its parts with the production model, a scripted reviewer
judges every logged part from the truth (defect + type + corrected map from the mask, or false alarm + an
erased map), and `retrain` fine-tunes, gates on a separate golden set and promotes or not. Run twice: with
the corrected maps (γ = 1) and without (γ = 0). Prints and writes benchmarks/results/review_rounds.json.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from deploy.line import LineRunner  # noqa: E402
from deploy.registry import Registry  # noqa: E402
from deploy.station import load_station  # noqa: E402
from inspection_datasets.scripted_reviewer import scripted_review  # noqa: E402
from inspection_datasets.synthetic import generate  # noqa: E402
from training.gate import golden_items, score_package  # noqa: E402
from training.retrain import retrain  # noqa: E402


def chunks(stream: Path, rounds: int, out: Path) -> list[Path]:
    """The stream's parts dealt round-robin into `rounds` folders of links (same layout)."""
    parts = sorted(p for sub in ("good", "defect") for p in (stream / sub).rglob("*.*"))
    folders = [out / f"round{r + 1}" for r in range(rounds)]
    for i, p in enumerate(parts):
        dst = folders[i % rounds] / p.relative_to(stream)
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.symlink_to(p.resolve())
    return folders


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="runs/demo/ours/best.pt")
    ap.add_argument("--data", default="data/synthetic", help="the production model's training data (replayed)")
    ap.add_argument("--work", default="runs/rounds")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--gammas", type=float, nargs="+", default=[1.0, 0.0])
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="fine-tuning overrides, e.g. --set train.lr=0.0005 --set train.freeze_features=true")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "review_rounds.json"))
    args = ap.parse_args()
    ckpt = Path(args.checkpoint)
    package = ckpt.parent / "package"
    if not package.exists():
        sys.exit(f"{package}: not found; run `make demo` first")
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    golden, stream = work / "golden", work / "stream"
    generate(golden, n_good=60, n_per_type=8, size=192, seed=7, progress=False)
    generate(stream, n_good=120, n_per_type=12, size=192, seed=21, progress=False)
    rounds = chunks(stream, args.rounds, work / "rounds")
    items = golden_items(golden)
    v0 = score_package(package, items)["metrics"]
    results = {"golden_images": len(items), "v0": v0, "overrides": args.set, "epochs": args.epochs, "runs": {}}
    for gamma in args.gammas:
        key = f"gamma={gamma:g}"
        reg = Registry(work / key / "models")
        reg.add(package, checkpoint=ckpt)
        reg.promote(reg.list()[0]["version"])
        rows = []
        for r, folder in enumerate(rounds, 1):
            t = time.time()
            log = work / key / "log"
            cfg = load_station(None, [f"package={reg.root / 'current'}", f"source.path={folder}",
                                      "source.kind=simulated", f"log.folder={log}", "jsonl=", "reload_s=0",
                                      f"station=round{r}", "queue.policy=block"])
            line = LineRunner(cfg).run()
            reviewed = scripted_review(log, str(stream))
            res = retrain(reg.root, log, golden, work / key / "retrain", args.data, min_reviews=1,
                          overrides=[f"train.epochs={args.epochs}", f"train.gamma_map={gamma}",
                                     "train.warmup_epochs=0", *args.set], progress=False)
            prod = score_package(reg.path(reg.current()), items)["metrics"]
            row = {"round": r, "parts": line["frames_total"], "logged": line["log_records_total"],
                   "reviewed": reviewed, "decision": res["status"], "production": reg.current(),
                   "golden_auroc": round(prod["auroc"], 4), "golden_false_reject": round(prod["false_reject"], 4),
                   "golden_miss": round(prod["miss"], 4), "golden_box_f1": round(prod.get("box_f1@0.3", 0), 4),
                   "candidate": res.get("candidate_metrics"), "seconds": round(time.time() - t, 1),
                   "reasons": res.get("reasons")}
            rows.append(row)
            print(key, {k: v for k, v in row.items() if k != "reasons"}, flush=True)
        results["runs"][key] = rows
    print("v0 on golden:", json.dumps({k: round(v0[k], 4) for k in ("auroc", "false_reject", "miss", "box_f1@0.3")}))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1, default=float))


if __name__ == "__main__":
    main()
