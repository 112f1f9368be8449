"""Lease holders: one per process and store, alive exactly as long as its process.

Theory of operation
-------------------
A lease names its holder by a token, a random 63-bit number other than 0. A
process that takes its first lease on a store becomes a holder there: it
creates ``holders/<token as 16 hex digits>.tmp``, takes a POSIX record lock
(``fcntl(F_SETLK, F_WRLCK)``) on the whole file, and renames it to its final
name, so that no one ever sees the final name unlocked while its holder lives.
It keeps the descriptor open, never closing it, for as long as it lives.

Whether another holder lives is one non-blocking try of the same lock on its
file. The kernel drops a POSIX lock when its process dies, however it dies
(``SIGKILL``, the OOM killer, a crash), so the try fails exactly while the
holder lives: no PIDs, no heartbeats, no clock. A try that succeeds means the
holder is dead: the taker deletes the file and closes it (which drops its own
lock). A missing file means dead too. A holder found alive is believed alive
for CHECK_EVERY seconds before it is tried again, so a dead holder's leases
come back within about that long after a live consumer next looks.

POSIX locks belong to a process, not to a descriptor, which fixes three rules:

- A process never tries the lock of its own holder file (it would get it, and
  closing that descriptor would drop its lock): one holder serves every object
  of the process on that store, however its path is spelled (``_mine``, by the
  holders directory's device and inode), and a file that is one of its own
  (same device and inode) is known alive without being opened.
- A forked child holds none of its parent's locks. It forgets the parent's
  holder (an ``after_in_child`` hook) and becomes a holder of its own on its
  first lease. The parent's leases stay the parent's: they come back when the
  parent dies, whatever its children do.
- Holders in other PID namespaces (containers sharing the store's directory)
  are judged the same way: the lock lives on the file's inode in the one
  kernel, whatever PIDs each namespace sees. Machines sharing a network file
  system are not supported (the store is for local disks; lock semantics over
  NFS vary).

A holder that lost its lock another way (someone deleted its file) is judged
dead by the others, and its leases come back: they are then refused to it as
expired (LeaseExpiredError), so no item is acked twice. Joining also sweeps
the files of dead holders that held no lease when they died.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
import time

from . import fileops

HOLDERS_DIR = "holders"
CHECK_EVERY = 0.25  # seconds a holder found alive is believed alive before it is tried again
_BUSY = (errno.EAGAIN, errno.EACCES)  # what F_SETLK answers when another process holds the lock


class _Mine:
    """This process's holders, by the holders directory's (device, inode): tokens, their
    locked descriptors, and the (device, inode) of the files those lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tokens: dict[tuple[int, int], int] = {}
        self.fds: dict[tuple[int, int], int] = {}
        self.files: set[tuple[int, int]] = set()

    def forget(self) -> None:
        """In a forked child: the parent's locks are not ours (closing our copies drops nothing)."""
        for fd in self.fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self.lock = threading.Lock()
        self.tokens.clear()
        self.fds.clear()
        self.files.clear()


_mine = _Mine()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_mine.forget)


def holder_name(token: int) -> str:
    return f"{token:016x}"


class Holders:
    """One store's holders as this process sees them: its own token, and who lives."""

    def __init__(self, directory: str, readonly: bool = False) -> None:
        self.directory = os.path.join(directory, HOLDERS_DIR)
        # A read-only reader only judges: it tries a shared lock through a read-only
        # descriptor (the holder's exclusive one refuses it just the same) and deletes nothing.
        self.readonly = readonly
        self._alive_until: dict[int, float] = {}  # token -> time.monotonic() it is believed alive until
        self._key: tuple[int, int] | None = None  # the directory's (device, inode), once it exists

    def own(self) -> int:
        """This process's token on the store, becoming a holder first if it is not one."""
        if self._key is None:
            os.makedirs(self.directory, mode=0o755, exist_ok=True)
            info = os.stat(self.directory)
            self._key = (info.st_dev, info.st_ino)
        token = _mine.tokens.get(self._key)
        if token is not None:
            return token
        with _mine.lock:
            token = _mine.tokens.get(self._key)
            if token is None:
                token = self._join(self._key)
        return token

    def _join(self, key: tuple[int, int]) -> int:
        token = int.from_bytes(os.urandom(8), "little") >> 1 or 1
        final = os.path.join(self.directory, holder_name(token))
        tmp = final + ".tmp"
        fd = fileops.create_new(tmp)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # (a new file: no one else has it)
            fileops.replace(tmp, final)
        except BaseException:
            os.close(fd)
            raise
        os.set_inheritable(fd, False)
        info = os.fstat(fd)
        _mine.files.add((info.st_dev, info.st_ino))
        _mine.tokens[key], _mine.fds[key] = token, fd
        self._sweep(token)
        return token

    def _sweep(self, token: int) -> None:
        """Delete the files of holders that died holding nothing anyone asked about."""
        for name in os.listdir(self.directory):
            if len(name) == 16 and name != holder_name(token):
                try:
                    self.alive(int(name, 16))
                except ValueError:
                    pass  # (not a holder's name)

    def alive(self, token: int) -> bool:
        """Whether the holder ``token`` lives (believed for CHECK_EVERY after it was seen alive)."""
        now = time.monotonic()
        if self._alive_until.get(token, 0.0) > now:
            return True
        path = os.path.join(self.directory, holder_name(token))
        try:
            info = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            self._alive_until.pop(token, None)
            return False
        except OSError:
            return True  # (not ours to judge)
        if (info.st_dev, info.st_ino) in _mine.files:
            return True  # ours: never opened here, as closing it would drop our lock
        try:
            mode = os.O_RDONLY if self.readonly else os.O_RDWR
            fd = os.open(path, mode | fileops.NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            self._alive_until.pop(token, None)
            return False
        except OSError:
            return True  # (not ours to judge: no access. The lease_timeout, if any, still holds)
        try:
            try:
                fcntl.lockf(fd, (fcntl.LOCK_SH if self.readonly else fcntl.LOCK_EX) | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in _BUSY:
                    return True
                self._alive_until[token] = now + CHECK_EVERY
                return True
            if self.readonly:
                return False  # (its file stays for a writer to delete)
            try:
                os.unlink(path)  # dead: its file goes (we hold its lock, so no one else judges it now)
            except OSError:
                pass
            self._alive_until.pop(token, None)
            return False
        finally:
            os.close(fd)
