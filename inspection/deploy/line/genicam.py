"""GenICam cameras (GigE Vision, USB3 Vision) through Aravis: the `genicam` source kind.

    source:
      kind: genicam
      genicam: {device: "21845123", pixel_format: Mono8, exposure_us: 2000, trigger: software}

Aravis speaks both protocols itself (no vendor SDK or GenTL producer), through GObject introspection: Debian's
`gir1.2-aravis-0.8` and PyGObject (the `genicam` extra). The camera is set up from source.genicam at every
(re)connect, in a fixed order: pixel format, binning, ROI, exposure, gain, frame rate, GigE packet size and
delay, trigger, then `features` by name; a setting the camera refuses names its key. Frames come from a pool
of `buffers` buffers; an incomplete frame (lost packets) is counted and dropped, never judged. A camera that
stops answering (cable pulled, power cut) raises Disconnected and the capture thread reconnects with back-off.
torch-free; gi is imported only when a genicam source opens.
"""
from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from itertools import count

import cv2
import numpy as np

from inspection.deploy.line.frames import Disconnected, Frame, SourceError

PIXEL_FORMATS = ("Mono8", "Mono10", "Mono12", "Mono16", "BayerRG8", "BayerBG8", "BayerGR8", "BayerGB8", "RGB8", "BGR8")
TRIGGERS = ("free", "hardware", "software")
# GenICam names the Bayer tile from the top-left pixel; OpenCV names it from the second row and column
BAYER = {"BayerRG8": cv2.COLOR_BayerBG2BGR, "BayerBG8": cv2.COLOR_BayerRG2BGR,
         "BayerGR8": cv2.COLOR_BayerGB2BGR, "BayerGB8": cv2.COLOR_BayerGR2BGR}
STATS_S = 1.0  # how often stream statistics and the temperature reach the metrics
RECENT_FRAMES, RECENT_S = 50, 10.0  # /health's share of incomplete frames: over the last 50 frames, 10 s at most


@dataclass
class GenICamConfig:
    device: str = ""                 # serial number, user-defined name, device ID or IP address; "" = the first
                                     # camera found (named in the log)
    pixel_format: str = ""           # "" = as the camera is set; Mono8, Mono10/12/16 (scaled to 8 bit),
                                     # BayerRG8/BG8/GR8/GB8 (to BGR), RGB8, BGR8
    roi: list | None = None          # [x, y, width, height] read out by the camera, in sensor pixels; null = as set
    binning: int = 0                 # 0 = as set; else the same binning both ways (2: half the resolution)
    exposure_us: float = 0.0         # exposure time in microseconds; 0 = as set
    gain: float | None = None        # the camera's gain (dB, or raw units where it has only GainRaw); null = as set
    frame_rate: float = 0.0          # free run: frames per second; 0 = as set
    trigger: str = "free"            # free (the camera's own rate) | hardware (a sensor on an input line) |
                                     # software (fired by the PLC handshake, one frame per trigger)
    trigger_source: str = "Line0"    # hardware: the input line wired to the part sensor (Line0, Line1, ...)
    trigger_activation: str = "RisingEdge"  # hardware: RisingEdge | FallingEdge | AnyEdge | LevelHigh | LevelLow
    packet_size: int = 0             # GigE: stream packet size in bytes (jumbo frames: up to 9000); 0 = found by
                                     # Aravis
    packet_delay: int = 0            # GigE: inter-packet delay in timestamp ticks (GevSCPD); 0 = as set
    buffers: int = 8                 # frame buffers; a frame with none free is lost (counted as an underrun)
    timeout_ms: float = 2000.0       # free run: no frame at all for this long = camera lost (reconnect);
                                     # triggered: how often an idle camera is checked; /health: no complete frame
                                     # judged for this long (free run) = degraded
    incomplete_share: float = 0.5    # /health: degraded when more than this share of the recent frames came
                                     # incomplete (lost packets)
    features: dict = field(default_factory=dict)  # further GenICam features by name, e.g. {ReverseX: true}


def _aravis():
    try:
        import gi

        gi.require_version("Aravis", "0.8")
        from gi.repository import Aravis, GLib
    except (ImportError, ValueError) as exc:
        raise SourceError(f"source.kind genicam needs Aravis 0.8 and PyGObject ({exc}): apt-get install "
                          "gir1.2-aravis-0.8, then pip install 'inspection[genicam]'") from None
    return Aravis, GLib


