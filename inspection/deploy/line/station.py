"""Station config: one YAML file per camera station, checked field by field (no pydantic on the line PC).

    >>> cfg = load_station("configs/station.yaml", overrides=["source.fps=20"])
    >>> cfg.source.kind, cfg.queue.policy, cfg.log.quota_mb

Every key, its default and its meaning: configs/station.yaml.
"""
from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import get_type_hints

from inspection.core.errors import UserError
from inspection.core.settings import read_settings
from inspection.deploy.line.genicam import PIXEL_FORMATS, TRIGGERS, GenICamConfig
from inspection.deploy.runtime import BACKENDS, PRECISIONS

SOURCE_KINDS = ("simulated", "folder", "watch", "video", "camera", "genicam")


class StationConfigError(UserError, ValueError):
    """An invalid station config; the message names the file and the field."""


@dataclass
class SourceConfig:
    kind: str = "simulated"          # simulated | folder | watch | video | camera | genicam
    path: str = "data/synthetic"     # folder / dataset / video file; camera: device index ("0") or URL (rtsp://, gst)
    fps: float = 0.0                 # simulated: frames per second (0 = as fast as the runner takes them)
    loop: bool = False               # simulated/video: start again at the end
    limit: int = 0                   # stop after this many frames (0 = no limit)
    color: str = "BGR"               # order of the frames the source delivers (OpenCV: BGR)
    roi: list | None = None          # station ROI [x, y, w, h]: the part of the frame the model judges (boxes stay
                                     # in frame pixels)
    part_id: str = "auto"            # auto (file name for files, counter otherwise) | counter | trigger (MQTT)
    trigger_wait_ms: float = 500.0   # trigger: wait this long for the part ID that goes with a frame
    settle_ms: int = 200             # watch: a new file is read once its size has not changed for this long
    reconnect_max_s: float = 10.0    # camera/video/genicam: longest wait between reconnect attempts
    genicam: GenICamConfig = field(default_factory=GenICamConfig)  # kind genicam: the camera (genicam.py)


@dataclass
class BatchConfig:
    max_size: int = 8                # frames per inference call
    max_wait_ms: float = 0.0         # wait at most this long to fill a batch; 0: judge what is queued (a batch
                                     # forms by itself while the model is busy; a wait adds to every verdict)


@dataclass
class QueueConfig:
    size: int = 64                   # frames waiting for inference
    policy: str = "drop_oldest"      # drop_oldest (count it) | block (the source waits)


@dataclass
class MQTTConfig:
    host: str = ""                   # empty = no MQTT
    port: int = 1883
    topic: str = "inspection/{station}/verdict"
    trigger_topic: str = "inspection/{station}/trigger"  # part IDs from the line controller (source.part_id: trigger)
    product_topic: str = ""          # a product ID here prepares that product; the answer goes to <topic>/state
    qos: int = 1
    client_id: str = ""
    keepalive: int = 30
    username: str = ""               # broker account; its password comes from the MQTT_PASSWORD environment variable


@dataclass
class HTTPConfig:
    host: str = "127.0.0.1"
    port: int = 0                    # 0 = no HTTP endpoint; e.g. 9100


@dataclass
class LogConfig:
    folder: str = "runs/line/failures"   # images, maps and overlays
    db: str = ""                     # SQLite file (default: <folder>/failures.db) or postgresql://user@host/db
    verdicts: list = field(default_factory=lambda: ["fail", "review", "error"])  # which parts are logged
    quota_mb: float = 0.0            # 0 = no quota; else oldest reviewed records are deleted to stay under it
    image_format: str = "png"        # png (lossless) | jpg
    fsync: bool = True
    queue: int = 256                 # records waiting for the writer; when full the line waits (no record is lost)
    retry_s: float = 5.0             # while the disk is full or the database down, retry this often
    outbox: str = ""                 # records waiting for the database: "" = <folder>/outbox; a local folder
                                     # when folder is a network share
    writer_nice: int = 0             # the writer thread's niceness (0-19): encoding images yields the CPU to judging


