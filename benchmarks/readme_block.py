"""Shared by the benchmark scripts: the processor's name, and rewriting one marked block of
benchmarks/README.md (`<!-- NAME:start -->` ... `<!-- NAME:end -->`) with the latest figures."""

from __future__ import annotations

import platform
import re
from pathlib import Path

README = Path(__file__).with_name("README.md")


def cpu_name() -> str:
    try:
        return re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text()).group(1)
    except (OSError, AttributeError):
        return platform.processor() or platform.machine()


def write_block(marker: str, text: str) -> None:
    readme = README.read_text()
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    if start not in readme:
        raise SystemExit(f"{README} has no {start} ... {end} markers")
    head, rest = readme.split(start, 1)
    _, tail = rest.split(end, 1)
    README.write_text(f"{head}{start}\n{text}\n{end}{tail}")
    print(f"Wrote {README}")
