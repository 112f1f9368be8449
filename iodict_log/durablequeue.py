"""DurableQueue: a queue.Queue whose items live in the record log, shared by processes.

Theory of operation
-------------------
A put appends a PUT frame holding the item (``put_many``: one batch of them).
A get, holding the store's file lock, catches up with the log, reads the
oldest pending item and appends a TAKE frame naming that PUT's sequence
number before it returns the item. Taking and recording the take happen
under the one lock, so across processes every item is delivered exactly
once; a consumer killed before its TAKE landed did not get the item, and the
next consumer will.

Every process replays PUTs and TAKEs into ``PendingItems``: the pending
PUTs in log order, which is FIFO order. Since items leave in that order,
every segment before the one holding the oldest pending item holds only
consumed items: the consumer that moves the head past a segment deletes it
(``Log.release_before``), so a queue drained as fast as it is filled keeps a
bounded size on disk without rewriting anything.

Blocking calls poll: a get that finds nothing waits, woken at once by a put
in the same object, and otherwise looks at the log again after a back-off
that grows from 1 ms to 50 ms, so an idle consumer costs ~20 cheap syscalls
a second and a put in another process is seen within ~50 ms.
"""

from __future__ import annotations

import collections
import os
import queue
import time
import warnings
from typing import Any, Iterable

from .errors import CorruptionError, CorruptionWarning
from .format import OP_PUT, OP_TAKE, SEQ, Frame
from .index import unpack_location
from .log import Log, LogHandle, check_options
from .objectlock import make_lock
from .serialize import Serializer

MAX_POLL = 0.05  # seconds between looks at the log while blocked


class PendingItems:
    """The PUTs not yet taken, oldest first: (seq, location) pairs. A log consumer."""

    __slots__ = ("_items", "live_bytes")

    def __init__(self) -> None:
        self._items: collections.deque[tuple[int, int]] = collections.deque()
        self.live_bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def reset(self) -> None:
        self._items.clear()
        self.live_bytes = 0

    def apply(self, frame: Frame, loc: int) -> None:
        if frame.op == OP_PUT:
            self.add(frame.seq, loc)
        elif frame.op == OP_TAKE and len(frame.key) == SEQ.size:
            self.remove(SEQ.unpack(frame.key)[0])

    def settle(self) -> None:
        pass  # (items are in seq order whatever was skipped)

    def add(self, seq: int, loc: int) -> None:
        self._items.append((seq, loc))
        self.live_bytes += unpack_location(loc)[2]

    def head(self) -> tuple[int, int] | None:
        return self._items[0] if self._items else None

    def remove(self, seq: int) -> None:
        """Forget the PUT with this seq: the head, except after damage reordered things."""
        items = self._items
        if not items or seq < items[0][0]:
            return  # a PUT in a segment already deleted as consumed: nothing to forget
        if items[0][0] == seq:
            self.live_bytes -= unpack_location(items.popleft()[1])[2]
            return
        for i, (pending, loc) in enumerate(items):
            if pending == seq:
                del items[i]
                self.live_bytes -= unpack_location(loc)[2]
                return


