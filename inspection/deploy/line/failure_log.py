"""The failure-log writer: its own thread, the records queue, the outbox and the daily verdict tallies.

    writer = FailureLogWriter(cfg, store, metrics, log); writer.start()   # also replays an earlier run's journal
    writer.count("fail", product)                          # every verdict (the tallies' denominators)
    job = writer.job(frame, result, error, model_roi)      # a part to log (LogJob); model_roi: the package's
    writer.journal([job, ...])                             # before their verdicts leave: durable small records
    writer.put(job)                                        # its files are written here; blocks when the queue is full
    writer.close()                                         # write what is queued, flush the tallies, join

A verdict is durable before it is announced: the runner journals the small record of every part it will log
(part ID, station, time, verdict, score, class, boxes, model version: one line each, one fsync per batch) before
the verdicts leave on any output. The images follow through the queue. At the next start, a journaled part that
never reached the log (the process was killed with it in the queue) is logged without its images, marked
"image lost", instead of vanishing: the old journal is renamed aside and replayed in batches by its own thread
while the line already judges (and journals into a fresh file). A journal line that is not what the runner
writes (not UTF-8 JSON, a field of another type, a review status) is set aside in journal.damaged, counted
(log_journal_damaged_total) and named in the log; it never stops the start.

Each record's files (the judged crop and its map as a 16-bit PNG; the review station draws the overlay from
them) are written to hidden temporary names and renamed, made durable, and only then is the record committed
(store/sql.py). The writer takes what its queue holds, up to WRITE_BATCH parts, and hands them to the store
together: one flush of the disk and one transaction per batch, so a run of failing parts costs the line little
more than a few good ones. While the database is down the records go to the outbox on disk and are replayed
oldest first when it is back; while the disk is full they wait in memory (up to log.queue, then the oldest are
dropped and counted). torch-free.
"""
from __future__ import annotations

import collections
import itertools
import json
import os
import queue
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from inspection.core.boxes import full_roi
from inspection.core.mapfile import encode_map
from inspection.deploy.atomic import open_own
from inspection.deploy.line.frames import Frame
from inspection.deploy.line.station import StationConfig
from inspection.deploy.runtime import Inspection
from inspection.deploy.store.schema import (
    FailureRecord,
    StoreFull,
    StoreUnavailable,
    written_record,
)
from inspection.deploy.store.sql import SQLStore

_END = object()
TALLY_S = 5.0  # how often the verdict counts reach the store (a crash loses at most this much of them)
JOURNAL = "journal.jsonl"  # in the station's outbox folder; an earlier run's: journal.<ns>.replay while replayed
QUARANTINE = "journal.damaged"  # damaged journal lines, set aside as they were
REPLAY_BATCH = 2000  # journaled records per transaction at start-up
MAX_JOURNAL_LINE = 1 << 16  # bytes; the runner's lines are a few hundred
WRITE_BATCH = 32  # parts per flush of the disk and per transaction, at most
IMAGE_LOST = "image lost: the runner stopped before this part's images were written (recovered from the journal)"


class LogJob(NamedTuple):
    """A part for the failure log: the frame (its product, ROI, model version and judged region travel with it),
    what the model said about it (or why it could not), the region of the judged image the model saw, and the
    part's small record (built once: the journal and the store write the same)."""
    frame: Frame
    result: Inspection | None
    error: str | None
    model_roi: list | None
    record: FailureRecord


