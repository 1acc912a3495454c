"""Review-station queue latency on a large failure log (target: under 200 ms with 100 000 records).

    python benchmarks/review_queue.py [--records 100000] [--requests 30]

Fills a fresh SQLite failure log with N records (3 stations, 30 days, mixed verdicts, scores, defect types and
review states), serves the real app with uvicorn in a separate process, logs in, and times HTTP requests from
this process: the queue page (HTML) and API with typical filters, a deep page (key paging), a part page.
Prints p50 / p95 / max per request and writes benchmarks/results/review_queue.json.
"""
from __future__ import annotations

import argparse
import json
import random
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from inspection.deploy.review.accounts import Accounts  # noqa: E402
from inspection.deploy.store.sql import SQLiteStore  # noqa: E402


def fill(folder: Path, n: int, seed: int = 0) -> None:
    store = SQLiteStore(folder / "failures.db", folder, fsync=False)
    rng = random.Random(seed)
    now = time.time()
    rows = []
    for i in range(n):
        ts = now - 30 * 86400 * (1 - i / n)
        verdict = rng.choices(["fail", "review", "error"], [0.8, 0.18, 0.02])[0]
        status = rng.choices(["unreviewed", "confirmed", "false_alarm", "unsure"], [0.5, 0.3, 0.15, 0.05])[0]
        rows.append((f"p{i:07d}", f"line-{i % 3 + 1}", ts, "v1", verdict, None if verdict == "error" else rng.random(),
                     rng.choice(["scratch", "hole", "stain", "crack", "chip"]),
                     json.dumps([{"x0": 1, "y0": 2, "x1": 30, "y1": 40, "score": 0.9, "area": 300}]),
                     json.dumps({"image": f"x/p{i}.png", "map": f"x/p{i}-map.png"}), 40_000, status))
    with store.db:
        store.db.executemany("INSERT INTO failures (part_id, station, ts, model_version, verdict, score, defect_type, "
                             "boxes, files, bytes, review_status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        store.tally("line-1", {(time.strftime("%Y-%m-%d"), "pass"): 10 * n})
    store.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", type=int, default=100_000)
    p.add_argument("--requests", type=int, default=30, help="per request kind")
    p.add_argument("--work", default="runs/bench-review", help="scratch folder (recreated)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "review_queue.json"))
    args = p.parse_args()

    work = Path(args.work)
    if work.exists():
        import shutil
        shutil.rmtree(work)
    work.mkdir(parents=True)
    t0 = time.time()
    fill(work, args.records)
    Accounts(work / "review.db").add_user("bench", "bench-password", "lead")
    print(f"filled {args.records} records in {time.time() - t0:.1f} s", file=sys.stderr)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-c", (
        "import sys; sys.path.insert(0, %r); import uvicorn; from pathlib import Path; "
        "from inspection.deploy.review.app import ReviewConfig, create_app; "
        "uvicorn.run(create_app(ReviewConfig(Path(%r))), host='127.0.0.1', port=%d, log_level='warning')")
        % (str(ROOT), str(work), port)])
    base = f"http://127.0.0.1:{port}"
    try:
        client = httpx.Client(base_url=base, timeout=30)
        for _ in range(100):
            try:
                client.get("/health")
                break
            except httpx.TransportError:
                time.sleep(0.1)
        client.post("/login", data={"user": "bench", "password": "bench-password"})
        first = client.get("/api/parts", params={"limit": 50}).json()
        deep_cursor = None
        page = client.get("/api/parts", params={"limit": 500}).json()
        for _ in range(int(0.9 * args.records) // 500 - 1):  # walk to ~90 % depth by key
            page = client.get("/api/parts", params={"limit": 500, "before": page["next"]}).json()
        deep_cursor = page["next"]
        day = time.strftime("%Y-%m-%d", time.localtime(time.time() - 10 * 86400))
        cases = {
            "queue page (HTML), no filter": ("/", {}),
            "queue API, no filter": ("/api/parts", {}),
            "unreviewed, one station": ("/", {"station": "line-2", "review_status": "unreviewed"}),
            "defect type + score range": ("/", {"defect_type": "hole", "score_min": 0.5, "score_max": 0.9}),
            "one day": ("/", {"date_from": day, "date_to": day}),
            "deep page (90 %, by key)": ("/", {"before": deep_cursor}),
            "part page": (f"/parts/{first['parts'][0]['id']}", {}),
            "statistics (30 days)": ("/stats", {}),
        }
        results = {}
        for name, (path, params) in cases.items():
            times = []
            for _ in range(args.requests):
                t = time.perf_counter()
                r = client.get(path, params=params)
                times.append(1000 * (time.perf_counter() - t))
                assert r.status_code == 200, (name, r.status_code, r.text[:200])
            times.sort()
            results[name] = {"p50_ms": round(times[len(times) // 2], 1),
                             "p95_ms": round(times[int(0.95 * (len(times) - 1))], 1), "max_ms": round(times[-1], 1),
                             "total": (int(m.group(1)) if (m := re.search(r"(\d+) part\(s\)", r.text)) else None)}
    finally:
        server.terminate()
        server.wait(10)

    print(f"{'request':32s} {'p50 ms':>8s} {'p95 ms':>8s} {'max ms':>8s}  matches")
    for name, r in results.items():
        print(f"{name:32s} {r['p50_ms']:8.1f} {r['p95_ms']:8.1f} {r['max_ms']:8.1f}  {r['total'] or ''}")
    worst = max(r["p95_ms"] for r in results.values())
    print(f"worst p95: {worst:.1f} ms (target < 200 ms): {'met' if worst < 200 else 'NOT met'}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"records": args.records, "requests": args.requests, "results": results,
                                          "worst_p95_ms": worst}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
