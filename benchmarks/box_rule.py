"""The box rule across data sets: each level's worth (ablation), calibration vs the untuned default, transfer.

    python benchmarks/box_rule.py --run synthetic=runs/localization/synthetic/ours-s{seed}-* \\
        --run kolektorsdd=runs/localization/kolektorsdd_default/ours-s{seed}-* --seeds 0 1 2

Takes checkpoints trained by benchmarks/localization.py (one folder per set and seed; the folder's config.yaml
and manifest.json say which data it was trained on), predicts val and test once (cached beside the checkpoint
in predictions.npz), then measures on test, with the same pass/fail threshold:
- ablation: the untuned default rule, and the default with one level changed at a time;
- calibrated: the rule calibrated on the set's own val (eval.boxes all null), and on every other set's val
  (transfer: the levels calibrated on set A applied to set B).
Prints tables of box F1@0.3 (mean and minimum over seeds) and the rule's cost per image with and without
`refine`, and writes benchmarks/results/box_rule.json (the default rule's choice: results/box_rule_four_sets.json).
"""
from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from inspection.core.boxes import LEVELS, BoxRule  # noqa: E402
from inspection.core.layout import Manifest  # noqa: E402
from inspection.model.config import load_config  # noqa: E402
from inspection.training.evaluate import Predictions, evaluate_predictions  # noqa: E402

KEYS = ("box@0.1", "box@0.3", "box@0.5")
# the default rule until 2026-12-06, kept as the reference: a new default may not lose over 0.02 box F1 against it
EARLIER = {"threshold": 0.8, "refine": 0.3, "area_share": 0.05, "novelty": 0.95}


def timing(pt, manifest, cfg, repeats: int = 3) -> dict:
    """Milliseconds per test image for the default rule with and without `refine` (the frame read beforehand),
    interleaved in one run on the same maps; the line draws boxes only on parts that fail or go to review,
    every test image is boxed here."""
    import time

    from inspection.core.boxes import map_boxes
    from inspection.training.evaluate import _region, _upsampled

    items = manifest.split("test")
    regions = [(*_upsampled(pt.maps[i], it, cfg.data.roi), _region(it, Path(manifest.root), cfg.data.roi,
                                                                     BoxRule()))
               for i, it in enumerate(items)]
    rules = {"refine": BoxRule(), "whole region": dataclasses.replace(BoxRule(), refine=0.0)}
    spent = dict.fromkeys(rules, 0.0)
    for _ in range(repeats):
        for name, rule in rules.items():
            t = time.perf_counter()
            for up, off, image in regions:
                map_boxes(up, rule, off, image)
            spent[name] += time.perf_counter() - t
    ms = {k: 1000 * v / (repeats * len(regions)) for k, v in spent.items()}
    return {**ms, "ratio": ms["refine"] / ms["whole region"], "images": len(regions)}


def predictions(folder: Path) -> tuple[Predictions, Predictions, Manifest, object]:
    """Val and test predictions of folder/best.pt (cached in folder/predictions.npz, with the feature distances
    where the checkpoint has a feature bank), its manifest and config."""
    import torch

    cfg = load_config(folder / "config.yaml")
    manifest = Manifest.load(folder / "manifest.json")
    cache = folder / "predictions.npz"
    banked = "novelty_bank" in torch.load(folder / "best.pt", map_location="cpu", weights_only=True)
    if not cache.exists() or (banked and "val_distances" not in np.load(cache)):
        from inspection.model.abn import load_checkpoint
        from inspection.training.loader import InspectionDataset
        from inspection.training.predict import predict

        model, cfg_ckpt, ckpt = load_checkpoint(folder / "best.pt")
        pv, pt = (predict(model, InspectionDataset(manifest, s, cfg_ckpt.data), ckpt["kind"]) for s in ("val", "test"))
        np.savez(cache, **{f"{s}_{k}": getattr(p, k) for s, p in (("val", pv), ("test", pt))
                          for k in ("scores", "probs", "maps", "distances") if getattr(p, k) is not None})
    z = np.load(cache)
    pv, pt = (Predictions(z[f"{s}_scores"], z[f"{s}_probs"], z[f"{s}_maps"], z.get(f"{s}_distances"))
              for s in ("val", "test"))
    return pv, pt, manifest, cfg


def with_boxes(cfg, levels: dict):
    """The config with eval.boxes set to these levels (None: calibrate)."""
    boxes = cfg.eval.boxes.model_copy(update=levels)
    return cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"boxes": boxes})})


def measure(pv, pt, manifest, cfg, levels: dict) -> dict:
    r = evaluate_predictions(pv, pt, manifest, with_boxes(cfg, levels), "ours")
    m = r["metrics"]
    return {"rule": r["box_rule"], **{k: m[k]["f1"] for k in KEYS}, "pixel_auroc": m["pixel_auroc"],
            "recall_by_size": {k: v["recall"] for k, v in m["recall_by_size@0.3"].items()},
            "recall_by_count": {k: v["recall"] for k, v in m["recall_by_count@0.3"].items()}}


