"""Decoding images and parsing JSON bodies happen in a few threads of their own, never on the
event loop (which keeps answering /health and queueing requests meanwhile), with a bounded queue:
past `threads + waiting` jobs a request is answered 503 with Retry-After at once, instead of
piling up memory and latency."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from kiln.deploy.uploads import BadRequest

T = TypeVar("T")


class WorkQueue:
    def __init__(self, threads: int = 1, waiting: int = 128):
        self.threads, self.waiting, self.busy = threads, waiting, 0
        self._executor: ThreadPoolExecutor | None = None

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` in a worker thread; 503 when `threads + waiting` jobs are already in."""
        if self.busy >= self.threads + self.waiting:
            raise BadRequest(
                503, f"the server is busy ({self.busy} requests being decoded or waiting, its "
                "limit; kiln serve --queue); try again in a moment",
                headers={"Retry-After": "1"},
            )  # fmt: skip
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix="kiln-decode")
        self.busy += 1
        try:
            loop = asyncio.get_running_loop()
            job = functools.partial(_then_release, fn, *args)
            return await loop.run_in_executor(self._executor, job)
        finally:
            self.busy -= 1


def _then_release(fn: Callable[..., T], *args: Any) -> T:
    try:
        return fn(*args)
    finally:
        release_memory()


def release_memory() -> None:
    """Hand freed memory back to the system (glibc keeps what decoding threads freed, so a burst
    of large images would otherwise leave the server's resident memory at its peak)."""
    if _libc is not None:
        _libc.malloc_trim(0)


def _load_libc():
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim  # glibc only  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


_libc = _load_libc()
