"""The failure log's schema, record types and names: shared by the store and its parts (inspection/deploy/store/).

The schema is plain versioned SQL (MIGRATIONS), applied on open under a lock, so an older log is upgraded in
place and several stations starting at once migrate it once; a log newer than the program is refused.
"""
from __future__ import annotations

import json
import re
from dataclasses import InitVar, dataclass, field

from inspection.core.errors import UserError

SCHEMA = """
CREATE TABLE IF NOT EXISTS failures (
    id {id},
    part_id TEXT NOT NULL,
    station TEXT NOT NULL,
    ts {real} NOT NULL,
    model_version TEXT NOT NULL,
    verdict TEXT NOT NULL,
    score {real},
    defect_type TEXT,
    boxes TEXT NOT NULL,
    files TEXT NOT NULL,
    bytes {big} NOT NULL,
    review_status TEXT NOT NULL DEFAULT 'unreviewed'
);
CREATE INDEX IF NOT EXISTS failures_ts ON failures (ts);
CREATE INDEX IF NOT EXISTS failures_station_ts ON failures (station, ts);
CREATE INDEX IF NOT EXISTS failures_review ON failures (review_status, ts);
CREATE TABLE IF NOT EXISTS reviews (
    id {id},
    failure_id {big} NOT NULL REFERENCES failures (id),
    reviewer TEXT NOT NULL,
    ts {real} NOT NULL,
    verdict TEXT NOT NULL,
    defect_type TEXT,
    comment TEXT NOT NULL DEFAULT '',
    files TEXT NOT NULL DEFAULT '{{}}'
);
CREATE INDEX IF NOT EXISTS reviews_failure ON reviews (failure_id, id);
CREATE INDEX IF NOT EXISTS reviews_ts ON reviews (ts);
CREATE TABLE IF NOT EXISTS tallies (
    day TEXT NOT NULL,
    station TEXT NOT NULL,
    verdict TEXT NOT NULL,
    n {big} NOT NULL,
    PRIMARY KEY (day, station, verdict)
)
"""
# Versioned schema changes, applied in order on open; never edit a released one, append a new one.
# 1 is the schema from before versioning (IF NOT EXISTS: such a log passes through it unchanged).
MIGRATIONS = [
    (1, SCHEMA),
    (2, """ALTER TABLE failures ADD COLUMN day TEXT;
UPDATE failures SET day = {day_of_ts} WHERE day IS NULL;
CREATE INDEX IF NOT EXISTS failures_day ON failures (day)"""),  # the station's local day: per-day statistics
    (3, "ALTER TABLE failures ADD COLUMN crop TEXT"),  # station ROI: the stored image is the part the model judged
    (4, "ALTER TABLE failures ADD COLUMN camera TEXT"),  # a GenICam camera's frame ID and timestamp (JSON)
    # products: one name for the station ROI (roi), the product a part was judged as, the region of the stored
    # image the model saw; the daily tallies per product (rebuilt: a primary key cannot change in place)
    (5, """ALTER TABLE failures RENAME COLUMN crop TO roi;
ALTER TABLE failures ADD COLUMN product TEXT NOT NULL DEFAULT '';
ALTER TABLE failures ADD COLUMN model_roi TEXT;
CREATE INDEX IF NOT EXISTS failures_product_ts ON failures (product, ts);
CREATE TABLE product_tallies (
    day TEXT NOT NULL,
    station TEXT NOT NULL,
    product TEXT NOT NULL DEFAULT '',
    verdict TEXT NOT NULL,
    n {big} NOT NULL,
    PRIMARY KEY (day, station, product, verdict)
);
INSERT INTO product_tallies (day, station, product, verdict, n) SELECT day, station, '', verdict, n FROM tallies;
DROP TABLE tallies;
ALTER TABLE product_tallies RENAME TO tallies"""),
]
# a reviewer's verdict → the failure's review status
REVIEW_VERDICTS = {"defect": "confirmed", "false_alarm": "false_alarm", "unsure": "unsure"}
SETTLED = ("confirmed", "false_alarm")  # reviewed for good: the quota may delete these, oldest first
DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
# The only names the store writes: <day>/<station>/<part>-<token>-<kind>.<ext>, relative, no dot-leading parts
STORED_NAME = re.compile(r"\d{4}-\d{2}-\d{2}/[\w-][\w.-]*/[\w-][\w.-]*-[0-9a-f]{10}-(?P<kind>[a-z_]+)\.[a-z0-9]{2,5}")


class StoreUnavailable(UserError, OSError):
    """The store cannot take records now (database unreachable); the writer keeps them and retries."""


class StoreFull(StoreUnavailable):
    """The disk (or the quota, with only unreviewed records left) has no room for this record."""