class FailureLogWriter:
    def __init__(self, cfg: StationConfig, store: SQLStore, metrics, log):
        self.cfg, self.store, self.metrics, self.log = cfg, store, metrics, log
        self.queue: queue.Queue = queue.Queue(cfg.log.queue)
        self.outbox = len(store.spooled(cfg.station))  # records from an earlier outage, replayed first
        self.lock = threading.Lock()
        self.counts: collections.Counter = collections.Counter()  # verdicts not yet in the store's tallies
        self._tally_flushed = time.time()
        self.thread = threading.Thread(target=self._run, name="writer", daemon=True)
        self.outbox_dir = store.outbox_dir(cfg.station, create=True)  # LinkRefused: never written through a link
        self.journal_path = self.outbox_dir / JOURNAL
        self.replay = threading.Thread(target=self.replay_journals, args=(self.rotate_journal(),),
                                       name="journal-replay", daemon=True)
        self._journal_lock = threading.Lock()
        self._journal_file, self._journal_dirty = None, False
        self._journaled = self._settled = 0  # parts journaled, and of those the ones the writer is done with
        metrics.set("log_outbox_records", self.outbox)

    def rotate_journal(self) -> list[Path]:
        """At start-up: an earlier run's journal is renamed aside (journal.<ns>.replay) so that this run journals
        into a fresh file while `replay_journals` logs the old parts; the journals waiting for replay."""
        if self.journal_path.is_symlink():  # never ours: a link is not followed, only removed
            self.log.error(f"failure log: journal {self.journal_path} is a symlink; removed, not read")
            self.journal_path.unlink()
        elif self.journal_path.exists():
            self.journal_path.rename(self.outbox_dir / f"journal.{time.time_ns():020d}.replay")
        return sorted(self.outbox_dir.glob("journal.*.replay"))

    def replay_journals(self, paths: list[Path] | None = None) -> int:
        """Journaled parts of earlier runs that never reached the log are logged without images (marked
        IMAGE_LOST; to the outbox while the database is down), a batch per transaction; each journal is deleted
        once all its parts are in the log or the outbox. A damaged line (not UTF-8 JSON, or a field the runner
        does not write) is set aside in journal.damaged, counted and named in the log; the rest go on. Runs
        beside judging (runner.py starts it in its own thread); returns how many parts were logged."""
        self._lower_priority()
        found = 0
        for path in self.rotate_journal() if paths is None else paths:
            try:
                found += self._replay_journal(path)
            except OSError as exc:
                self.log.error(f"failure log: journal {path} kept: its parts cannot go to the log or the outbox "
                               f"({exc}); the next start tries again")
                break
        self.outbox = len(self.store.spooled(self.cfg.station))
        if found:
            self.metrics.inc("log_records_image_lost_total", found)
            self.log.warning(f"failure log: {found} part(s) of an earlier run were journaled but not logged (the "
                             "process was stopped hard); logged now without images")
        return found

    def _replay_journal(self, path: Path) -> int:
        found, batch = 0, []
        with os.fdopen(open_own(path, os.O_RDONLY), "rb") as f:
            for n, line in enumerate(iter(lambda: f.readline(MAX_JOURNAL_LINE), b""), 1):
                if not line.endswith(b"\n"):
                    if len(line) == MAX_JOURNAL_LINE:  # over-long: set aside, then skip to its end
                        self._set_aside(path, n, line, "line too long")
                        while (rest := f.readline(MAX_JOURNAL_LINE)) and not rest.endswith(b"\n"):
                            pass
                    continue  # at the end: the line a kill cut short, its verdict never left
                try:
                    record = written_record(json.loads(line.decode()), self.cfg.station)
                except (ValueError, TypeError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
                    self._set_aside(path, n, line, str(exc))
                    continue
                record.boxes = [{"error": IMAGE_LOST}, *record.boxes]
                batch.append(record)
                if len(batch) >= REPLAY_BATCH:
                    found += self._log_unlogged(batch)
                    batch = []
        found += self._log_unlogged(batch)
        path.unlink()
        return found

    def _log_unlogged(self, records: list[FailureRecord]) -> int:
        """The records the log lacks, committed; to the outbox one by one while the database is down."""
        if not records:
            return 0
        try:
            return self.store.add_unlogged(records)
        except StoreUnavailable:
            pass  # the outbox keeps them (its replay skips those the log has by then)
        for record in records:
            self.store.spool(record, {})  # OSError: replay_journals keeps the journal for the next start
        self.outbox = len(self.store.spooled(self.cfg.station))
        return len(records)

    def _set_aside(self, path: Path, n: int, line: bytes, why: str) -> None:
        """A damaged journal line: appended to journal.damaged as it was, counted, and named in the log."""
        damaged = self.outbox_dir / QUARANTINE
        fd = open_own(damaged, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        with os.fdopen(fd, "ab") as f:
            f.write(line if line.endswith(b"\n") else line + b"\n")
        self.metrics.inc("log_journal_damaged_total")
        if self.metrics.get("log_journal_damaged_total") <= 20:  # a flood of them is summed up, not listed
            self.log.error(f"failure log: journal {path.name} line {n} is damaged ({why[:200]}); set aside in "
                           f"{damaged}, the other parts are logged")

    def _lower_priority(self) -> None:
        """This thread at log.writer_nice below the line's own niceness (Linux): logging yields to judging."""
        if self.cfg.log.writer_nice:
            try:
                tid = threading.get_native_id()
                nice = min(19, os.getpriority(os.PRIO_PROCESS, tid) + self.cfg.log.writer_nice)
                os.setpriority(os.PRIO_PROCESS, tid, nice)
            except (OSError, AttributeError):  # no per-thread priority here (not Linux): the thread runs as is
                pass

    def job(self, frame: Frame, result: Inspection | None, error: str | None, model_roi) -> LogJob:
        """The work item for a part to log, with its record; model_roi: the judging package's own ROI (None: all
        of the judged image), stored clipped to the judged image, so review draws the map where the model saw."""
        judged = result is not None and frame.judged is not None
        seen = [int(v) for v in full_roi(frame.judged.shape[:2], model_roi)] if judged else None
        record = FailureRecord(frame.part_id, self.cfg.station, frame.ts, frame.model_version,
                               "error" if result is None else result.verdict,
                               None if result is None else result.score,
                               None if result is None else result.defect_type,
                               [] if result is None else [b.to_dict() for b in result.boxes],
                               roi=frame.roi if judged else None, camera=frame.camera, product=frame.product,
                               model_roi=seen)
        if error:
            record.boxes = [{"error": error}]
        return LogJob(frame, result, error, seen, record)

    def journal(self, jobs: list[LogJob]) -> None:
        """Make these parts' small records durable (one line each, one fsync for all) before their verdicts are
        announced. A journal that cannot be written (disk full) is counted and never stops the line."""
        if not jobs:
            return
        lines = "".join(json.dumps(self._row(job)) + "\n" for job in jobs)
        with self._journal_lock:
            try:
                if self._journal_file is None:  # the outbox folder was checked (own_dir); a link here: ELOOP
                    self._journal_file = os.fdopen(open_own(self.journal_path, os.O_WRONLY | os.O_CREAT |
                                                            os.O_APPEND), "a")
                self._journal_file.write(lines)
                self._journal_file.flush()
                self._journal_dirty = True
                if self.cfg.log.fsync:
                    os.fsync(self._journal_file.fileno())
            except OSError as exc:
                if not self.metrics.get("log_journal_errors_total"):
                    self.log.warning(f"failure log: journal {self.journal_path} not written ({exc})")
                self.metrics.inc("log_journal_errors_total")
            self._journaled += len(jobs)

    def _settle(self, n: int = 1) -> None:
        with self._journal_lock:
            self._settled += n

    def _trim_journal(self) -> None:
        """Empty the journal once every journaled part is in the log (or the outbox)."""
        with self._journal_lock:
            if self._journal_dirty and self._settled >= self._journaled:
                self._journal_file.truncate(0)
                self._journal_dirty = False

    def start(self) -> None:
        self.thread.start()
        self.replay.start()

    def count(self, verdict: str, product: str = "") -> None:
        with self.lock:
            self.counts[verdict, product] += 1

    def put(self, job: LogJob) -> None:
        """Queue a part to log; blocks while the queue is full (no record is dropped), and says how long."""
        t = time.time()
        self.queue.put(job)
        waited = time.time() - t
        if waited > 0.01:
            self.metrics.inc("log_backpressure_seconds_total", waited)

    def close(self) -> None:
        self.queue.put(_END)
        self.thread.join()
        if self.replay.ident is not None:
            self.replay.join()  # an earlier run's journal is logged to its end (a kill: the next start goes on)

    def _files(self, frame: Frame, result: Inspection | None) -> dict[str, tuple[str, bytes]]:
        """The image the model judged (the frame's ROI, so that review, re-scoring and retraining see what the
        model saw; an unjudged frame whole) and its map. No overlay: the review station draws it from these two
        (store/summary.py part_picture); at the line it cost a third of each record's encoding and a file."""
        files = {}
        judged = frame.judged if frame.judged is not None else frame.image
        image = judged if result is not None else frame.image
        if image is not None:
            ext = "." + self.cfg.log.image_format
            if self.cfg.source.color == "RGB" and image.ndim == 3 and image.shape[2] >= 3:  # files are BGR(A)
                image = image[..., [2, 1, 0, *range(3, image.shape[2])]]
            ok, data = cv2.imencode(ext, image)
            if ok:
                files["image"] = (ext, data.tobytes())
        if result is not None and image is not None:
            files["map"] = (".png", encode_map(np.clip(result.attention, 0, 1)))
        return files

    def _row(self, job: LogJob) -> dict:
        """The small record of a part (no files), as the journal keeps it."""
        row = asdict(job.record)
        for key in ("id", "files", "bytes", "review_status", "damaged"):
            row.pop(key)
        return row

    def _run(self) -> None:
        """Write the records to the store, oldest first. While the database is unreachable they go to the
        outbox on disk (kept across restarts) and are replayed when it is back; while the disk is full they
        wait in memory (up to log.queue). Retried every log.retry_s."""
        self._lower_priority()  # relative to the line's own niceness: encoding yields to judging, never stops
        waiting: collections.deque = collections.deque()  # (record, files) the store has not taken yet
        last_try = 0.0
        while True:
            jobs = self._take()
            end = _END in jobs
            for job in jobs:
                if job is _END:
                    continue
                try:
                    waiting.append((job.record, self._files(job.frame, job.result)))
                except Exception as exc:  # noqa: BLE001 - one bad record must not stop the writer
                    self._write_error(job.frame.part_id, exc)
                    self._settle()
            blocked = self.blocked()
            if (waiting or self.outbox) and (not blocked or time.time() - last_try >= self.cfg.log.retry_s):
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
                self._settle()
            if not waiting and self.queue.empty():
                self._trim_journal()
            self.metrics.set("log_waiting_records", len(waiting))
            self.metrics.set("log_outbox_records", self.outbox)
            if end or time.time() - self._tally_flushed >= TALLY_S:
                self._flush_tally()
            if end:
                with self._journal_lock:
                    if self._journal_file is not None:
                        self._journal_file.close()
                        self._journal_file = None
                        if self._settled >= self._journaled:
                            self.journal_path.unlink(missing_ok=True)
                if waiting:
                    self.metrics.inc("log_records_lost_total", len(waiting))
                    self.log.error(f"failure log: {len(waiting)} record(s) could not be written at shutdown "
                          "(disk full)")
                if self.outbox:
                    self.log.warning(f"failure log: {self.outbox} record(s) wait in the outbox {self.store.outbox}; "
                          "the next start writes them")
                return

    def _take(self) -> list:
        """What the queue holds, up to WRITE_BATCH jobs (waiting up to 0.2 s for the first); _END last if it came."""
        try:
            jobs = [self.queue.get(timeout=0.2)]
        except queue.Empty:
            return []
        while jobs[-1] is not _END and len(jobs) < WRITE_BATCH:
            try:
                jobs.append(self.queue.get_nowait())
            except queue.Empty:
                break
        return jobs

    def _drain(self, waiting: collections.deque) -> None:
        """The outbox first, then the waiting records; raises StoreUnavailable where the store stops taking them."""
        if self.outbox:
            before = self.outbox
            try:
                self.store.replay(self.cfg.station)
            finally:
                self.outbox = len(self.store.spooled(self.cfg.station))
                self.metrics.inc("log_records_total", max(0, before - self.outbox))
        while waiting:
            batch = list(itertools.islice(waiting, WRITE_BATCH))
            try:
                self.store.add_many(batch)  # all or nothing
                written = len(batch)
            except StoreUnavailable:
                raise
            except Exception:  # noqa: BLE001 - a bad record must not stop the writer: the first one alone
                batch, written = batch[:1], 0
                try:
                    self.store.add(*batch[0])
                    written = 1
                except StoreUnavailable:
                    raise
                except Exception as exc:  # noqa: BLE001
                    self._write_error(batch[0][0].part_id, exc)
            for _ in batch:
                waiting.popleft()
            self.metrics.inc("log_records_total", written)
            self._settle(len(batch))

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
                    self.log.warning(f"failure log: outbox {self.store.outbox} not writable either ({exc}); "
                                     "records wait in memory")
                self.metrics.set("log_outbox_unwritable", 1)
                return
            self.metrics.set("log_outbox_unwritable", 0)
            waiting.popleft()
            self._settle()
            self.outbox += 1

    def blocked(self) -> bool:
        return bool(self.metrics.get("log_disk_full") or self.metrics.get("log_db_unavailable"))

    def _flush_tally(self) -> None:
        """Add the verdicts counted since the last flush to today's tallies (fail-rate denominators).

        Parts judged in the last TALLY_S seconds before midnight count for the new day. A failed write is retried
        next time (the counts wait)."""
        self._tally_flushed = time.time()
        with self.lock:
            counts, self.counts = self.counts, collections.Counter()
        if not counts:
            return
        day = time.strftime("%Y-%m-%d")
        try:
            self.store.tally(self.cfg.station, {(day, v, product): n for (v, product), n in counts.items()})
        except Exception as exc:  # noqa: BLE001 - statistics must never stop the writer
            self.log.warning(f"failure log: verdict counts not written yet: {exc}")
            with self.lock:
                self.counts.update(counts)
