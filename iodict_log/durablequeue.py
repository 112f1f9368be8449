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

An item at the head that fails its checksum is taken (TAKE), counted and
warned about. An intact item that cannot be decoded (its class no longer
imports, forged bytes) is a poison item: the get appends a DEAD frame naming
it, under the same lock, and goes on to the next item. The item leaves the
ready items but its PUT stays on disk, as a dead letter, until
``retry_dead_letters()`` re-PUTs its bytes at the end of the queue and TAKEs
the dead one, all in one batch.

Every process replays PUTs, TAKEs and DEADs into ``PendingItems``: the ready
PUTs in log order, which is FIFO order, and the dead letters. It holds the
oldest ready items and reads the rest of the backlog back from the log as
they come up (pending.py), so a backlog of any length costs a window of
memory. Since items leave in that order, every segment before the one
holding the oldest ready item or dead letter holds only consumed items: the
consumer that moves past a segment deletes it (``Log.release_before``), so a
queue drained as fast as it is filled keeps a bounded size on disk without
rewriting anything. Closing, rolling to a new segment and deleting consumed
ones leave a checkpoint of that state (checkpoint.py), so that opening reads
the state and what was appended after it, not the whole backlog.

Waiting for the file lock honours the caller's deadline: ``block=False`` is
one try, ``timeout=`` a deadline, and a lock not free in time (another
process stopped or slow inside a call) means queue.Empty or queue.Full.
Blocking calls poll: a get that finds nothing waits, woken at once by a put
in the same object, and otherwise looks at the log again after a back-off
that grows from 1 ms to 50 ms, so an idle consumer costs ~20 cheap syscalls
a second and a put in another process is seen within ~50 ms.

``lease()`` delivers without consuming: the item stays on disk until its
lease is acked, and comes back if it is released, its holder dies or its
``lease_timeout`` passes (leases.py says how, holders.py how a death is seen).
A get or a lease delivers the oldest ready item, a held item that came back
before any item never delivered; an item delivered ``max_deliveries`` times
goes to the dead letters instead of out again. The C core's get and lease
deliver only the oldest never-delivered item, after ``LeasedItems.reclaim``
has judged that no held item is back first; its ack only a current lease.

