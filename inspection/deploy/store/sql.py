"""The failure log: every failed or review-band part's image, attention map and overlay, and a record of it.

    >>> store = open_store("", "failures")   # factory.py: SQLite at failures/failures.db, or a postgresql:// URL
    >>> store.add(record, files={"image": (".png", png_bytes), "map": (".png", map_png), "overlay": (".jpg", jpg)})
    >>> store.records(station="line1", review_status="unreviewed", limit=50)

Crash safety (kill -9 at any instant): each file is written to a hidden temporary name, fsynced and renamed,
and only then is the record committed (SQLite, WAL mode). A record therefore never points at a missing or
half-written file. A crash between the renames and the commit can leave files without a record; the runner
calls `recover(station)` when it starts, before it writes, which removes those (and stray temporary files) in
its own station's folders, so after a restart there is no file without its record either. Readers (review
station, `inspection failures`) never recover: a file a live runner has renamed in but not yet committed is
not theirs to delete. On PostgreSQL the files go to a folder every station and the review station mount (NFS,
SMB); each station writes only under its own <day>/<station>/ folders.

While the database is unreachable (PostgreSQL down, network cut) the runner keeps each record in an outbox on
local disk, <folder>/outbox/<station>/ (`spool`), and writes it to the log when the database is back
(`replay`, oldest first, also at the next start), so a database outage, a restart of the runner or both lose
no record. A record already committed (a crash between the commit and the outbox file's removal) is not
written twice.

Its parts: the schema and record types (schema.py), the outbox (outbox.py), reviews (reviews.py), statistics
(stats.py), the PostgreSQL back end (postgres.py) and open_store (factory.py); this module holds writing,
recovery, the quota, reading and the SQLite back end.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path

from inspection.deploy.atomic import TMP_MARK, flush_files, own_dir, write_staged
from inspection.deploy.store.outbox import Outbox
from inspection.deploy.store.reviews import Reviews
from inspection.deploy.store.schema import (  # noqa: F401
    DAY,
    MIGRATIONS,
    REVIEW_VERDICTS,
    SCHEMA,
    SETTLED,
    STORED_NAME,
    FailureRecord,
    Review,
    ReviewError,
    StoreFull,
    StoreUnavailable,
    _record,
    safe_name,
)
from inspection.deploy.store.stats import Statistics

LOG = logging.getLogger("inspection.store")
OUTBOX = "outbox"  # <folder>/outbox/<station>/: records waiting for the database (see the module docstring)


class SQLStore(Outbox, Reviews, Statistics):
    """The failure log's logic in portable SQL ("?" parameters); subclasses supply a connection and a dialect.

    The interface the runner, the review station and the retrainer use: add, get, records,
    neighbours, count, count_by_status, stations, tally, daily, set_review_status, add_review, reviews,
    reviews_since, used_bytes, recover, close.
    """

    folder: Path
    quota_bytes: int | None
    fsync: bool
    DIALECT: dict[str, str] = {}
    DB_ERRORS: tuple = ()

    def _setup(self, folder, quota_bytes, fsync) -> None:
        self.folder = Path(folder)
        self.quota_bytes = quota_bytes
        self.fsync = fsync
        self.folder.mkdir(parents=True, exist_ok=True)
        self.outbox = self.folder / OUTBOX  # the runner may put it on a local disk (log.outbox)
        self._lock = threading.Lock()
        self._replay_lock = threading.Lock()  # "not in the log yet?" and its insert, as one step (outbox, journal)
        self.recovered: dict = {}

    # -- what a dialect provides: reads, a write transaction, the migration lock ---------------------------------
    def _rows(self, sql: str, args=()) -> list[dict]:
        raise NotImplementedError

    def _transaction(self):
        """Context manager: a write transaction; yields execute(sql, args) → cursor."""
        raise NotImplementedError

    def _migrate(self, ex) -> None:
        """Inside a transaction that holds the migration lock: bring the schema up to date."""
        ex("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        current = ex("SELECT MAX(version) AS v FROM schema_version").fetchone()
        current = (current["v"] if current is not None else None) or 0
        if current > MIGRATIONS[-1][0]:
            raise RuntimeError(f"{self}: the failure log's schema is version {current}, newer than this program "
                               f"knows ({MIGRATIONS[-1][0]}); upgrade the program (or restore the older database)")
        for version, sql in MIGRATIONS:
            if version > current:
                for statement in sql.format(**self.DIALECT).split(";"):
                    if statement.strip():
                        ex(statement)
                ex("INSERT INTO schema_version (version) VALUES (?)", (version,))

    def schema_version(self) -> int:
        return int(self._rows("SELECT MAX(version) AS v FROM schema_version")[0]["v"])

    # -- crash recovery ------------------------------------------------------------------------------------------
    def recover(self, station: str | None = None) -> dict:
        """Delete temporary files and files no record names, in <day>/<station>/ folders (one station or all).

        Only for the writer, at start-up, before it writes: see the module docstring.
        """
        known = set()
        sql, args = "SELECT files FROM failures UNION ALL SELECT files FROM reviews", ()
        if station:
            sql = ("SELECT files FROM failures WHERE station = ? UNION ALL SELECT r.files FROM reviews r "
                   "JOIN failures f ON f.id = r.failure_id WHERE f.station = ?")
            args = (station, station)
        for row in self._rows(sql, args):
            known.update(json.loads(row["files"]).values())
        removed_tmp = removed_orphans = 0
        for path in self._own_files(station):  # only the store's own <day>/<station>/<file>: nothing else
            rel = path.relative_to(self.folder).as_posix()
            if TMP_MARK in path.name:
                path.unlink(missing_ok=True)
                removed_tmp += 1
            elif rel not in known:
                path.unlink(missing_ok=True)
                removed_orphans += 1
        self.recovered = {"temporary": removed_tmp, "orphans": removed_orphans}
        return self.recovered

    def _own_files(self, station: str | None):
        """The plain files in <day>/<station>/ folders that are real folders of the log: a symlinked day or
        station folder (or file) is never followed, so recovery cannot delete outside the log folder."""
        for day in sorted(self.folder.iterdir()) if self.folder.is_dir() else []:
            if day.is_symlink() or not day.is_dir() or not DAY.fullmatch(day.name):
                continue
            for st in sorted(day.iterdir()):
                if st.is_symlink() or not st.is_dir() or (station and st.name != safe_name(station)):
                    continue
                yield from (f for f in sorted(st.iterdir()) if not f.is_symlink() and f.is_file())

    def own_dir(self, rel_dir: str | Path, create: bool = False) -> Path:
        """folder/rel_dir as a real folder of the log (made with `create`); LinkRefused (an OSError) when any part
        of it is a symlink or not a folder: the log never writes through a link that a station's folder could
        hold (deploy/atomic.py own_dir, the one check for every folder written in)."""
        return own_dir(self.folder, rel_dir, create)

    def outbox_dir(self, station: str, create: bool = False) -> Path:
        """The station's outbox folder (the journal lives there too), checked as own_dir checks: below the log
        folder when the outbox is its outbox/ (the default), below log.outbox when that is set."""
        if self.outbox == self.folder / OUTBOX:
            return own_dir(self.folder, Path(OUTBOX) / safe_name(station), create)
        if create:  # log.outbox names a folder of the operator's (on a local disk): made, not checked
            self.outbox.mkdir(parents=True, exist_ok=True)
        return own_dir(self.outbox, safe_name(station), create)

    # -- writing -------------------------------------------------------------------------------------------------
    def add(self, record: FailureRecord, files: dict[str, tuple[str, bytes]]) -> int:
        """Write the files (kind → (suffix, bytes)), then commit the record; return its id (add_many of one)."""
        return self.add_many([(record, files)])[0]

    def add_many(self, items: list[tuple[FailureRecord, dict[str, tuple[str, bytes]]]]) -> list[int]:
        """Write the files of several records (kind → (suffix, bytes)), make them durable together, then commit
        the records in one transaction; their ids. All or nothing: on an error no file and no record of them is
        left. One flush of the disk (atomic.flush_files) and one commit per batch instead of one fsync per file
        and one commit per record: the writer hands over what its queue holds.

        Raises StoreFull when the disk is full or when the quota is exhausted by unreviewed records, which are
        never deleted to make room; StoreUnavailable when the log cannot take them now (they wait: outbox).
        """
        need = sum(len(data) for _, files in items for _, data in files.values())
        with self._lock:
            self._make_room(need)
            written: list[Path] = []  # temporary files, then the renamed ones: removed on an error
            folders: dict[Path, Path] = {}
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                renames, rows = [], []
                for record, files in items:
                    day = time.strftime("%Y-%m-%d", time.localtime(record.ts))
                    rel_dir = Path(day) / safe_name(record.station)
                    if rel_dir not in folders:
                        folders[rel_dir] = self.own_dir(rel_dir, create=True)
                    token = uuid.uuid4().hex[:10]  # part IDs repeat (counters restart): names must not
                    for kind, (suffix, data) in files.items():
                        path = folders[rel_dir] / f"{safe_name(record.part_id)}-{token}-{kind}{suffix}"
                        written.append(write_staged(path, data))
                        renames.append((written[-1], path))
                        record.files[kind] = (rel_dir / path.name).as_posix()
                    record.bytes = sum(len(data) for _, data in files.values())
                    rows.append(_db_row(record, day))
                for tmp, path in renames:
                    os.replace(tmp, path)
                    written.append(path)
                if self.fsync and renames:  # the files and their names on disk before any record names them
                    flush_files([path for _, path in renames], list(folders.values()))
                with self._transaction() as ex:
                    ids = [ex(f"INSERT INTO failures ({', '.join(row)}) VALUES ({', '.join('?' * len(row))}) "
                              "RETURNING id", list(row.values())).fetchone()["id"] for row in rows]
            except BaseException as exc:
                for path in written:
                    path.unlink(missing_ok=True)
                for record, _ in items:
                    record.files = {}
                if not isinstance(exc, (OSError, *self.DB_ERRORS)):
                    raise
                what = (f"record of part {items[0][0].part_id}" if len(items) == 1 else
                        f"{len(items)} records (parts {', '.join(r.part_id for r, _ in items[:3])}, ...)")
                full = getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "full" in str(exc)
                if full:
                    raise StoreFull(errno.ENOSPC, f"{self.folder}: disk full, {what} not written") from None
                if isinstance(exc, StoreUnavailable):
                    raise
                # a share that went away, a locked or unwritable log: the records wait (outbox) and are retried
                raise StoreUnavailable(getattr(exc, "errno", None) or errno.EIO,
                                       f"{self.folder}: {what} not written: {exc}") from None
            for (record, _), new_id in zip(items, ids):
                record.id = new_id
            return ids

    def add_unlogged(self, records: list[FailureRecord]) -> int:
        """Records without files (a journal's) that the log does not hold yet, committed in one transaction;
        how many were new. One transaction per batch, not per record: a long journal replays at thousands of
        records a second (benchmarks/journal_replay.py). StoreUnavailable when the database is down: nothing of
        the batch is written then."""
        try:
            with self._replay_lock, self._lock:
                self._make_room(0)
                new = {}
                for r in records:
                    new.setdefault((r.station, r.part_id, r.ts), r)
                for i in range(0, len(records), 400):  # bound parameters per query (older SQLite: 999)
                    chunk = records[i:i + 400]
                    for station in {r.station for r in chunk}:
                        ts = [r.ts for r in chunk if r.station == station]
                        for row in self._rows(f"SELECT part_id, ts FROM failures WHERE station = ? AND ts IN "
                                              f"({', '.join('?' * len(ts))})", [station, *ts]):
                            new.pop((station, row["part_id"], float(row["ts"])), None)
                if new:
                    rows = [_db_row(r, time.strftime("%Y-%m-%d", time.localtime(r.ts))) for r in new.values()]
                    sql = f"INSERT INTO failures ({', '.join(rows[0])}) VALUES ({', '.join('?' * len(rows[0]))})"
                    with self._transaction() as ex:
                        for row in rows:
                            ex(sql, list(row.values()))
                return len(new)
        except self.DB_ERRORS as exc:
            raise StoreUnavailable(errno.EIO, f"{self.folder}: {len(records)} journaled record(s) not written: "
                                              f"{exc}") from None

    def _make_room(self, need: int) -> None:
        """Under a quota: delete the oldest reviewed records until `need` bytes fit; never unreviewed ones."""
        if self.quota_bytes is None:
            return
        used = self.used_bytes()
        while used + need > self.quota_bytes:
            rows = self._rows(f"SELECT id, files, bytes FROM failures WHERE review_status IN {SETTLED} "
                              "ORDER BY ts LIMIT 1")
            if not rows:
                raise StoreFull(errno.EDQUOT, f"{self.folder}: quota of {self.quota_bytes} bytes is used by "
                                              "unreviewed failures; review them or raise the quota")
            row = rows[0]
            review_files = [json.loads(r["files"]) for r in self._rows("SELECT files FROM reviews WHERE failure_id = ?",
                                                                         (row["id"],))]
            with self._transaction() as ex:
                ex("DELETE FROM reviews WHERE failure_id = ?", (row["id"],))
                ex("DELETE FROM failures WHERE id = ?", (row["id"],))
            for files in [json.loads(row["files"]), *review_files]:
                for kind, rel in files.items():
                    if (path := self.stored_file(rel, kind)) is not None:
                        path.unlink(missing_ok=True)
            used -= row["bytes"]

    # -- reading -------------------------------------------------------------------------------------------------
    def used_bytes(self) -> int:
        return int(self._rows("SELECT COALESCE(SUM(bytes), 0) AS n FROM failures")[0]["n"])

    def count(self, **filters) -> int:
        where, args = _where(filters)
        return int(self._rows(f"SELECT COUNT(*) AS n FROM failures{where}", args)[0]["n"])

    def count_by_status(self, **filters) -> dict[str, int]:
        """Matching parts per review status, in one pass (the queue's counts)."""
        where, args = _where(filters)
        rows = self._rows(f"SELECT review_status, COUNT(*) AS n FROM failures{where} GROUP BY review_status", args)
        return {"unreviewed": 0, "confirmed": 0, "false_alarm": 0, "unsure": 0,
                **{r["review_status"]: int(r["n"]) for r in rows}}

    def count_by_product(self, **filters) -> dict[str, int]:
        """Matching parts per product ("" for parts of stations without products), in one pass."""
        where, args = _where(filters)
        rows = self._rows(f"SELECT product, COUNT(*) AS n FROM failures{where} GROUP BY product ORDER BY product", args)
        return {str(r["product"]): int(r["n"]) for r in rows}

    def stations(self) -> list[str]:
        return [r["station"] for r in self._rows("SELECT DISTINCT station FROM failures ORDER BY station")]

    def products(self) -> list[str]:
        """The products of the logged parts, without the "" of stations without products."""
        return [r["product"] for r in self._rows("SELECT DISTINCT product FROM failures WHERE product <> '' "
                                                 "ORDER BY product")]

    def records(self, limit: int = 100, offset: int = 0, before: tuple[float, int] | None = None,
                **filters) -> list[FailureRecord]:
        """Newest first. `before=(ts, id)` pages by key (fast at any depth); filters: see FILTERS."""
        where, args = _where(filters, before=before)
        rows = self._rows(f"SELECT * FROM failures{where} ORDER BY ts DESC, id DESC LIMIT ? OFFSET ?",
                          [*args, int(limit), int(offset)])
        return [_record(r) for r in rows]

    def neighbours(self, record: FailureRecord, **filters) -> tuple[int | None, int | None]:
        """IDs of the next newer and next older part under the same filters (None at either end)."""
        where, args = _where(filters, before=(record.ts, record.id))
        older = self._rows(f"SELECT id FROM failures{where} ORDER BY ts DESC, id DESC LIMIT 1", args)
        where, args = _where(filters, after=(record.ts, record.id))
        newer = self._rows(f"SELECT id FROM failures{where} ORDER BY ts, id LIMIT 1", args)
        return (newer[0]["id"] if newer else None), (older[0]["id"] if older else None)

    def get(self, record_id: int) -> FailureRecord | None:
        rows = self._rows("SELECT * FROM failures WHERE id = ?", (int(record_id),))
        return _record(rows[0]) if rows else None

    def path(self, record: FailureRecord, kind: str) -> Path:
        """Where a record's file of this kind is (it may be missing); ValueError for a name the store never writes."""
        path = self.stored_file(record.files.get(kind), kind, exist=False)
        if path is None:
            raise ValueError(f"part {record.part_id}: {kind} file name {str(record.files.get(kind))[:80]!r} is not "
                             "one this log writes")
        return path

    def stored_file(self, rel, kind: str | None = None, exist: bool = True) -> Path | None:
        """The one resolver of stored paths, for every reader and writer: `rel` (from a record or a review, which
        any station that can write the database controls) must have the name pattern the store writes (day/station/
        part-token-kind.ext, `kind` matching) and, with `exist`, be a plain file that stays inside the log folder
        once symlinks are followed. None otherwise: no absolute paths, no `..`, no accounts database."""
        if not isinstance(rel, str) or not (m := STORED_NAME.fullmatch(rel)) or (kind and m["kind"] != kind):
            return None
        path = self.folder / rel
        if not exist:
            return path
        try:
            real = path.resolve(strict=True)
        except (OSError, RuntimeError):
            return None
        return path if real.is_relative_to(self.folder.resolve()) and real.is_file() else None


class SQLiteStore(SQLStore):
    """Failure log on SQLite (WAL) with the files under `folder`: the embedded default, one station per file."""

    DIALECT = {"id": "INTEGER PRIMARY KEY AUTOINCREMENT", "real": "REAL", "big": "INTEGER",
               "day_of_ts": "date(ts, 'unixepoch', 'localtime')"}
    DB_ERRORS = (sqlite3.OperationalError,)

    def __init__(self, db_path: str | Path, folder: str | Path, quota_bytes: int | None = None, fsync: bool = True):
        self._setup(folder, quota_bytes, fsync)
        self.db_path = Path(db_path)
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.db_path, check_same_thread=False, timeout=30)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL" if fsync else "PRAGMA synchronous=NORMAL")
        self.db.execute("BEGIN IMMEDIATE")  # the write lock: two processes opening an old log migrate it once
        try:
            self._migrate(self.db.execute)
            self.db.commit()
        except BaseException:
            self.db.rollback()
            self.db.close()
            raise

    def __str__(self) -> str:
        return str(self.db_path)

    def _rows(self, sql: str, args=()) -> list[dict]:
        return [dict(r) for r in self.db.execute(sql, args)]

    @contextmanager
    def _transaction(self):
        with self.db:
            yield self.db.execute

    def close(self) -> None:
        self.db.close()


def _db_row(record: FailureRecord, day: str) -> dict:
    """A record as its row in the failures table (JSON text for the structured fields). Its fields read one by
    one, not through dataclasses.asdict, whose deep copy took three quarters of a journal's replay."""
    row = {name: getattr(record, name) for name in _COLUMNS}
    row["boxes"], row["files"], row["day"] = json.dumps(row["boxes"]), json.dumps(row["files"]), day
    for key in ("roi", "model_roi"):
        row[key] = None if row[key] is None else json.dumps([int(v) for v in row[key]])
    row["camera"] = None if record.camera is None else json.dumps(record.camera)
    return row


_COLUMNS = [f.name for f in fields(FailureRecord) if f.name not in ("id", "damaged")]
# filter name → SQL condition; every value travels as a bound parameter, never as SQL text
FILTERS = {"station": "station = ?", "product": "product = ?", "verdict": "verdict = ?",
           "review_status": "review_status = ?", "part_id": "part_id = ?", "defect_type": "defect_type = ?",
           "model_version": "model_version = ?",
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
