"""Localization over seeds: ours against plain ABN and Grad-CAM, trained and evaluated the same way.

    python benchmarks/localization.py --config configs/kolektorsdd.yaml --seeds 0 1 2
    python benchmarks/localization.py --config configs/demo.yaml --models ours --set train.w_defect=0 \
        --tag no_defect_loss

Each model is trained (`inspection train`'s code path) on the config's dataset with train.seed = data-order seed
= each seed, then evaluated once: thresholds calibrated on val, measured on test. Prints one line per run and a
table of mean and minimum over seeds; writes benchmarks/results/localization_<tag>.json (every run's metrics).
Runs already in the JSON with the same settings are not trained again (the benchmark resumes).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from inspection.core.layout import Manifest, scan_dataset  # noqa: E402
from inspection.model.config import load_config  # noqa: E402
from inspection.training.predict import add_feature_bank, evaluate_checkpoint  # noqa: E402
from inspection.training.train import plain_abn, train  # noqa: E402

MODELS = {"ours": "abn", "plain_abn": "abn", "gradcam": "cnn"}
KEYS = {  # column → getter over a run's metrics
    "image AUROC": lambda m: m["image"]["auroc"],
    "box F1@0.3": lambda m: m["box@0.3"]["f1"],
    "box P@0.3": lambda m: m["box@0.3"]["precision"],
    "box R@0.3": lambda m: m["box@0.3"]["recall"],
    "box F1@0.5": lambda m: m["box@0.5"]["f1"],
    "box F1@0.1": lambda m: m.get("box@0.1", {}).get("f1", np.nan),
    **{f"R {k}": (lambda k: lambda m: m.get("recall_by_size@0.3", {}).get(k, {}).get("recall", np.nan))(k)  # noqa: B023 - bound by the outer lambda
       for k in ("tiny", "small", "large")},
    **{f"R {k}": (lambda k: lambda m: m.get("recall_by_count@0.3", {}).get(k, {}).get("recall", np.nan))(k)  # noqa: B023 - bound by the outer lambda
       for k in ("single", "several")},
    "pixel AUROC": lambda m: m["pixel_auroc"],
    "AUPRO": lambda m: m["aupro"],
    "hit rate": lambda m: m["hit_rate"],
    "att. good": lambda m: m["attention_mean_good"],
    "att. in defects": lambda m: m["attention_inside_defects"],
    "boxes/failed good": lambda m: m["boxes_per_failed_good"],
}


def summary_table(runs: list[dict]) -> str:
    """Markdown: one row per model, each cell 'mean (min)' over its seeds."""
    head = "| model | seeds | " + " | ".join(KEYS) + " |"
    lines = [head, "|---" * (len(KEYS) + 2) + "|"]
    for model in dict.fromkeys(r["model"] for r in runs):
        rs = [r for r in runs if r["model"] == model]
        cells = []
        for get in KEYS.values():
            v = np.array([get(r["metrics"]) for r in rs], float)
            cells.append(f"{np.nanmean(v):.3f} ({np.nanmin(v):.3f})")
        lines.append(f"| {model} | {len(rs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(config: str, seeds, models, sets: list[str], tag: str, trained: dict[str, str] | None = None,
        work: str = "runs/localization", data: str | None = None, reevaluate: bool = False,
        results: Path = Path(__file__).parent / "results") -> list[dict]:
    """Train (or take) and evaluate each model for each seed; return the runs with these overrides (resumed from
    and saved to benchmarks/results/localization_<tag>.json). `reevaluate`: evaluate again the checkpoints
    already trained in `work` (after a change to evaluation), training only the missing ones."""
    trained = trained or {}
    out = Path(results) / f"localization_{tag}.json"
    done = json.loads(out.read_text())["runs"] if out.exists() else []
    def mine(r: dict) -> bool:  # a run of these settings and one of these seeds
        return r["overrides"] == sets and r["seed"] in seeds

    wanted = [*models, *trained]
    runs = [r for r in done if mine(r) and not (reevaluate and r["model"] in wanted)]  # others are kept as they are
    for seed in seeds:
        seeded = [*sets, f"train.seed={seed}", f"data.seed={seed}"] + ([f"data.root={data}"] if data else [])
        cfg = load_config(config, seeded)
        manifest = scan_dataset(cfg.data.root, cfg.data)
        for model in wanted:
            if any(r["model"] == model and r["seed"] == seed for r in runs):
                continue
            t = time.time()
            if model in trained:
                best, t_train = Path(trained[model].format(seed=seed)) / "best.pt", 0.0
            else:
                run_cfg = plain_abn(cfg) if model == "plain_abn" else cfg
                key = hashlib.sha256(" ".join(sets).encode()).hexdigest()[:8]
                folder = Path(work) / tag / f"{model}-s{seed}-{key}"
                saved = next((r for r in done if (r["overrides"], r["model"], r["seed"]) == (sets, model, seed)), {})
                if reevaluate and (folder / "best.pt").exists():
                    best, t_train = folder / "best.pt", saved.get("train_s", 0.0)
                    if "novelty_bank" not in torch.load(best, map_location="cpu", weights_only=True):
                        add_feature_bank(best, Manifest.load(folder / "manifest.json"))  # trained before the bank
                else:
                    best = train(run_cfg, manifest, folder, kind=MODELS[model], resume=False, progress=False)
                    t_train = time.time() - t
            result = evaluate_checkpoint(best, manifest, model, cfg_override=cfg, search=model != "ours")
            m = result["metrics"]
            runs.append({"model": model, "seed": seed, "overrides": sets, "train_s": round(t_train, 1),
                         "threshold": result["threshold"], "box_rule": result["box_rule"], "metrics": m})
            print(f"{tag} {model} seed {seed} ({t_train:.0f} s): " +
                  ", ".join(f"{k} {get(m):.3f}" for k, get in KEYS.items()), flush=True)
            out.parent.mkdir(parents=True, exist_ok=True)
            keep = [r for r in done if not mine(r)]
            out.write_text(json.dumps({"config": config, "runs": keep + runs}, indent=1, default=float))
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--data", help="dataset folder (default: the config's data.root)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="config overrides")
    ap.add_argument("--tag", help="results name (default: the config's file name)")
    ap.add_argument("--trained", action="append", default=[], metavar="NAME=FOLDER",
                    help="also evaluate checkpoints trained elsewhere (e.g. by an earlier version) as model NAME: "
                         "FOLDER/best.pt, where {seed} in FOLDER is replaced by each seed")
    ap.add_argument("--work", default="runs/localization")
    ap.add_argument("--results", type=Path, default=Path(__file__).parent / "results",
                    help="folder of the results JSON (default benchmarks/results; trials: benchmarks/results/trials)")
    ap.add_argument("--reevaluate", action="store_true",
                    help="evaluate the checkpoints already trained in --work again (after a change to evaluation)")
    args = ap.parse_args()
    tag = args.tag or Path(args.config).stem
    runs = run(args.config, args.seeds, args.models, args.set, tag, dict(t.split("=", 1) for t in args.trained),
               args.work, args.data, args.reevaluate, args.results)
    print(f"\n{tag} {' '.join(args.set)}\n" + summary_table(runs))


if __name__ == "__main__":
    main()
