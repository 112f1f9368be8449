"""DurableQueue and FlushQueue (CONTRACT.md §3, §5, §6).

- DurableQueue behaves like ``queue.Queue``: the behaviour tests run the same
  operations on a plain ``queue.Queue`` and on a DurableQueue and expect the same.
- Blocking calls really block, and wake when another thread makes it possible.
- Items put and not got survive close and reopen in order; items got never come
  back; ``put_many`` is one atomic batch; items round-trip with their types.
- A damaged item is skipped with a ``CorruptionWarning`` and never returned as a
  wrong value, and no other item is lost because of it.
- Consumed segments are released, so a queue drained as fast as it is filled
  stays small on disk, and a queue that is not drained keeps everything.
- FlushQueue parks a ``queue.Queue``'s items on disk and brings them back in order.

The damage tests know only what ``iodict_log/format.py`` documents: items live in
``NNNNNNNNNN.seg`` files, a small item is stored uncompressed (the default
serializer is pickle, which keeps the raw bytes of a ``bytes`` item), so flipping
a byte inside a unique marker damages exactly that item's value.
"""

from __future__ import annotations

import ast
import dataclasses
import multiprocessing
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from helpers import WAIT, Call, drain, started

import iodict_log
from iodict_log import CorruptionWarning, DurableQueue, StoreClosedError

STILL_BLOCKED = 0.2  # seconds we watch a call, seen waiting inside the queue, that must not return


# --- helpers -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Point:
    """A user class, defined at module level so pickle can find it again."""

    x: int
    y: int


class BareLock:
    """A lock with only acquire() and release(), no context manager (the contract allows it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.acquired = 0

    def acquire(self, *args):
        self.acquired += 1
        return self._lock.acquire(*args)

    def release(self) -> None:
        self._lock.release()


class NewQueue(queue.Queue, iodict_log.FlushQueue):
    """The FlushQueue example from iodict's README, as written there."""

    def __init__(self, path, lock=None, semaphore=None):
        super().__init__()
        self.path = path
        self.lock = lock
        self.semaphore = semaphore


def _parked_in(call: Call, method: str) -> bool:
    """Whether ``call``'s thread waits on a condition (innermost frame: threading's wait)
    from inside the queue's ``method``, as its stack shows right now."""
    frame = sys._current_frames().get(call.ident)
    stack = []
    while frame is not None:
        stack.append(frame.f_code)
        frame = frame.f_back
    return (
        bool(stack)
        and (stack[0].co_name, stack[0].co_filename) == ("wait", threading.__file__)
        and any(code.co_name == method and code.co_filename != __file__ for code in stack)
    )


def still_blocked(call: Call, method: str) -> bool:
    """Whether ``call`` is blocked in the queue's ``method``: first wait (bounded) until its
    thread is seen parked inside that method, so a slow start cannot pass for blocking;
    then watch it for STILL_BLOCKED seconds, in which it must not return."""
    deadline = time.monotonic() + WAIT
    while not _parked_in(call, method):
        if call.finished.wait(0.001):  # (polls the thread's state; returning early fails at once)
            return False
        assert time.monotonic() < deadline, f"the thread never reached a wait inside {method}()"
    return not call.finished.wait(STILL_BLOCKED)


def segment_files(path) -> list[Path]:
    return sorted(Path(path).glob("*.seg"))


def dir_bytes(path) -> int:
    return sum(p.stat().st_size for p in Path(path).iterdir() if p.is_file())


def marked(i: int) -> bytes:
    """A small (uncompressed) item whose bytes occur nowhere else on disk."""
    return b"item-%04d" % i * 10


