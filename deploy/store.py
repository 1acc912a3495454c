"""The failure log: every failed or review-band part's image, attention map and overlay, and a record of it.

    >>> store = SQLiteStore("failures/failures.db", "failures")     # opens, recovers from a crash
    >>> store.add(record, files={"image": (".png", png_bytes), "map": (".png", map_png), "overlay": (".jpg", jpg)})
    >>> store.records(station="line1", review_status="unreviewed", limit=50)

Crash safety (kill -9 at any instant): each file is written to a hidden temporary name, fsynced and renamed,
and only then is the record committed (SQLite, WAL mode). A record therefore never points at a missing or
half-written file. A crash between the renames and the commit can leave files without a record; the runner
calls `recover(station)` when it starts, before it writes, which removes those (and stray temporary files) in
its own station's folders, so after a restart there is no file without its record either. Readers (review
station, `inspection failures`) never recover: a file a live runner has renamed in but not yet committed is
not theirs to delete. The review station and PostgreSQL (issue 7) use the same interface.
"""
from __future__ import annotations

import errno
import json
import re
import sqlite3
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from deploy.atomic import TMP_MARK, write_atomic

SCHEMA = """
CREATE TABLE IF NOT EXISTS failures (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    part_id TEXT NOT NULL,
    station TEXT NOT NULL,
    ts REAL NOT NULL,
    model_version TEXT NOT NULL,
    verdict TEXT NOT NULL,
    score REAL,
    defect_type TEXT,
    boxes TEXT NOT NULL,
    files TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    review_status TEXT NOT NULL DEFAULT 'unreviewed'
);
CREATE INDEX IF NOT EXISTS failures_ts ON failures (ts);
CREATE INDEX IF NOT EXISTS failures_station_ts ON failures (station, ts);
CREATE INDEX IF NOT EXISTS failures_review ON failures (review_status, ts);
CREATE TABLE IF NOT EXISTS reviews (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    failure_id INTEGER NOT NULL REFERENCES failures (id),
    reviewer TEXT NOT NULL,
    ts REAL NOT NULL,
    verdict TEXT NOT NULL,
    defect_type TEXT,
    comment TEXT NOT NULL DEFAULT '',
    files TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS reviews_failure ON reviews (failure_id, id);
CREATE INDEX IF NOT EXISTS reviews_ts ON reviews (ts);
CREATE TABLE IF NOT EXISTS tallies (
    day TEXT NOT NULL,
    station TEXT NOT NULL,
    verdict TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (day, station, verdict)
);
"""
# a reviewer's verdict → the failure's review status
REVIEW_VERDICTS = {"defect": "confirmed", "false_alarm": "false_alarm", "unsure": "unsure"}
SETTLED = ("confirmed", "false_alarm")  # reviewed for good: the quota may delete these, oldest first
DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


class StoreFull(OSError):
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


class FailureStore(Protocol):
    """What the runner, the review station and the retrainer need from a failure log (SQLite here; PostgreSQL next)."""

    folder: Path

    def add(self, record: FailureRecord, files: dict[str, tuple[str, bytes]]) -> int: ...
    def get(self, record_id: int) -> FailureRecord | None: ...
    def records(self, limit: int = 100, offset: int = 0, before: tuple[float, int] | None = None,
                **filters) -> list[FailureRecord]: ...
    def neighbours(self, record: FailureRecord, **filters) -> tuple[int | None, int | None]: ...
    def count(self, **filters) -> int: ...
    def count_by_status(self, **filters) -> dict[str, int]: ...
    def stations(self) -> list[str]: ...
    def tally(self, station: str, counts: dict[tuple[str, str], int]) -> None: ...
    def daily(self, days: int = 30) -> list[dict]: ...
    def set_review_status(self, record_id: int, status: str) -> None: ...
    def add_review(self, failure_id: int, reviewer: str, verdict: str, defect_type: str | None = None,
                   comment: str = "", corrected=None) -> int: ...
    def reviews(self, failure_id: int) -> list[Review]: ...
    def reviews_since(self, ts: float) -> tuple[int, float]: ...
    def used_bytes(self) -> int: ...
    def recover(self, station: str | None = None) -> dict: ...
    def close(self) -> None: ...


