"""Product switches on one station: PrepareProduct → ready, and the line's throughput with a switch every 10 parts.

    python benchmarks/product_switch.py [--package runs/demo/ours/package] [--data data/synthetic] [--rounds 5]

Two products from one package (b: a copy under another model version, so each product has its own loaded
model), `inspection run` in its own process with both PLC servers, the simulated camera replaying the set,
failures logged as on a line. Per round, interleaved (the order of the two throughput runs alternates):

1. PrepareProduct → ready with both packages loaded ahead: `--switches` calls of OPC UA PrepareProduct
   (Basic256Sha256 sign & encrypt), alternating a and b, each timed from the call to its answer (the method
   returns once the product is prepared); the same over Modbus TCP: ProductNumber written, a rising Prepare
   edge, ProductState polled until ready.
2. throughput: parts over Modbus TCP (trigger, poll ResultReady, read the result, acknowledge) in blocks of 20,
   blocks without a switch and blocks with a Modbus prepare of the other product before parts 1 and 11 (a
   switch every 10 parts, its time included) taking turns (which comes first alternates per round), `--blocks`
   per round; a pair of neighbouring blocks gives one ratio (parts/s with switches ÷ without), so the load of
   a shared machine, which drifts over seconds, falls mostly out of each ratio.
3. once, a second runner with models_loaded 1: PrepareProduct to a product whose package is not loaded (the
   load and a warm-up call are part of the switch).
Prints the figures; writes benchmarks/results/product_switch.json (per round, median and spread).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from plc_latency import free_port, opcua_connect, pct


def variant(package: Path, dst: Path, version: str) -> Path:
    shutil.copytree(package, dst, ignore=shutil.ignore_patterns("engines"))
    meta = json.loads((dst / "metadata.json").read_text())
    meta["model_version"] = version
    (dst / "metadata.json").write_text(json.dumps(meta))
    return dst


def start_runner(tmp: Path, packages: dict, data: str, models_loaded: int) -> tuple[subprocess.Popen, int, int]:
    ua, mb = free_port(), free_port()
    station = {"station": "bench", "reload_s": 0, "jsonl": "", "models_loaded": models_loaded,
               "source": {"kind": "simulated", "path": data, "loop": True},
               "log": {"folder": str(tmp / "log"), "fsync": True},
               "plc": {"opcua": {"port": ua, "username": "plc", "pki": str(tmp / "pki")}, "modbus": {"port": mb}},
               "products": [{"id": p, "number": n, "package": str(packages[p])} for n, p in ((1, "a"), (2, "b"))]}
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "station.yaml").write_text(yaml.safe_dump(station))
    err = open(tmp / "runner.err", "w")
    proc = subprocess.Popen([sys.executable, "-m", "inspection.cli", "run", "--station", str(tmp / "station.yaml")],
                            stderr=err, env=dict(os.environ, OPCUA_PASSWORD="bench"))
    while "self-check plc" not in (tmp / "runner.err").read_text():
        if proc.poll() is not None:
            sys.exit((tmp / "runner.err").read_text())
        time.sleep(0.1)
    return proc, ua, mb


async def opcua_client(port: int, pki: Path):
    c, ns, obj = await opcua_connect(port, pki)
    return c, obj, await obj.get_child(f"{ns}:PrepareProduct")


async def opcua_prepares(port: int, pki: Path, n: int, start: str = "a") -> list[float]:
    """Seconds from each PrepareProduct call to its answer, alternating the products."""
    c, obj, prepare = await opcua_client(port, pki)
    out, product = [], start
    for _ in range(n):
        product = "b" if product == "a" else "a"
        t = time.perf_counter()
        _, error = await obj.call_method(prepare, product)
        out.append(time.perf_counter() - t)
        assert error == 0, f"PrepareProduct({product}) answered {error}"
    await c.disconnect()
    return out


async def modbus_prepare(c, number: int) -> float:
    await c.write_register(18, number)
    await c.write_coil(8, False)
    t = time.perf_counter()
    await c.write_coil(8, True)
    while (state := (await c.read_holding_registers(19, count=1)).registers[0]) not in (2, 3):
        pass
    assert state == 2, f"prepare of product {number} refused"
    return time.perf_counter() - t


BLOCK = 20  # parts per throughput block


async def modbus_part(c, seq: int) -> None:
    """One part as a PLC runs it: part number, trigger, ResultReady, the result registers, acknowledge."""
    await c.write_registers(0, [seq >> 16, seq & 0xFFFF])
    await c.write_coil(0, False)
    await c.write_coil(0, True)
    while not (await c.read_discrete_inputs(0, count=3)).bits[2]:
        pass
    await c.read_holding_registers(0, count=22)
    await c.write_coil(1, False)
    await c.write_coil(1, True)


async def modbus_blocks(port: int, blocks: int, switch_first: bool, prepares: list[float]) -> list[tuple]:
    """Seconds per block of BLOCK parts, (switching, seconds) each; blocks with and without switches in turn."""
    from pymodbus.client import AsyncModbusTcpClient

    c = AsyncModbusTcpClient("127.0.0.1", port=port)
    await c.connect()
    number, out = 1, []
    await modbus_prepare(c, number)
    for k in range(blocks):
        switching = (k % 2 == 0) == switch_first
        t0 = time.perf_counter()
        for i in range(BLOCK):
            if switching and i % 10 == 0:
                number = 3 - number
                prepares.append(await modbus_prepare(c, number))
            await modbus_part(c, 700000 + k * BLOCK + i)
        out.append((switching, time.perf_counter() - t0))
    c.close()
    return out


ms = pct  # milliseconds at a percentile, from seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--package", default="runs/demo/ours/package")
    ap.add_argument("--data", default="data/synthetic")
    ap.add_argument("--blocks", type=int, default=20, help=f"throughput blocks of {BLOCK} parts per round")
    ap.add_argument("--switches", type=int, default=50, help="PrepareProduct calls per round")
    ap.add_argument("--out", default="benchmarks/results/product_switch.json")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="product-switch-"))
    packages = {"a": variant(Path(args.package), tmp / "a", "product-a-1"),
                "b": variant(Path(args.package), tmp / "b", "product-b-1")}
    proc, ua, mb = start_runner(tmp / "loaded", packages, args.data, 2)
    rounds = []
    try:
        asyncio.run(modbus_blocks(mb, 4, True, []))  # warm-up (not counted): both models, the log's files
        for k in range(args.rounds):
            opcua = asyncio.run(opcua_prepares(ua, tmp / "loaded" / "pki", args.switches))
            modbus_prepares: list[float] = []
            blocks = asyncio.run(modbus_blocks(mb, args.blocks, k % 2 == 1, modbus_prepares))
            pairs = []  # parts/s with switches ÷ without, of two neighbouring blocks (the same number of parts)
            for a, b in zip(blocks[::2], blocks[1::2]):
                t = dict([a, b])
                pairs.append(t[False] / t[True])
            seconds = {s: sum(t for switching, t in blocks if switching == s) for s in (False, True)}
            rate = {s: BLOCK * sum(1 for switching, _ in blocks if switching == s) / seconds[s] for s in seconds}
            row = {"opcua_prepare_ms": {"p50": ms(opcua, 50), "p99": ms(opcua, 99)},
                   "modbus_prepare_ms": {"p50": ms(modbus_prepares, 50), "p99": ms(modbus_prepares, 99)},
                   "parts_per_s_no_switch": round(rate[False], 1), "parts_per_s_switch_every_10": round(rate[True], 1),
                   "ratio": round(float(np.median(pairs)), 3),
                   "pair_ratios_quartiles": [round(float(q), 3) for q in np.percentile(pairs, [25, 75])],
                   "pair_ratios": [round(v, 3) for v in pairs], "opcua_samples_ms": [round(v * 1000, 2) for v in opcua]}
            rounds.append(row)
            print(f"round {k + 1}: PrepareProduct p50 {row['opcua_prepare_ms']['p50']} ms, p99 "
                  f"{row['opcua_prepare_ms']['p99']} ms; Modbus prepare p50 {row['modbus_prepare_ms']['p50']} ms; "
                  f"{row['parts_per_s_no_switch']} parts/s without switches, {row['parts_per_s_switch_every_10']} "
                  f"with a switch every 10 parts; median ratio of neighbouring blocks {row['ratio']}x "
                  f"(quartiles {row['pair_ratios_quartiles']})", flush=True)
    finally:
        proc.terminate()
        proc.wait(30)
    proc, ua, _ = start_runner(tmp / "one-loaded", packages, args.data, 1)
    try:
        unloaded = asyncio.run(opcua_prepares(ua, tmp / "one-loaded" / "pki", 10))
    finally:
        proc.terminate()
        proc.wait(30)
    print(f"PrepareProduct to a product whose package is not loaded (models_loaded 1): p50 {ms(unloaded, 50)} ms, "
          f"max {ms(unloaded, 100)} ms")

    def spread(key, sub=None) -> dict:
        vals = [r[key][sub] if sub else r[key] for r in rounds]
        return {"median": round(float(np.median(vals)), 3), "min": min(vals), "max": max(vals)}

    all_opcua = [v / 1000 for r in rounds for v in r["opcua_samples_ms"]]
    all_pairs = [v for r in rounds for v in r["pair_ratios"]]
    report = {"date": time.strftime("%Y-%m-%d"), "package": str(args.package), "data": args.data,
              "cpu": _cpu(), "cpu_count": os.cpu_count(), "rounds": args.rounds, "blocks": args.blocks,
              "block_parts": BLOCK,
              "switches_per_round": args.switches,
              "opcua_prepare_ms_all_rounds": {"p50": ms(all_opcua, 50), "p99": ms(all_opcua, 99)},
              "opcua_prepare_p50_ms": spread("opcua_prepare_ms", "p50"),
              "opcua_prepare_p99_ms": spread("opcua_prepare_ms", "p99"),
              "modbus_prepare_p50_ms": spread("modbus_prepare_ms", "p50"),
              "modbus_prepare_p99_ms": spread("modbus_prepare_ms", "p99"),
              "parts_per_s_no_switch": spread("parts_per_s_no_switch"),
              "parts_per_s_switch_every_10": spread("parts_per_s_switch_every_10"),
              "ratio_switch_every_10_to_none": spread("ratio"),
              "ratio_all_pairs": {"median": round(float(np.median(all_pairs)), 3), "pairs": len(all_pairs),
                                  "quartiles": [round(float(q), 3) for q in np.percentile(all_pairs, [25, 75])]},
              "unloaded_prepare_ms": {"p50": ms(unloaded, 50), "max": ms(unloaded, 100)},
              "per_round": [{k: v for k, v in r.items() if k not in ("opcua_samples_ms", "pair_ratios")}
                            for r in rounds]}
    print(f"median over {args.rounds} rounds: throughput ratio {report['ratio_switch_every_10_to_none']}, "
          f"PrepareProduct p50 {report['opcua_prepare_p50_ms']} ms, p99 {report['opcua_prepare_p99_ms']} ms")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")
    shutil.rmtree(tmp, ignore_errors=True)


def _cpu() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown"


if __name__ == "__main__":
    main()