def flip_byte_inside(path, marker: bytes) -> None:
    """Flip one byte in the middle of the single on-disk occurrence of ``marker``, in place."""
    hits = []
    for seg in segment_files(path):
        data = seg.read_bytes()
        at = data.find(marker)
        while at >= 0:
            hits.append((seg, at))
            at = data.find(marker, at + 1)
    assert len(hits) == 1, f"expected {marker[:9]!r}... exactly once on disk, found {len(hits)}"
    seg, at = hits[0]
    target = at + len(marker) // 2
    fd = os.open(seg, os.O_RDWR)  # in place: an open queue keeps reading the same file
    try:
        old = os.pread(fd, 1, target)
        os.pwrite(fd, bytes([old[0] ^ 0xFF]), target)
    finally:
        os.close(fd)


# --- 1. queue.Queue behaviour, next to a plain queue.Queue --------------------------------


@pytest.fixture(params=["queue.Queue", "DurableQueue"])
def make_queue(request, tmp_path):
    """make(maxsize=0) -> a plain queue.Queue or a DurableQueue; the same test runs on both."""
    made = []

    def make(maxsize=0):
        if request.param == "queue.Queue":
            q = queue.Queue(maxsize)
        else:
            q = DurableQueue(tmp_path / f"q{len(made)}", maxsize=maxsize)
        made.append(q)
        return q

    yield make
    for q in made:
        if isinstance(q, DurableQueue):
            q.close()


def test_put_then_get_is_first_in_first_out(make_queue):
    q = make_queue()
    items = ["a", 1, ("t", 2), None, b"bytes", {"k": [1]}, "a"]
    for item in items:
        q.put(item)
    assert [q.get() for _ in items] == items


def test_put_nowait_and_get_nowait(make_queue):
    q = make_queue()
    q.put_nowait("first")
    q.put_nowait("second")
    assert q.get_nowait() == "first"
    q.put_nowait("third")
    assert q.get_nowait() == "second"
    assert q.get_nowait() == "third"
    with pytest.raises(queue.Empty):
        q.get_nowait()


def test_nonblocking_get_on_empty_queue_raises_empty(make_queue):
    q = make_queue()
    with pytest.raises(queue.Empty):
        q.get(block=False)
    with pytest.raises(queue.Empty):
        q.get(False)
    q.put("x")
    q.get()
    with pytest.raises(queue.Empty):
        q.get(block=False)


def test_get_with_timeout_on_empty_queue_raises_empty(make_queue):
    q = make_queue()
    with pytest.raises(queue.Empty):
        q.get(timeout=0.05)
    with pytest.raises(queue.Empty):
        q.get(True, 0)
    q.put("x")
    assert q.get(timeout=0.05) == "x"


def test_negative_timeout_raises_value_error_for_blocking_get_and_put(make_queue):
    # maxsize > 0: a plain queue.Queue only checks put's timeout when it could block.
    q = make_queue(maxsize=3)
    with pytest.raises(ValueError):
        q.get(timeout=-1)
    with pytest.raises(ValueError):
        q.get(block=True, timeout=-0.5)
    with pytest.raises(ValueError):
        q.put("x", timeout=-1)
    with pytest.raises(ValueError):
        q.put("x", block=True, timeout=-0.5)
    assert q.qsize() == 0, "a put that raised ValueError must not have put anything"
    # Without blocking the timeout is ignored, as in queue.Queue.
    q.put("y", block=False, timeout=-1)
    with pytest.raises(ValueError):
        q.get(timeout=-1)  # also when there is an item
    assert q.get(block=False, timeout=-1) == "y"


def test_maxsize_full_queue_refuses_put_nowait_and_timed_put(make_queue):
    q = make_queue(maxsize=2)
    assert q.maxsize == 2
    assert not q.full()
    q.put("a")
    assert not q.full()
    q.put("b")
    assert q.full()
    assert q.qsize() == 2
    with pytest.raises(queue.Full):
        q.put_nowait("c")
    with pytest.raises(queue.Full):
        q.put("c", block=False)
    with pytest.raises(queue.Full):
        q.put("c", timeout=0.05)
    assert q.qsize() == 2
    assert q.get() == "a"
    assert not q.full()
    q.put_nowait("c")
    assert q.full()
    assert drain(q) == ["b", "c"]