@dataclass
class OPCUAConfig:
    port: int = 0                    # 0 = off; OPC UA's usual port is 4840
    security: list = field(default_factory=lambda: ["Basic256Sha256_SignAndEncrypt"])  # offered policies
    username: str = ""               # the PLC's account; its password comes from OPCUA_PASSWORD
    trusted_clients: str = ""        # folder of client certificates (.der/.pem): only these may connect, and
                                     # they may log in by certificate
    anonymous: bool = False          # allow clients without credentials
    certificate: str = ""            # server certificate (DER or PEM); "" = a self-signed one made in pki
    private_key: str = ""            # its key (PEM)
    pki: str = "runs/line/pki"       # where the self-signed certificate and key are kept


@dataclass
class ModbusConfig:
    port: int = 0                    # 0 = off; Modbus TCP's usual port is 502 (privileged: e.g. 5020)


@dataclass
class PLCConfig:
    host: str = "127.0.0.1"          # address the PLC servers listen on: the PLC network's interface, or 0.0.0.0
    result_timeout_ms: float = 2000.0  # a trigger with no frame/verdict within this gets error 2 (no frame)
    ack_timeout_ms: float = 5000.0   # a result not acknowledged within this: Ready again, error 4; 0 = wait forever
    opcua: OPCUAConfig = field(default_factory=OPCUAConfig)
    modbus: ModbusConfig = field(default_factory=ModbusConfig)


@dataclass
class WebhookConfig:
    url: str = ""                    # empty = off; e.g. https://mes.example/inspection
    verdicts: list = field(default_factory=lambda: ["fail", "review", "error"])  # which verdicts are sent
    queue: int = 10000               # verdicts waiting for delivery; when full the oldest is dropped (counted)
    timeout_s: float = 2.0           # per request
    retry_max_s: float = 30.0        # longest wait between retries (back-off from 0.5 s)
    flush_s: float = 5.0             # at stop, keep delivering this long


@dataclass
class ProductCameraConfig:
    exposure_us: float = 0.0         # 0 = source.genicam.exposure_us
    gain: float | None = None        # null = source.genicam.gain
    roi: list | None = None          # [x, y, width, height] read out by the camera; null = source.genicam.roi
    pixel_format: str = ""           # "" = source.genicam.pixel_format


@dataclass
class ProductConfig:
    id: str = ""                     # the product's name: the PLC's ProductId, MQTT, --product (letters, digits, . _ -)
    number: int = 0                  # Modbus: the product number the PLC writes (1-65535); 0 = none
    package: str = ""                # its model package folder or registry pointer; "" = the station's package
    roi: list | None = None          # its station ROI [x, y, w, h]; null = source.roi
    review_band: float | None = None  # its review band; null = the package's
    genicam: ProductCameraConfig = field(default_factory=ProductCameraConfig)  # set on the camera at the switch


