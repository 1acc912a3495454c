"""The line runner: camera frames in, a verdict per part out (JSON lines, PLC, MQTT, webhook), failures logged.

    capture ─frames (bounded: drop_oldest | block)─▶ judging (batches) ─▶ outputs: JSON line, PLC, MQTT, webhook
                                                        └─LogJob (bounded)─▶ writer thread ─▶ failure log
    capture.py, outputs.py, failure_log.py; reload thread: a new model package is loaded beside the running one
    and swapped in between two batches; http.py: /health, /metrics (Prometheus), /version.

    >>> LineRunner(load_station("configs/station.yaml")).run()

torch-free: numpy, OpenCV, onnxruntime, PyYAML, paho-mqtt (only when MQTT is configured).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Optional

import numpy as np

from inspection.deploy.atomic import open_own
from inspection.deploy.line.capture import Capture
from inspection.deploy.line.failure_log import FailureLogWriter
from inspection.deploy.line.frames import Frame
from inspection.deploy.line.http import serve_http
from inspection.deploy.line.outputs import Outputs
from inspection.deploy.line.prometheus import Metrics
from inspection.deploy.line.station import StationConfig, station_crop
from inspection.deploy.registry import resolve_package
from inspection.deploy.runtime import FrameError, Inspection, Runtime
from inspection.deploy.store.factory import open_store
from inspection.deploy.store.schema import StoreUnavailable
from inspection.deploy.store.sql import SQLStore

LOG = logging.getLogger("inspection.line")


class StationLog(logging.LoggerAdapter):
    """Every message names its station (in the text for a journal, in `station` for a log shipper)."""

    def process(self, msg, kwargs):
        kwargs.setdefault("extra", {})["station"] = self.extra["station"]
        return f"[{self.extra['station']}] {msg}", kwargs


def _package_key(path: str | Path) -> tuple:
    root = resolve_package(path)
    try:
        st = (root / "metadata.json").stat()
        return (str(root.resolve()), st.st_mtime_ns, st.st_size)
    except OSError:
        return (str(root), None, None)


Judged = tuple[Frame, Optional[Inspection], Optional[str]]  # a frame, its inspection, or why there is none


class LineRunner:
    """One station: source, model, outputs and failure log, run until the source ends or stop() is called."""

    def __init__(self, cfg: StationConfig, out=None):
        self.cfg = cfg
        self.log = StationLog(LOG, {"station": cfg.station})
        self.metrics = Metrics()
        self.stop_event = threading.Event()
        self.runtime = self._load(cfg.package)
        self._package_key = _package_key(cfg.package)
        self._next_runtime: Runtime | None = None
        self.outputs = Outputs(cfg, self.metrics, self.log, out)
        plc, mqtt = self.outputs.plc, self.outputs.mqtt
        self.capture = Capture(cfg, self.metrics, self.log, self.stop_event,
                               handshake=plc.handshake if plc is not None else None,
                               triggers=mqtt.triggers if mqtt is not None and cfg.source.part_id == "trigger" else None)
        self.store: SQLStore = open_store(cfg.log.db, Path(cfg.log.folder),
                                              int(cfg.log.quota_mb * 2**20) if cfg.log.quota_mb else None,
                                              cfg.log.fsync, offline_ok=True)
        if cfg.log.outbox:
            self.store.outbox = Path(cfg.log.outbox)
        self.writer = FailureLogWriter(cfg, self.store, self.metrics, self.log)  # replays an earlier run's journal
        self.http = None
        self.started = time.time()
        self.last_judged = 0.0  # when a batch last held a complete frame the model judged (/health)
        self.metrics.set("log_disk_full", 0)
        self.metrics.set("log_db_unavailable", 0)
        try:
            self.store.recover(cfg.station)  # leftovers of a crash of this station's earlier run
        except StoreUnavailable as exc:  # the database is down: start anyway, records go to the outbox
            self.log.warning(f"failure log: {exc}; starting with records in the outbox {self.store.outbox}")
            self.metrics.set("log_db_unavailable", 1)

    def _load(self, package) -> Runtime:
        rt = Runtime(resolve_package(package), self.cfg.backend, self.cfg.precision, self.cfg.threads,
                     max_batch=self.cfg.batch.max_size)
        h, w = rt.image_size
        rt.run_batch(np.zeros((1, 3, h, w), np.float32))  # warm-up: the first call is slow on every backend
        return rt

    # -- start-up ------------------------------------------------------------------------------------------------
    def self_check(self) -> dict:
        """Model loaded and answering, source opens, failure log writable; raises SourceError/OSError if not."""
        report = {"model": f"{self.runtime.version} on {self.runtime.backend} ({self.runtime.precision})"}
        report["source"] = self.capture.open()
        probe = Path(self.cfg.log.folder) / f".write-probe.tmp-{id(self)}"
        probe.unlink(missing_ok=True)  # a link planted under this name is removed, never written through
        os.close(open_own(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
        probe.unlink()
        try:
            report["log"] = (f"{self.store}: writable, {self.store.count()} records, "
                             f"recovered {self.store.recovered}")
        except StoreUnavailable as exc:
            report["log"] = f"{exc}; records wait in the outbox {self.store.outbox}"
        if self.cfg.http.port:
            self.http = serve_http(self)
            report["http"] = f"http://{self.cfg.http.host}:{self.http.server_address[1]}"
        return {**report, **self.outputs.start()}

    def _watch_package(self) -> None:
        while not self.stop_event.wait(self.cfg.reload_s):
            key = _package_key(self.cfg.package)
            if key == self._package_key or key[1] is None:
                continue
            try:
                rt = self._load(self.cfg.package)
            except Exception as exc:  # noqa: BLE001 - a bad new package must never stop the line
                self.metrics.inc("model_reload_failures_total")
                self.log.warning(f"reload: new package at {resolve_package(self.cfg.package)} refused: {exc}")
            else:
                self._next_runtime = rt
                self.log.info(f"reload: model {rt.version} ready; switching at the next batch")
            self._package_key = key

    # -- judging ---------------------------------------------------------------------------------------------------
    def _judge(self, batch: list[Frame]) -> list[Judged]:
        roi = self.cfg.source.roi
        results: list = [None] * len(batch)
        images, slots = [], []
        for i, f in enumerate(batch):
            if f.error or f.image is None:
                results[i] = (f, None, f.error or "no image")
            elif roi is not None and (roi[0] + roi[2] > f.image.shape[1] or roi[1] + roi[3] > f.image.shape[0]):
                results[i] = (f, None, f"frame {f.image.shape[1]}x{f.image.shape[0]} is smaller than the station ROI")
            else:
                images.append(station_crop(f.image, roi)[0])
                slots.append(i)
        for i, r in zip(slots, self.runtime.inspect_each(images, self.cfg.source.color) if images else []):
            if isinstance(r, FrameError):
                results[i] = (batch[i], None, str(r))
                continue
            results[i] = (batch[i], r, None)  # boxes in the judged crop's pixels; outputs shift them to the frame
        return results

    def _judge_safely(self, batch: list[Frame]) -> list[Judged]:
        try:
            return self._judge(batch)
        except Exception as exc:  # noqa: BLE001 - one failed batch must not end the shift
            self.metrics.inc("inference_errors_total")
            self.log.error(f"inference failed on {len(batch)} frame(s): {exc}")
            return [(f, None, f"inference failed: {exc}") for f in batch]

    def _handle(self, judged: list[Judged]) -> None:
        """Journal the parts to log, then announce every verdict, then queue the parts' files for the writer."""
        rt = self.runtime
        if any(r is not None for _, r, _ in judged):
            self.last_judged = time.time()
        logged = {i: self.writer.job(f, r, e, rt.version, rt.roi) for i, (f, r, e) in enumerate(judged)
                  if ("error" if r is None else r.verdict) in self.cfg.log.verdicts}
        self.writer.journal(list(logged.values()))
        for i, (frame, result, error) in enumerate(judged):  # announced only once their records are durable
            verdict = self.outputs.emit(frame, result, error, time.time(), rt.version, rt.classes)
            self.writer.count(verdict)
            if i in logged:
                self.writer.put(logged[i])

    # -- main loop -------------------------------------------------------------------------------------------------
    def run(self) -> dict:
        """Run until the source ends or stop(); drain the queues, flush the log; return a summary."""
        if self.capture.state == "starting":
            self.self_check()
        self.writer.start()
        threads = [threading.Thread(target=self.capture.run, name="capture", daemon=True)]
        if self.cfg.reload_s:
            threads.append(threading.Thread(target=self._watch_package, name="reload", daemon=True))
        for t in threads:
            t.start()
        wait_s = 0 if self.outputs.plc else self.cfg.batch.max_wait_ms / 1000  # PLC: one part at a time
        try:
            while not self.capture.finished():
                if self._next_runtime is not None:
                    self.runtime, self._next_runtime = self._next_runtime, None
                    self.metrics.inc("model_reloads_total")
                batch = self.capture.next_batch(self.cfg.batch.max_size, wait_s)
                self.metrics.set("queue_depth", self.capture.frames.qsize())
                if batch:
                    self._handle(self._judge_safely(batch))
        finally:
            self.stop_event.set()
            self.writer.close()
            self.outputs.close()
            if self.http is not None:
                self.http.shutdown()
                self.http.server_close()  # the port is free again once the runner returns
            self.capture.close()
        return self.summary()

    def stop(self) -> None:
        """Graceful stop (SIGTERM): no new frames; queued frames are still judged and logged."""
        self.stop_event.set()

    def summary(self) -> dict:
        lat = np.asarray(self.metrics.latencies) * 1000 if self.metrics.latencies else np.zeros(1)
        keys = ("frames_total", "frames_dropped_total", "frames_error_total", "log_records_total",
                "log_records_lost_total", "source_reconnects_total", "model_reloads_total")
        out = {k: int(self.metrics.get(k)) for k in keys}
        out.update(latency_ms_p50=round(float(np.percentile(lat, 50)), 2),
                   latency_ms_p99=round(float(np.percentile(lat, 99)), 2), model_version=self.runtime.version)
        return out

    def health(self) -> dict:
        """/health: status `ok`; `degraded` while parts may go unjudged or unlogged (no complete frame judged for
        the camera's timeout_ms, too many incomplete frames, the failure log blocked); `down` while the source
        is lost (reconnecting) or not open yet. `reasons` says which, in words."""
        now, capture = time.time(), self.capture
        down = [f"source {capture.state}"] if capture.state not in ("connected", "ended") else []
        degraded = []
        steady = capture.steady_s()
        if steady is not None and capture.state == "connected":
            quiet = now - max(self.last_judged, capture.connected_at)
            if quiet > steady:
                degraded.append(f"no complete frame judged for {quiet:.1f} s (timeout_ms {steady * 1000:.0f})")
        incomplete = capture.incomplete()
        if incomplete is not None and incomplete[0] > incomplete[1]:
            degraded.append(f"{incomplete[0]:.0%} of the recent frames incomplete (incomplete_share "
                            f"{incomplete[1]:g})")
        if self.writer.blocked():
            degraded.append("failure log " + ("disk full" if self.metrics.get("log_disk_full") else
                                              "database unavailable"))
        last = capture.last_frame
        return {"status": "down" if down else "degraded" if degraded else "ok", "reasons": down + degraded,
                "station": self.cfg.station,
                "model_version": self.runtime.version, "backend": self.runtime.backend,
                "uptime_s": round(time.time() - self.started, 1), "source": self.capture.state,
                "frames": int(self.metrics.get("frames_total")), "queue_depth": self.capture.frames.qsize(),
                "log_disk_full": bool(self.metrics.get("log_disk_full")),
                "log_db_unavailable": bool(self.metrics.get("log_db_unavailable")),
                "log_outbox_records": int(self.metrics.get("log_outbox_records")),
                "last_frame_age_s": round(time.time() - last, 2) if last else None,
                **self.capture.health(), **self.outputs.health()}
