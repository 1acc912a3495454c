"""The failure log's schema, record types and names: shared by the store and its parts (deploy/store*.py).

The schema is plain versioned SQL (MIGRATIONS), applied on open under a lock, so an older log is upgraded in
place and several stations starting at once migrate it once; a log newer than the program is refused.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

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
]
# a reviewer's verdict → the failure's review status
REVIEW_VERDICTS = {"defect": "confirmed", "false_alarm": "false_alarm", "unsure": "unsure"}
SETTLED = ("confirmed", "false_alarm")  # reviewed for good: the quota may delete these, oldest first
DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
# The only names the store writes: <day>/<station>/<part>-<token>-<kind>.<ext>, relative, no dot-leading parts
STORED_NAME = re.compile(r"\d{4}-\d{2}-\d{2}/[\w-][\w.-]*/[\w-][\w.-]*-[0-9a-f]{10}-(?P<kind>[a-z_]+)\.[a-z0-9]{2,5}")


class StoreUnavailable(OSError):
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
    crop: list | None = None      # the station ROI [x, y, w, h] the image was cut to in the frame (None: the frame)


class ReviewError(ValueError):
    """A review the store refuses (unknown part, verdict, wrong map); the message says what was expected."""


@dataclass
class Review:
    failure_id: int
    reviewer: str
    ts: float
    verdict: str                  # defect | false_alarm | unsure
    defect_type: str | None = None
    comment: str = ""
    files: dict[str, str] = field(default_factory=dict)  # corrected maps: "map" (model resolution), "map_full"
    id: int | None = None


def _record(row: dict) -> FailureRecord:
    d = dict(row)
    d.pop("day", None)
    d["boxes"], d["files"] = json.loads(d["boxes"]), json.loads(d["files"])
    d["crop"] = json.loads(d["crop"]) if d.get("crop") else None
    return FailureRecord(**d)


def _safe(name: str) -> str:
    """A file-name-safe version of a part ID or station name (no separators, no leading dot)."""
    out = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name)).lstrip(".")
    return out[:120] or "part"
