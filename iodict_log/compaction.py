"""Compaction: copying live records into new segments while the store stays in use.

The log's side of it is two short steps under the write lock (``Log.seal_for_compaction``
and ``Log.commit_compaction``); this module holds the long part in between, which
takes no lock: reading every live record out of the sealed segments and writing
it into new files.

1. Under the lock, the last segment is rolled, so every record so far sits in
   a sealed segment that never changes again; the caller notes the live
   locations (its index, in order) and takes duplicates of the descriptors.
2. Without the lock, each live record is read, verified and written into new
   segments under temporary names (``compact.NNNN.tmp``), which are fsynced.
   Other processes keep appending to the new last segment meanwhile.
3. Under the lock, the temporary files get segment names, the old last segment
   is SEALed, and CURRENT is replaced to list the new segments in place of the
   sealed ones they were copied from, followed by everything appended since.
   That rename is the commit; then the old files are deleted.

A tombstone is dropped only because every segment older than it is replaced
in the same commit, so no older copy of its key can come back (Bitcask's
partial merges did resurrect deleted keys). Records appended during the copy
come after the copies in CURRENT's order, so they win, as they did before.

Only one compaction runs at a time per store (``COMPACT.LOCK``); a crash
anywhere leaves either the old segment list or the new one, plus temporary
files that the next compaction deletes.

The sources are opened by path as the copy reaches them, a few at a time
(``SOURCE_FILES``): nobody else deletes a dict's sealed segments while the
compaction lock is held, and reading a batch of records segment by segment
(segment.Readers) opens each file once per batch, however the index orders them.
"""

from __future__ import annotations

import os
import re
import zlib
from typing import Any, Callable, Iterable, NamedTuple

from . import fileops
from .errors import CorruptionError
from .filelock import FileLock
from .fileops import sync_directory
from .format import FLAG_BATCH, SEGMENT_HEADER_SIZE, Frame, decode_frame, encode_frame, encode_segment_header
from .index import LENGTH_MASK, location_birthtime, pack_location, unpack_location
from .segment import Readers, SegmentGone, segment_name

COMPACTION_LOCK_NAME = "COMPACT.LOCK"
_TMP_NAME = re.compile(r"compact\.[0-9]{4,}\.tmp")  # compact.NNNN.tmp, as SegmentWriter names them
_WRITE_BATCH = 4096  # frames per write() while copying
SOURCE_FILES = 4  # source descriptors a compaction holds at most
_READ_BATCH_BYTES = 16 * 2**20  # records read from the sources at a time, segment by segment
_READ_BATCH_RECORDS = 65536


def compaction_lock(directory: str) -> FileLock:
    """The lock held by whoever writes new segments or a hint file (see hintfile.py)."""
    return FileLock(os.path.join(directory, COMPACTION_LOCK_NAME))


def is_compaction_file(name: str) -> bool:
    return name == COMPACTION_LOCK_NAME or _TMP_NAME.fullmatch(name) is not None


def remove_leftovers(directory: str) -> None:
    """Delete the temporary files of an interrupted compaction. Needs the compaction lock."""
    for name in os.listdir(directory):
        if _TMP_NAME.fullmatch(name):
            fileops.unlink(os.path.join(directory, name))


def standalone(frame: Frame, salt: int) -> bytes:
    """The frame re-encoded outside any batch, with checksums under ``salt``."""
    flags = frame.flags & ~FLAG_BATCH
    return encode_frame(frame.op, flags, frame.seq, frame.birthtime_ns, frame.key, frame.value, salt=salt)


class Written(NamedTuple):
    """A finished new segment file, fsynced, not yet part of the store."""

    path: str
    size: int
    crc: int  # of all its bytes, for the hint file


