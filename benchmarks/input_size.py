"""What a larger model input costs at inference: ONNX Runtime FP32 throughput of two checkpoints side by side.

    python benchmarks/input_size.py --checkpoint small=runs/.../best.pt --checkpoint large=runs/.../best.pt

Exports each checkpoint to a package (FP32 only, parity checked) unless one exists beside it, then runs both
through the torch-free runtime on the same decoded test images, interleaved round by round (batch 1 and 16),
so that machine noise hits both alike. Prints images/s and writes benchmarks/results/input_size.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from inspection.core.layout import Manifest  # noqa: E402
from inspection.deploy.runtime import Runtime, read_frame  # noqa: E402
from inspection.training.export import export_package  # noqa: E402


def package(checkpoint: Path) -> Path:
    out = checkpoint.parent / "package-fp32"
    if not out.exists():
        export_package(checkpoint, out, int8=False, progress=False)
    return out


def rate(rt: Runtime, frames: list, batch: int, seconds: float) -> float:
    n, i, start = 0, 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        rt.inspect([frames[(i + k) % len(frames)] for k in range(batch)], "BGR")
        n, i = n + batch, i + batch
    return n / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", action="append", required=True, metavar="NAME=PATH")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "input_size.json"))
    args = p.parse_args()
    runs = {}
    for item in args.checkpoint:
        name, path = item.split("=", 1)
        folder = package(Path(path))
        manifest = Manifest.load(Path(path).parent / "manifest.json")
        frames = [read_frame(Path(manifest.root) / it.path) for it in manifest.split("test")[:32]]
        runs[name] = {"runtime": Runtime(folder, backend="cpu", max_batch=max(args.batches)), "frames": frames}
    rates: dict = {name: {b: [] for b in args.batches} for name in runs}
    for _ in range(args.rounds):
        for b in args.batches:
            for name, r in runs.items():
                rates[name][b].append(rate(r["runtime"], r["frames"], b, args.seconds))
    out = {name: {"input": list(r["runtime"].image_size),
                  **{f"images_per_s_batch{b}": round(sorted(rates[name][b])[len(rates[name][b]) // 2], 1)
                     for b in args.batches}} for name, r in runs.items()}
    for name, row in out.items():
        print(name, json.dumps(row))
    Path(args.out).write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "cores": os.cpu_count(),
                                          "checkpoints": args.checkpoint, "runs": out}, indent=1))


if __name__ == "__main__":
    main()
