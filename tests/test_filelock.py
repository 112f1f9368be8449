"""The inter-process write lock: exclusive across processes, freed by SIGKILL, fork-safe."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys

from helpers import Lines, wait_pid

from iodict_log.filelock import FileLock, fork_generation

TIMEOUT = 30  # seconds: a bound on anything that should happen at once

HOLD_LOCK = """
import sys
from iodict_log.filelock import FileLock
lock = FileLock(sys.argv[1])
lock.acquire()
print("locked", flush=True)
sys.stdin.readline()
"""


def lock_is_free(path: str) -> bool:
    """Try the lock without waiting, from a new open file description."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # closing the only descriptor releases a lock we took
    return True


def test_lock_held_by_another_process_excludes_us_and_sigkill_frees_it(tmp_path):
    path = str(tmp_path / "LOCK")
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, path], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert Lines(child.stdout).next(TIMEOUT).strip() == "locked"
        assert not lock_is_free(path)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=TIMEOUT)
        lock = FileLock(path)
        assert lock.acquire(timeout=TIMEOUT)  # would wait forever if a killed holder kept the lock
        assert lock.held
        lock.release()
        lock.close()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=TIMEOUT)


def test_lock_is_reentrant_within_one_object_and_released_at_depth_zero(tmp_path):
    path = str(tmp_path / "LOCK")
    lock = FileLock(path)
    with lock:
        with lock:
            assert not lock_is_free(path)
        assert not lock_is_free(path)
    assert lock_is_free(path)
    lock.close()


def test_forked_child_never_shares_or_releases_the_parents_lock(tmp_path):
    path = str(tmp_path / "LOCK")
    lock = FileLock(path)
    lock.acquire()
    generation = fork_generation()
    pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            # After the fork the child sees a new generation, holds nothing, and its
            # own description cannot take the lock the parent holds.
            if fork_generation() != generation and not lock.held:
                lock._check_fork()
                try:
                    fcntl.flock(lock._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    lock.close()  # closing must not release the parent's lock either
                    code = 0
        finally:
            os._exit(code)
    assert wait_pid(pid, TIMEOUT) == 0
    assert lock.held
    assert not lock_is_free(path)  # the parent still holds it
    lock.release()
    assert lock_is_free(path)
    lock.close()