@dataclass
class StationConfig:
    station: str = "station-1"
    package: str = "runs/demo/ours/package"   # a model package folder, or a file holding the path of one
    backend: str = "auto"
    precision: str = "fp32"
    threads: int = 0
    jsonl: str = "-"                 # verdict lines: "-" = stdout, a file path, or "" for none
    reload_s: float = 2.0            # check the package for a new model this often (0 = never)
    source: SourceConfig = field(default_factory=SourceConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    mqtt: MQTTConfig = field(default_factory=MQTTConfig)
    http: HTTPConfig = field(default_factory=HTTPConfig)
    log: LogConfig = field(default_factory=LogConfig)
    plc: PLCConfig = field(default_factory=PLCConfig)
    webhook: WebhookConfig = field(default_factory=WebhookConfig)
    product: str = ""                # the product prepared at start: an id of `products` ("" = the first)
    products: list[ProductConfig] = field(default_factory=list)  # [] = one product: package and source.roi
    models_loaded: int = 4           # products whose model packages stay loaded (the most recently prepared)


CHOICES = {"source.kind": SOURCE_KINDS, "source.color": ("BGR", "RGB"),
           "source.part_id": ("auto", "counter", "trigger"),
           "queue.policy": ("drop_oldest", "block"), "log.image_format": ("png", "jpg"), "mqtt.qos": (0, 1, 2),
           "backend": BACKENDS, "precision": PRECISIONS}
POSITIVE = ("batch.max_size", "queue.size", "log.queue", "webhook.queue", "plc.result_timeout_ms", "models_loaded")
PRODUCT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # safe in a metric label, a topic and a file name
PORTS = ("http.port", "mqtt.port", "plc.opcua.port", "plc.modbus.port")


def _build(cls, data: dict, prefix: str, source: str):
    if not isinstance(data, dict):
        raise StationConfigError(f"{source}: {prefix.rstrip('.') or 'the file'} must be a mapping, got {data!r}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise StationConfigError(f"{source}: unknown field(s) {', '.join(prefix + u for u in sorted(unknown))} "
                                 f"(expected {', '.join(sorted(names))})")
    kwargs = {}
    for name, value in data.items():
        hint, key = hints[name], prefix + name
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value or {}, key + ".", source)
            continue
        item = (typing.get_args(hint) or (None,))[0]
        if typing.get_origin(hint) is list and dataclasses.is_dataclass(item):  # products: a list of mappings
            value = [] if value is None else value  # `products:` left empty in YAML: none
            if not isinstance(value, list):
                raise StationConfigError(f"{source}: field {key} must be a list of mappings, got {value!r}")
            kwargs[name] = [_build(item, v or {}, f"{key}[{i}].", source) for i, v in enumerate(value)]
            continue
        kwargs[name] = _coerce(value, hint, key, source)
    return cls(**kwargs)


def _coerce(value, hint, key: str, source: str):
    text = str(hint)
    if value is None and "None" in text:
        return None
    text = text.removesuffix(" | None")
    if hint is bool or text == "bool":
        if isinstance(value, bool):
            return value
    elif hint is int or text == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float or text == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str or text == "str":
        if value is None:  # `key=` on the command line, `key:` in YAML: empty
            return ""
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            return str(value)
    elif "list" in text:
        if isinstance(value, list):
            return value
    elif "dict" in text:
        if isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, (str, int, float, bool))
                                           for k, v in value.items()):
            return value
        hint = "a mapping of names to plain values"
    name = hint if isinstance(hint, str) else getattr(hint, "__name__", text.replace("typing.", ""))
    raise StationConfigError(f"{source}: field {key} must be {name}, got {value!r}")


def _check(cfg: StationConfig, source: str) -> StationConfig:
    for key, allowed in CHOICES.items():
        value = _lookup(cfg, key)
        if value not in allowed:
            raise StationConfigError(f"{source}: field {key} must be one of {', '.join(map(str, allowed))}, "
                                     f"got {value!r}")
    for key in POSITIVE:
        if _lookup(cfg, key) < 1:
            raise StationConfigError(f"{source}: field {key} must be at least 1, got {_lookup(cfg, key)!r}")
    _check_roi(cfg.source.roi, "source.roi", source)
    bad = set(cfg.log.verdicts) - {"fail", "review", "error", "pass"}
    if bad:
        raise StationConfigError(f"{source}: field log.verdicts may hold fail, review, error, pass; got {sorted(bad)}")
    if cfg.source.fps < 0 or cfg.log.quota_mb < 0 or cfg.batch.max_wait_ms < 0:
        raise StationConfigError(f"{source}: source.fps, log.quota_mb and batch.max_wait_ms must not be negative")
    if not 0 <= cfg.log.writer_nice <= 19:
        raise StationConfigError(f"{source}: field log.writer_nice must be 0-19 (0: the writer runs at the line's "
                                 f"priority), got {cfg.log.writer_nice!r}")
    if cfg.source.part_id == "trigger" and not cfg.mqtt.host:
        raise StationConfigError(f"{source}: source.part_id trigger takes part IDs from MQTT; set mqtt.host")
    for key in PORTS:
        if not 0 <= _lookup(cfg, key) <= 65535:
            raise StationConfigError(f"{source}: field {key} must be a TCP port (0-65535), got {_lookup(cfg, key)!r}")
    _check_plc(cfg, source)
    _check_genicam(cfg, source)
    _check_products(cfg, source)
    if not cfg.station.strip():
        raise StationConfigError(f"{source}: field station must name the station")
    return cfg


