"""The capture thread: frames from the source into a bounded queue, one per PLC trigger in PLC mode, with
reconnect and back-off when the source goes away; each frame stamped with the product prepared when it was
taken and that product's ROI. A product switch is made here, between two frames: a camera takes the product's
settings first. torch-free.

    capture = Capture(cfg, metrics, log, stop_event, products=products)   # handshake / triggers: PLC or MQTT
    threading.Thread(target=capture.run).start()
    batch = capture.next_batch(max_size=8, max_wait_s=0.002)
    capture.switch(product)                               # from another thread: returns once it is made
"""
from __future__ import annotations

import queue
import threading
import time

from inspection.deploy.line.frames import Frame
from inspection.deploy.line.sources import open_source
from inspection.deploy.line.station import StationConfig
from inspection.deploy.plc.handshake import NO_FRAME


class Capture:
    """Reads the source until it ends, `source.limit` frames, or the stop event; `done` is set when it returns."""

    def __init__(self, cfg: StationConfig, metrics, log, stop_event: threading.Event, handshake=None,
                 triggers: queue.Queue | None = None, products=None):
        self.cfg, self.metrics, self.log, self.stop_event = cfg, metrics, log, stop_event
        self.handshake = handshake  # PLC mode: one frame per accepted trigger, with the PLC's part ID
        self.triggers = triggers    # MQTT trigger mode: part IDs announced by the line controller
        self.products = products    # the station's products (products.py): the prepared one stamps each frame
        self.source = open_source(cfg.source, metrics, log)
        self.fire = getattr(self.source, "fire", None)  # a camera triggered by software: one frame per PLC trigger
        self.live = getattr(self.source, "live", False)  # a source that never ends (GenICam)
        self.apply = getattr(self.source, "apply", None)  # a camera that takes a product's settings (GenICam)
        start = products.current if products is not None else None
        if self.apply is not None and start is not None and start.camera is not None:
            self.apply(start.camera)  # not open yet: taken at the open
        self.pending = None  # a switch waiting for the capture thread: (product, done event, [error])
        self.pending_lock = threading.Lock()
        self.switching = threading.Lock()
        self.running = False
        self.frames: queue.Queue = queue.Queue(cfg.queue.size)
        self.done = threading.Event()
        self.state = "starting"  # starting | connected | reconnecting | ended
        self.last_frame = 0.0
        self.connected_at = 0.0  # when the source was last (re)opened

    def open(self) -> str:
        """Open the source; what was opened, in words."""
        self.source.open()
        self.state, self.connected_at = "connected", time.time()
        describe = getattr(self.source, "describe", None)
        return describe() if describe else f"{self.cfg.source.kind} {self.cfg.source.path}: open"

    def close(self) -> None:
        self.source.close()

    def run(self) -> None:
        delay = 0.5
        limit, n = self.cfg.source.limit, 0
        part, fired = None, False  # PLC mode: the triggered part waiting for its frame; its trigger sent (camera)
        hs = self.handshake
        self.running = True
        try:
            while not self.stop_event.is_set() and (not limit or n < limit):
                self._switch_now()
                if hs is not None and (part is None or not hs.pending(part)):
                    part, fired = hs.take(timeout=0.1), False
                    if part is None:
                        continue
                try:
                    if self.state != "connected":
                        self.source.open()
                        self.state, delay, self.connected_at = "connected", 0.5, time.time()
                        self.metrics.set("source_connected", 1)
                    if part is not None and self.fire is not None and not fired:
                        self.fire()
                        fired = True
                    frame = self.source.read(self._stop_waiting(part))
                except Exception as exc:  # noqa: BLE001 - Disconnected, SourceError, or a driver's own error
                    self.state = "reconnecting"
                    self.metrics.set("source_connected", 0)
                    self.metrics.inc("source_reconnects_total")
                    self.log.warning(f"source: {exc}; retrying in {delay:.1f} s")
                    self.stop_event.wait(delay)
                    delay = min(delay * 2, self.cfg.source.reconnect_max_s)
                    continue
                if frame is None and self.live:
                    continue  # a camera has no end: the wait was cut short (stopping, or the part timed out)
                if frame is None:
                    self.state = "ended"
                    if part is not None:
                        hs.fail(part, NO_FRAME)
                    break
                n += 1
                self.last_frame = time.time()
                self._stamp(frame)
                if self.triggers is not None:
                    frame.part_id = self._triggered_id(n)
                if part is not None and not hs.pending(part):
                    # it timed out; a trigger since then takes the frame, unless the camera fires per trigger
                    part = hs.take(timeout=0) if self.fire is None else None
                    fired = False
                    if part is None:
                        self.metrics.inc("plc_late_frames_total")
                        continue
                if part is not None:
                    frame.part_id, part = part, None
                self._enqueue(frame)
        finally:
            self.running = False
            self._switch_now()  # a switch asked for while the source ended: nothing is read any more
            self.done.set()

    def _stamp(self, frame: Frame) -> None:
        """The product prepared now, and its station ROI (a station without products: source.roi)."""
        product = self.products.current if self.products is not None else None
        if product is not None:
            frame.product, frame.roi = product.id, product.roi
        elif self.products is None:
            frame.roi = self.cfg.source.roi

    # -- product switches ------------------------------------------------------------------------------------------
    def switch(self, product) -> None:
        """Make `product` the prepared one (None: none) between two frames: a camera takes its settings first, then
        every frame taken is stamped with it. Called from another thread; returns once it is made, or raises what
        the camera raised (its earlier settings are set again). Without a camera to set, it is made at once: the
        next frame read carries the product."""
        with self.switching:
            if self.apply is None or not self.running:
                self._apply(product)
                return
            done, failed = threading.Event(), []
            with self.pending_lock:
                self.pending = (product, done, failed)
            if self.handshake is not None:
                self.handshake.wake()  # the capture thread waits for a trigger: it makes the switch now
            while not done.wait(0.05):
                if not self.running:
                    self._switch_now()
            if failed:
                raise failed[0]

    def _switch_now(self) -> None:
        """Make the switch waiting, if any (the capture thread between two frames, or any thread once it ended)."""
        with self.pending_lock:
            pending, self.pending = self.pending, None
        if pending is None:
            return
        product, done, failed = pending
        try:
            self._apply(product)
        except Exception as exc:  # noqa: BLE001 - handed to the thread that asked for the switch
            failed.append(exc)
        finally:
            done.set()

    def _apply(self, product) -> None:
        if self.apply is not None and product is not None and product.camera is not None:
            before = self.source.g
            try:
                self.apply(product.camera)
            except Exception:
                try:
                    self.apply(before)
                except Exception:  # noqa: BLE001 - the camera is gone: the next read reconnects with `before`
                    pass
                raise
        if self.products is not None:
            self.products.switched(product)

    def _stop_waiting(self, part):
        """When a read should give up: the runner stops, a camera has a product switch waiting, or, for a camera in
        PLC mode, the part's handshake timed out (a folder or video read returns None only at its end)."""
        if part is None or self.handshake is None or not self.live:
            if not self.live:
                return self.stop_event.is_set
            return lambda: self.stop_event.is_set() or self.pending is not None
        return lambda: self.stop_event.is_set() or not self.handshake.pending(part)

    def _triggered_id(self, n: int) -> str:
        """The next part ID the line controller announced; a frame without one is still judged, and counted."""
        try:
            return self.triggers.get(timeout=self.cfg.source.trigger_wait_ms / 1000)
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

    def next_batch(self, max_size: int, max_wait_s: float) -> list[Frame]:
        """Up to max_size queued frames, waiting at most max_wait_s for more once the first has come."""
        try:
            batch = [self.frames.get(timeout=0.05)]
        except queue.Empty:
            return []
        deadline = time.time() + max_wait_s
        while len(batch) < max_size:
            try:
                batch.append(self.frames.get(timeout=max(0.0, deadline - time.time())) if time.time() < deadline
                             else self.frames.get_nowait())
            except queue.Empty:
                break
        return batch

    def steady_s(self) -> float | None:
        """How long this source may go without a complete frame before /health says degraded: a free-running
        camera's timeout_ms when frames are not taken per PLC trigger; None for sources that wait for parts."""
        g = self.cfg.source.genicam
        if self.live and self.cfg.source.kind == "genicam" and g.trigger == "free" and self.handshake is None:
            return g.timeout_ms / 1000
        return None

    def incomplete(self) -> tuple[float, float] | None:
        """(share of the recent frames that came incomplete, the share that makes /health degraded), or None."""
        share = getattr(self.source, "incomplete_share", lambda: None)()
        return None if share is None else (share, self.cfg.source.genicam.incomplete_share)

    def health(self) -> dict:
        """A GenICam camera's part of /health: which camera, its frames, losses and reconnects."""
        if not self.live:
            return {}
        m = self.metrics
        return {"camera": {**{k: getattr(self.source, "info", {}).get(k) for k in ("id", "serial", "address",
                                                                                  "pixel_format", "trigger")},
                           **{k: int(m.get(f"camera_{k}_total")) for k in
                              ("frames", "frames_incomplete", "frames_stale", "buffer_underruns", "packets_missing")},
                           "reconnects": int(m.get("source_reconnects_total")),
                           "temperature_celsius": m.get("camera_temperature_celsius") or None}}

    def finished(self) -> bool:
        """The source is done and every frame it delivered has been taken."""
        return self.done.is_set() and self.frames.empty()
