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
    def __init__(self, threads: int = 2, waiting: int = 32):
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
            return await loop.run_in_executor(self._executor, functools.partial(fn, *args))
        finally:
            self.busy -= 1
