"""What a larger model input costs at inference: ONNX Runtime FP32 throughput of two checkpoints side by side.

    python benchmarks/input_size.py --checkpoint small=runs/.../best.pt --checkpoint large=runs/.../best.pt

Exports each checkpoint to a package (FP32 only, parity checked) unless one exists beside it, then runs both
through the torch-free runtime on the same decoded test images, interleaved round by round (batch 1 and 16),
so that machine noise hits both alike. Prints images/s (median and range over the rounds) and writes
benchmarks/results/input_size.json, with each checkpoint's throughput over the first's, round by round.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from rounds import cpu_name, interleave, rate, ratios, spread  # noqa: E402

from inspection.core.layout import Manifest  # noqa: E402
from inspection.deploy.runtime import Runtime, read_frame  # noqa: E402
from inspection.training.export import export_package  # noqa: E402


def package(checkpoint: Path) -> Path:
    out = checkpoint.parent / "package-fp32"
    if not out.exists():
        export_package(checkpoint, out, int8=False, progress=False)
    return out


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
    first = next(iter(runs))
    out = {"date": time.strftime("%Y-%m-%d"), "cpu": cpu_name(), "cores": os.cpu_count(),
           "checkpoints": args.checkpoint, "rounds": args.rounds, "runs": {}, "ratio_to_" + first: {}}
    for b in args.batches:
        per_round = interleave({name: (lambda r=r, b=b: rate(lambda: r["runtime"].inspect(r["frames"][:b], "BGR"),
                                                             args.seconds, items=b)) for name, r in runs.items()},
                               args.rounds)
        for name, v in per_round.items():
            out["runs"].setdefault(name, {"input": list(runs[name]["runtime"].image_size)})
            out["runs"][name][f"images_per_s_batch{b}"] = spread(v)
        for name, v in ratios(per_round, first).items():
            out["ratio_to_" + first].setdefault(name, {})[f"batch{b}"] = v
    for name, row in out["runs"].items():
        cells = {b: row[f"images_per_s_batch{b}"] for b in args.batches}
        print(name, row["input"], ", ".join(f"batch {b}: {c['median']} images/s ({c['min']}–{c['max']})"
                                            for b, c in cells.items()))
    Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
