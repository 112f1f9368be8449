"""FlushQueue: a mixin that parks the items of an in-memory queue on disk and brings them back.

As in iodict: a class that inherits from ``queue.Queue`` (or a subclass) and
``FlushQueue`` and sets ``self.path``, ``self.lock`` and ``self.semaphore``
gets ``flush()`` and ``ingest()``. The parked items are a DurableQueue at
``path``: they survive the process ending, a flush is one atomic batch, and a
damaged item is skipped with a warning instead of costing the items after it
(iodict lost every item after a damaged one).
"""

from __future__ import annotations

import queue
from typing import Any

from .durablequeue import DurableQueue


class FlushQueue:
    """Adds flush() and ingest() to a queue.Queue subclass that sets path, lock and semaphore."""

    path: Any
    lock: Any
    semaphore: Any

    def _parking(self) -> DurableQueue:
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

    def ingest(self) -> None:
        """Put the parked items back into the queue, oldest first, and remove them from disk."""
        with self._parking() as parked:
            while True:
                try:
                    item = parked.get_nowait()
                except queue.Empty:
                    return
                self.put(item)
                parked.task_done()
