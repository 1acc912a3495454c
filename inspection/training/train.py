"""Train an ABN (or the plain-CNN baseline) on a dataset manifest: the loop, checkpoints, logs, curves.

    >>> best = train(cfg, manifest, out_dir="runs/abn", kind="abn")      # -> runs/abn/best.pt

Writes to out_dir: config.yaml, manifest.json, last.pt (resumable), best.pt (by validation; at the end
with the good training parts' feature bank, inspection/core/novelty.py),
history.csv / history.json (loss terms per epoch) and training_curves.png.

Several GPUs or machines: the same command under torchrun (DDP, NCCL on GPUs, gloo on CPUs), e.g.
`torchrun --nproc_per_node 4 -m inspection.cli train --config ...`. train.batch_size stays the global batch
(each process takes its share) so one config means the same training on any number of processes; BatchNorm
is synchronized across GPUs (SyncBatchNorm; on CPUs each process keeps its own statistics). Rank 0 writes
the files and shows the progress.
"""
from __future__ import annotations

import csv
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader

from inspection.core.layout import Manifest, mask_targets
from inspection.core.preprocess import input_size, scale_note
from inspection.model.abn import CheckpointError, build_model, checkpoint_config, read_checkpoint
from inspection.model.config import Config, dump_config
from inspection.model.losses import TERMS, abn_loss
from inspection.training.loader import (
    BalancedBatchSampler,
    InspectionDataset,
    default_steps,
)
from inspection.training.metrics import image_metrics
from inspection.training.predict import add_feature_bank

# what a resume may change: how long it trains, where things are, and how many CPU threads it uses; any other
# setting would make the run's config.yaml describe a model it did not train
RESUMABLE = ("train.epochs", "train.early_stopping", "train.threads", "train.out_dir", "data.root", "data.cache")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def plain_abn(cfg: Config) -> Config:
    """The plain-ABN baseline of a config: the same model and schedule without the map losses
    (W_normal = W_defect = W_spread = 0, no pasted defects), i.e. the attention branch learns from classification alone;
    its score is the perception branch's alone."""
    plain = cfg.model_copy(deep=True)
    plain.train.w_normal = 0.0
    plain.train.w_defect = 0.0
    plain.train.w_spread = 0.0
    plain.train.synthetic_defects = 0.0
    plain.model.map_score = 0.0  # a map no loss shapes is no defect probability
    return plain


def _param_groups(model, cfg: Config) -> list[dict]:
    """Pretrained trunk at lr · backbone_lr_scale, new heads at lr, and the attention branch's BatchNorm and
    bias parameters (plus the 1-channel map head) at lr · map_lr_scale.

    Those are scalars that must travel far: the map's BN bias to about −4 so that sigmoid gives ~0 on good
    regions, the class-evidence BN biases so that evidence becomes sparse. At the heads' lr a short CPU
    fine-tune would never get them there.
    """
    pre = cfg.model.pretrained or bool(cfg.model.weights)
    scale = cfg.train.backbone_lr_scale if pre and cfg.model.backbone != "tiny" else 1.0
    groups: dict[str, list] = {"trunk": [], "heads": [], "map": []}
    for name, p in model.named_parameters():
        if p.requires_grad:
            key = ("trunk" if name.startswith(("features.", "perception.", "attention_branch.body.0.")) else
                   "map" if name.startswith("attention_branch.to_map.") or
                   (name.startswith("attention_branch.") and p.ndim == 1) else "heads")
            groups[key].append(p)
    lrs = {"trunk": cfg.train.lr * scale, "heads": cfg.train.lr, "map": cfg.train.lr * cfg.train.map_lr_scale}
    return [{"params": ps, "lr": lrs[k]} for k, ps in groups.items() if ps]


def _make_optimizer(model, cfg: Config):
    groups = _param_groups(model, cfg)
    if cfg.train.optimizer == "sgd":
        return torch.optim.SGD(groups, momentum=cfg.train.momentum, weight_decay=cfg.train.weight_decay, nesterov=True)
    return torch.optim.AdamW(groups, weight_decay=cfg.train.weight_decay)