def test_unbounded_queue_is_never_full(make_queue):
    q = make_queue()
    for i in range(200):
        q.put_nowait(i)
    assert not q.full()
    assert q.qsize() == 200


def test_put_many_of_more_items_than_maxsize_raises_value_error(tmp_path):
    with DurableQueue(tmp_path / "q", maxsize=3) as q:
        with pytest.raises(ValueError):
            q.put_many([1, 2, 3, 4])
        with pytest.raises(ValueError):
            q.put_many(iter([1, 2, 3, 4]), block=False)
        assert q.qsize() == 0, "nothing of a refused put_many may be in the queue"
        q.put(1)
        # Room for one more, not for all three: a non-blocking or timed put_many puts none of them.
        with pytest.raises(queue.Full):
            q.put_many([2, 3, 4], block=False)
        with pytest.raises(queue.Full):
            q.put_many([2, 3, 4], timeout=0.05)
        assert q.qsize() == 1
        q.put_many(x for x in [2, 3])  # any iterable
        assert q.full()
        assert drain(q) == [1, 2, 3]


def test_qsize_and_empty_follow_puts_and_gets(make_queue):
    q = make_queue()
    assert q.qsize() == 0
    assert q.empty()
    for i in range(5):
        q.put(i)
        assert q.qsize() == i + 1
        assert not q.empty()
    for i in range(5):
        q.get()
        assert q.qsize() == 4 - i
    assert q.empty()


def test_task_done_called_too_many_times_raises_value_error(make_queue):
    q = make_queue()
    with pytest.raises(ValueError):
        q.task_done()
    q.put("a")
    q.put("b")
    q.get()
    q.get()
    q.task_done()
    q.task_done()
    with pytest.raises(ValueError):
        q.task_done()


def test_join_returns_once_a_consumer_thread_has_task_done_every_item(make_queue):
    q = make_queue()
    items = list(range(25))
    for item in items:
        q.put(item)
    got_all = threading.Event()
    last_done = threading.Event()  # the consumer holds back its last task_done() until this is set
    consumed = []

    def consume():
        for n in range(len(items)):
            consumed.append(q.get(timeout=WAIT))
            if n < len(items) - 1:
                q.task_done()
        got_all.set()
        assert last_done.wait(WAIT)
        q.task_done()

    joiner = started(q.join)
    consumer = started(consume)
    assert got_all.wait(WAIT)
    # The queue is empty but one item is not task_done yet: join() must still be waiting.
    assert still_blocked(joiner, "join"), "join() returned before every item was task_done"
    last_done.set()
    joiner.outcome()
    consumer.outcome()
    assert consumed == items


def test_durable_queue_is_a_queue_queue(tmp_path):
    with DurableQueue(tmp_path / "q") as q:
        assert isinstance(q, queue.Queue)
    assert issubclass(DurableQueue, queue.Queue)


@pytest.mark.parametrize(
    "semaphore",
    [multiprocessing.Semaphore(), multiprocessing.Semaphore, threading.Semaphore(2)],
    ids=["multiprocessing.Semaphore()", "multiprocessing.Semaphore", "threading.Semaphore(2)"],
)
def test_semaphore_keyword_is_accepted(tmp_path, semaphore):
    with DurableQueue(tmp_path / "q", semaphore=semaphore) as q:
        q.put("x")
        assert q.get() == "x"
    with DurableQueue(tmp_path / "q2", None, 0, semaphore=semaphore) as q:  # iodict's positional order
        q.put("y")
        assert q.get_nowait() == "y"


