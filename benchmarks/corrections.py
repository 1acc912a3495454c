"""What operator corrections are worth: localization after fine-tuning on n corrected maps, and re-scoring at once.

    python benchmarks/corrections.py --config configs/default.yaml --data data/kolektorsdd \
        --set data.split_file=data/kolektorsdd/split.json --tag kolektorsdd_default --seeds 0 1 2

Per seed, v0 is the localization benchmark's model of the same config and overrides (trained there if missing:
runs/localization/<tag>/ours-s<seed>-*). v0 judges the train split; the parts it flags are dealt in a seeded
order, and the scripted reviewer (inspection/training/scripted_reviewer.py: round brushes of the review station's
sizes, never the mask itself) corrects their maps at frame resolution. For each count n the first n corrected
maps join the train split as L_map targets and v0 is fine-tuned with the retrain's recipe (FINE_TUNE) and each
map-loss form; n = 0 is the same fine-tune without corrections, the control. Each fine-tuned model is evaluated
like benchmarks/localization.py (thresholds on val, figures on test, which no correction touches).

Re-scoring without retraining (the review station's "Re-score with this map"): the same reviewer corrects v0's
maps of the parts v0 flags on val and test; a flagged good part whose erased map re-scores under the threshold
becomes a pass, a flagged defect whose corrected map still re-scores over it stays failed.

Prints the tables, writes benchmarks/results/corrections_<tag>.json (resumable) and docs/corrections_<tag>.png.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.localization import run as localization_run  # noqa: E402
from inspection.core.boxes import upsample_attention  # noqa: E402
from inspection.core.imageio import read_mask  # noqa: E402
from inspection.core.layout import GOOD, scan_dataset  # noqa: E402
from inspection.core.mapfile import encode_map, shrink_map  # noqa: E402
from inspection.model.abn import load_checkpoint  # noqa: E402
from inspection.model.config import load_config  # noqa: E402
from inspection.training.loader import InspectionDataset  # noqa: E402
from inspection.training.predict import evaluate_checkpoint, predict  # noqa: E402
from inspection.training.retrain import FINE_TUNE  # noqa: E402
from inspection.training.scripted_reviewer import correct_map  # noqa: E402
from inspection.training.train import train  # noqa: E402

ALL = 10**6
SHOWN = {"box F1@0.3": lambda m: m["box@0.3"]["f1"], "box F1@0.5": lambda m: m["box@0.5"]["f1"],
         "pixel AUROC": lambda m: m["pixel_auroc"], "image AUROC": lambda m: m["image"]["auroc"],
         "hit rate": lambda m: m["hit_rate"]}


def corrections(model, cfg, manifest, split: str, threshold: float) -> list[dict]:
    """v0's flagged parts of a split with the scripted reviewer's corrected maps (frame resolution)."""
    ds = InspectionDataset(manifest, split, cfg.data)
    pred = predict(model, ds, "abn")
    root = Path(manifest.root)
    out = []
    for i, it in enumerate(ds.items):
        if pred.scores[i] < threshold:
            continue
        mask = read_mask(root / it.mask) if it.defect_type != GOOD and it.mask else None
        if it.defect_type != GOOD and mask is None:
            continue  # a defect without a mask: the reviewer would not know where to paint
        att = upsample_attention(pred.maps[i], (it.height, it.width), cfg.data.roi)  # as the station shows it
        corrected, did = correct_map(att, mask)
        out.append({"item": it, "index": i, "score": float(pred.scores[i]), "map": pred.maps[i],
                    "corrected": corrected, "did": did, "image": ds[i]["image"]})
    return out


@torch.no_grad()
def rescore(model, parts: list[dict], threshold: float) -> dict:
    """The review station's re-score (rescore.onnx's computation, in torch) of every corrected part."""
    model.eval()
    rows = []
    for p in parts:
        a = torch.from_numpy(shrink_map(p["corrected"], p["map"].shape))[None]   # as the runtime's rescore does
        logits = model.forward_with_attention(p["image"][None].float(), a)
        after = float(model.defect_score(logits, a, corrected=True)[0])
        rows.append({"good": p["item"].defect_type == GOOD, "before": p["score"], "after": after,
                     "fails_after": after >= threshold})
    good = [r for r in rows if r["good"]]
    bad = [r for r in rows if not r["good"]]
    return {"flagged_good": len(good), "false_alarms_cleared": sum(not r["fails_after"] for r in good),
            "flagged_defects": len(bad), "defects_still_failed": sum(r["fails_after"] for r in bad),
            "mean_score_good": [float(np.mean([r[k] for r in good])) if good else None for k in ("before", "after")],
            "mean_score_defects": [float(np.mean([r[k] for r in bad])) if bad else None for k in ("before", "after")]}


def data_folder(root: Path, folder: Path, parts: list[dict]) -> Path:
    """The dataset with the parts' corrected maps: links to its folders plus corrected/<path>.png."""
    folder.mkdir(parents=True, exist_ok=True)
    for sub in ("good", "defect", "masks"):
        if (root / sub).exists() and not (folder / sub).exists():
            (folder / sub).symlink_to((root / sub).resolve())
    for p in parts:
        dst = (folder / "corrected" / p["item"].path).with_suffix(".png")
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(encode_map(p["corrected"]))
    return folder


