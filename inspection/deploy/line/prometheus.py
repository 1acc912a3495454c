"""The runner's metrics: thread-safe counters, gauges and one latency histogram, in the Prometheus text format.
torch-free, stdlib only."""
from __future__ import annotations

import collections
import threading

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """Thread-safe counters, gauges and one latency histogram, rendered in the Prometheus text format."""

    def __init__(self):
        self.lock = threading.Lock()
        self.counters: dict[str, float] = collections.defaultdict(float)
        self.gauges: dict[str, float] = {}
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum, self.latency_count = 0.0, 0
        self.latencies: collections.deque = collections.deque(maxlen=10000)

    def inc(self, name: str, value: float = 1.0) -> None:
        with self.lock:
            self.counters[name] += value

    def set(self, name: str, value: float) -> None:
        with self.lock:
            self.gauges[name] = value

    def observe(self, seconds: float) -> None:
        with self.lock:
            self.buckets[next((i for i, b in enumerate(LATENCY_BUCKETS) if seconds <= b), len(LATENCY_BUCKETS))] += 1
            self.latency_sum += seconds
            self.latency_count += 1
            self.latencies.append(seconds)

    def get(self, name: str) -> float:
        with self.lock:
            return self.counters.get(name, self.gauges.get(name, 0.0))

    def render(self, labels: str) -> str:
        out = []
        with self.lock:
            for name, value in sorted(self.counters.items()):
                base, _, extra = name.partition("|")
                lab = labels + ("," + extra if extra else "")
                out += [f"# TYPE inspection_{base} counter", f"inspection_{base}{{{lab}}} {value:g}"]
            for name, value in sorted(self.gauges.items()):
                out += [f"# TYPE inspection_{name} gauge", f"inspection_{name}{{{labels}}} {value:g}"]
            out.append("# TYPE inspection_latency_seconds histogram")
            cum = 0
            for bound, n in zip((*LATENCY_BUCKETS, float("inf")), self.buckets):
                cum += n
                le = "+Inf" if bound == float("inf") else f"{bound:g}"
                out.append(f'inspection_latency_seconds_bucket{{{labels},le="{le}"}} {cum}')
            out += [f"inspection_latency_seconds_sum{{{labels}}} {self.latency_sum:g}",
                    f"inspection_latency_seconds_count{{{labels}}} {self.latency_count}"]
        return "\n".join(out) + "\n"


def label(value) -> str:
    """A Prometheus label value, escaped per the exposition format (a station name cannot inject a metric)."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
