"""What `data.retry_below` keeps: per set and seed, the best validation AUROC of the run at the default input and
of the second run at `data.retry_max_pixels`, which one training keeps, and the kept second runs' test figures.

    python benchmarks/input_retry.py --first dagm8='runs/loc/base_dagm8/ours-s{seed}-*' \
        --second dagm8='runs/loc/px64k_dagm8/ours-s{seed}-*' \
        --second-results dagm8=benchmarks/results/localization_dagm8_larger_input.json --seeds 0 1 2

The runs are benchmarks/localization.py's: the first with the default configuration, the second with
`--set data.max_pixels=<retry_max_pixels>` (the size training retries at). Training keeps the second only where
the first's best validation AUROC is under retry_below and the second's is higher (inspection/training/train.py);
the rule reads validation only, so it is measured here on runs already trained. Prints a table and writes
benchmarks/results/input_retry.json.
"""
from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from inspection.model.config import load_config  # noqa: E402

TEST = {"image AUROC": lambda m: m["image"]["auroc"], "box F1@0.3": lambda m: m["box@0.3"]["f1"],
        "box F1@0.1": lambda m: m["box@0.1"]["f1"], "box F1@0.5": lambda m: m["box@0.5"]["f1"],
        "pixel AUROC": lambda m: m["pixel_auroc"]}


def best_val(pattern: str, seed: int) -> tuple[float, str] | None:
    found = sorted(glob.glob(pattern.format(seed=seed)))
    if not found:
        return None
    rows = json.loads((Path(found[0]) / "history.json").read_text())
    return max(float(r["val_auroc"]) for r in rows), found[0]


def pairs(items: list[str]) -> dict[str, str]:
    return dict(item.split("=", 1) for item in items)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--first", action="append", default=[], metavar="SET=GLOB", help="run folders, {seed} filled in")
    ap.add_argument("--second", action="append", default=[], metavar="SET=GLOB")
    ap.add_argument("--second-results", action="append", default=[], metavar="SET=JSON",
                    help="benchmarks/localization.py's JSON of the second runs (their test figures)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--config", default="configs/default.yaml")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "input_retry.json")
    args = ap.parse_args()
    below = load_config(args.config).data.retry_below
    first, second, results = pairs(args.first), pairs(args.second), pairs(args.second_results)
    table = {}
    for name, pattern in first.items():
        runs = {r["seed"]: r for r in json.loads(Path(results[name]).read_text())["runs"]} if name in results else {}
        rows = []
        for seed in args.seeds:
            got = best_val(pattern, seed)
            if got is None:
                sys.exit(f"{name}: no run folder for seed {seed} matches {pattern}")
            row = {"seed": seed, "first_val_auroc": got[0], "first": got[1]}
            retry = got[0] < below
            other = best_val(second[name], seed) if retry and name in second else None
            if retry and other is None:
                sys.exit(f"{name}: seed {seed} is retried (validation AUROC {got[0]:.4f} < {below}) but no second run "
                         "is given (--second)")
            if other is not None:
                row.update(second_val_auroc=other[0], second=other[1])
            row["kept"] = "second" if other is not None and other[0] > got[0] else "first"
            if row["kept"] == "second" and seed in runs:
                row["test"] = {k: float(f(runs[seed]["metrics"])) for k, f in TEST.items()}
                row["second_train_s"] = runs[seed]["train_s"]
            rows.append(row)
            print(f"{name} seed {seed}: validation AUROC {got[0]:.4f}" +
                  (f", second {other[0]:.4f}" if other else " (no retry)") + f": keeps the {row['kept']}" +
                  ("".join(f", {k} {v:.3f}" for k, v in row.get("test", {}).items())), flush=True)
        table[name] = rows
        kept = [r["test"] for r in rows if "test" in r]
        if kept and len(kept) == len(rows):
            print(f"{name} kept second runs, mean (minimum): " + ", ".join(
                f"{k} {np.mean([t[k] for t in kept]):.3f} ({np.min([t[k] for t in kept]):.3f})" for k in TEST))
    args.out.write_text(json.dumps({"retry_below": below, "seeds": args.seeds, "sets": table}, indent=1))


if __name__ == "__main__":
    main()