def fine_tune(config: str, sets: list[str], seed: int, data: Path, init: dict, form: str, out: Path,
              tune: list[str] = ()) -> dict:
    cfg = load_config(config, [*sets, f"train.seed={seed}", f"data.seed={seed}", f"data.root={data}",
                               "model.pretrained=false", *FINE_TUNE, f"train.map_loss={form}", "train.gamma_map=1",
                               *tune])
    manifest = scan_dataset(data, cfg.data)
    t = time.time()
    best = train(cfg, manifest, out, kind="abn", resume=False, progress=False, init_state=init)
    seconds = time.time() - t
    result = evaluate_checkpoint(best, manifest, "ours", cfg_override=cfg)
    return {"metrics": result["metrics"], "train_s": round(seconds, 1),
            "targets": sum(1 for it in manifest.split("train") if it.corrected)}


def run_seed(args, seed: int, done: dict, save) -> dict:
    sets = args.set
    key = hashlib.sha256(" ".join(sets).encode()).hexdigest()[:8]
    v0 = Path(args.work) / "localization" / args.tag / f"ours-s{seed}-{key}" / "best.pt"
    if not v0.exists():
        localization_run(args.config, [seed], ["ours"], sets, args.tag, work=str(Path(args.work) / "localization"),
                         data=args.data)
    model, v0_cfg, ckpt = load_checkpoint(v0)
    cfg = load_config(args.config, [*sets, f"train.seed={seed}", f"data.seed={seed}"] +
                      ([f"data.root={args.data}"] if args.data else []))
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"image_size": v0_cfg.data.image_size})})
    manifest = scan_dataset(cfg.data.root, cfg.data)
    res = done.get(str(seed)) or {"seed": seed, "runs": {}}
    if "v0" not in res:
        ev = evaluate_checkpoint(v0, manifest, "ours", cfg_override=cfg)
        res.update(v0=ev["metrics"], threshold=ev["threshold"])
    threshold = res["threshold"]
    if "rescore" not in res:
        shown = [p for split in ("val", "test") for p in corrections(model, cfg, manifest, split, threshold)]
        res["rescore"] = rescore(model, shown, threshold)
        print(f"seed {seed} re-score: {res['rescore']}", flush=True)
        save(seed, res)
    parts = corrections(model, cfg, manifest, "train", threshold)
    parts.sort(key=lambda p: hashlib.sha256(f"{seed}:{p['item'].path}".encode()).hexdigest())
    res["flagged_train"] = {"good": sum(p["item"].defect_type == GOOD for p in parts),
                            "defect": sum(p["item"].defect_type != GOOD for p in parts),
                            "painted_px": int(sum(p["did"]["painted"] for p in parts)),
                            "erased_px": int(sum(p["did"]["erased"] for p in parts))}
    work = Path(args.work) / "corrections" / (args.tag + (f"_{args.name}" if args.name else "")) / f"s{seed}"
    for count in args.counts:
        n = ALL if count == "all" else int(count)
        for form in (args.forms if n else ["none"]):
            name = f"n={count} {form}"
            if name in res["runs"]:
                continue
            chosen = parts[:n]
            folder = data_folder(Path(manifest.root), work / f"data_n{count}", chosen)
            r = fine_tune(args.config, sets, seed, folder, ckpt["state_dict"], form if n else "balanced",
                          work / f"n{count}_{form}", args.tune)
            r["corrected"] = len(chosen)
            res["runs"][name] = r
            print(f"seed {seed} {name} ({r['train_s']:.0f} s, {r['targets']} targets): " +
                  ", ".join(f"{k} {get(r['metrics']):.3f}" for k, get in SHOWN.items()), flush=True)
            save(seed, res)
    return res


