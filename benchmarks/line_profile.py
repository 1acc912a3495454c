"""Where the line runner's time and CPU go at 100 fps: per-frame stage times and CPU per thread, per run.

    python benchmarks/line_profile.py [--package runs/demo/ours/package] [--frames 1000] [--fps 100]
                                      [--defect-shares 0.05 0.43] [--sources simulated genicam] [--rounds 1]
    python benchmarks/line_profile.py --sources simulated --fps 0     # unpaced: where the throughput goes

One paced run per source (the simulated camera; the GenICam emulator arv-fake-gv-camera-0.8, 512x512
BayerRG8, free run at --fps) and defect share, set up as benchmarks/line_throughput.py does (the same subsets
of the set, the same threshold copies of the package for the emulator), with the failure log on (journal, PNG
image and map, fsync). The runner instance's methods are wrapped here, nothing in the product is changed:

- per frame (the first --skip left out), p50/p99 in ms: capture stamp → taken from the source's buffers and
  queued (`capture`: for GenICam the wait in Aravis' buffers and the demosaicing), queued → taken into a
  batch (`queue`), the model on its batch on the loop's thread (`judging`: preprocess, Runtime.prepare of its
  frames, and inference, Runtime._run), then on the verdict thread its boxes (Runtime.judge: boxes and the
  feature distance of flagged parts), the journal's write and fsync for its batch and its own announce
  (outputs.emit), and capture → verdict (`total`; it includes the wait for the verdict thread);
- per logged part, in the writer thread: encoding its files (image and map PNG), and per writer batch the
  store's add_many (files written, one syncfs, one transaction);
- CPU per thread over the run in cores (utime+stime from /proc/self/task/*/stat, sampled every 0.25 s):
  Python threads by their names (Thread.native_id), numpy's and OpenCV's pools (started before any model is
  loaded), the inference engine's threads (the other unnamed ones), and the rest by their /proc comm (Aravis'
  and GLib's threads name themselves); the emulator's process
  (/proc/<pid>/task), and the whole machine's busy share (/proc/stat).

Writes benchmarks/results/line_profile.json and prints a table.
"""
from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from line_throughput import (  # noqa: E402
    GENICAM,
    failing_copy,
    genicam_frames,
    run_line,
    start_emulator,
    subset,
)
from rounds import cpu_name  # noqa: E402

from inspection.deploy.line.runner import one_blas_thread  # noqa: E402
from inspection.deploy.runtime import Runtime  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
STAGES = ("capture", "queue", "preprocess", "inference", "boxes", "judging", "journal", "announce", "total")


def tasks(pid: int | str = "self") -> dict[int, tuple[str, int]]:
    """tid → (comm, utime+stime in clock ticks) of a process's threads; {} once it is gone."""
    out = {}
    try:
        entries = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return out
    for t in entries:
        try:
            stat = (t / "stat").read_text()
        except OSError:  # ended meanwhile
            continue
        comm, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
        out[int(t.name)] = (comm, int(rest[11]) + int(rest[12]))
    return out


def machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs since boot (/proc/stat; idle and iowait are not busy)."""
    v = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(v) - v[3] - v[4], sum(v)


def timed(record, fn):
    """fn, calling record(seconds, args, result) after each call."""
    @functools.wraps(fn)
    def wrapper(*a, **k):
        t = time.perf_counter()
        out = fn(*a, **k)
        record(time.perf_counter() - t, a, out)
        return out
    return wrapper


class Profile:
    """Entered around LineRunner.run(): wraps the instance's methods and samples the threads' CPU."""

    def __init__(self, pools: set[int], emulator: int | None, skip: int):
        self.pools, self.emulator, self.skip = pools, emulator, skip
        self.names: dict[int, str] = {}  # tid → label
        self.first: dict[int, int] = {}
        self.last: dict[int, int] = {}
        self.emu_first: dict[int, tuple[str, int]] = {}
        self.emu_last: dict[int, tuple[str, int]] = {}
        self.frames: dict[str, dict] = collections.defaultdict(dict)  # part ID → stage → seconds or a time
        self.calls: dict[str, list[float]] = collections.defaultdict(list)
        self.batch_sizes: list[int] = []
        self.done = threading.Event()

    def __call__(self, runner):
        self.r = runner
        return self

    # -- CPU ---------------------------------------------------------------------------------------------------
    def _label(self, tid: int, comm: str) -> str:
        if tid == os.getpid():
            return "main: preprocess, inference"
        py = {t.native_id: t.name for t in threading.enumerate()}
        if tid in py:
            return py[tid]
        if tid in self.pools:
            return "BLAS and OpenCV pools"
        # the inference engine's threads take the process's name; Aravis' and GLib's name themselves
        return "inference engine's threads" if comm == tasks()[os.getpid()][0] else comm

    def _sample(self, start: bool = False) -> None:
        """CPU ticks of every thread now; a thread first seen while the run goes counts from zero."""
        for tid, (comm, ticks) in tasks().items():
            if tid not in self.names:
                self.names[tid] = self._label(tid, comm)
                self.first[tid] = ticks if start else 0
            self.last[tid] = ticks
        if self.emulator:
            now = tasks(self.emulator)
            for tid, (comm, ticks) in now.items():
                self.emu_first.setdefault(tid, (comm, ticks if start else 0))
            self.emu_last.update(now)

    def _sampler(self) -> None:
        while not self.done.wait(0.25):
            self._sample()

    # -- stages ------------------------------------------------------------------------------------------------
    def _wrap(self) -> None:
        r, f = self.r, self.frames
        batch: list = []  # the batch the loop's thread is inferring
        vbatch: list = []  # the batch the verdict thread is finishing (boxes, journal, announce)

        def dequeued(dt, a, frames):
            now = time.time()
            batch[:] = frames
            if frames:
                self.batch_sizes.append(len(frames))
            for fr in frames:
                f[fr.part_id]["dequeued"] = now

        def enqueued(dt, a, out):
            f[a[0].part_id]["enqueued"] = time.time()

        def per_batch(stage, which=batch):
            def record(dt, a, out):
                for fr in which:
                    f[fr.part_id][stage] = f[fr.part_id].get(stage, 0.0) + dt
                self.calls[stage].append(dt)
            return record

        def judged(dt, a, out):
            per_batch("boxes", vbatch)(dt, a, out)
            self.calls["boxes, flagged part" if out.verdict != "pass" else "boxes, passed part"].append(dt)

        def emitted(dt, a, out):
            f[a[0].part_id].update(announce=dt, done=time.time(), ts=a[0].ts)

        r.capture.next_batch = timed(dequeued, r.capture.next_batch)
        r.capture._enqueue = timed(enqueued, r.capture._enqueue)
        r._infer_safely = timed(per_batch("judging"), r._infer_safely)
        finish = r._judge_safely

        def finish_batch(b, *rest):
            vbatch[:] = b
            return finish(b, *rest)
        r._judge_safely = finish_batch
        for rt in r.products.models.values():
            rt.prepare = timed(per_batch("preprocess"), rt.prepare)
            rt._run = timed(per_batch("inference"), rt._run)
            rt.judge = timed(judged, rt.judge)
        r.writer.journal = timed(per_batch("journal", vbatch), r.writer.journal)
        r.outputs.emit = timed(emitted, r.outputs.emit)
        r.writer._files = timed(lambda dt, a, out: self.calls["writer: encode a part"].append(dt), r.writer._files)
        r.store.add_many = timed(lambda dt, a, out: self.calls["writer: store a batch"].append(dt), r.store.add_many)
        if hasattr(r.capture.source, "_frame"):
            r.capture.source._frame = timed(lambda dt, a, out: self.calls["capture: frame from buffer"].append(dt),
                                            r.capture.source._frame)
        flush = r.writer._flush_tally

        def flush_and_sample():
            flush()
            self._sample()  # the writer's last call before it ends: its drain at shutdown counts too
        r.writer._flush_tally = flush_and_sample
        close = r.capture.close

        def close_after_sample():
            self._sample()  # Aravis' threads end with the stream
            close()
        r.capture.close = close_after_sample

    def __enter__(self):
        camera = getattr(self.r.capture.source, "camera", None)
        self.packet_size = camera.gv_get_packet_size() if camera is not None and camera.is_gv_device() else None
        self._wrap()
        self._sample(start=True)
        self.machine = machine_ticks()
        self.start = time.perf_counter()
        self.thread = threading.Thread(target=self._sampler, name="profiler", daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.start
        self.done.set()
        self.thread.join()
        self._sample()
        busy, total = machine_ticks()
        self.machine_busy = (busy - self.machine[0]) / max(1, total - self.machine[1])
        return False

    # -- results -----------------------------------------------------------------------------------------------
    def result(self) -> dict:
        rows = [v for v in list(self.frames.values())[self.skip:] if "done" in v and "dequeued" in v]
        stages = {}
        for s in STAGES:
            if s == "capture":
                v = [x["enqueued"] - x["ts"] for x in rows if "enqueued" in x]
            elif s == "queue":
                v = [x["dequeued"] - x.get("enqueued", x["ts"]) for x in rows]
            elif s == "total":
                v = [x["done"] - x["ts"] for x in rows]
            else:
                v = [x.get(s, 0.0) for x in rows]
            stages[s] = ms(v)
        calls = {k: {**ms(v), "calls": len(v)} for k, v in self.calls.items()
                 if k not in ("boxes", "judging")}
        cores = collections.Counter()
        for tid, label in self.names.items():
            cores[label] += (self.last[tid] - self.first[tid]) / TICK / self.wall
        emu = collections.Counter()
        for tid, (comm, ticks) in self.emu_last.items():
            emu[comm] += (ticks - self.emu_first[tid][1]) / TICK / self.wall
        runner = sum(cores.values())
        machine = self.machine_busy * os.cpu_count()
        first = [v for v in list(self.frames.values())[:self.skip] if "done" in v]
        startup = {"total": [round((v["done"] - v["ts"]) * 1000, 1) for v in first],
                   "inference": [round(v.get("inference", 0.0) * 1000, 1) for v in first],
                   "judging": [round(v.get("judging", 0.0) * 1000, 1) for v in first]}
        return {"frames": len(rows), "wall_s": round(self.wall, 2), "gige_packet_size": self.packet_size,
                "stages_ms": stages, "calls_ms": calls, "startup_frames_ms": startup,
                "batch_size": {"p50": float(np.percentile(self.batch_sizes, 50)), "max": max(self.batch_sizes)},
                "cpu_cores": {
                    "runner_threads": {k: round(v, 3) for k, v in cores.most_common() if v >= 0.0005},
                    "runner": round(runner, 3),
                    "emulator_threads": {k: round(v, 3) for k, v in emu.most_common() if v >= 0.0005},
                    "emulator": round(sum(emu.values()), 3),
                    "machine_busy": round(machine, 3),
                    "other_processes": round(machine - runner - sum(emu.values()), 3),
                    "machine_cores": os.cpu_count()}}


def ms(values: list[float]) -> dict:
    v = np.asarray(values, float) * 1000 if len(values) else np.zeros(1)
    return {"p50": round(float(np.percentile(v, 50)), 2), "p99": round(float(np.percentile(v, 99)), 2)}


def warm_pools() -> set[int]:
    """Start numpy's BLAS and OpenCV's thread pools before any model is loaded; their threads (returned)."""
    one_blas_thread()
    a = np.ones((256, 256), np.float32)
    _ = a @ a
    cv2.resize(np.zeros((1024, 1024, 3), np.uint8), (512, 512))
    return set(tasks())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--package", default="runs/demo/ours/package")
    p.add_argument("--data", default="data/synthetic")
    p.add_argument("--frames", type=int, default=1000, help="frames of each paced run")
    p.add_argument("--skip", type=int, default=50, help="first frames of a run left out of the stage times")
    p.add_argument("--fps", type=float, default=100.0)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--backend", default="auto")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--rounds", type=int, default=1, help="runs of each source and share, interleaved")
    p.add_argument("--defect-shares", type=float, nargs="+", default=[0.05, 0.43])
    p.add_argument("--sources", nargs="+", default=["simulated", "genicam"], choices=["simulated", "genicam"])
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="station overrides for the runner")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "line_profile.json"))
    args = p.parse_args()
    if args.fps <= 0 and "genicam" in args.sources:
        sys.exit("--fps 0 (as fast as taken) is for --sources simulated only: the emulator runs at a frame rate")
    package = Path(args.package).resolve()
    if not package.exists():
        sys.exit(f"{package}: not found; run `make demo` first (it exports the package)")
    pools = warm_pools()
    tmp = Path(tempfile.mkdtemp(prefix="line_profile-"))
    fake = start_emulator() if "genicam" in args.sources else None
    runs: dict[str, list] = {}
    try:
        plans = []
        if fake is not None:
            rt = Runtime(package, args.backend, args.precision, max_batch=args.batch)
            scores = np.array([r.score for r in rt.inspect(genicam_frames(300, args.fps), "BGR")])
            del rt
        for share in args.defect_shares:
            tag = f"{share:.0%}"
            if "simulated" in args.sources:
                data = subset(Path(args.data), share, tmp / f"data-{tag}")
                plans.append((f"simulated {tag}", package, [f"source.path={data}", "source.kind=simulated",
                                                            "source.loop=true", f"source.fps={args.fps}"]))
            if fake is not None:
                plans.append((f"GenICam {tag}", failing_copy(package, scores, share, tmp / f"package-{tag}"),
                              [*GENICAM, f"source.genicam.features={{AcquisitionFrameRate: {args.fps}}}"]))
        for k in range(args.rounds):
            for name, pkg, sets in plans[k % len(plans):] + plans[:k % len(plans)]:
                prof = Profile(pools, fake.pid if fake is not None else None, args.skip)
                s = run_line(pkg, args.frames, [*sets, *args.set], args, probe=prof)
                runs.setdefault(name, []).append({
                    "latency_ms_p50": s["latency_ms_p50"], "latency_ms_p99": s["latency_ms_p99"],
                    "dropped": s["frames_dropped_total"], "parts_logged": s["log_records_total"], **prof.result()})
                print(f"{name}: p99 {s['latency_ms_p99']} ms", file=sys.stderr)
    finally:
        if fake is not None:
            fake.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    result = {"date": time.strftime("%Y-%m-%d"), "cpu": cpu_name(), "cores": os.cpu_count(),
              "package": str(package), "batch": args.batch, "fps": args.fps, "frames_per_run": args.frames,
              "skipped_frames": args.skip, "station_overrides": args.set, "runs": runs}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(table(result))


def table(result: dict) -> str:
    """Stage p50/p99 and CPU per thread, one column per run (the first round of each)."""
    runs = {name: rs[0] for name, rs in result["runs"].items()}
    names = list(runs)
    lines = [f"{result['cpu']}, {result['cores']} cores, {result['fps']:g} fps, {result['frames_per_run']} frames "
             f"per run (first {result['skipped_frames']} left out)", "",
             "| ms, p50 / p99 | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for s in STAGES:
        lines.append(f"| {s} | " + " | ".join(f"{runs[n]['stages_ms'][s]['p50']:g} / {runs[n]['stages_ms'][s]['p99']:g}"
                                               for n in names) + " |")
    calls = sorted({k for r in runs.values() for k in r["calls_ms"]})
    for c in calls:
        lines.append(f"| {c} (per call) | " + " | ".join(
            f"{runs[n]['calls_ms'][c]['p50']:g} / {runs[n]['calls_ms'][c]['p99']:g}" if c in runs[n]["calls_ms"]
            else "" for n in names) + " |")
    lines += ["", "| CPU, cores | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    threads = sorted({k for r in runs.values() for k in r["cpu_cores"]["runner_threads"]},
                     key=lambda k: -max(r["cpu_cores"]["runner_threads"].get(k, 0) for r in runs.values()))
    rows = [(f"runner: {t}", lambda r, t=t: r["cpu_cores"]["runner_threads"].get(t, 0)) for t in threads]
    rows += [(k.replace("_", " "), lambda r, k=k: r["cpu_cores"][k]) for k in
             ("runner", "emulator", "other_processes", "machine_busy")]
    for label, get in rows:
        lines.append(f"| {label} | " + " | ".join(f"{get(runs[n]):.2f}" for n in names) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