class SegmentWriter:
    """Writes frames, in order, into new segment files under temporary names,
    starting a new file past ``segment_bytes``. Compaction and repair both use it."""

    def __init__(self, directory: str, kind: int, salt: int, segment_bytes: int) -> None:
        self._directory = directory
        self._header = encode_segment_header(kind, salt)
        self._segment_bytes = segment_bytes
        self._fd = -1
        self._pending: list[bytes] = []
        self._size = 0  # of the current file, pending bytes included
        self._crc = 0
        self.written: list[Written] = []
        self._path = ""

    def add(self, frame: bytes) -> tuple[int, int]:
        """Queue ``frame`` for writing; (index of its file, its offset there)."""
        if self._fd < 0 or (self._size + len(frame) > self._segment_bytes and self._size > SEGMENT_HEADER_SIZE):
            self._finish_file()
            self._path = os.path.join(self._directory, f"compact.{len(self.written):04d}.tmp")
            self._fd = fileops.create_new(self._path)
            self._pending = [self._header]
            self._size = len(self._header)
            self._crc = 0
        offset = self._size
        self._pending.append(frame)
        self._size += len(frame)
        if len(self._pending) >= _WRITE_BATCH:
            self._flush()
        return len(self.written), offset

    def _flush(self) -> None:
        data = b"".join(self._pending)
        self._pending = []
        self._crc = zlib.crc32(data, self._crc)
        fileops.write_all(self._fd, data)

    def _finish_file(self) -> None:
        if self._fd < 0:
            return
        self._flush()
        fileops.fsync(self._fd)
        os.close(self._fd)
        self._fd = -1
        self.written.append(Written(self._path, self._size, self._crc))

    def finish(self) -> list[Written]:
        """Write, fsync and close the last file; every file written."""
        self._finish_file()
        return self.written

    def abort(self) -> None:
        """Close and delete every file written so far."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            self.written.append(Written(self._path, 0, 0))
        for w in self.written:
            try:
                fileops.unlink(w.path)
            except FileNotFoundError:
                pass


def install(directory: str, written: list[Written], first_number: int) -> tuple[int, ...]:
    """Give the written files segment names numbered from ``first_number`` (durably);
    the numbers. Needs the write lock, so that no roll takes the same numbers."""
    numbers = tuple(range(first_number, first_number + len(written)))
    for w, number in zip(written, numbers):
        fileops.replace(w.path, os.path.join(directory, segment_name(number)))
    sync_directory(directory)
    return numbers


class Sources(NamedTuple):
    """The sealed segments being compacted: their numbers in CURRENT's order, and by
    slot the path, salt and number of each; ``files`` opens them as the copy needs."""

    numbers: tuple[int, ...]
    segments: dict[int, tuple[str, int, int]]
    salt: int  # the store's salt, for the new segments
    files: Readers

    def close(self) -> None:
        self.files.close()


class CompactionStopped(Exception):
    """A compaction gave up part-way because its store is being closed; nothing changed."""


def copy_live(
    sources: Sources,
    live: Iterable[tuple[Any, int]],
    out: SegmentWriter,
    stop: Callable[[], bool],
) -> list[tuple[Any, int]]:
    """Copy the records at the (key, location)s ``live`` into ``out``, in order;
    the (key, new location)s, with slots numbering ``out``'s files.

    Each record is verified as it is read; ``stop()`` is polled between records
    and a True ends the copy with ``CompactionStopped``.
    """
    salt = sources.salt
    moved: list[tuple[Any, int]] = []
    batch: list[tuple[Any, int]] = []
    size = 0
    for n, (key, loc) in enumerate(live):
        if n % 1024 == 0 and stop():
            raise CompactionStopped("compaction stopped: the store is closing")
        batch.append((key, loc))
        size += loc & LENGTH_MASK
        if size >= _READ_BATCH_BYTES or len(batch) >= _READ_BATCH_RECORDS:
            _copy_batch(sources, batch, out, salt, moved)
            batch, size = [], 0
    _copy_batch(sources, batch, out, salt, moved)
    return moved


def _copy_batch(
    sources: Sources, batch: list[tuple[Any, int]], out: SegmentWriter, salt: int, moved: list[tuple[Any, int]]
) -> None:
    """Read the records of ``batch`` (segment by segment), verify them and add them to ``out`` in order."""
    places = [unpack_location(loc) for _, loc in batch]
    try:
        found = sources.files.read_all([(sources.segments[slot][0], offset, length) for slot, offset, length in places])
    except SegmentGone as exc:
        raise CorruptionError(f"{exc} during compaction (deleted by hand, or a repair?)") from None
    for (key, loc), (slot, offset, length), data in zip(batch, places, found):
        _, source_salt, number = sources.segments[slot]
        frame = decode_frame(data, 0, source_salt) if len(data) == length else None
        if frame is None:
            raise CorruptionError(
                f"{segment_name(number)}: record at offset {offset} fails its checksum; see `iodict-log repair`"
            )
        if frame.flags & FLAG_BATCH or source_salt != salt:
            data = standalone(frame, salt)
        index, new_offset = out.add(data)
        moved.append((key, pack_location(location_birthtime(loc), index, new_offset, len(data))))
