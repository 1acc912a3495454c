"""The line runner: camera frames in, a verdict per part out (JSON lines, MQTT), failures logged for review.

    capture ─frames (bounded: drop_oldest | block)─▶ inference loop ─▶ JSON line, MQTT, metrics
                                                      └─records (bounded)─▶ writer thread ─▶ failure log
    reload thread: a new model package is loaded beside the running one and swapped in between two batches.
    HTTP thread: /health, /metrics (Prometheus), /version.

    >>> LineRunner(load_station("configs/station.yaml")).run()

torch-free: numpy, OpenCV, onnxruntime, PyYAML, paho-mqtt (only when MQTT is configured).
"""
from __future__ import annotations

import collections
import json
import logging
import os
import queue
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np

from deploy.plc import NO_FRAME, PLCLink, result_fields
from deploy.runtime import FrameError, Inspection, Runtime, frame_to_rgb
from deploy.sources import Frame, open_source
from deploy.station import StationConfig
from deploy.store import FailureRecord, FailureStore, StoreFull, StoreUnavailable, open_store
from deploy.webhook import WebhookSink
from inspection.boxes import Box, upsample_attention
from inspection.overlay import overlay

LOG = logging.getLogger("inspection.line")


class StationLog(logging.LoggerAdapter):
    """Every message names its station (in the text for a journal, in `station` for a log shipper)."""

    def process(self, msg, kwargs):
        kwargs.setdefault("extra", {})["station"] = self.extra["station"]
        return f"[{self.extra['station']}] {msg}", kwargs

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_END = object()
TALLY_S = 5.0  # how often the verdict counts reach the store (a crash loses at most this much of them)


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


def resolve_package(path: str | Path) -> Path:
    """A package folder, or a pointer file (e.g. a registry's `current`) holding the path of one."""
    p = Path(path)
    if p.is_file():
        target = Path(p.read_text().strip())
        return target if target.is_absolute() else p.parent / target
    return p


def _package_key(path: str | Path) -> tuple:
    root = resolve_package(path)
    try:
        st = (root / "metadata.json").stat()
        return (str(root.resolve()), st.st_mtime_ns, st.st_size)
    except OSError:
        return (str(root), None, None)


class MQTTOutput:
    """Publishes each verdict; paho queues (bounded) while the broker is away and reconnects by itself."""

    def __init__(self, cfg, station: str, metrics: Metrics, trigger: bool = False):
        import paho.mqtt.client as mqtt

        self.topic, self.qos, self.metrics = cfg.topic.format(station=station), cfg.qos, metrics
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cfg.client_id or f"inspection-{station}")
        if cfg.username:  # the password stays out of config files
            self.client.username_pw_set(cfg.username, os.environ.get("MQTT_PASSWORD", ""))
        self.client.max_queued_messages_set(10000)
        self.client.reconnect_delay_set(0.5, 10)
        self.triggers: queue.Queue = queue.Queue(1000)  # part IDs announced by the line controller, oldest first
        self.trigger_topic = cfg.trigger_topic.format(station=station) if trigger else None
        self.client.on_connect = self._connected
        self.client.on_disconnect = lambda *a: metrics.set("mqtt_connected", 0)
        self.client.on_message = self._message
        self.client.connect_async(cfg.host, cfg.port, cfg.keepalive)
        self.client.loop_start()
        self.pending: collections.deque = collections.deque(maxlen=10000)

    def _connected(self, client, userdata, flags, reason, properties=None) -> None:
        if getattr(reason, "is_failure", False):  # e.g. not authorized: paho retries, the metrics say why
            self.metrics.set("mqtt_connected", 0)
            self.metrics.inc("mqtt_connect_refused_total")
            return
        self.metrics.set("mqtt_connected", 1)
        if self.trigger_topic:
            client.subscribe(self.trigger_topic, qos=1)

    def _message(self, client, userdata, msg) -> None:
        """A trigger: the payload is the part ID (plain text, or JSON with a part_id field)."""
        text = msg.payload.decode("utf-8", "replace").strip()
        try:
            part = json.loads(text)
            part = str(part["part_id"]) if isinstance(part, dict) else str(part)
        except (ValueError, KeyError):
            part = text
        try:
            self.triggers.put_nowait(part)
        except queue.Full:
            self.triggers.get_nowait()
            self.triggers.put_nowait(part)
            self.metrics.inc("triggers_dropped_total")

    def publish(self, payload: str) -> None:
        info = self.client.publish(self.topic, payload, qos=self.qos)
        if info.rc != 0:
            self.metrics.inc("mqtt_publish_failures_total")
        elif self.qos:
            self.pending.append(info)

    def close(self, timeout: float = 5.0) -> None:
        deadline = time.time() + timeout
        for info in list(self.pending):
            try:
                info.wait_for_publish(max(0.0, deadline - time.time()))
            except (RuntimeError, ValueError):
                pass
        self.client.loop_stop()
        self.client.disconnect()