class DurableQueue(LogHandle, queue.Queue):
    """A ``queue.Queue`` kept on disk at ``path``: FIFO, crash-safe, shared by processes.

    ``semaphore`` is accepted for compatibility with iodict and not needed.
    Items are pickled by default (queue items are arbitrary objects; only
    open queues you trust), or stored with ``serializer="msgpack"``.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        lock: Any = None,
        maxsize: int = 0,
        *,
        semaphore: Any = None,
        sync: bool | float = False,
        serializer: str = "pickle",
        segment_bytes: int = 64 * 2**20,
    ) -> None:
        check_options(sync, segment_bytes)
        if not isinstance(maxsize, int) or isinstance(maxsize, bool):
            raise TypeError(f"maxsize must be an int, not {type(maxsize).__name__!r}")
        super().__init__(maxsize)
        self.path = os.fspath(path)
        self.semaphore = semaphore
        self._lock = make_lock(lock, self)
        self._serializer = Serializer(serializer)
        self._pending = PendingItems()
        self._gotten = 0  # items this object handed out and task_done() has not matched yet
        self._puts = 0  # bumped by every local put, so a waiting get never misses one
        self._waiting = 0  # threads waiting in _wait(): a put notifies only if there are any
        self._log: Log | None = None
        self._log = Log(self.path, self._pending, sync=sync, segment_bytes=segment_bytes)

    # --- plumbing ---------------------------------------------------------------

    def _try_put(self, encoded: list[tuple[int, bytes]]) -> bool:
        """Append the items as one write if they fit under maxsize."""
        if not self._write(self._append_puts, encoded):
            return False
        with self.mutex:  # (the lock of not_empty)
            self._puts += 1
            if self._waiting:
                self.not_empty.notify_all()
        return True

    def _append_puts(self, log: Log, encoded: list[tuple[int, bytes]]) -> bool:
        if 0 < self.maxsize < len(self._pending) + len(encoded):
            return False
        if len(encoded) == 1:
            flags, stored = encoded[0]
            loc = log.append_one(OP_PUT, flags, b"", stored, log.birthtime())
            self._pending.add(log.last_seq, loc)
            return True
        entries = [(OP_PUT, flags, b"", stored, log.birthtime()) for flags, stored in encoded]
        for seq, loc in log.append_batch(entries):
            self._pending.add(seq, loc)
        return True

    def _try_take(self) -> tuple[bool, Any]:
        """(True, item) after taking the oldest item, or (False, None) if there is none."""
        with self._lock:
            log = self._open_log()
            if not len(self._pending):
                log.refresh()  # without the file lock: an idle poll stays cheap
                if not len(self._pending):
                    return False, None
            with log.file_lock:
                while True:
                    log.refresh()
                    head = self._pending.head()
                    if head is None:
                        return False, None
                    seq, loc = head
                    try:
                        item = self._serializer.decode(*log.read_value(loc))
                    except CorruptionError as exc:
                        item, damaged = None, exc
                    else:
                        damaged = None
                    log.append_one(OP_TAKE, 0, SEQ.pack(seq), b"", log.birthtime())
                    self._pending.remove(seq)
                    self._release_consumed(log)
                    if damaged is None:
                        break
                    log.corrupt_records += 1
                    warnings.warn(f"{self.path}: skipped a damaged item: {damaged}", CorruptionWarning, stacklevel=4)
        with self.mutex:  # (the lock of all_tasks_done)
            self._gotten += 1
        if self.maxsize > 0:
            self._notify_not_full()
        return True, item

    def _notify_not_full(self) -> None:
        with self.not_full:
            self.not_full.notify_all()

    def _release_consumed(self, log: Log) -> None:
        """Delete the segments holding only consumed items. Best effort: the item is taken
        already, so a failure here (a full disk) is a warning, and a later get tries again."""
        following = self._pending.head()
        try:
            log.release_before(following[1] if following else None)
        except OSError as exc:
            warnings.warn(f"{self.path}: could not delete consumed segments yet: {exc}", ResourceWarning, stacklevel=5)

    def _wait(self, condition: Any, delay: float, deadline: float | None, seen: int | None = None) -> float:
        """Wait on ``condition`` for up to ``delay`` (less near the deadline); the next delay.

        Does not wait if a local put happened since ``seen``. Raises
        TimeoutError once the deadline has passed.
        """
        wait = delay if deadline is None else min(delay, deadline - time.monotonic())
        if wait <= 0:
            raise TimeoutError
        with condition:
            if seen is None or self._puts == seen:
                self._waiting += 1
                try:
                    condition.wait(wait)
                finally:
                    self._waiting -= 1
        return min(delay * 2, MAX_POLL)

    @staticmethod
    def _deadline(block: bool, timeout: float | None) -> float | None:
        if block and timeout is not None:
            if timeout < 0:
                raise ValueError("'timeout' must be a non-negative number")
            return time.monotonic() + timeout
        return None

    # --- queue.Queue ------------------------------------------------------------

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """Put ``item``; with a maxsize, wait for room (or raise queue.Full)."""
        self.put_many([item], block, timeout)

    def put_many(self, items: Iterable[Any], block: bool = True, timeout: float | None = None) -> None:
        """Put all ``items`` as one atomic batch: after a crash all of them are there or none."""
        deadline = self._deadline(block, timeout)
        encoded = [self._serializer.encode(item) for item in items]
        if not encoded:
            self._open_log()
            return
        if 0 < self.maxsize < len(encoded):
            raise ValueError(f"{len(encoded)} items can never fit in a queue of maxsize {self.maxsize}")
        delay = 0.001
        while not self._try_put(encoded):
            if not block:
                raise queue.Full
            try:
                delay = self._wait(self.not_full, delay, deadline)
            except TimeoutError:
                raise queue.Full from None

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Remove and return the oldest item; wait for one (or raise queue.Empty)."""
        deadline = self._deadline(block, timeout)
        delay = 0.001
        while True:
            seen = self._puts
            found, item = self._try_take()
            if found:
                return item
            if not block:
                raise queue.Empty
            try:
                delay = self._wait(self.not_empty, delay, deadline, seen)
            except TimeoutError:
                raise queue.Empty from None

    def qsize(self) -> int:
        """Items put and not yet taken, by any process."""
        return self._read(lambda log: len(self._pending))

    def empty(self) -> bool:
        return self.qsize() == 0

    def full(self) -> bool:
        return 0 < self.maxsize <= self.qsize()

    def task_done(self) -> None:
        """Mark an item this object got as processed."""
        with self.all_tasks_done:
            if self._gotten <= 0:
                raise ValueError("task_done() called too many times")
            self._gotten -= 1
            if self._gotten == 0:
                self.all_tasks_done.notify_all()

    def join(self) -> None:
        """Wait until the queue is empty (in every process's view) and every item this
        object got has been marked with task_done()."""
        delay = 0.001
        while True:
            empty = self.empty()
            with self.all_tasks_done:
                if empty and self._gotten == 0:
                    return
                self.all_tasks_done.wait(delay)
            delay = min(delay * 2, MAX_POLL)

    # --- beyond queue.Queue -------------------------------------------------------

    def stats(self) -> dict:
        """items, segments, disk_bytes, corrupt_records."""
        return self._read(self._stats)

    def _stats(self, log: Log) -> dict:
        stats = log.stats()
        return {
            "items": len(self._pending),
            "segments": stats["segments"],
            "disk_bytes": stats["disk_bytes"],
            "corrupt_records": stats["corrupt_records"],
        }