@pytest.mark.parametrize(
    "lock",
    [None, threading.Lock, threading.RLock, threading.Lock(), threading.RLock(), multiprocessing.Lock(), BareLock()],
    ids=["None", "threading.Lock", "threading.RLock", "Lock()", "RLock()", "multiprocessing.Lock()", "bare-lock"],
)
def test_lock_argument_none_factory_or_instance(tmp_path, lock):
    with DurableQueue(tmp_path / "q", lock=lock, maxsize=2) as q:
        q.put("a")
        q.put_many(["b"])
        assert q.full()
        assert q.qsize() == 2
        assert q.get() == "a"
        assert q.get_nowait() == "b"
        # A get waiting in another thread must not hold the lock: the put below has to get in.
        getter = started(lambda: q.get(timeout=WAIT))
        q.put("c")
        assert getter.outcome() == "c"
        assert q.empty()
    if isinstance(lock, BareLock):
        assert lock.acquired > 0, "a lock instance that was passed in should be the one used"


# --- 2. blocking that really blocks ----------------------------------------------------


def test_blocking_get_waits_for_an_item_a_producer_thread_puts_later(make_queue):
    q = make_queue()
    getter = started(q.get)
    # The queue is empty, so get() cannot return: watching it for a moment proves it blocks.
    assert still_blocked(getter, "get"), "get() on an empty queue returned"
    producer = started(lambda: q.put("late item"))
    producer.outcome()
    assert getter.outcome() == "late item"
    assert q.empty()


def test_get_with_timeout_waits_for_an_item_a_producer_thread_puts_later(make_queue):
    q = make_queue()
    ready = threading.Barrier(2)

    def get_after_barrier():
        ready.wait(WAIT)
        return q.get(timeout=WAIT)

    getter = started(get_after_barrier)
    ready.wait(WAIT)
    assert still_blocked(getter, "get"), "get(timeout=...) on an empty queue returned"
    started(lambda: q.put(("late", 1))).outcome()
    assert getter.outcome() == ("late", 1)


def test_put_on_full_queue_blocks_until_another_thread_gets(make_queue):
    q = make_queue(maxsize=2)
    q.put("a")
    q.put("b")
    putter = started(lambda: q.put("c"))
    # The queue is full, so put() cannot return: watching it for a moment proves it blocks.
    assert still_blocked(putter, "put"), "put() on a full queue returned"
    assert q.qsize() == 2
    getter = started(q.get)
    assert getter.outcome() == "a"
    putter.outcome()
    assert drain(q) == ["b", "c"]


def test_timed_put_on_full_queue_succeeds_when_another_thread_gets(make_queue):
    q = make_queue(maxsize=1)
    q.put("a")
    putter = started(lambda: q.put("b", timeout=WAIT))
    assert still_blocked(putter, "put"), "put(timeout=...) on a full queue returned"
    assert started(q.get).outcome() == "a"
    putter.outcome()
    assert q.get_nowait() == "b"


# --- 3. durability ---------------------------------------------------------------------


def test_items_not_got_survive_close_and_reopen_in_order(tmp_path):
    path = tmp_path / "q"
    items = [f"item-{i}" for i in range(50)]
    q = DurableQueue(path)
    for item in items:
        q.put(item)
    q.close()
    q = DurableQueue(path)
    assert q.qsize() == 50
    assert drain(q) == items
    q.close()


def test_items_got_never_come_back_after_reopen(tmp_path):
    path = tmp_path / "q"
    with DurableQueue(path) as q:
        q.put_many(range(10))
        assert [q.get() for _ in range(4)] == [0, 1, 2, 3]
    with DurableQueue(path) as q:
        assert q.qsize() == 6
        assert q.get() == 4
        q.put(10)
    with DurableQueue(path) as q:
        assert drain(q) == [5, 6, 7, 8, 9, 10]
    with DurableQueue(path) as q:
        assert q.empty()
        with pytest.raises(queue.Empty):
            q.get_nowait()


def test_close_and_with_block_keep_the_queue_on_disk(tmp_path):
    path = tmp_path / "q"
    q = DurableQueue(path)
    q.put("kept by close")
    q.close()
    q.close()  # idempotent
    assert path.is_dir() and segment_files(path), "close() must not delete the queue (iodict did)"
    with DurableQueue(path) as q:
        q.put("kept by with")
    assert segment_files(path), "leaving a with block must not delete the queue"
    with pytest.raises(StoreClosedError):
        q.put("after with")  # the with block closed it
    with DurableQueue(path) as q:
        assert drain(q) == ["kept by close", "kept by with"]