def _check_plc(cfg: StationConfig, source: str) -> None:
    plc, ua = cfg.plc, cfg.plc.opcua
    if ua.port and ua.port == plc.modbus.port:
        raise StationConfigError(f"{source}: fields plc.opcua.port and plc.modbus.port are both {ua.port}: "
                                 "each protocol needs its own port")
    if plc.ack_timeout_ms < 0 or cfg.webhook.timeout_s <= 0 or cfg.webhook.retry_max_s < 0 or cfg.webhook.flush_s < 0:
        raise StationConfigError(f"{source}: plc.ack_timeout_ms, webhook.retry_max_s and webhook.flush_s must not be "
                                 "negative, webhook.timeout_s must be positive")
    if plc.opcua.port or plc.modbus.port:
        if cfg.source.part_id == "trigger":
            raise StationConfigError(f"{source}: source.part_id trigger (MQTT part IDs) and a PLC handshake "
                                     "(plc.opcua.port / plc.modbus.port) both name the parts; choose one")
    if ua.port:
        from inspection.deploy.plc.opcua import POLICIES

        bad = [p for p in ua.security if p not in POLICIES]
        if bad or not ua.security:
            raise StationConfigError(f"{source}: field plc.opcua.security must list some of {', '.join(POLICIES)}, "
                                     f"got {ua.security!r}")
        if not (ua.username or ua.trusted_clients or ua.anonymous):
            raise StationConfigError(f"{source}: plc.opcua needs a way to log in: username (password in "
                                     "OPCUA_PASSWORD), trusted_clients (certificates) or anonymous: true")
        if bool(ua.certificate) != bool(ua.private_key):
            raise StationConfigError(f"{source}: fields plc.opcua.certificate and plc.opcua.private_key go together")
    bad = set(cfg.webhook.verdicts) - {"fail", "review", "error", "pass"}
    if bad:
        raise StationConfigError(f"{source}: field webhook.verdicts may hold fail, review, error, pass; "
                                 f"got {sorted(bad)}")
    if cfg.webhook.url and not cfg.webhook.url.startswith(("http://", "https://")):
        raise StationConfigError(f"{source}: field webhook.url must start with http:// or https://, "
                                 f"got {cfg.webhook.url!r}")


def _check_genicam(cfg: StationConfig, source: str) -> None:
    g = cfg.source.genicam
    for key, value, allowed in (("pixel_format", g.pixel_format, ("", *PIXEL_FORMATS)),
                                ("trigger", g.trigger, TRIGGERS)):
        if value not in allowed:
            names = ", ".join(a or '""' for a in allowed)
            raise StationConfigError(f"{source}: field source.genicam.{key} must be one of {names}, got {value!r}")
    if g.roi is not None and not (len(g.roi) == 4 and all(isinstance(v, int) and v >= 0 for v in g.roi)
                                  and g.roi[2] > 0 and g.roi[3] > 0):
        raise StationConfigError(f"{source}: field source.genicam.roi must be [x, y, width, height] in sensor "
                                 f"pixels, got {g.roi!r}")
    for key in ("binning", "exposure_us", "frame_rate", "packet_size", "packet_delay"):
        if getattr(g, key) < 0:
            raise StationConfigError(f"{source}: field source.genicam.{key} must not be negative, "
                                     f"got {getattr(g, key)!r}")
    if g.buffers < 2 or g.timeout_ms <= 0:
        raise StationConfigError(f"{source}: field source.genicam.buffers must be at least 2 and timeout_ms "
                                 f"positive, got {g.buffers!r} and {g.timeout_ms!r}")
    if not 0 < g.incomplete_share <= 1:
        raise StationConfigError(f"{source}: field source.genicam.incomplete_share must be in (0, 1], "
                                 f"got {g.incomplete_share!r}")
    if cfg.source.kind == "genicam" and g.trigger == "software" and not (cfg.plc.opcua.port or cfg.plc.modbus.port):
        raise StationConfigError(f"{source}: source.genicam.trigger software is fired by the PLC handshake; set "
                                 "plc.opcua.port or plc.modbus.port (or use trigger free or hardware)")


