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

import gc
import json
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np
import PIL
import torch

from kiln.data.cache_store import (
    IMAGES,
    MANIFEST,
    CannotWrite,
    lock,
    new_images,
    publish,
    read_entry,
    write_json,
    writing,
)
from kiln.data.placement import human
from kiln.data.registry import cache_root
from kiln.data.scan import Sample, ScanResult
from kiln.data.source import Source, Stamp, relative, stamp
from kiln.data.verify import Checked, Failed, check, image_problems
from kiln.errors import ConfigError

__all__ = ["Source", "cache_folder", "load"]

FORMAT = 1  # of an entry; another one is rebuilt


def cache_folder(setting: str) -> Path | None:
    """The folder that data.cache names (None: off)."""
    if setting == "off":
        return None
    return cache_root() / "decoded" if setting == "auto" else Path(setting).expanduser()


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
            with lock(folder, entry.name):
                checked, now = _open_valid(entry, source)  # another run may have just built it
                why = now or why
                if checked is None:
                    return _build(cfg, source, entry, why)
    except CannotWrite as exc:
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
        manifest, images = read_entry(entry)
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
        scan_problems = [str(p) for p in scan.problems]
        _refresh(entry, manifest, listings=listings, cwd=os.getcwd(), scan_problems=scan_problems)
    return _checked(manifest, images, source, scan), None


def _refresh(entry: Path, manifest: dict, **changes) -> None:
    """Rewrite the manifest of the entry read, if no other run is rebuilding it; else leave it
    (read-only caches too): the next run only lists the folders again."""
    try:
        with lock(entry.parent, entry.name, wait=False):
            if json.loads((entry / MANIFEST).read_text()).get("id") == manifest["id"]:
                write_json(entry / MANIFEST, {**manifest, **changes})
    except (OSError, ValueError, CannotWrite):
        pass


def _same_samples(entries: list, scan: ScanResult, base: Path) -> str | None:
    now = [[relative(base, s.path), _plain(s.label), s.split] for s in scan.samples]
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
    """A label as JSON keeps it: numeric targets (a tuple) as a list, a set of labels
    (data.label_sep) as {"set": [sorted names]}."""
    if isinstance(label, frozenset):
        return {"set": sorted(label)}
    return list(label) if isinstance(label, tuple) else label


def _label(label):
    if isinstance(label, dict):
        return frozenset(label["set"])
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
    with writing():
        tmp.mkdir()
    try:
        checked = check(cfg, scan, partial(new_images, tmp))
        if checked.shape is None:  # no readable training image: nothing worth keeping
            return checked
        row_of = dict(zip((s.path for s in checked.samples), checked.rows, strict=True))
        manifest = {
            "format": FORMAT, "pillow": PIL.__version__, "id": secrets.token_hex(8),
            "dataset": str(source.dataset),
            "created": time.strftime("%Y-%m-%d %H:%M:%S"), "cwd": os.getcwd(),
            "shape": list(checked.shape), "classes": checked.classes,
            "sizes": checked.sizes, "modes": checked.modes,
            "scan_problems": [str(p) for p in scan.problems],
            "samples": [[relative(source.root.resolve(), s.path), _plain(s.label), s.split,
                         row_of.get(s.path, -1), s.line] for s in scan.samples],
            "reasons": [f.reason for f in checked.failed],
            "listings": listings, "files": files,
        }  # fmt: skip
        with writing():
            write_json(tmp / MANIFEST, manifest)
            with open(tmp / IMAGES, "rb") as f:
                os.fsync(f.fileno())  # on disk before it is visible: no zeros after a crash
            publish(tmp, entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    manifest, images = read_entry(entry)
    opened = _checked(manifest, images, source, scan)
    seconds, size = time.perf_counter() - started, human(images.nbytes)
    if why:
        opened.note = f"Data cache: {why}; decoded {len(images):,} images again into {entry} "
    else:
        opened.note = f"Data cache: decoded {len(images):,} images once into {entry} "
    opened.note += f"({size}, {seconds:.1f} s); later runs read them from there"
    return opened
