"""Interleaved rounds for benchmarks on a noisy machine: every contender once per round (A B C, B C A, ...).

    >>> per_round = interleave({"fp32": lambda: rate(run32, 1.5), "int8": lambda: rate(run8, 1.5)}, rounds=7)
    >>> spread(per_round["int8"])                  # median, min, max, quartiles of the per-round values
    >>> ratios(per_round, "fp32")["int8"]          # int8 / fp32 taken within each round, then summarized

A slow stretch of the machine (another job, a thermal or a frequency step) then lands on every contender of
that round alike, and the ratio taken within a round cancels most of it; the spread over rounds shows what is
left. Imports only the standard library and numpy.
"""
from __future__ import annotations

import platform
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np


def rate(fn: Callable[[], object], seconds: float, items: int = 1, min_calls: int = 3) -> float:
    """Items per second of fn() called back to back for `seconds` (at least `min_calls` calls)."""
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or calls < min_calls:
        fn()
        calls += 1
    return items * calls / (time.perf_counter() - start)


def interleave(contenders: dict[str, Callable[[], float]], rounds: int, log: bool = True) -> dict[str, list[float]]:
    """name → its value in each round; contender k opens round r+k, so none always runs first or last."""
    names = list(contenders)
    values: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            values[name].append(float(contenders[name]()))
        if log:
            print(f"round {r + 1}/{rounds} done", file=sys.stderr)
    return values


def spread(values: list[float], digits: int = 1) -> dict:
    """Median, min, max and quartiles of per-round values."""
    v = np.asarray(values, float)
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    return {"median": round(float(med), digits), "min": round(float(v.min()), digits),
            "max": round(float(v.max()), digits), "q1": round(float(q1), digits), "q3": round(float(q3), digits),
            "rounds": len(v)}


def ratios(per_round: dict[str, list[float]], base: str, digits: int = 2) -> dict[str, dict]:
    """Each contender over `base`, round by round, summarized by spread(); base itself left out."""
    b = np.asarray(per_round[base], float)
    return {name: spread(list(np.asarray(v, float) / b), digits) for name, v in per_round.items() if name != base}


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo, as `lscpu` shows it), for the figures of a benchmark."""
    try:
        return next(x.split(":", 1)[1].strip() for x in Path("/proc/cpuinfo").read_text().splitlines()
                    if x.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()
