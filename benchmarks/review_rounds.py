"""Gain per review round: line run → scripted review (true masks) → retrain → gate, with γ on and off, over seeds.

    python benchmarks/review_rounds.py --config configs/demo.yaml --seeds 0 1 2
    python benchmarks/review_rounds.py --config configs/kolektorsdd.yaml --seeds 0 --tag kolektorsdd
    python benchmarks/review_rounds.py --config configs/default.yaml --data data/bsdata \
        --split-file data/bsdata/split.json --seeds 0 --tag bsdata_default

Works on any dataset in the folder layout, with its split (the config's split file or the seeded split).
Per seed: production v0 is trained with the config's recipe on half of the train split (the "history",
stratified by class, a seeded pick) and promoted; the other half of the train split is the line's stream of
new parts, dealt into rounds; the test split is the golden set, which no training sees. Each round the line
runner judges the round's parts with production, a scripted reviewer judges every logged part from the truth
(defect type and corrected map from the mask, or false alarm and an erased map), and `retrain` fine-tunes
production (replaying the history: its train half and the val split), gates on the golden set and promotes or
not. Every γ in --gammas starts from the same v0. Prints a table and writes
benchmarks/results/review_rounds_<tag>.json (the runs; a seed already there is not run again).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from inspection.core.layout import GOOD, scan_dataset  # noqa: E402
from inspection.deploy.line.runner import LineRunner  # noqa: E402
from inspection.deploy.line.station import load_station  # noqa: E402
from inspection.deploy.registry import Registry  # noqa: E402
from inspection.model.config import load_config  # noqa: E402
from inspection.training.export import export_package  # noqa: E402
from inspection.training.gate import golden_items, score_package  # noqa: E402
from inspection.training.retrain import retrain  # noqa: E402
from inspection.training.scripted_reviewer import scripted_review  # noqa: E402
from inspection.training.train import train  # noqa: E402

GOLDEN_KEYS = ("auroc", "false_reject", "miss", "box_f1@0.3")


def link_items(items, root: Path, out: Path) -> None:
    """A dataset folder of links to the items' images and masks."""
    for it in items:
        for rel in (it.path, it.mask):
            if rel:
                dst = out / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                if not dst.exists():
                    dst.symlink_to((root / rel).resolve())


def halves(items, seed: int) -> tuple[list, list]:
    """The items split in two, per class, by a seeded hash of the path: (history, stream)."""
    first, second = [], []
    for kind in sorted({it.defect_type for it in items}):
        group = sorted((it for it in items if it.defect_type == kind),
                       key=lambda it: hashlib.sha256(f"{seed}:{it.path}".encode()).hexdigest())
        first += group[::2]
        second += group[1::2]
    return first, second


def golden_summary(package: Path, items: list[dict]) -> dict:
    m = score_package(package, items)["metrics"]
    return {k: round(float(m.get(k, float("nan"))), 4) for k in GOLDEN_KEYS}


