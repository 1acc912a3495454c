"""Retrain from reviewed parts: export the reviews, merge them with the earlier data, fine-tune the production
model (L_classify + L_att + W_normal·L_normal + γ·L_map), export, gate on the golden set, promote or not.

    >>> retrain(registry="models", log="runs/line/failures", base_data="data/synthetic", golden="data/golden",
    ...         out="runs/retrain")
    {'status': 'promoted', 'version': ..., 'new_reviews': 14, ...}
    >>> retrain(registry="models/housing-b", ..., product="housing-b")   # that product's reviews, model, registry

A station with several products has a registry per product: `product` takes only the reviews of that product's
parts, fine-tunes its production model, gates it on its golden set and promotes into its registry; the other
products' registries are never touched (each product's retrain keeps its own state file in `out`).

Safety: one retrain at a time (a lock file in `out`); all work happens under `out/<run>/`, and the registry
is touched only at the very end (add, then an atomic pointer switch), so an interrupted retrain leaves
production as it was and can simply be run again. Fewer new reviews than `min_reviews`: nothing to do.
"""
from __future__ import annotations

import fcntl
import json
import re
import sys
import time
from pathlib import Path

from inspection.core.errors import UserError
from inspection.core.layout import find_images, scan_dataset
from inspection.deploy.atomic import write_atomic
from inspection.deploy.registry import Registry
from inspection.deploy.store.factory import open_store
from inspection.deploy.store.schema import StoreUnavailable
from inspection.deploy.store.to_dataset import export_reviewed
from inspection.model.abn import load_checkpoint
from inspection.training.export import export_package
from inspection.training.gate import gate
from inspection.training.train import train

CHECKPOINT = "checkpoint.pt"  # kept beside each registered package: the weights later fine-tunes start from
# the fine-tuning recipe, before the caller's overrides. Measured (benchmarks/review_rounds.py): at the
# training lr (0.003, all layers) every candidate of 6 rounds regressed on the golden set and was rejected;
# at lr 0.0005 with the feature extractor frozen (the patent's fine-tuning), round 2 was promoted.
FINE_TUNE = ["train.lr=0.0005", "train.freeze_features=true", "train.warmup_epochs=0", "train.epochs=2"]


class RetrainError(UserError, RuntimeError):
    """Retraining cannot go on; the message says why. Production is untouched."""


def _merge(base: Path | None, reviewed: Path, out: Path) -> dict:
    """A dataset folder of links: the earlier data (replay) plus the reviewed parts.

    Duplicates by pixel content (SHA-256 of the decoded pixels: the runner re-encodes frames, so file bytes
    differ): a reviewed part that is also in the earlier data replaces it there (the review is the newer label
    and may carry a corrected map); the same part reviewed twice is kept once.
    """
    def link(src: Path, root: Path) -> None:
        dst = out / src.relative_to(root)
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.is_symlink() or dst.exists():
            dst.unlink()
        dst.symlink_to(src.resolve())

    def record_id(f) -> int:  # reviewed files are named <station>_<part>_<record id>
        m = re.search(r"(\d+)$", f.path.stem)
        return int(m.group(1)) if m else -1

    seen: dict[str, Path] = {}
    counts = {"replayed": 0, "reviewed": 0, "replaced_by_review": 0, "repeated_reviews": 0}
    for f in sorted(find_images(reviewed, complete=False)[0], key=record_id, reverse=True):  # newest record first
        h = _pixels_hash(f.path)
        if h in seen:
            counts["repeated_reviews"] += 1
            continue
        seen[h] = f.path
        link(f.path, reviewed)
        counts["reviewed"] += 1
        if f.corrected is not None:
            link(f.corrected, reviewed)
    for f in find_images(base, complete=False)[0] if base is not None else []:
        if _pixels_hash(f.path) in seen:
            counts["replaced_by_review"] += 1
            continue
        link(f.path, base)
        counts["replayed"] += 1
        for extra in (f.mask, f.corrected):
            if extra is not None:
                link(extra, base)
    return counts


def _pixels_hash(path: Path) -> str:
    import hashlib

    from inspection.core.imageio import ImageError, read_frame

    try:
        img = read_frame(path)
    except ImageError:
        return "unreadable:" + str(path)
    return hashlib.sha256(repr(img.shape).encode() + img.tobytes()).hexdigest()