After ``os.fork()`` the child replaces the queue's mutex and conditions:
another thread of the parent may have held the mutex at the fork, and no
thread of the child would ever release it. It also forgets the leases this
object took in the parent: they stay the parent's (holders.py), so closing the
child's copy does not hand them back (a Lease object the child inherited may
still be acked there: an ack checks that the lease is current, not who calls).
"""

from __future__ import annotations

import os
import queue
import threading
import time
import warnings
import weakref
from typing import Any, Callable, Iterable, Iterator

from . import fileops
from .errors import CorruptionError, CorruptionWarning, IODictLogError, LeaseExpiredError
from .format import FLAG_BATCH, FLAG_PICKLE, LEASE, OP_DEAD, OP_LEASE, OP_PUT, OP_RELEASE, OP_TAKE, RELEASE, SEQ
from .holders import Holders
from .leases import LeasedItems
from .log import Entry, Log, LogHandle, check_options
from .native import core
from .objectlock import make_lock
from .pending import DeadLetter, PendingItems
from .serialize import Serializer
from .streams import Record

MAX_POLL = 0.05  # seconds between looks at the log while blocked
CLOSE_WAIT = 0.5  # seconds close() waits for the write lock to leave a checkpoint
# The C core's put, get and lease of one item with no deadline, and ack (_durablequeue.c):
# they answer NotImplemented, having changed nothing, whenever the Python path below must run.
_put_one, _get_one, _lease_one, _ack_one = (
    (core.queue_put, core.queue_get, core.queue_lease, core.queue_ack) if core is not None else (None,) * 4
)


_queues: weakref.WeakValueDictionary[int, DurableQueue] = weakref.WeakValueDictionary()  # by id(): may be unhashable


def _renew_conditions_in_child() -> None:
    for q in list(_queues.values()):
        q._renew_conditions()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_renew_conditions_in_child)


class DurableQueue(LogHandle, queue.Queue):
    """A ``queue.Queue`` kept on disk at ``path``: FIFO, crash-safe, shared by processes.

    ``semaphore`` is accepted for compatibility with iodict and not needed; so is
    a semaphore (or ``multiprocessing.Semaphore``) as the third positional
    argument, where iodict took it. A pickled queue reopens ``path`` with the same
    options in whichever process unpickles it (``__reduce__``).
    Items are pickled by default (queue items are arbitrary objects; only
    open queues you trust), or stored with ``serializer="msgpack"``.
    ``block=False`` and ``timeout`` bound the wait for the store's write lock
    too: queue.Empty / queue.Full when another process holds it past the
    deadline (so an unbounded queue's put may raise queue.Full). An item that
    cannot be decoded goes to ``dead_letters()`` (with a RuntimeWarning)
    instead of blocking the queue.

    ``lease()`` hands an item out until it is acked: ``lease_timeout``
    (seconds) bounds how long a lease lasts without ``extend()``, and an item
    delivered ``max_deliveries`` times without an ack becomes a dead letter.

    ``readonly=True`` opens without ever changing the directory (CONTRACT §12):
    qsize, empty, stats and dead_letters follow other processes; put, put_many,
    get, lease and retry_dead_letters (which consume or add) raise ReadOnlyError.
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
        max_open_segments: int = 32,
        lease_timeout: float | None = None,
        max_deliveries: int | None = None,
        readonly: bool = False,
    ) -> None:
        check_options(sync, segment_bytes, max_open_segments)
        maxsize, semaphore = _maxsize_and_semaphore(maxsize, semaphore)
        if lease_timeout is not None:
            _check_seconds("lease_timeout", lease_timeout, zero=False)
        if max_deliveries is not None and (type(max_deliveries) is not int or max_deliveries < 1):
            raise ValueError(f"max_deliveries must be None or an int >= 1, not {max_deliveries!r}")
        self.lease_timeout = lease_timeout
        self.max_deliveries = max_deliveries
        self._options: dict[str, Any] = {  # what a pickle reopens it with, besides maxsize and the lease options
            "sync": sync,
            "serializer": serializer,
            "segment_bytes": segment_bytes,
            "max_open_segments": max_open_segments,
            "readonly": readonly,
        }
        super().__init__(maxsize)
        self.path = fileops.store_path(path)
        self.semaphore = semaphore
        self._lock = make_lock(lock, self)
        self._serializer = Serializer(serializer)
        self._pending = PendingItems(self.path)
        self._leases = LeasedItems(self._pending, Holders(self.path, readonly=readonly))
        self._held = self._leases.held  # (what the C core's get looks at: it runs only while empty)
        self._lent: set[tuple[int, int]] = set()  # (id, delivery) of the leases this object holds
        self._gotten = 0  # items this object handed out and task_done() has not matched yet
        self._puts = 0  # bumped by every local put, so a waiting get never misses one
        self._waiting = 0  # threads waiting in _wait(): a put notifies only if there are any
        self._log: Log | None = None
        self._log = Log(
            self.path,
            self._leases,
            sync=sync,
            segment_bytes=segment_bytes,
            checkpoints=True,
            kind="queue",
            max_open_segments=max_open_segments,
            readonly=readonly,
        )
        _queues[id(self)] = self

    def _reopen_options(self) -> dict[str, Any]:
        """LogHandle.__reduce__'s options. The other process gets its own object: not this
        one's lock or semaphore (it makes its own), leases or unfinished-task count."""
        return dict(
            self._options,
            maxsize=self.maxsize,
            lease_timeout=self.lease_timeout,
            max_deliveries=self.max_deliveries,
        )

    # --- plumbing ---------------------------------------------------------------

    def _renew_conditions(self) -> None:
        """In a forked child: new mutex and conditions, since a thread of the parent may have
        held the mutex at the fork (inside put or get) and none of the child's ever will."""
        self.mutex = threading.Lock()
        self.not_empty = threading.Condition(self.mutex)
        self.not_full = threading.Condition(self.mutex)
        self.all_tasks_done = threading.Condition(self.mutex)
        self._waiting = 0  # (the parent's waiting threads are not in the child)
        self._lent.clear()  # (the parent's leases: its close releases them, not ours)

    def _try_put(self, encoded: list[tuple[int, bytes]], deadline: float | None) -> bool:
        """Append the items as one write if they fit under maxsize."""
        if not self._write(self._append_puts, encoded, deadline=deadline):
            return False
        self._announce_puts()
        return True

    def _announce_puts(self) -> None:
        """Wake this object's waiting gets: items were put."""
        with self.mutex:  # (the lock of not_empty)
            self._puts += 1
            if self._waiting:
                self.not_empty.notify_all()

    def _append_puts(self, log: Log, encoded: list[tuple[int, bytes]]) -> bool:
        if 0 < self.maxsize < len(self._leases) + len(encoded):
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

    def _try_take(
        self, deadline: float | None, hand: Callable[[Any], None] | None = None, lease: bool = False
    ) -> tuple[bool, Any]:
        """(True, item) after taking the oldest item, or (False, None) if there is none;
        with ``lease``, (True, a Lease of it) after leasing it instead.

        With ``hand``, the item is passed to it before it is taken, holding the
        lock: if ``hand`` raises, the item stays. Waiting for the file lock past
        ``deadline`` raises LockTimeoutError.
        """
        with self._lock:
            log = self._open_log()
            log.file_lock.deadline = deadline
            try:
                found, item = self._take(log, hand, lease)
            finally:
                log.file_lock.deadline = None
        if found and self.maxsize > 0:
            self._notify_not_full()
        return found, item

    def _take(self, log: Log, hand: Callable[[Any], None] | None, lease: bool) -> tuple[bool, Any]:
        leases = self._leases
        leases.reclaim()
        if not len(leases):
            log.refresh()  # without the file lock: an idle poll stays cheap
            leases.reclaim()
            if not len(leases):
                return False, None
        with log.file_lock:
            while True:
                log.refresh()
                leases.reclaim()
                seq, loc, delivered = self._oldest_ready()
                if not seq:
                    return False, None
                if self.max_deliveries is not None and delivered >= self.max_deliveries:
                    self._settle(log, OP_DEAD, seq)  # (delivered enough: a dead letter, not out again)
                    continue
                try:
                    flags, stored = log.read_value(loc)
                except CorruptionError as exc:
                    self._settle(log, OP_TAKE, seq)
                    log.corrupt_records += 1
                    warnings.warn(f"{self.path}: skipped a damaged item: {exc}", CorruptionWarning, stacklevel=4)
                    continue
                try:
                    item = self._serializer.decode(flags, stored)
                except Exception as exc:
                    if flags & FLAG_PICKLE and not self._serializer.flag:
                        raise  # this object refuses pickle: a setting to change, not a poison item
                    self._settle(log, OP_DEAD, seq)
                    error = " ".join(f"{type(exc).__name__}: {exc}".split())  # (one line)
                    warnings.warn(
                        f"{self.path}: item {seq} cannot be decoded, moved to the dead letters: {error}",
                        RuntimeWarning,
                        stacklevel=4,
                    )
                    continue
                if hand is not None:
                    hand(item)
                if lease:
                    return True, self._lend(log, seq, delivered + 1, item)
                self._settle(log, OP_TAKE, seq)
                return True, item

    def _oldest_ready(self) -> tuple[int, int, int]:
        """(seq, location, deliveries so far) of the oldest item ready for delivery: a held
        item that came back, else the oldest never delivered; (0, 0, 0) if there is none."""
        back, head = self._leases.first_back(), self._pending.head()
        if back is not None and (head is None or back[0] < head[0]):
            return back[0], back[1].loc, back[1].deliveries
        return (head[0], head[1], 0) if head is not None else (0, 0, 0)

    def _settle(self, log: Log, op: int, seq: int) -> None:
        """Record that the ready or held item ``seq`` was taken (OP_TAKE: got, acked, or
        damaged) or is dead (OP_DEAD)."""
        log.append_one(op, 0, SEQ.pack(seq), b"", log.birthtime())
        if seq in self._held:
            self._leases.settle_held(seq, op == OP_DEAD)
        elif op == OP_TAKE:
            self._pending.remove(seq)
        else:
            self._pending.bury(seq)
        self._release_consumed(log)

    # --- leases -------------------------------------------------------------------

    def _lend(self, log: Log, seq: int, delivery: int, item: Any) -> Lease:
        """Append the LEASE of ``seq``'s delivery number ``delivery``, held by this process."""
        holder = self._leases.holders.own()
        self._append_lease(log, seq, holder, _expiry(self.lease_timeout), delivery)
        self._lent.add((seq, delivery))
        return Lease(self, item, seq, delivery, holder)

    def _append_lease(self, log: Log, seq: int, holder: int, expiry: int, delivery: int) -> None:
        """A LEASE of ``seq``: a delivery, or an extension of one (the same ``delivery``)."""
        log.append_one(OP_LEASE, 0, SEQ.pack(seq), LEASE.pack(holder, expiry, delivery), log.birthtime())
        self._leases.leased(seq, holder, expiry, delivery)

    def _append_release(self, log: Log, seq: int, due: int) -> None:
        """A RELEASE of the held item ``seq``: deliverable again from ``due`` (ns; 0: at once)."""
        log.append_one(OP_RELEASE, 0, SEQ.pack(seq), RELEASE.pack(due), log.birthtime())
        self._leases.released(seq, due)

    def _current(self, lease: Lease) -> None:
        """LeaseExpiredError unless ``lease`` is still its item's lease (on caught-up state)."""
        if not self._leases.is_current(lease.id, lease._holder, lease.deliveries):
            self._lent.discard((lease.id, lease.deliveries))
            raise LeaseExpiredError(
                f"{self.path}: the lease of item {lease.id} (delivery {lease.deliveries}) has come back "
                "(timed out, released, acked, or judged its holder's death); nothing was changed"
            )

    def _end_lease(self, lease: Lease, op: int, due: int = 0) -> None:
        def end(log: Log) -> None:
            self._current(lease)
            if op == OP_TAKE:
                self._settle(log, OP_TAKE, lease.id)
            else:
                self._append_release(log, lease.id, due)
            self._lent.discard((lease.id, lease.deliveries))

        self._write(end)
        if op == OP_RELEASE and not due:
            self._announce_puts()  # (ready again at once: wake this object's waiting consumers)

    def _extend_lease(self, lease: Lease, seconds: float | None) -> None:
        def extend(log: Log) -> None:
            self._current(lease)
            expiry = _expiry(seconds if seconds is not None else self.lease_timeout)
            self._append_lease(log, lease.id, lease._holder, expiry, lease.deliveries)

        self._write(extend)

    def _notify_not_full(self) -> None:
        with self.not_full:
            self.not_full.notify_all()

    def _release_consumed(self, log: Log) -> None:
        """Delete the segments holding only consumed items. Best effort: the item is taken
        already, so a failure here (a full disk) is a warning, and a later get tries again.
        Never in a store that also holds dict records: those are not the queue's to drop."""
        if self._pending.other_frames:
            return
        try:
            log.release_before(self._leases.oldest())
        except OSError as exc:
            warnings.warn(f"{self.path}: could not delete consumed segments yet: {exc}", ResourceWarning, stacklevel=6)

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
        """The time.monotonic() a call must end by: now for ``block=False`` (one try)."""
        if not block:
            return time.monotonic()
        if timeout is not None:
            if timeout < 0:
                raise ValueError("'timeout' must be a non-negative number")
            return time.monotonic() + timeout
        return None

    # --- queue.Queue ------------------------------------------------------------

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """Put ``item``; with a maxsize, wait for room (or raise queue.Full)."""
        self._refuse_writes()
        if (
            _put_one is not None
            and block
            and timeout is None
            and not self.maxsize
            and _put_one(self, item) is not NotImplemented
        ):
            return
        self.put_many([item], block, timeout)

    def put_many(self, items: Iterable[Any], block: bool = True, timeout: float | None = None) -> None:
        """Put all ``items`` as one atomic batch: after a crash all of them are there or none."""
        self._refuse_writes()
        deadline = self._deadline(block, timeout)
        encoded = [self._serializer.encode(item) for item in items]
        if not encoded:
            self._open_log()
            return
        if 0 < self.maxsize < len(encoded):
            raise ValueError(f"{len(encoded)} items can never fit in a queue of maxsize {self.maxsize}")
        delay = 0.001
        try:
            while not self._try_put(encoded, deadline):
                if not block:
                    raise queue.Full
                delay = self._wait(self.not_full, delay, deadline)
        except TimeoutError:  # (LockTimeoutError too: the write lock was not free in time)
            raise queue.Full from None

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Remove and return the oldest item; wait for one (or raise queue.Empty)."""
        self._refuse_writes()  # (a get consumes)
        if _get_one is not None and block and timeout is None:
            item = _get_one(self)
            if item is not NotImplemented:
                return item
        item = self._deliver(block, timeout, False)
        with self.mutex:  # (the lock of all_tasks_done)
            self._gotten += 1
        return item

    def lease(self, block: bool = True, timeout: float | None = None) -> Lease:
        """Deliver the oldest item on lease, without consuming it; wait for one (or raise
        queue.Empty). ``ack()`` the Lease when done; until then the item comes back if
        it is released, this process dies, or ``lease_timeout`` passes."""
        self._refuse_writes()
        if _lease_one is not None and block and timeout is None:
            lease = _lease_one(self, Lease)
            if lease is not NotImplemented:
                return lease  # type: ignore[no-any-return]
        lease = self._deliver(block, timeout, True)
        return lease

    def _deliver(self, block: bool, timeout: float | None, lease: bool) -> Any:
        deadline = self._deadline(block, timeout)
        delay = 0.001
        try:
            while True:
                seen = self._puts
                found, item = self._try_take(deadline, lease=lease)
                if found:
                    return item
                if not block:
                    raise queue.Empty
                delay = self._wait(self.not_empty, delay, deadline, seen)
        except TimeoutError:  # (LockTimeoutError too: the write lock was not free in time)
            raise queue.Empty from None

    def qsize(self) -> int:
        """Items ready for delivery (never delivered, or back from a lease), in every process's view."""
        return self._read(self._ready)

    def _ready(self, log: Log) -> int:
        self._leases.reclaim()
        return len(self._leases)

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

    def dead_letters(self) -> list[DeadLetter]:
        """The items that could not be decoded, oldest first (by the place they had)."""
        return self._read(self._dead_letters)

    def _dead_letters(self, log: Log) -> list[DeadLetter]:
        letters = []
        for seq, loc in self._pending.dead_letters():
            try:
                value: tuple[int, bytes] | CorruptionError = log.read_value(loc)
            except CorruptionError as exc:
                value = exc
            letters.append(DeadLetter(seq, value, self._serializer, self._leases.deliveries.get(seq, 1)))
        return letters

    def retry_dead_letters(self) -> int:
        """Put every dead letter back at the end of the queue, in their order; how many.

        One batch re-PUTs each one's stored bytes and TAKEs its dead PUT, so after
        a crash all are back or none. maxsize does not hold them back. A dead
        letter whose bytes fail their checksum meanwhile is dropped with a
        CorruptionWarning (counted), like a damaged item at the head.
        """
        self._refuse_writes()
        count = self._write(self._retry)
        if count:
            self._announce_puts()
        return count

    def _retry(self, log: Log) -> int:
        entries: list[Entry] = []
        for seq, loc in self._pending.dead_letters():
            try:
                flags, stored = log.read_value(loc)
            except CorruptionError as exc:
                log.corrupt_records += 1
                warnings.warn(f"{self.path}: dropped a damaged dead letter: {exc}", CorruptionWarning, stacklevel=4)
            else:
                entries.append((OP_PUT, flags & ~FLAG_BATCH, b"", stored, log.birthtime()))
            entries.append((OP_TAKE, 0, SEQ.pack(seq), b"", log.birthtime()))
        if not entries:
            return 0
        count = 0
        for (op, _, key, _, _), (seq, loc) in zip(entries, log.append_batch(entries)):
            if op == OP_PUT:
                self._pending.add(seq, loc)
                count += 1
            else:
                seq = SEQ.unpack(key)[0]
                self._pending.remove(seq)
                self._leases.deliveries.pop(seq, None)
        self._release_consumed(log)
        return count

    def _before_close(self, log: Log) -> None:
        """Hand back the leases this object holds (no one could ack them now), and leave a
        checkpoint of the queue's state, so that the next open need not replay the backlog.
        Best effort: skipped if the write lock is not free in CLOSE_WAIT (the leases then
        come back when this process ends, or their lease_timeout passes). Nothing when read-only."""
        if log.readonly:
            return
        lock = log.file_lock
        lock.deadline = time.monotonic() + CLOSE_WAIT
        try:
            with lock:
                log.refresh()
                holder = self._leases.holders.own() if self._lent else 0
                for seq, delivery in sorted(self._lent):
                    if self._leases.is_current(seq, holder, delivery):
                        self._append_release(log, seq, 0)
                self._lent.clear()
                log.checkpoint(if_changed=True)
        except (OSError, IODictLogError):  # (LockTimeoutError too: the next open scans instead)
            pass
        finally:
            lock.deadline = None

    def _snapshot(self, start: int) -> tuple[int, Iterator[Record]]:
        """records(): the log's last seq now, and the puts up to it from seq ``start``, as
        ``Record(seq, birthtime, "put", None, item)``, consumed or not (it consumes nothing)."""
        last, frames = self._read(lambda log: (log.last_seq, log.frames(start)))
        decode = self._serializer.decode
        return last, (
            Record(f.seq, f.birthtime_ns / 1e9, "put", None, decode(f.flags, f.value)) for f in frames if f.op == OP_PUT
        )

    def stats(self) -> dict:
        """items and ready (ready for delivery), leased (out on lease), delayed (released with a
        delay not over yet), dead (letters), segments, disk_bytes, corrupt_records,
        state_from_checkpoint."""
        return self._read(self._stats)

    def _stats(self, log: Log) -> dict:
        stats = log.stats()
        ready = self._ready(log)
        leased, delayed = self._leases.counts()
        return {
            "items": ready,
            "ready": ready,
            "leased": leased,
            "delayed": delayed,
            "dead": len(self._pending.dead),
            "segments": stats["segments"],
            "disk_bytes": stats["disk_bytes"],
            "corrupt_records": stats["corrupt_records"] + self._pending.damaged,
            "state_from_checkpoint": log.from_checkpoint,  # opened (or last reloaded) from CHECKPOINT
        }


