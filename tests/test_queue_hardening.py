"""DurableQueue under a stopped or slow lock holder, across fork, after chdir, and on hostile logs.

- ``block=False`` and ``timeout=`` bound the wait for the store's write lock: with another
  process holding it (a real child: flock on LOCK, or SIGSTOPped inside put), get raises
  queue.Empty and put raises queue.Full instead of hanging (issue 17.3).
- A fork while other threads are inside put/get leaves the child a queue it can use (17.14).
- The store's path is fixed at open: chdir afterwards changes nothing, ``~`` is expanded (17.2).
- Replaying TAKEs costs the same whatever they name and however many items are pending (21.6).
- A TAKE or DEAD record whose key is not an 8-byte seq is one damaged record (21.9).
"""

from __future__ import annotations

import os
import queue
import select
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import forged
import pytest
from helpers import WAIT, started

from iodict_log import CorruptionWarning, DurableQueue
from iodict_log.format import OP_DEAD, OP_PUT, OP_TAKE, Frame
from iodict_log.pending import PendingItems

# --- helpers -------------------------------------------------------------------------


def read_line(proc: subprocess.Popen, deadline: float) -> str:
    """One line of the child's stdout, waiting at most until ``deadline`` (monotonic)."""
    line = b""
    fd = proc.stdout.fileno()
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        assert left > 0, f"no line from the child in time (got {line!r})"
        readable, _, _ = select.select([fd], [], [], left)
        if readable:
            byte = os.read(fd, 1)
            assert byte, f"the child closed its output (got {line!r}, exit {proc.poll()})"
            line += byte
    return line.decode().strip()


def spawn(code: str, *args: object) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )


def end(proc: subprocess.Popen) -> None:
    """Whatever state the child is in (stopped too), make it gone."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGCONT)
        proc.kill()
    proc.wait(timeout=WAIT)
    proc.stdout.close()
    proc.stdin.close()


HOLD_LOCK = """
import os, sys
from iodict_log.filelock import FileLock
FileLock(os.path.join(sys.argv[1], "LOCK"), mapped=True).acquire()
print("locked", flush=True)
sys.stdin.readline()
"""

# A producer stopped (Ctrl-Z, a debugger, docker pause) in the middle of put(): it holds the
# store's write lock and has not written its item yet.
STOP_INSIDE_PUT = """
import os, signal, sys
from iodict_log import DurableQueue, fileops
q = DurableQueue(sys.argv[1])
real_write = fileops.write
def write(fd, data):
    print("stopping", flush=True)
    os.kill(os.getpid(), signal.SIGSTOP)
    return real_write(fd, data)
fileops.write = write
q.put("from the stopped producer")
"""


@pytest.fixture
def held_queue(tmp_path):
    """(queue with 2 items, child process) while the child holds the store's write lock."""
    path = tmp_path / "q"
    q = DurableQueue(path)
    q.put("one")
    q.put("two")
    child = spawn(HOLD_LOCK, path)
    try:
        assert read_line(child, time.monotonic() + WAIT) == "locked"
        yield q, child
    finally:
        end(child)  # the lock drops with it, so a call still blocked before the fix returns
        q.close()


# --- 1. deadlines on the write lock (17.3) ----------------------------------------------------


def test_get_nowait_raises_empty_while_another_process_holds_the_lock(held_queue):
    q, _ = held_queue
    with pytest.raises(queue.Empty):
        started(q.get_nowait).outcome("get_nowait()")


def test_timed_get_raises_empty_while_another_process_holds_the_lock(held_queue):
    q, _ = held_queue
    with pytest.raises(queue.Empty):
        started(lambda: q.get(timeout=0.2)).outcome("get(timeout=0.2)")


def test_put_nowait_raises_full_while_another_process_holds_the_lock(held_queue):
    q, _ = held_queue
    with pytest.raises(queue.Full):
        started(lambda: q.put_nowait("three")).outcome("put_nowait()")


