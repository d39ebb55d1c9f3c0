"""The decoded-image cache (`data.cache`): a folder or CSV dataset is scanned, checked and decoded
once; later runs open the decoded images in about a second.

`data.cache`:
  auto   (default) in <cache root>/decoded, the cache root being $KILN_CACHE, else the folder that
         holds the default data root (~/.cache/kiln; $KILN_DATA=/x/data moves it to /x)
  off    nothing is written; every run scans, checks and decodes the images again
  PATH   in that folder (it may not be inside the dataset)

One entry per dataset and shape, a folder named <dataset>-<key> (the key: a hash of the dataset's
path, its CSV columns, data.channels and data.size), holding
  images.npy     uint8 (rows, C, H, W), memory-mapped copy-on-write by each run that reads it
  manifest.json  the samples (path, label, split, row), every problem found, and the size and
                 modification time of every image, and of every folder (or the CSV) listing them
A later run compares those with the files: an image changed, removed or added rebuilds the entry,
and one line says which. A folder (or CSV) that changed is listed again (no image is opened) and
the entry is kept when it lists the same images in the same order.

An entry is written into a temporary folder and renamed into place, under a lock file so that
runs started together decode once; a reader only ever opens a complete entry, and a writer killed
half way leaves a `.tmp-*` folder that nothing reads (the next build, or `kiln data cache rm
--all`, removes it). A cache folder that cannot be written costs one warning line, not the run.
"""

from __future__ import annotations

import errno
import gc
import hashlib
import json
import math
import os
import re
import secrets
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import PIL
import torch

from kiln.data.placement import human
from kiln.data.registry import cache_root
from kiln.data.scan import Sample, ScanResult, _ignored, _read_csv, scan_csv, scan_folder
from kiln.data.verify import Checked, Failed, Shape, check, image_problems, unique_paths
from kiln.errors import ConfigError, KilnError

FORMAT = 1  # of an entry; another one is rebuilt
MANIFEST, IMAGES = "manifest.json", "images.npy"

Stamp = list[int] | None  # [size, modification time in ns], or None: the path does not exist


def cache_folder(setting: str) -> Path | None:
    """The folder that data.cache names (None: off)."""
    if setting == "off":
        return None
    return cache_root() / "decoded" if setting == "auto" else Path(setting).expanduser()


def say(note: str) -> None:
    """A cache line, on stderr (stdout may be JSON), from the first process of a run alone."""
    if note and os.environ.get("RANK", "0") == "0":
        print(note, file=sys.stderr, flush=True)


@dataclass
class Source:
    """Where a dataset's images come from: an image folder, or a CSV naming files under root."""

    root: Path
    csv: Path | None = None
    columns: tuple[str, str, str] = ("file", "label", "split")
    targets: tuple[str, ...] = ()

    @property
    def dataset(self) -> Path:
        return (self.csv or self.root).resolve()

    def scan(self) -> ScanResult:
        if self.csv is None:
            return scan_folder(self.root)
        return scan_csv(self.csv, self.root, *self.columns, list(self.targets) or None)

    def key(self, cfg) -> str:
        """The entry's name: what decides the decoded pixels and labels, hashed."""
        settings = [str(self.root.resolve()), str(self.dataset), self.columns, self.targets,
                    cfg.channels, cfg.size]  # fmt: skip
        digest = hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:16]
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", self.dataset.stem)[:40].lstrip(".")
        return f"{name or 'data'}-{digest}"

    def listings(self) -> dict[str, Stamp]:
        """Stamps of what lists the images: the CSV, or every folder a scan walks (stamped before
        it is listed: a file added while the scan runs changes the stamp afterwards)."""
        base = self.root.resolve()
        if self.csv is not None:
            return {str(self.csv.resolve()): stamp(self.csv)}
        stamps: dict[str, Stamp] = {}
        seen: set[tuple[int, int]] = set()  # symlinked folders are followed, loops end
        pending = [str(base)]
        while pending:
            folder = pending.pop()
            try:
                st = os.stat(folder)
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
                with os.scandir(folder) as it:
                    names = [e.name for e in it if e.is_dir() and not _ignored(e.name)]
            except OSError:
                continue  # the scan reports it
            stamps[_rel(base, folder)] = [st.st_size, st.st_mtime_ns]
            pending += [os.path.join(folder, name) for name in names]
        return stamps

    def files(self, scan: ScanResult) -> dict[str, Stamp]:
        """Stamps of the images: the listed ones, and for a CSV every path it names, found or not
        (a missing file that appears must rebuild the entry)."""
        base = self.root.resolve()
        if self.csv is None:
            return {_rel(base, p): stamp(p) for p in unique_paths(scan.samples)}
        _, rows = _read_csv(self.csv)
        cells = [os.path.normpath((row.get(self.columns[0]) or "").strip()) for _, row in rows]
        named = [c for c in cells if c != "." and not os.path.isabs(c) and not c.startswith("..")]
        return {c: stamp(os.path.join(base, c)) for c in dict.fromkeys(named)}