MAX_SECONDS = 10**9  # the longest lease_timeout, delay or extension (~31 years): its time fits a record


def _maxsize_and_semaphore(maxsize: Any, semaphore: Any) -> tuple[int, Any]:
    """(maxsize, semaphore) from the arguments. iodict's signature was (path, lock,
    semaphore): as the third argument, an int is maxsize, None means 0, and a
    semaphore or a semaphore factory (``multiprocessing.Semaphore``) is the semaphore."""
    if maxsize is None:
        return 0, semaphore
    if isinstance(maxsize, int) and not isinstance(maxsize, bool):
        return maxsize, semaphore
    if hasattr(maxsize, "acquire") or callable(maxsize):
        if semaphore is not None:
            raise TypeError("DurableQueue() got a semaphore both as its third argument and as semaphore=")
        return 0, maxsize
    raise TypeError(f"maxsize must be an int (or, as in iodict, a semaphore), not {type(maxsize).__name__!r}")


def _check_seconds(name: str, value: object, *, zero: bool) -> float:
    """``value`` as seconds, or TypeError/ValueError naming ``name`` (before anything is written)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__!r}")
    if not (value >= 0 if zero else value > 0) or not value <= MAX_SECONDS:
        kind = "non-negative" if zero else "positive"
        raise ValueError(f"{name} must be a {kind} number of seconds up to {MAX_SECONDS:,}, not {value!r}")
    return float(value)


def _expiry(seconds: float | None) -> int:
    """The wall-clock time (ns) a lease taken or extended now for ``seconds`` expires; 0: never."""
    return 0 if seconds is None else time.time_ns() + int(seconds * 1e9)


class Lease:
    """An item delivered by ``DurableQueue.lease()``: ``item``, ``id`` (its PUT's seq, the same
    in every process), ``deliveries`` (1 on the first). ``ack()`` when done; ``release()``
    to hand it back. As a context manager: acked when the block ends, released if it raises."""

    __slots__ = ("item", "id", "deliveries", "_queue", "_holder")

    def __init__(self, queue: DurableQueue, item: Any, seq: int, deliveries: int, holder: int) -> None:
        self.item = item
        self.id = seq
        self.deliveries = deliveries
        self._queue = queue
        self._holder = holder

    def ack(self) -> None:
        """Done: the item never comes back. LeaseExpiredError (changing nothing) if it has."""
        if _ack_one is None or _ack_one(self._queue, self) is NotImplemented:
            self._queue._end_lease(self, OP_TAKE)

    def release(self, delay: float = 0.0) -> None:
        """Not done: deliverable again after ``delay`` seconds, in its FIFO place."""
        due = time.time_ns() + int(_check_seconds("delay", delay, zero=True) * 1e9) if delay else 0
        self._queue._end_lease(self, OP_RELEASE, due)

    def extend(self, seconds: float | None = None) -> None:
        """Restart the lease's clock: it now expires ``seconds`` (default: the queue's
        lease_timeout; none if that is None) from now."""
        if seconds is not None:
            _check_seconds("seconds", seconds, zero=False)
        self._queue._extend_lease(self, seconds)

    def __reduce__(self) -> tuple[Any, ...]:
        raise TypeError(
            "a Lease cannot be pickled: it belongs to the process that took it (which must ack or "
            "release it); pass lease.item to other processes instead"
        )

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if (self.id, self.deliveries) not in self._queue._lent:
            return  # (acked or released in the block already)
        if kind is None:
            self.ack()
            return
        try:
            self.release()
        except LeaseExpiredError:
            pass  # (back already: the block's own error is the one to see)

    def __repr__(self) -> str:
        return f"<Lease id={self.id} deliveries={self.deliveries}>"
