"""The failure log's outbox: records waiting on local disk while the database is unreachable.

The runner `spool`s each record (with its files' bytes) to <folder>/outbox/<station>/ and `replay`s the
station's outbox, oldest first, when the database is back and at its next start. A record already committed
(a crash between the commit and the outbox file's removal) is not written twice; an unreadable outbox file is
kept as *.bad, never deleted.
"""
from __future__ import annotations

import base64
import json
import logging
import time
import uuid
from dataclasses import asdict
from pathlib import Path

from inspection.deploy.atomic import TMP_MARK, write_atomic
from inspection.deploy.store.schema import (
    FailureRecord,
    StoreUnavailable,
    written_files,
    written_record,
)

LOG = logging.getLogger("inspection.store")


class Outbox:
    """Part of SQLStore (uses its add, _rows, _replay_lock, outbox_dir, outbox folder and fsync)."""

    def spool(self, record: FailureRecord, files: dict[str, tuple[str, bytes]]) -> Path:
        """Keep a record (and its files' bytes) in the station's outbox until `replay` can write it."""
        folder = self.outbox_dir(record.station, create=True)
        row = {k: v for k, v in asdict(record).items() if k not in ("id", "files", "bytes", "review_status")}
        blob = {"record": row, "files": {k: [suffix, base64.b64encode(data).decode()]
                                         for k, (suffix, data) in files.items()}}
        path = folder / f"{time.time_ns():020d}-{uuid.uuid4().hex[:6]}.json"
        write_atomic(path, json.dumps(blob), self.fsync)
        return path

    def has_record(self, station: str, part_id: str, ts: float) -> bool:
        """Whether the log holds this part's record already (a part ID repeats; with its time it does not)."""
        return bool(self._rows("SELECT id FROM failures WHERE station = ? AND part_id = ? AND ts = ?",
                               (station, part_id, ts)))

    def spooled(self, station: str) -> list[Path]:
        """The station's outbox, oldest first: its plain files (a link there is never read)."""
        try:
            folder = self.outbox_dir(station)
        except FileNotFoundError:
            return []
        return sorted(p for p in folder.glob("*.json")
                      if TMP_MARK not in p.name and not p.is_symlink() and p.is_file())

    def replay(self, station: str) -> int:
        """Write the station's outbox to the log, oldest first; return how many were written.

        Raises StoreUnavailable (the rest stays in the outbox) when the database is down again. An unreadable
        outbox file is renamed to *.bad and reported, never deleted.
        """
        done = 0
        for path in self.spooled(station):
            try:
                blob = json.loads(path.read_bytes())
                if not isinstance(blob, dict):
                    raise ValueError("not an object with record and files")
                record = written_record(blob["record"], station)  # only what the runner writes, for this station
                files = written_files(blob["files"])
            except (ValueError, TypeError, KeyError, RecursionError) as exc:
                path.rename(path.with_suffix(".bad"))
                LOG.warning(f"failure log: outbox file {path} is unreadable ({exc}); kept as .bad")
                continue
            try:
                with self._replay_lock:  # a journal replaying beside it checks and inserts under the same lock
                    if not self.has_record(record.station, record.part_id, record.ts):
                        self.add(record, files)
            except StoreUnavailable:
                raise
            except Exception as exc:  # noqa: BLE001 - a record the log refuses must not block the others
                path.rename(path.with_suffix(".bad"))
                LOG.warning(f"failure log: outbox file {path} not written ({exc}); kept as .bad")
                continue
            path.unlink()
            done += 1
        return done

