"""Promotion gate: a candidate model package against production, on the same frozen golden set, with a report.

    >>> d = gate("runs/new/package", "models/current", "data/golden", "runs/gate")
    >>> d["promote"], d["reasons"]

The golden set is a dataset folder in the trainer's layout (good/, defect/<type>/, optional masks/) that
training never sees. Both packages run through the line-side runtime with their own calibrated thresholds,
exactly as a line would, and the candidate is promoted only when no rule says it is worse beyond its
tolerance. Writes decision.json, report.md and roc.png.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from inspection.core.boxes import mask_to_boxes
from inspection.core.imageio import read_truth
from inspection.core.layout import find_images
from inspection.deploy.registry import resolve_package
from inspection.deploy.runtime import Runtime, frame_to_rgb, read_frame
from inspection.training.metrics import box_metrics, image_metrics

# metric, better ("higher" | "lower"), tolerance: the candidate may be worse by at most this much
RULES = (("auroc", "higher", 0.005), ("false_reject", "lower", 0.02), ("miss", "lower", 0.02),
         ("false_reject_at_miss_5pct", "lower", 0.02), ("box_f1@0.3", "higher", 0.02))


def golden_items(root: str | Path) -> list[dict]:
    """Every image of a dataset folder: path, defect type ('good' or the folder), mask and corrected-map paths
    or None (masks/<type>/..., corrected/<good|defect/<type>>/...: a golden set built from reviewed parts has
    the reviewers' maps instead of masks)."""
    if not (Path(root) / "good").is_dir():
        raise FileNotFoundError(f"{root}: golden set needs good/ and defect/<type>/ folders")
    found, _ = find_images(root, complete=False)
    items = [{"path": f.path, "type": f.kind, "mask": f.mask, "corrected": f.corrected} for f in found]
    if not any(it["type"] == "good" for it in items) or all(it["type"] == "good" for it in items):
        raise ValueError(f"{root}: golden set needs both good and defective images")
    return items


def score_package(package: str | Path, items: list[dict], batch: int = 16) -> dict:
    """Run a package over the golden set as the line would; metrics at the package's own thresholds."""
    rt = Runtime(resolve_package(package), backend="cpu", max_batch=batch)
    results, shapes = [], []
    for i in range(0, len(items), batch):
        frames = [read_frame(it["path"]) for it in items[i:i + batch]]
        results += rt.inspect(frames, "BGR")
        shapes += [f.shape[:2] for f in frames]
    y = np.array([it["type"] != "good" for it in items])
    scores = np.array([r.score for r in results])
    flagged = np.array([r.verdict != "pass" for r in results])
    metrics = image_metrics(y, scores, rt.threshold)
    metrics["false_reject"] = float(flagged[~y].mean())  # review counts as a reject at the line
    metrics["miss"] = float((~flagged[y]).mean())
    truth = {k: read_truth(it["mask"], it["corrected"], shapes[k])
             for k, it in enumerate(items) if it["type"] != "good" and (it["mask"] or it["corrected"])}
    located = [k for k, it in enumerate(items) if it["type"] == "good" or truth.get(k) is not None]
    if any(truth.get(k) is not None for k in located):  # box F1 where masks or corrected maps exist
        pred = [np.array([b.xyxy for b in results[k].boxes]).reshape(-1, 4) for k in located]
        true = [np.zeros((0, 4)) if k not in truth else
                np.array([b.xyxy for b in mask_to_boxes(truth[k])]).reshape(-1, 4) for k in located]
        metrics["box_f1@0.3"] = box_metrics(pred, true, 0.3)["f1"]
    metrics["per_type_detection"] = {t: float(flagged[[it["type"] == t for it in items]].mean())
                                     for t in sorted({it["type"] for it in items} - {"good"})}
    return {"version": rt.version, "metrics": metrics, "scores": scores.tolist(), "is_defect": y.tolist(),
            "results": results, "roi": rt.roi}


def compare(candidate: dict, production: dict, rules=RULES) -> tuple[bool, list[str]]:
    """(promote?, one line per rule) from the two score_package results."""
    promote, reasons = True, []
    for name, better, tol in rules:
        c, p = candidate["metrics"].get(name), production["metrics"].get(name)
        if c is None or p is None or np.isnan(c) or np.isnan(p):
            reasons.append(f"{name}: not measured on this golden set, not checked")
            continue
        worse = (p - c) if better == "higher" else (c - p)
        ok = worse <= tol
        promote &= ok
        reasons.append(f"{name}: candidate {c:.4f} vs production {p:.4f} ({better} is better, tolerance {tol}): "
                       f"{'ok' if ok else 'WORSE'}")
    return promote, reasons


def gate(candidate: str | Path, production: str | Path | None, golden: str | Path, out_dir: str | Path,
         rules=RULES) -> dict:
    """Score both packages on the golden set, decide, and write decision.json, report.md and roc.png."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    items = golden_items(golden)
    cand = score_package(candidate, items)
    if production is None:
        prod, promote, reasons = None, True, ["no production model yet: the first candidate is promoted"]
    else:
        prod = score_package(production, items)
        promote, reasons = compare(cand, prod, rules)
    decision = {"promote": bool(promote), "reasons": reasons, "notes": _granularity(items, rules),
                "golden": str(golden), "images": len(items),
                "candidate": {"package": str(candidate), "version": cand["version"], "metrics": cand["metrics"]},
                "production": None if prod is None else {"package": str(production), "version": prod["version"],
                                                         "metrics": prod["metrics"]}}
    if prod is not None:
        decision["examples"] = _examples(items, cand, prod, out / "examples.png")
    _plot_roc([("candidate " + cand["version"], cand)] + ([("production " + prod["version"], prod)] if prod else []),
              out / "roc.png")
    _report(decision, out / "report.md")
    (out / "decision.json").write_text(json.dumps(decision, indent=1))
    return decision


def _granularity(items: list[dict], rules=RULES) -> list[str]:
    """Rate rules whose tolerance is finer than one golden part: there, a single part more rejects."""
    n = {"defects": sum(it["type"] != "good" for it in items), "good parts": sum(it["type"] == "good" for it in items)}
    notes = []
    for name, _, tol in rules:
        of = "defects" if name == "miss" else "good parts" if name.startswith("false_reject") else None
        if of and tol < 1 / n[of]:
            notes.append(f"{name}: one part is {1 / n[of]:.3f} of the golden set's {n[of]} {of}, more than the "
                         f"tolerance {tol}: a single part more rejects (add golden images for a finer gate)")
    return notes


def _examples(items: list[dict], cand: dict, prod: dict, path: Path, n: int = 8) -> int:
    """Overlays of production (left) and candidate (right) on golden images, where they disagree most."""
    import cv2

    from inspection.core.boxes import upsample_attention
    from inspection.core.overlay import overlay

    diff = [abs(c.score - p.score) + (c.verdict != p.verdict) for c, p in zip(cand["results"], prod["results"])]
    picked = sorted(range(len(items)), key=lambda k: -diff[k])[:n]
    rows = []
    for k in picked:
        rgb = frame_to_rgb(read_frame(items[k]["path"]), "BGR")
        pair = []
        for run in (prod, cand):
            r = run["results"][k]
            full = upsample_attention(r.attention, rgb.shape[:2], run["roi"])
            img = overlay(rgb, full, r.boxes, label=f"{r.verdict} {r.score:.2f}")
            pair.append(cv2.resize(img, (192, round(192 * img.shape[0] / img.shape[1]))))
        h = max(im.shape[0] for im in pair)
        pair = [np.pad(im, ((0, h - im.shape[0]), (0, 0), (0, 0)), constant_values=255) for im in pair]
        row = np.hstack([pair[0], np.full((h, 6, 3), 255, np.uint8), pair[1]])
        cv2.putText(row, items[k]["type"], (4, h - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1)
        rows.append(row)
    if rows:
        w = max(r.shape[1] for r in rows)
        sheet = np.vstack([np.pad(r, ((0, 4), (0, w - r.shape[1]), (0, 0)), constant_values=255) for r in rows])
        cv2.imwrite(str(path), sheet[..., ::-1])
    return len(rows)


def _plot_roc(runs: list, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    fig, ax = plt.subplots(figsize=(4.5, 4))
    for label, r in runs:
        fpr, tpr, _ = roc_curve(r["is_defect"], r["scores"])
        ax.plot(fpr, tpr, label=f"{label} (AUROC {r['metrics']['auroc']:.3f})")
    ax.plot([0, 1], [0, 1], ":", color="gray")
    ax.set_xlabel("false-reject rate (good parts)")
    ax.set_ylabel("detection rate (defects)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _report(d: dict, path: Path) -> None:
    c, p = d["candidate"], d["production"]
    lines = [f"# Promotion gate: {'PROMOTE' if d['promote'] else 'REJECT'} {c['version']}", "",
             f"Golden set `{d['golden']}` ({d['images']} images); production: "
             f"{p['version'] if p else 'none'}.", "", *[f"- {r}" for r in d["reasons"]],
             *[f"- note: {n}" for n in d["notes"]], "",
             "| metric | candidate | production |", "|---|---|---|"]
    names = [r[0] for r in RULES] + ["ap", "f1"]
    for name in names:
        cv, pv = c["metrics"].get(name), (p or {}).get("metrics", {}).get(name)
        if cv is not None:
            lines.append(f"| {name} | {cv:.4f} | {'' if pv is None else f'{pv:.4f}'} |")
    lines += ["", "Detection rate per defect type:", "", "| type | candidate | production |", "|---|---|---|"]
    for t, v in c["metrics"]["per_type_detection"].items():
        pv = (p or {}).get("metrics", {}).get("per_type_detection", {}).get(t)
        lines.append(f"| {t} | {v:.3f} | {'' if pv is None else f'{pv:.3f}'} |")
    lines += ["", "![ROC of both models on the golden set](roc.png)"]
    if d.get("examples"):
        lines += ["", "Where the two disagree most (left: production, right: candidate):", "",
                  "![production vs candidate overlays](examples.png)"]
    path.write_text("\n".join(lines) + "\n")
