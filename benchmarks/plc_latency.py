"""PLC handshake latency: trigger → ResultReady over OPC UA and Modbus TCP on loopback, beside the bare model.

    python benchmarks/plc_latency.py [--package runs/demo/ours/package] [--data data/synthetic] [--parts 300]

1. bare model: Runtime.inspect() on one decoded frame at a time (what a triggered part costs), before and after.
2. `inspection run` in its own process with both PLC servers (OPC UA with Basic256Sha256 sign-and-encrypt and a
   password; Modbus TCP), the simulated camera replaying the set, failures logged as on a line.
3. one client per protocol, in this process: write the part ID, trigger, poll ResultReady, read the result,
   acknowledge; `--parts` parts each. Client latency = trigger sent → ResultReady seen. Handshake overhead of a
   part = its client latency − the runner's own capture → verdict time for it (the JSON line's latency_ms), so
   the model's time is taken out part by part.
4. webhook: the runner's throughput (in this process, as benchmarks/line_throughput.py) with no webhook, with a
   live endpoint, with a refused one (nothing listens) and with a slow one (answers after 5 s), side by side.
Prints p50/p99 per protocol and img/s per webhook case; writes benchmarks/results/plc_latency.json.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from inspection.deploy.line.sources import SimulatedCamera  # noqa: E402
from inspection.deploy.runtime import Runtime  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bare(package: Path, data: str, n: int) -> list[float]:
    cam = SimulatedCamera(data)
    cam.open()
    frames = [image for _, image, _ in cam.frames if image is not None]
    rt = Runtime(package, backend="cpu", max_batch=1)
    rt.inspect(frames[:1], "BGR")
    out = []
    for i in range(n):
        t = time.perf_counter()
        rt.inspect([frames[i % len(frames)]], "BGR")
        out.append(time.perf_counter() - t)
    return out


async def modbus(port: int, parts: int) -> dict[str, float]:
    from pymodbus.client import AsyncModbusTcpClient

    c = AsyncModbusTcpClient("127.0.0.1", port=port)
    await c.connect()
    got = {}
    for i in range(parts):
        seq = 500000 + i
        await c.write_registers(0, [seq >> 16, seq & 0xFFFF])
        await c.write_coil(0, False)
        t = time.perf_counter()
        await c.write_coil(0, True)
        while not (await c.read_discrete_inputs(0, count=3)).bits[2]:
            pass
        got[str(seq)] = time.perf_counter() - t
        await c.read_holding_registers(0, count=18)
        await c.write_coil(1, False)
        await c.write_coil(1, True)
    c.close()
    return got


async def opcua_connect(port: int, pki: Path):
    """A PLC's OPC UA session (Basic256Sha256 sign & encrypt, user plc) and the namespace index and station object."""
    from asyncua import Client
    from asyncua.crypto.cert_gen import setup_self_signed_certificate
    from cryptography.x509.oid import ExtendedKeyUsageOID

    cert, key = pki / "bench-cert.der", pki / "bench-key.pem"
    await setup_self_signed_certificate(key, cert, "urn:bench:plc", socket.gethostname(),
                                        [ExtendedKeyUsageOID.CLIENT_AUTH], {"commonName": "bench"})
    c = Client(f"opc.tcp://127.0.0.1:{port}/inspection/")
    c.application_uri = "urn:bench:plc"
    c.set_user("plc")
    c.set_password("bench")
    await c.set_security_string(f"Basic256Sha256,SignAndEncrypt,{cert},{key}")
    await c.connect()
    ns = await c.get_namespace_index("urn:inspection:plc")
    return c, ns, await c.nodes.objects.get_child([f"{ns}:bench"])


async def opcua(port: int, parts: int, pki: Path) -> dict[str, float]:
    c, ns, obj = await opcua_connect(port, pki)
    start, ack = await obj.get_child(f"{ns}:StartSingleJob"), await obj.get_child(f"{ns}:AcknowledgeResult")
    ready = await obj.get_child(f"{ns}:ResultReady")
    result = await (await obj.get_child(f"{ns}:Result")).get_child(f"{ns}:DefectScore")
    got = {}
    for i in range(parts):
        part = f"B-{i:05d}"
        t = time.perf_counter()
        await obj.call_method(start, part)
        while not await ready.read_value():
            pass
        got[part] = time.perf_counter() - t
        await result.read_value()
        await obj.call_method(ack)
    await c.disconnect()
    return got