def test_put_many_is_all_or_nothing_when_the_segment_is_cut_inside_the_batch(tmp_path):
    path = tmp_path / "q"
    before = ["before-0", ("before", 1), b"before-2"]
    batch = [("batch", i, "x" * i) for i in range(5)]
    with DurableQueue(path) as q:
        for item in before:
            q.put(item)
        [seg] = segment_files(path)
        start = seg.stat().st_size
        q.put_many(batch)
        end = seg.stat().st_size
    assert end > start
    original = seg.read_bytes()
    for cut in range(start, end + 1):
        seg.write_bytes(original[:cut])  # as if the process died with the batch written up to here
        with DurableQueue(path) as q:
            items = drain(q)
        assert items[: len(before)] == before, f"cut at {cut} lost items put before the batch"
        rest = items[len(before) :]
        assert rest in ([], batch), f"cut at {cut} (batch spans {start}..{end}) left part of it: {rest!r}"
        if cut == start:
            assert rest == []
        if cut == end:
            assert rest == batch


def test_items_of_several_types_round_trip_with_pickle(tmp_path):
    path = tmp_path / "q"
    items = [
        ("a", 1, (2.5, None)),
        {"k": [1, 2], 3: (4,), ("t",): {"nested": b"x"}},
        b"\x00\xff raw bytes",
        bytearray(b"ba"),
        "str",
        2**70,
        -1.5,
        None,
        True,
        [1, [2, (3,)]],
        {1, 2, 3},
        frozenset({"f"}),
        Point(1, 2),
        [Point(3, 4), (Point(5, 6),)],
        complex(1, 2),
    ]
    with DurableQueue(path) as q:
        for item in items:
            q.put(item)
        first = q.get()
        assert first == items[0] and type(first) is tuple and type(first[2]) is tuple
    with DurableQueue(path) as q:
        got = drain(q)
    assert got == items[1:]
    assert [type(x) for x in got] == [type(x) for x in items[1:]]
    assert type(got[0][3]) is tuple and type(got[0][("t",)]["nested"]) is bytes
    assert type(got[-2][1]) is tuple and type(got[-2][1][0]) is Point


def test_msgpack_serializer_round_trips_plain_values_and_rejects_unserializable_items(tmp_path):
    path = tmp_path / "q"
    items = [1, "s", b"b", [1, [2]], {"a": 1, "b": [None]}, None, True, 1.5, (1, (2, "x")), -(2**63)]
    with DurableQueue(path, serializer="msgpack") as q:
        q.put_many(items)
        for bad in (object(), {1, object()}, len, Point(1, 2)):
            with pytest.raises(TypeError):
                q.put(bad)
        with pytest.raises(TypeError):
            q.put_many(["fine", object()])
        with pytest.raises(TypeError):
            q.put_nowait(lambda: None)
        assert q.qsize() == len(items), "a refused item must leave the queue unchanged"
    with DurableQueue(path, serializer="msgpack") as q:
        got = drain(q)
    assert got == items
    assert [type(x) for x in got] == [type(x) for x in items]
    assert type(got[8][1]) is tuple


def test_pickle_serializer_rejects_an_unpicklable_item_with_type_error(tmp_path):
    path = tmp_path / "q"
    with DurableQueue(path) as q:
        q.put("kept")
        with pytest.raises(TypeError):
            q.put(lambda: None)
        with pytest.raises(TypeError):
            q.put_many(["never", threading.Lock()])
        assert q.qsize() == 1
    with DurableQueue(path) as q:
        assert drain(q) == ["kept"]


