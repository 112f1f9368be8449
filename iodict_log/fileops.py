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

# --- the primitives (replaceable) -----------------------------------------------

open_fd = os.open
write = os.write
fsync = os.fsync
fdatasync = getattr(os, "fdatasync", os.fsync)  # (fsync on macOS and Windows)
ftruncate = os.ftruncate
truncate = os.truncate
replace = os.replace
unlink = os.unlink


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


def write_file(path: str, data: bytes, *, sync: bool = True) -> None:
    """Create or truncate ``path`` and write ``data`` into it (fsynced unless told not to)."""
    fd = open_fd(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        write_all(fd, data)
        if sync:
            fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """write() until everything is written (a write may be short)."""
    done = write(fd, data)
    if done != len(data):
        view = memoryview(data)[done:]
        while view:
            view = view[write(fd, view) :]


def read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()