@dataclass
class FailureRecord:
    part_id: str
    station: str
    ts: float
    model_version: str
    verdict: str
    score: float | None           # None for parts that could not be judged (verdict 'error')
    defect_type: str | None
    boxes: list[dict]
    files: dict[str, str] = field(default_factory=dict)  # kind → path relative to the store's folder
    bytes: int = 0
    review_status: str = "unreviewed"
    id: int | None = None
    roi: list | None = None       # the station ROI [x, y, w, h] the image was cut from in the frame (None: the frame)
    camera: dict | None = None    # GenICam: {"frame_id", "timestamp_ns"} of the frame as the camera stamped it
    product: str = ""             # the product the part was judged as ("": a station without products)
    model_roi: list | None = None  # the region [x, y, w, h] of the stored image the model saw (the package's own
                                   # ROI, clipped); None: judged before products were recorded, or not judged
    damaged: str | None = None    # read back from a row that does not hold what the writer writes: why (shown, counted)
    crop: InitVar[list | None] = None  # the older name of roi, in outbox and journal files written before it

    def __post_init__(self, crop):
        if self.roi is None:
            self.roi = crop


FailureRecord.crop = property(lambda self: self.roi, doc="The older name of roi (scripts written before it).")


class ReviewError(UserError, ValueError):
    """A review the store refuses (unknown part, verdict, wrong map); the message says what was expected."""


@dataclass
class Review:
    failure_id: int
    reviewer: str
    ts: float
    verdict: str                  # defect | false_alarm | unsure
    defect_type: str | None = None
    comment: str = ""
    files: dict[str, str] = field(default_factory=dict)  # corrected maps: "corrected" (model resolution),
                                                          # "corrected_full" (the frame's)
    id: int | None = None


def _record(row: dict) -> FailureRecord:
    """A record from a row; a row that does not hold what the writer writes (anyone who can write the database
    can put anything there) comes back as a damaged record with its readable fields, never as an exception."""
    d = dict(row)
    d.pop("day", None)
    try:
        boxes, files = json.loads(d["boxes"]), json.loads(d["files"])
        roi = json.loads(d["roi"]) if d.get("roi") else None
        model_roi = json.loads(d["model_roi"]) if d.get("model_roi") else None
        camera = json.loads(d["camera"]) if d.get("camera") else None
        if camera is not None and not (isinstance(camera, dict) and all(_int(v) for v in camera.values())):
            raise ValueError("camera is not a map of frame_id and timestamp_ns")
        if not isinstance(boxes, list) or not all(_box_ok(b) for b in boxes):
            raise ValueError("boxes are not a list of boxes")
        if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
            raise ValueError("files are not a map of kind to path")
        for name, region in (("roi", roi), ("model_roi", model_roi)):
            if region is not None and not (isinstance(region, list) and len(region) == 4
                                           and all(_int(v) for v in region)):
                raise ValueError(f"{name} is not [x, y, width, height]")
        score = None if d["score"] is None else float(d["score"])
        if score is not None and not 0 <= score <= 1:
            raise ValueError(f"score {score!r} is not in [0, 1]")
        return FailureRecord(**{**d, "boxes": boxes, "files": files, "roi": roi, "model_roi": model_roi,
                                "camera": camera, "score": score, "product": str(d.get("product") or ""),
                                "ts": float(d["ts"]), "bytes": int(d["bytes"] or 0)})
    except (ValueError, TypeError, KeyError, RecursionError) as exc:
        text = lambda k: str(d.get(k) or "")[:200]  # noqa: E731
        try:
            ts = float(d.get("ts") or 0)
        except (ValueError, TypeError):
            ts = 0.0
        return FailureRecord(text("part_id"), text("station"), ts, text("model_version"), text("verdict"), None, None,
                             [], {}, 0, text("review_status") or "unreviewed", d.get("id"), None,
                             damaged=f"{type(exc).__name__}: {str(exc)[:200]}")


VERDICTS = ("pass", "review", "fail", "error")
FILE_KINDS = ("image", "map", "overlay")        # what the runner writes with a record
SUFFIX = re.compile(r"\.[a-z0-9]{2,5}")
# a record as the runner journals and spools it (review status, files, sizes and ids are the store's own)
WRITTEN = {"part_id": True, "station": True, "ts": True, "model_version": True, "verdict": True, "score": True,
           "defect_type": True, "boxes": True, "roi": False, "camera": False, "product": False, "model_roi": False,
           "crop": False, "damaged": False}  # name: required; crop: roi's older name, in files written before it
MAX_TEXT = 1000                                 # characters of a part ID, model version or defect type


