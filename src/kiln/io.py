"""Atomic file writes: a reader (or a process killed mid-write) never sees half a file.

Each write goes to a fresh temporary file in the same folder (created exclusively, O_EXCL, with a
random name nobody can have made beforehand), is flushed to disk (fsync), then renamed over the
target; the folder is synced so the rename survives a power cut. On any failure the temporary
file is removed and the old file is left as it was. A full disk (or a file-size limit) becomes a
`DiskFull` error that names the file and says the previous version is intact.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from kiln.errors import RunError

# Errors that mean "no room": disk full, quota exceeded, a file-size limit (ulimit -f).
NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class DiskFull(RunError):
    """A write failed for lack of space; the file it would have replaced is untouched."""


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """`with atomic_open(path, "wb") as f: f.write(...)`: `path` appears complete or not at all."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        _remove(tmp)
        if exc.errno in NO_SPACE:
            raise DiskFull(
                f"no space left to write {path} ({os.strerror(exc.errno)}); the previous "
                f"version of it is intact. Free some space in {path.parent} and try again"
            ) from None
        raise
    except BaseException:
        _remove(tmp)
        raise
    _sync_folder(path.parent)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write `text` to `path` atomically (see the module's docstring)."""
    with atomic_open(path, "w") as f:
        f.write(text)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def _remove(tmp: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(tmp)


def _sync_folder(folder: Path) -> None:
    """fsync the folder so the rename itself is on disk (not possible on every system)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
