"""FlushQueue: a mixin that parks the items of an in-memory queue on disk and brings them back.

As in iodict: a class that inherits from ``queue.Queue`` (or a subclass) and
``FlushQueue`` and sets ``self.path``, ``self.lock`` and ``self.semaphore``
(itself, or by calling ``FlushQueue.__init__(self, path, lock, semaphore)``)
gets ``flush()`` and ``ingest()``. The parked items are a DurableQueue at
``path``: they survive the process ending, a flush is one atomic batch, and a
damaged item is skipped with a warning instead of costing the items after it
(iodict lost every item after a damaged one).

An item leaves the disk only once it is in the queue: ingest() holds the
parked queue's lock while it hands the oldest item to ``put_nowait`` and only
then records the take, so a process killed in between leaves the item parked
(delivered again by the next ingest: at least once, never lost). A full queue
stops ingest(), which leaves the rest parked rather than block while holding
an item nobody else can have.
"""

from __future__ import annotations

import os
import queue
from typing import Any, Callable

from .durablequeue import DurableQueue
from .fileops import store_path


class FlushQueue:
    """Adds flush() and ingest() to a queue.Queue subclass that sets path, lock and semaphore."""

    path: Any
    lock: Any
    semaphore: Any
    # What the queue.Queue it is mixed into provides:
    get_nowait: Callable[[], Any]
    put_nowait: Callable[[Any], None]
    task_done: Callable[[], None]

    def __init__(self, path: str | os.PathLike, lock: Any = None, semaphore: Any = None) -> None:
        """Set path, lock and semaphore, as iodict's FlushQueue did: a host class may call
        ``FlushQueue.__init__(self, path)`` instead of setting them. Like iodict's, it
        does not initialise the queue: the host class does that."""
        self.path = path
        self.lock = lock
        self.semaphore = semaphore

    def _parking(self) -> DurableQueue:
        """The parked items (IODictLogError, before anything moves, if ``path`` holds a dict store)."""
        return DurableQueue(self.path, lock=getattr(self, "lock", None), semaphore=getattr(self, "semaphore", None))

    def flush(self) -> None:
        """Move every item now in the queue to disk, in order; the queue is left empty."""
        items = []
        while True:
            try:
                items.append(self.get_nowait())
            except queue.Empty:
                break
        if not items:
            return
        try:
            with self._parking() as parked:
                parked.put_many(items)  # one batch: after a crash all are parked or none
        except BaseException:
            for item in items:  # nothing was parked: give the items back...
                self.put_nowait(item)
                self.task_done()  # ...without counting them as new unfinished tasks
            raise
        for _ in items:
            self.task_done()  # parked counts as handled, so join() does not wait on them

    def ingest(self) -> int:
        """Put the parked items back into the queue, oldest first, removing each from disk
        once it is in; how many.

        Never blocks on a full queue: it stops there, leaving the rest parked for
        a later ingest(). Nothing parked at a ``path`` that does not exist: a no-op
        that creates nothing.
        """
        if not os.path.exists(store_path(self.path)):
            return 0
        moved = 0
        with self._parking() as parked:
            try:
                while parked._try_take(None, self.put_nowait)[0]:
                    moved += 1
            except queue.Full:
                pass
        return moved
