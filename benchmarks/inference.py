"""Inference speed: PyTorch eager vs ONNX Runtime FP32 vs INT8 (and CUDA/TensorRT where present), one run.

    python benchmarks/inference.py [--checkpoint runs/demo/ours/best.pt] [--batches 1 4 16] [--seconds 2]

Every backend runs on the same real test images, interleaved round by round so that machine noise hits all
of them alike. Per backend and batch size: throughput (images/s) and per-call latency p50/p99. Where the
package has a feature bank, "ORT cpu fp32 w/o features" runs the same graph without fetching the features
output, and the end-to-end rows run with the box rule's novelty level on and off (its cost). Accuracy per
variant (test AUROC, box F1) comes from the package's export-time evaluation. Prints a table and writes
benchmarks/results/inference.json and docs/inference_throughput.png. Exports the package when it is missing.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from inspection.core.imageio import read_image  # noqa: E402
from inspection.core.layout import Manifest  # noqa: E402
from inspection.deploy.package import load_package  # noqa: E402
from inspection.deploy.runtime import Runtime  # noqa: E402
from inspection.model.abn import load_checkpoint  # noqa: E402
from inspection.training.export import export_package  # noqa: E402
from inspection.training.loader import InspectionDataset  # noqa: E402


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def backends(checkpoint: Path, package: Path, threads: int) -> dict:
    """name → callable(batch of normalized images); plus the runtimes for end-to-end runs."""
    model, _, _ = load_checkpoint(checkpoint)
    torch.set_num_threads(threads)

    def eager(x):
        with torch.no_grad():
            out = model(torch.from_numpy(x))
            return out.logits.softmax(1).numpy(), out.attention.numpy()

    found = {"torch eager fp32": eager}
    if torch.cuda.is_available():
        gpu_model = load_checkpoint(checkpoint)[0].cuda()

        def eager_cuda(x):
            with torch.no_grad():
                out = gpu_model(torch.from_numpy(x).cuda())
                return out.logits.softmax(1).cpu().numpy(), out.attention.cpu().numpy()

        found["torch eager cuda fp32"] = eager_cuda
    for name, backend, precision in [("ORT cpu fp32", "cpu", "fp32"), ("ORT cpu int8", "cpu", "int8"),
                                     ("ORT cuda fp32", "cuda", "fp32"), ("ORT TensorRT fp16", "ort-tensorrt", "fp16"),
                                     ("TensorRT fp32", "tensorrt", "fp32"), ("TensorRT int8", "tensorrt", "int8")]:
        try:
            rt = Runtime(package, backend=backend, precision=precision, threads=threads, max_batch=64)
        except Exception as exc:  # noqa: BLE001 - report and go on with the others
            print(f"skip {name}: {exc}", file=sys.stderr)
            continue
        found[name] = rt.run_batch
        if name == "ORT cpu fp32" and rt.bank is not None:  # the features output's cost: the same graph without it
            found["ORT cpu fp32 w/o features"] = lambda x, run=rt.session.run: run(
                ["probs", "defect_score", "attention"], {"image": x})
    return found


def measure(fn, x: np.ndarray, seconds: float) -> list[float]:
    fn(x)  # warm-up (TensorRT builds or loads its engine here)
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 3:
        t = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="runs/demo/ours/best.pt")
    p.add_argument("--package", help="model package (default: <run>/package, exported when missing)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--seconds", type=float, default=2.0, help="per backend, batch size and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "inference.json"))
    p.add_argument("--plot", default=str(Path(__file__).resolve().parent.parent / "docs" / "inference_throughput.png"))
    args = p.parse_args()
    checkpoint = Path(args.checkpoint)
    if not checkpoint.exists():
        sys.exit(f"{checkpoint}: not found; run `make demo` first or pass --checkpoint runs/<run>/best.pt")
    package = Path(args.package or checkpoint.parent / "package")
    if not package.exists():
        export_package(checkpoint, package)
    meta = load_package(package)
    _, cfg, _ = load_checkpoint(checkpoint)
    manifest = Manifest.load(checkpoint.parent / "manifest.json")
    test = InspectionDataset(manifest, "test", cfg.data)
    pool = np.stack([test[i]["image"].numpy() for i in range(min(len(test), max(args.batches)))]).astype(np.float32)
    fns = backends(checkpoint, package, args.threads)
    times: dict[tuple[str, int], list[float]] = {}
    for r in range(args.rounds):
        for b in args.batches:
            x = np.ascontiguousarray(np.resize(pool, (b, *pool.shape[1:])))
            for name, fn in fns.items():
                times.setdefault((name, b), []).extend(measure(fn, x, args.seconds))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)

    # end to end: decoded frames → verdicts and boxes (pre-processing and boxes included), largest batch
    frames = [read_image(Path(manifest.root) / it.path) for it in test.items[:max(args.batches)]]
    runtimes = {f"ORT cpu {p} inspect()": Runtime(package, backend="cpu", precision=p, threads=args.threads)
                for p in ("fp32", "int8")}
    if runtimes["ORT cpu fp32 inspect()"].bank is not None:
        off = Runtime(package, backend="cpu", threads=args.threads)
        off.box_rule = dataclasses.replace(off.box_rule, novelty=0.0)
        runtimes["ORT cpu fp32 inspect() novelty off"] = off
    spent: dict[str, list[float]] = {name: [] for name in runtimes}
    for rt in runtimes.values():
        rt.inspect(frames)  # warm-up
    names, start, k = list(runtimes), time.perf_counter(), 0
    while time.perf_counter() - start < args.seconds * args.rounds * len(names) or k < 3:
        for name in names[k % len(names):] + names[:k % len(names)]:  # call by call, in a rotating order
            t = time.perf_counter()
            runtimes[name].inspect(frames)
            spent[name].append(time.perf_counter() - t)
        k += 1
    e2e = {name: round(len(frames) / float(np.median(t)), 1) for name, t in spent.items()}

    rows = []
    for (name, b), t in times.items():
        t = np.asarray(t)
        rows.append({"backend": name, "batch": b, "images_per_s": round(b * len(t) / t.sum(), 1),
                     "latency_ms_p50": round(1000 * float(np.percentile(t, 50)), 2),
                     "latency_ms_p99": round(1000 * float(np.percentile(t, 99)), 2), "calls": len(t)})
    by = {(r["backend"], r["batch"]): r["images_per_s"] for r in rows}
    ratios = {}
    for b in args.batches:
        if ("ORT cpu fp32", b) in by:
            ratios[f"ort_fp32_vs_eager@{b}"] = round(by[("ORT cpu fp32", b)] / by[("torch eager fp32", b)], 2)
        if ("ORT cpu fp32 w/o features", b) in by:
            ratios[f"features_output@{b}"] = round(by[("ORT cpu fp32", b)] / by[("ORT cpu fp32 w/o features", b)], 2)
        if ("ORT cpu int8", b) in by:
            ratios[f"int8_vs_fp32@{b}"] = round(by[("ORT cpu int8", b)] / by[("ORT cpu fp32", b)], 2)
    if "ORT cpu fp32 inspect() novelty off" in e2e:
        ratios["inspect_novelty_on_vs_off"] = round(e2e["ORT cpu fp32 inspect()"] /
                                                    e2e["ORT cpu fp32 inspect() novelty off"], 2)
    accuracy = {name: {"auroc": v["metrics"]["image"]["auroc"],
                       "box_f1@0.3": v["metrics"].get("box@0.3", {}).get("f1")} for name, v in meta["variants"].items()}

    print(f"{'backend':20s} {'batch':>5s} {'img/s':>8s} {'p50 ms':>8s} {'p99 ms':>8s}")
    for r in sorted(rows, key=lambda r: (r["batch"], r["backend"])):
        print(f"{r['backend']:20s} {r['batch']:5d} {r['images_per_s']:8.1f} {r['latency_ms_p50']:8.2f} "
              f"{r['latency_ms_p99']:8.2f}")
    print("end to end (frames → verdicts + boxes, img/s):", json.dumps(e2e))
    print("ratios:", json.dumps(ratios))
    print("accuracy (test split):", json.dumps(accuracy))
    result = {"date": time.strftime("%Y-%m-%d"), "machine": {"cpu": _cpu_name(), "cores": os.cpu_count(),
                                                            "threads": args.threads},
              "versions": {"torch": torch.__version__, "onnxruntime": __import__("onnxruntime").__version__},
              "package": str(package), "model_version": meta["model_version"],
              "input_size": meta["input"]["size"], "backbone": meta["training"]["config"]["model"]["backbone"],
              "rows": rows, "end_to_end": e2e, "ratios": ratios, "accuracy": accuracy}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    _plot(rows, args.batches, Path(args.plot), result)
    print(f"wrote {args.out} and {args.plot}")


def _plot(rows: list[dict], batches: list[int], path: Path, result: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["backend"] for r in rows))
    fig, ax = plt.subplots(figsize=(7, 3.6))
    width = 0.8 / len(names)
    for k, name in enumerate(names):
        vals = [next((r["images_per_s"] for r in rows if r["backend"] == name and r["batch"] == b), 0) for b in batches]
        ax.bar(np.arange(len(batches)) + k * width, vals, width, label=name)
    ax.set_xticks(np.arange(len(batches)) + width * (len(names) - 1) / 2, [f"batch {b}" for b in batches])
    ax.set_ylabel("images / s")
    ax.set_title(f"{result['backbone']} ABN at {result['input_size'][0]}px, {result['machine']['cores']} CPU cores",
                 fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
