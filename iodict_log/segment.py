"""One segment file: a 20-byte header, then frames appended one write at a time.

Invariant: a write either lands whole or is truncated away before the call
returns its error, so the bytes of a failed append never stay behind (queuelib
and LevelDB shipped bugs where they did). A crash in the middle of a write can
still leave a torn tail; the log cuts it off before its next append.

Segment files are opened only as regular files, never through a link
(fileops.open_regular), and one larger than an offset can address (4 GiB,
index.MAX_OFFSET) is damage: no writer makes one, and reading it would only
exhaust memory.
"""

from __future__ import annotations

import os
import threading
import zlib

from . import fileops
from .errors import CorruptionError, FormatVersionError
from .format import SEGMENT_HEADER_SIZE, decode_segment_header, encode_segment_header
from .index import MAX_OFFSET

SUFFIX = ".seg"
_CHECKSUM_CHUNK = 4 * 2**20


def segment_name(number: int) -> str:
    return f"{number:010d}{SUFFIX}"


MAX_NUMBER = 10**10 - 1  # segment names have ten decimal digits


def parse_segment_name(name: str) -> int | None:
    """The number of a segment file's name (ten ASCII digits, ``.seg``), else None."""
    stem, dot, ext = name.partition(".")
    if dot and "." + ext == SUFFIX and len(stem) == 10 and stem.isascii() and stem.isdigit():
        return int(stem)
    return None


class Segment:
    """An open segment file (opened for appending only if it may be the last one).

    ``salt`` seeds the CRCs of its frames.
    """

    __slots__ = ("number", "path", "fd", "kind", "salt", "view")

    def __init__(self, number: int, path: str, fd: int, kind: int, salt: int) -> None:
        self.number = number
        self.path = path
        self.fd = fd
        self.kind = kind
        self.salt = salt
        self.view: object = None  # the C core's read-only mapping of the file (_log.c), made by its first get

    @classmethod
    def create(cls, directory: str, number: int, kind: int, salt: int) -> Segment:
        """Create a new segment holding only its header, durably."""
        path = os.path.join(directory, segment_name(number))
        fd = fileops.open_regular(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND)
        try:
            fileops.write_all(fd, encode_segment_header(kind, salt))
            fileops.fsync(fd)
            fileops.sync_directory(directory)
        except BaseException:
            os.close(fd)
            fileops.unlink(path)
            raise
        return cls(number, path, fd, kind, salt)

    @classmethod
    def open(cls, directory: str, number: int, writable: bool = False) -> Segment:
        path = os.path.join(directory, segment_name(number))
        try:
            fd = fileops.open_regular(path, (os.O_RDWR | os.O_APPEND) if writable else os.O_RDONLY)
        except FileNotFoundError:
            raise CorruptionError(f"{path}: segment listed in the manifest is missing") from None
        try:
            size = os.fstat(fd).st_size
            if size > MAX_OFFSET:
                raise CorruptionError(f"{path}: is {size} bytes, more than a segment can hold ({MAX_OFFSET})")
            header = os.pread(fd, SEGMENT_HEADER_SIZE, 0)
            try:
                kind, salt = decode_segment_header(header)
            except FormatVersionError as exc:
                raise FormatVersionError(exc.version, path) from None
            except CorruptionError as exc:
                raise CorruptionError(f"{path}: {exc}") from None
        except BaseException:
            os.close(fd)
            raise
        return cls(number, path, fd, kind, salt)

    def size(self) -> int:
        return os.lseek(self.fd, 0, os.SEEK_END)  # 4x cheaper than fstat; offsets are never used

    def read(self, offset: int, length: int) -> bytes:
        data = os.pread(self.fd, length, offset)
        if len(data) != length:
            raise CorruptionError(f"{self.path}: record at offset {offset} is cut short")
        return data

    def read_from(self, offset: int) -> bytes:
        """Everything from ``offset`` to the end of the file as it is now."""
        size = self.size()
        if size > MAX_OFFSET:
            raise CorruptionError(f"{self.path}: grew to {size} bytes, more than a segment can hold ({MAX_OFFSET})")
        return os.pread(self.fd, max(0, size - offset), offset)

    def checksum(self, size: int) -> int:
        """CRC-32 of the first ``size`` bytes (short if the file is): ~5 GB/s, so a hint
        file can vouch for every byte it covers at a small fraction of a scan's cost."""
        crc = 0
        for offset in range(0, size, _CHECKSUM_CHUNK):
            crc = zlib.crc32(os.pread(self.fd, min(_CHECKSUM_CHUNK, size - offset), offset), crc)
        return crc

    def append(self, data: bytes, offset: int) -> None:
        """Write ``data`` at the end, which must be ``offset``; all of it or none of it."""
        try:
            written = fileops.write(self.fd, data)  # the usual case: all of it at once
            if written != len(data):
                fileops.write_all(self.fd, memoryview(data)[written:])
        except BaseException:
            try:
                self.truncate(offset)
            except OSError:
                pass  # the log's next locked catch-up cuts the partial bytes instead
            raise

    def truncate(self, size: int) -> None:
        fileops.ftruncate(self.fd, size)

    def sync(self) -> None:
        fileops.fdatasync(self.fd)

    def close(self) -> None:
        self.view = None  # (unmapped once no read holds it)
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


# Descriptors of segments that a background thread will close (close_later, a
# group-commit fsync, a compaction's sources). A forked child has none of those
# threads: it closes these at fork time, so it never keeps a deleted segment's
# space, or anything else of the parent's, alive.
_held_by_threads: set[int] = set()


def hand_to_thread(fd: int) -> int:
    """Note that a background thread owns ``fd`` and will close it with close_from_thread."""
    _held_by_threads.add(fd)
    return fd


def close_from_thread(fd: int) -> None:
    _held_by_threads.discard(fd)  # (first: a fork in between leaks it in the child, never closes a reused number)
    os.close(fd)


def _after_fork_in_child() -> None:
    for fd in list(_held_by_threads):
        os.close(fd)
    _held_by_threads.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def close_later(segments: list[Segment]) -> None:
    """Close segments in a background thread. Closing the last descriptor of a
    deleted file frees its blocks, ~20 ms per 64 MiB on ext4: after another
    process compacted, that should not stall the call that noticed."""
    fds = [hand_to_thread(s.fd) for s in segments if s.fd >= 0]
    for s in segments:
        s.fd = -1
        s.view = None
    if fds:
        threading.Thread(target=_close_all, args=(fds,), name="iodict_log-close", daemon=True).start()


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        close_from_thread(fd)
