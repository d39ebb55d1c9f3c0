"""How many cores this process may use, and the DataLoader workers that follows from it."""

from __future__ import annotations

import os


def cpu_count() -> int:
    """The cores this process may use: its CPU affinity, capped by a cgroup CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores


def default_workers(workers: int | None) -> int:
    """data.workers, or one DataLoader worker per core this process may use (its CPU affinity and
    cgroup quota: a container's, a pinned process's), at most 4."""
    return workers if workers is not None else min(4, cpu_count())
