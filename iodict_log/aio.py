"""asyncio: a DurableQueue shaped like ``asyncio.Queue``, whose waits never block the loop.

How it waits
------------
Every call runs the blocking queue's one-try form on the loop's thread
(``put(block=False)``, ``get(block=False)``, ``lease(block=False)``): one try
for the store's write lock, a catch-up with the log and one append, all
microseconds of local file I/O, with no wait anywhere. When that try finds
nothing (or the queue full, or another process holding the lock at that
instant), the coroutine sleeps on the loop (``asyncio.sleep``) and tries
again, with the blocking API's back-off: from 1 ms up to MAX_POLL (50 ms). So
a put in another process is seen within ~50 ms, as by a blocking ``get()``; a
put through this object wakes its waiting getters at once (an
``asyncio.Event``), and an idle waiter costs ~20 cheap tries a second. No
thread is started, and cancelling a waiting coroutine leaves nothing behind:
an item is taken only by a try that returns it.

A ``Lease`` is the blocking API's: its ``ack()``, ``release()`` and
``extend()`` are one append each, run on the loop's thread like a try.

``follow(store, start)`` follows as ``records(start, follow=True)`` does
(streams.py: snapshots, then looks at the log with pauses from 1 ms up to
10 ms, each look one read of LOCK's change counter while nothing changed),
with the pauses slept on the loop. Reading a snapshot is synchronous file I/O
on the loop's thread, one segment chunk at a time; it gives the loop a turn
every FOLLOW_TURN records.
"""

from __future__ import annotations

import asyncio
import os
import queue
import time
from typing import Any, AsyncIterator, Callable, Iterable, TypeVar

from .durablequeue import MAX_POLL, Lease
from .durablequeue import DurableQueue as _BlockingQueue
from .log import LogHandle
from .streams import Record, check_start, check_timeout, pauses

T = TypeVar("T")

__all__ = ["DurableQueue", "follow"]

FOLLOW_TURN = 256  # records a follower yields before it gives the loop a turn


class DurableQueue:
    """An ``asyncio.Queue`` look-alike on a store (the options are DurableQueue's):
    ``await put/get/join/lease``, ``put_nowait``/``get_nowait``, ``task_done``,
    ``qsize``, ``empty``, ``full``. It raises ``asyncio.QueueEmpty`` and
    ``asyncio.QueueFull`` as ``asyncio.Queue`` does. ``sync`` is the blocking
    DurableQueue underneath, for everything else (stats, dead letters, close)."""

    def __init__(self, path: str | os.PathLike, maxsize: int = 0, **options: Any) -> None:
        self.sync = _BlockingQueue(path, maxsize=maxsize, **options)
        # Set by a put through this object, to wake its waiting getters; made by a wait, for
        # the loop it runs on (an Event serves one loop, and asyncio.run makes a new one).
        self._put_here: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def maxsize(self) -> int:
        return self.sync.maxsize

    def qsize(self) -> int:
        return self.sync.qsize()

    def empty(self) -> bool:
        return self.sync.empty()

    def full(self) -> bool:
        return self.sync.full()

    def put_nowait(self, item: Any) -> None:
        """Put ``item`` now, or raise asyncio.QueueFull (no room, or the write lock busy)."""
        self._put_now([item])

    def _put_now(self, batch: list[Any]) -> None:
        try:
            self.sync.put_many(batch, block=False)  # (what put(block=False) does too)
        except queue.Full:
            raise asyncio.QueueFull from None
        self._wake()

    async def put(self, item: Any) -> None:
        """Put ``item``, waiting on the loop for room."""
        await self._until(lambda: self.put_nowait(item), asyncio.QueueFull)

    async def put_many(self, items: Iterable[Any]) -> None:
        """Put all ``items`` as one atomic batch, waiting on the loop for room."""
        batch = list(items)
        await self._until(lambda: self._put_now(batch), asyncio.QueueFull)

    def get_nowait(self) -> Any:
        """Remove and return the oldest item, or raise asyncio.QueueEmpty."""
        try:
            return self.sync.get(block=False)
        except queue.Empty:
            raise asyncio.QueueEmpty from None

    async def get(self) -> Any:
        """Remove and return the oldest item, waiting on the loop for one."""
        return await self._until(self.get_nowait, asyncio.QueueEmpty)

    async def lease(self, timeout: float | None = None) -> Lease:
        """Deliver the oldest item on lease (DurableQueue.lease), waiting on the loop;
        asyncio.TimeoutError after ``timeout`` seconds without one."""

        def attempt() -> Lease:
            try:
                return self.sync.lease(block=False)
            except queue.Empty:
                raise asyncio.QueueEmpty from None

        return await asyncio.wait_for(self._until(attempt, asyncio.QueueEmpty), timeout)

    def task_done(self) -> None:
        self.sync.task_done()

    async def join(self) -> None:
        """Wait on the loop until the queue is empty (in every process's view) and every
        item this object got has been marked with task_done()."""
        delay = 0.001
        while not (self.sync.empty() and self.sync._gotten == 0):
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_POLL)

    def close(self) -> None:
        self.sync.close()

    async def __aenter__(self) -> DurableQueue:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def _wake(self) -> None:
        if self._put_here is not None:
            self._put_here.set()

    async def _until(self, attempt: Callable[[], T], retry: type[Exception]) -> T:
        """attempt() until it does not raise ``retry``, sleeping on the loop between tries
        (the module docstring): woken at once by a put through this object."""
        loop = asyncio.get_running_loop()
        if self._put_here is None or self._loop is not loop:
            self._put_here, self._loop = asyncio.Event(), loop
        put_here, delay = self._put_here, 0.001
        while True:
            put_here.clear()
            try:
                return attempt()
            except retry:
                pass
            try:
                await asyncio.wait_for(put_here.wait(), delay)
            except asyncio.TimeoutError:
                delay = min(delay * 2, MAX_POLL)


async def follow(
    store: LogHandle | DurableQueue, start: int = 0, *, timeout: float | None = None
) -> AsyncIterator[Record]:
    """``async for record in follow(store, start)``: what ``store.records(start, follow=True,
    timeout=timeout)`` yields, waiting on the loop (the module docstring). ``store`` is an
    IODict, a DurableQueue, or this module's DurableQueue."""
    source: LogHandle = store.sync if isinstance(store, DurableQueue) else store
    next_seq = check_start(start)
    timeout = check_timeout(timeout)
    quiet_since = time.monotonic()
    while True:
        last, records = source._snapshot(next_seq)
        for count, record in enumerate(records, 1):
            yield record
            quiet_since = time.monotonic()
            if count % FOLLOW_TURN == 0:
                await asyncio.sleep(0)
        next_seq = max(next_seq, last + 1)
        for pause in pauses(quiet_since, timeout):
            if source._last_seq() >= next_seq:
                break
            await asyncio.sleep(pause)
        else:
            return
