"""Line runner end to end vs the bare runtime, and capture → verdict latency at 100 fps, interleaved round by round.

    python benchmarks/line_throughput.py [--package runs/demo/ours/package] [--rounds 5] [--frames 1500]
                                         [--paced-frames 1500] [--fps 100] [--defect-shares 0.43 0.05]

Contenders of every round (benchmarks/rounds.py: A B C …, B C … A, …), each once per round:
- bare runtime at each defect share: Runtime.inspect() on batches of the same decoded frames, a loop;
- runner at each defect share: the simulated camera replays those frames as fast as taken (queue policy block,
  nothing dropped); verdicts to a JSON-lines file; fail/review/error parts to the failure log (journal,
  image, map, fsync) as a station does;
- paced runner at `--fps` for the simulated source and for the GenICam emulator (arv-fake-gv-camera-0.8,
  512x512 BayerRG8, free run at --fps) at each defect share: capture → verdict p50/p99 with the log on.
The simulated stream's defect share: 0.43 = the synthetic set as it is (150 of 350 parts defective), lower =
every good part plus defects to make that share. The emulator sends a moving test pattern whose scores spread
over 0.3-0.65: a copy of the package with a threshold (and no review band) at the score quantile that fails
that share of its frames stands in for a stream of defects. Throughput ratio = runner ÷ bare in the same round,
then median and min-max over rounds. Backend: the station's default (`auto`); numpy's BLAS on one thread in
both, as the runner sets it. Writes
benchmarks/results/line_throughput.json and docs/line_throughput.png.
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from rounds import cpu_name, interleave, rate, spread  # noqa: E402

from inspection.deploy.line.genicam import GenICamSource, list_cameras  # noqa: E402
from inspection.deploy.line.runner import LineRunner, one_blas_thread  # noqa: E402
from inspection.deploy.line.sources import SimulatedCamera  # noqa: E402
from inspection.deploy.line.station import load_station  # noqa: E402
from inspection.deploy.runtime import Runtime  # noqa: E402

SERIAL = "LINEBENCH01"
GENICAM = [f"source.genicam.device={SERIAL}", "source.kind=genicam", "source.genicam.pixel_format=BayerRG8"]


def subset(data: Path, share: float, out: Path) -> Path:
    """A folder of links: every good part plus defects making up `share` of the parts (≥ the set's own: the set)."""
    good = sorted((data / "good").rglob("*.*"))
    defects = sorted((data / "defect").rglob("*.*"))
    if share >= len(defects) / (len(good) + len(defects)) - 0.005:
        return data
    n = min(len(defects), round(len(good) * share / (1 - share)))
    picked = [defects[int(i)] for i in np.linspace(0, len(defects) - 1, n)] if n else []
    for p in good + picked:
        dst = out / p.relative_to(data)
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.symlink_to(p.resolve())
    return out


def bare(rt: Runtime, frames: list, batch: int, seconds: float) -> float:
    """Images per second of Runtime.inspect on batches of the frames, for `seconds`."""
    batches = itertools.cycle([frames[i:i + batch] for i in range(0, len(frames) - batch + 1, batch)])
    return rate(lambda: rt.inspect(next(batches), "BGR"), seconds, items=batch)


def run_line(package: Path, frames: int, sets: list[str], args, probe=None) -> dict:
    """One runner run in a fresh log folder; its summary, images/s and how many parts it logged. probe(runner):
    a context manager entered around run() once the source is open (line_profile.py times the stages in it)."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_station(None, [f"package={package}", f"source.limit={frames}", "queue.policy=block",
                                  f"batch.max_size={args.batch}", f"jsonl={tmp}/verdicts.jsonl",
                                  f"log.folder={tmp}/log", "reload_s=0", f"backend={args.backend}",
                                  f"precision={args.precision}", *sets])
        r = LineRunner(cfg)
        r.self_check()
        with probe(r) if probe is not None else contextlib.nullcontext():
            start = time.perf_counter()
            s = r.run()
            elapsed = time.perf_counter() - start
        r.store.close()
    return {**s, "images_per_s": s["frames_total"] / elapsed}


def genicam_frames(n: int, fps: float) -> list:
    cfg = load_station(None, [*GENICAM, f"source.genicam.features={{AcquisitionFrameRate: {fps}}}"]).source
    src = GenICamSource(cfg)
    src.open()
    try:
        return [src.read().image for _ in range(n)]
    finally:
        src.close()


def failing_copy(package: Path, scores: np.ndarray, share: float, dst: Path) -> Path:
    """A copy of the package whose threshold (no review band) fails `share` of parts with these scores."""
    shutil.copytree(package, dst)
    meta = json.loads((dst / "metadata.json").read_text())
    threshold = float(np.quantile(scores, 1 - share))
    for variant in meta["variants"].values():
        variant["threshold"] = threshold
    meta["decision"]["review_band"] = 0.0
    (dst / "metadata.json").write_text(json.dumps(meta))
    return dst


def start_emulator() -> subprocess.Popen:
    fake = subprocess.Popen(["arv-fake-gv-camera-0.8", "-i", "127.0.0.1", "-s", SERIAL],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 10
    while not any(c["serial"] == SERIAL for c in list_cameras()):
        if time.time() > deadline:
            fake.kill()
            sys.exit("arv-fake-gv-camera-0.8 did not come up (make genicam installs it)")
        time.sleep(0.1)
    return fake


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--package", default="runs/demo/ours/package")
    p.add_argument("--data", default="data/synthetic")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--frames", type=int, default=1500, help="frames of each unpaced runner run")
    p.add_argument("--bare-seconds", type=float, default=5.0)
    p.add_argument("--paced-frames", type=int, default=1500, help="frames of each paced run (0: none)")
    p.add_argument("--fps", type=float, default=100.0)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--backend", default="auto")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--defect-shares", type=float, nargs="+", default=[0.43, 0.05])
    p.add_argument("--no-genicam", action="store_true", help="leave the emulator's paced runs out")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="station overrides for the runner")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "line_throughput.json"))
    p.add_argument("--plot", default=str(Path(__file__).parent.parent / "docs" / "line_throughput.png"))
    args = p.parse_args()
    package = Path(args.package)
    if not package.exists():
        sys.exit(f"{package}: not found; run `make demo` first (it exports the package)")
    one_blas_thread()  # as the line runs: the bare runtime too, from the first round on (the runner sets it anyway)
    tmp = Path(tempfile.mkdtemp(prefix="line_throughput-"))
    fake = None if args.no_genicam or not args.paced_frames else start_emulator()
    try:
        rt = Runtime(package, args.backend, args.precision, max_batch=args.batch)
        contenders, paced_runs, logged, folders = {}, {}, {}, {}
        for share in args.defect_shares:
            tag = f"{share:.0%}"
            data = folders[tag] = subset(Path(args.data), share, tmp / f"data-{tag}")
            cam = SimulatedCamera(str(data))
            cam.open()
            frames = [f[1] for f in cam.frames if f[1] is not None]
            stream = [f"source.path={data}", "source.kind=simulated", "source.loop=true"]

            def unpaced(stream=stream, tag=tag):
                s = run_line(package, args.frames, [*stream, "source.fps=0", *args.set], args)
                logged.setdefault(f"runner {tag}", []).append(s["log_records_total"])
                return s["images_per_s"]
            contenders[f"bare {tag}"] = lambda frames=frames: bare(rt, frames, args.batch, args.bare_seconds)
            contenders[f"runner {tag}"] = unpaced
        if args.paced_frames:
            sources = {"simulated": None}
            if fake is not None:
                sample = genicam_frames(300, args.fps)
                sources["GenICam"] = np.array([r.score for r in rt.inspect(sample, "BGR")])
            for share in args.defect_shares:
                tag = f"{share:.0%}"
                for name, scores in sources.items():
                    if scores is None:
                        sets = [f"source.path={folders[tag]}",
                                "source.kind=simulated", "source.loop=true", f"source.fps={args.fps}"]
                        pkg = package
                    else:
                        sets = [*GENICAM, f"source.genicam.features={{AcquisitionFrameRate: {args.fps}}}"]
                        pkg = failing_copy(package, scores, share, tmp / f"package-{tag}")
                    key = f"paced {name} {tag}"

                    def paced(pkg=pkg, sets=sets, key=key):
                        s = run_line(pkg, args.paced_frames, [*sets, *args.set], args)
                        paced_runs.setdefault(key, []).append(s)
                        return s["latency_ms_p99"]
                    contenders[key] = paced
        per_round = interleave(contenders, args.rounds)
    finally:
        if fake is not None:
            fake.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    result = summarize(args, per_round, paced_runs, logged, rt)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "per_round"}, indent=1))
    if args.plot:
        plot(result, Path(args.plot))


def summarize(args, per_round: dict, paced_runs: dict, logged: dict, rt: Runtime) -> dict:
    throughput = {}
    for share in args.defect_shares:
        tag = f"{share:.0%}"
        b, r = np.asarray(per_round[f"bare {tag}"]), np.asarray(per_round[f"runner {tag}"])
        throughput[tag] = {"bare_images_per_s": spread(list(b)), "runner_images_per_s": spread(list(r)),
                           "ratio": spread(list(r / b), 3), "parts_logged_per_run": logged[f"runner {tag}"],
                           "frames_per_run": args.frames}
    paced = {}
    for key, runs in paced_runs.items():
        paced[key.removeprefix("paced ")] = {
            "latency_ms_p99": spread([s["latency_ms_p99"] for s in runs]),
            "latency_ms_p50": spread([s["latency_ms_p50"] for s in runs]),
            "frames_per_run": args.paced_frames, "dropped": [s["frames_dropped_total"] for s in runs],
            "parts_logged_per_run": [s["log_records_total"] for s in runs]}
    return {"date": time.strftime("%Y-%m-%d"), "cpu": cpu_name(), "cores": os.cpu_count(),
            "package": str(args.package), "backend": f"{rt.backend} ({rt.precision})", "batch": args.batch,
            "fps": args.fps, "rounds": args.rounds, "station_overrides": args.set, "throughput": throughput,
            "paced": paced, "per_round": per_round}


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for ax, items, key, title, target in (
            (a, result["throughput"], "ratio", "runner ÷ bare runtime (same round)", 0.9),
            (b, result["paced"], "latency_ms_p99", f"capture → verdict p99 at {result['fps']:g} fps (ms)", 20)):
        names = list(items)
        med = [items[n][key]["median"] for n in names]
        lo = [m - items[n][key]["min"] for n, m in zip(names, med)]
        hi = [items[n][key]["max"] - m for n, m in zip(names, med)]
        ax.bar(range(len(names)), med, yerr=[lo, hi], capsize=4, color="#4c72b0")
        ax.axhline(target, color="#c44e52", ls="--", lw=1, label=f"target {target:g}")
        ax.set_xticks(range(len(names)), [f"{n} defects" for n in names], rotation=20, ha="right")
        ax.set_title(title, fontsize=10)
        if key.startswith("latency"):
            ax.set_yscale("log")
        ax.legend(fontsize=8)
    fig.suptitle(f"{result['cpu']}, {result['cores']} cores, {result['backend']}, median and min–max of "
                 f"{result['rounds']} rounds", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
