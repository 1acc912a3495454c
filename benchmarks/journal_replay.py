"""How fast a long verdict journal is replayed at start-up, and the peak memory it takes.

    python benchmarks/journal_replay.py [--entries 1000000] [--rounds 3] [--fsync]

Writes a journal of N entries as the runner writes them (one failed part per line with two boxes: about 250
bytes a line, so 1 M entries are some 245 MB, the attack run's journal), then, in a fresh process per round,
replays it into a new SQLite failure log exactly as a starting runner does (`FailureLogWriter`, the station's
log.fsync). Prints entries/s and the child's peak RSS per round, median and spread, and writes
benchmarks/results/journal_replay.json. Runs against any tree (PYTHONPATH): a version without the batched
replay is timed through its recover_journal.
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STATION = "bench"


def write_journal(path: Path, n: int) -> int:
    """n journal lines of failed parts, as the runner's FailureLogWriter._row writes them; the bytes written."""
    boxes = [{"x0": 12, "y0": 40, "x1": 61, "y1": 88, "score": 0.913, "area": 1540},
             {"x0": 140, "y0": 22, "x1": 151, "y1": 37, "score": 0.81, "area": 96}]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"part_id": f"P{i:09d}", "station": STATION, "ts": 1.79e9 + i * 0.02,
                                "model_version": "2026-12-01-abn-efficientnet_lite0", "verdict": "fail",
                                "score": 0.8731, "defect_type": "scratch", "boxes": boxes,
                                "crop": [0, 0, 640, 480], "camera": None}) + "\n")
    return path.stat().st_size


def replay(folder: Path, fsync: bool) -> dict:
    """In this process: open the log and replay the journal as a starting runner does; seconds and peak RSS."""
    sys.path.insert(0, str(ROOT))
    from inspection.deploy.line.failure_log import FailureLogWriter
    from inspection.deploy.line.prometheus import Metrics
    from inspection.deploy.line.station import load_station
    from inspection.deploy.store.sql import SQLiteStore

    cfg = load_station(None, [f"log.folder={folder}", f"station={STATION}", f"log.fsync={str(fsync).lower()}"])
    store = SQLiteStore(folder / "failures.db", folder, fsync=fsync)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    writer = FailureLogWriter(cfg, store, Metrics(), logging.getLogger("bench"))
    if hasattr(writer, "replay_journals"):  # batched, in its own thread at the runner's start: timed here alone
        writer.replay.start()
        writer.replay.join()
    else:  # versions before: synchronous in the runner's constructor, one transaction per part
        writer.recover_journal()
    seconds = time.perf_counter() - t
    n = store._rows("SELECT COUNT(*) AS n FROM failures")[0]["n"]
    return {"logged": n, "seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_before_mb": rss0 / 1024}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--entries", type=int, default=1_000_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--fsync", action=argparse.BooleanOptionalAction, default=True,
                   help="log.fsync as on a line PC without a UPS (the default); --no-fsync for one with")
    p.add_argument("--work", default="runs/bench-journal", help="scratch folder (recreated)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "journal_replay.json"))
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(replay(Path(args.child), args.fsync)))
        return

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    source = work / "journal.jsonl"
    size = write_journal(source, args.entries)
    print(f"journal: {args.entries} entries, {size / 2**20:.0f} MB", file=sys.stderr)
    rounds = []
    for r in range(args.rounds):
        folder = work / f"round{r}"
        journal = folder / "outbox" / STATION / "journal.jsonl"
        journal.parent.mkdir(parents=True)
        shutil.copyfile(source, journal)
        out = subprocess.run([sys.executable, __file__, "--child", str(folder), "--fsync" if args.fsync else
                              "--no-fsync"], capture_output=True, text=True, check=True)
        result = json.loads(out.stdout.splitlines()[-1])
        assert result["logged"] == args.entries, result
        result["entries_per_s"] = args.entries / result["seconds"]
        rounds.append(result)
        print(f"round {r + 1}: {result['seconds']:.1f} s, {result['entries_per_s']:.0f} entries/s, peak RSS "
              f"{result['peak_rss_mb']:.0f} MB", file=sys.stderr)
        shutil.rmtree(folder)
    rates = [r["entries_per_s"] for r in rounds]
    peaks = [r["peak_rss_mb"] for r in rounds]
    summary = {"entries": args.entries, "journal_mb": round(size / 2**20, 1), "fsync": args.fsync,
               "seconds_median": round(statistics.median(r["seconds"] for r in rounds), 2),
               "entries_per_s_median": round(statistics.median(rates)),
               "entries_per_s_min_max": [round(min(rates)), round(max(rates))],
               "peak_rss_mb_median": round(statistics.median(peaks)), "peak_rss_mb_max": round(max(peaks)),
               "rounds": rounds, "cpu": _cpu(), "python": platform.python_version(),
               "date": time.strftime("%Y-%m-%d")}
    print(json.dumps({k: v for k, v in summary.items() if k != "rounds"}, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=1) + "\n")
    shutil.rmtree(work, ignore_errors=True)


def _cpu() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


if __name__ == "__main__":
    main()
