"""Side-by-side report of evaluated models: metrics table, ROC/PR curves, attention-overlay grid.

    >>> write_report([result_ours, result_plain_abn, result_gradcam], "runs/demo/report")

Writes report.html, results.md, metrics.json, roc_pr.png and overlays.png into the folder.
"""
from __future__ import annotations

import html
import json
import math
import shutil
from pathlib import Path

import numpy as np

from inspection.core.boxes import Box, BoxRule, upsample_attention
from inspection.core.imageio import read_image
from inspection.core.layout import GOOD
from inspection.core.overlay import overlay

COLUMNS = [  # (header, getter)
    ("image AUROC", lambda m: m["image"]["auroc"]),
    ("image AP", lambda m: m["image"]["ap"]),
    ("image F1", lambda m: m["image"]["f1"]),
    ("false reject", lambda m: m["image"]["false_reject"]),
    ("miss", lambda m: m["image"]["miss"]),
    ("box F1@0.3", lambda m: m.get("box@0.3", {}).get("f1")),
    ("box P@0.3", lambda m: m.get("box@0.3", {}).get("precision")),
    ("box R@0.3", lambda m: m.get("box@0.3", {}).get("recall")),
    ("box F1@0.5", lambda m: m.get("box@0.5", {}).get("f1")),
    ("box F1@0.1", lambda m: m.get("box@0.1", {}).get("f1")),
    *((f"box R@0.3 {k}", (lambda k: lambda m: m.get("recall_by_size@0.3", {}).get(k, {}).get("recall"))(k))  # noqa: B023 - bound by the outer lambda
      for k in ("tiny", "small", "large")),
    *((f"box R@0.3 {k} defects", (lambda k: lambda m: m.get("recall_by_count@0.3", {}).get(k, {}).get("recall"))(k))  # noqa: B023 - bound by the outer lambda
      for k in ("single", "several")),
    ("pixel AUROC", lambda m: m.get("pixel_auroc")),
    ("AUPRO", lambda m: m.get("aupro")),
    ("hit rate", lambda m: m.get("hit_rate")),
    ("boxes per failed good part", lambda m: m.get("boxes_per_failed_good")),
    ("att. mean good", lambda m: m["attention_mean_good"]),
    ("att. inside defects", lambda m: m.get("attention_inside_defects")),
]
TYPE_COLUMNS = [
    ("box F1@0.3", lambda m: m["box@0.3"]["f1"]),
    ("box P@0.3", lambda m: m["box@0.3"]["precision"]),
    ("box R@0.3", lambda m: m["box@0.3"]["recall"]),
    ("box F1@0.1", lambda m: m.get("box@0.1", {}).get("f1")),
    ("box F1@0.5", lambda m: m.get("box@0.5", {}).get("f1")),
    ("true regions", lambda m: m["box@0.3"]["n_true"]),
    ("hit rate", lambda m: m["hit_rate"]),
    ("pixel AUROC", lambda m: m["pixel_auroc"]),
]


def _fmt(v) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def markdown_table(results: list[dict]) -> str:
    head = "| model | " + " | ".join(h for h, _ in COLUMNS) + " |"
    rule = "|---" * (len(COLUMNS) + 1) + "|"
    rows = ["| " + r["name"] + " | " + " | ".join(_fmt(get(r["metrics"])) for _, get in COLUMNS) + " |"
            for r in results]
    return "\n".join([head, rule, *rows])


def describe_rule(rule: dict) -> str:
    """The calibrated box rule in words."""
    return BoxRule.from_dict(rule).describe()


def per_type_table(results: list[dict]) -> str:
    """Markdown: localization per defect type (rows: model and type), where the test split has pixel truth."""
    head = "| model | defect type | detected | " + " | ".join(h for h, _ in TYPE_COLUMNS) + " |"
    rows = []
    for r in results:
        detected = r["metrics"].get("per_type_detection", {})
        for t, m in r["metrics"].get("per_type_localization", {}).items():
            rows.append(f"| {r['name']} | {t} | {_fmt(detected.get(t))} | " +
                        " | ".join(str(get(m)) if h == "true regions" else _fmt(get(m)) for h, get in TYPE_COLUMNS)
                        + " |")
    return "\n".join([head, "|---" * (len(TYPE_COLUMNS) + 3) + "|", *rows]) if rows else ""


