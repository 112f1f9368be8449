"""The file layer: every system call that creates, changes, syncs, renames or
deletes a store's files, and the crash-safe sequences built from them.

The primitives are module attributes, and the rest of the package calls them
through this module (``fileops.write``, never ``from .fileops import write``),
so tests can replace them with faulty ones: a partial write then ``ENOSPC``,
``EIO`` from fsync, or a recorder that simulates a power loss by cutting every
file back to what was fsynced (tests/faultyfs.py). Reads (``pread``, ``lseek``)
change nothing and stay direct.
"""

from __future__ import annotations

import os
import stat
from typing import Callable

from .errors import CorruptionError

# --- the primitives (replaceable) -----------------------------------------------

open_fd = os.open
write = os.write
fsync = os.fsync
fdatasync = getattr(os, "fdatasync", os.fsync)  # (fsync on macOS and Windows)
ftruncate = os.ftruncate
truncate = os.truncate
replace = os.replace
unlink = os.unlink

NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
NONBLOCK = getattr(os, "O_NONBLOCK", 0)


# --- sequences ------------------------------------------------------------------


def sync_directory(path: str) -> None:
    """fsync a directory so that creations, renames and deletions in it are durable."""
    fd = open_fd(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        fsync(fd)
    finally:
        os.close(fd)


def replace_file(path: str, data: bytes) -> None:
    """Atomically give ``path`` the contents ``data``, durably, even across power loss."""
    tmp = path + ".tmp"
    write_file(tmp, data)
    replace(tmp, path)
    sync_directory(os.path.dirname(path) or ".")


def open_regular(path: str, flags: int, mode: int = 0o644, opener: Callable[..., int] | None = None) -> int:
    """A descriptor on the regular file ``path``, never through a link; opened with
    ``opener`` (default: open_fd, the replaceable primitive).

    FileNotFoundError / FileExistsError as os.open raises them; CorruptionError,
    naming the path, if it is a link, a directory, a FIFO or another special file.
    """
    try:
        fd = (opener or open_fd)(path, flags | NOFOLLOW | NONBLOCK, mode)
    except (FileNotFoundError, FileExistsError):
        raise
    except OSError:
        if os.path.islink(path):
            raise CorruptionError(f"{path}: is a symbolic link; a store's files never are") from None
        if os.path.isdir(path):
            raise CorruptionError(f"{path}: is a directory, not a file") from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise CorruptionError(f"{path}: is not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd


def create_new(path: str) -> int:
    """A write descriptor on a new, empty file ``path`` (a temporary file): whatever
    had that name is removed first, a link included (never its target)."""
    try:
        unlink(path)
    except FileNotFoundError:
        pass
    except IsADirectoryError:
        raise CorruptionError(f"{path}: is a directory, not a file") from None
    return open_regular(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)


def write_file(path: str, data: bytes, *, sync: bool = True) -> None:
    """Write ``data`` into a new file ``path`` (create_new), fsynced unless told not to."""
    fd = create_new(path)
    try:
        write_all(fd, data)
        if sync:
            fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes | memoryview) -> None:
    """write() until everything is written (a write may be short)."""
    done = write(fd, data)
    if done != len(data):
        view = memoryview(data)[done:]
        while view:
            view = view[write(fd, view) :]


def store_path(path: str | os.PathLike) -> str:
    """A store's directory as an absolute path with ``~`` expanded, fixed at open:
    a later os.chdir() must not move the store under an open object."""
    return os.path.abspath(os.path.expanduser(os.fspath(path)))


def read_file(path: str, max_bytes: int | None = None) -> bytes:
    """The contents of the small regular file ``path``, never through a symbolic link.

    FileNotFoundError if it is missing; CorruptionError, naming the path, if it is
    a link, a directory, a FIFO or another special file, or larger than
    ``max_bytes``, so that a hostile store cannot make a reader hang or fill memory.
    """
    fd = open_regular(path, os.O_RDONLY, opener=os.open)  # (a read: not through open_fd)
    try:
        info = os.fstat(fd)
        if max_bytes is not None and info.st_size > max_bytes:
            raise CorruptionError(f"{path}: is {info.st_size} bytes, more than the {max_bytes} it can hold")
        chunks = []
        left = info.st_size if max_bytes is None else max_bytes + 1
        while left > 0:
            chunk = os.read(fd, min(left, 2**24))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        if max_bytes is not None and len(data) > max_bytes:
            raise CorruptionError(f"{path}: grew past the {max_bytes} bytes it can hold")
        return data
    finally:
        os.close(fd)