class SQLiteStore:
    """Failure log on SQLite (WAL) with the files under `folder`. One writer thread; readers may be many."""

    def __init__(self, db_path: str | Path, folder: str | Path, quota_bytes: int | None = None, fsync: bool = True):
        self.folder = Path(folder)
        self.db_path = Path(db_path)
        self.quota_bytes = quota_bytes
        self.fsync = fsync
        self.folder.mkdir(parents=True, exist_ok=True)
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.db = sqlite3.connect(self.db_path, check_same_thread=False, timeout=30)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL" if fsync else "PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        self.recovered: dict = {}

    # -- crash recovery ------------------------------------------------------------------------------------------
    def recover(self, station: str | None = None) -> dict:
        """Delete temporary files and files no record names, in <day>/<station>/ folders (one station or all).

        Only for the writer, at start-up, before it writes: see the module docstring.
        """
        known = set()
        for (files,) in self.db.execute("SELECT files FROM failures UNION ALL SELECT files FROM reviews"):
            known.update(json.loads(files).values())
        removed_tmp = removed_orphans = 0
        pattern = f"*/{_safe(station)}/*" if station else "*/*/*"
        for path in self.folder.glob(pattern):  # only the store's own <day>/<station>/<file>: nothing else
            if not path.is_file() or not DAY.fullmatch(path.parent.parent.name):
                continue
            rel = path.relative_to(self.folder).as_posix()
            if TMP_MARK in path.name:
                path.unlink(missing_ok=True)
                removed_tmp += 1
            elif rel not in known:
                path.unlink(missing_ok=True)
                removed_orphans += 1
        self.recovered = {"temporary": removed_tmp, "orphans": removed_orphans}
        return self.recovered

    # -- writing -------------------------------------------------------------------------------------------------
    def add(self, record: FailureRecord, files: dict[str, tuple[str, bytes]]) -> int:
        """Write the files (kind → (suffix, bytes)), then commit the record; return its id.

        Raises StoreFull when the disk is full (nothing is left behind) or when the quota is exhausted by
        unreviewed records, which are never deleted to make room.
        """
        need = sum(len(data) for _, data in files.values())
        with self._lock:
            self._make_room(need)
            day = time.strftime("%Y-%m-%d", time.localtime(record.ts))
            rel_dir = Path(day) / _safe(record.station)
            (self.folder / rel_dir).mkdir(parents=True, exist_ok=True)
            written: list[Path] = []
            token = uuid.uuid4().hex[:10]  # part IDs repeat (counters restart): names must not
            try:
                for kind, (suffix, data) in files.items():
                    path = self.folder / rel_dir / f"{_safe(record.part_id)}-{token}-{kind}{suffix}"
                    write_atomic(path, data, self.fsync)
                    written.append(path)
                    record.files[kind] = (rel_dir / path.name).as_posix()
                record.bytes = need
                row = asdict(record)
                row.pop("id")
                row["boxes"], row["files"] = json.dumps(row["boxes"]), json.dumps(row["files"])
                with self.db:
                    cur = self.db.execute(f"INSERT INTO failures ({', '.join(row)}) VALUES "
                                          f"({', '.join('?' * len(row))})", list(row.values()))
            except (OSError, sqlite3.OperationalError) as exc:
                for path in written:
                    path.unlink(missing_ok=True)
                record.files = {}
                full = getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "full" in str(exc)
                if full:
                    raise StoreFull(errno.ENOSPC, f"{self.folder}: disk full, record of part {record.part_id} "
                                                  "not written") from None
                raise
            record.id = cur.lastrowid
            return record.id

    def _make_room(self, need: int) -> None:
        """Under a quota: delete the oldest reviewed records until `need` bytes fit; never unreviewed ones."""
        if self.quota_bytes is None:
            return
        used = self.used_bytes()
        while used + need > self.quota_bytes:
            row = self.db.execute(f"SELECT id, files, bytes FROM failures WHERE review_status IN {SETTLED} "
                                  "ORDER BY ts LIMIT 1").fetchone()
            if row is None:
                raise StoreFull(errno.EDQUOT, f"{self.folder}: quota of {self.quota_bytes} bytes is used by "
                                              "unreviewed failures; review them or raise the quota")
            review_files = [json.loads(f) for (f,) in self.db.execute("SELECT files FROM reviews WHERE failure_id = ?",
                                                                        (row["id"],))]
            with self.db:
                self.db.execute("DELETE FROM reviews WHERE failure_id = ?", (row["id"],))
                self.db.execute("DELETE FROM failures WHERE id = ?", (row["id"],))
            for files in [json.loads(row["files"]), *review_files]:
                for rel in files.values():
                    (self.folder / rel).unlink(missing_ok=True)
            used -= row["bytes"]

    def set_review_status(self, record_id: int, status: str) -> None:
        with self._lock, self.db:
            self.db.execute("UPDATE failures SET review_status = ? WHERE id = ?", (status, record_id))

    def add_review(self, failure_id: int, reviewer: str, verdict: str, defect_type: str | None = None,
                   comment: str = "", corrected=None) -> int:
        """Append a review (history is never overwritten) and set the part's review status from it.

        `corrected`: an operator-corrected attention map in [0, 1], at the model's map resolution or at the
        frame's; both resolutions are stored (16-bit PNG) and become training targets (L_map).
        """
        if verdict not in REVIEW_VERDICTS:
            raise ReviewError(f"review verdict must be one of {', '.join(REVIEW_VERDICTS)}, got {verdict!r}")
        if not str(reviewer).strip():
            raise ReviewError("a review needs the reviewer's name")
        record = self.get(failure_id)
        if record is None:
            raise ReviewError(f"no logged part with id {failure_id}")
        files = self._corrected_files(record, corrected) if corrected is not None else {}
        with self._lock:
            rel_dir = Path(record.files["map"]).parent if files else None  # beside the part's own files
            token, stored, written = uuid.uuid4().hex[:10], {}, []
            try:
                for kind, data in files.items():
                    path = self.folder / rel_dir / f"{_safe(record.part_id)}-{token}-{kind}.png"
                    write_atomic(path, data, self.fsync)
                    written.append(path)
                    stored[kind] = (rel_dir / path.name).as_posix()
                with self.db:
                    cur = self.db.execute(
                        "INSERT INTO reviews (failure_id, reviewer, ts, verdict, defect_type, comment, files) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)", (failure_id, reviewer, time.time(), verdict,
                                                         defect_type, comment, json.dumps(stored)))
                    self.db.execute("UPDATE failures SET review_status = ? WHERE id = ?",
                                    (REVIEW_VERDICTS[verdict], failure_id))
            except BaseException:
                for path in written:
                    path.unlink(missing_ok=True)
                raise
            return cur.lastrowid

    def _corrected_files(self, record: FailureRecord, corrected) -> dict[str, bytes]:
        import cv2
        import numpy as np

        att = np.asarray(corrected, np.float32)
        if "map" not in record.files:
            raise ReviewError(f"part {record.part_id} has no attention map to correct (verdict {record.verdict})")
        model = cv2.imread(str(self.folder / record.files["map"]), cv2.IMREAD_UNCHANGED)
        frame = cv2.imread(str(self.folder / record.files["image"]), cv2.IMREAD_UNCHANGED) \
            if "image" in record.files else None
        if model is None:
            raise ReviewError(f"part {record.part_id}: its attention map file is missing or unreadable")
        shapes = [model.shape[:2]] + ([frame.shape[:2]] if frame is not None else [])
        if att.ndim != 2 or att.shape not in shapes:
            raise ReviewError(f"corrected map for part {record.part_id} has shape {att.shape}; expected "
                              + " or ".join(f"{h}x{w}" for h, w in shapes) + " (model map or frame)")
        if not np.isfinite(att).all():
            raise ReviewError(f"corrected map for part {record.part_id} holds NaN or infinite values")
        att = np.clip(att, 0, 1)
        h, w = model.shape[:2]
        small = att if att.shape == (h, w) else cv2.resize(att, (w, h), interpolation=cv2.INTER_AREA)
        full = att if frame is None or att.shape == frame.shape[:2] else \
            cv2.resize(att, (frame.shape[1], frame.shape[0]), interpolation=cv2.INTER_LINEAR)
        return {kind: cv2.imencode(".png", (a * 65535 + 0.5).astype(np.uint16))[1].tobytes()
                for kind, a in (("corrected", small), ("corrected_full", full))}

    def reviews(self, failure_id: int) -> list[Review]:
        """Every review of a part, oldest first (the last one sets its status)."""
        rows = self.db.execute("SELECT * FROM reviews WHERE failure_id = ? ORDER BY id", (failure_id,)).fetchall()
        return [Review(**{**dict(r), "files": json.loads(r["files"])}) for r in rows]

    # -- reading -------------------------------------------------------------------------------------------------
    def reviews_since(self, ts: float) -> tuple[int, float]:
        """(number of reviews written after ts, time of the newest one or ts)."""
        n, newest = self.db.execute("SELECT COUNT(*), MAX(ts) FROM reviews WHERE ts > ?", (ts,)).fetchone()
        return int(n), float(newest if newest is not None else ts)

    def used_bytes(self) -> int:
        return int(self.db.execute("SELECT COALESCE(SUM(bytes), 0) FROM failures").fetchone()[0])

    def count(self, **filters) -> int:
        where, args = _where(filters)
        return int(self.db.execute(f"SELECT COUNT(*) FROM failures{where}", args).fetchone()[0])

    def count_by_status(self, **filters) -> dict[str, int]:
        """Matching parts per review status, in one pass (the queue's counts)."""
        where, args = _where(filters)
        rows = self.db.execute(f"SELECT review_status, COUNT(*) FROM failures{where} GROUP BY review_status", args)
        return {"unreviewed": 0, "confirmed": 0, "false_alarm": 0, "unsure": 0, **dict(rows.fetchall())}

    def stations(self) -> list[str]:
        return [s for (s,) in self.db.execute("SELECT DISTINCT station FROM failures ORDER BY station")]

    def records(self, limit: int = 100, offset: int = 0, before: tuple[float, int] | None = None,
                **filters) -> list[FailureRecord]:
        """Newest first. `before=(ts, id)` pages by key (fast at any depth); filters: see FILTERS."""
        where, args = _where(filters, before=before)
        rows = self.db.execute(f"SELECT * FROM failures{where} ORDER BY ts DESC, id DESC LIMIT ? OFFSET ?",
                               [*args, limit, offset]).fetchall()
        return [_record(r) for r in rows]

    def neighbours(self, record: FailureRecord, **filters) -> tuple[int | None, int | None]:
        """IDs of the next newer and next older part under the same filters (None at either end)."""
        where, args = _where(filters, before=(record.ts, record.id))
        older = self.db.execute(f"SELECT id FROM failures{where} ORDER BY ts DESC, id DESC LIMIT 1", args).fetchone()
        where, args = _where(filters, after=(record.ts, record.id))
        newer = self.db.execute(f"SELECT id FROM failures{where} ORDER BY ts, id LIMIT 1", args).fetchone()
        return (newer[0] if newer else None), (older[0] if older else None)

    def tally(self, station: str, counts: dict[tuple[str, str], int]) -> None:
        """Add the runner's verdict counts, {(day 'YYYY-MM-DD', verdict): n}: the denominators of the fail rates."""
        with self._lock, self.db:
            self.db.executemany("INSERT INTO tallies (day, station, verdict, n) VALUES (?, ?, ?, ?) "
                                "ON CONFLICT (day, station, verdict) DO UPDATE SET n = n + excluded.n",
                                [(day, station, verdict, n) for (day, verdict), n in counts.items() if n])

    def daily(self, days: int = 30) -> list[dict]:
        """Per station and day, newest first: parts inspected, failed, logged, confirmed, false alarms, rates."""
        since = time.strftime("%Y-%m-%d", time.localtime(time.time() - days * 86400))
        out: dict[tuple[str, str], dict] = {}

        def row(day, station):
            return out.setdefault((day, station), {"day": day, "station": station, "inspected": 0, "fail": 0,
                                                   "review": 0, "error": 0, "logged": 0, "confirmed": 0,
                                                   "false_alarm": 0, "unsure": 0, "unreviewed": 0})
        for day, station, verdict, n in self.db.execute(
                "SELECT day, station, verdict, n FROM tallies WHERE day >= ?", (since,)):
            r = row(day, station)
            r["inspected"] += n
            if verdict in ("fail", "review", "error"):
                r[verdict] += n
        for day, station, status, n in self.db.execute(
                "SELECT date(ts, 'unixepoch', 'localtime') AS day, station, review_status, COUNT(*) FROM failures "
                "WHERE ts >= ? GROUP BY day, station, review_status", (time.mktime(time.strptime(since, "%Y-%m-%d")),)):
            r = row(day, station)
            r["logged"] += n
            r[status] = r.get(status, 0) + n
        for r in out.values():
            reviewed = r["confirmed"] + r["false_alarm"]
            r["fail_rate"] = r["fail"] / r["inspected"] if r["inspected"] else None
            r["false_alarm_rate"] = r["false_alarm"] / reviewed if reviewed else None
        return sorted(out.values(), key=lambda r: (r["day"], r["station"]), reverse=True)

    def get(self, record_id: int) -> FailureRecord | None:
        row = self.db.execute("SELECT * FROM failures WHERE id = ?", (record_id,)).fetchone()
        return None if row is None else _record(row)

    def path(self, record: FailureRecord, kind: str) -> Path:
        return self.folder / record.files[kind]

    def close(self) -> None:
        self.db.close()


