"""Decode every image of a scanned dataset once: check that it reads and, for the decoded cache,
convert it to the run's channels and size in the same pass.

Checking decodes each file fully, as training would, so every problem (empty, not an image,
truncated or corrupt, over PIL's decompression-bomb limit) is found before training starts. A run
that writes the decoded cache (kiln.data.cache) keeps what that decode produced, instead of
decoding every image a second time to load it.
"""

from __future__ import annotations

import multiprocessing
import os
import warnings
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from kiln.data.images import infer_channels, infer_size, to_array
from kiln.data.scan import _SPLIT_RANK, ImageMeta, Problem, Sample, ScanResult, _Problems, _shown

# What Pillow's own fuzz tests accept from corrupt files (Tests/oss-fuzz/test_fuzzers.py);
# UnidentifiedImageError is an OSError. Anything else is a bug and should surface as one.
_PIL_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    MemoryError,
    NotImplementedError,
    OverflowError,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
)

Shape = tuple[int, int, int]  # (channels, height, width) of the run's images
GUESS_FROM = 1000  # training images whose headers guess the run's shape before decoding


@dataclass
class Failed:
    """A sample whose image does not decode, and why."""

    sample: Sample
    reason: str


@dataclass
class Checked:
    """A dataset after its one decode: what reads, every problem, and the run's image shape."""

    samples: list[Sample]  # the readable ones, in scan order
    classes: list[str]
    problems: list[Problem | str]  # the scan's, then the images' (as `str` they read the same)
    sizes: dict[str, int]  # "HxW" -> readable images, before resizing
    modes: dict[str, int]  # PIL mode -> readable images
    shape: Shape | None  # None when no training image reads
    failed: list[Failed] = field(default_factory=list)
    images: torch.Tensor | None = None  # uint8 (rows, C, H, W): the decoded cache, when on
    rows: list[int] | None = None  # samples[i] is images[rows[i]]
    note: str = ""  # what the cache did, in one line (the run says it once training starts)


def unique_paths(samples: list[Sample]) -> list[Path]:
    """Each image once (a CSV may list one file twice), in order: the rows of a decoded array."""
    return list(dict.fromkeys(s.path for s in samples))


def verify_images(
    samples: list[Sample], workers: int | None = None
) -> tuple[list[Problem], dict[Path, ImageMeta]]:
    """Decode every image fully, as training would, and report each one that fails: empty,
    not an image, truncated or corrupt, or over PIL's decompression-bomb limit.

    ImageFile.LOAD_TRUNCATED_IMAGES is left as it is (False by default), so truncated files fail
    here rather than being padded with grey. The size in ImageMeta is the stored size, before any
    EXIF rotation."""
    outcomes = _decode_all(unique_paths(samples), workers)
    metas = {p: o for p, o in outcomes.items() if isinstance(o, ImageMeta)}
    failed = [Failed(s, outcomes[s.path]) for s in samples if s.path not in metas]
    return image_problems(failed), metas


def check(cfg, scan: ScanResult, out: Callable[[Shape, int], Path] | None = None) -> Checked:
    """Verify every image of `scan` and settle the run's shape: data.channels and data.size, else
    what most training images are. With `out` (given a shape and a count, it makes an .npy file
    of that many uint8 images and returns its path), each readable image is also converted and
    written to its row of that file (rows: `unique_paths` order) by the same decode."""
    unique = unique_paths(scan.samples)
    target = _guess(cfg, scan.samples) if out and unique else None
    file = out(target, len(unique)) if target else None
    outcomes = _decode_all(unique, cfg.workers, file, target, cfg.resize)
    metas = {p: o for p, o in outcomes.items() if isinstance(o, ImageMeta)}
    good = [s for s in scan.samples if s.path in metas]
    failed = [Failed(s, outcomes[s.path]) for s in scan.samples if s.path not in metas]
    shape = _vote(cfg, [metas[s.path] for s in good if s.split in (None, "train")])
    if file is not None and shape is not None and shape != target:
        file = out(shape, len(unique))  # rare: the sampled headers voted otherwise; once more
        _decode_all(unique, cfg.workers, file, shape)
    row = {path: i for i, path in enumerate(unique)}
    return Checked(
        samples=good,
        classes=list(scan.classes),
        problems=[*scan.problems, *image_problems(failed)],
        sizes=dict(Counter(f"{m.height}x{m.width}" for m in metas.values()).most_common()),
        modes=dict(Counter(m.mode for m in metas.values()).most_common()),
        shape=shape,
        failed=failed,
        rows=[row[s.path] for s in good] if file is not None else None,
    )


def image_problems(failed: list[Failed]) -> list[Problem]:
    """One problem per unreadable sample, named as the user would find it, sorted by split."""
    problems = _Problems()
    for f in failed:
        s = f.sample
        shown_csv = _shown(s.csv) if s.csv else None
        problems.add(Problem(_shown(s.path), f.reason, s.line, shown_csv), _SPLIT_RANK[s.split])
    return problems.sorted()