def _make_scheduler(optimizer, cfg: Config, steps_per_epoch: int):
    total, warm = cfg.train.epochs * steps_per_epoch, cfg.train.warmup_epochs * steps_per_epoch

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if cfg.train.scheduler == "none":
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(total - warm, 1)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def forward_loss(model, batch, kind: str, cfg: Config, device) -> tuple[torch.Tensor, dict, object]:
    """Loss, its terms, and the model's output (logits for the CNN, ABNOutput for the ABN)."""
    labels = batch["label"].to(device)
    out = model(batch["image"].to(device))
    if kind == "cnn":
        loss = F.cross_entropy(out, labels)
        return loss, {**dict.fromkeys(TERMS, 0.0), "classify": loss.item(), "total": loss.item()}, out
    loss, terms = abn_loss(out, labels, good_index=0, w_normal=cfg.train.w_normal, strict=cfg.train.strict,
                           target_maps=batch["target_map"].to(device), has_target=batch["has_target"].to(device),
                           gamma_map=cfg.train.gamma_map, w_defect=cfg.train.w_defect,
                           defect_topk=cfg.train.defect_topk, defect_on_good=cfg.train.defect_on_good,
                           defect_pool=cfg.train.defect_pool, map_form=cfg.train.map_loss,
                           map_target=cfg.train.map_target, w_spread=cfg.train.w_spread,
                           spread_cells=cfg.train.spread_cells,
                           synthetic=batch["synthetic"].to(device) if "synthetic" in batch else None)
    return loss, terms, out


@torch.no_grad()
def validate(model, loader, kind: str, cfg: Config, device) -> dict:
    """Validation loss terms, image AUROC and the mean attention on good images."""
    model.eval()
    sums: dict[str, float] = {}
    scores, is_defect, att_good = [], [], []
    n = 0
    for batch in loader:
        _, terms, out = forward_loss(model, batch, kind, cfg, device)
        bs = len(batch["label"])
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + v * bs
        n += bs
        score = 1 - out.softmax(1)[:, 0] if kind == "cnn" else model.defect_score(out.logits, out.attention)
        scores += score.tolist()
        is_defect += (batch["label"] != 0).tolist()
        if kind != "cnn":
            good = batch["label"] == 0
            att_good += out.attention[good.to(device)].mean(dim=(1, 2)).tolist()
    m = image_metrics(is_defect, scores, 0.5)
    result = {f"val_{k}": v / n for k, v in sums.items()}
    result.update(val_auroc=m["auroc"], val_att_good=float(np.mean(att_good)) if att_good else float("nan"))
    return result


def _is_better(new: dict, best: dict | None) -> bool:
    """Validation AUROC to two decimals (finer steps are noise on a small val split), then the val loss."""
    if best is None:
        return True
    return (round(new["val_auroc"], 2), -new["val_total"]) > (round(best["val_auroc"], 2), -best["val_total"])


def save_checkpoint(path: Path, model, cfg: Config, manifest: Manifest, kind: str, extra: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"kind": kind, "config": cfg.model_dump(mode="json"), "classes": manifest.classes,
                "manifest_hash": manifest.content_hash, "state_dict": model.state_dict(), **extra}, tmp)
    tmp.replace(path)


def plot_history(history: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for key in ("total", *TERMS[:-1]):
        if any(h.get(f"train_{key}", 0) for h in history):
            axes[0].plot(ep, [h[f"train_{key}"] for h in history], label=f"train {key}")
    axes[0].plot(ep, [h["val_total"] for h in history], "k--", label="val total")
    axes[0].set(title="loss terms", xlabel="epoch")
    axes[0].legend(fontsize=7)
    axes[1].plot(ep, [h["val_auroc"] for h in history], "o-")
    axes[1].set(title="validation image AUROC", xlabel="epoch")
    axes[2].plot(ep, [h["val_att_good"] for h in history], "o-", color="tab:red")
    axes[2].set(title="mean attention on good val images", xlabel="epoch", ylim=(0, 1))
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank): under torchrun joins the process group; (0, 1, 0) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, 0
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world, local