def written_record(row, station: str) -> FailureRecord:
    """A record from a journal line or an outbox file: only the fields the runner writes, each of the type it
    writes, for this station; ValueError naming the first field that is not (anyone who can write the outbox
    folder could have put anything there, e.g. a review status that would make a part look reviewed)."""
    if not isinstance(row, dict):
        raise ValueError(f"expected an object of record fields, found {type(row).__name__}")
    unknown = sorted(set(row) - set(WRITTEN))
    missing = [k for k, required in WRITTEN.items() if required and k not in row]
    if unknown or missing:
        raise ValueError(f"field {(unknown or missing)[0][:40]!r} " + ("is not one the runner writes" if unknown
                                                                      else "is missing"))

    def text(key: str, optional: bool = False) -> None:
        v = row[key]
        if not ((optional and v is None) or (isinstance(v, str) and 0 < len(v) <= MAX_TEXT)):
            raise ValueError(f"field {key!r} must be text of 1 to {MAX_TEXT} characters, found {str(v)[:40]!r}")

    text("part_id"), text("model_version"), text("defect_type", optional=True)
    if row["station"] != station:
        raise ValueError(f"field 'station' is {str(row['station'])[:40]!r}, not this outbox's station {station!r}")
    ts, score = row["ts"], row["score"]
    if not (isinstance(ts, (int, float)) and not isinstance(ts, bool) and 0 < ts < 1e11):
        raise ValueError(f"field 'ts' must be a time in seconds, found {str(ts)[:40]!r}")
    if row["verdict"] not in VERDICTS:
        raise ValueError(f"field 'verdict' must be one of {', '.join(VERDICTS)}, found {str(row['verdict'])[:40]!r}")
    if score is not None and not (isinstance(score, (int, float)) and not isinstance(score, bool) and 0 <= score <= 1):
        raise ValueError(f"field 'score' must be a number in [0, 1] or null, found {str(score)[:40]!r}")
    boxes, camera, product = row["boxes"], row.get("camera"), row.get("product", "")
    if not (isinstance(boxes, list) and len(boxes) <= 1000 and all(_box_ok(b) for b in boxes)):
        raise ValueError("field 'boxes' is not a list of boxes")
    for key in ("roi", "crop", "model_roi"):
        region = row.get(key)
        if region is not None and not (isinstance(region, list) and len(region) == 4
                                       and all(_int(v) and v >= 0 for v in region)):
            raise ValueError(f"field {key!r} is not [x, y, width, height]")
    if not (isinstance(product, str) and len(product) <= MAX_TEXT):
        raise ValueError(f"field 'product' must be text of at most {MAX_TEXT} characters, found {str(product)[:40]!r}")
    if camera is not None and not (isinstance(camera, dict) and set(camera) <= {"frame_id", "timestamp_ns"}
                                   and all(_int(v) for v in camera.values())):
        raise ValueError("field 'camera' is not a map of frame_id and timestamp_ns")
    if row.get("damaged") is not None:
        raise ValueError("field 'damaged' is the reader's, never written")
    return FailureRecord(**{k: v for k, v in row.items() if k != "damaged"}, damaged=None)


def written_files(files) -> dict[str, tuple[str, bytes]]:
    """An outbox file's files (kind → [suffix, base64]) as the store takes them; ValueError for another kind
    or suffix (they become parts of file names)."""
    import base64
    import binascii

    if not isinstance(files, dict):
        raise ValueError("files are not a map of kind to [suffix, data]")
    out = {}
    for kind, entry in files.items():
        if kind not in FILE_KINDS or not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)
                                          and SUFFIX.fullmatch(entry[0]) and isinstance(entry[1], str)):
            raise ValueError(f"file {str(kind)[:40]!r} is not one the runner writes ({', '.join(FILE_KINDS)} with a "
                             "suffix such as .png)")
        try:
            out[kind] = (entry[0], base64.b64decode(entry[1], validate=True))
        except binascii.Error:
            raise ValueError(f"file {kind!r} is not base64") from None
    return out


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


_COORDS = frozenset(("x0", "y0", "x1", "y1", "score"))


def _box_ok(b) -> bool:
    """A dict whose box fields, where it has any, are numbers (the pages compute with them) and whose error, where
    it has one, is text."""
    if not isinstance(b, dict) or ("error" in b and not isinstance(b["error"], str)):
        return False
    present = _COORDS & b.keys()
    return not present or (len(present) == len(_COORDS) and all(
        isinstance(b[k], (int, float)) and not isinstance(b[k], bool) for k in _COORDS))


def safe_name(name: str) -> str:
    """A file-name-safe version of a part ID or station name (no separators, no leading dot)."""
    out = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name)).lstrip(".")
    return out[:120] or "part"
