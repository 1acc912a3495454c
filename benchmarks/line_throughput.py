"""Line runner end to end vs the bare runtime, on the same images, in one run; memory over a long stream.

    python benchmarks/line_throughput.py [--package runs/demo/ours/package] [--frames 10000] [--batch 8]
                                         [--defect-shares 1 0.05]

1. bare runtime: Runtime.inspect() on batches of decoded frames (pre-processing, model, boxes), a loop.
2. runner: the simulated camera replays the same frames as fast as taken (queue policy block, so nothing is
   dropped); verdicts to a JSON-lines file; failures (with image, map, overlay, fsync) to the SQLite log.
Runs once per defect share: 1 = the dataset as it is (the synthetic set is 43 % defects, each one logged with
its image, map and overlay), 0.05 = all good parts plus defects to make 5 %, closer to a real line.
Prints throughput, latency p50/p99 (capture to verdict, unpaced so it includes queueing), and RSS; writes
benchmarks/results/line_throughput.json.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from inspection.deploy.line.runner import LineRunner  # noqa: E402
from inspection.deploy.line.sources import SimulatedCamera  # noqa: E402
from inspection.deploy.line.station import load_station  # noqa: E402
from inspection.deploy.runtime import Runtime  # noqa: E402


def rss_mb() -> float:
    """Current resident set size (MB) from /proc, peak from getrusage where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bare(package: Path, frames: list, batch: int, seconds: float) -> float:
    rt = Runtime(package, backend="cpu", max_batch=batch)
    rt.inspect(frames[:batch], "BGR")
    n, i, start = 0, 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        chunk = [frames[(i + k) % len(frames)] for k in range(batch)]
        rt.inspect(chunk, "BGR")
        n, i = n + batch, i + batch
    return n / (time.perf_counter() - start)


def runner(package: Path, data: str, batch: int, frames: int, log: Path, fps: float = 0.0, sets=()) -> dict:
    cfg = load_station(None, [f"package={package}", f"source.path={data}", "source.kind=simulated",
                              f"source.fps={fps}", "source.loop=true", f"source.limit={frames}", "queue.policy=block",
                              f"batch.max_size={batch}", f"jsonl={log / 'verdicts.jsonl'}", f"log.folder={log}",
                              "reload_s=0", "backend=cpu", *sets])
    r = LineRunner(cfg)
    r.self_check()
    samples = []
    done = threading.Event()

    def sample():
        while not done.wait(1.0):
            samples.append((r.metrics.get("frames_total"), rss_mb()))
    threading.Thread(target=sample, daemon=True).start()
    start = time.perf_counter()
    summary = r.run()
    elapsed = time.perf_counter() - start
    done.set()
    return {"summary": summary, "seconds": elapsed, "images_per_s": summary["frames_total"] / elapsed,
            "rss_samples": samples}


def subset(data: Path, share: float, out: Path) -> Path:
    """A folder of links: every good part plus defects making up `share` of the parts (1 = the dataset)."""
    if share >= 1:
        return data
    good = sorted((data / "good").rglob("*.*"))
    defects = sorted((data / "defect").rglob("*.*"))
    n = min(len(defects), round(len(good) * share / (1 - share)))
    picked = [defects[int(i)] for i in np.linspace(0, len(defects) - 1, n)] if n else []
    for p in good + picked:
        dst = out / p.relative_to(data)
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.symlink_to(p.resolve())
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--package", default="runs/demo/ours/package")
    p.add_argument("--data", default="data/synthetic")
    p.add_argument("--frames", type=int, default=10000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--defect-shares", type=float, nargs="+", default=[1.0, 0.05])
    p.add_argument("--bare-seconds", type=float, default=20.0)
    p.add_argument("--paced-frames", type=int, default=2000, help="frames of the paced run (latency)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="station overrides for the runner")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "line_throughput.json"))
    args = p.parse_args()
    package = Path(args.package)
    if not package.exists():
        sys.exit(f"{package}: not found; run `make demo` first (it exports the package)")
    results = []
    for share in args.defect_shares:
        with tempfile.TemporaryDirectory() as tmp:
            data = subset(Path(args.data), share, Path(tmp) / "data")
            cam = SimulatedCamera(str(data))
            cam.open()
            frames = [f[1] for f in cam.frames if f[1] is not None]
            rss0 = rss_mb()
            before = bare(package, frames, args.batch, args.bare_seconds / 2)
            line = runner(package, str(data), args.batch, args.frames, Path(tmp) / "log", sets=args.set)
            after = bare(package, frames, args.batch, args.bare_seconds / 2)
        bare_ips = (before + after) / 2
        s, rss = line["summary"], line["rss_samples"]
        result = {"defect_share": share, "frames": s["frames_total"], "batch": args.batch,
                  "logged_failures": s["log_records_total"], "bare_images_per_s": round(bare_ips, 1),
                  "bare_before_after": [round(before, 1), round(after, 1)],
                  "runner_images_per_s": round(line["images_per_s"], 1),
                  "ratio": round(line["images_per_s"] / bare_ips, 3),
                  "latency_ms_p50": s["latency_ms_p50"], "latency_ms_p99": s["latency_ms_p99"],
                  "dropped": s["frames_dropped_total"], "rss_mb_before": round(rss0, 1),
                  "rss_mb_first_sample": round(rss[0][1], 1) if rss else None,
                  "rss_mb_end": round(rss[-1][1], 1) if rss else None,
                  "rss_mb_max": round(max(r for _, r in rss), 1) if rss else None, "rss_samples": rss}
        print(" ".join(f"{k}={v}" for k, v in result.items() if k != "rss_samples"), flush=True)
        results.append(result)
    # latency as a line sees it: the camera paced at 70 % of the runner's throughput at the last defect share
    paced = {}
    if args.paced_frames:
        fps = round(0.7 * results[-1]["runner_images_per_s"], 1)
        with tempfile.TemporaryDirectory() as tmp:
            data = subset(Path(args.data), args.defect_shares[-1], Path(tmp) / "data")
            s = runner(package, str(data), args.batch, args.paced_frames, Path(tmp) / "log", fps, args.set)["summary"]
        paced = {"fps": fps, "defect_share": args.defect_shares[-1], "frames": s["frames_total"],
                 "latency_ms_p50": s["latency_ms_p50"], "latency_ms_p99": s["latency_ms_p99"],
                 "dropped": s["frames_dropped_total"]}
        print("paced:", json.dumps(paced))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "cores": os.cpu_count(),
                                          "package": str(package), "station_overrides": args.set, "runs": results,
                                          "paced": paced}, indent=1))


if __name__ == "__main__":
    main()