def train_one_epoch(model, loader, optimizer, scheduler, scaler, kind: str, cfg: Config, device, desc: str = "",
                    progress: bool = False) -> dict:
    """One pass over the loader (as torchvision's references do it): mean loss terms as train_<term>, the last
    learning rate and images/s, averaged over all processes when distributed."""
    from tqdm import tqdm

    core = model.module if hasattr(model, "module") else model
    model.train()
    if cfg.train.freeze_features:
        core.features.eval()
    use_amp = scaler.is_enabled()
    sums: dict[str, float] = {}
    t0, seen = time.time(), 0
    bar = tqdm(loader, desc=desc, leave=False, disable=not progress, file=sys.stderr)
    for batch in bar:
        with torch.autocast(device.type, enabled=use_amp):
            loss, terms, _ = forward_loss(model, batch, kind, cfg, device)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + v
        seen += len(batch["label"])
        bar.set_postfix({k: f"{v:.3f}" for k, v in terms.items() if k not in ("map", "spread") or v})
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:  # terms over all processes
        world = dist.get_world_size()
        keys = sorted(sums)
        total = torch.tensor([sums[k] for k in keys] + [seen], dtype=torch.float64, device=device)
        dist.all_reduce(total)
        sums = {k: v / world for k, v in zip(keys, total.tolist())}
        seen = int(total[-1])
    return {**{f"train_{k}": v / len(loader) for k, v in sums.items()}, "lr": scheduler.get_last_lr()[-1],
            "images_per_s": seen / (time.time() - t0)}


def with_input_size(cfg: Config, manifest: Manifest) -> Config:
    """The config with data.image_size concrete ('auto' resolved on the dataset), as checkpoints keep it."""
    size = input_size(cfg.data, manifest.items)
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"image_size": size})})


RUN_FILES = ("config.yaml", "manifest.json", "last.pt", "best.pt", "history.csv", "history.json",
             "training_curves.png")


def train(cfg: Config, manifest: Manifest, out_dir: str | Path, kind: str = "abn", resume: bool = True,
          progress: bool = True, init_state: dict | None = None) -> Path:
    """Train and return the path of best.pt. `kind`: 'abn' or 'cnn' (plain classifier, Grad-CAM baseline).

    With data.image_size 'auto', a run whose best validation AUROC stays under data.retry_below trains again
    at the next cap of data.retry_max_pixels (in out_dir/input_<HxW>), as long as the last run gained on the
    one before it; the run with the best validation AUROC is kept: out_dir then holds it, the others sit in
    their input_<HxW> folders, and input_search.json says what was tried."""
    best = _train_search(cfg, manifest, Path(out_dir), kind, resume, progress, init_state)
    if dist.is_available() and dist.is_initialized():  # torchrun: leave the group together, not at interpreter exit
        dist.barrier()  # (a process that exited while the lead still wrote its files could abort in gloo)
        dist.destroy_process_group()
    return best


