"""Distance to the good parts' features, beside the attention map: as a map of its own and as a region filter.

    python benchmarks/feature_distance.py --run synthetic=runs/localization/synthetic/ours-s{seed}-* \\
        --run kolektorsdd=runs/localization/kolektorsdd_default/ours-s{seed}-* --seeds 0 1 2

For each checkpoint trained by benchmarks/localization.py: the backbone features F (the branch point, stride 8)
of every cell of the good training parts form a bank (at most --bank cells, drawn at random); each val and test
cell gets its distance to the nearest cell of the bank (cached beside the checkpoint in feature_distance_<bank>.npz).
Measured on test with the default box rule and the same pass/fail threshold as the attention map:
- "attention": the map as it is;
- "distance": the distance map, scaled so that the good val parts' peaks (99th percentile) reach 1;
- "gate q": the attention map with every region (8-connected cells at 0.5 or more) dropped whose cells all lie
  within the distance that a share q of the good val parts' cells reach.
Prints box F1@0.3, @0.5 and pixel AUROC, mean (minimum) over seeds, and writes
benchmarks/results/feature_distance.json. The distance map and its products with the attention map are not in the
product (docs/method.md says why); the gate at 0.9 became the box rule's `novelty` level (inspection/core/novelty.py),
whose bank the product fits at the end of training and whose region is the rule's own (cells at its threshold).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from box_rule import checkpoints, measure, predictions, run_arguments  # noqa: E402

from inspection.core.boxes import BoxRule  # noqa: E402
from inspection.core.layout import GOOD  # noqa: E402
from inspection.core.novelty import nearest  # noqa: E402
from inspection.training.evaluate import Predictions  # noqa: E402

GATES = (0.9, 0.99)


def _features(model, dataset) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for batch in torch.utils.data.DataLoader(dataset, batch_size=32):
            out.append(model.features(batch["image"]))
    return torch.cat(out)  # (N, C, h, w)


def distances(folder: Path, bank_size: int) -> dict[str, np.ndarray]:
    """{"val", "test"}: (N, h, w) distance of each cell's features to the nearest good training cell."""
    cache = folder / f"feature_distance_{bank_size}.npz"
    if cache.exists():
        z = np.load(cache)
        return {"val": z["val"], "test": z["test"]}
    from inspection.core.layout import Manifest
    from inspection.model.abn import load_checkpoint
    from inspection.training.loader import InspectionDataset

    model, cfg, _ = load_checkpoint(folder / "best.pt")
    manifest = Manifest.load(folder / "manifest.json")
    train = InspectionDataset(manifest, "train", cfg.data)
    good = [i for i, it in enumerate(train.items) if it.defect_type == GOOD]
    feats = _features(model, torch.utils.data.Subset(train, good))
    bank = feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1])
    if len(bank) > bank_size:
        bank = bank[torch.randperm(len(bank), generator=torch.Generator().manual_seed(0))[:bank_size]]
    out = {}
    for split in ("val", "test"):
        f = _features(model, InspectionDataset(manifest, split, cfg.data))
        n, c, h, w = f.shape
        out[split] = nearest(f.permute(0, 2, 3, 1).reshape(-1, c).numpy(), bank.numpy()).reshape(n, h, w)
    np.savez(cache, **out)
    return out


def gated(maps: np.ndarray, dist: np.ndarray, level: float, foot: float = 0.5) -> np.ndarray:
    """The maps with every region (8-connected cells >= foot) whose cells all lie under `level` pushed under foot."""
    out = maps.copy()
    for m, d in zip(out, dist):
        n, labels = cv2.connectedComponents((m >= foot).astype(np.uint8), connectivity=8)
        for j in range(1, n):
            region = labels == j
            if d[region].max() < level:
                m[region] = np.minimum(m[region], 0.9 * foot)
    return out


def variants(pv, pt, manifest, dist) -> dict[str, tuple[Predictions, Predictions]]:
    good = np.array([it.defect_type == GOOD for it in manifest.split("val")])
    cells = dist["val"][good]
    scale = float(np.quantile(cells.reshape(len(cells), -1).max(1), 0.99))
    out = {"attention": (pv, pt)}
    out["distance"] = tuple(Predictions(p.scores, p.probs, np.clip(dist[s] / scale, 0, 1).astype(np.float32))
                            for s, p in (("val", pv), ("test", pt)))
    for q in GATES:
        level = float(np.quantile(cells, q))
        out[f"gate {q:g}"] = tuple(Predictions(p.scores, p.probs, gated(p.maps, dist[s], level))
                                   for s, p in (("val", pv), ("test", pt)))
    return out


def main() -> None:
    ap = run_arguments(__doc__)
    ap.add_argument("--bank", type=int, default=40000, help="most good cells in the bank")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "feature_distance.json"))
    args = ap.parse_args()
    fixed = {"threshold": BoxRule().threshold}
    results: dict[str, dict[str, list]] = {}
    for name, seed, folder in checkpoints(args.run, args.seeds):
        pv, pt, manifest, cfg = predictions(folder)
        for label, (v, t) in variants(pv, pt, manifest, distances(folder, args.bank)).items():
            m = measure(v, t, manifest, cfg, fixed)
            results.setdefault(label, {}).setdefault(name, []).append(
                {"seed": seed, **{k: m[k] for k in ("box@0.3", "box@0.5", "pixel_auroc")}})
        print(f"{name} seed {seed}: " + ", ".join(f"{k} {v[name][-1]['box@0.3']:.3f}" for k, v in results.items()),
              flush=True)
    sets = list(dict.fromkeys(s for v in results.values() for s in v))
    cols = [(s, k) for s in sets for k in ("box@0.3", "box@0.5", "pixel_auroc")]
    print("\n| variant | " + " | ".join(f"{s} {k}" for s, k in cols) + " |\n" + "|---" * (len(cols) + 1) + "|")
    for label, per_set in results.items():
        cells = []
        for s, k in cols:
            v = [r[k] for r in per_set.get(s, [])]
            cells.append(f"{np.mean(v):.3f} ({np.min(v):.3f})" if v else "–")
        print(f"| {label} | " + " | ".join(cells) + " |")
    Path(args.out).write_text(json.dumps({"bank": args.bank, "gates": GATES, "results": results}, indent=1))


if __name__ == "__main__":
    main()
