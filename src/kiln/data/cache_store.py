"""An entry of the decoded cache on disk (see kiln.data.cache): written whole or not at all,
read consistently while another run replaces it, listed and removed by `kiln data cache`."""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from kiln.data.placement import human
from kiln.data.verify import Shape
from kiln.errors import KilnError

log = logging.getLogger("kiln.data")

MANIFEST, IMAGES = "manifest.json", "images.npy"
KEYS = {"format", "pillow", "id", "dataset", "created", "cwd", "shape", "classes", "sizes", "modes",
        "scan_problems", "samples", "reasons", "listings", "files"}  # fmt: skip


def say(note: str) -> None:
    """A line said at once, while the data is built, by the first process of a run alone: at
    warning level, so that it goes to stderr (stdout may be JSON: `kiln data stats --json`)."""
    if note and os.environ.get("RANK", "0") == "0":
        log.warning(f"note: {note}")


class CannotWrite(Exception):
    """The cache folder cannot be written: the run continues without the cache."""


@contextmanager
def writing() -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise CannotWrite(exc.strerror or str(exc)) from None


def new_images(tmp: Path, shape: Shape, n: int) -> Path:
    """An .npy of n uint8 images of `shape`, its space reserved now: decoding then never fails
    half way for want of disk (a full disk would kill the process writing a mapped file)."""
    path, need = tmp / IMAGES, n * math.prod(shape)
    with writing():
        free = shutil.disk_usage(tmp).free
        if need > free:
            raise CannotWrite(f"the decoded images need {human(need)}, {human(free)} is free")
        array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, *shape))
        del array  # the file, with its header and a hole where the rows go
        with open(path, "r+b") as f:
            try:
                os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
            except (AttributeError, OSError) as exc:  # not every platform or file system has it
                if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
                    raise
    return path


def publish(tmp: Path, entry: Path) -> None:
    """Rename the finished entry into place, moving an outdated one aside first (readers that
    opened it keep reading it: it is only unlinked)."""
    if entry.exists():
        old = entry.with_name(f".tmp-{entry.name}-old-{secrets.token_hex(4)}")
        os.rename(entry, old)
        shutil.rmtree(old, ignore_errors=True)
    try:
        os.rename(tmp, entry)
    except OSError:
        if not (entry / MANIFEST).is_file():  # else a concurrent run published the same first
            raise


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, separators=(",", ":"))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@contextmanager
def lock(folder: Path, name: str, wait: bool = True) -> Iterator[None]:
    """Hold <folder>/<name>.lock (released when the process ends, however it ends); held by
    another process: wait for it, or (`wait=False`) raise BlockingIOError."""
    with writing():
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        import fcntl
    except ImportError:  # no flock (Windows): the rename alone keeps readers safe
        os.close(fd)
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise
            say(f"data cache: waiting for another kiln process that is decoding into {folder}")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- reading


def read_entry(entry: Path) -> tuple[dict, np.ndarray]:
    """The manifest and the memory-mapped images, both from the same folder even if a writer
    replaces the entry meanwhile (opened through one directory handle where the OS has them)."""
    if os.open not in os.supports_dir_fd:
        with open(entry / MANIFEST, "rb") as f:
            manifest = json.load(f)
        with open(entry / IMAGES, "rb") as f:
            return manifest, _check_shape(manifest, _map_npy(f))
    fd = os.open(entry, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        opener = partial(_open_at, folder=fd)
        with open(MANIFEST, "rb", opener=opener) as f:
            manifest = json.load(f)
        with open(IMAGES, "rb", opener=opener) as f:
            return manifest, _check_shape(manifest, _map_npy(f))
    finally:
        os.close(fd)


def _open_at(name: str, flags: int, folder: int) -> int:
    return os.open(name, flags, dir_fd=folder)


def _map_npy(f) -> np.ndarray:
    """A uint8 .npy mapped copy-on-write: writes stay in this process, the file never changes."""
    version = np.lib.format.read_magic(f)
    read_header = {(1, 0): np.lib.format.read_array_header_1_0}.get(
        version, np.lib.format.read_array_header_2_0
    )
    shape, fortran, dtype = read_header(f)
    if dtype != np.uint8 or fortran or len(shape) != 4:
        raise ValueError("images.npy is not uint8 (rows, C, H, W)")
    return np.memmap(f, dtype=np.uint8, mode="c", shape=shape, offset=f.tell())


def _check_shape(manifest: dict, images: np.ndarray) -> np.ndarray:
    missing = KEYS - manifest.keys()
    if missing:
        raise ValueError(f"the manifest lacks {', '.join(sorted(missing))}")
    rows = max((e[3] for e in manifest["samples"]), default=-1) + 1
    if images.shape[1:] != tuple(manifest["shape"]) or len(images) < rows:
        raise ValueError(f"images.npy holds {images.shape}, the manifest {manifest['shape']}")
    return images


# ----------------------------------------------------------------------------- kiln data cache


@dataclass
class Entry:
    name: str
    path: Path
    dataset: str
    images: int
    bytes: int
    created: str


def entries(folder: Path) -> tuple[list[Entry], list[Path]]:
    """The complete entries in a cache folder, and the unfinished ones (`.tmp-*`)."""
    found: list[Entry] = []
    if not folder.is_dir():
        return found, []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue  # a temporary folder: unfinished, or being renamed into place
        try:
            manifest = json.loads((path / MANIFEST).read_text())
            size = sum(f.stat().st_size for f in path.iterdir())
            rows = sum(e[3] >= 0 for e in manifest["samples"])
            created = manifest["created"]
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            continue  # not an entry (a lock file, a temporary folder) or not a readable one
        found.append(Entry(path.name, path, manifest["dataset"], rows, size, created))
    return found, sorted(folder.glob(".tmp-*"))


def remove(folder: Path, names: list[str] | None) -> tuple[list[Entry], int]:
    """Remove the entries named (by name or by dataset path), or all of them and the unfinished
    ones that no process is writing; returns what was removed and how many unfinished."""
    found, unfinished = entries(folder)
    if names is None:
        chosen = found
    else:
        chosen = []
        for name in names:
            dataset = str(Path(name).expanduser().resolve())
            match = [e for e in found if e.name == name or e.dataset == dataset]
            if not match:
                raise KilnError(
                    f"no decoded-image cache '{name}' in {folder}; `kiln data cache ls` lists them"
                )
            chosen += [e for e in match if e not in chosen]
    for e in chosen:
        aside = e.path.with_name(f".tmp-{e.name}-removed-{secrets.token_hex(4)}")
        try:
            os.rename(e.path, aside)  # gone at once for readers, however long deleting takes
        except OSError as exc:
            raise KilnError(f"cannot remove {e.path}: {exc.strerror or exc}") from None
        shutil.rmtree(aside, ignore_errors=True)
    cleared = 0
    if names is None:  # and what stopped processes left: unfinished entries, free lock files
        for tmp in unfinished:
            if not _held(folder / f"{tmp.name.removeprefix('.tmp-').rsplit('-', 2)[0]}.lock"):
                shutil.rmtree(tmp, ignore_errors=True)
                cleared += 1
        for lock_file in folder.glob("*.lock"):
            _held(lock_file, unlink=True)
    return chosen, cleared


def _held(lock_file: Path, unlink: bool = False) -> bool:
    """Whether a live process holds this lock file (`unlink`: remove it when none does)."""
    try:
        import fcntl

        fd = os.open(lock_file, os.O_RDWR)
    except (ImportError, OSError):
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        if unlink:
            lock_file.unlink(missing_ok=True)
        return False
    finally:
        os.close(fd)
