"""Where a training process's time went, written to RUN/phases.json: the seconds from the process's
start to the end of each phase (imports, data, model, first training step, training, test
evaluation, report). benchmarks/recipes.py reads it; so can anyone asking why a run took long.
"""

from __future__ import annotations

import json
import os
import time
from typing import TYPE_CHECKING, Any

from kiln.engine.callbacks import Callback

if TYPE_CHECKING:
    from kiln.engine.trainer import Trainer
    from kiln.rundir import RunDir

PHASES = ("imported", "data", "model", "first_step", "trained", "tested", "reported")
_marks: dict[str, float] = {}


def begin() -> None:
    """A run starts in this process: the imports are done (earlier runs' marks are dropped)."""
    _marks.clear()
    mark("imported")


def mark(phase: str) -> None:
    """The end of `phase`, now (wall clock)."""
    _marks[phase] = time.time()


def process_start() -> float | None:
    """When this process started (wall clock, to 10 ms), from /proc on Linux; None elsewhere."""
    try:
        with open(f"/proc/{os.getpid()}/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: start, in clock ticks
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))


def write(run: RunDir) -> dict[str, Any]:
    """RUN/phases.json: each phase's end in seconds since the process started (since the first
    mark where the start is unknown)."""
    start = process_start() or min(_marks.values(), default=time.time())
    seconds = {p: round(_marks[p] - start, 3) for p in PHASES if p in _marks}
    result = {"seconds_since_process_start": seconds, "process_start": start}
    (run.path / "phases.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


class FirstStep(Callback):
    """Marks the end of the first training step of the process."""

    def on_batch_end(self, trainer: Trainer, epoch: int, step: int) -> None:
        if "first_step" not in _marks:
            mark("first_step")
