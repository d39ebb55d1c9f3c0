"""The decoded-image cache on the CIFAR-10 PNG folder (60,000 PNGs): seconds to build a run's data.

What is timed is `kiln.data.build` (scan, check and decode every image, carve the splits, the
normalization stats), in a fresh process each time, three ways per repeat:

  two decodes  data.cache=off: every image decoded once to check it and again to load it
  first run    data.cache=DIR, DIR empty: one decode per image, written to the cache
  warm cache   data.cache=DIR again: the decoded images opened from the cache, no image read

With `--baseline-src SRC` (the `src` folder of an older checkout, e.g. `git archive de0a762 src |
tar -x -C /tmp/before`) a fourth row times that code as it was, before the cache.

    python benchmarks/data_cache.py [--repeats 3] [--cifar DIR] [--baseline-src SRC]
                                    [--write-readme]

The dataset is read in place, nothing is written into it; the cache goes to a temporary folder
that is removed at the end. Other processes on the machine slow every row: the load average at
the start and the end is printed with the table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from readme_block import cpu_name, write_block

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"


def find_cifar(arg: str | None) -> Path:
    for candidate in [arg] if arg else [p / "shared/datasets/cifar10" for p in HERE.parents[:2]]:
        if candidate and (Path(candidate) / "train").is_dir():
            return Path(candidate)
    sys.exit("CIFAR-10 PNG folder not found; pass --cifar DIR (with train/<class>/*.png)")


def child(cifar: str, cache: str | None) -> None:
    """In a fresh process: build the data once, print the seconds and a fingerprint of it."""
    from kiln import data as kdata
    from kiln.config import DataConfig

    options = {"cache": cache} if cache else {}  # an older checkout has no data.cache
    cfg = DataConfig(name="folder", root=cifar, memory=True, **options)
    started = time.perf_counter()
    bundle = kdata.build(cfg)
    seconds = time.perf_counter() - started
    splits = (bundle.train, bundle.val, bundle.test)
    fingerprint = [int(s.images.sum()) + int(s.labels.sum()) for s in splits]
    print(json.dumps({"seconds": seconds, "fingerprint": fingerprint, "train": len(bundle.train)}))


def timed(cifar: Path, cache: str | None, src: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src)}
    command = [sys.executable, __file__, "--child", str(cifar)]
    out = subprocess.run(
        [*command, *(["--cache", cache] if cache else [])], env=env, capture_output=True, text=True
    )
    if out.returncode != 0:
        raise SystemExit(f"building the data failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cifar")
    parser.add_argument("--baseline-src", type=Path, help="an older checkout's src/, timed too")
    parser.add_argument("--write-readme", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.cache)
        return
    cifar = find_cifar(args.cifar)
    rows = {"two decodes (data.cache=off)": [], "first run (writes the cache)": [],
            "warm cache": []}  # fmt: skip
    if args.baseline_src:
        rows[f"before the cache ({args.baseline_src})"] = []
    fingerprints = set()
    started_load = load()
    work = Path(tempfile.mkdtemp(prefix="kiln-data-cache-"))
    try:
        for repeat in range(args.repeats):
            cache = work / f"cache-{repeat}"
            runs = [("off", SRC), (str(cache), SRC), (str(cache), SRC)]
            if args.baseline_src:
                runs.append((None, args.baseline_src))
            for (name, figures), (setting, src) in zip(rows.items(), runs, strict=True):
                result = timed(cifar, setting, src)
                figures.append(result["seconds"])
                fingerprints.add(tuple(result["fingerprint"]))
                print(f"repeat {repeat + 1}: {name}: {result['seconds']:.2f} s", flush=True)
            shutil.rmtree(cache)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if len(fingerprints) != 1:
        raise SystemExit(f"the builds disagree on the data: {fingerprints}")
    medians = {name: statistics.median(figures) for name, figures in rows.items()}
    off = medians["two decodes (data.cache=off)"]
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} with `python benchmarks/data_cache.py --repeats "
        f"{args.repeats}{' --baseline-src ...' if args.baseline_src else ''}`: `kiln.data.build` "
        f"of the CIFAR-10 PNG folder (60,000 images, `data.memory=true`), each in a fresh "
        f"process, median of {args.repeats}; {cpu_name()}, {os.cpu_count()} cores. Load average "
        f"at the start: {started_load}; at the end: {load()}.",
        "",
        "| data built | seconds (median) | every run | vs data.cache=off |",
        "| --- | ---: | --- | ---: |",
    ]
    for name, figures in rows.items():
        every = ", ".join(f"{s:.1f}" for s in figures)
        lines.append(f"| {name} | {medians[name]:.2f} | {every} | {medians[name] / off:.2f}x |")
    table = "\n".join(lines)
    print(table)
    if args.write_readme:
        write_block("data-cache", table)


if __name__ == "__main__":
    main()