# filter name → SQL condition; every value travels as a bound parameter, never as SQL text
FILTERS = {"station": "station = ?", "verdict": "verdict = ?", "review_status": "review_status = ?",
           "part_id": "part_id = ?", "defect_type": "defect_type = ?", "model_version": "model_version = ?",
           "ts_from": "ts >= ?", "ts_to": "ts < ?", "score_min": "score >= ?", "score_max": "score <= ?"}
NUMERIC = ("ts_from", "ts_to", "score_min", "score_max")


def _where(filters: dict, before: tuple[float, int] | None = None,
           after: tuple[float, int] | None = None) -> tuple[str, list]:
    unknown = set(filters) - set(FILTERS)
    if unknown:
        raise ValueError(f"unknown filter(s) {sorted(unknown)}; expected {', '.join(FILTERS)}")
    conds, args = [], []
    for k, v in filters.items():
        if v is None or v == "":
            continue
        if k in NUMERIC:
            try:
                v = float(v)
            except (TypeError, ValueError):
                raise ValueError(f"filter {k} must be a number, got {v!r}") from None
        conds.append(FILTERS[k])
        args.append(v)
    for key, op in ((before, "<"), (after, ">")):
        if key is not None:
            conds.append(f"(ts {op} ? OR (ts = ? AND id {op} ?))")
            args += [float(key[0]), float(key[0]), int(key[1])]
    return (" WHERE " + " AND ".join(conds) if conds else ""), args


def _record(row: sqlite3.Row) -> FailureRecord:
    d = dict(row)
    d["boxes"], d["files"] = json.loads(d["boxes"]), json.loads(d["files"])
    return FailureRecord(**d)


def _safe(name: str) -> str:
    """A file-name-safe version of a part ID or station name (no separators, no leading dot)."""
    out = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name)).lstrip(".")
    return out[:120] or "part"
