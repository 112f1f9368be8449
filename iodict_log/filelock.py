"""The inter-process write lock, and the change counter that tells readers whether to look.

Two kinds of lock file. A plain one (``COMPACT.LOCK``) is locked with flock.
A store's ``LOCK`` is *mapped* (``mapped=True``, docs/CONCURRENCY.md "The LOCK
file"): 4 KiB shared by every process through MAP_SHARED, holding a header, a
u64 change counter and, under the "mutex" protocol, a robust process-shared
pthread mutex. The header records the store-wide protocol, chosen once when the
file is initialised (under flock(LOCK_EX), the magic written last; an empty
LOCK from iodict_log 0.2 is initialised the same way):

- "mutex" (Linux/glibc): the write lock is the mutex. The native build takes it
  through iodict_log._native (_lock.c), the pure-Python build through ctypes on
  libc: the same pthread calls on the same bytes, so both builds exclude each
  other. A holder killed with SIGKILL is reported to the next taker
  (EOWNERDEAD): it makes the mutex consistent, sets ``owner_died`` and the
  log's next refresh under the lock checks the files in full. glibc's owner
  TIDs mean nothing across PID namespaces, so a process of another namespace
  (or one that cannot use the mutex) refuses to open the store.
- "flock" (elsewhere, or ``IODICT_LOG_LOCK=flock`` at initialisation): today's
  flock on LOCK; the kernel drops it when its holder dies.

Every release of the write lock (depth back to 0) adds one to the counter
before unlocking, so "did anyone change the store since I looked" is one
memory read (Log.refresh). Only a holder ever writes it.

fork: the mapping survives (MAP_SHARED) and a child never unlocks its parent's
hold (its depth is reset at fork time). flock locks belong to the open file
description, which a forked child shares: unlocking in the child would release
the parent's lock, and keeping the inherited descriptor keeps the lock held
after the parent dies. So a child closes its copy of every flock descriptor at
fork time (a fork hook) and opens its own description the first time it locks.
Under the mutex protocol the descriptor is closed once the file is mapped.

A read-only reader (``readonly=True``, docs/CONCURRENCY.md "Read-only readers")
never takes the lock and never creates, initialises or writes LOCK: it maps an
initialised LOCK read-only (PROT_READ) for its change counter, and without one
(no LOCK, not readable, not laid out yet) ``changes()`` is NaN, so every
catch-up looks at the file's end instead. Taking the lock raises ReadOnlyError.

The lock file is opened as a regular file only, never through a link: a LOCK
that is a dangling link must not create the file it points to.
"""

from __future__ import annotations

import errno
import os
import struct
import sys
import time
import weakref
from typing import Any

import portalocker

from . import fileops
from .errors import CorruptionError, IODictLogError, LockTimeoutError, ReadOnlyError
from .native import core

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


# --- the LOCK file's layout (docs/CONCURRENCY.md) ------------------------------

LOCK_MAGIC = b"IODLLOCK"
LOCK_VERSION = 1
PROTOCOL_FLOCK, PROTOCOL_MUTEX = 1, 2
PROTOCOLS = {PROTOCOL_FLOCK: "flock", PROTOCOL_MUTEX: "mutex"}
# magic, version, protocol, sizeof(pthread_mutex_t) (0 under flock), reserved, PID namespace (0: unknown)
LOCK_HEADER = struct.Struct("<8sIIIIQ")
COUNTER_OFFSET = 64  # u64, native byte order, 8-byte aligned
MUTEX_OFFSET = 128
MUTEX_ROOM = 256  # bytes reserved for the mutex
LOCK_FILE_SIZE = 4096
LOCK_ENV = "IODICT_LOG_LOCK"  # "flock" forces the flock protocol on a LOCK being initialised

_NAN = float("nan")
_WAIT_SLICE = 0.1  # a blocked wait for the mutex looks at signals this often (seconds)