class LineRunner:
    """One station: source, model, outputs and failure log, run until the source ends or stop() is called."""

    def __init__(self, cfg: StationConfig, out=None):
        self.cfg = cfg
        self.log = StationLog(LOG, {"station": cfg.station})
        if out is None and cfg.jsonl not in ("", "-"):
            Path(cfg.jsonl).parent.mkdir(parents=True, exist_ok=True)
            out = open(cfg.jsonl, "a", buffering=1)
        self.out = out if out is not None else (sys.stdout if cfg.jsonl == "-" else None)
        self.metrics = Metrics()
        self.stop_event = threading.Event()
        self.capture_done = threading.Event()
        self.frames: queue.Queue = queue.Queue(cfg.queue.size)
        self.records: queue.Queue = queue.Queue(cfg.log.queue)
        self.runtime = self._load(cfg.package)
        self._package_key = _package_key(cfg.package)
        self._next_runtime: Runtime | None = None
        self.source = open_source(cfg.source)
        folder = Path(cfg.log.folder)
        self.store: FailureStore = open_store(cfg.log.db, folder,
                                              int(cfg.log.quota_mb * 2**20) if cfg.log.quota_mb else None,
                                              cfg.log.fsync, offline_ok=True)
        if cfg.log.outbox:
            self.store.outbox = Path(cfg.log.outbox)
        self._outbox = len(self.store.spooled(cfg.station))  # records from an earlier outage, replayed first
        self.mqtt = (MQTTOutput(cfg.mqtt, cfg.station, self.metrics, cfg.source.part_id == "trigger")
                     if cfg.mqtt.host else None)
        self.http = None
        self.plc = PLCLink(cfg.plc, cfg.station, self.metrics) if cfg.plc.opcua.port or cfg.plc.modbus.port else None
        self.webhook = (WebhookSink(cfg.webhook, os.environ.get("WEBHOOK_SECRET", ""), self.metrics, self.log)
                        if cfg.webhook.url else None)
        self.started = time.time()
        self.source_state = "starting"
        self.last_frame = 0.0
        self.metrics.set("log_disk_full", 0)
        self.metrics.set("log_db_unavailable", 0)
        self.metrics.set("log_outbox_records", self._outbox)
        try:
            self.store.recover(cfg.station)  # leftovers of a crash of this station's earlier run
        except StoreUnavailable as exc:  # the database is down: start anyway, records go to the outbox
            self.log.warning(f"failure log: {exc}; starting with records in the outbox {self.store.outbox}")
            self.metrics.set("log_db_unavailable", 1)
        self._tallied: dict[str, float] = {}  # verdict counters already written to the store's daily tallies
        self._tally_flushed = time.time()

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
        self.source.open()
        self.source_state = "connected"
        report["source"] = f"{self.cfg.source.kind} {self.cfg.source.path}: open"
        probe = Path(self.cfg.log.folder) / f".write-probe.tmp-{id(self)}"
        probe.write_bytes(b"ok")
        probe.unlink()
        try:
            report["log"] = (f"{self.store}: writable, {self.store.count()} records, "
                             f"recovered {self.store.recovered}")
        except StoreUnavailable as exc:
            report["log"] = f"{exc}; records wait in the outbox {self.store.outbox}"
        if self.cfg.http.port:
            self.http = _serve_http(self)
            report["http"] = f"http://{self.cfg.http.host}:{self.http.server_address[1]}"
        if self.plc is not None:
            report["plc"] = ", ".join(self.plc.start()) + "; one frame per trigger"
        if self.webhook is not None:
            report["webhook"] = f"{self.cfg.webhook.url} ({', '.join(self.cfg.webhook.verdicts)}" + \
                (", signed)" if self.webhook.secret else ", UNSIGNED: set WEBHOOK_SECRET)")
        return report

    # -- threads -------------------------------------------------------------------------------------------------
    def _capture(self) -> None:
        delay = 0.5
        limit, n = self.cfg.source.limit, 0
        part = None  # PLC mode: the triggered part waiting for its frame
        try:
            while not self.stop_event.is_set() and (not limit or n < limit):
                if self.plc is not None and (part is None or not self.plc.handshake.pending(part)):
                    part = self.plc.handshake.take(timeout=0.1)
                    if part is None:
                        continue
                try:
                    if self.source_state != "connected":
                        self.source.open()
                        self.source_state, delay = "connected", 0.5
                        self.metrics.set("source_connected", 1)
                    frame = self.source.read(self.stop_event.is_set)
                except Exception as exc:  # noqa: BLE001 - Disconnected, SourceError, or a driver's own error
                    self.source_state = "reconnecting"
                    self.metrics.set("source_connected", 0)
                    self.metrics.inc("source_reconnects_total")
                    self.log.warning(f"source: {exc}; retrying in {delay:.1f} s")
                    self.stop_event.wait(delay)
                    delay = min(delay * 2, self.cfg.source.reconnect_max_s)
                    continue
                if frame is None:
                    self.source_state = "ended"
                    if part is not None:
                        self.plc.handshake.fail(part, NO_FRAME)
                    break
                n += 1
                self.last_frame = time.time()
                if self.cfg.source.part_id == "trigger":
                    frame.part_id = self._triggered_id(n)
                if part is not None and not self.plc.handshake.pending(part):
                    part = self.plc.handshake.take(timeout=0)  # it timed out; a trigger since then takes the frame
                    if part is None:
                        self.metrics.inc("plc_late_frames_total")
                        continue
                if part is not None:
                    frame.part_id, part = part, None
                self._enqueue(frame)
        finally:
            self.capture_done.set()

    def _triggered_id(self, n: int) -> str:
        """The next part ID the line controller announced; a frame without one is still judged, and counted."""
        try:
            return self.mqtt.triggers.get(timeout=self.cfg.source.trigger_wait_ms / 1000)
        except queue.Empty:
            self.metrics.inc("frames_untriggered_total")
            return f"untriggered-{n:08d}"

    def _enqueue(self, frame: Frame) -> None:
        if self.cfg.queue.policy == "block":
            while not self.stop_event.is_set():
                try:
                    self.frames.put(frame, timeout=0.1)
                    return
                except queue.Full:
                    continue
            return
        while True:
            try:
                self.frames.put_nowait(frame)
                return
            except queue.Full:
                try:
                    self.frames.get_nowait()
                    self.metrics.inc("frames_dropped_total")
                except queue.Empty:
                    pass

    def _next_batch(self) -> list[Frame]:
        try:
            batch = [self.frames.get(timeout=0.05)]
        except queue.Empty:
            return []
        deadline = time.time() + (0 if self.plc else self.cfg.batch.max_wait_ms / 1000)  # PLC: one part at a time
        while len(batch) < self.cfg.batch.max_size:
            try:
                batch.append(self.frames.get(timeout=max(0.0, deadline - time.time())) if time.time() < deadline
                             else self.frames.get_nowait())
            except queue.Empty:
                break
        return batch

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
    def _judge(self, batch: list[Frame]) -> list[tuple[Frame, Inspection | None, str | None]]:
        roi = self.cfg.source.roi
        results: list = [None] * len(batch)
        images, slots = [], []
        for i, f in enumerate(batch):
            if f.error or f.image is None:
                results[i] = (f, None, f.error or "no image")
            elif roi is not None and (roi[0] + roi[2] > f.image.shape[1] or roi[1] + roi[3] > f.image.shape[0]):
                results[i] = (f, None, f"frame {f.image.shape[1]}x{f.image.shape[0]} is smaller than the station ROI")
            else:
                x, y, w, h = roi or (0, 0, f.image.shape[1], f.image.shape[0])
                images.append(f.image[y:y + h, x:x + w])
                slots.append(i)
        for i, r in zip(slots, self.runtime.inspect_each(images, self.cfg.source.color) if images else []):
            if isinstance(r, FrameError):
                results[i] = (batch[i], None, str(r))
                continue
            results[i] = (batch[i], r, None)  # boxes in the judged crop's pixels; _emit shifts them to the frame
        return results

    def _crop(self, frame: Frame):
        """The part of the frame the model judged (the station ROI), and that ROI (None: the whole frame)."""
        roi = self.cfg.source.roi
        if roi is None or frame.image is None:
            return frame.image, None
        x, y, w, h = roi
        return frame.image[y:y + h, x:x + w], [x, y, w, h]

    def _emit(self, frame: Frame, result: Inspection | None, error: str | None, done: float) -> str:
        verdict = "error" if result is None else result.verdict
        x, y = (self.cfg.source.roi or (0, 0))[:2]  # outputs give boxes in frame pixels
        line = {"part_id": frame.part_id, "station": self.cfg.station, "ts": round(frame.ts, 3), "verdict": verdict,
                "score": None if result is None else round(result.score, 6),
                "defect_type": None if result is None else result.defect_type,
                "boxes": [] if result is None else [Box(b.x0 + x, b.y0 + y, b.x1 + x, b.y1 + y, b.score,
                                                        b.area).to_dict() for b in result.boxes],
                "latency_ms": round(1000 * (done - frame.ts), 2), "model_version": self.runtime.version}
        if error:
            line["error"] = error
        text = json.dumps(line)
        if self.out is not None:
            self.out.write(text + "\n")
            self.out.flush()
        if self.plc is not None:
            self.plc.handshake.complete(frame.part_id, result_fields(line, self.runtime.classes))
        if self.mqtt is not None:
            self.mqtt.publish(text)
        if self.webhook is not None:
            self.webhook.put(line)
        self.metrics.inc("frames_total")
        self.metrics.inc(f"verdicts_total|verdict=\"{verdict}\"")
        if error:
            self.metrics.inc("frames_error_total")
        self.metrics.observe(done - frame.ts)
        return verdict

    def _log(self, frame: Frame, result: Inspection | None, error: str | None, verdict: str) -> None:
        if verdict not in self.cfg.log.verdicts:
            return
        t = time.time()
        self.records.put((frame, result, error, self.runtime.version))  # blocks when full: no record is dropped
        waited = time.time() - t
        if waited > 0.01:
            self.metrics.inc("log_backpressure_seconds_total", waited)

    # -- the failure-log writer -------------------------------------------------------------------------------------
    def _files(self, frame: Frame, result: Inspection | None) -> dict[str, tuple[str, bytes]]:
        """The image the model judged (the station crop of the frame, so that review, re-scoring and retraining
        see what the model saw; an unjudged frame whole), its map and an overlay."""
        files = {}
        image = self._crop(frame)[0] if result is not None else frame.image
        if image is not None:
            ext = "." + self.cfg.log.image_format
            if self.cfg.source.color == "RGB" and image.ndim == 3 and image.shape[2] >= 3:  # files are BGR(A)
                image = image[..., [2, 1, 0, *range(3, image.shape[2])]]
            ok, data = cv2.imencode(ext, image)
            if ok:
                files["image"] = (ext, data.tobytes())
        if result is not None and image is not None:
            att = np.clip(result.attention, 0, 1)
            files["map"] = (".png", cv2.imencode(".png", (att * 65535 + 0.5).astype(np.uint16))[1].tobytes())
            rgb = frame_to_rgb(self._crop(frame)[0], self.cfg.source.color)
            full = upsample_attention(att, rgb.shape[:2], self.runtime.roi)
            label = f"{result.verdict} {result.score:.3f}"
            vis = overlay(rgb, full, result.boxes, label=label)[..., ::-1]
            files["overlay"] = (".jpg", cv2.imencode(".jpg", vis, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
        return files

    def _record(self, job) -> tuple[FailureRecord, dict]:
        frame, result, error, version = job
        record = FailureRecord(frame.part_id, self.cfg.station, frame.ts, version,
                               "error" if result is None else result.verdict,
                               None if result is None else result.score,
                               None if result is None else result.defect_type,
                               [] if result is None else [b.to_dict() for b in result.boxes],
                               crop=self._crop(frame)[1] if result is not None else None)
        if error:
            record.boxes = [{"error": error}]
        return record, self._files(frame, result)

    def _writer(self) -> None:
        """Write the records to the store, oldest first. While the database is unreachable they go to the
        outbox on disk (kept across restarts) and are replayed when it is back; while the disk is full they
        wait in memory (up to log.queue). Retried every log.retry_s."""
        waiting: collections.deque = collections.deque()  # (record, files) the store has not taken yet
        last_try = 0.0
        while True:
            try:
                job = self.records.get(timeout=0.2)
            except queue.Empty:
                job = None
            if job is not None and job is not _END:
                try:
                    waiting.append(self._record(job))
                except Exception as exc:  # noqa: BLE001 - one bad record must not stop the writer
                    self._write_error(job[0].part_id, exc)
            blocked = self._store_blocked()
            if (waiting or self._outbox) and (not blocked or time.time() - last_try >= self.cfg.log.retry_s):
                last_try = time.time()
                try:
                    self._drain(waiting)
                    self.metrics.set("log_disk_full", 0)
                    self.metrics.set("log_db_unavailable", 0)
                except StoreUnavailable as exc:
                    if not blocked:
                        self.log.warning(f"failure log: {exc}; verdicts continue, records wait")
                    self.metrics.set("log_disk_full" if isinstance(exc, StoreFull) else "log_db_unavailable", 1)
            if self.metrics.get("log_db_unavailable"):
                self._spool(waiting)
            while len(waiting) > self.cfg.log.queue:
                waiting.popleft()
                self.metrics.inc("log_records_lost_total")
            self.metrics.set("log_waiting_records", len(waiting))
            self.metrics.set("log_outbox_records", self._outbox)
            if job is _END or time.time() - self._tally_flushed >= TALLY_S:
                self._flush_tally()
            if job is _END:
                if waiting:
                    self.metrics.inc("log_records_lost_total", len(waiting))
                    self.log.error(f"failure log: {len(waiting)} record(s) could not be written at shutdown "
                          "(disk full)")
                if self._outbox:
                    self.log.warning(f"failure log: {self._outbox} record(s) wait in the outbox {self.store.outbox}; "
                          "the next start writes them")
                return

    def _drain(self, waiting: collections.deque) -> None:
        """The outbox first, then the waiting records; raises StoreUnavailable where the store stops taking them."""
        if self._outbox:
            before = self._outbox
            try:
                self.store.replay(self.cfg.station)
            finally:
                self._outbox = len(self.store.spooled(self.cfg.station))
                self.metrics.inc("log_records_total", max(0, before - self._outbox))
        while waiting:
            record, files = waiting[0]
            try:
                self.store.add(record, files)
                self.metrics.inc("log_records_total")
            except StoreUnavailable:
                raise
            except Exception as exc:  # noqa: BLE001 - one bad record must not stop the writer
                self._write_error(record.part_id, exc)
            waiting.popleft()

    def _write_error(self, part_id: str, exc: Exception) -> None:
        self.log.error(f"failure log: record of part {part_id} not written: {exc}")
        self.metrics.inc("log_write_errors_total")

    def _spool(self, waiting: collections.deque) -> None:
        """Database down: move the waiting records to the outbox on disk (in memory still if that fails too)."""
        while waiting:
            try:
                self.store.spool(*waiting[0])
            except OSError as exc:
                if not self.metrics.get("log_outbox_unwritable"):
                    self.log.warning(f"failure log: outbox {self.store.outbox} not writable either ({exc}); records wait "
                          "in memory")
                self.metrics.set("log_outbox_unwritable", 1)
                return
            self.metrics.set("log_outbox_unwritable", 0)
            waiting.popleft()
            self._outbox += 1

    def _store_blocked(self) -> bool:
        return bool(self.metrics.get("log_disk_full") or self.metrics.get("log_db_unavailable"))

    def _flush_tally(self) -> None:
        """Add the verdict counters' growth since the last flush to today's tallies (fail-rate denominators).

        Read from the same counters as /metrics, so the line loop counts each verdict once. Parts judged in
        the last TALLY_S seconds before midnight count for the new day. A failed write is retried next time.
        """
        self._tally_flushed = time.time()
        with self.metrics.lock:
            now = {k.split('"')[1]: v for k, v in self.metrics.counters.items() if k.startswith("verdicts_total|")}
        day = time.strftime("%Y-%m-%d")
        try:
            self.store.tally(self.cfg.station, {(day, v): int(n - self._tallied.get(v, 0)) for v, n in now.items()})
        except Exception as exc:  # noqa: BLE001 - statistics must never stop the writer
            self.log.warning(f"failure log: verdict counts not written yet: {exc}")
            return
        self._tallied = now

    # -- main loop -------------------------------------------------------------------------------------------------
    def run(self) -> dict:
        """Run until the source ends or stop(); drain the queues, flush the log; return a summary."""
        if self.source_state == "starting":
            self.self_check()
        threads = [threading.Thread(target=self._capture, name="capture", daemon=True),
                   threading.Thread(target=self._writer, name="writer", daemon=True)]
        if self.cfg.reload_s:
            threads.append(threading.Thread(target=self._watch_package, name="reload", daemon=True))
        for t in threads:
            t.start()
        try:
            while not (self.capture_done.is_set() and self.frames.empty()):
                if self._next_runtime is not None:
                    self.runtime, self._next_runtime = self._next_runtime, None
                    self.metrics.inc("model_reloads_total")
                batch = self._next_batch()
                self.metrics.set("queue_depth", self.frames.qsize())
                if not batch:
                    continue
                try:
                    judged = self._judge(batch)
                except Exception as exc:  # noqa: BLE001 - one failed batch must not end the shift
                    self.metrics.inc("inference_errors_total")
                    self.log.error(f"inference failed on {len(batch)} frame(s): {exc}")
                    judged = [(f, None, f"inference failed: {exc}") for f in batch]
                for frame, result, error in judged:
                    verdict = self._emit(frame, result, error, time.time())
                    self._log(frame, result, error, verdict)
        finally:
            self.stop_event.set()
            self.records.put(_END)
            threads[1].join()
            if self.mqtt is not None:
                self.mqtt.close()
            if self.plc is not None:
                self.plc.stop()
            if self.webhook is not None:
                self.webhook.close(self.cfg.webhook.flush_s)
            if self.http is not None:
                self.http.shutdown()
                self.http.server_close()  # the port is free again once the runner returns
            self.source.close()
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
        ok = self.source_state in ("connected", "ended") and not self._store_blocked()
        return {"status": "ok" if ok else "degraded", "station": self.cfg.station,
                "model_version": self.runtime.version, "backend": self.runtime.backend,
                "uptime_s": round(time.time() - self.started, 1), "source": self.source_state,
                "frames": int(self.metrics.get("frames_total")), "queue_depth": self.frames.qsize(),
                "log_disk_full": bool(self.metrics.get("log_disk_full")),
                "log_db_unavailable": bool(self.metrics.get("log_db_unavailable")),
                "log_outbox_records": int(self.metrics.get("log_outbox_records")),
                "last_frame_age_s": round(time.time() - self.last_frame, 2) if self.last_frame else None,
                **self._link_health()}

    def _link_health(self) -> dict:
        out = {}
        if self.plc is not None:
            snap = self.plc.handshake.snapshot()
            out["plc"] = {"state": snap["state"], "part_id": snap["part_id"], "command_error": snap["command_error"],
                          **{k: int(self.metrics.get(f"plc_{k}_total")) for k in
                             ("triggers", "results", "acks", "commands_refused", "result_timeouts", "ack_timeouts")}}
        if self.webhook is not None:
            out["webhook"] = {k: int(self.metrics.get(f"webhook_{k}")) for k in
                              ("waiting", "delivered_total", "retries_total", "dropped_total", "refused_total")}
        return out


def _label(value) -> str:
    """A Prometheus label value, escaped per the exposition format (a station name cannot inject a metric)."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class _BoundedHTTPServer(ThreadingHTTPServer):
    """At most `limit` connections handled at once (others are closed at once, never queued into threads), and
    each socket times out after `timeout` s idle: half-sent requests cannot pile up threads."""

    daemon_threads = True
    limit = 16
    request_queue_size = 128  # the kernel's accept backlog: a burst of clients is not dropped while we accept

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self._slots = threading.BoundedSemaphore(self.limit)

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def _serve_http(runner: LineRunner) -> ThreadingHTTPServer:
    labels = f'station="{_label(runner.cfg.station)}"'

    class Handler(BaseHTTPRequestHandler):
        timeout = 5  # seconds a client may take to send its request

        def do_GET(self):  # noqa: N802 - http.server's name
            if self.path == "/health":
                body = runner.health()
                self._send(200 if body["status"] == "ok" else 503, json.dumps(body), "application/json")
            elif self.path == "/metrics":
                version = runner.runtime.version
                info = f'# TYPE inspection_model gauge\ninspection_model{{{labels},version="{_label(version)}"}} 1\n'
                runner.metrics.set("queue_depth", runner.frames.qsize())
                self._send(200, runner.metrics.render(labels) + info, "text/plain; version=0.0.4")
            elif self.path == "/version":
                self._send(200, json.dumps({"model_version": runner.runtime.version}), "application/json")
            else:
                self._send(404, json.dumps({"error": f"no such endpoint {self.path}"}), "application/json")

        def _send(self, code: int, body: str, ctype: str) -> None:
            data = body.encode()
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = _BoundedHTTPServer((runner.cfg.http.host, runner.cfg.http.port), Handler)
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server
