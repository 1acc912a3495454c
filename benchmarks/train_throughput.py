"""Training and evaluation throughput (images/s) per backbone, measured side by side in one run.

    python benchmarks/train_throughput.py [--sizes 160] [--batch 16] [--steps 6]

Prints a table and writes benchmarks/results/train_throughput.json. Inputs are random tensors of the
model's input size (throughput does not depend on content); the first step of each model is warm-up.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from inspection.model.abn import build_model
from inspection.model.config import ModelConfig
from inspection.model.losses import abn_loss


def measure(backbone: str, kind: str, size: int, batch: int, steps: int) -> dict:
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone=backbone, pretrained=False), 6, kind)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 6, (batch,))
    times = []
    model.train()
    for _ in range(steps + 1):
        t = time.perf_counter()
        out = model(x)
        loss = torch.nn.functional.cross_entropy(out, y) if kind == "cnn" else abn_loss(out, y, 0, 1.0)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    train_ips = batch * steps / sum(times[1:])
    model.eval()
    xe = torch.randn(32, 3, size, size)
    with torch.no_grad():
        model(xe)
        t = time.perf_counter()
        for _ in range(steps):
            model(xe)
        eval_ips = 32 * steps / (time.perf_counter() - t)
    return {"backbone": backbone, "kind": kind, "size": size, "batch": batch,
            "train_images_per_s": round(train_ips, 2), "eval_images_per_s": round(eval_ips, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[160])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--backbones", nargs="+", default=["efficientnet_lite0", "resnet18", "tiny"])
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "train_throughput.json"))
    args = p.parse_args()
    rows = [measure(b, k, s, args.batch, args.steps)
            for s in args.sizes for b in args.backbones for k in ("abn", "cnn")]
    print(f"{'backbone':20s} {'kind':4s} {'size':>4s} {'train img/s':>12s} {'eval img/s':>11s}")
    for r in rows:
        print(f"{r['backbone']:20s} {r['kind']:4s} {r['size']:4d} {r['train_images_per_s']:12.1f} "
              f"{r['eval_images_per_s']:11.1f}")
    result = {"machine": {"cpu_threads": torch.get_num_threads(), "platform": platform.platform(),
                          "torch": torch.__version__}, "results": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