def retrain(registry: str | Path, log: str | Path, golden: str | Path, out: str | Path,
            base_data: str | Path | None = None, min_reviews: int = 5, overrides: list[str] | None = None,
            progress: bool = True, db: str = "", product: str | None = None) -> dict:
    """`db`: the failure log's database when not <log>/failures.db (a SQLite file or a postgresql:// URL);
    `product`: only that product's reviews (None: every review in the log)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".retrain.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RetrainError(f"{out}: another retrain is running (lock held); nothing was changed") from None
        return _retrain(Registry(registry), Path(log), Path(golden), out,
                        Path(base_data) if base_data else None, min_reviews, overrides or [], progress, db, product)


def _fine_tune_data(store, ckpt_path: Path, base: Path | None, run: Path, overrides: list[str], say,
                    product: str | None):
    """The reviewed parts (of the product) exported and merged with the earlier data into run/data; the
    fine-tuning config (the production model's, without pretrained weights, with FINE_TUNE and the overrides)
    and its manifest."""
    reviewed = run / "reviewed"
    counts = export_reviewed(store, reviewed, product=product)
    say(f"reviewed dataset: {counts}")
    model, cfg, ckpt = load_checkpoint(ckpt_path)
    data = run / "data"
    merged = _merge(base, reviewed, data)
    say(f"merged dataset: {merged}")
    for kind in (p.name for p in (data / "defect").iterdir()) if (data / "defect").is_dir() else ():
        if kind not in ckpt["classes"]:
            raise RetrainError(f"reviewed defect type {kind!r} is not a class of the production model "
                               f"{ckpt['classes']}; a new class needs a full training run")
    import yaml

    from inspection.model.config import load_config

    base_cfg = cfg.model_dump(mode="json")
    base_cfg["model"]["pretrained"] = False  # the weights come from production
    (run / "base_config.yaml").write_text(yaml.safe_dump(base_cfg))
    # the merged folder is split afresh: a split file of the earlier data names none of the reviewed parts (it
    # would drop them all) and belongs to another folder
    cfg = load_config(run / "base_config.yaml", [f"data.root={data}", "data.split_file=null", *FINE_TUNE, *overrides])
    manifest = scan_dataset(data, cfg.data)
    if manifest.classes != list(ckpt["classes"]):
        raise RetrainError(f"the merged dataset's classes {manifest.classes} differ from the model's {ckpt['classes']} "
                           "(label_mode or missing types)")
    return counts, merged, cfg, manifest, ckpt


def _retrain(reg: Registry, log: Path, golden: Path, out: Path, base: Path | None, min_reviews: int,
             overrides: list[str], progress: bool, db: str, product: str | None) -> dict:
    what = f"retrain {product}" if product else "retrain"
    say = (lambda m: print(f"{what}: {m}", file=sys.stderr)) if progress else (lambda m: None)
    production = reg.current()
    if production is None:
        raise RetrainError(f"{reg.root}: no production model to fine-tune (promote one first)")
    ckpt_path = reg.path(production) / CHECKPOINT
    if not ckpt_path.exists():
        raise RetrainError(f"{ckpt_path}: production version {production} has no checkpoint to fine-tune from "
                           "(register packages with --checkpoint)")
    state_path = out / (f"state-{product}.json" if product else "state.json")
    state = json.loads(state_path.read_text()) if state_path.exists() else {"last_review_ts": 0.0}
    try:
        store = open_store(db, log, create=False)
    except (FileNotFoundError, StoreUnavailable) as exc:
        raise RetrainError(str(exc)) from None
    n_new, newest = store.reviews_since(state["last_review_ts"], product)
    if n_new < min_reviews:
        say(f"{n_new} new review(s) since the last run, fewer than {min_reviews}: nothing to do")
        return {"status": "nothing to do", "new_reviews": int(n_new), "production": production}

    run = out / ((f"{product}-" if product else "") + time.strftime("%Y%m%d-%H%M%S"))
    say(f"{n_new} new reviews")
    counts, merged, cfg, manifest, ckpt = _fine_tune_data(store, ckpt_path, base, run, overrides, say, product)
    say(f"fine-tuning {production} on {len(manifest.items)} images (manifest {manifest.content_hash[:12]})")
    best = train(cfg, manifest, run / "model", kind="abn", resume=True, progress=progress,
                 init_state=ckpt["state_dict"])
    candidate = export_package(best, run / "package", manifest, version=f"{run.name}-from-{production}"[:60],
                               force=True, progress=progress)
    decision = gate(candidate, reg.path(production), golden, run / "gate")
    result = {"status": "rejected", "new_reviews": int(n_new), "production": production,
              "candidate": json.loads((candidate / "metadata.json").read_text())["model_version"],
              "manifest_hash": manifest.content_hash, "reasons": decision["reasons"],
              "notes": decision["notes"],
              "report": str(run / "gate" / "report.md"), "reviewed": counts, "merged": merged,
              "candidate_metrics": {k: decision["candidate"]["metrics"].get(k)
                                    for k in ("auroc", "false_reject", "miss", "box_f1@0.3")}}
    if decision["promote"]:
        version = reg.add(candidate, parent=production, note=f"retrain {run.name}", checkpoint=best)
        reg.promote(version, f"passed the gate ({run / 'gate' / 'report.md'})")
        result.update(status="promoted", version=version)
    state["last_review_ts"] = newest
    write_atomic(state_path, json.dumps(state))
    (run / "result.json").write_text(json.dumps(result, indent=1))
    say(f"{result['status']}: {result['candidate']} (report {result['report']})")
    return result