def _vote(cfg, metas: list[ImageMeta]) -> Shape | None:
    if not metas:
        return None
    channels = cfg.channels or infer_channels(m.mode for m in metas)
    height, width = cfg.size or infer_size((m.height, m.width) for m in metas)
    return (channels, height, width)


def _guess(cfg, samples: list[Sample]) -> Shape:
    """The run's shape before any decoding, from the headers of up to GUESS_FROM training images
    spread over the dataset (cheap: no pixel is read). `check` decodes again if the full vote
    disagrees, so a wrong guess costs time, never correctness."""
    train = [s for s in samples if s.split in (None, "train")]
    heads = [_header(s.path) for s in train[:: max(1, len(train) // GUESS_FROM)]]
    return _vote(cfg, [h for h in heads if h is not None]) or (cfg.channels or 3, 1, 1)


def _header(path: Path) -> ImageMeta | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return ImageMeta(im.width, im.height, im.mode)
    except (*_PIL_ERRORS, Image.DecompressionBombError):
        return None


def _decode_all(
    unique: list[Path],
    workers: int | None,
    file: Path | None = None,
    shape: Shape | None = None,
    resize: str = "cover",
) -> dict[Path, ImageMeta | str]:
    """ImageMeta or the reason it fails, for each path; with `file`, readable images go to their
    rows of it, converted to `shape` (resized as data.resize says)."""
    workers = max(1, workers or os.cpu_count() or 1)
    # A few chunks per worker: one task per file would cost more in scheduling than small PNGs
    # cost to decode, and one chunk per worker would leave cores idle at the end.
    size = max(1, min(256, -(-len(unique) // (workers * 4))))
    tasks = [(unique[i : i + size], i, file, shape, resize) for i in range(0, len(unique), size)]
    outcomes: dict[Path, ImageMeta | str] = {}
    with warnings.catch_warnings():
        # Over-limit sizes are reported as problems; the warning would only be noise.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        for task, results in zip(tasks, _map(_check_chunk, tasks, workers), strict=True):
            outcomes.update(zip(task[0], results, strict=True))
    return outcomes


def _map(fn, chunks: list, workers: int) -> list:
    """fn over chunks in forked processes where the platform has fork (small images cost more in
    PIL's Python than in decoding, so threads would mostly wait for the GIL), else in threads.
    Rows written to a memory-mapped file by a forked process land in the same file."""
    if workers > 1 and len(chunks) > 1 and "fork" in multiprocessing.get_all_start_methods():
        with multiprocessing.get_context("fork").Pool(min(workers, len(chunks))) as pool:
            return pool.map(fn, chunks)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, chunks))


def _check_chunk(
    task: tuple[list[Path], int, Path | None, Shape | None, str],
) -> list[ImageMeta | str]:
    paths, first, file, shape, resize = task
    rows = None if file is None else np.load(file, mmap_mode="r+")
    results = []
    for row, path in enumerate(paths, first):
        keep = None if rows is None else partial(_keep, rows, row, shape, resize)
        results.append(_check_image(path, keep))
    return results


def _keep(rows: np.ndarray, row: int, shape: Shape, resize: str, image: Image.Image) -> None:
    """The image as training sees it (what kiln.data.images.decode gives), into its row."""
    ImageOps.exif_transpose(image, in_place=True)
    rows[row] = to_array(image, *shape, resize).transpose(2, 0, 1)


def _check_image(path: Path, keep: Callable[[Image.Image], None] | None = None) -> ImageMeta | str:
    """ImageMeta for an image that decodes completely (handed to `keep` while open), else the
    reason it does not."""
    try:
        f = open(path, "rb")
    except OSError as exc:
        return f"cannot open file: {exc.strerror or exc}"
    with f:
        if os.fstat(f.fileno()).st_size == 0:
            return "empty file (0 bytes); remove it or copy it again"
        try:
            im = Image.open(f)
        except UnidentifiedImageError:
            return (
                "not a readable image: PIL does not recognise its format "
                f"(is it really a {path.suffix or 'image'} file?)"
            )
        except Image.DecompressionBombError as exc:
            return _too_large(str(exc))
        except _PIL_ERRORS as exc:
            return f"truncated or corrupt image: {_message(exc)}"
        with im:
            limit = Image.MAX_IMAGE_PIXELS
            if limit and im.width * im.height > limit:
                return _too_large(f"{im.width}x{im.height} pixels is over the limit of {limit}")
            try:
                im.load()
            except Image.DecompressionBombError as exc:
                return _too_large(str(exc))
            except _PIL_ERRORS as exc:
                return f"truncated or corrupt image: {_message(exc)}"
            meta = ImageMeta(im.width, im.height, im.mode)  # as stored, before EXIF rotation
            if keep is not None:
                keep(im)
            return meta


def _too_large(detail: str) -> str:
    return (
        f"image too large, a possible decompression bomb ({detail}); shrink it or remove it, "
        "or raise PIL.Image.MAX_IMAGE_PIXELS if it is genuine"
    )


def _message(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
