"""The line runner: camera frames in, a verdict per part out (JSON lines, MQTT), failures logged for review.

    capture ─frames (bounded: drop_oldest | block)─▶ inference loop ─▶ JSON line, MQTT, metrics
                                                      └─records (bounded)─▶ writer thread ─▶ failure log
                                                                         (deploy/failure_log.py)
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
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

from deploy.failure_log import FailureLogWriter
from deploy.plc import NO_FRAME, PLCLink, result_fields
from deploy.registry import resolve_package
from deploy.runtime import FrameError, Inspection, Runtime
from deploy.sources import Frame, open_source
from deploy.station import StationConfig, station_crop
from deploy.store import FailureStore, StoreUnavailable, open_store
from deploy.webhook import WebhookSink
from inspection.boxes import Box

LOG = logging.getLogger("inspection.line")


class StationLog(logging.LoggerAdapter):
    """Every message names its station (in the text for a journal, in `station` for a log shipper)."""

    def process(self, msg, kwargs):
        kwargs.setdefault("extra", {})["station"] = self.extra["station"]
        return f"[{self.extra['station']}] {msg}", kwargs

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
        self.writer = FailureLogWriter(cfg, self.store, self.metrics, self.log)
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
        try:
            self.store.recover(cfg.station)  # leftovers of a crash of this station's earlier run
        except StoreUnavailable as exc:  # the database is down: start anyway, records go to the outbox
            self.log.warning(f"failure log: {exc}; starting with records in the outbox {self.store.outbox}")
            self.metrics.set("log_db_unavailable", 1)
        self.writer.recover_journal()  # parts announced by a run that was killed before logging them

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
                images.append(station_crop(f.image, roi)[0])
                slots.append(i)
        for i, r in zip(slots, self.runtime.inspect_each(images, self.cfg.source.color) if images else []):
            if isinstance(r, FrameError):
                results[i] = (batch[i], None, str(r))
                continue
            results[i] = (batch[i], r, None)  # boxes in the judged crop's pixels; _emit shifts them to the frame
        return results

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
        self.writer.count(verdict)
        if verdict in self.cfg.log.verdicts:
            self.writer.put((frame, result, error, self.runtime.version, self.runtime.roi))

    # -- main loop -------------------------------------------------------------------------------------------------
    def run(self) -> dict:
        """Run until the source ends or stop(); drain the queues, flush the log; return a summary."""
        if self.source_state == "starting":
            self.self_check()
        self.writer.start()
        threads = [threading.Thread(target=self._capture, name="capture", daemon=True)]
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
                self.writer.journal([(f, r, e, self.runtime.version, self.runtime.roi) for f, r, e in judged
                                     if ("error" if r is None else r.verdict) in self.cfg.log.verdicts])
                for frame, result, error in judged:  # announced only once their records are durable
                    verdict = self._emit(frame, result, error, time.time())
                    self._log(frame, result, error, verdict)
        finally:
            self.stop_event.set()
            self.writer.close()
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
        ok = self.source_state in ("connected", "ended") and not self.writer.blocked()
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
    """At most `limit` connections at once, each with `deadline` seconds in all to send its request and take the
    answer (a client trickling a byte at a time cannot hold a slot longer). When every slot is taken, the
    connection that has waited longest for its request is closed to make room: slow clients cannot keep
    /health from answering."""

    daemon_threads = True
    limit = 16
    deadline = 2.0
    request_queue_size = 128  # the kernel's accept backlog: a burst of clients is not dropped while we accept

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self._lock = threading.Lock()
        self._open: dict = {}      # socket → when it was accepted, for every connection that holds a slot
        self._reading: set = set()  # those still sending their request (evictable)
        self._closed = threading.Event()
        threading.Thread(target=self._watch, name="http-deadline", daemon=True).start()

    def _watch(self) -> None:
        """One thread cuts every connection past its deadline (not a timer per connection)."""
        while not self._closed.wait(0.1):
            now = time.monotonic()
            with self._lock:
                late = [sock for sock, t0 in self._open.items() if now - t0 > self.deadline]
            for sock in late:
                _cut(sock)

    def server_close(self) -> None:
        self._closed.set()
        super().server_close()

    def process_request(self, request, client_address):
        with self._lock:
            if len(self._open) >= self.limit:
                if not self._reading:
                    self.shutdown_request(request)
                    return
                oldest = min(self._reading, key=self._open.get)
                self._forget(oldest)
                _cut(oldest)
            self._open[request] = time.monotonic()
            self._reading.add(request)
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._lock:
                self._forget(request)

    def request_read(self, request) -> None:
        """The request has arrived: the connection is answered, no longer evicted for a newcomer."""
        with self._lock:
            self._reading.discard(request)

    def _forget(self, request) -> None:
        self._open.pop(request, None)
        self._reading.discard(request)


def _cut(sock) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _serve_http(runner: LineRunner) -> ThreadingHTTPServer:
    labels = f'station="{_label(runner.cfg.station)}"'

    class Handler(BaseHTTPRequestHandler):
        timeout = _BoundedHTTPServer.deadline  # per read; the server's deadline bounds the whole request

        def do_GET(self):  # noqa: N802 - http.server's name
            self.server.request_read(self.connection)
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
