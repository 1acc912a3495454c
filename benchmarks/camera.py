"""The GenICam camera path: Aravis' GigE Vision emulator through the runner, beside the simulated source.

    python benchmarks/camera.py [--package runs/demo/ours/package] [--frames 600] [--fps 100]

Starts arv-fake-gv-camera-0.8 on 127.0.0.1 (`make genicam` installs it), then, in one run:
1. the camera alone: GenICamSource.read() as fast as the emulator sends (no model): frames/s and the CPU time
   the camera path takes per frame (receiving, buffer handling, conversion to a numpy image);
2. the runner on the camera at its native 512x512 (BayerRG8, demosaiced to colour as the demo's colour model
   needs; Mono8 frames it refuses as errors, never judged) and with the camera's ROI cut to the model's input
   size (the camera sends fewer bytes), the emulator set to --fps;
3. the runner on the simulated source (frames decoded in memory) paced at the same fps.
The failure log is off in all three (log.verdicts: []): the emulator's test pattern passes or goes to review while
a third of the simulated parts fail, and the cost of logging them is measured by benchmarks/line_throughput.py.
Prints frames/s and capture→verdict latency p50/p99 per run; writes benchmarks/results/camera.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from rounds import cpu_name  # noqa: E402

from inspection.deploy.line.genicam import GenICamSource, list_cameras  # noqa: E402
from inspection.deploy.line.runner import LineRunner  # noqa: E402
from inspection.deploy.line.station import load_station  # noqa: E402

SERIAL = "BENCH01"


def camera_alone(fps: float, seconds: float) -> dict:
    cfg = load_station(None, ["source.kind=genicam", f"source.genicam.device={SERIAL}",
                              f"source.genicam.features={{AcquisitionFrameRate: {fps}}}"]).source
    src = GenICamSource(cfg)
    src.open()
    src.read()  # the first frame: acquisition running
    n, cpu0, t0 = 0, time.process_time(), time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        src.read()
        n += 1
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    src.close()
    return {"frames": n, "frames_per_s": round(n / wall, 1), "cpu_ms_per_frame": round(1000 * cpu / n, 3)}


def runner(package: str, frames: int, sets: list[str], tmp: Path) -> dict:
    cfg = load_station(None, [f"package={package}", f"source.limit={frames}", f"jsonl={tmp / 'verdicts.jsonl'}",
                              f"log.folder={tmp / 'log'}", "log.verdicts=[]", "reload_s=0", "backend=cpu", *sets])
    r = LineRunner(cfg)
    r.self_check()
    start = time.perf_counter()
    s = r.run()
    elapsed = time.perf_counter() - start
    return {"frames": s["frames_total"], "frames_per_s": round(s["frames_total"] / elapsed, 1),
            "latency_ms_p50": s["latency_ms_p50"], "latency_ms_p99": s["latency_ms_p99"],
            "dropped": s["frames_dropped_total"], "errors": s["frames_error_total"],
            "incomplete": int(r.metrics.get("camera_frames_incomplete_total"))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--package", default="runs/demo/ours/package")
    p.add_argument("--data", default="data/synthetic", help="frames of the simulated source")
    p.add_argument("--frames", type=int, default=600)
    p.add_argument("--fps", type=float, default=100.0, help="the camera's (and the simulated source's) frame rate")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "camera.json"))
    args = p.parse_args()
    if not Path(args.package).exists():
        sys.exit(f"{args.package}: not found; run `make demo` first (it exports the package)")
    h, w = json.loads((Path(args.package) / "metadata.json").read_text())["input"]["size"]
    fake = subprocess.Popen(["arv-fake-gv-camera-0.8", "-i", "127.0.0.1", "-s", SERIAL],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 10
        while not any(c["serial"] == SERIAL for c in list_cameras()):
            if time.time() > deadline:
                sys.exit("arv-fake-gv-camera-0.8 did not come up (make genicam installs it)")
            time.sleep(0.1)
        cam = {"source.kind=genicam", f"source.genicam.device={SERIAL}", "source.genicam.pixel_format=BayerRG8",
               f"source.genicam.features={{AcquisitionFrameRate: {args.fps}}}", "queue.policy=block"}
        roi = [(512 - w) // 2 // 4 * 4, (512 - h) // 2 // 4 * 4, w, h]
        runs = {"camera alone (no model), 512x512": camera_alone(1000.0, 5.0)}
        print(json.dumps(runs), flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            for name, sets in ((f"runner, camera 512x512 BayerRG8 at {args.fps:g} fps", sorted(cam)),
                               (f"runner, camera ROI {w}x{h} (the model's input) at {args.fps:g} fps",
                                sorted(cam) + [f"source.genicam.roi={roi}"]),
                               (f"runner, simulated source at {args.fps:g} fps",
                                ["source.kind=simulated", f"source.path={args.data}", f"source.fps={args.fps}",
                                 "source.loop=true", "queue.policy=block"])):
                folder = Path(tmp) / str(len(runs))
                folder.mkdir()
                runs[name] = runner(args.package, args.frames, sets, folder)
                print(name, json.dumps(runs[name]), flush=True)
    finally:
        fake.kill()
    out = {"date": time.strftime("%Y-%m-%d"), "cpu": cpu_name(),
           "cores": os.cpu_count(), "package": args.package, "input": [h, w], "runs": runs}
    Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