def list_cameras() -> list[dict]:
    """The GenICam cameras Aravis finds (GigE Vision on every interface, USB3 Vision)."""
    Aravis, _ = _aravis()
    Aravis.update_device_list()
    return [{"id": Aravis.get_device_id(i), "serial": Aravis.get_device_serial_nbr(i) or "",
             "address": Aravis.get_device_address(i) or "", "model": Aravis.get_device_model(i) or "",
             "vendor": Aravis.get_device_vendor(i) or "", "protocol": Aravis.get_device_protocol(i) or ""}
            for i in range(Aravis.get_n_devices())]


def to_image(data: bytes, width: int, height: int, fmt: str) -> np.ndarray:
    """A frame as the runner takes it: gray (H, W) or BGR (H, W, 3), 8 bit."""
    if fmt == "Mono8":
        return np.frombuffer(data, np.uint8, width * height).reshape(height, width).copy()
    if fmt in ("Mono10", "Mono12", "Mono16"):  # unpacked: 16-bit little endian, low bits used
        raw = np.frombuffer(data, "<u2", width * height).reshape(height, width)
        return (raw >> (int(fmt[4:]) - 8)).astype(np.uint8)
    if fmt in BAYER:
        return cv2.cvtColor(np.frombuffer(data, np.uint8, width * height).reshape(height, width), BAYER[fmt])
    if fmt in ("RGB8", "BGR8"):
        image = np.frombuffer(data, np.uint8, width * height * 3).reshape(height, width, 3)
        return image[..., ::-1].copy() if fmt == "RGB8" else image.copy()
    raise SourceError(f"source.genicam.pixel_format: the camera delivers {fmt}, which is not one of "
                      f"{', '.join(PIXEL_FORMATS)}; set pixel_format to one of those")


class _NoMetrics:
    def inc(self, name, value=1.0):
        pass

    def set(self, name, value):
        pass


