"""The box rule's `grow` level, and a variant by feature similarity: hot regions grown over the cells around them.

    python benchmarks/region_growth.py --run mpdd=runs/localization/mpdd/ours-s{seed}-* --seeds 0 1 2 \\
        --out benchmarks/results/region_growth.json

For maps that light only a few cells of a large defect (the small-defects profile): a region where the map
reaches the threshold grows over the 8-connected pixels around it that are new to the good parts (feature
distance at least the `novelty` level's distance) and at least `share` of the highest distance inside the hot
region (mode `distance`: the rule's `grow` level, inspection/core/boxes.py), or that are new and whose backbone
features point the same way as the hot region's mean feature (cosine at least `share`: mode `similar`, a trial
variant). Every other level as the default rule (threshold 0.5, novelty 0.99). Takes the checkpoints and cached
predictions of benchmarks/box_rule.py; prints box F1@0.3 per checkpoint and a table of mean (minimum) over
seeds, and writes the JSON (default benchmarks/results/region_growth.json).
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from box_rule import checkpoints, measure, predictions, run_arguments  # noqa: E402

import inspection.training.evaluate as evaluate  # noqa: E402
from inspection.core.boxes import components_to_boxes, grow_regions, map_boxes  # noqa: E402
from inspection.model.abn import load_checkpoint  # noqa: E402
from inspection.training.loader import InspectionDataset  # noqa: E402

VARIANTS = [("off", 0.0), ("distance", 0.5), ("distance", 0.7), ("distance", 0.8),
            ("similar", 0.5), ("similar", 0.6), ("similar", 0.7)]
STATE = {"mode": "off", "share": 0.0, "item": 0, "features": []}


def similar_mask(up, novelty, features, seed, tau, share):
    """The map's hot pixels, each 8-connected hot region grown over the new (>= tau) pixels around it whose
    features have a cosine of at least `share` to the region's mean feature (the rule's growth, with the
    distance of the pixels that fail the cosine set to 0)."""
    hot = up >= seed
    n, labels = cv2.connectedComponents((hot | (novelty >= tau)).astype(np.uint8), connectivity=8)
    out = hot.copy()
    c, h, w = features.shape
    for i in range(1, n):
        member = labels == i
        core = member & hot
        if not core.any():
            continue
        cells = cv2.resize(core.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA) > 0
        v = features[:, cells].mean(1)
        cos = np.tensordot(v / (np.linalg.norm(v) + 1e-8), features, 1).astype(np.float32)
        alike = member & (cv2.resize(cos, (up.shape[1], up.shape[0]), interpolation=cv2.INTER_LINEAR) >= share)
        out |= grow_regions(core, np.where(alike, novelty, 0), tau, 0.0)
    return out


def grown_boxes(up, rule, offset=(0, 0), image=None, novelty=None):
    if STATE["mode"] != "similar" or novelty is None or not rule.novelty_distance:
        grow = STATE["share"] if STATE["mode"] == "distance" else 0.0
        return map_boxes(up, dataclasses.replace(rule, grow=grow), offset, image, novelty)
    binary = similar_mask(up, novelty, STATE["features"][STATE["item"]], rule.threshold, rule.novelty_distance,
                          STATE["share"])
    return components_to_boxes(binary, up, rule.min_area, rule.score, offset, seed=rule.threshold,
                               novelty=novelty, novelty_distance=rule.novelty_distance)


def far(pred, i, item, roi, rule):  # evaluation asks each test image's distance map right before its boxes
    STATE["item"] = i
    return _far(pred, i, item, roi, rule)


_far = evaluate._far
evaluate._far, evaluate.map_boxes = far, grown_boxes


def unit_features(folder: Path, manifest) -> list[np.ndarray]:
    """Backbone features at the branch point of each test image, unit length along the channels."""
    model, cfg, _ = load_checkpoint(folder / "best.pt")
    model.eval()
    out = []
    for batch in torch.utils.data.DataLoader(InspectionDataset(manifest, "test", cfg.data), batch_size=16):
        with torch.no_grad():
            out += list(torch.nn.functional.normalize(model(batch["image"]).features.float(), dim=1).numpy())
    return out


def main() -> None:
    ap = run_arguments(__doc__)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "region_growth.json")
    args = ap.parse_args()
    results: dict[str, dict[str, list]] = {}
    for name, seed, folder in checkpoints(args.run, args.seeds):
        pv, pt, manifest, cfg = predictions(folder)
        STATE["features"] = unit_features(folder, manifest) if any(m == "similar" for m, _ in VARIANTS) else []
        for mode, share in VARIANTS:
            STATE["mode"], STATE["share"] = mode, share
            m = measure(pv, pt, manifest, cfg, {"threshold": 0.5})
            results.setdefault(f"{mode} {share:g}", {}).setdefault(name, []).append({"seed": seed, **m})
        print(f"{name} seed {seed}: " + ", ".join(f"{k} {v[name][-1]['box@0.3']:.3f}" for k, v in results.items()),
              flush=True)
    names = list(dict.fromkeys(n for n, _, _ in checkpoints(args.run, args.seeds)))
    print("\n| growth | " + " | ".join(f"{n} F1@0.3" for n in names) + " |\n" + "|---" * (len(names) + 1) + "|")
    for label, per_set in results.items():
        cells = [f"{np.mean(v):.3f} ({np.min(v):.3f})" for v in
                 ([r["box@0.3"] for r in per_set[n]] for n in names)]
        print(f"| {label} | " + " | ".join(cells) + " |")
    args.out.write_text(json.dumps({"runs": dict(r.split("=", 1) for r in args.run), "seeds": args.seeds,
                                    "results": results}, indent=1, default=float))


if __name__ == "__main__":
    main()
