"""Writing into the log's folders: atomic file writes, and folders that are never reached through a link.

    >>> folder = own_dir(log, "outbox/line-1", create=True)   # LinkRefused if any part of it is a symlink
    >>> write_atomic(folder / "record.json", data)              # readers see the old file or the whole new one
"""
from __future__ import annotations

import errno
import os
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
    """Write to a hidden temporary file in the same folder (made afresh: a link planted under that name is
    removed, never followed), fsync, rename over `path` (a link at `path` is replaced, not followed)."""
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
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
