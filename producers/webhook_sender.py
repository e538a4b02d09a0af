"""Blocking work for the event loop, done by a few long-lived threads that batch what they are given.

The receiver's Redis client and Dramatiq broker block, so they must not run on the event loop. A
generic thread pool hop costs more CPU than the work itself at webhook rates, and every delivery
would pay its own round trips; here each thread takes whatever has queued up (up to
``max_batch`` items) and hands all deliveries of the batch to one call, which pipelines their
Redis commands. Results come back to the loop with one wake-up per batch.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

__all__ = ["BatchSender"]

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")
T = TypeVar("T")

#: How long :meth:`BatchSender.close` waits for each thread, seconds.
_JOIN_SECONDS = 10.0


@dataclass
class _Job:
    future: asyncio.Future[Any]
    item: Any = None
    call: Callable[[], Any] | None = None


class _Stop:
    """Tells one thread to finish."""


def _settle(outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for future, result, error in outcomes:
        if future.done():  # the request was cancelled (client gone); its work was done anyway
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


class BatchSender(Generic[ItemT, ResultT]):
    """Runs ``handle_batch`` on batches of items, and single calls, in ``threads`` daemon threads.

    Args:
        handle_batch: blocking; takes a batch of items and returns one result per item, in order.
        threads: worker threads (started on first use).
        max_batch: most items handed to one ``handle_batch`` call.
    """

    def __init__(
        self,
        handle_batch: Callable[[Sequence[ItemT]], list[ResultT]],
        *,
        threads: int = 2,
        max_batch: int = 64,
    ) -> None:
        if threads < 1 or max_batch < 1:
            raise ValueError("threads and max_batch must be at least 1")
        self._handle_batch = handle_batch
        self._thread_count = threads
        self._max_batch = max_batch
        self._jobs: queue.SimpleQueue[_Job | _Stop] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = False

    async def submit(self, item: ItemT) -> ResultT:
        """Handle ``item`` in the next batch; returns its result (or raises what the batch raised)."""
        future: asyncio.Future[ResultT] = asyncio.get_running_loop().create_future()
        self._put(_Job(future, item=item))
        return await future

    async def call(self, function: Callable[[], T]) -> T:
        """Run ``function`` in a sender thread; returns its result or raises its exception."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._put(_Job(future, call=function))
        return await future

    def close(self) -> None:
        """Let the threads finish what is queued, then stop them."""
        with self._lock:
            self._closed = True
            threads, self._threads = self._threads, []
        stops = [_Stop() for _ in threads]
        for stop in stops:
            self._jobs.put(stop)
        for thread in threads:
            thread.join(timeout=_JOIN_SECONDS)

    def _put(self, job: _Job) -> None:
        if not self._threads:
            self._start()
        self._jobs.put(job)

    def _start(self) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("the sender is closed")
            while len(self._threads) < self._thread_count:
                thread = threading.Thread(
                    target=self._run, name=f"possync-webhook-sender-{len(self._threads)}", daemon=True
                )
                thread.start()
                self._threads.append(thread)

    def _run(self) -> None:
        while True:
            first = self._jobs.get()
            if isinstance(first, _Stop):
                return
            batch = [first]
            stop: _Stop | None = None
            while len(batch) < self._max_batch:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if isinstance(job, _Stop):
                    stop = job
                    break
                batch.append(job)
            self._process(batch)
            if stop is not None:
                return

    def _process(self, batch: list[_Job]) -> None:
        outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        items = [job for job in batch if job.call is None]
        for job in batch:
            if job.call is not None:
                try:
                    outcomes.append((job.future, job.call(), None))
                except Exception as exc:  # noqa: BLE001 (handed to the awaiting request)
                    outcomes.append((job.future, None, exc))
        if items:
            try:
                results = self._handle_batch([job.item for job in items])
                outcomes.extend(
                    (job.future, result, None) for job, result in zip(items, results, strict=True)
                )
            except Exception as exc:  # noqa: BLE001 (handed to the awaiting requests)
                outcomes.extend((job.future, None, exc) for job in items)
        # One wake-up of each loop per batch (requests of one app share one loop).
        by_loop: dict[
            asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any, BaseException | None]]
        ] = {}
        for outcome in outcomes:
            by_loop.setdefault(outcome[0].get_loop(), []).append(outcome)
        for loop, settled in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle, settled)
            except RuntimeError:
                # The loop is closed: nobody is waiting any more.
                continue
