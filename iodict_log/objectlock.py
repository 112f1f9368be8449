"""The in-process lock behind the ``lock`` argument, and keeping it fork-safe.

``lock`` may be None (the store makes an RLock), a lock instance, or a lock
factory such as ``threading.Lock`` or ``multiprocessing.Lock`` (as iodict's
users pass it). A thread lock the store made itself is also held across
``os.fork()``: a fork while another thread is inside a store call would
otherwise hand the child a lock that nobody will ever release and an index
caught half-way through an update. Locks the caller passed in are the
caller's to manage, and a process-shared lock (multiprocessing) must not be
released once in the parent and again in the child.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any

_THREAD_LOCK_TYPES = (type(threading.Lock()), type(threading.RLock()))
_held_across_fork: dict[int, Any] = {}  # id(owner) -> its lock, while the owner lives


class _LockAdapter:
    """Gives ``with`` to a lock that only has acquire() and release()."""

    __slots__ = ("_lock",)

    def __init__(self, lock: Any) -> None:
        self._lock = lock

    def __enter__(self) -> None:
        self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


def make_lock(lock: Any, owner: object) -> Any:
    """A lock usable with ``with``, from None, a lock instance, or a lock factory."""
    made = lock is None or isinstance(lock, type) or not hasattr(lock, "acquire")
    if lock is None:
        lock = threading.RLock()
    elif made:
        if not callable(lock):
            raise TypeError(f"lock must be a lock, a lock factory or None, not {type(lock).__name__!r}")
        lock = lock()
    if not (hasattr(lock, "acquire") and hasattr(lock, "release")):
        raise TypeError(f"lock has no acquire()/release(): {lock!r}")
    if made and isinstance(lock, _THREAD_LOCK_TYPES):
        _held_across_fork[id(owner)] = lock
        weakref.finalize(owner, _held_across_fork.pop, id(owner), None)  # owners may be unhashable
    return lock if hasattr(lock, "__enter__") and hasattr(lock, "__exit__") else _LockAdapter(lock)


def _before_fork() -> None:
    for lock in list(_held_across_fork.values()):
        lock.acquire()


def _after_fork() -> None:
    for lock in list(_held_across_fork.values()):
        lock.release()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork, after_in_child=_after_fork)