class GenICamSource:
    """One GenICam camera. `live`: it never ends; a read that is cut short returns None without ending."""

    live = True

    def __init__(self, cfg, metrics=None, log=None):
        self.cfg, self.g = cfg, cfg.genicam
        self.metrics = metrics or _NoMetrics()
        self.log = log
        self.camera = self.stream = None
        self.counter = count(1)
        self.lost = False
        self.format = ""
        self.opened = 0
        self.last_ok = self.last_stats = 0.0
        self.seen: dict[str, int] = {}  # stream statistics already counted (per stream)
        self.info: dict = {}
        self.recent: collections.deque = collections.deque(maxlen=RECENT_FRAMES)  # (monotonic time, complete)

    # -- connecting ---------------------------------------------------------------------------------------------
    def open(self) -> None:
        Aravis, GLib = _aravis()
        self.close()
        device_id, info = self._find()
        try:
            camera = Aravis.Camera.new(device_id)
        except GLib.Error as exc:
            raise SourceError(f"source.genicam.device {self.g.device or device_id!r}: cannot open {device_id} "
                              f"({exc.message}); another program may hold the camera") from None
        try:
            self._configure(camera, Aravis, GLib)
            stream = self._start(camera, Aravis)
        except GLib.Error as exc:
            raise Disconnected(f"camera {device_id}: {exc.message}") from None
        self.lost = False
        camera.get_device().connect("control-lost", self._control_lost)
        self.camera, self.stream, self.seen = camera, stream, {}
        self.complete = Aravis.BufferStatus.SUCCESS  # looked up once, not per frame
        self.info = info
        self._opened_as()
        self.opened += 1
        if self.log is not None and self.opened > 1:
            self.log.info(f"reconnected: {self.describe()}")

    def _start(self, camera, Aravis):
        """A stream with `buffers` buffers of the camera's payload, and the acquisition started."""
        stream = camera.create_stream(None, None)
        if stream is None:
            raise SourceError(f"source.genicam.device {self.info.get('id') or self.g.device}: the camera gave no "
                              "stream")
        payload = camera.get_payload()
        for _ in range(self.g.buffers):
            stream.push_buffer(Aravis.Buffer.new_allocate(payload))
        camera.set_acquisition_mode(Aravis.AcquisitionMode.CONTINUOUS)
        camera.start_acquisition()
        return stream

    def _opened_as(self) -> None:
        camera = self.camera
        self.format = camera.get_pixel_format_as_string()
        self.info = {**self.info, "pixel_format": self.format, "trigger": self.g.trigger,
                     "region": list(camera.get_region())}
        self.last_ok = self.last_stats = time.monotonic()

    def apply(self, g: GenICamConfig) -> None:
        """Another product's settings (its products[].genicam over source.genicam), set between two frames.
        Exposure and gain change at once; a new readout (ROI, binning, pixel format) stops the acquisition, is
        set, and starts it again with new buffers. Frames the camera took before are dropped (counted in
        camera_frames_stale_total). Closed: taken at the next open. Raises SourceError naming the key the camera
        refused (the earlier settings are then still in self.g's place for the caller to restore)."""
        old, self.g = self.g, g
        if self.camera is None:
            return
        Aravis, GLib = _aravis()
        readout = (old.roi, old.binning, old.pixel_format) != (g.roi, g.binning, g.pixel_format)
        try:
            if readout:
                self.camera.stop_acquisition()
                self.stream = None  # its buffers have the old payload's size
            self._configure(self.camera, Aravis, GLib)
            if readout:
                self.stream, self.seen = self._start(self.camera, Aravis), {}
                self._opened_as()
            else:
                self._drop_stale()
        except GLib.Error as exc:
            raise Disconnected(f"camera {self.info.get('id')}: {exc.message}") from None

    def _drop_stale(self) -> None:
        """Frames delivered but not read yet belong to earlier parts (or settings): counted and dropped."""
        while (buf := self.stream.try_pop_buffer()) is not None:
            self.metrics.inc("camera_frames_stale_total")
            self.stream.push_buffer(buf)

    def describe(self) -> str:
        """The camera as opened, for the start-up report and the log."""
        i = self.info
        return (f"camera {i['vendor']} {i['model']} serial {i['serial']} at {i['address']} ({i['protocol']}): "
                f"{self.format} {i['region'][2]}x{i['region'][3]}, trigger {self.g.trigger}")

    def _find(self) -> tuple[str, dict]:
        cams = list_cameras()
        want = self.g.device
        hit = [c for c in cams if not want or want in (c["serial"], c["id"], c["address"])]
        if not hit and want:  # a user-defined name (DeviceUserID) is read from each camera
            hit = [c for c in cams if _user_id(c["id"]) == want]
        if not hit:
            found = "; ".join(f"{c['id']} (serial {c['serial']}, {c['address']})" for c in cams) or "none"
            what = f"source.genicam.device {want!r}: no such camera found" if want else \
                "source.genicam: no GenICam camera found"
            raise SourceError(f"{what} (cameras found: {found}; check the cable, the camera's IP address, the "
                              "firewall (UDP 3956), or run arv-tool-0.8)")
        return hit[0]["id"], hit[0]

    def _configure(self, camera, Aravis, GLib) -> None:
        """Apply source.genicam to the camera; SourceError names the key the camera refused."""
        g, dev = self.g, camera.get_device()
        steps = []
        if g.pixel_format:
            steps.append(("pixel_format", lambda: camera.set_pixel_format_from_string(g.pixel_format)))
        if g.binning:
            steps.append(("binning", lambda: camera.set_binning(g.binning, g.binning)))
        if g.roi:
            steps.append(("roi", lambda: _set_region(camera, g.roi)))
        if g.exposure_us:
            steps.append(("exposure_us", lambda: camera.set_exposure_time(
                _within("exposure_us", g.exposure_us, camera.get_exposure_time_bounds()))))
        if g.gain is not None:
            steps.append(("gain", lambda: camera.set_gain(_within("gain", g.gain, camera.get_gain_bounds()))))
        if g.frame_rate and g.trigger == "free":
            steps.append(("frame_rate", lambda: camera.set_frame_rate(
                _within("frame_rate", g.frame_rate, camera.get_frame_rate_bounds()))))
        if camera.is_gv_device():
            if g.packet_size:
                steps.append(("packet_size", lambda: camera.gv_set_packet_size(g.packet_size)))
            if g.packet_delay:
                steps.append(("packet_delay", lambda: camera.gv_set_packet_delay(g.packet_delay)))
        if g.trigger == "free":
            steps.append(("trigger", camera.clear_triggers))
        elif g.trigger == "software":
            steps.append(("trigger", lambda: camera.set_trigger("Software")))
        else:
            steps.append(("trigger_source", lambda: camera.set_trigger(g.trigger_source)))
            steps.append(("trigger_activation",
                          lambda: camera.set_string("TriggerActivation", g.trigger_activation)))
        for name, value in g.features.items():
            steps.append((f"features.{name}", lambda name=name, value=value: _set_feature(dev, name, value)))
        for key, step in steps:
            try:
                step()
            except (GLib.Error, ValueError) as exc:
                raise SourceError(f"source.genicam.{key}: the camera refused it "
                                  f"({getattr(exc, 'message', None) or exc})") from None
        if g.pixel_format and camera.get_pixel_format_as_string() != g.pixel_format:
            raise SourceError(f"source.genicam.pixel_format: {g.pixel_format} asked, the camera is at "
                              f"{camera.get_pixel_format_as_string()} (offered: "
                              f"{', '.join(camera.dup_available_pixel_formats_as_strings())})")

    def _control_lost(self, *_):  # Aravis' heartbeat thread: the camera stopped answering
        self.lost = True

    # -- frames -------------------------------------------------------------------------------------------------
    def fire(self) -> None:
        """Software trigger (PLC mode): frames already delivered belong to earlier parts and are dropped first."""
        if self.g.trigger != "software" or self.stream is None:
            return
        self._drop_stale()
        try:
            self.camera.software_trigger()
        except Exception as exc:  # noqa: BLE001 - GLib.Error: the camera is gone
            raise Disconnected(f"camera: software trigger not sent ({exc})") from None

    def read(self, stop=lambda: False) -> Frame | None:
        """The next complete frame, or None when stop() turns true first."""
        if self.stream is None:
            raise Disconnected("camera not open")
        while not stop():
            if self.lost:
                raise Disconnected(f"camera {self.info.get('id')}: control lost (cable, power or network)")
            buf = self.stream.timeout_pop_buffer(100_000)  # µs: stop() and loss are checked ten times a second
            now = time.monotonic()
            if now - self.last_stats >= STATS_S:
                self._statistics()
            if buf is None:
                if now - self.last_ok > self.g.timeout_ms / 1000:
                    self._check_alive()
                continue
            self.last_ok = now  # the camera is sending, even if this frame lost packets
            try:
                frame = self._frame(buf)
            finally:
                self.stream.push_buffer(buf)
            if frame is not None:
                return frame
        return None

    def _frame(self, buf) -> Frame | None:
        complete = buf.get_status() == self.complete
        self.recent.append((time.monotonic(), complete))
        if not complete:
            self.metrics.inc("camera_frames_incomplete_total")  # lost packets: never judged
            return None
        image = to_image(buf.get_data(), buf.get_image_width(), buf.get_image_height(), self.format)
        self.metrics.inc("camera_frames_total")
        # stamped when it arrived (Aravis' system timestamp, the host's clock), not when it was taken from the
        # buffers: a frame that waited there counts that wait in its capture → verdict latency
        arrived = buf.get_system_timestamp() / 1e9
        frame = Frame(f"{next(self.counter):08d}", image, arrived if 0 < arrived <= time.time() else time.time(),
                      f"genicam:{self.info.get('id')}")
        frame.camera = {"frame_id": buf.get_frame_id(), "timestamp_ns": buf.get_timestamp()}
        return frame

    def incomplete_share(self) -> float | None:
        """The share of incomplete frames among the recent ones (None while there are too few to tell)."""
        now = time.monotonic()
        recent = [ok for t, ok in list(self.recent) if now - t <= RECENT_S]
        return recent.count(False) / len(recent) if len(recent) >= 10 else None

    def _check_alive(self) -> None:
        """Nothing from the camera for timeout_ms: in free run it is lost; when triggered, it must still answer."""
        try:
            self.camera.get_device().get_string_feature_value("DeviceVendorName")
        except Exception as exc:  # noqa: BLE001 - GLib.Error
            raise Disconnected(f"camera {self.info.get('id')}: not answering ({exc})") from None
        if self.g.trigger == "free":
            raise Disconnected(f"camera {self.info.get('id')}: no frame for {self.g.timeout_ms:.0f} ms in free run")
        self.last_ok = time.monotonic()

    def _statistics(self) -> None:
        self.last_stats = time.monotonic()
        for info, metric in (("n_underruns", "camera_buffer_underruns_total"),
                             ("n_missing_packets", "camera_packets_missing_total"),
                             ("n_resent_packets", "camera_packets_resent_total")):
            try:
                n = int(self.stream.get_info_uint64_by_name(info))
            except Exception:  # noqa: BLE001 - a transport without that statistic
                continue
            if n > self.seen.get(info, 0):
                self.metrics.inc(metric, n - self.seen.get(info, 0))
            self.seen[info] = n
        dev = self.camera.get_device()
        if dev.is_feature_available("DeviceTemperature"):
            try:
                self.metrics.set("camera_temperature_celsius", dev.get_float_feature_value("DeviceTemperature"))
            except Exception:  # noqa: BLE001 - the next read tells whether the camera is gone
                pass

    def close(self) -> None:
        if self.camera is not None:
            try:
                self._statistics()  # the last second's losses reach the metrics too
                self.camera.stop_acquisition()
            except Exception:  # noqa: BLE001 - a camera that is gone cannot be stopped
                pass
        self.camera = self.stream = None


