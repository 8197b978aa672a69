"""Continuous batching of the server's generations (``decoder.Decoder``).

Concurrent generate requests to one run that need the same predictive (Bayesian mode and
draws) share one running batch, whatever their prompts and sampling options: a request's row
joins at the batch's next step, leaves when it ends or its client goes away, and the other rows
decode on. On a small model a step's cost is mostly Python and dispatch, paid once per batch
instead of once per request, so 20 concurrent requests cost a few times one, not twenty.

A batch is advanced on the model pool (``worker.ModelPool``) in time slices of ``slice_s``
(200 ms), so that it cannot hold a worker for long while other work waits for one; each slice
boundary is a round trip through the event loop, which cost a lone stream 3 % of its speed with
50 ms slices. Each row's tokens reach its request on the event loop in batches: a row's first
token and its end at once, the rest every ``flush_s`` (one wake-up of the loop per flush for all
rows, not one per token and row).
"""

from __future__ import annotations

import asyncio
import queue
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from ...decode.decoder import Decoder
from ..api import TokenRecord, TokenStream
from .runs import Run
from .worker import ModelPool

_END = object()


class RowStream:
    """One request's tokens as they are decoded: iterate for lists of ``TokenRecord``s; an error
    of the batch is raised here. ``cancel`` (the client went away) ends the row at the next step."""

    def __init__(self, tokens: TokenStream) -> None:
        self.tokens = tokens
        self.queue: asyncio.Queue = asyncio.Queue()
        self.buffer: list[TokenRecord] = []  # the decoding thread's, until flushed
        self.started = False  # a first flush has been made

    def cancel(self) -> None:
        self.tokens.row.cancel()

    async def __aiter__(self) -> AsyncIterator[list[TokenRecord]]:
        while (item := await self.queue.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item


@dataclass
class _Batch:
    """One running batch: its decoder and rows (the decoding thread's), and the requests waiting
    to join (put on the event loop, taken by the decoding thread)."""

    decoder: Decoder
    inbox: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    rows: list[RowStream] = field(default_factory=list)
    task: asyncio.Task | None = None


class Batcher:
    """The running batches of one server, by (run, predictive key); see the module docstring."""

    def __init__(self, pool: ModelPool, slice_s: float = 0.2, flush_s: float = 0.05) -> None:
        self.pool, self.slice_s, self.flush_s = pool, slice_s, flush_s
        self.batches: dict[tuple, _Batch] = {}

    def submit(self, run: Run, tokens: TokenStream) -> RowStream:
        """Queue a row (``LanguageModel.token_stream``) to join its batch; on the event loop."""
        key = (run.name, tokens.key)
        batch = self.batches.get(key)
        if batch is None:
            batch = self.batches[key] = _Batch(run.lm.new_decoder(tokens.key))
        stream = RowStream(tokens)
        batch.inbox.put(stream)
        if batch.task is None:
            batch.task = asyncio.get_running_loop().create_task(self._drive(key, batch))
        return stream

    async def _drive(self, key: tuple, batch: _Batch) -> None:
        """Advance the batch one slice at a time while it has rows; the batch goes when idle."""
        loop = asyncio.get_running_loop()
        try:
            while batch.rows or not batch.inbox.empty():
                await self.pool.call(self._slice, batch, loop.call_soon_threadsafe)
        except Exception as e:  # a step failed: its rows (and those waiting) get the error
            for stream in self._all_rows(batch):
                stream.queue.put_nowait(e)
            self.batches.pop(key, None)  # its decoder may be half-way through a step
        finally:
            batch.task = None
            if not batch.rows and batch.inbox.empty() and self.batches.get(key) is batch:
                del self.batches[key]  # its decoder and caches go with it

    @staticmethod
    def _all_rows(batch: _Batch) -> list[RowStream]:
        rows, batch.rows = batch.rows, []
        while not batch.inbox.empty():
            rows.append(batch.inbox.get_nowait())
        return rows

    def _slice(self, batch: _Batch, call_soon: Callable) -> None:
        """Decoding thread: steps for up to ``slice_s`` seconds, letting new rows join at each step."""
        now = time.perf_counter()
        end, flush_at = now + self.slice_s, now + self.flush_s
        with batch.decoder.predictor.fixed_weights():  # a served run's weights never change
            while True:
                self._admit(batch, call_soon)
                if not batch.decoder.active:
                    self._deliver(batch, call_soon, True)  # rows that ended without a step
                    return
                batch.decoder.step()
                now = time.perf_counter()
                due = now >= flush_at or now >= end
                self._deliver(batch, call_soon, due)
                if due:
                    flush_at = now + self.flush_s
                if now >= end:
                    return

    @staticmethod
    def _admit(batch: _Batch, call_soon: Callable) -> None:
        """The waiting rows join the decoder (a row it refuses gets its own error)."""
        while not batch.inbox.empty():
            stream = batch.inbox.get_nowait()
            try:
                batch.decoder.add(stream.tokens.row)
            except ValueError as e:
                call_soon(stream.queue.put_nowait, e)
                continue
            batch.rows.append(stream)

    @staticmethod
    def _deliver(batch: _Batch, call_soon: Callable, due: bool) -> None:
        """Hand the rows' new tokens to the event loop, in one call: every row's when ``due``, else
        only first tokens and the rows that ended (with an end mark); ended rows leave ``rows``."""
        out: list[tuple[RowStream, object]] = []
        for stream in batch.rows:
            stream.buffer += stream.tokens.take()
            done = stream.tokens.row.done
            if stream.buffer and (due or done or not stream.started):
                out.append((stream, stream.buffer))
                stream.buffer, stream.started = [], True
            if done:
                out.append((stream, _END))
        batch.rows = [s for s in batch.rows if not s.tokens.row.done]
        if out:
            call_soon(_put_all, out)


def _put_all(items: list[tuple[RowStream, object]]) -> None:
    for stream, item in items:
        stream.queue.put_nowait(item)


class ScoreBatcher:
    """Concurrent score requests to one run with the same options, scored in one
    ``LanguageModel.score_many`` call: requests that arrive while a call runs wait for the next
    one, which takes all of them. ``answer(run, requests) -> list`` builds the answers on the
    pool. A request the model refuses (a text it cannot encode, say) does not fail the others:
    the batch is then answered one request at a time."""

    def __init__(self, pool: ModelPool, answer: Callable) -> None:
        self.pool, self.answer = pool, answer
        self.pending: dict[tuple, list[tuple[object, asyncio.Future]]] = {}
        self.draining: set[tuple] = set()

    async def score(self, run: Run, key: tuple, request: object) -> object:
        future = asyncio.get_running_loop().create_future()
        self.pending.setdefault(key, []).append((request, future))
        if key not in self.draining:
            self.draining.add(key)
            asyncio.ensure_future(self._drain(run, key))
        return await future

    async def _drain(self, run: Run, key: tuple) -> None:
        try:
            while self.pending.get(key):
                items = self.pending.pop(key)
                try:
                    answers = await self.pool.call(self.answer, run, [r for r, _ in items])
                except (ValueError, TypeError):
                    answers = [await self._alone(run, r) for r, _ in items]
                except Exception as e:  # every waiting request gets the error
                    answers = [e] * len(items)
                for (_, future), answer in zip(items, answers):
                    if not future.done():
                        (future.set_exception if isinstance(answer, BaseException) else future.set_result)(answer)
        finally:
            self.draining.discard(key)

    async def _alone(self, run: Run, request: object) -> object:
        try:
            return (await self.pool.call(self.answer, run, [request]))[0]
        except Exception as e:  # handed to the request it belongs to
            return e
