"""fork(): a child never holds the parent's write lock or segments past the fork
(issue 17.10), and its objects keep working.

A parent process opens a store, forks (a multiprocessing fork Pool whose workers
never touch the store, or bare os.fork() children), writes, and is SIGKILLed
while it holds the write lock. flock locks belong to the open file description:
a child that kept its inherited descriptor would keep the lock held, and every
other process would wait for the child.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import threading

import pytest
from helpers import Lines, joined, wait_pid

from iodict_log import IODict
from iodict_log.filelock import LOCK_ENV

PARENT = textwrap.dedent(
    """
    import multiprocessing, os, signal, sys
    from iodict_log import IODict

    path, mode = sys.argv[1], sys.argv[2]
    d = IODict(path, segment_bytes=4096, sync=30.0)  # (a group-commit fsync pending: a thread's duplicate)
    for i in range(100):
        d[f"k{i}"] = i
    lock = d._log.file_lock
    if mode.endswith("-locked"):
        lock.acquire()  # fork while holding the write lock
    ready_r, ready_w = os.pipe()
    if mode.startswith("pool"):
        pool = multiprocessing.get_context("fork").Pool(2, initializer=os.write, initargs=(ready_w, b"x"))
        pids = [p.pid for p in pool._pool]
    else:
        pids = []
        for _ in range(2):
            pid = os.fork()
            if pid == 0:
                os.write(ready_w, b"x")
                while True:
                    signal.pause()
            pids.append(pid)
    got = b""
    while len(got) < 2:
        got += os.read(ready_r, 2 - len(got))  # every child is past its fork hooks
    for i in range(300):
        d[f"loop{i % 10}"] = i  # the parent writes on (rolling segments)...
    if not lock.held:
        lock.acquire()  # ...and is killed holding the write lock
    print(" ".join(map(str, pids)), flush=True)
    sys.stdin.read()
    """
)

THIRD = textwrap.dedent(
    """
    import sys
    from iodict_log import IODict
    with IODict(sys.argv[1], segment_bytes=4096) as d:
        d["third"] = len(d)
    """
)


def store_descriptors(pid: int, store: str) -> list[str]:
    """What process ``pid`` has open inside ``store``."""
    found = []
    fd_dir = f"/proc/{pid}/fd"
    for name in os.listdir(fd_dir):
        try:
            target = os.readlink(os.path.join(fd_dir, name))
        except FileNotFoundError:
            continue
        if target.startswith(store + os.sep):
            found.append(target)
    return found


@pytest.mark.parametrize("protocol", ["mutex", "flock"])
@pytest.mark.parametrize("mode", ["pool", "bare", "pool-locked", "bare-locked"])
def test_a_parent_killed_holding_the_lock_never_leaves_it_held_by_its_forked_children(
    tmp_path, monkeypatch, mode, protocol
):
    monkeypatch.setenv(LOCK_ENV, protocol)  # (the parent creates the store: its LOCK's protocol)
    store = str(tmp_path / "store")
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, store, mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    children: list[int] = []
    try:
        children = [int(pid) for pid in Lines(parent.stdout).next(60).split()]
        assert len(children) == 2
        for pid in children:
            assert store_descriptors(pid, store) == []  # neither LOCK nor any segment
        parent.kill()
        parent.wait(timeout=30)
        if mode.startswith("bare"):  # (pool workers exit soon after their parent; these stay)
            for pid in children:
                os.kill(pid, 0)  # alive, so they would keep the lock held
        third = subprocess.run([sys.executable, "-c", THIRD, store], capture_output=True, text=True, timeout=60)
        assert third.returncode == 0, third.stderr
    finally:
        parent.kill()
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        parent.wait(timeout=30)
    with IODict(store) as d:
        assert d["third"] == len(d) - 1 and d["k99"] == 99


@pytest.mark.parametrize("sync", [False, 0.05])
def test_objects_keep_working_in_a_forked_child(tmp_path, sync):
    store = str(tmp_path / "store")
    d = IODict(store, segment_bytes=4096, sync=sync)
    for i in range(200):
        d[f"k{i}"] = i
    pid = os.fork()
    if pid == 0:  # the child: its own descriptors, opened on first use
        code = 1
        try:
            ok = dict(d.items()) == {f"k{i}": i for i in range(200)}
            for i in range(200):
                d[f"child{i}"] = i  # rolls segments too
            d.close()
            code = 0 if ok else 2
        finally:
            os._exit(code)
    assert wait_pid(pid, 60) == 0
    d["parent"] = 1  # the parent's descriptors and lock are untouched
    assert d["child199"] == 199 and len(d) == 401
    d.close()


def test_a_child_forked_after_a_compaction_elsewhere_rebuilds_on_first_use(tmp_path):
    store = str(tmp_path / "store")
    d = IODict(store, segment_bytes=4096, auto_compact=False)
    for i in range(300):
        d[f"k{i % 50}"] = i
    other = IODict(store, segment_bytes=4096, auto_compact=False)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            other.compact()  # the segments the parent's d had open are deleted
            other.close()
            expected = {f"k{i}": 250 + i for i in range(50)}
            code = 0 if dict(d.items()) == expected else 2
        finally:
            os._exit(code)
    assert wait_pid(pid, 60) == 0
    assert dict(d.items()) == {f"k{i}": 250 + i for i in range(50)}
    d.close()
    other.close()


def test_a_child_forked_inside_the_write_lock_never_releases_the_parents_lock(tmp_path):
    store = str(tmp_path / "store")
    d = IODict(store)
    lock = d._log.file_lock
    with lock:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                lock.__exit__(None, None, None)  # the child leaves the `with` it was forked inside
                taken = lock.acquire(timeout=0.2)  # the parent still holds it
                code = 0 if not taken else 2
            finally:
                os._exit(code)
        assert wait_pid(pid, 60) == 0
        assert lock.held
    d["after"] = 1
    d.close()


@pytest.mark.parametrize("protocol", ["mutex", "flock"])
def test_a_child_forked_while_another_thread_holds_the_lock_waits_for_it_and_never_releases_it(
    tmp_path, monkeypatch, protocol
):
    # Guards the mutex protocol's fork rule: the child neither owns nor unlocks the parent
    # thread's hold (a robust mutex's owner is a thread), and it still gets the lock after it.
    monkeypatch.setenv(LOCK_ENV, protocol)
    store = str(tmp_path / "store")
    d = IODict(store)
    d["before"] = 1
    lock = d._log.file_lock
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            held.set()
            release.wait(60)

    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(60)
    tried_r, tried_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(tried_r)
            busy = not lock.held and not lock.try_acquire()  # the parent's thread holds it
            os.write(tried_w, b"x")
            d["child"] = 2  # waits for the parent's release, then writes
            code = 0 if busy and d["before"] == 1 else 2
        finally:
            os._exit(code)
    os.close(tried_w)
    assert os.read(tried_r, 1) == b"x"
    os.close(tried_r)
    release.set()
    joined(holder, 60)
    assert wait_pid(pid, 60) == 0
    d["parent"] = 3  # (the child released only its own hold)
    assert dict(d) == {"before": 1, "child": 2, "parent": 3}
    d.close()