def tables(results: dict, counts, forms) -> str:
    lines = ["| corrected maps | L_map | seeds | " + " | ".join(SHOWN) + " |", "|---" * (len(SHOWN) + 3) + "|"]
    v0 = [r["v0"] for r in results.values() if "v0" in r]
    lines.append(f"| v0 (no fine-tune) | | {len(v0)} | " + " | ".join(
        f"{np.nanmean([g(m) for m in v0]):.3f}" for g in SHOWN.values()) + " |")
    for count in counts:
        for form in (forms if count != "0" else ["none"]):
            key = f"n={count} {form}"
            ms = [r["runs"][key]["metrics"] for r in results.values() if key in r["runs"]]
            if ms:
                lines.append(f"| {count} | {form} | {len(ms)} | " + " | ".join(
                    f"{np.nanmean(v):.3f} ({np.nanmin(v):.3f}-{np.nanmax(v):.3f})"
                    for v in ([g(m) for m in ms] for g in SHOWN.values())) + " |")
    rs = [r["rescore"] for r in results.values() if "rescore" in r]
    if rs:
        fg, fc = sum(r["flagged_good"] for r in rs), sum(r["false_alarms_cleared"] for r in rs)
        fd, fs = sum(r["flagged_defects"] for r in rs), sum(r["defects_still_failed"] for r in rs)
        lines.append(f"\nre-score (val + test, {len(rs)} seeds): erased false alarms that pass {fc} of {fg}; "
                     f"corrected defects still failed {fs} of {fd}")
    return "\n".join(lines)


def plot(results: dict, counts, forms, path: Path, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4), sharex=True)
    xs = list(range(len(counts)))
    for ax, key in zip(axes, ("box F1@0.3", "box F1@0.5", "pixel AUROC")):
        for form, style in zip(forms, ("o-", "s--", "^:")):
            mean, lo, hi = [], [], []
            for count in counts:
                run = f"n={count} {form if count != '0' else 'none'}"
                v = [SHOWN[key](r["runs"][run]["metrics"]) for r in results.values() if run in r["runs"]]
                mean.append(np.mean(v) if v else np.nan)
                lo.append(np.min(v) if v else np.nan)
                hi.append(np.max(v) if v else np.nan)
            ax.plot(xs, mean, style, label=f"L_map {form}")
            ax.fill_between(xs, lo, hi, alpha=0.12)
        ax.set(title=key, xticks=xs, xticklabels=counts, xlabel="corrected maps")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"{name}: test split (band: seeds)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/default.yaml")
    ap.add_argument("--data", help="dataset folder (default: the config's data.root)")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--tag", required=True, help="the localization benchmark's tag of v0 (and this results name)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--counts", nargs="+", default=["0", "5", "10", "20", "all"])
    ap.add_argument("--forms", nargs="+", default=["balanced", "l2"], choices=["balanced", "l2"])
    ap.add_argument("--tune", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="fine-tuning overrides after the retrain's recipe, e.g. train.freeze_features=false")
    ap.add_argument("--name", default="", help="results name suffix for another recipe (with --tune)")
    ap.add_argument("--work", default="runs")
    ap.add_argument("--report", action="store_true", help="only print the tables and draw the curve from the JSON")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    name = args.tag + (f"_{args.name}" if args.name else "")
    out = Path(__file__).parent / "results" / f"corrections_{name}.json"
    results = json.loads(out.read_text())["results"] if out.exists() else {}

    def save(seed: int, res: dict) -> None:
        results[str(seed)] = res
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"config": args.config, "data": args.data, "overrides": args.set,
                                   "fine_tune": FINE_TUNE + args.tune, "results": results}, indent=1, default=float))

    for seed in [] if args.report else args.seeds:
        save(seed, run_seed(args, seed, results, save))
    print(tables(results, args.counts, args.forms))
    plot(results, args.counts, args.forms, Path(__file__).resolve().parent.parent / "docs" / f"corrections_{name}.png",
         name)


if __name__ == "__main__":
    main()
