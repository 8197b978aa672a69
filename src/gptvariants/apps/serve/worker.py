"""Model work off the event loop: a bounded thread pool, with admission control and streams
advanced in time slices so that requests take turns.

Torch releases the GIL inside its kernels, so a pool of a few threads keeps the server
answering (the page, ``GET /api/runs``) while models compute. Long work is not one task:
``stream`` advances an iterator for at most ``slice_s`` seconds per task, then sends it back to
the end of the pool's queue, so that it cannot hold a worker while later requests wait (the
server's generations go through ``batcher.Batcher``, which advances its running batches in the
same way). Items reach the event loop in batches: the first at once (the first token's
latency), then whatever was produced in the last ``flush_s`` seconds, so that a fast stream does
not wake the event loop (and the client) once per token; on a busy machine each wake-up can wait
for a core, which costs more than the token itself on a small model. Requests beyond
``max_pending`` in progress are refused at once (``Busy``: HTTP 503) instead of queueing
without bound.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

import torch

from ...common.errors import InputError

T = TypeVar("T")
_SLICE_END = object()


class Busy(RuntimeError):
    """Too many requests in progress."""


def _no_grad(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    with torch.no_grad():  # grad mode is per thread: set it in the worker
        return fn(*args, **kwargs)


class ModelPool:
    """``workers`` threads for model work; at most ``max_pending`` requests admitted at once."""

    def __init__(self, workers: int = 4, max_pending: int = 64, slice_s: float = 0.05, flush_s: float = 0.02) -> None:
        if workers < 1 or max_pending < 1:
            raise InputError(f"workers and max_pending must be >= 1, got {workers} and {max_pending}")
        self.executor = ThreadPoolExecutor(workers, thread_name_prefix="gptv-model")
        self.workers, self.max_pending, self.slice_s, self.flush_s = workers, max_pending, slice_s, flush_s
        self.pending = 0  # touched only on the event loop's thread

    def acquire(self) -> None:
        """Count one more request in progress (``release`` when it ends); Busy when full."""
        if self.pending >= self.max_pending:
            raise Busy(f"server busy: {self.pending} requests in progress; try again shortly")
        self.pending += 1

    def release(self) -> None:
        self.pending -= 1

    @contextmanager
    def admit(self) -> Iterator[None]:
        """One request in progress for the duration of the block."""
        self.acquire()
        try:
            yield
        finally:
            self.release()

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` on a worker thread, without autograd."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(_no_grad, fn, *args, **kwargs))

    async def stream(self, items: Iterator[T]) -> AsyncIterator[list[T]]:
        """The items of a (model-computing) iterator, advanced on the workers one time slice per
        task, in batches (module docstring). Closing the async iterator (a client that went away)
        stops the work after the current item."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()
        first = True

        def run_slice() -> bool:  # True when the iterator is exhausted
            nonlocal first
            now = time.perf_counter()
            end, flush_at, batch = now + self.slice_s, now, []
            try:
                for item in items:
                    batch.append(item)
                    now = time.perf_counter()
                    if first or now >= flush_at:
                        loop.call_soon_threadsafe(queue.put_nowait, batch)
                        first, flush_at, batch = False, now + self.flush_s, []
                    if stop.is_set() or now >= end:
                        return False
                return True
            finally:  # the rest of the batch, then the end of the slice
                loop.call_soon_threadsafe(queue.put_nowait, batch)
                loop.call_soon_threadsafe(queue.put_nowait, _SLICE_END)

        task = None
        try:
            while True:
                task = loop.run_in_executor(self.executor, functools.partial(_no_grad, run_slice))
                while (batch := await queue.get()) is not _SLICE_END:
                    if batch:
                        yield batch
                if await task:  # re-raises the slice's exception
                    return
        finally:
            stop.set()
            if task is not None and not task.done():  # an abandoned slice: retrieve its outcome quietly
                task.add_done_callback(lambda f: f.cancelled() or f.exception())

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