def run_seed(config: str, seed: int, rounds: int, epochs: int, gammas, overrides, work: Path,
             data: list[str] = ()) -> dict:
    cfg = load_config(config, [*data, f"train.seed={seed}", f"data.seed={seed}"])
    manifest = scan_dataset(cfg.data.root, cfg.data)
    root = Path(manifest.root)
    history, stream = halves(manifest.split("train"), seed)
    shutil.rmtree(work, ignore_errors=True)
    v0_data, replay, stream_dir, golden = work / "v0_data", work / "replay", work / "stream", work / "golden"
    link_items(history + manifest.split("val") + manifest.split("test"), root, v0_data)
    (v0_data / "split.json").write_text(json.dumps({"train": [it.path for it in history],
                                                    "val": [it.path for it in manifest.split("val")],
                                                    "test": [it.path for it in manifest.split("test")]}))
    link_items(history + manifest.split("val"), root, replay)
    link_items(manifest.split("test"), root, golden)
    stream_rounds = [stream[r::rounds] for r in range(rounds)]
    for r, part in enumerate(stream_rounds):
        link_items(part, root, stream_dir / f"round{r + 1}")
    link_items(stream, root, stream_dir / "all")  # the scripted reviewer's truth

    v0_cfg = load_config(config, [f"train.seed={seed}", f"data.root={v0_data}",
                                  f"data.split_file={v0_data / 'split.json'}"])
    v0_manifest = scan_dataset(v0_data, v0_cfg.data)
    t = time.time()
    best = train(v0_cfg, v0_manifest, work / "v0", progress=False)
    package = export_package(best, work / "v0" / "package", v0_manifest, version="v0", force=True, progress=False)
    items = golden_items(golden)
    result = {"seed": seed, "history": len(history), "stream": len(stream), "golden_images": len(items),
              "golden_defects": sum(it["type"] != GOOD for it in items), "v0_seconds": round(time.time() - t, 1),
              "v0": golden_summary(package, items), "runs": {}}
    print(f"seed {seed}: v0 on golden {result['v0']}", flush=True)
    for gamma in gammas:
        key = f"gamma={gamma:g}"
        reg = Registry(work / key / "models")
        reg.add(package, checkpoint=best)
        reg.promote("v0")
        rows = []
        for r in range(rounds):
            t = time.time()
            log = work / key / "log"
            station = load_station(None, [f"package={reg.root / 'current'}",
                                          f"source.path={stream_dir / f'round{r + 1}'}",
                                          "source.kind=simulated", f"log.folder={log}", "jsonl=", "reload_s=0",
                                          f"station=round{r + 1}", "queue.policy=block"])
            line = LineRunner(station).run()
            reviewed = scripted_review(log, stream_dir / "all")
            res = retrain(reg.root, log, golden, work / key / "retrain", replay, min_reviews=1,
                          overrides=[f"train.epochs={epochs}", f"train.gamma_map={gamma}", f"train.seed={seed}",
                                     *overrides], progress=False)
            row = {"round": r + 1, "parts": line["frames_total"], "logged": line["log_records_total"],
                   "reviewed": reviewed, "decision": res["status"], "production": reg.current(),
                   "candidate": res.get("candidate_metrics"), "reasons": res.get("reasons"),
                   "golden_after": golden_summary(reg.path(reg.current()), items), "seconds": round(time.time() - t, 1)}
            rows.append(row)
            print(f"seed {seed} {key} round {r + 1}: {row['decision']}, candidate {row['candidate']}", flush=True)
        result["runs"][key] = rows
    return result


def table(results: list[dict], gammas) -> str:
    """Per γ: golden box F1 and AUROC of production after the last round, and promotions, mean over seeds."""
    lines = ["| γ (L_map) | seeds | promotions (of rounds) | golden box F1@0.3: v0 → after | "
             "golden AUROC: v0 → after | candidates' box F1 (mean) |", "|---|---|---|---|---|---|"]
    for gamma in gammas:
        key = f"gamma={gamma:g}"
        rs = [r for r in results if key in r["runs"]]
        promoted = sum(row["decision"] == "promoted" for r in rs for row in r["runs"][key])
        n_rounds = sum(len(r["runs"][key]) for r in rs)
        v0 = [r["v0"] for r in rs]
        after = [r["runs"][key][-1]["golden_after"] for r in rs]
        cand = [row["candidate"]["box_f1@0.3"] for r in rs for row in r["runs"][key]
                if row["candidate"] and row["candidate"].get("box_f1@0.3") is not None]
        mean = lambda rows, k: np.nanmean([x[k] for x in rows])  # noqa: E731
        lines.append(f"| {gamma:g} | {len(rs)} | {promoted} of {n_rounds} | {mean(v0, 'box_f1@0.3'):.3f} → "
                     f"{mean(after, 'box_f1@0.3'):.3f} | {mean(v0, 'auroc'):.3f} → {mean(after, 'auroc'):.3f} | "
                     f"{np.nanmean(cand) if cand else float('nan'):.3f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs per retrain")
    ap.add_argument("--gammas", type=float, nargs="+", default=[1.0, 0.0])
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="fine-tuning overrides, e.g. --set train.lr=0.0005 --set train.freeze_features=true")
    ap.add_argument("--data", help="dataset folder (default: the config's data.root)")
    ap.add_argument("--split-file", help="the dataset's split file (default: the config's, else a seeded split)")
    ap.add_argument("--tag", help="results name (default: the config's file name)")
    ap.add_argument("--work", default="runs/rounds")
    args = ap.parse_args()
    tag = args.tag or Path(args.config).stem
    out = Path(__file__).parent / "results" / f"review_rounds_{tag}.json"
    results = json.loads(out.read_text())["results"] if out.exists() else []
    for seed in args.seeds:
        if any(r["seed"] == seed for r in results):
            continue
        data = ([f"data.root={args.data}"] if args.data else []) + \
            ([f"data.split_file={args.split_file}"] if args.split_file else [])
        results.append(run_seed(args.config, seed, args.rounds, args.epochs, args.gammas, args.set,
                                Path(args.work) / tag / f"s{seed}", data))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"config": args.config, "rounds": args.rounds, "epochs": args.epochs,
                                   "overrides": args.set, "results": results}, indent=1, default=float))
    print(table(results, args.gammas))


if __name__ == "__main__":
    main()
