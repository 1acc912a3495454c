"""What pixel masks (or operator corrections) are worth: localization against the number of masked defect images.

    python benchmarks/mixed_supervision.py --config configs/kolektorsdd.yaml --counts 0 5 10 all --seeds 0 1 2

For each count n, our model is trained with `train.mask_supervision=n` (the masks of n defect training images,
a seeded pick, serve as L_map targets, as corrected maps do; all others keep image labels only) and evaluated
like benchmarks/localization.py. Prints the curve (mean and minimum over seeds) and writes
benchmarks/results/localization_<tag>.json (the runs) and docs/mixed_supervision_<tag>.png (the curve).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.localization import KEYS, run  # noqa: E402

ALL = 10**6  # more than any dataset has: every masked defect training image
SHOWN = ("box F1@0.3", "pixel AUROC", "hit rate", "image AUROC")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/kolektorsdd.yaml")
    ap.add_argument("--counts", nargs="+", default=["0", "5", "10", "all"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--tag", help="results name (default: <config name>_mixed)")
    ap.add_argument("--reevaluate", action="store_true",
                    help="evaluate the masked-supervision checkpoints already trained again (after a change to "
                         "evaluation); the image-label runs come from the localization benchmark as they are")
    args = ap.parse_args()
    tag = args.tag or f"{Path(args.config).stem}_mixed"
    curve = {}
    for count in args.counts:
        n = ALL if count == "all" else int(count)
        if n == 0:  # image labels only: the localization benchmark's own runs of ours (trained there if missing)
            runs = run(args.config, args.seeds, ["ours"], [], Path(args.config).stem)
            runs = [r for r in runs if r["model"] == "ours"]
        else:
            runs = run(args.config, args.seeds, ["ours"], [f"train.mask_supervision={n}"], tag,
                       reevaluate=args.reevaluate)
        curve[count] = {k: np.array([KEYS[k](r["metrics"]) for r in runs], float) for k in SHOWN}
    print(f"\n{tag}: masked defect images used as L_map targets (mean (min) over seeds {args.seeds})")
    print("| masked images | " + " | ".join(SHOWN) + " |\n" + "|---" * (len(SHOWN) + 1) + "|")
    for count, v in curve.items():
        print(f"| {count} | " + " | ".join(f"{np.nanmean(v[k]):.3f} ({np.nanmin(v[k]):.3f})" for k in SHOWN) + " |")
    plot(curve, Path(__file__).resolve().parent.parent / "docs" / f"mixed_supervision_{Path(args.config).stem}.png",
         Path(args.config).stem)


def plot(curve: dict, path: Path, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = list(range(len(curve)))
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for k in SHOWN[:3]:
        means = [np.nanmean(v[k]) for v in curve.values()]
        lows = [np.nanmin(v[k]) for v in curve.values()]
        highs = [np.nanmax(v[k]) for v in curve.values()]
        ax.plot(xs, means, "o-", label=k)
        ax.fill_between(xs, lows, highs, alpha=0.15)
    ax.set(xticks=xs, xticklabels=list(curve), xlabel="defect images whose mask is an L_map target",
           ylabel="test split (mean, band: min-max over seeds)", title=f"Mixed supervision: {name}", ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