def _train_search(cfg: Config, manifest: Manifest, out: Path, kind: str, resume: bool, progress: bool,
                  init_state: dict | None) -> Path:
    """train() in one process group: the first run, then the input retry."""
    search = out / "input_search.json"
    if not resume:
        search.unlink(missing_ok=True)
    elif search.exists():  # a search that ended (or was killed while moving the kept run into place)
        record = _keep(out, json.loads(search.read_text()))
        if progress:
            print(f"{out}: trained at several input sizes before, kept {record['kept']} ({search.name}); "
                  "train into a new folder or with --restart to train again", file=sys.stderr)
        return out / "best.pt"
    best = _train_run(cfg, manifest, out, kind, resume, progress, init_state)
    steps = _larger_inputs(cfg, manifest, out, init_state)
    if not steps or not best.exists():
        return best
    below = cfg.data.retry_below
    tried = [{"size": "{}x{}".format(*steps[0][0]), "val_auroc": _best_val_auroc(out), "folder": "."}]
    for hw, larger in steps[1:]:
        if not retry_again([t["val_auroc"] for t in tried], below):
            break
        size, last = "{}x{}".format(*hw), tried[-1]["val_auroc"]
        if progress:
            print(f"best validation AUROC {last:.4f} at {tried[-1]['size']}, under data.retry_below {below:g}: "
                  f"training again at {size}", file=sys.stderr)
        _train_run(larger, manifest, out / f"input_{size}", kind, resume, progress, init_state)
        tried.append({"size": size, "val_auroc": _best_val_auroc(out / f"input_{size}"), "folder": f"input_{size}"})
    if len(tried) == 1:
        return best
    kept = max(tried, key=lambda t: t["val_auroc"] if np.isfinite(t["val_auroc"]) else -1.0)  # the first on ties
    record = {"tried": tried, "kept": kept["size"], "kept_folder": kept["folder"],
              "first_folder": f"input_{tried[0]['size']}"}
    search.write_text(json.dumps(record, indent=1))
    _keep(out, record)
    if progress:
        print(f"kept the input {kept['size']} (validation AUROC " +
              ", ".join(f"{t['val_auroc']:.4f} at {t['size']}" for t in tried) + ")", file=sys.stderr)
    return out / "best.pt"


def retry_again(val_aurocs: list[float], below: float) -> bool:
    """Whether training goes on to the next input after runs (in order) with these best validation AUROCs: the
    last is under `below` and, after the first, gained on the one before it."""
    last = val_aurocs[-1]
    return last < below and (len(val_aurocs) == 1 or last > val_aurocs[-2])


def _larger_inputs(cfg: Config, manifest: Manifest, out: Path, init_state: dict | None
                   ) -> list[tuple[tuple[int, int], Config]]:
    """The first run's input size (height, width), then each larger size the caps of data.retry_max_pixels give
    with the config that trains at it; empty when the first needs no retry: not 'auto', a fine-tune, several processes,
    validation AUROC at retry_below or above, or no larger size."""
    d = cfg.data
    if (d.image_size != "auto" or not d.retry_below or init_state is not None or _distributed()[1] > 1
            or not (out / "history.json").exists() or not _best_val_auroc(out) < d.retry_below):
        return []
    steps = [(input_size(d, manifest.items), cfg)]
    for cap in d.retry_max_pixels:
        size = input_size(d.model_copy(update={"max_pixels": max(d.max_pixels, cap)}), manifest.items)
        if math.prod(size) > math.prod(steps[-1][0]):
            steps.append((size, cfg.model_copy(update={"data": d.model_copy(update={"image_size": size})})))
    return steps if len(steps) > 1 else []


def _best_val_auroc(folder: Path) -> float:
    rows = json.loads((folder / "history.json").read_text())
    return max((float(r["val_auroc"]) for r in rows if np.isfinite(r["val_auroc"])), default=float("nan"))


def _keep(out: Path, record: dict) -> dict:
    """Put the kept run's files in out: the first run's go to its input_<HxW> folder, then the kept one's come up;
    each step is written to input_search.json when done, so a run killed while moving finishes when resumed."""
    search = out / "input_search.json"
    if record["kept"] in ("first", "larger"):  # the record of earlier releases: two runs, fixed folder names
        record = {**record, "kept_folder": "." if record["kept"] == "first" else "larger_input",
                  "first_folder": "first_input"}
    if record["kept_folder"] != ".":
        if not record.get("moved_first"):
            _move_run(out, out / record["first_folder"])
            record = {**record, "moved_first": True}
            search.write_text(json.dumps(record, indent=1))
        _move_run(out / record["kept_folder"], out)
    record = {**record, "done": True}
    search.write_text(json.dumps(record, indent=1))
    return record


