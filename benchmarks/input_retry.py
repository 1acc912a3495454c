"""What `data.retry_below` keeps: per set and seed, the best validation AUROC of the run at the default input and
of each further run at the caps of `data.retry_max_pixels`, which one training keeps, and the kept runs' test figures.

    python benchmarks/input_retry.py --first dagm8='runs/loc/base_dagm8/ours-s{seed}-*' \
        --retry dagm8='runs/loc/px64k_dagm8/ours-s{seed}-*' \
        --retry-results dagm8=benchmarks/results/localization_dagm8_larger_input.json \
        --retry dagm8='runs/loc/px147k_dagm8/ours-s{seed}-*' \
        --retry-results dagm8=benchmarks/results/localization_dagm8_largest_input.json --seeds 0 1 2

The runs are benchmarks/localization.py's: the first with the default configuration, each further one with
`--set data.max_pixels=<cap>` (a size training retries at), given in the order of the caps. Training goes on to
the next cap only while the last run's best validation AUROC is under retry_below and above the one before it,
and keeps the best by validation (inspection/training/train.py); the rule reads validation only, so it is
measured here on runs already trained. Prints a table and writes benchmarks/results/input_retry.json.
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
from inspection.training.train import retry_again  # noqa: E402

TEST = {"image AUROC": lambda m: m["image"]["auroc"], "box F1@0.3": lambda m: m["box@0.3"]["f1"],
        "box F1@0.1": lambda m: m["box@0.1"]["f1"], "box F1@0.5": lambda m: m["box@0.5"]["f1"],
        "pixel AUROC": lambda m: m["pixel_auroc"]}


def best_val(pattern: str, seed: int) -> tuple[float, str] | None:
    found = sorted(glob.glob(pattern.format(seed=seed)))
    if not found:
        return None
    rows = json.loads((Path(found[0]) / "history.json").read_text())
    return max(float(r["val_auroc"]) for r in rows), found[0]


def pairs(items: list[str]) -> dict[str, list[str]]:
    """SET=VALUE items, the values of each set in the order given."""
    out: dict[str, list[str]] = {}
    for item in items:
        name, value = item.split("=", 1)
        out.setdefault(name, []).append(value)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--first", action="append", default=[], metavar="SET=GLOB", help="run folders, {seed} filled in")
    ap.add_argument("--retry", action="append", default=[], metavar="SET=GLOB",
                    help="the runs at each further cap, in order (repeat)")
    ap.add_argument("--retry-results", action="append", default=[], metavar="SET=JSON",
                    help="benchmarks/localization.py's JSON of those runs (their test figures), in the same order")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--config", default="configs/default.yaml")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "input_retry.json")
    args = ap.parse_args()
    below = load_config(args.config).data.retry_below
    first, retries, results = pairs(args.first), pairs(args.retry), pairs(args.retry_results)
    table = {}
    for name, (pattern,) in first.items():
        runs = [{r["seed"]: r for r in json.loads(Path(f).read_text())["runs"]} for f in results.get(name, [])]
        rows = []
        for seed in args.seeds:
            got = best_val(pattern, seed)
            if got is None:
                sys.exit(f"{name}: no run folder for seed {seed} matches {pattern}")
            tried, missing = [{"val_auroc": got[0], "run": got[1]}], None
            for other_pattern in retries.get(name, []):
                if not retry_again([t["val_auroc"] for t in tried], below):
                    break
                last = tried[-1]["val_auroc"]
                other = best_val(other_pattern, seed)
                if other is None:  # reported as not measured, not as a decision
                    print(f"{name}: seed {seed} trains again (validation AUROC {last:.4f} < {below}) but no run "
                          f"matches {other_pattern}: its decision is not measured", file=sys.stderr)
                    missing = other_pattern.format(seed=seed)
                    break
                tried.append({"val_auroc": other[0], "run": other[1]})
            kept = max(range(len(tried)), key=lambda i: tried[i]["val_auroc"])  # the first on ties
            row = {"seed": seed, "tried": tried, "kept": kept}
            if missing:
                row["not_measured"] = missing
            if kept and not missing and kept <= len(runs) and seed in runs[kept - 1]:
                row["test"] = {k: float(f(runs[kept - 1][seed]["metrics"])) for k, f in TEST.items()}
                row["kept_train_s"] = runs[kept - 1][seed]["train_s"]
            rows.append(row)
            print(f"{name} seed {seed}: validation AUROC " + " -> ".join(f"{t['val_auroc']:.4f}" for t in tried) +
                  (" (no retry)" if len(tried) == 1 else "") +
                  (": the next run is not measured" if missing else f": keeps run {kept}") +
                  "".join(f", {k} {v:.3f}" for k, v in row.get("test", {}).items()), flush=True)
        table[name] = rows
        kept_tests = [r["test"] for r in rows if "test" in r]
        if kept_tests and len(kept_tests) == len([r for r in rows if not r.get("not_measured")]):
            print(f"{name} kept runs, mean (minimum): " + ", ".join(
                f"{k} {np.mean([t[k] for t in kept_tests]):.3f} ({np.min([t[k] for t in kept_tests]):.3f})"
                for k in TEST))
    args.out.write_text(json.dumps({"retry_below": below, "seeds": args.seeds, "sets": table}, indent=1))


if __name__ == "__main__":
    main()
