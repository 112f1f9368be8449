"""A faulty file layer for tests: replaces iodict_log.fileops' primitives.

It can fail the n-th call of a primitive (``OSError`` with any errno; a write
can land half its bytes first, as a full disk does, or all of them, as an EIO
reported after the data went out may), and it can cut the power:
at the n-th call of any primitive everything stops (``PowerLoss``), and
``crash_image()`` rewrites the store directory as a machine that lost power
might find it. That model is POSIX's minimum, stricter than ext4's:

- a file's contents are what the last fsync of it made durable, followed by
  some of the bytes written since (none, a prefix, zeros or garbage);
- a directory holds the names its last fsync made durable, each naming the
  file it named then: a creation, rename or unlink not followed by a
  directory fsync is undone.

To keep inode numbers meaningful it holds every file it sees open until
``close()``, so the kernel never reuses one.
"""

from __future__ import annotations

import errno
import os
import random
import stat
from collections import Counter

from iodict_log import fileops

PRIMITIVES = ("open_fd", "write", "fsync", "fdatasync", "ftruncate", "truncate", "replace", "unlink")
UNTRACKED = ("LOCK", "COMPACT.LOCK", "holders")  # lock files (and lease holders' ones) hold no data: left as they are
TAILS = ("drop", "prefix", "zeros", "garbage")
LANDS = ("none", "half", "whole")


class PowerLoss(BaseException):
    """The simulated machine lost power: nothing more reaches the disk."""


class FaultyFS:
    def __init__(self, directory: str) -> None:
        self.directory = os.path.abspath(directory)
        self.calls = 0  # primitive calls so far, all kinds
        self.counts: Counter[str] = Counter()
        self.power_off_at: int | None = None
        self.off = False
        self.faults: list[tuple[str, int, int, str]] = []  # (primitive, nth call, errno, what of a write lands)
        self.injected = 0
        self.failed_writes: list[tuple[int, int]] = []  # (inode, its size before) of each write made to fail
        self._durable: dict[int, bytes] = {}  # inode -> contents at its last fsync
        self._names: dict[str, int] = {}  # name -> inode at the directory's last fsync
        self._open: dict[int, int] = {}  # inode -> a descriptor we keep so the inode stays ours
        if os.path.isdir(self.directory):  # what is there already counts as durable
            for name in os.listdir(self.directory):
                if name not in UNTRACKED:
                    self._track(os.path.join(self.directory, name))
            self._sync_dir()
            for ino, fd in self._open.items():
                self._durable[ino] = _contents(fd)

    # --- set-up -----------------------------------------------------------------

    def install(self, monkeypatch) -> FaultyFS:
        for name in PRIMITIVES:
            monkeypatch.setattr(fileops, name, getattr(self, name))
        return self

    def fail(self, primitive: str, nth: int, code: int = errno.ENOSPC, lands: str = "none") -> None:
        """Make the nth call of ``primitive`` raise OSError(code); a write first lands
        ``lands`` of its bytes: "none", "half" or "whole"."""
        assert lands in LANDS
        self.faults.append((primitive, nth, code, lands))

    def left_behind(self) -> list[str]:
        """Files of the store that a failed write changed: a write that raised must leave
        its file as it was before it (the writer truncates back)."""
        now = {}
        for name in os.listdir(self.directory):
            st = os.stat(os.path.join(self.directory, name))
            now[st.st_ino] = (name, st.st_size)
        return [now[ino][0] for ino, size in self.failed_writes if ino in now and now[ino][1] != size]

    def close(self) -> None:
        for fd in self._open.values():
            os.close(fd)
        self._open.clear()

    # --- the primitives -----------------------------------------------------------

    def _tick(self, name: str, fd: int | None = None, data: bytes | None = None) -> None:
        if self.off:
            raise PowerLoss
        self.calls += 1
        self.counts[name] += 1
        if self.calls == self.power_off_at:
            self.off = True
            raise PowerLoss
        for primitive, nth, code, lands in self.faults:
            if primitive == name and nth == self.counts[name]:
                self.injected += 1
                if fd is not None and data is not None:
                    st = os.fstat(fd)
                    self.failed_writes.append((st.st_ino, st.st_size))
                    os.write(fd, bytes(data[: {"none": 0, "half": len(data) // 2, "whole": len(data)}[lands]]))
                raise OSError(code, f"{os.strerror(code)} (injected)")

    def open_fd(self, path, flags, mode=0o777):
        self._tick("open_fd")
        fd = os.open(path, flags, mode)
        if stat.S_ISREG(os.fstat(fd).st_mode):
            self._track(path)
        return fd

    def write(self, fd, data):
        self._tick("write", fd, data)
        return os.write(fd, data)

    def fsync(self, fd):
        self._tick("fsync")
        os.fsync(fd)
        self._made_durable(fd)

    def fdatasync(self, fd):
        self._tick("fdatasync")
        os.fsync(fd)
        self._made_durable(fd)

    def ftruncate(self, fd, size):
        self._tick("ftruncate")
        os.ftruncate(fd, size)

    def truncate(self, path, size):
        self._tick("truncate")
        os.truncate(path, size)

    def replace(self, src, dst):
        self._tick("replace")
        os.replace(src, dst)

    def unlink(self, path):
        self._tick("unlink")
        os.unlink(path)

    def _track(self, path: str) -> None:
        ino = os.stat(path).st_ino
        if ino not in self._open:
            self._open[ino] = os.open(path, os.O_RDONLY)

    def _made_durable(self, fd: int) -> None:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            self._sync_dir()
        elif st.st_ino in self._open:  # (read through our own descriptor: fd may be write-only)
            self._durable[st.st_ino] = _contents(self._open[st.st_ino])

    def _sync_dir(self) -> None:
        self._names = {}
        for name in os.listdir(self.directory):
            if name not in UNTRACKED:
                path = os.path.join(self.directory, name)
                self._track(path)
                self._names[name] = os.stat(path).st_ino

    # --- after the power loss ---------------------------------------------------------

    def crash_image(self, rng: random.Random, tail: str | None = None) -> str:
        """Rewrite the directory as the machine finds it after the power loss; the
        kind of unsynced tail it chose (one of TAILS) for every file."""
        tail = tail or rng.choice(TAILS)
        images = {}
        for name, ino in self._names.items():
            durable = self._durable.get(ino, b"")
            now = _contents(self._open[ino])
            extra = now[len(durable) :] if now.startswith(durable) else b""
            cut = rng.randint(0, len(extra))
            images[name] = (
                durable
                + {
                    "drop": b"",
                    "prefix": extra[:cut],
                    "zeros": bytes(cut),
                    "garbage": rng.randbytes(cut),
                }[tail]
            )
        for name in os.listdir(self.directory):
            if name not in UNTRACKED:
                os.unlink(os.path.join(self.directory, name))
        for name, data in images.items():
            with open(os.path.join(self.directory, name), "wb") as f:
                f.write(data)
        return tail


def _contents(fd: int) -> bytes:
    return os.pread(fd, os.fstat(fd).st_size, 0)
