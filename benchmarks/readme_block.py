"""Shared by the benchmark scripts: the processor's name, timing a `kiln` command, and rewriting
one marked block of benchmarks/README.md (`<!-- NAME:start -->` ... `<!-- NAME:end -->`) with the
latest figures."""

from __future__ import annotations

import platform
import re
import subprocess
import sys
import time
from pathlib import Path

README = Path(__file__).with_name("README.md")


def cpu_name() -> str:
    try:
        return re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text()).group(1)
    except (OSError, AttributeError):
        return platform.processor() or platform.machine()


def run_kiln(*args, cwd: Path, cpus: str | None = None) -> float:
    """`python -m kiln ARGS` in `cwd`, on CPUs `cpus` alone when given (taskset's list, e.g.
    "1" or "0,1"); the seconds it took. A failure stops the benchmark with kiln's message."""
    command = [sys.executable, "-m", "kiln", *map(str, args)]
    if cpus is not None:
        command = ["taskset", "-c", cpus, *command]
    started = time.perf_counter()
    out = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"kiln {' '.join(map(str, args))} failed:\n{out.stderr}")
    return time.perf_counter() - started


def write_block(marker: str, text: str, path: Path = README) -> None:
    readme = path.read_text()
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    if start not in readme:
        raise SystemExit(f"{path} has no {start} ... {end} markers")
    head, rest = readme.split(start, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{start}\n{text}\n{end}{tail}")
    print(f"Wrote {path}")
