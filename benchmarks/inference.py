"""Inference speed per backend, interleaved round by round: ONNX Runtime and OpenVINO (and CUDA/TensorRT where present).

    python benchmarks/inference.py [--package runs/demo/ours/package] [--batches 1 16] [--rounds 7] [--seconds 1.5]

Contenders: the bare model (`Runtime.run_batch`, every output the line fetches) per backend and precision at
each batch size, then end to end (`Runtime.inspect()` on decoded BGR frames of the test split: pre-processing,
inference, verdict and boxes) and the pre-processing alone. Every contender runs once per round for `--seconds`
(A B C …, B C … A, …; benchmarks/rounds.py), so a slow stretch of the shared machine hits a whole round;
each figure is the median over rounds with its min–max and quartiles, and each ratio to ORT FP32 is taken
within a round, then summarized the same way. Accuracy per backend (image AUROC, box F1@0.3 on the test split,
thresholds and box rule calibrated on val through that backend, as export does) comes from
`inspection.training.evaluate`. Writes benchmarks/results/inference.json and docs/inference_throughput.png.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from rounds import cpu_name, interleave, rate, ratios, spread  # noqa: E402

from inspection.core.layout import Manifest  # noqa: E402
from inspection.core.preprocess import to_input  # noqa: E402
from inspection.deploy.package import load_package  # noqa: E402
from inspection.deploy.runtime import Runtime, read_frame  # noqa: E402

BASE = "ORT FP32"
# name → (backend, precision); those that cannot start here are reported and left out
CANDIDATES = {"ORT FP32": ("cpu", "fp32"), "ORT INT8": ("cpu", "int8"), "OpenVINO FP32": ("openvino", "fp32"),
              "OpenVINO INT8": ("openvino", "int8"), "OpenVINO BF16": ("openvino", "bf16"),
              "ORT CUDA FP32": ("cuda", "fp32"), "ORT TensorRT FP16": ("ort-tensorrt", "fp16"),
              "TensorRT FP32": ("tensorrt", "fp32"), "TensorRT INT8": ("tensorrt", "int8")}
CPU_BACKENDS = ("cpu", "openvino")


def runtimes(package: Path, threads: int, names: list[str]) -> dict[str, Runtime]:
    found = {}
    for name in names:
        backend, precision = CANDIDATES[name]
        try:
            found[name] = Runtime(package, backend=backend, precision=precision, threads=threads, max_batch=64)
        except Exception as exc:  # noqa: BLE001 - report and go on with the others
            print(f"skip {name}: {str(exc).splitlines()[0]}", file=sys.stderr)
    return found


def ep_sessions(package: Path, threads: int) -> dict:
    """ONNX Runtime with OpenVINO's execution provider plugin (onnxruntime-ep-openvino), where installed: the
    alternative to the openvino package, same graphs, same precision hint and threads; bare model only."""
    try:
        import onnxruntime as ort
        import onnxruntime_ep_openvino as plugin
    except ImportError:
        return {}
    ort.register_execution_provider_library("openvino_ep", plugin.get_library_path())
    devices = [d for d in ort.get_ep_devices()
               if d.ep_name == plugin.get_ep_name() and d.ep_metadata.get("ov_device") == "CPU"]
    config = json.dumps({"CPU": {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": str(threads),
                                 "NUM_STREAMS": "1", "PERFORMANCE_HINT": "LATENCY"}})
    meta, found = load_package(package), {}
    for precision in ("fp32", "int8"):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_provider_for_devices(devices[:1], {"load_config": config})
        session = ort.InferenceSession(str(package / meta["variants"][precision]["file"]), opts)
        found[f"ORT OpenVINO-EP {precision.upper()}"] = session
    return found


def contenders(rts: dict[str, Runtime], eps: dict, frames: list[np.ndarray], batches: list[int],
               seconds: float) -> dict:
    """'<name> @<batch>' (bare model), 'inspect() <name> @<batch>' and 'preprocess @<batch>' → a measuring call."""
    ref = rts[BASE]
    found = {}
    for b in batches:
        x = to_input([ref.prepare(f, "BGR") for f in (frames * b)[:b]], ref.mean, ref.std)
        for name, rt in rts.items():
            rt.run_batch(x)  # warm-up: OpenVINO compiles each new shape, TensorRT loads its engine
            found[f"{name} @{b}"] = lambda rt=rt, x=x, b=b: rate(lambda: rt.run_batch(x), seconds, b)
        for name, session in eps.items():
            outputs = [o.name for o in session.get_outputs()]
            session.run(outputs, {"image": x})
            found[f"{name} @{b}"] = lambda s=session, o=outputs, x=x, b=b: rate(lambda: s.run(o, {"image": x}),
                                                                                  seconds, b)
    for b in batches:
        for name, rt in rts.items():
            if rt.backend in CPU_BACKENDS:
                inspect = _cycling(frames, b, lambda fs, rt=rt: rt.inspect(fs, color="BGR"))
                found[f"inspect() {name} @{b}"] = lambda call=inspect, b=b: rate(call, seconds, b)
        prep = _cycling(frames, b, lambda fs: to_input([ref.prepare(f, "BGR") for f in fs], ref.mean, ref.std))
        found[f"preprocess @{b}"] = lambda call=prep, b=b: rate(call, seconds, b)
    return found


def _cycling(frames: list[np.ndarray], b: int, fn):
    """A call of fn on the next b frames (passing and failing parts alike, in the test split's proportions)."""
    state = {"i": 0}

    def call():
        i = state["i"]
        state["i"] = (i + b) % len(frames)
        return fn([frames[(i + k) % len(frames)] for k in range(b)])
    return call


def accuracy(rts: dict[str, Runtime], manifest: Manifest, cfg) -> dict:
    """Image AUROC and box F1@0.3 on the test split per backend, thresholds and box rule calibrated on val through
    that backend (the procedure export uses for each variant)."""
    from inspection.core.novelty import distance_map
    from inspection.training.evaluate import Predictions, evaluate_predictions

    out = {}
    for name, rt in rts.items():
        preds = []
        for split in ("val", "test"):
            frames = [read_frame(Path(manifest.root) / it.path) for it in manifest.split(split)]
            x = to_input([rt.prepare(f, "BGR") for f in frames], rt.mean, rt.std)
            probs, scores, maps, *features = rt._run(x)
            far = np.stack([distance_map(f, rt.bank) for f in features[0]]) if features else None
            preds.append(Predictions(scores, probs, maps, far))
        m = evaluate_predictions(*preds, manifest, cfg, name)["metrics"]
        out[name] = {"auroc": round(m["image"]["auroc"], 4), "box_f1@0.3": round(m.get("box@0.3", {}).get("f1"), 4)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--package", default="runs/demo/ours/package")
    p.add_argument("--manifest", help="training manifest (default: the package's run folder's manifest.json)")
    p.add_argument("--backends", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    p.add_argument("--seconds", type=float, default=1.5, help="per contender and round")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--no-accuracy", action="store_true", help="skip the per-backend accuracy on val/test")
    p.add_argument("--ep", action="store_true",
                   help="onnxruntime's OpenVINO execution provider plugin instead of the openvino package (the two "
                        "bring their own OpenVINO and TBB; in one process they slow each other down)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "inference.json"))
    p.add_argument("--plot", default=str(Path(__file__).resolve().parent.parent / "docs" / "inference_throughput.png"))
    args = p.parse_args()
    package = Path(args.package)
    if not (package / "metadata.json").exists():
        sys.exit(f"{package}: no model package; run `make demo` first or pass --package")
    meta = load_package(package)
    manifest = Manifest.load(args.manifest or package.parent / "manifest.json")
    frames = [read_frame(Path(manifest.root) / it.path) for it in manifest.split("test")]
    rts = runtimes(package, args.threads, [n for n in args.backends if not (args.ep and "OpenVINO" in n)])
    if BASE not in rts:
        sys.exit(f"{BASE} could not start: it is the reference of every ratio")
    eps = ep_sessions(package, args.threads) if args.ep else {}
    per_round = interleave(contenders(rts, eps, frames, args.batches, args.seconds), args.rounds)

    bare_names = [*rts, *eps]
    bare = {name: {b: spread(per_round[f"{name} @{b}"]) for b in args.batches} for name in bare_names}
    rel = {b: ratios({n: per_round[f"{n} @{b}"] for n in bare_names}, BASE) for b in args.batches}
    e2e_names = [n for n, rt in rts.items() if rt.backend in CPU_BACKENDS]
    e2e = {b: {**{n: spread(per_round[f"inspect() {n} @{b}"]) for n in e2e_names},
               "preprocess": spread(per_round[f"preprocess @{b}"])} for b in args.batches}
    e2e_rel = {b: ratios({n: per_round[f"inspect() {n} @{b}"] for n in e2e_names}, BASE) for b in args.batches}
    acc = {}
    if not args.no_accuracy:
        from inspection.model.config import config_from_dict
        acc = accuracy({n: rt for n, rt in rts.items() if rt.backend in CPU_BACKENDS}, manifest,
                       config_from_dict(meta["training"]["config"]))
    import onnxruntime
    versions = {"onnxruntime": onnxruntime.__version__}
    from importlib.metadata import PackageNotFoundError, version
    for dist in ("openvino", "onnxruntime-ep-openvino"):
        try:
            versions[dist] = version(dist)
        except PackageNotFoundError:
            pass
    result = {"date": time.strftime("%Y-%m-%d"),
              "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": args.threads},
              "versions": versions, "package": str(package), "model_version": meta["model_version"],
              "input_size": meta["input"]["size"], "backbone": meta["training"]["config"]["model"]["backbone"],
              "rounds": args.rounds, "seconds_per_contender": args.seconds,
              "backends": {**{n: {"backend": rt.backend, "precision": rt.precision} for n, rt in rts.items()},
                           **{n: {"backend": "onnxruntime OpenVINOExecutionProvider",
                                  "precision": n.split()[-1].lower()} for n in eps}},
              "images_per_s": bare, "ratio_to_ort_fp32": rel, "end_to_end_images_per_s": e2e,
              "end_to_end_ratio_to_ort_fp32": e2e_rel, "accuracy": acc, "per_round": per_round}
    _print(result, args.batches)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    _plot(result, args.batches, Path(args.plot))
    print(f"wrote {args.out} and {args.plot}")


def _fmt(s: dict, unit: str = "") -> str:
    return f"{s['median']}{unit} ({s['min']}–{s['max']})"


def _print(result: dict, batches: list[int]) -> None:
    print(f"{result['machine']['cpu']}, {result['machine']['threads']} threads, {result['rounds']} rounds")
    for b in batches:
        print(f"batch {b}: img/s median (min–max), ratio to {BASE} within rounds")
        for name, by in result["images_per_s"].items():
            r = result["ratio_to_ort_fp32"][b].get(name)
            print(f"  {name:18s} {_fmt(by[b]):>24s}  {_fmt(r, '×') if r else ''}")
        for name, s in result["end_to_end_images_per_s"][b].items():
            r = result["end_to_end_ratio_to_ort_fp32"][b].get(name)
            print(f"  {'inspect() ' + name if name != 'preprocess' else 'preprocess only':28s} {_fmt(s):>24s}  "
                  f"{_fmt(r, '×') if r else ''}")
    if result["accuracy"]:
        print("accuracy (test split):", json.dumps(result["accuracy"]))


def _plot(result: dict, batches: list[int], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["images_per_s"])
    fig, axes = plt.subplots(1, len(batches), figsize=(4.2 * len(batches), 3.6), squeeze=False)
    for ax, b in zip(axes[0], batches):
        med = [result["images_per_s"][n][b]["median"] for n in names]
        lo = [m - result["images_per_s"][n][b]["min"] for n, m in zip(names, med)]
        hi = [result["images_per_s"][n][b]["max"] - m for n, m in zip(names, med)]
        ax.barh(names, med, xerr=[lo, hi], color="tab:blue", alpha=0.8, capsize=3)
        e2e = result["end_to_end_images_per_s"][b]
        ax.scatter([e2e[n]["median"] for n in names if n in e2e], [n for n in names if n in e2e], color="black",
                   marker="|", s=200, zorder=3, label="inspect() end to end")
        ax.set_title(f"batch {b}", fontsize=10)
        ax.set_xlabel("images / s: median, min–max over rounds")
        ax.invert_yaxis()
    fig.legend(*axes[0][0].get_legend_handles_labels(), fontsize=8, loc="lower center", frameon=False)
    fig.suptitle(f"{result['backbone']} ABN {result['input_size'][0]}px — {result['machine']['cpu']}, "
                 f"{result['machine']['threads']} threads, {result['rounds']} rounds", fontsize=9)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
