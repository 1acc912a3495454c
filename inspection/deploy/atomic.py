"""Writing into the log's folders: atomic file writes, and folders that are never reached through a link.

    >>> folder = own_dir(log, "outbox/line-1", create=True)   # LinkRefused if any part of it is a symlink
    >>> write_atomic(folder / "record.json", data)              # readers see the old file or the whole new one
    >>> tmp = write_staged(path, data); os.replace(tmp, path); flush_files([path], [folder])   # many files, one flush
"""
from __future__ import annotations

import ctypes
import errno
import os
import sys
from pathlib import Path

from inspection.core.errors import UserError

TMP_MARK = ".tmp-"
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)  # Linux, macOS: open() refuses a symlink as the last part of the path


class LinkRefused(UserError, OSError):
    """A folder (or file) the log writes to is a symlink or not what it should be; the message names it."""


def own_dir(root: str | Path, rel: str | Path = "", create: bool = False) -> Path:
    """root/rel as a real folder (each missing part made with `create`, else FileNotFoundError); LinkRefused when
    any part below root is a symlink or not a folder. The one check for every folder the runner and the review
    station write, rename or delete in: a station that can write the log folder must not send those writes
    elsewhere through a link. `root` itself is the operator's choice (a configured folder may be a link)."""
    path = Path(root)
    for part in Path(rel).parts:
        path = path / part
        if not path.is_symlink() and not path.exists():
            if not create:
                raise FileNotFoundError(errno.ENOENT, f"{path}: no such folder")
            try:
                path.mkdir()
            except FileExistsError:  # made by another process meanwhile: checked below like any other
                pass
        if path.is_symlink() or not path.is_dir():
            raise LinkRefused(errno.ELOOP, f"{path}: a symlink or not a folder; the failure log writes only into "
                                           "its own folders (remove it, or point log.folder / log.outbox at a real "
                                           "folder)")
    return path


def open_own(path: str | Path, flags: int, mode: int = 0o644) -> int:
    """os.open that refuses a symlink at `path` itself (its folder: see own_dir); the file descriptor."""
    return os.open(path, flags | NOFOLLOW, mode)


def write_atomic(path: str | Path, data: bytes | str, fsync: bool = True) -> None:
    """Write to a hidden temporary file in the same folder (write_staged), fsync, rename over `path` (a link at
    `path` is replaced, not followed)."""
    tmp = write_staged(path, data, fsync)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_staged(path: str | Path, data: bytes | str, fsync: bool = False) -> Path:
    """Write to path's hidden temporary name (made afresh: a link planted under that name is removed, never
    followed), fsynced only with `fsync`; the temporary path, for the caller to rename (several files are made
    durable together by flush_files)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")
    try:
        tmp.unlink(missing_ok=True)  # a leftover of a crashed process with this pid, or a planted link
        fd = open_own(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def flush_files(paths: list[Path], folders: list[Path] = ()) -> None:
    """Make written files, and their names in `folders`, durable. Linux: one syncfs per file system they are on
    (one journal commit and one flush of the disk for all of them, where an fsync per file costs one of each per
    file); elsewhere an fsync per file and per folder."""
    if _SYNCFS is not None:
        for path in {os.stat(p).st_dev: p for p in [*paths, *folders]}.values():
            fd = os.open(path, os.O_RDONLY)
            try:
                if _SYNCFS(fd) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"{path}: syncfs failed: {os.strerror(err)}")
            finally:
                os.close(fd)
        return
    for path in [*paths, *folders]:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:  # a folder cannot be opened here (Windows): its entries are written with the files
            continue
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _libc_syncfs():
    """libc's syncfs(fd) (Linux), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return getattr(ctypes.CDLL(None, use_errno=True), "syncfs", None)
    except OSError:
        return None


_SYNCFS = _libc_syncfs()
