"""Small file-system steps that must happen in a crash-safe order.

Everything that renames, creates or deletes files goes through here, so the
order (write, fsync file, rename, fsync directory) lives in one place.
"""

from __future__ import annotations

import os


def sync_directory(path: str) -> None:
    """fsync a directory so that creations, renames and deletions in it are durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fdatasync(fd: int) -> None:
    """Flush a file's data to the disk (fsync where fdatasync does not exist)."""
    if hasattr(os, "fdatasync"):
        os.fdatasync(fd)
    else:  # pragma: no cover - macOS, Windows
        os.fsync(fd)


def replace_file(path: str, data: bytes) -> None:
    """Atomically give ``path`` the contents ``data``, durably, even across power loss."""
    tmp = path + ".tmp"
    write_file(tmp, data)
    os.replace(tmp, path)
    sync_directory(os.path.dirname(path) or ".")


def write_file(path: str, data: bytes, *, sync: bool = True) -> None:
    """Create or truncate ``path`` and write ``data`` into it (fsynced unless told not to)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        write_all(fd, data)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """os.write until everything is written (a write may be short)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()
