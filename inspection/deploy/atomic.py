"""Atomic file writes: readers (and a crash) see the old file or the whole new one, never a part."""
from __future__ import annotations

import os
from pathlib import Path

TMP_MARK = ".tmp-"


def write_atomic(path: str | Path, data: bytes | str, fsync: bool = True) -> None:
    """Write to a hidden temporary file in the same folder, fsync, rename over `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
