"""Batching: concurrent requests share forward passes."""

from __future__ import annotations

import asyncio

import torch
from starlette.concurrency import run_in_threadpool

from kiln.infer import Servable


class Batcher:
    """Concurrent requests share forward passes: while the model runs, new requests queue, and the
    next pass takes all of them (up to `max_batch` images). No timer, so no added latency when
    requests come one at a time."""

    def __init__(self, servable: Servable, max_batch: int = 64):
        self.servable, self.max_batch = servable, max_batch
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue | None = None

    async def outputs(self, x: torch.Tensor) -> torch.Tensor:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # first call, or a new event loop (tests)
            self._loop, self._queue = loop, asyncio.Queue()
            loop.create_task(self._work(self._queue))
        future = loop.create_future()
        await self._queue.put((x, future))
        return await future

    async def _work(self, queue: asyncio.Queue) -> None:
        while True:
            jobs = [await queue.get()]
            size = len(jobs[0][0])
            while not queue.empty() and size + len(queue._queue[0][0]) <= self.max_batch:
                jobs.append(queue.get_nowait())
                size += len(jobs[-1][0])
            try:
                batch = self.servable.join([x for x, _ in jobs])
                outputs = await run_in_threadpool(self.servable.logits, batch)
            except Exception as exc:  # the model failed: every waiting request hears it
                for _, future in jobs:
                    if not future.done():
                        future.set_exception(exc)
                continue
            start = 0
            for x, future in jobs:
                if not future.done():
                    future.set_result(outputs[start : start + len(x)])
                start += len(x)
