"""Deadlines on the write lock (issue 17.3): every place in the log that waits for
the lock honours the caller's deadline, raising LockTimeoutError, and leaves the
log consistent. Another real process holds LOCK: stopped (SIGSTOP) in the middle
of an append, or while a roll it began is unfinished.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from iodict_log import IODict, LockTimeoutError
from iodict_log.filelock import LOCK_ENV

# A writer that takes the lock, leaves what its mode says, reports, and stops itself.
HOLDER = textwrap.dedent(
    """
    import os, signal, sys
    from iodict_log import IODict
    path, mode = sys.argv[1], sys.argv[2]
    d = IODict(path, segment_bytes=4096, auto_compact=False)
    log = d._log
    log.file_lock.acquire()
    log.refresh()
    if mode == "half-append":  # stopped in the middle of an append
        frame = b"\\xd1\\x0c" + os.urandom(60)
        os.write(log._segments[-1].fd, frame[:30])
    elif mode == "sealed":  # stopped after the SEAL of a roll, before CURRENT lists the next segment
        log._seal()
    elif mode == "cut-back":  # stopped after cutting the segment back (as repair may)
        os.ftruncate(log._segments[-1].fd, log._segments[-1].size() - 10)
    print("holding", flush=True)
    os.kill(os.getpid(), signal.SIGSTOP)
    """
)


@pytest.fixture(autouse=True, params=["mutex", "flock"])
def protocol(request, monkeypatch):
    """Every test under both lock protocols (the store's creator picks it)."""
    monkeypatch.setenv(LOCK_ENV, request.param)
    return request.param


def stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "T"


@pytest.fixture
def holder(tmp_path):
    """Start a holder in a mode; yields (path, start) and kills whatever was started."""
    started = []

    def start(path: str, mode: str) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, path, mode], stdout=subprocess.PIPE, text=True)
        started.append(proc)
        assert proc.stdout.readline().strip() == "holding"
        deadline = time.monotonic() + 30
        while not stopped(proc.pid):
            assert time.monotonic() < deadline, "the holder did not stop"
            time.sleep(0.005)  # (polling the holder's state, with a deadline)
        return proc

    yield start
    for proc in started:
        proc.kill()
        proc.wait(timeout=30)


def store_with(path: str, count: int) -> dict:
    written = {f"k{i}": b"v" * 50 for i in range(count)}
    with IODict(path, segment_bytes=4096, auto_compact=False) as d:
        for key, value in written.items():
            d[key] = value
    return written


@pytest.mark.parametrize("mode", ["half-append", "sealed", "cut-back"])
def test_a_read_that_must_wait_for_the_lock_raises_at_its_deadline_and_the_log_stays_consistent(tmp_path, holder, mode):
    path = str(tmp_path / "s")
    written = store_with(path, 30)
    d = IODict(path, segment_bytes=4096, auto_compact=False)
    proc = holder(path, mode)
    with pytest.raises(LockTimeoutError):
        d._read(lambda log: len(d._index), deadline=time.monotonic() + 0.2)
    with pytest.raises(LockTimeoutError):
        d._write(lambda log: None, deadline=time.monotonic() + 0.2)
    proc.kill()
    proc.wait(timeout=30)
    if mode == "cut-back":
        del written["k29"]  # (its record was cut)
    assert dict(d.items()) == written  # the holder's death released the lock; nothing else lost
    d["after"] = b"a"
    d.close()
    with IODict(path) as d:
        assert dict(d.items()) == {**written, "after": b"a"}


def test_a_reader_that_needs_no_lock_is_not_held_up_by_a_stopped_holder(tmp_path, holder):
    path = str(tmp_path / "s")
    written = store_with(path, 30)
    d = IODict(path, auto_compact=False)
    proc = holder(path, "plain")
    assert d._read(lambda log: dict(d.items()), deadline=time.monotonic() + 0.2) == written
    proc.kill()
    proc.wait(timeout=30)
    d.close()


def test_a_reload_after_a_compaction_elsewhere_honours_the_deadline(tmp_path, holder):
    path = str(tmp_path / "s")
    written = store_with(path, 60)
    d = IODict(path, segment_bytes=4096, auto_compact=False)
    assert dict(d.items()) == written
    with IODict(path, segment_bytes=4096, auto_compact=False) as other:
        other.compact()
    proc = holder(path, "plain")  # d must take the lock to follow the compaction's SEAL
    with pytest.raises(LockTimeoutError):
        d._read(lambda log: len(d._index), deadline=time.monotonic() + 0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert dict(d.items()) == written
    d.close()


def test_lock_timeout_makes_every_dict_write_raise_instead_of_waiting_behind_a_stopped_holder(tmp_path, holder):
    # Guards 17.3 for dicts: a write waited as long as a stopped (Ctrl-Z, debugger) holder held the lock.
    path = str(tmp_path / "s")
    written = store_with(path, 10)
    d = IODict(path, auto_compact=False, lock_timeout=0.2)
    proc = holder(path, "plain")
    for write in (lambda: d.__setitem__("new", 1), lambda: d.update({"a": 1, "b": 2}), lambda: d.pop("k1")):
        with pytest.raises(LockTimeoutError):
            write()
    assert dict(d.items()) == written  # (reads need no lock) nothing was written
    proc.kill()
    proc.wait(timeout=30)
    d["new"] = 1  # the holder's death released the lock
    assert dict(d.items()) == {**written, "new": 1}
    d.close()


@pytest.mark.parametrize("bad", [-1, "1", True, float("nan")])
def test_lock_timeout_must_be_none_or_seconds(tmp_path, bad):
    with pytest.raises(ValueError, match="lock_timeout"):
        IODict(tmp_path / "s", lock_timeout=bad)
    assert not os.path.exists(tmp_path / "s")
