"""The line runner: camera frames in, a verdict per part out (JSON lines, PLC, MQTT, webhook), failures logged.

    capture ─frames (bounded: drop_oldest | block)─▶ model (batches) ─▶ verdict thread: boxes, journal ─▶ outputs:
                                                     JSON line, PLC, MQTT, webhook; └─LogJob (bounded)─▶ writer thread
                                                     ─▶ failure log
    capture.py, outputs.py, failure_log.py; products.py: the products, their models and the switch between two
    parts (a frame is judged by the model of the product stamped on it at capture); reload thread: a product's
    new model package is loaded beside the running one and judges from the next batch; http.py: /health,
    /metrics (Prometheus), /version.

    >>> LineRunner(load_station("configs/station.yaml")).run()

torch-free: numpy, OpenCV, onnxruntime, PyYAML, paho-mqtt (only when MQTT is configured).
"""
from __future__ import annotations

import logging
import os
import queue
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
from inspection.deploy.line.products import Products
from inspection.deploy.line.prometheus import Metrics
from inspection.deploy.line.station import StationConfig, station_crop
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


# a frame, its inspection or why there is none, and the model that judged it (its product's)
Judged = tuple[Frame, Optional[Inspection], Optional[str], Runtime]


def one_blas_thread() -> bool:
    """numpy's BLAS limited to one thread in this process (threadpoolctl); False where that is not installed.

    The line's matrix products are small (the box rule's feature distance: a defective part's hot cells against
    the feature bank, under 1.5 ms on one thread), and a second BLAS thread waits for a core that inference,
    capture or the writer holds: on a busy 2-core PC such a product took 16 ms instead, and at 100 fps with
    43 % defects the verdicts fell behind the camera (capture → verdict p99 1.3 s; docs/line.md)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return False
    threadpool_limits(1, user_api="blas")
    return True


class LineRunner:
    """One station: source, model, outputs and failure log, run until the source ends or stop() is called."""

    def __init__(self, cfg: StationConfig, out=None):
        self.cfg = cfg
        self.log = StationLog(LOG, {"station": cfg.station})
        if not one_blas_thread():
            self.log.warning("threadpoolctl is not installed: numpy's BLAS may run several threads beside "
                             "inference, which slows verdicts on few cores (pip install threadpoolctl)")
        self.metrics = Metrics()
        self.stop_event = threading.Event()
        self.products = Products(cfg, self._load, self.metrics, self.log)  # their models loaded ahead
        self.outputs = Outputs(cfg, self.metrics, self.log, out, self.products, self.select)
        plc, mqtt = self.outputs.plc, self.outputs.mqtt
        self.capture = Capture(cfg, self.metrics, self.log, self.stop_event,
                               handshake=plc.handshake if plc is not None else None,
                               triggers=mqtt.triggers if mqtt is not None and cfg.source.part_id == "trigger" else None,
                               products=self.products)
        self.products.capture = self.capture
        self.store: SQLStore = open_store(cfg.log.db, Path(cfg.log.folder),
                                              int(cfg.log.quota_mb * 2**20) if cfg.log.quota_mb else None,
                                              cfg.log.fsync, offline_ok=True)
        if cfg.log.outbox:
            self.store.outbox = Path(cfg.log.outbox)
        self.writer = FailureLogWriter(cfg, self.store, self.metrics, self.log)  # replays an earlier run's journal
        self.http = None
        self.started = time.time()
        self.last_judged = 0.0  # when a batch last held a complete frame the model judged (/health)
        self.verdict_error: BaseException | None = None  # what ended the verdict thread, raised by run()
        self.metrics.set("log_disk_full", 0)
        self.metrics.set("log_db_unavailable", 0)
        try:
            self.store.recover(cfg.station)  # leftovers of a crash of this station's earlier run
        except StoreUnavailable as exc:  # the database is down: start anyway, records go to the outbox
            self.log.warning(f"failure log: {exc}; starting with records in the outbox {self.store.outbox}")
            self.metrics.set("log_db_unavailable", 1)

    def _load(self, package: Path) -> Runtime:
        rt = Runtime(package, self.cfg.backend, self.cfg.precision, self.cfg.threads, max_batch=self.cfg.batch.max_size)
        h, w = rt.image_size
        rt.run_batch(np.zeros((1, 3, h, w), np.float32))  # warm-up: the first call is slow on every backend
        return rt

    @property
    def runtime(self) -> Runtime:
        """The model of the prepared product (after an unprepare: of the product prepared last)."""
        return self.products.runtime((self.products.current or self.products.last).id)

    def select(self, product_id: str) -> int:
        """Prepare a product (MQTT, or a caller of its own): through the PLC handshake when there is one (refused
        while a part is in progress), else at once. 0, or the command error (docs/plc.md)."""
        plc = self.outputs.plc
        return plc.handshake.prepare(product_id) if plc is not None else self.products.prepare(product_id)

    # -- start-up ------------------------------------------------------------------------------------------------
    def self_check(self) -> dict:
        """Model loaded and answering, source opens, failure log writable; raises SourceError/OSError if not."""
        report = {"model": f"{self.runtime.version} on {self.runtime.backend} ({self.runtime.precision})"}
        if self.cfg.products:
            loaded = ", ".join(f"{pid} ({rt.version})" for pid, rt in self.products.models.items())
            report["products"] = (f"{len(self.products.all)} configured, models loaded: {loaded}; prepared: "
                                  f"{self.products.current.id}")
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
            self.products.reload()

    # -- judging ---------------------------------------------------------------------------------------------------
    def _model(self, frame: Frame) -> Runtime:
        """The model of the frame's product; the station's prepared one for a frame stamped with no product."""
        rt = self.products.runtime(frame.product) if frame.product in self.products.by_id else self.runtime
        frame.model_version = rt.version
        return rt

    def _infer(self, batch: list[Frame]) -> tuple[list, dict]:
        """Judging's first half, on the loop's thread: each frame's Judged where it cannot be judged (None where
        it can), and per product its model, slots and that model's outputs (Runtime.infer_each)."""
        results: list = [None] * len(batch)
        groups: dict[str, list[int]] = {}  # product → slots: each product's frames go to its own model
        for i, f in enumerate(batch):
            rt, roi = self._model(f), f.roi
            if f.error or f.image is None:
                results[i] = (f, None, f.error or "no image", rt)
            elif f.product not in self.products.by_id:
                results[i] = (f, None, "no product prepared", rt)
            elif roi is not None and (roi[0] + roi[2] > f.image.shape[1] or roi[1] + roi[3] > f.image.shape[0]):
                results[i] = (f, None, f"frame {f.image.shape[1]}x{f.image.shape[0]} is smaller than the station "
                                       "ROI", rt)
            else:
                f.judged = station_crop(f.image, roi)[0]  # the part the model judges (a view: no copy)
                groups.setdefault(f.product, []).append(i)
        inferred = {}
        for product, slots in groups.items():
            rt = self.products.runtime(product)
            inferred[product] = (rt, slots, rt.infer_each([batch[i].judged for i in slots], self.cfg.source.color))
        return results, inferred

    def _finish(self, batch: list[Frame], results: list, inferred: dict) -> list[Judged]:
        """Judging's second half, on the verdict thread: verdicts and boxes from each model's outputs."""
        for rt, slots, pending in inferred.values():
            for i, r in zip(slots, rt.judge_each([batch[i].judged for i in slots], pending)):
                batch[i].model_version = rt.version
                # boxes in the judged region's pixels; outputs shift them to the frame
                results[i] = (batch[i], None, str(r), rt) if isinstance(r, FrameError) else (batch[i], r, None, rt)
        return results

    def _failed(self, batch: list[Frame], exc: Exception) -> list[Judged]:
        self.metrics.inc("inference_errors_total")  # one failed batch must not end the shift
        self.log.error(f"inference failed on {len(batch)} frame(s): {exc}")
        return [(f, None, f"inference failed: {exc}", self._model(f)) for f in batch]

    def _infer_safely(self, batch: list[Frame]) -> tuple[list[Frame], list, dict]:
        try:
            return (batch, *self._infer(batch))
        except Exception as exc:  # noqa: BLE001
            return batch, self._failed(batch, exc), {}

    def _judge_safely(self, batch: list[Frame], results: list, inferred: dict) -> list[Judged]:
        try:
            return self._finish(batch, results, inferred)
        except Exception as exc:  # noqa: BLE001
            return self._failed(batch, exc)

    def _verdicts(self, inferred: queue.Queue) -> None:
        """The verdict thread: boxes, journal, announce and the writer's queue, batch after batch in capture order,
        while the loop's thread runs the model on the next batch (at 100 fps on a 2-core PC one thread doing both
        was the bound: docs/line.md)."""
        try:
            while (item := inferred.get()) is not None:
                self._handle(self._judge_safely(*item))
        except BaseException as exc:  # the loop re-raises it, as when one thread did both
            self.verdict_error = exc
            while inferred.get() is not None:  # the loop's puts never block on a dead thread
                pass

    def _handle(self, judged: list[Judged]) -> None:
        """Journal the parts to log, then announce every verdict, then queue the parts' files for the writer."""
        if any(r is not None for _, r, _, _ in judged):
            self.last_judged = time.time()
        logged = {i: self.writer.job(f, r, e, rt.roi) for i, (f, r, e, rt) in enumerate(judged)
                  if ("error" if r is None else r.verdict) in self.cfg.log.verdicts}
        self.writer.journal(list(logged.values()))
        for i, (frame, result, error, rt) in enumerate(judged):  # announced only once their records are durable
            verdict = self.outputs.emit(frame, result, error, time.time(), rt.version, rt.classes)
            self.writer.count(verdict, frame.product)
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
        inferred: queue.Queue = queue.Queue(maxsize=1)  # one batch inferred ahead of its verdicts, no more
        verdicts = threading.Thread(target=self._verdicts, args=(inferred,), name="verdicts", daemon=True)
        verdicts.start()
        try:
            while not self.capture.finished() and self.verdict_error is None:
                batch = self.capture.next_batch(self.cfg.batch.max_size, wait_s)
                self.metrics.set("queue_depth", self.capture.frames.qsize())
                if batch:
                    inferred.put(self._infer_safely(batch))
        finally:
            self.stop_event.set()
            inferred.put(None)
            verdicts.join()  # every judged batch announced and journaled before the writer closes
            self.writer.close()
            self.outputs.close()
            if self.http is not None:
                self.http.shutdown()
                self.http.server_close()  # the port is free again once the runner returns
            self.capture.close()
        if self.verdict_error is not None:
            raise self.verdict_error
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
        current = self.products.current
        return {"status": "down" if down else "degraded" if degraded else "ok", "reasons": down + degraded,
                "station": self.cfg.station, "product": current.id if current is not None else None,
                "model_version": self.runtime.version, "backend": self.runtime.backend,
                "uptime_s": round(time.time() - self.started, 1), "source": self.capture.state,
                "frames": int(self.metrics.get("frames_total")), "queue_depth": self.capture.frames.qsize(),
                "log_disk_full": bool(self.metrics.get("log_disk_full")),
                "log_db_unavailable": bool(self.metrics.get("log_db_unavailable")),
                "log_outbox_records": int(self.metrics.get("log_outbox_records")),
                "last_frame_age_s": round(time.time() - last, 2) if last else None,
                **self.capture.health(), **self.outputs.health()}