def test_use_after_close_raises_store_closed_error(tmp_path):
    q = DurableQueue(tmp_path / "q", maxsize=5)
    q.put("x")
    q.close()
    calls = {
        "put": lambda: q.put("y"),
        "put_nowait": lambda: q.put_nowait("y"),
        "put_many": lambda: q.put_many(["y", "z"]),
        "put_many([])": lambda: q.put_many([]),
        "get": lambda: q.get(timeout=1),
        "get_nowait": q.get_nowait,
        "get(block=False)": lambda: q.get(block=False),
        "qsize": q.qsize,
        "empty": q.empty,
        "full": q.full,
        "join": q.join,
        "stats": q.stats,
    }
    for name, call in calls.items():
        with pytest.raises(StoreClosedError):
            call()
            pytest.fail(f"{name} worked after close()")
    assert issubclass(StoreClosedError, iodict_log.IODictLogError)


def test_get_blocked_in_a_thread_raises_store_closed_error_when_the_queue_is_closed(tmp_path):
    q = DurableQueue(tmp_path / "q")
    getter = started(q.get)
    assert still_blocked(getter, "get"), "get() on an empty queue returned"
    q.close()
    with pytest.raises(StoreClosedError):
        getter.outcome()


# --- 4. damage -------------------------------------------------------------------------


def test_damaged_item_in_the_middle_of_a_segment_is_skipped_on_reopen(tmp_path):
    path = tmp_path / "q"
    items = [marked(i) for i in range(15)]
    with DurableQueue(path) as q:
        for item in items:
            q.put(item)
    flip_byte_inside(path, marked(7))
    with pytest.warns(CorruptionWarning):
        q = DurableQueue(path)
    with q:
        assert q.stats()["corrupt_records"] >= 1
        got = drain(q)
        assert got == items[:7] + items[8:], "every intact item, in order, and never the damaged one"
        q.put("after the damage")
        assert q.get() == "after the damage"


def test_item_damaged_on_disk_while_the_queue_is_open_is_skipped_by_get(tmp_path):
    path = tmp_path / "q"
    with DurableQueue(path) as q:
        q.put(marked(0))
        q.put(marked(1))
        q.put(marked(2))
        flip_byte_inside(path, marked(0))  # the head item, after it was put
        with pytest.warns(CorruptionWarning):
            got = q.get()
        assert got == marked(1), "get must skip the damaged head and return the next item"
        assert q.get() == marked(2)
        assert q.stats()["corrupt_records"] >= 1
        assert q.empty()
    with pytest.warns(CorruptionWarning):  # the damaged bytes are still in the file
        q = DurableQueue(path)
    with q:
        assert drain(q) == [], "the damaged item must not come back after reopen"


def test_only_item_damaged_while_open_gives_empty_never_a_wrong_value(tmp_path):
    path = tmp_path / "q"
    with DurableQueue(path) as q:
        q.put(marked(3))
        flip_byte_inside(path, marked(3))
        with pytest.warns(CorruptionWarning), pytest.raises(queue.Empty):
            q.get(timeout=0.05)
        q.put("next")
        assert q.get_nowait() == "next"


# --- 5. space --------------------------------------------------------------------------

SEGMENT_BYTES = 16384


def payload(n: int) -> bytes:
    return (b"%06d" % n).ljust(100, b".")


def test_interleaved_puts_and_gets_keep_segments_and_disk_bytes_bounded(tmp_path):
    path = tmp_path / "q"
    bound = 3 * SEGMENT_BYTES
    q = DurableQueue(path, segment_bytes=SEGMENT_BYTES)
    put = got = 0
    newest = 0  # highest segment number seen: how many segments the queue went through
    while put < 20_000:
        for _ in range(10):
            q.put(payload(put))
            put += 1
        for checkpoint in ("after puts", "after gets"):
            if checkpoint == "after gets":
                for _ in range(10):
                    assert q.get_nowait() == payload(got)
                    got += 1
            segments = q.stats()["segments"]
            files = len(segment_files(path))
            size = dir_bytes(path)
            assert segments <= 3 and files <= 3, f"{checkpoint} {put} puts: {segments} segments, {files} files"
            assert size <= bound, f"{checkpoint} {put} puts: {size} bytes on disk"
            newest = max([newest] + [int(p.stem) for p in segment_files(path)])
    # 2 MB of items went through 16 KiB segments: many segments were made, filled and released.
    assert newest >= 50
    q.close()
    with DurableQueue(path, segment_bytes=SEGMENT_BYTES) as q:
        assert q.qsize() == 0
        assert q.empty()
        with pytest.raises(queue.Empty):
            q.get_nowait()
        for i in range(500):  # enough to roll several segments after the reopen
            q.put(payload(i))
        assert drain(q) == [payload(i) for i in range(500)]
        assert q.stats()["segments"] <= 3
        assert dir_bytes(path) <= bound