def _move_run(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in RUN_FILES:
        if (src / name).exists():
            os.replace(src / name, dst / name)


def _train_run(cfg: Config, manifest: Manifest, out: Path, kind: str, resume: bool, progress: bool,
               init_state: dict | None) -> Path:
    rank, world, local = _distributed()
    lead = rank == 0  # writes files, shows progress
    progress = progress and lead
    last = out / "last.pt"
    cfg = _start_run(cfg, manifest, out, kind, resume, lead, progress)
    seed_everything(cfg.train.seed)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    train_loader, val_loader, sampler, steps = _loaders(cfg, manifest, rank, world, kind)
    model, core = _model(cfg, len(manifest.classes), kind, device, init_state, world, local)
    optimizer = _make_optimizer(core, cfg)
    scheduler = _make_scheduler(optimizer, cfg, steps)
    scaler = torch.amp.GradScaler(enabled=device.type == "cuda" and cfg.train.amp != "off")
    history, best, stale, start = [], None, 0, 0
    if resume and last.exists():
        history, best, stale, start = _resume(last, core, optimizer, scheduler, device)
        sampler.epoch = start

    for epoch in range(start, cfg.train.epochs):
        row = {"epoch": epoch + 1, **train_one_epoch(model, train_loader, optimizer, scheduler, scaler, kind, cfg,
                                                     device, f"{kind} {out.name} epoch {epoch + 1}/{cfg.train.epochs}",
                                                     progress)}
        row.update(validate(core, val_loader, kind, cfg, device))
        history.append(row)
        improved = _is_better(row, best)
        best, stale = (row, 0) if improved else (best, stale + 1)
        if lead:
            if improved:
                save_checkpoint(out / "best.pt", core, cfg, manifest, kind, {"epoch": epoch + 1, "val": row})
            save_checkpoint(last, core, cfg, manifest, kind, {
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "epoch": epoch,
                "history": history, "best": best, "stale": stale, "torch_rng": torch.get_rng_state()})
            _write_history(history, out)
        if progress:
            print(f"{kind} {out.name} epoch {epoch + 1}: loss {row['train_total']:.3f} "
                  f"(normal {row['train_normal']:.3f}) val AUROC {row['val_auroc']:.4f} "
                  f"val att(good) {row['val_att_good']:.3f} {row['images_per_s']:.1f} img/s"
                  f"{' *' if improved else ''}", file=sys.stderr)
        if _early_stop(cfg, stale, world, device):
            print(f"early stop after epoch {epoch + 1}: no validation gain in {stale} epochs", file=sys.stderr)
            break
    if lead:
        _write_history(history, out)
        plot_history(history, out / "training_curves.png", f"{kind} ({out.name})")
        if (out / "best.pt").exists():
            bank = add_feature_bank(out / "best.pt", manifest)
            if progress:
                print(f"feature bank: {len(bank)} cells of the good training parts kept in best.pt", file=sys.stderr)
    return out / "best.pt"


def _start_run(cfg: Config, manifest: Manifest, out: Path, kind: str, resume: bool, lead: bool,
               progress: bool) -> Config:
    """The run's config with its input size resolved; refuses a folder holding another run before writing to
    it, then writes config.yaml and manifest.json there."""
    auto = cfg.data.image_size == "auto"
    cfg = with_input_size(cfg, manifest)
    if progress:
        stride = cfg.model.map_stride or cfg.model.attention_stride
        print(("data.image_size auto: " if auto else "") + scale_note(cfg.data, manifest.items,
              tuple(cfg.data.image_size), stride), file=sys.stderr)
    last = out / "last.pt"
    if resume and last.exists():  # refuse before touching anything of the run that folder holds
        state = read_checkpoint(last)
        if state.get("kind") != kind or state.get("manifest_hash") != manifest.content_hash:
            raise CheckpointError(f"{last}: this folder holds a run of another model kind or dataset; nothing was "
                                  "changed there: use a new --out folder, or delete that one to start over")
        changed = changed_settings(checkpoint_config(state, last), cfg)
        if changed:
            raise CheckpointError(f"{last}: this run was trained with other settings ({'; '.join(changed)}); "
                                  "nothing was changed there: resume with the run's own settings (its config.yaml; "
                                  f"only {', '.join(RESUMABLE)} may change), or train into a new --out folder")
    if lead:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(dump_config(cfg))
        manifest.save(out / "manifest.json")
    return cfg


def changed_settings(run: Config, new: Config) -> list[str]:
    """The settings (dotted keys, 'was → now') in which `new` differs from a run's own config, other than
    RESUMABLE: a resume that would change how the run's model is made, so its folder would no longer say."""
    def flat(tree, prefix=""):
        for k, v in tree.items():
            if isinstance(v, dict):
                yield from flat(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}", v
    was, now = dict(flat(run.model_dump(mode="json"))), dict(flat(new.model_dump(mode="json")))
    return [f"{k}: {was.get(k)!r} → {now.get(k)!r}" for k in sorted(was.keys() | now.keys())
            if k not in RESUMABLE and was.get(k) != now.get(k)]


def _loaders(cfg: Config, manifest: Manifest, rank: int, world: int, kind: str):
    """Train loader (balanced good/defect batches, this process's share), val loader, the sampler, steps/epoch.
    Pasted synthetic defects only for models with a map (kind "abn")."""
    train_set = InspectionDataset(manifest, "train", cfg.data, augment=True,
                                  mask_targets=mask_targets(manifest, cfg.train.mask_supervision, cfg.train.seed),
                                  synthetic=cfg.train.synthetic_defects if kind == "abn" else 0.0,
                                  shapes=tuple(cfg.train.paste_shapes))
    val_set = InspectionDataset(manifest, "val", cfg.data, augment=False)
    steps = cfg.train.steps_per_epoch or default_steps(len(train_set), cfg.train.batch_size)
    sampler = BalancedBatchSampler([lb == 0 for lb in train_set.labels], cfg.train.batch_size, steps, cfg.train.seed,
                                   rank, world)
    return (DataLoader(train_set, batch_sampler=sampler), DataLoader(val_set, batch_size=cfg.train.batch_size),
            sampler, steps)


def _model(cfg: Config, n_classes: int, kind: str, device, init_state: dict | None, world: int, local: int):
    """The model to step (DDP-wrapped when distributed) and the module itself (checkpoints, validation)."""
    model = build_model(cfg.model, n_classes, kind, cfg.train.defect_topk).to(device)
    if init_state is not None:
        model.load_state_dict(init_state)
    if cfg.train.freeze_features:
        for p in model.features.parameters():
            p.requires_grad_(False)
    core = model
    if world > 1:
        if device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            core = model
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local] if device.type == "cuda" else None)
    return model, core


def _resume(last: Path, core, optimizer, scheduler, device) -> tuple[list, dict | None, int, int]:
    """Model, optimizer, scheduler and RNG from last.pt; returns history, best row, stale epochs, next epoch."""
    state = read_checkpoint(last, device)
    core.load_state_dict(state["state_dict"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"].cpu())  # map_location moved it to the GPU
    print(f"resuming {last.parent} at epoch {state['epoch'] + 2}", file=sys.stderr)
    return state["history"], state["best"], state["stale"], state["epoch"] + 1


def _early_stop(cfg: Config, stale: int, world: int, device) -> bool:
    stop = bool(cfg.train.early_stopping and stale >= cfg.train.early_stopping)
    if world > 1:  # rank 0 decides for all (BatchNorm statistics may differ per process on CPUs)
        flag = torch.tensor([int(stop)], device=device)
        dist.broadcast(flag, 0)
        stop = bool(flag.item())
    return stop


def _write_history(history: list[dict], out: Path) -> None:
    (out / "history.json").write_text(json.dumps(history, indent=1))
    keys = list(dict.fromkeys(k for h in history for k in h))
    with open(out / "history.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(history)