def test_timed_put_many_raises_full_while_another_process_holds_the_lock(held_queue):
    q, child = held_queue
    with pytest.raises(queue.Full):
        started(lambda: q.put_many(["three", "four"], timeout=0.2)).outcome("put_many(timeout=0.2)")
    end(child)
    assert [q.get_nowait(), q.get_nowait()] == ["one", "two"], "a refused call changes nothing"
    with pytest.raises(queue.Empty):
        q.get_nowait()


def test_timed_get_raises_empty_while_a_producer_is_stopped_inside_put(tmp_path):
    path = tmp_path / "q"
    q = DurableQueue(path)
    q.put("ready before")
    child = spawn(STOP_INSIDE_PUT, path)
    try:
        assert read_line(child, time.monotonic() + WAIT) == "stopping"
        with pytest.raises(queue.Empty):
            started(lambda: q.get(timeout=0.2)).outcome("get(timeout=0.2)")
        with pytest.raises(queue.Full):
            started(lambda: q.put("x", timeout=0.2)).outcome("put(timeout=0.2)")
        child.send_signal(signal.SIGCONT)  # the producer goes on: everything works again
        assert child.wait(timeout=WAIT) == 0
        assert q.get(timeout=WAIT) == "ready before"
        assert q.get(timeout=WAIT) == "from the stopped producer"
    finally:
        end(child)
        q.close()


# --- 2. fork (17.14) ------------------------------------------------------------------------

FORKS = 150


