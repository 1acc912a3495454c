"""The review station's peak memory when a part's stored files are image bombs of each accepted format.

    python benchmarks/image_bombs.py [--side 16000] [--rounds 3]

A station that can write the failure-log folder replaces a part's image, overlay and map with a bomb: a real
side x side image (the attack run's 16000 x 16000) whose size sits where a header read of the first 256 KB
missed it: lossless WebP, a deflate TIFF whose first IFD follows its (partly noisy) image data, a JPEG whose
frame header follows 320 KB of APP segments, and a 30000 x 30000 PNG. The review station runs as
`inspection review` in its own process; for each bomb the script asks the part page, the thumbnail, the map to
paint on (model's and corrected) and the raw files, and reads the station's peak RSS (VmHWM, reset before each
bomb) against its idle RSS. Rounds interleave the formats; prints median and spread and writes
benchmarks/results/image_bombs.json. Runs against any tree (PYTHONPATH), so the same file measures a version
before the header check was complete.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from journal_replay import _cpu  # noqa: E402 - beside this script

from inspection.deploy.review.accounts import Accounts, default_accounts  # noqa: E402
from inspection.deploy.store.schema import FailureRecord  # noqa: E402
from inspection.deploy.store.sql import SQLiteStore  # noqa: E402

USER = ("bench", "bench-password")


def bombs(side: int) -> dict[str, bytes]:
    """format → a real side x side colour image (PNG: 30000 x 30000 gray) whose size the old check missed."""
    img = np.zeros((side, side, 3), np.uint8)
    out = {"webp": cv2.imencode(".webp", img[..., 0], [cv2.IMWRITE_WEBP_QUALITY, 101])[1].tobytes()}
    jpg = cv2.imencode(".jpg", img)[1].tobytes()
    app = b"".join(b"\xff\xe2" + struct.pack(">H", 60_002) + bytes(60_000) for _ in range(6))  # 360 KB of APP2
    out["jpeg"] = jpg[:2] + app + jpg[2:]
    rows = 1_200_000 // (3 * side) + 1
    img[:rows] = np.random.default_rng(0).integers(0, 255, (rows, side, 3), np.uint8)  # over 1.1 MB before the IFD
    out["tiff"] = cv2.imencode(".tif", img, [cv2.IMWRITE_TIFF_COMPRESSION, 8])[1].tobytes()
    out["png"] = _png_bomb(30000)
    return out


def _png_bomb(side: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    z, rows = zlib.compressobj(9), bytes(side + 1) * 1000
    data = b"".join(z.compress(rows) for _ in range(side // 1000)) + z.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", data) + chunk(b"IEND", b""))


def make_log(folder: Path, files: dict[str, bytes]) -> dict[str, int]:
    """A failure log with one part per bomb (small real files first, then overwritten); format → part id."""
    store = SQLiteStore(folder / "failures.db", folder, fsync=False)
    small = cv2.imencode(".png", np.zeros((64, 64, 3), np.uint8))[1].tobytes()
    small_map = cv2.imencode(".png", np.zeros((8, 8), np.uint16))[1].tobytes()
    ids = {}
    for i, fmt in enumerate(files):
        rec = FailureRecord(f"part-{fmt}", "line-1", time.time() - 60 + i, "v1", "fail", 0.9, "scratch", [])
        ids[fmt] = store.add(rec, {"image": (".png", small), "overlay": (".jpg", small), "map": (".png", small_map)})
        for kind in ("image", "overlay", "map"):
            store.stored_file(rec.files[kind], kind).write_bytes(files[fmt])
        store.add_review(ids[fmt], "bench", "false_alarm")  # the latest correction is looked up too
    store.close()
    accounts = Accounts(default_accounts(folder))
    accounts.add_user(*USER, role="lead")
    accounts.close()
    return ids


def _vm(pid: int, key: str) -> float:
    return int(re.search(rf"{key}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text()).group(1)) / 1024


def main() -> None:
    import httpx

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--side", type=int, default=16000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--work", default="runs/bench-bombs", help="scratch folder (recreated)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "image_bombs.json"))
    args = p.parse_args()

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    files = bombs(args.side)
    print({k: f"{len(v) / 1e6:.2f} MB" for k, v in files.items()}, file=sys.stderr)
    ids = make_log(work / "log", files)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "inspection.cli", "review", "--log", str(work / "log"),
                               "--port", str(port)], stderr=subprocess.DEVNULL)
    base, results = f"http://127.0.0.1:{port}", {fmt: [] for fmt in files}
    try:
        deadline = time.time() + 60
        while True:
            try:
                httpx.get(base + "/health", timeout=2)
                break
            except httpx.HTTPError:
                assert time.time() < deadline, "the review station did not start"
                time.sleep(0.2)
        client = httpx.Client(base_url=base, timeout=300)
        client.post("/login", data={"user": USER[0], "password": USER[1]})
        for r in range(args.rounds):
            for fmt, part in ids.items():
                Path(f"/proc/{server.pid}/clear_refs").write_text("5")  # VmHWM counts from here
                idle = _vm(server.pid, "VmRSS")
                t = time.perf_counter()
                codes = {path: client.get(path).status_code for path in (
                    f"/parts/{part}", f"/parts/{part}/thumb.jpg", f"/parts/{part}/attention.png",
                    f"/parts/{part}/attention.png?corrected=1", f"/parts/{part}/file/image")}
                results[fmt].append({"idle_mb": round(idle), "peak_mb": round(_vm(server.pid, "VmHWM")),
                                     "seconds": round(time.perf_counter() - t, 2), "answers": list(codes.values())})
                print(f"round {r + 1} {fmt}: {results[fmt][-1]}", file=sys.stderr)
    finally:
        server.terminate()
        server.wait(30)
    summary = {"side": args.side, "file_mb": {k: round(len(v) / 1e6, 2) for k, v in files.items()},
               "per_format": {fmt: {"peak_over_idle_mb_median": statistics.median(x["peak_mb"] - x["idle_mb"]
                                                                                  for x in rows),
                                    "peak_over_idle_mb_min_max": [min(x["peak_mb"] - x["idle_mb"] for x in rows),
                                                                  max(x["peak_mb"] - x["idle_mb"] for x in rows)],
                                    "idle_mb_median": statistics.median(x["idle_mb"] for x in rows),
                                    "answers": rows[-1]["answers"]} for fmt, rows in results.items()},
               "requests": ["part page", "thumbnail", "attention.png", "attention.png?corrected=1", "file/image"],
               "rounds": results, "cpu": _cpu(), "date": time.strftime("%Y-%m-%d")}
    print(json.dumps(summary["per_format"], indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=1) + "\n")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
