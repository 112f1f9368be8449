"""The inter-process write lock: one lock file per store, locked with flock.

The OS drops the lock when its holder dies, so a ``kill -9`` never blocks the
other processes. flock locks belong to the open file description, which a
forked child shares with its parent: unlocking in the child would release the
parent's lock, and merely keeping the inherited descriptor keeps the lock held
after the parent dies (every other process then waits for the child). So a
child closes its copy of every lock's descriptor at fork time (a fork hook) and
opens its own description the first time it locks.

The lock file is opened as a regular file only, never through a link: a LOCK
that is a dangling link must not create the file it points to.
"""

from __future__ import annotations

import os
import sys
import time
import weakref

import portalocker

from . import fileops
from .errors import LockTimeoutError

if sys.platform != "win32":
    import fcntl

    # portalocker.lock on POSIX is fcntl.flock behind several layers of Python that
    # cost ~6 us per lock/unlock pair against ~1 us for the call itself; every write
    # takes this lock, so POSIX calls flock directly and portalocker serves elsewhere.
    _flock = fcntl.flock
    _EX, _UN = fcntl.LOCK_EX, fcntl.LOCK_UN

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

else:  # pragma: no cover - exercised on Windows only
    _EX, _UN = portalocker.LOCK_EX, 0

    def _flock(fd: int, operation: int) -> None:
        with open(fd, "rb", closefd=False) as f:
            if operation == _UN:
                portalocker.unlock(f)
            else:
                portalocker.lock(f, operation)

    def _try_lock(fd: int) -> bool:
        with open(fd, "rb", closefd=False) as f:
            try:
                portalocker.lock(f, portalocker.LOCK_EX | portalocker.LOCK_NB)
            except portalocker.LockException:
                return False
        return True


_fork_generation = 0


_every_lock: weakref.WeakSet[FileLock] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    global _fork_generation
    _fork_generation += 1
    for lock in list(_every_lock):
        lock.close()  # (the parent's, maybe held: it must go with the parent)
        lock._depth = 0  # (a `with` the fork happened inside then leaves without unlocking anything)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def fork_generation() -> int:
    """A number that changes in a child after every fork: cheaper than getpid()."""
    return _fork_generation


class FileLock:
    """An exclusive lock on ``path``, reentrant within one object (a depth count).

    A forked child closes its copy of the descriptor at once, so that a parent
    killed while holding the lock does not leave it held by the child.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        # A time.monotonic() by which taking the lock must succeed, or LockTimeoutError:
        # set around one call by whoever serialises this object's users (LogHandle).
        self.deadline: float | None = None
        self._fd = -1
        self._depth = 0
        self._generation = -1
        self._open()
        _every_lock.add(self)

    def _open(self) -> None:
        self._fd = fileops.open_regular(self.path, os.O_RDWR | os.O_CREAT, opener=os.open)  # (not a data file)
        self._generation = _fork_generation
        self._depth = 0

    def _check_fork(self) -> None:
        if self._generation != _fork_generation:
            # (The fork hook closed the inherited descriptor, which may hold the parent's lock.)
            self._open()

    @property
    def held(self) -> bool:
        return self._depth > 0 and self._generation == _fork_generation

    @property
    def depth(self) -> int:
        """How many times this object holds the lock (0 if not, or in a forked child)."""
        return self._depth if self._generation == _fork_generation else 0

    # Every write takes the lock: __enter__/__exit__ do the work without further calls.

    def __enter__(self) -> FileLock:
        if self._generation != _fork_generation:
            self._check_fork()
        if self._depth == 0:
            if self.deadline is None:
                _flock(self._fd, _EX)
            elif not self._lock_by(self.deadline):
                raise LockTimeoutError(f"{self.path}: another process holds the lock")
        self._depth += 1
        return self

    def _lock_by(self, deadline: float) -> bool:
        """Poll for the lock until ``deadline``; whether it was taken. (flock has no
        timed wait, and a blocking flock cannot be interrupted by a deadline.)"""
        delay = 0.0005
        while not _try_lock(self._fd):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(delay, left))
            delay = min(delay * 2, 0.02)
        return True

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth == 0:
            _flock(self._fd, _UN)

    def acquire(self, timeout: float | None = None) -> bool:
        """Take the lock, waiting at most ``timeout`` seconds if given; whether it was taken."""
        if timeout is None:
            self.__enter__()
            return True
        self._check_fork()
        if self._depth == 0 and not self._lock_by(time.monotonic() + timeout):
            return False
        self._depth += 1
        return True

    def try_acquire(self) -> bool:
        """Take the lock if nobody holds it; whether it was taken."""
        self._check_fork()
        if self._depth == 0 and not _try_lock(self._fd):
            return False
        self._depth += 1
        return True

    def release(self) -> None:
        self.__exit__()

    def close(self) -> None:
        # Closing a descriptor shared with the parent does not release its lock:
        # flock is released by LOCK_UN or when the last descriptor closes.
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