def test_children_forked_while_threads_put_and_get_can_all_put_and_get(tmp_path):
    # Guards: queue.Queue's mutex held by a parent thread at the fork hung the child's put.
    q = DurableQueue(tmp_path / "q")
    stop = threading.Event()

    def putter() -> None:
        while not stop.is_set():
            q.put(b"p")

    def getter() -> None:
        while not stop.is_set():
            try:
                q.get(timeout=0.01)
            except queue.Empty:
                pass

    threads = [threading.Thread(target=fn, daemon=True) for fn in (putter, getter, getter)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: inside put/get too
    hung = []
    try:
        for thread in threads:
            thread.start()
        for forked in range(1, FORKS + 1):
            r, w = os.pipe()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # (3.12+: fork with threads)
                pid = os.fork()
            if pid == 0:  # the child: one put and one get, then out, whatever happens
                code = 1
                try:
                    os.close(r)
                    q.put(b"child")
                    q.get(timeout=WAIT)
                    code = 0
                finally:
                    os._exit(code)
            os.close(w)
            try:
                # The pipe reads EOF once the child has exited (its end closes with it).
                if not select.select([r], [], [], WAIT)[0]:
                    os.kill(pid, signal.SIGKILL)
                    hung.append(forked)
                _, status = os.waitpid(pid, 0)
            finally:
                os.close(r)
            assert hung or os.waitstatus_to_exitcode(status) == 0, "a forked child's put or get failed"
            if hung:
                break
    finally:
        stop.set()
        sys.setswitchinterval(interval)
        for thread in threads:
            thread.join(timeout=WAIT)
        q.close()
    assert not hung, f"child {hung[0]} of {FORKS}, forked while threads used the queue, hung in put/get"


# --- 3. the path is fixed at open (17.2) -------------------------------------------------------


def test_a_queue_opened_by_a_relative_path_keeps_working_after_chdir(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    q = DurableQueue("store", segment_bytes=4096)
    monkeypatch.chdir(tmp_path / "b")
    items = [b"%04d" % i * 25 for i in range(200)]  # 100-byte items: many segment rolls
    for item in items:
        q.put(item)
    assert [q.get_nowait() for _ in range(100)] == items[:100]
    q.close()
    assert not (tmp_path / "b" / "store").exists()
    with DurableQueue(tmp_path / "a" / "store", segment_bytes=4096) as q:
        assert q.qsize() == 100 and q.get_nowait() == items[100]


def test_a_tilde_path_is_the_home_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    with DurableQueue("~/q") as q:
        q.put("x")
        assert q.path == str(tmp_path / "home" / "q")
    assert (tmp_path / "home" / "q").is_dir() and not (tmp_path / "~").exists()


# --- 4. replaying TAKEs is O(1) each (21.6) ----------------------------------------------------


def frame(op: int, seq: int, key: bytes = b"") -> Frame:
    return Frame(0, 0, op, 0, seq, 0, key, b"")


def traced_lines(fn) -> int:
    """How many lines of Python run inside ``fn()``: a measure of work that does not flake."""
    count = 0

    def tracer(frame_, event, arg):
        nonlocal count
        if event == "line":
            count += 1
        return tracer

    sys.settrace(tracer)
    try:
        fn()
    finally:
        sys.settrace(None)
    return count


def take_work(pending_count: int) -> int:
    """Lines run to replay 100 TAKEs naming seqs that are not pending, and 100 naming
    pending items in the middle, with ``pending_count`` items pending."""
    pending = PendingItems()
    for seq in range(1, pending_count + 1):
        pending.apply(frame(OP_PUT, seq), 100)
    strangers = [frame(OP_TAKE, 0, (pending_count + 1000 + i).to_bytes(8, "little")) for i in range(100)]
    middle = [frame(OP_TAKE, 0, (pending_count // 2 + i).to_bytes(8, "little")) for i in range(100)]

    def replay() -> None:
        for f in strangers + middle:
            pending.apply(f, 0)

    work = traced_lines(replay)
    assert len(pending) == pending_count - 100
    return work


@pytest.mark.parametrize("few", [200, 20_000], ids=["within-the-window", "beyond-the-window"])
def test_replaying_a_take_costs_the_same_however_many_items_are_pending(few):
    # Guards: each TAKE naming a seq not at the head walked the whole pending list (29 s opens).
    # (Items beyond the window a queue holds in memory, pending.WINDOW, take another path.)
    work_few, work_many = take_work(few), take_work(few * 10)
    assert work_many <= work_few * 1.2, f"200 TAKEs ran {work_few} lines with {few} pending, {work_many} with 10x"


def test_the_head_skips_items_taken_from_the_middle():
    # Guards the lazy structure behind O(1) TAKEs: a seq taken from the middle is never the head.
    pending = PendingItems()
    for seq in (1, 2, 3, 4):
        pending.apply(frame(OP_PUT, seq), 10)
    pending.apply(frame(OP_TAKE, 0, (2).to_bytes(8, "little")), 0)
    pending.apply(frame(OP_TAKE, 0, (1).to_bytes(8, "little")), 0)
    assert pending.head() == (3, 10) and len(pending) == 2 and pending.live_bytes == 20


# --- 5. queue records whose key is not a seq (21.9) ---------------------------------------------


def append_forged(path: Path, *frames: tuple[int, int, bytes]) -> None:
    """Append valid frames (op, seq, key) to the store's last segment, with its salt."""
    segment = forged.segment_paths(path)[-1]
    forged.append(
        segment, *(forged.frame(segment, key, op=op, seq=seq, birthtime=time.time_ns()) for op, seq, key in frames)
    )


def test_a_take_or_dead_record_whose_key_is_not_a_seq_is_one_damaged_record_each(tmp_path):
    path = tmp_path / "q"
    with DurableQueue(path) as q:
        q.put_many(["a", "b"])  # seqs 1..4 (a batch)
    append_forged(path, (OP_TAKE, 100, b"\x02\x00\x00"), (OP_DEAD, 101, b"\x03" * 9))
    with pytest.warns(CorruptionWarning) as caught:
        q = DurableQueue(path)
    with q:
        assert len([w for w in caught if issubclass(w.category, CorruptionWarning)]) == 2
        assert q.stats()["corrupt_records"] == 2
        assert q.dead_letters() == []
        assert [q.get_nowait(), q.get_nowait()] == ["a", "b"]
