"""One segment file: a 20-byte header, then frames appended one write at a time.

Invariant: a write either lands whole or is truncated away before the call
returns its error, so the bytes of a failed append never stay behind (queuelib
and LevelDB shipped bugs where they did). A crash in the middle of a write can
still leave a torn tail; the log cuts it off before its next append.

Segment files are opened only as regular files, never through a link
(fileops.open_regular), and one larger than an offset can address (4 GiB,
index.MAX_OFFSET) is damage: no writer makes one, and reading it would only
exhaust memory.

Open files
----------
A store keeps at most ``max_open_segments`` segment descriptors open per Log
(per process): the last (active) segment's, always, and those of the sealed
segments most recently read, in a clock (OpenSegments; a read marks its
segment, the clock's hand parks the first unmarked one it passes). A parked
segment has closed its descriptor but keeps its number, salt, size (a sealed
segment never changes again) and the C core's mapping (``view``, which needs no
descriptor once made); its next read without a covering view reopens it by
path and parks another. Reads that scan many segments in passing (an iterator,
a compaction) open them through a Readers of their own, which holds at most a
few descriptors and reads each batch segment by segment.
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


class SegmentGone(CorruptionError):
    """A segment file is not there: another process deleted it (a compaction, a queue's
    reclaim) since this one last looked at CURRENT, or it is damage if CURRENT lists it."""


class Segment:
    """A segment file (opened for appending only if it may be the last one).

    ``salt`` seeds the CRCs of its frames. ``sealed_size`` is its size once it is
    no longer the last segment (-1 while it may be), when ``files``, its Log's
    clock, may park it (see the module's docstring).
    """

    __slots__ = ("number", "path", "fd", "kind", "salt", "view", "sealed_size", "files", "hot")

    def __init__(self, number: int, path: str, fd: int, kind: int, salt: int, files: OpenSegments | None) -> None:
        self.number = number
        self.path = path
        self.fd = fd
        self.kind = kind
        self.salt = salt
        self.view: object = None  # the C core's read-only mapping of the file (_log.c), made by its first get
        self.sealed_size = -1
        self.files = files
        self.hot = False  # read since the clock's hand last passed it

    @classmethod
    def create(cls, directory: str, number: int, kind: int, salt: int, files: OpenSegments | None = None) -> Segment:
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
        return cls(number, path, fd, kind, salt, files)

    @classmethod
    def open(
        cls,
        directory: str,
        number: int,
        writable: bool = False,
        files: OpenSegments | None = None,
        readonly: bool = False,
    ) -> Segment:
        """Open a segment; one that is not ``writable`` is sealed and joins ``files``' clock.
        ``readonly``: a last segment too is opened for reading only (a read-only reader's)."""
        path = os.path.join(directory, segment_name(number))
        try:
            fd = fileops.open_regular(path, (os.O_RDWR | os.O_APPEND) if writable and not readonly else os.O_RDONLY)
        except FileNotFoundError:
            raise SegmentGone(f"{path}: segment listed in the manifest is missing") from None
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
        segment = cls(number, path, fd, kind, salt, files)
        if not writable:
            segment.seal(size)
        return segment

    def seal(self, size: int | None = None) -> None:
        """Note that the segment is no longer the last one (its size is final): from now on
        its descriptor may be parked. Once only: a sealed segment is never sealed again."""
        if self.sealed_size >= 0:
            return
        self.sealed_size = os.lseek(self.fd, 0, os.SEEK_END) if size is None else size
        if self.files is not None:
            self.files.admit(self)

    def reopen(self) -> int:
        """The descriptor of a parked segment, opened again (and another parked); -1 once closed."""
        files = self.files
        if files is None:
            return -1  # closed: the read fails (EBADF), as on any closed file
        try:
            fd = fileops.open_regular(self.path, os.O_RDONLY)
        except FileNotFoundError:
            raise SegmentGone(f"{self.path}: segment listed in the manifest is missing") from None
        self.fd = fd
        files.admit(self)
        return fd

    def size(self) -> int:
        size = self.sealed_size
        return size if size >= 0 else os.lseek(self.fd, 0, os.SEEK_END)  # 4x cheaper than fstat; offsets are never used

    def read(self, offset: int, length: int) -> bytes:
        fd = self.fd
        if fd < 0:
            fd = self.reopen()
        self.hot = True
        data = os.pread(fd, length, offset)
        if len(data) != length:
            raise CorruptionError(f"{self.path}: record at offset {offset} is cut short")
        return data

    def read_from(self, offset: int) -> bytes:
        """Everything from ``offset`` to the end of the file as it is now."""
        fd = self.fd if self.fd >= 0 else self.reopen()
        size = self.size()
        if size > MAX_OFFSET:
            raise CorruptionError(f"{self.path}: grew to {size} bytes, more than a segment can hold ({MAX_OFFSET})")
        return os.pread(fd, max(0, size - offset), offset)

    def checksum(self, size: int) -> int:
        """CRC-32 of the first ``size`` bytes (short if the file is): ~5 GB/s, so a hint
        file can vouch for every byte it covers at a small fraction of a scan's cost."""
        fd = self.fd if self.fd >= 0 else self.reopen()
        crc = 0
        for offset in range(0, size, _CHECKSUM_CHUNK):
            crc = zlib.crc32(os.pread(fd, min(_CHECKSUM_CHUNK, size - offset), offset), crc)
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

    def park(self) -> None:
        """Close the descriptor, keep the mapping: the clock needs the descriptor back."""
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def close(self) -> None:
        self.view = None  # (unmapped once no read holds it)
        self.forget()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def forget(self) -> None:
        """Leave the clock for good: a closed segment is never reopened."""
        files, self.files = self.files, None
        if files is not None:
            files.discard(self)


class OpenSegments:
    """The clock of one Log's open sealed segments: at most ``limit - 1`` of them, the
    active segment being the last of the ``limit`` descriptors."""

    __slots__ = ("limit", "ring", "hand")

    def __init__(self, limit: int) -> None:
        assert limit >= 2, limit  # (check_options refuses less, before anything is opened)
        self.limit = limit
        self.ring: list[Segment] = []
        self.hand = 0

    def admit(self, segment: Segment) -> None:
        """Count a sealed segment that holds a descriptor, parking another if need be."""
        ring = self.ring
        while len(ring) >= self.limit - 1:
            hand = self.hand % len(ring)
            victim = ring[hand]
            if victim.hot:
                victim.hot = False
                self.hand = hand + 1
            else:
                del ring[hand]
                self.hand = hand
                victim.park()
        ring.append(segment)

    def discard(self, segment: Segment) -> None:
        if segment in self.ring:
            self.ring.remove(segment)

    def clear(self) -> None:
        """Forget every descriptor (a forked child closed them all)."""
        self.ring.clear()
        self.hand = 0


class Readers:
    """Read-only descriptors that a pass over many segments opens by path: at most
    ``limit`` at once, the oldest closed first. With ``threaded`` they belong to a
    background thread (hand_to_thread), so that a forked child closes them."""

    __slots__ = ("limit", "threaded", "fds")

    def __init__(self, limit: int, threaded: bool = False) -> None:
        self.limit = limit
        self.threaded = threaded
        self.fds: dict[str, int] = {}

    def fd(self, path: str) -> int:
        fd = self.fds.get(path)
        if fd is None:
            if len(self.fds) >= self.limit:
                self._close(self.fds.pop(next(iter(self.fds))))
            try:
                fd = fileops.open_regular(path, os.O_RDONLY)
            except FileNotFoundError:
                raise SegmentGone(f"{path}: segment is missing") from None
            self.fds[path] = hand_to_thread(fd) if self.threaded else fd
        return fd

    def read_all(self, wanted: list[tuple[str, int, int]]) -> list[bytes]:
        """The bytes at each (path, offset, length), in that order, read file by file
        (one open each, whatever the order asked for); short where a file is."""
        found = [b""] * len(wanted)
        for i in sorted(range(len(wanted)), key=wanted.__getitem__):
            path, offset, length = wanted[i]
            found[i] = os.pread(self.fd(path), length, offset)
        return found

    def _close(self, fd: int) -> None:
        if self.threaded:
            close_from_thread(fd)
        else:
            os.close(fd)

    def close(self) -> None:
        fds, self.fds = self.fds, {}
        for fd in fds.values():
            self._close(fd)


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
        s.forget()
        s.fd = -1
        s.view = None
    if fds:
        threading.Thread(target=_close_all, args=(fds,), name="iodict_log-close", daemon=True).start()


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        close_from_thread(fd)
