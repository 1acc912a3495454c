"""Open the failure log a station names: SQLite (the default) or PostgreSQL (many stations, one database).

    >>> store = open_store("", "runs/line/failures")                                      # SQLite in the folder
    >>> store = open_store("postgresql://inspection@db/inspection", "/mnt/failures")   # many stations, one database

Its own module so that sql.py (the portable logic) and postgres.py (a subclass of it) need not know each other's
import order.
"""
from __future__ import annotations

import errno
from pathlib import Path

from inspection.deploy.atomic import LinkRefused
from inspection.deploy.store.postgres import PostgresStore
from inspection.deploy.store.sql import SQLiteStore, SQLStore


def open_store(db: str | Path, folder: str | Path, quota_bytes: int | None = None, fsync: bool = True,
               create: bool = True, offline_ok: bool = False) -> SQLStore:
    """`db`: "" (SQLite at <folder>/failures.db), a SQLite file, or a postgresql:// URL.

    create=False (readers: review station, reports, retrain): a SQLite log that does not exist is an error.
    offline_ok (the runner): a database server that is down does not stop the opening; calls raise
    StoreUnavailable until it is back."""
    if str(db).startswith(("postgresql://", "postgres://")):
        return PostgresStore(str(db), folder, quota_bytes, fsync, offline_ok=offline_ok)
    path = Path(db or Path(folder) / "failures.db")
    if not db and path.is_symlink():  # inside the log folder: a station could have linked it to any file
        raise LinkRefused(errno.ELOOP, f"{path}: a symlink; the failure log's database in its folder must be a "
                                       "plain file (name another database with log.db / --db)")
    if not create and not path.is_file():
        raise FileNotFoundError(f"{path}: no failure log here; point --log at a line runner's log.folder "
                                "(or --db at its database)")
    return SQLiteStore(path, folder, quota_bytes, fsync)