def test_undrained_queue_keeps_all_items_across_reopen_and_releases_only_consumed_segments(tmp_path):
    path = tmp_path / "q"
    n = 2000
    with DurableQueue(path, segment_bytes=SEGMENT_BYTES) as q:
        for i in range(n):
            q.put(payload(i))
    with DurableQueue(path, segment_bytes=SEGMENT_BYTES) as q:
        assert q.qsize() == n
        full = q.stats()
        assert full["segments"] >= n * 100 // SEGMENT_BYTES, "pending items must stay on disk"
        assert full["segments"] == len(segment_files(path))
        assert [q.get() for _ in range(n // 2)] == [payload(i) for i in range(n // 2)]
        half = q.stats()
        assert half["segments"] < full["segments"], "segments whose items are all consumed are released"
        assert half["disk_bytes"] < full["disk_bytes"]
    with DurableQueue(path, segment_bytes=SEGMENT_BYTES) as q:
        assert q.qsize() == n - n // 2
        assert drain(q) == [payload(i) for i in range(n // 2, n)]
        assert q.stats()["segments"] == 1
        assert len(segment_files(path)) == 1


# --- 6. FlushQueue -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "lock", [None, threading.Lock, threading.Lock()], ids=["None", "threading.Lock", "threading.Lock()"]
)
def test_flush_empties_the_queue_and_ingest_restores_items_in_order(tmp_path, lock):
    path = str(tmp_path / "parked")
    items = ["first", ("tuple", 2), {"d": [1]}, b"bytes", Point(1, 2), None, "last"]
    q = NewQueue(path, lock=lock, semaphore=multiprocessing.Semaphore)
    for item in items:
        q.put(item)
    q.flush()
    assert q.empty() and q.qsize() == 0
    with pytest.raises(queue.Empty):
        q.get_nowait()
    q.ingest()
    got = drain(q)
    assert got == items
    assert [type(x) for x in got] == [type(x) for x in items]
    q.ingest()
    assert q.empty(), "a second ingest must add nothing: the first removed the items from disk"
    fresh = NewQueue(path)
    fresh.ingest()
    assert fresh.empty(), "ingested items must be gone from disk, not only from this object"


def test_flushes_accumulate_and_ingest_restores_them_in_original_order(tmp_path):
    path = str(tmp_path / "parked")
    q = NewQueue(path)
    q.put(1)
    q.put(2)
    q.flush()
    q.put(3)
    q.flush()
    q.flush()  # nothing left: must not disturb what is parked
    q.ingest()
    assert drain(q) == [1, 2, 3]


def test_flushed_items_survive_the_process_ending_before_ingest(tmp_path):
    path = str(tmp_path / "parked")
    items = ["a", ("b", 2), {"c": 3}, b"d", None, 5.5, [6]]
    child = textwrap.dedent(
        """
        import ast, os, queue, signal, sys
        import iodict_log

        class NewQueue(queue.Queue, iodict_log.FlushQueue):
            def __init__(self, path, lock=None, semaphore=None):
                super().__init__()
                self.path = path
                self.lock = lock
                self.semaphore = semaphore

        q = NewQueue(sys.argv[1])
        for item in ast.literal_eval(sys.argv[2]):
            q.put(item)
        q.flush()
        assert q.empty()
        print("flushed", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # end with no cleanup at all
        """
    )
    assert ast.literal_eval(repr(items)) == items
    proc = subprocess.run([sys.executable, "-c", child, path, repr(items)], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "flushed", proc.stderr
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    q = NewQueue(path)
    assert q.empty()
    q.ingest()
    assert drain(q) == items


def test_flush_of_an_empty_queue_is_a_no_op(tmp_path):
    path = tmp_path / "parked"
    q = NewQueue(str(path))
    q.flush()
    assert q.empty()
    assert not path.exists(), "flushing nothing should not create anything on disk"
    q.ingest()
    assert q.empty()
    q.put("x")
    assert q.get() == "x"
    q.task_done()
    q.flush()
    q.ingest()
    assert q.empty()


def test_join_on_the_host_queue_does_not_hang_after_flush(tmp_path):
    q = NewQueue(str(tmp_path / "parked"))
    for i in range(5):
        q.put(i)
    q.flush()
    started(q.join).outcome()  # flushed items count as handled

    q.put("got, not done")
    q.put("flushed")
    assert q.get() == "got, not done"
    q.flush()
    joiner = started(q.join)
    # One item was got and not task_done: flush must not have marked it done for the caller.
    assert still_blocked(joiner, "join"), "join() returned with an item still being processed"
    q.task_done()
    joiner.outcome()

    q.ingest()
    assert q.qsize() == 6
    for _ in range(6):
        q.get()
        q.task_done()
    started(q.join).outcome()


def test_damaged_item_between_flush_and_ingest_is_skipped_and_later_items_are_ingested(tmp_path):
    path = str(tmp_path / "parked")
    items = [marked(i) for i in range(10)]
    q = NewQueue(path)
    for item in items:
        q.put(item)
    q.flush()
    flip_byte_inside(path, marked(4))
    with pytest.warns(CorruptionWarning):
        q.ingest()
    # iodict lost every item after a damaged one; here the damaged item may cost only itself.
    assert drain(q) == items[:4] + items[5:], "every intact parked item, in order, and never the damaged one"


def test_a_failure_to_delete_consumed_segments_never_costs_an_item(tmp_path, monkeypatch):
    from iodict_log.log import Log

    q = DurableQueue(tmp_path / "q", segment_bytes=4096)
    items = [b"item-%04d" % i * 10 for i in range(200)]
    q.put_many(items[:100])
    q.put_many(items[100:])
    real = Log.release_before
    failures = []

    def full_disk(self, loc):
        failures.append(loc)
        raise OSError(28, "No space left on device")  # as writing CURRENT would

    monkeypatch.setattr(Log, "release_before", full_disk)
    with pytest.warns(ResourceWarning):
        got = [q.get_nowait() for _ in range(150)]
    assert failures  # deleting was tried, and failed
    monkeypatch.setattr(Log, "release_before", real)
    got += [q.get_nowait() for _ in range(50)]
    assert got == items  # every item, once, in order
    assert q.stats()["segments"] <= 2  # and the space came back once the disk did
    q.close()


def test_a_failed_flush_gives_the_items_back_and_join_still_returns(tmp_path, monkeypatch):
    class Parked(queue.Queue, iodict_log.FlushQueue):
        def __init__(self, path):
            super().__init__()
            self.path, self.lock, self.semaphore = path, None, None

    q = Parked(tmp_path / "parked")
    for i in range(3):
        q.put(i)

    def full_disk(self, items, block=True, timeout=None):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(DurableQueue, "put_many", full_disk)
    with pytest.raises(OSError):
        q.flush()
    monkeypatch.undo()
    assert [q.get_nowait() for _ in range(3)] == [0, 1, 2]
    for _ in range(3):
        q.task_done()
    joined = threading.Thread(target=q.join)
    joined.start()
    joined.join(timeout=30)
    assert not joined.is_alive()  # the items given back were not counted twice