def run_arguments(doc: str) -> argparse.ArgumentParser:
    """A parser with --run SET=GLOB (repeatable) and --seeds, for benchmarks over localization.py's checkpoints."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--run", action="append", required=True, metavar="SET=GLOB",
                    help="checkpoint folders of a set; {seed} in GLOB is replaced by each seed")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    return ap


def checkpoints(runs: list[str], seeds) -> list[tuple[str, int, Path]]:
    """(set, seed, folder) for each --run SET=GLOB and seed ({seed} in GLOB replaced); a missing one is said and
    left out."""
    out = []
    for name, pattern in (r.split("=", 1) for r in runs):
        for seed in seeds:
            found = sorted(glob.glob(pattern.format(seed=seed)))
            if not found:
                print(f"{name} seed {seed}: no folder matches {pattern.format(seed=seed)}", file=sys.stderr)
                continue
            out.append((name, seed, Path(found[0])))
    return out


def variants(only_plain: bool = False) -> dict[str, dict]:
    """Ablation: the default rule and the earlier one (EARLIER), then one level changed at a time (levels not
    named keep the default's), then the threshold alone and 0.5 with one level; `only_plain`: only those."""
    default = BoxRule().to_dict()
    plain = {name: level.neutral for name, level in LEVELS.items()}  # the threshold alone, every level off
    out = {"default": {}, "earlier default": {**plain, **EARLIER}}
    for name, values in BoxRule.ablation().items():
        for v in values:
            if v != default[name]:
                out[f"{name}={v:g}"] = {name: v}
    for t in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8):
        out[f"plain {t:g}"] = {**plain, "threshold": t}
    for name, values in BoxRule.ablation().items():  # the threshold 0.5 and one level (grow needs novelty too)
        for v in values:
            if name not in ("threshold", "grow") and v != LEVELS[name].neutral:
                out[f"plain 0.5 + {name}={v:g}"] = {**plain, "threshold": 0.5, name: v}
    kept = ("default", "earlier default")
    return {k: v for k, v in out.items() if k in kept or k.startswith("plain")} if only_plain else out


def main() -> None:
    ap = run_arguments(__doc__)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "box_rule.json"))
    ap.add_argument("--plain", action="store_true",
                    help="only the default and the threshold alone or with one level (no calibration, no transfer)")
    ap.add_argument("--only", nargs="+", metavar="RULE", help="only the default and these rules (e.g. 'earlier "
                    "default'): on a large test set each rule takes minutes")
    args = ap.parse_args()
    sets = dict(r.split("=", 1) for r in args.run)
    data = {(name, seed): predictions(folder) for name, seed, folder in checkpoints(args.run, args.seeds)}
    default = BoxRule().to_dict()
    fixed_default = {k: default[k] for k in BoxRule.calibrated()}
    results: dict[str, dict[str, list]] = {}
    for (name, seed), (pv, pt, manifest, cfg) in data.items():
        for label, change in variants(args.plain).items():
            if args.only and label not in ("default", *args.only):
                continue
            results.setdefault(label, {}).setdefault(name, []).append(
                measure(pv, pt, manifest, cfg, {**fixed_default, **change}))
        if args.plain:
            print(f"{name} seed {seed}: default {results['default'][name][-1]['box@0.3']:.3f}", flush=True)
            continue
        calibrated = measure(pv, pt, manifest, cfg, {k: None for k in BoxRule.calibrated()})
        results.setdefault("calibrated on own val", {}).setdefault(name, []).append(calibrated)
        for other in sets:  # transfer: the rule calibrated on another set's val of the same seed
            if other != name and (other, seed) in data:
                pv2, pt2, m2, cfg2 = data[(other, seed)]
                rule = measure(pv2, pt2, m2, cfg2, {k: None for k in BoxRule.calibrated()})["rule"]
                results.setdefault(f"calibrated on {other}", {}).setdefault(name, []).append(
                    measure(pv, pt, manifest, cfg, {k: rule[k] for k in BoxRule.calibrated()}))
        print(f"{name} seed {seed}: default {results['default'][name][-1]['box@0.3']:.3f}, "
              f"calibrated {calibrated['box@0.3']:.3f} ({calibrated['rule']})", flush=True)
    times = {}
    for (name, _seed), (_pv, pt, manifest, cfg) in data.items():
        if name not in times and not args.plain:  # one seed per set: the maps' shapes, not the seed, set the cost
            times[name] = timing(pt, manifest, cfg)
            print(f"{name}: box rule {times[name]['whole region']:.2f} ms/image, with refine "
                  f"{times[name]['refine']:.2f} ms (x{times[name]['ratio']:.2f})", flush=True)
    names = list(sets)
    heads = [f"{n} F1@0.3" for n in names] + [f"{n} F1@0.5" for n in names]
    print("\n| rule | F1@0.3 mean over sets | worst set | " + " | ".join(heads) + " |")
    print("|---" * (2 * len(names) + 3) + "|")
    for label, per_set in results.items():
        means = [np.mean([r["box@0.3"] for r in per_set[n]]) for n in names if per_set.get(n)]
        cells = [f"{np.mean(means):.3f}", f"{np.min(means):.3f}"]
        for key in ("box@0.3", "box@0.5"):
            for n in names:
                v = np.array([r[key] for r in per_set.get(n, [])], float)
                cells.append(f"{v.mean():.3f} ({v.min():.3f})" if len(v) else "–")
        print(f"| {label} | " + " | ".join(cells) + " |")
    Path(args.out).write_text(json.dumps({"sets": sets, "seeds": args.seeds, "default": default,
                                          "results": results, "ms_per_image": times}, indent=1, default=float))


if __name__ == "__main__":
    main()