def _pid_namespace() -> int:
    """This process's PID namespace (the inode of /proc/self/ns/pid), 0 if unknown."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


# --- the mutex and the counter: pure-Python versions of _lock.c's functions ---------

_libc: Any = None
_mmap: Any = None
_no_mutex = "no robust process-shared pthread mutexes on this platform (Linux with glibc only)"
_MUTEX_SIZE_PROBE = 256
if sys.platform != "win32":
    try:
        import ctypes
        import mmap as _mmap_module

        _libc = ctypes.CDLL(None, use_errno=True)
        _mmap = _libc.mmap
        _mmap.restype = ctypes.c_void_p
        _mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
        _munmap = _libc.munmap
        _munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        _U64 = ctypes.c_uint64
    except (ImportError, OSError, AttributeError):  # pragma: no cover - no ctypes or no libc mmap
        _libc = _mmap = None
        _no_mutex = "ctypes cannot reach libc here"

_pthread: Any = None
if (
    _libc is not None
    and sys.platform.startswith("linux")
    and (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
):
    try:
        # Held without releasing the GIL (PyDLL): trylock, unlock, consistent never wait.
        _quick = ctypes.PyDLL(None)
        _trylock, _unlock, _consistent = (
            _quick.pthread_mutex_trylock,
            _quick.pthread_mutex_unlock,
            _quick.pthread_mutex_consistent,
        )
        _init_attr = (
            _libc.pthread_mutexattr_init,
            _libc.pthread_mutexattr_setpshared,
            _libc.pthread_mutexattr_setrobust,
        )
        _settype, _mutex_init, _attr_destroy = (
            _libc.pthread_mutexattr_settype,
            _libc.pthread_mutex_init,
            _libc.pthread_mutexattr_destroy,
        )
        try:  # (glibc 2.30+: a wait on CLOCK_MONOTONIC, the clock of time.monotonic())
            _clocklock: Any = _libc.pthread_mutex_clocklock
            _timedlock: Any = None
        except AttributeError:  # pragma: no cover - glibc before 2.30
            _clocklock, _timedlock = None, _libc.pthread_mutex_timedlock
        for _fn in (_trylock, _unlock, _consistent, _mutex_init, _settype, *_init_attr, _attr_destroy):
            _fn.restype = ctypes.c_int
        for _fn in (_trylock, _unlock, _consistent):
            _fn.argtypes = [ctypes.c_void_p]  # (addresses passed as ints, converted in C)
        _pthread = _libc
    except AttributeError:  # pragma: no cover - a libc without robust mutexes
        _no_mutex = "this libc has no robust mutexes"

# glibc's values (the mutex protocol is glibc's pthread_mutex_t, nothing else)
_PROCESS_SHARED, _ROBUST, _ERRORCHECK = 1, 1, 2
_CLOCK_MONOTONIC = 1


class _Timespec(ctypes.Structure if _libc is not None else object):  # type: ignore[misc]
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)] if _libc is not None else []


def mutex_size() -> int:
    """sizeof(pthread_mutex_t), 0 without robust mutexes. glibc's pthread_mutex_init
    clears exactly that many bytes first: measured on a buffer of 0xff bytes."""
    if _pthread is None:
        return 0
    probe = ctypes.create_string_buffer(b"\xff" * _MUTEX_SIZE_PROBE, _MUTEX_SIZE_PROBE)
    if _mutex_init(probe, None) != 0:
        return 0
    return probe.raw.index(b"\xff")


def init_mutex(address: int) -> None:
    """Initialise a robust, process-shared, error-checking mutex at ``address``."""
    attr = ctypes.create_string_buffer(64)  # (pthread_mutexattr_t: 4 bytes on glibc)
    init, setpshared, setrobust = _init_attr
    rc = init(attr)
    if rc == 0:
        rc = setpshared(attr, _PROCESS_SHARED) or setrobust(attr, _ROBUST) or _settype(attr, _ERRORCHECK)
        rc = rc or _mutex_init(ctypes.c_void_p(address), attr)
        _attr_destroy(attr)
    if rc != 0:
        raise OSError(rc, os.strerror(rc), "pthread_mutex_init")


def _recovered(address: int) -> int:
    """Taken from a holder that died: make the mutex consistent again."""
    rc = _consistent(address)
    if rc != 0:
        raise OSError(rc, os.strerror(rc), "pthread_mutex_consistent")
    return 1


def try_mutex(address: int) -> int:
    """0 taken, 1 taken from a holder that died, 2 busy (or held by this thread elsewhere)."""
    rc = _trylock(address)
    return 0 if rc == 0 else _tried(address, rc)


def _tried(address: int, rc: int) -> int:
    """What a trylock that did not return 0 means (as try_mutex)."""
    if rc == errno.EBUSY or rc == errno.EDEADLK:
        return 2
    if rc == errno.EOWNERDEAD:
        return _recovered(address)
    raise OSError(rc, os.strerror(rc), "pthread_mutex_trylock")


def take_mutex(address: int, deadline: float | None) -> int:
    """Take the mutex, waiting until ``deadline`` (time.monotonic(); None: as long as it
    takes) with the GIL released: 0 taken, 1 from a holder that died, 2 not by the deadline."""
    rc = _trylock(address)
    if rc == 0:
        return 0
    taken = _tried(address, rc)
    if taken != 2:
        return taken
    mutex = ctypes.c_void_p(address)
    until = _Timespec()
    while True:
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            return 2
        end = now + _WAIT_SLICE if deadline is None else min(deadline, now + _WAIT_SLICE)
        if _clocklock is not None:
            until.tv_sec, until.tv_nsec = int(end), int(end % 1 * 1e9)
            rc = _clocklock(mutex, _CLOCK_MONOTONIC, ctypes.byref(until))
        else:  # pragma: no cover - glibc before 2.30: the same wait on the wall clock
            real = time.time() + (end - now)
            until.tv_sec, until.tv_nsec = int(real), int(real % 1 * 1e9)
            rc = _timedlock(mutex, ctypes.byref(until))
        if rc == 0:
            return 0
        if rc == errno.EOWNERDEAD:
            return _recovered(address)
        if rc == errno.EDEADLK and deadline is not None:
            return 2  # (this thread holds it through another object: not by any deadline)
        if rc != errno.ETIMEDOUT:
            raise OSError(rc, os.strerror(rc), "pthread_mutex_clocklock")
        # (between slices Python runs its signal handlers: Ctrl-C interrupts a wait)


def give_mutex(address: int) -> None:
    rc = _unlock(address)
    if rc != 0:
        raise OSError(rc, os.strerror(rc), "pthread_mutex_unlock")


# The pure-Python versions stay reachable (tests take one mutex through both builds).
PURE_MUTEX = {f.__name__: f for f in (mutex_size, init_mutex, try_mutex, take_mutex, give_mutex)}
if core is not None:
    mutex_size, init_mutex, try_mutex, take_mutex, give_mutex = (  # noqa: F811 (the C versions of the above)
        core.mutex_size,
        core.init_mutex,
        core.try_mutex,
        core.take_mutex,
        core.give_mutex,
    )
    _changes: Any = core.changes
    _bump: Any = core.bump
else:
    _changes = _bump = None
_SIZE_OF_MUTEX = mutex_size() if mutex_size() <= MUTEX_ROOM else 0  # (0: the flock protocol only)


# --- fork ----------------------------------------------------------------------

_fork_generation = 0

_every_lock: weakref.WeakSet[FileLock] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    global _fork_generation
    _fork_generation += 1
    for lock in list(_every_lock):
        lock._close_descriptor()  # (the parent's, maybe flocked: it must go with the parent)
        lock._depth = 0  # (a `with` the fork happened inside then leaves without unlocking anything)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def fork_generation() -> int:
    """A number that changes in a child after every fork: cheaper than getpid()."""
    return _fork_generation


class FileLock:
    """An exclusive lock on ``path``, reentrant within one object (a depth count).

    ``mapped``: the path is a store's LOCK file, mapped, with its change counter
    and its protocol (the module docstring). A forked child never holds or
    releases what its parent holds. ``readonly``: only the counter, read through
    a read-only mapping if LOCK is there; the lock itself is never taken.
    """

    def __init__(self, path: str, mapped: bool = False, readonly: bool = False) -> None:
        self.path = path
        # A time.monotonic() by which taking the lock must succeed, or LockTimeoutError:
        # set around one call by whoever serialises this object's users (LogHandle).
        self.deadline: float | None = None
        # Taken from a holder that died (mutex protocol): anything may have changed
        # uncounted; the log's next refresh under the lock checks in full and clears it.
        self.owner_died = False
        self._fd = -1
        self._depth = 0
        self._generation = -1
        self._map = 0  # address of the mapped LOCK file, 0 if not mapped
        self._mutex = 0  # address of the mutex in the mapping, 0 under the flock protocol
        self._counter = 0  # address of the change counter, 0 if not mapped
        self._count: Any = None  # (pure build) a ctypes u64 over the counter
        self._released = 0  # the counter value this object's last release produced
        self.protocol = "flock"
        self.readonly = readonly
        if readonly:
            if mapped:
                self._attach_readonly()
        else:
            if mapped:
                self._attach()
            if not self._mutex:
                self._open()
        self._generation = _fork_generation
        _every_lock.add(self)

    # --- the mapped LOCK file -------------------------------------------------

    def _attach(self) -> None:
        """Map the LOCK file, initialising it first if it is empty; check its header."""
        if _mmap is None:  # pragma: no cover - Windows: a plain flock, no counter
            return
        fd = fileops.open_regular(self.path, os.O_RDWR | os.O_CREAT, opener=os.open)
        try:
            header = os.pread(fd, LOCK_HEADER.size, 0)
            if header[:8] != LOCK_MAGIC:
                _flock(fd, _EX)  # (the initialiser's; never the write lock's description)
                try:
                    header = os.pread(fd, LOCK_HEADER.size, 0)
                    if header[:8] != LOCK_MAGIC:
                        header = self._initialise(fd, header)
                finally:
                    _flock(fd, _UN)
            protocol = self._check_header(fd, header)
            address = self._map_file(fd)
        finally:
            os.close(fd)  # (the mapping stays; a flock protocol opens its own description)
        self._map = address
        self._counter = address + COUNTER_OFFSET
        self._count = _U64.from_address(self._counter)
        self.protocol = PROTOCOLS[protocol]
        if protocol == PROTOCOL_MUTEX:
            self._mutex = address + MUTEX_OFFSET

    def _attach_readonly(self) -> None:
        """Map an initialised LOCK read-only, for its counter; without one, no counter."""
        if _mmap is None:  # pragma: no cover - Windows: no counter
            return
        try:
            fd = fileops.open_regular(self.path, os.O_RDONLY, opener=os.open)
        except (OSError, CorruptionError):
            return  # (missing, unreadable or not a file: every catch-up looks at the file's end)
        try:
            header = os.pread(fd, LOCK_HEADER.size, 0)
            if (
                len(header) < LOCK_HEADER.size
                or header[:8] != LOCK_MAGIC
                or LOCK_HEADER.unpack(header)[1] != LOCK_VERSION
                or os.fstat(fd).st_size != LOCK_FILE_SIZE
            ):
                return  # (not laid out yet, or not one this version reads: no counter)
            address = self._map_file(fd, writable=False)
        finally:
            os.close(fd)
        self._map = address
        self._counter = address + COUNTER_OFFSET
        self._count = _U64.from_address(self._counter)
        self.protocol = PROTOCOLS.get(LOCK_HEADER.unpack(header)[2], "flock")

    def _map_file(self, fd: int, writable: bool = True) -> int:
        """Map the whole LOCK file, shared; its address. (Through libc, not the mmap
        module, which keeps a duplicate descriptor a forked child would inherit.)"""
        prot = _mmap_module.PROT_READ | (_mmap_module.PROT_WRITE if writable else 0)
        address = _mmap(None, LOCK_FILE_SIZE, prot, _mmap_module.MAP_SHARED, fd, 0)
        if address in (None, ctypes.c_void_p(-1).value):
            err = ctypes.get_errno()
            raise OSError(err, f"cannot map the lock file: {os.strerror(err)}", self.path)
        return address

    def _initialise(self, fd: int, header: bytes) -> bytes:
        """Under flock(LOCK_EX): lay out an empty LOCK (or one whose initialiser died
        before writing the magic); CorruptionError for anything else. The header."""
        size = os.fstat(fd).st_size
        if not (size == 0 or (size == LOCK_FILE_SIZE and header[:8] == bytes(8))):
            raise self._damaged("it holds something other than an iodict_log lock")
        wanted = os.environ.get(LOCK_ENV, "")
        if wanted not in ("", "flock", "mutex"):
            raise ValueError(f"{LOCK_ENV} must be 'flock' or 'mutex', not {wanted!r}")
        size_of_mutex = _SIZE_OF_MUTEX if wanted != "flock" else 0
        if wanted == "mutex" and not size_of_mutex:
            raise IODictLogError(f"{self.path}: {LOCK_ENV}=mutex, but {_no_mutex}")
        protocol = PROTOCOL_MUTEX if size_of_mutex else PROTOCOL_FLOCK
        os.ftruncate(fd, 0)
        os.ftruncate(fd, LOCK_FILE_SIZE)  # (zeros: the counter starts at 0)
        if protocol == PROTOCOL_MUTEX:
            address = self._map_file(fd)
            try:
                init_mutex(address + MUTEX_OFFSET)
            finally:
                _munmap(address, LOCK_FILE_SIZE)
        header = LOCK_HEADER.pack(LOCK_MAGIC, LOCK_VERSION, protocol, size_of_mutex, 0, _pid_namespace())
        os.pwrite(fd, header[8:], 8)
        os.pwrite(fd, header[:8], 0)  # the magic last: a LOCK with it is ready to use
        return header

    def _check_header(self, fd: int, header: bytes) -> int:
        """The header's protocol, if this process can follow it; else a clear error."""
        if len(header) < LOCK_HEADER.size or os.fstat(fd).st_size != LOCK_FILE_SIZE:
            raise self._damaged("it is cut short or has grown")
        _, version, protocol, size_of_mutex, _, namespace = LOCK_HEADER.unpack(header)
        if version != LOCK_VERSION:
            raise IODictLogError(f"{self.path}: a lock file of version {version}, which this iodict_log cannot use")
        if protocol not in PROTOCOLS:
            raise self._damaged(f"it names an unknown lock protocol ({protocol})")
        if protocol == PROTOCOL_MUTEX:
            if size_of_mutex != _SIZE_OF_MUTEX:
                why = _no_mutex if not _SIZE_OF_MUTEX else "its mutex was made by a different C library or architecture"
                raise self._cannot_follow(why)
            if namespace != _pid_namespace():
                raise self._cannot_follow(
                    "it was created in another PID namespace (another container?), where the mutex's owner"
                    " thread ids mean something else"
                )
        return protocol

    def _damaged(self, why: str) -> CorruptionError:
        return CorruptionError(
            f"{self.path}: not a usable lock file ({why}); stop every process using the store,"
            " delete LOCK, and open the store again"
        )

    def _cannot_follow(self, why: str) -> IODictLogError:
        return IODictLogError(
            f"{self.path}: this store's write lock is a robust mutex this process cannot use: {why}."
            f" Use the store only from processes of one PID namespace on one machine, or stop every"
            f" process using it, delete LOCK, and open it again with {LOCK_ENV}=flock in the environment"
        )

    # --- the flock descriptor -------------------------------------------------

    def _open(self) -> None:
        self._fd = fileops.open_regular(self.path, os.O_RDWR | os.O_CREAT, opener=os.open)  # (not a data file)

    def _check_fork(self) -> None:
        if self._generation != _fork_generation:
            # (The fork hook closed an inherited flock descriptor, which may hold the parent's lock.)
            if not self._mutex and not self.readonly:
                self._open()
            self._generation = _fork_generation
            self._depth = 0

    @property
    def held(self) -> bool:
        return self._depth > 0 and self._generation == _fork_generation

    @property
    def depth(self) -> int:
        """How many times this object holds the lock (0 if not, or in a forked child)."""
        return self._depth if self._generation == _fork_generation else 0

    if _changes is None:

        def changes(self) -> float:
            """The change counter (an int); NaN, equal to nothing, without one."""
            count = self._count
            return _NAN if count is None else count.value

    else:

        def changes(self) -> float:
            """The change counter (an int); NaN, equal to nothing, without one."""
            return _changes(self._counter) if self._counter else _NAN

    # Every write takes the lock: __enter__/__exit__ do the work without further calls.

    def __enter__(self) -> FileLock:
        if self._generation != _fork_generation:
            self._check_fork()
        if self._depth == 0:
            if self._mutex:
                try:
                    taken = take_mutex(self._mutex, self.deadline)
                except OSError as exc:
                    raise self._mutex_error(exc) from exc
                if taken:
                    self._taken(taken)
            elif self.readonly:
                raise self._refused()
            elif self.deadline is None:
                _flock(self._fd, _EX)
            elif not self._lock_by(self.deadline):
                raise LockTimeoutError(f"{self.path}: another process holds the lock")
        self._depth += 1
        return self

    def _refused(self) -> ReadOnlyError:
        return ReadOnlyError(f"{self.path}: the store is open read-only; its write lock is never taken")

    def _taken(self, taken: int) -> None:
        """take_mutex said 1 (from a holder that died) or 2 (not by the deadline)."""
        if taken == 2:
            raise LockTimeoutError(f"{self.path}: another process holds the lock")
        self.owner_died = True

    def _mutex_error(self, exc: OSError) -> IODictLogError:
        if exc.errno == errno.EDEADLK:
            return IODictLogError(
                f"{self.path}: this thread already holds the store's write lock through another"
                " object on the same store; waiting for it would never end"
            )
        return IODictLogError(f"{self.path}: the write lock's mutex failed: {exc}")

    def _lock_by(self, deadline: float) -> bool:
        """Poll for the flock until ``deadline``; whether it was taken. (flock has no
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
            if self._count is not None:  # (counted before unlocking: only a holder writes it)
                if _bump is None:
                    self._released = self._count.value = self._count.value + 1
                else:
                    self._released = _bump(self._counter)
            if self._mutex:
                give_mutex(self._mutex)
            else:
                _flock(self._fd, _UN)

    def acquire(self, timeout: float | None = None) -> bool:
        """Take the lock, waiting at most ``timeout`` seconds if given; whether it was taken."""
        if timeout is None:
            self.__enter__()
            return True
        if self.readonly:
            raise self._refused()
        self._check_fork()
        if self._depth == 0:
            if self._mutex:
                try:
                    taken = take_mutex(self._mutex, time.monotonic() + timeout)
                except OSError as exc:
                    raise self._mutex_error(exc) from exc
                if taken == 2:
                    return False
                self.owner_died = self.owner_died or taken == 1
            elif not self._lock_by(time.monotonic() + timeout):
                return False
        self._depth += 1
        return True

    def try_acquire(self) -> bool:
        """Take the lock if nobody holds it; whether it was taken."""
        if self.readonly:
            raise self._refused()
        self._check_fork()
        if self._depth == 0:
            if self._mutex:
                try:
                    taken = try_mutex(self._mutex)
                except OSError as exc:
                    raise self._mutex_error(exc) from exc
                if taken == 2:
                    return False
                self.owner_died = self.owner_died or taken == 1
            elif not _try_lock(self._fd):
                return False
        self._depth += 1
        return True

    def release(self) -> None:
        self.__exit__()

    def _close_descriptor(self) -> None:
        # Closing a descriptor shared with the parent does not release its lock:
        # flock is released by LOCK_UN or when the last descriptor closes.
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def close(self) -> None:
        """Close the descriptor and unmap the LOCK file, letting go of a hold first."""
        if self._mutex and self.held:
            # (glibc links the robust mutexes a thread holds into a list through the
            # mutexes themselves: one held in an unmapped page would crash the next unlock)
            self._depth = 1
            self.__exit__()
        self._close_descriptor()
        if self._map:
            self._count = None
            self._mutex = self._counter = 0
            _munmap(self._map, LOCK_FILE_SIZE)
            self._map = 0