def missed_table(results: list[dict]) -> str:
    """Markdown: where the true defects went at IoU 0.3 (found, or why not), one row per model with pixel truth."""
    from inspection.training.metrics import MISS_CAUSES, OFF_SIZES

    heads = ("found", *MISS_CAUSES)

    def extra(m: dict) -> str:  # box-off split and area ratio (absent from results written before them)
        sizes = " / ".join(str(m[k]) if k in m else "–" for k in OFF_SIZES)
        return f"{sizes} | " + (f"{m['area ratio']:.2f}" if "area ratio" in m else "–")

    rows = [f"| {r['name']} | {m['n']} | " + " | ".join(f"{m[k]} ({m[k] / m['n']:.0%})" for k in heads)
            + f" | {extra(m)} |" for r in results if (m := r["metrics"].get("missed@0.3")) and m["n"]]
    if not rows:
        return ""
    return ("| model | true defects | " + " | ".join(heads) + " | box off: too large / too small | box area / true |\n"
            + "|---" * (len(heads) + 4) + "|\n" + "\n".join(rows))


def plot_curves(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve, roc_curve

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4.2))
    for r in results:
        y, s = np.array(r["test_is_defect"]), np.array(r["test_scores"])
        fpr, tpr, _ = roc_curve(y, s)
        p, rc, _ = precision_recall_curve(y, s)
        a.plot(fpr, tpr, label=f"{r['name']} (AUROC {r['metrics']['image']['auroc']:.3f})")
        b.plot(rc, p, label=f"{r['name']} (AP {r['metrics']['image']['ap']:.3f})")
    a.plot([0, 1], [0, 1], "k:", lw=0.8)
    a.set(xlabel="false-positive rate (good parts rejected)", ylabel="true-positive rate", title="ROC, test split")
    b.set(xlabel="recall", ylabel="precision", title="precision-recall, test split")
    for ax in (a, b):
        ax.legend(fontsize=8, loc="lower right" if ax is a else "lower left")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def pick_examples(result: dict, n: int) -> list[int]:
    """A few test images per defect type first, then good ones with the highest scores (the hard ones)."""
    imgs = result["images"]
    types = sorted({im["defect_type"] for im in imgs} - {GOOD})
    picked: list[int] = []
    per_type = max(1, (n - max(2, n // 4)) // max(len(types), 1))
    for t in types:
        picked += [i for i, im in enumerate(imgs) if im["defect_type"] == t][:per_type]
    goods = sorted((i for i, im in enumerate(imgs) if im["defect_type"] == GOOD), key=lambda i: -imgs[i]["score"])
    return (picked + goods)[:n]


def overlay_grid(results: list[dict], indices: list[int], path: Path, tile_area: int = 220 * 220,
                 width: int = 1500) -> None:
    """One block per model, each a grid of the same test images in the same places, tiles shaped like the
    parts (a tall part gets a tall tile); each tile is labelled with verdict, score and number of boxes.
    Red boxes predicted, green boxes true."""
    import cv2

    root = Path(results[0]["root"])
    images = [read_image(root / results[0]["images"][i]["path"]) for i in indices]
    aspect = float(np.median([im.shape[1] / im.shape[0] for im in images])) if images else 1.0
    tw, th = round(math.sqrt(tile_area * aspect)), round(math.sqrt(tile_area / aspect))
    cols = max(1, min(len(indices), width // (tw + 4)))
    blocks = []
    for r in results:
        tiles = []
        for i, image in zip(indices, images):
            im = r["images"][i]
            full = upsample_attention(r["maps"][im["map_index"]], image.shape[:2], r["roi"])
            ov = overlay(image, full, [Box(**b) for b in im["boxes"]], im["true_boxes"] or [])
            verdict = "FAIL" if im["fail"] else "review" if im.get("flagged") else "pass"
            tiles.append(_tile(ov, (tw, th), f"{im['defect_type']}  {verdict} {im['score']:.2f}",
                               f"{len(im['boxes'])} box{'es' if len(im['boxes']) != 1 else ''}"))
        tiles += [np.full_like(tiles[0], 255)] * (-len(tiles) % cols)
        rows = [np.concatenate(tiles[k:k + cols], axis=1) for k in range(0, len(tiles), cols)]
        grid = np.concatenate(rows, axis=0)
        blocks += [_head_label(r["name"], grid.shape[1]), grid]
    cv2.imwrite(str(path), np.concatenate(blocks, axis=0)[..., ::-1])


def _tile(ov: np.ndarray, size: tuple[int, int], line1: str, line2: str) -> np.ndarray:
    """An overlay fitted into a (w, h) tile with two caption lines above it and a white margin."""
    import cv2

    tw, th = size
    s = min(tw / ov.shape[1], th / ov.shape[0])
    ov = cv2.resize(ov, (max(1, round(ov.shape[1] * s)), max(1, round(ov.shape[0] * s))), interpolation=cv2.INTER_AREA)
    tile = np.full((th + 30, tw + 4, 3), 255, np.uint8)
    tile[30:30 + ov.shape[0], 2:2 + ov.shape[1]] = ov
    for k, text in enumerate((line1, line2)):
        cv2.putText(tile, text, (3, 12 + 13 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.36, (0, 0, 0), 1, cv2.LINE_AA)
    return tile


def _head_label(text: str, w: int) -> np.ndarray:
    import cv2

    cell = np.full((28, w, 3), 255, np.uint8)
    cv2.putText(cell, text, (3, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return cell


def write_report(results: list[dict], out_dir: str | Path, n_overlays: int = 16, extra_md: str = "",
                 curves: dict[str, Path] | None = None) -> Path:
    """Write the report folder and return the path of report.html."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot_curves(results, out / "roc_pr.png")
    if n_overlays:
        overlay_grid(results, pick_examples(results[0], n_overlays), out / "overlays.png")
    summary = {r["name"]: {"metrics": r["metrics"], "threshold": r["threshold"], "box_rule": r["box_rule"]}
               for r in results}
    (out / "metrics.json").write_text(json.dumps(summary, indent=1))
    curve_md = ""
    for name, src in (curves or {}).items():
        if Path(src).exists():
            dst = out / f"curves_{name}.png"
            shutil.copyfile(src, dst)
            curve_md += f"\n### Training curves: {name}\n\n![]({dst.name})\n"
    thresholds = "\n".join(f"- {r['name']}: fail at score ≥ {r['threshold']:.3f}; {describe_rule(r['box_rule'])}"
                           for r in results)
    types = per_type_table(results)
    types = (f"### Per defect type\n\n{types}\n\nBox and pixel figures per type are over that type's parts and every "
             "good part (a box on a good part counts against each type).\n\n") if types else ""
    missed = missed_table(results)
    missed = (f"### Where the true defects went (IoU 0.3)\n\n{missed}\n\nA defect is found when a box matches it "
              "one-to-one at IoU 0.3; otherwise the first of: its part passed (no boxes drawn), the map stays under "
              "the box threshold on it, the box on it also covers another defect, the box on it is too large, too "
              "small or shifted, no box at all (its region was dropped). Of the boxes off, those at least twice "
              "or at most half the defect's box; box area / true: the median, over the defects a box touches, of "
              "the best such box's area over the defect's box (above 1: boxes larger than the defects).\n\n"
              ) if missed else ""
    md = (f"# Inspection report\n\n{extra_md}\n## Test split\n\n{markdown_table(results)}\n\n{types}{missed}"
          f"Thresholds calibrated on the validation split:\n{thresholds}\n\n"
          f"![ROC and PR](roc_pr.png)\n\n## Attention overlays (red: predicted boxes, green: true boxes)\n\n"
          f"![overlays](overlays.png)\n{curve_md}")
    (out / "results.md").write_text(md)
    (out / "report.html").write_text(_markdown_to_html(md))
    return out / "report.html"


def _markdown_to_html(md: str) -> str:
    """Just enough Markdown (headings, tables, images, lists) for a self-contained report page."""
    body, table = [], []
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            table.append([c.strip() for c in line.strip("|").split("|")])
            continue
        if table:
            rows = [r for r in table if not set("".join(r)) <= set("-")]
            body.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in rows[0]) + "</tr>" +
                        "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
                        + "</table>")
            table = []
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line.lstrip('#').strip())}</h{level}>")
        elif line.startswith("!["):
            src = line[line.index("(") + 1:line.rindex(")")]
            body.append(f'<img src="{html.escape(src)}" style="max-width:100%">')
        elif line.startswith("- "):
            body.append(f"<li>{html.escape(line[2:])}</li>")
        elif line.strip():
            body.append(f"<p>{html.escape(line)}</p>")
    style = ("body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}td:first-child{text-align:left}")
    head = f"<!doctype html><meta charset=utf-8><title>Inspection report</title><style>{style}</style>"
    return head + "\n".join(body)