def _check_roi(roi, key: str, source: str) -> None:
    if roi is not None and (len(roi) != 4 or not all(isinstance(v, int) and v >= 0 for v in roi) or
                            roi[2] < 8 or roi[3] < 8):
        raise StationConfigError(f"{source}: field {key} must be [x, y, width, height] in pixels "
                                 f"(width and height at least 8), got {roi!r}")


def _check_products(cfg: StationConfig, source: str) -> None:
    ids, numbers = set(), set()
    for i, p in enumerate(cfg.products):
        key = f"products[{i}]"
        if not PRODUCT_ID.fullmatch(p.id):
            raise StationConfigError(f"{source}: field {key}.id must be 1-64 letters, digits, '.', '_' or '-' "
                                     f"(starting with a letter or digit), got {p.id!r}")
        if p.id in ids:
            raise StationConfigError(f"{source}: field {key}.id: product {p.id!r} is listed twice")
        ids.add(p.id)
        if not 0 <= p.number <= 65535 or p.number and p.number in numbers:
            raise StationConfigError(f"{source}: field {key}.number must be 1-65535 and differ from the other "
                                     f"products' (0: no number), got {p.number!r}")
        numbers.add(p.number)
        if cfg.plc.modbus.port and not p.number:
            raise StationConfigError(f"{source}: field {key}.number: plc.modbus selects products by number; give "
                                     f"product {p.id!r} one (1-65535)")
        _check_roi(p.roi, f"{key}.roi", source)
        if p.review_band is not None and not 0 <= p.review_band < 1:
            raise StationConfigError(f"{source}: field {key}.review_band must be null or in [0, 1), "
                                     f"got {p.review_band!r}")
        g = p.genicam
        if g != ProductCameraConfig() and cfg.source.kind != "genicam":
            raise StationConfigError(f"{source}: field {key}.genicam sets camera settings; they need source.kind "
                                     f"genicam (got {cfg.source.kind})")
        if g.pixel_format not in ("", *PIXEL_FORMATS) or g.exposure_us < 0:
            raise StationConfigError(f"{source}: field {key}.genicam: pixel_format must be one of "
                                     f"{', '.join(PIXEL_FORMATS)} and exposure_us not negative, got "
                                     f"{g.pixel_format!r} and {g.exposure_us!r}")
        if g.roi is not None and not (len(g.roi) == 4 and all(isinstance(v, int) and v >= 0 for v in g.roi)
                                      and g.roi[2] > 0 and g.roi[3] > 0):
            raise StationConfigError(f"{source}: field {key}.genicam.roi must be [x, y, width, height] in sensor "
                                     f"pixels, got {g.roi!r}")
    if cfg.product and cfg.product not in ids:
        raise StationConfigError(f"{source}: field product: {cfg.product!r} is not a product of this station "
                                 f"(products: {', '.join(sorted(ids)) or 'none configured'})")


def station_crop(image, roi):
    """The part of a frame the model judges (the station ROI [x, y, w, h]) and that ROI; (image, None) without
    one. The runner judges it, the failure log stores it, so review, re-scoring and retraining see the same."""
    if roi is None or image is None:
        return image, None
    x, y, w, h = roi
    return image[y:y + h, x:x + w], [x, y, w, h]


def _lookup(cfg, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def load_station(path: str | Path | None = None, overrides: list[str] | None = None) -> StationConfig:
    """Station config from YAML (None = all defaults) with `section.key=value` overrides (values are YAML)."""
    data, source = read_settings(path, overrides, StationConfigError, "station config")
    return _check(_build(StationConfig, data, "", source), source)