def webhook_throughput(package: Path, data: str, frames: int, tmp: Path) -> dict[str, float]:
    """Runner img/s with the webhook off, to a live endpoint, to a refused port, to an endpoint that hangs 5 s."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from inspection.deploy.line.runner import LineRunner
    from inspection.deploy.line.station import load_station

    def server(delay: float) -> ThreadingHTTPServer:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                self.rfile.read(int(self.headers["Content-Length"]))
                time.sleep(delay)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *a):
                pass

        srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        srv.daemon_threads = True
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        return srv

    live, slow = server(0.0), server(5.0)
    urls = {"no webhook": "", "live endpoint": f"http://127.0.0.1:{live.server_address[1]}/",
            "refused (nothing listens)": f"http://127.0.0.1:{free_port()}/",
            "slow endpoint (5 s per answer)": f"http://127.0.0.1:{slow.server_address[1]}/"}
    out = {}
    os.environ.setdefault("WEBHOOK_SECRET", "benchmark-secret")
    for name, url in urls.items():
        log = tmp / f"webhook-{len(out)}"
        cfg = load_station(None, [f"package={package}", f"source.path={data}", "source.kind=simulated",
                                  "source.loop=true", f"source.limit={frames}", "queue.policy=block", "reload_s=0",
                                  f"jsonl={log / 'verdicts.jsonl'}", f"log.folder={log}", f"webhook.url={url}",
                                  "webhook.flush_s=0", "webhook.timeout_s=10"])
        runner = LineRunner(cfg)
        runner.self_check()
        runner.run()
        ts = [json.loads(x)["ts"] for x in (log / "verdicts.jsonl").read_text().splitlines()]
        out[name] = round((len(ts) - 1) / (max(ts) - min(ts)), 1)  # the line's rate, stop and flush aside
        print(f"webhook, {name}: {out[name]} img/s", flush=True)
    live.shutdown()
    return out


def pct(values, q) -> float:
    return round(float(np.percentile(np.asarray(values) * 1000, q)), 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--package", default="runs/demo/ours/package")
    ap.add_argument("--data", default="data/synthetic")
    ap.add_argument("--parts", type=int, default=300)
    ap.add_argument("--webhook-frames", type=int, default=1500)
    ap.add_argument("--out", default="benchmarks/results/plc_latency.json")
    args = ap.parse_args()
    package = Path(args.package)
    before = bare(package, args.data, args.parts)
    tmp = Path(tempfile.mkdtemp(prefix="plc-bench-"))
    ua, mb = free_port(), free_port()
    sets = {"package": package, "source.path": args.data, "source.loop": "true", "jsonl": tmp / "verdicts.jsonl",
            "log.folder": tmp / "log", "reload_s": 0, "station": "bench", "plc.opcua.port": ua,
            "plc.modbus.port": mb, "plc.opcua.username": "plc", "plc.opcua.pki": tmp / "pki"}
    err = open(tmp / "runner.err", "w")
    proc = subprocess.Popen([sys.executable, "-m", "inspection.cli", "run"] +
                            [a for k, v in sets.items() for a in ("--set", f"{k}={v}")],
                            stderr=err, env=dict(os.environ, OPCUA_PASSWORD="bench"))
    while "self-check plc" not in (tmp / "runner.err").read_text():
        if proc.poll() is not None:
            sys.exit((tmp / "runner.err").read_text())
        time.sleep(0.1)
    print(f"runner up; {args.parts} parts per protocol", flush=True)
    try:
        client = {"Modbus TCP": asyncio.run(modbus(mb, args.parts)),
                  "OPC UA (Basic256Sha256, sign & encrypt)": asyncio.run(opcua(ua, args.parts, tmp / "pki"))}
    finally:
        proc.terminate()
        proc.wait(30)
    after = bare(package, args.data, args.parts)
    lines = {x["part_id"]: x for x in map(json.loads, (tmp / "verdicts.jsonl").read_text().splitlines())}
    report = {"date": time.strftime("%Y-%m-%d"), "package": str(package), "parts": args.parts,
              "cpu_count": os.cpu_count(),
              "bare_model_ms": {"p50": pct(before + after, 50), "p99": pct(before + after, 99),
                                "p50_before": pct(before, 50), "p50_after": pct(after, 50)}, "protocols": {}}
    print(f"bare model, one frame: p50 {report['bare_model_ms']['p50']} ms, p99 {report['bare_model_ms']['p99']} ms")
    for name, got in client.items():
        runner = [lines[p]["latency_ms"] / 1000 for p in got]
        overhead = [c - r for c, r in zip(got.values(), runner)]
        row = {"trigger_to_result_ready_ms": {"p50": pct(list(got.values()), 50), "p99": pct(list(got.values()), 99)},
               "runner_capture_to_verdict_ms": {"p50": pct(runner, 50), "p99": pct(runner, 99)},
               "handshake_overhead_ms": {"p50": pct(overhead, 50), "p99": pct(overhead, 99)}}
        report["protocols"][name] = row
        print(f"{name}: trigger → ResultReady p50 {row['trigger_to_result_ready_ms']['p50']} ms, "
              f"p99 {row['trigger_to_result_ready_ms']['p99']} ms; runner capture → verdict p50 "
              f"{row['runner_capture_to_verdict_ms']['p50']} ms; handshake overhead p50 "
              f"{row['handshake_overhead_ms']['p50']} ms, p99 {row['handshake_overhead_ms']['p99']} ms")
    report["webhook_runner_img_per_s"] = webhook_throughput(package, args.data, args.webhook_frames, tmp)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