def _user_id(device_id: str) -> str | None:
    """A camera's user-defined name (DeviceUserID, GevDeviceUserID on older GigE cameras), or None."""
    Aravis, GLib = _aravis()
    try:
        dev = Aravis.Camera.new(device_id).get_device()
        for name in ("DeviceUserID", "GevDeviceUserID"):
            if dev.is_feature_available(name):
                return dev.get_string_feature_value(name)
    except GLib.Error:  # held by another program, or gone: not the one
        pass
    return None


def _set_feature(dev, name: str, value) -> None:
    """Set a GenICam feature by name (a command is executed when its value is true)."""
    node = dev.get_feature(name)
    if node is None:
        raise ValueError(f"no feature {name!r} in this camera's description")
    if type(node).__name__ == "GcCommand":
        if value:
            dev.execute_command(name)
        return
    mode = node.get_actual_access_mode().value_nick.upper()
    if "W" not in mode or not node.is_available():
        raise ValueError(f"feature {name} is {'read-only' if 'W' not in mode else 'not available now'}")
    kind = type(node).__name__
    if kind in ("GcIntegerNode", "GcFloatNode"):
        # the camera's own range, checked first: some cameras (and the Aravis emulator) take any number and then
        # fail to stream (Width -5: the runner would reconnect for ever instead of saying what is wrong)
        try:
            number = int(value) if kind == "GcIntegerNode" else float(value)
        except (TypeError, ValueError):
            raise ValueError(f"feature {name} takes a number, got {value!r}") from None
        _within(name, number, (node.get_min(), node.get_max()))
        step = node.get_inc() if kind == "GcIntegerNode" else 0
        if step and step > 1 and (number - node.get_min()) % step:
            raise ValueError(f"feature {name} moves in steps of {step} from {node.get_min()}, got {number}")
        node.set_value_from_string(str(number))
        if kind == "GcIntegerNode" and node.get_value() != number:  # floats: cameras round to their own steps
            raise ValueError(f"feature {name}: {number} asked, the camera took {node.get_value()}")
        return
    node.set_value_from_string(str(value).lower() if isinstance(value, bool) else str(value))


def _within(name: str, value, bounds) -> float:
    """value when the camera's bounds (low, high) hold it; ValueError naming both otherwise."""
    low, high = bounds
    if not low <= value <= high:
        raise ValueError(f"{name} {value} is outside the camera's range {low:g} to {high:g}")
    return value


def _set_region(camera, roi) -> None:
    """The read-out region [x, y, width, height]; ValueError when the camera holds another one afterwards."""
    camera.set_region(*roi)
    got = list(camera.get_region())
    if got != list(roi):
        raise ValueError(f"{list(roi)} asked, the camera took {got}")