def stamp(path: str | Path) -> Stamp:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _rel(base: Path, path: str | Path) -> str:
    """Path relative to base when inside it (as manifests keep them), else absolute."""
    text, prefix = str(path), str(base) + os.sep
    return text[len(prefix) :] if text.startswith(prefix) else ("." if text == str(base) else text)


@contextmanager
def _bulk() -> Iterator[None]:
    """No garbage collection while a manifest's few hundred thousand objects are made: each
    collection would walk them all again, which doubles the time an entry takes to open."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class _CannotWrite(Exception):
    """The cache folder cannot be written: the run continues without the cache."""


@contextmanager
def _writing() -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise _CannotWrite(exc.strerror or str(exc)) from None


# ----------------------------------------------------------------------------- a run's data


def load(cfg, source: Source) -> Checked:
    """The dataset checked and, with the cache on, decoded: opened from the cache when its files
    are as they were, else scanned, decoded once and cached. `Checked.note` says which."""
    folder = cache_folder(cfg.cache)
    if folder is None:
        return check(cfg, source.scan())
    if folder.resolve().is_relative_to(source.root.resolve()):
        where = f"{folder} is inside the dataset folder {source.root}"
        if cfg.cache != "auto":
            raise ConfigError(f"data.cache: {where}; name a folder outside it, or set it to off")
        checked = check(cfg, source.scan())
        checked.note = f"warning: not caching the decoded images: {where} (set data.cache=PATH)"
        return checked
    entry = folder / source.key(cfg)
    started = time.perf_counter()
    with _bulk():
        checked, why = _open_valid(entry, source)
    try:
        if checked is None:
            with _lock(folder, entry.name) as waited:
                if waited:  # another run was building it: it is probably there now
                    checked, why = _open_valid(entry, source)
                if checked is None:
                    return _build(cfg, source, entry, why)
    except _CannotWrite as exc:
        checked = check(cfg, source.scan())
        checked.note = (
            f"warning: cannot write the decoded-image cache in {folder} ({exc}); continuing "
            "without it (data.cache=off stops trying, data.cache=PATH uses another folder)"
        )
        return checked
    seconds = time.perf_counter() - started
    checked.note = (
        f"Data cache: {len(checked.images):,} decoded images from {entry} "
        f"(files unchanged; opened in {seconds:.1f} s)"
    )
    return checked


def _open_valid(entry: Path, source: Source) -> tuple[Checked | None, str | None]:
    """The entry when its files are as they were; else None and why not (None: no entry)."""
    try:
        manifest, images = _read(entry)
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        return None, f"the cache entry could not be read ({exc})"
    if [manifest.get("format"), manifest.get("pillow")] != [FORMAT, PIL.__version__]:
        return None, "the cache was written by another version of kiln or Pillow"
    base = source.root.resolve()
    moved = any(stamp(os.path.join(base, k)) != v for k, v in manifest["listings"].items())
    scan = None
    if moved or (manifest["scan_problems"] and manifest["cwd"] != os.getcwd()):
        listings = source.listings()  # before the listing, as when the entry was written
        scan = source.scan()  # a listing: no image is opened (problems are named from here)
        why = _same_samples(manifest["samples"], scan, base)
        if why:
            return None, why
        files = source.files(scan)
    else:
        inside = str(base) + os.sep  # (files are always relative to the root)
        files = {k: stamp(inside + k) for k in manifest["files"]}
    why = _same_files(manifest["files"], files)
    if why:
        return None, why
    if moved:  # the same images: note the folders' new stamps, so the next run lists none
        manifest.update(listings=listings, cwd=os.getcwd())
        manifest["scan_problems"] = [str(p) for p in scan.problems]
        try:
            _write_json(entry / MANIFEST, manifest)
        except OSError:
            pass  # a read-only cache: still right, only slower
    return _checked(manifest, images, source, scan), None


def _same_samples(entries: list, scan: ScanResult, base: Path) -> str | None:
    now = [[_rel(base, s.path), _plain(s.label), s.split] for s in scan.samples]
    if now == [e[:3] for e in entries]:
        return None
    before, after = {e[0] for e in entries}, {e[0] for e in now}
    if after - before:
        return f"{len(after - before)} image(s) were added (e.g. {min(after - before)})"
    if before - after:
        return f"{len(before - after)} image(s) were removed (e.g. {min(before - after)})"
    return "the labels, splits or order of the images changed"


def _same_files(before: dict[str, Stamp], now: dict[str, Stamp]) -> str | None:
    if before == now:
        return None
    for path, stamped in now.items():
        if path not in before:
            return f"{path} was added"
        if stamped != before[path]:
            if stamped is None:
                return f"{path} was removed"
            return f"{path} appeared" if before[path] is None else f"{path} changed"
    gone = next((p for p in before if p not in now), None)
    return f"{gone} is no longer listed" if gone else None


def _plain(label):
    """A label as JSON keeps it: numeric targets (a tuple) as a list."""
    return list(label) if isinstance(label, tuple) else label


def _label(label):
    return tuple(label) if isinstance(label, list) else label


def _checked(manifest: dict, images: np.ndarray, source: Source, scan: ScanResult | None):
    """The Checked an entry holds, its samples (and their problems) named as this run sees them."""
    base = source.root.resolve()
    csv = source.csv.absolute() if source.csv is not None else None
    entries = manifest["samples"]
    if scan is not None:
        samples = scan.samples
    else:
        samples = [
            Sample(base / rel, _label(label), split, line, None if line is None else csv)
            for rel, label, split, _, line in entries
        ]
    good = [(s, e[3]) for s, e in zip(samples, entries, strict=True) if e[3] >= 0]
    bad = [s for s, e in zip(samples, entries, strict=True) if e[3] < 0]
    failed = [Failed(s, why) for s, why in zip(bad, manifest["reasons"], strict=True)]
    problems = scan.problems if scan is not None else manifest["scan_problems"]
    return Checked(
        samples=[s for s, _ in good],
        classes=manifest["classes"],
        problems=[*problems, *image_problems(failed)],
        sizes=manifest["sizes"],
        modes=manifest["modes"],
        shape=tuple(manifest["shape"]),
        failed=failed,
        images=torch.from_numpy(images),
        rows=[row for _, row in good],
    )


# ----------------------------------------------------------------------------- writing


def _build(cfg, source: Source, entry: Path, why: str | None) -> Checked:
    """Scan, check and decode once into a temporary folder; rename it into place; open it."""
    started = time.perf_counter()
    listings = source.listings()
    scan = source.scan()
    files = source.files(scan)
    for leftover in entry.parent.glob(f".tmp-{entry.name}-*"):  # a killed writer's (we hold
        shutil.rmtree(leftover, ignore_errors=True)  # the lock: nobody else writes this entry)
    tmp = entry.with_name(f".tmp-{entry.name}-{os.getpid()}-{secrets.token_hex(4)}")
    with _writing():
        tmp.mkdir()
    try:
        checked = check(cfg, scan, partial(_new_images, tmp))
        if checked.shape is None:  # no readable training image: nothing worth keeping
            return checked
        row_of = dict(zip((s.path for s in checked.samples), checked.rows, strict=True))
        manifest = {
            "format": FORMAT, "pillow": PIL.__version__, "dataset": str(source.dataset),
            "created": time.strftime("%Y-%m-%d %H:%M:%S"), "cwd": os.getcwd(),
            "shape": list(checked.shape), "classes": checked.classes,
            "sizes": checked.sizes, "modes": checked.modes,
            "scan_problems": [str(p) for p in scan.problems],
            "samples": [[_rel(source.root.resolve(), s.path), _plain(s.label), s.split,
                         row_of.get(s.path, -1), s.line] for s in scan.samples],
            "reasons": [f.reason for f in checked.failed],
            "listings": listings, "files": files,
        }  # fmt: skip
        with _writing():
            _write_json(tmp / MANIFEST, manifest)
            with open(tmp / IMAGES, "rb") as f:
                os.fsync(f.fileno())  # on disk before it is visible: no zeros after a crash
            _publish(tmp, entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    manifest, images = _read(entry)
    opened = _checked(manifest, images, source, scan)
    seconds, size = time.perf_counter() - started, human(images.nbytes)
    if why:
        opened.note = f"Data cache: {why}; decoded {len(images):,} images again into {entry} "
    else:
        opened.note = f"Data cache: decoded {len(images):,} images once into {entry} "
    opened.note += f"({size}, {seconds:.1f} s); later runs read them from there"
    return opened


def _new_images(tmp: Path, shape: Shape, n: int) -> Path:
    """An .npy of n uint8 images of `shape`, its space reserved now: decoding then never fails
    half way for want of disk (a full disk would kill the process writing a mapped file)."""
    path, need = tmp / IMAGES, n * math.prod(shape)
    with _writing():
        free = shutil.disk_usage(tmp).free
        if need > free:
            raise _CannotWrite(f"the decoded images need {human(need)}, {human(free)} is free")
        array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, *shape))
        del array  # the file, with its header and a hole where the rows go
        with open(path, "r+b") as f:
            try:
                os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
            except (AttributeError, OSError) as exc:  # not every platform or file system has it
                if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
                    raise
    return path


def _publish(tmp: Path, entry: Path) -> None:
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


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, separators=(",", ":"))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@contextmanager
def _lock(folder: Path, name: str) -> Iterator[bool]:
    """Hold <folder>/<name>.lock (released when the process ends, however it ends); yields
    whether another process held it first."""
    with _writing():
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        import fcntl
    except ImportError:  # no flock (Windows): the rename alone keeps readers safe
        os.close(fd)
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            waited = False
        except BlockingIOError:
            say(f"Data cache: waiting for another kiln process that is decoding into {folder}")
            fcntl.flock(fd, fcntl.LOCK_EX)
            waited = True
        yield waited
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- reading


def _read(entry: Path) -> tuple[dict, np.ndarray]:
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
        os.rename(e.path, aside)  # gone at once for readers, however long the deletion takes
        shutil.rmtree(aside, ignore_errors=True)
    cleared = 0
    if names is None:
        for tmp in unfinished:
            if not _being_written(folder, tmp):
                shutil.rmtree(tmp, ignore_errors=True)
                cleared += 1
    return chosen, cleared


def _being_written(folder: Path, tmp: Path) -> bool:
    """Whether a live process holds the lock of the entry this temporary folder is for."""
    name = tmp.name.removeprefix(".tmp-").rsplit("-", 2)[0]
    try:
        import fcntl

        fd = os.open(folder / f"{name}.lock", os.O_RDWR)
    except (ImportError, OSError):
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
