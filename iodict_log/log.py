"""The log: a directory of segments that several processes read and append to.

Theory of operation
-------------------
Files in a store directory: ``CURRENT`` (the manifest: the ordered list of live
segments), ``NNNNNNNNNN.seg`` (segments) and ``LOCK`` (the write lock).

Every process keeps its own index and remembers how far it has applied the
last segment (``_end``). Before each operation it compares that with the
segment's size; if another process appended, it scans just the new tail.
Writers hold the file lock from that catch-up until their append has landed,
so appends never interleave and every writer appends at the true end.

Only the last segment is ever appended to. Rolling to a new segment happens
under the lock in this order: (1) append a SEAL frame to the last segment,
(2) create the next segment, (3) replace CURRENT to list it. A process that
meets a SEAL re-reads CURRENT under the lock: if CURRENT still ends with the
sealed segment, the roller died between (1) and (3) and the reader finishes
the roll. Because a SEAL always comes before CURRENT changes, no process can
append to a segment that is no longer the last one. Compaction follows the same
rule: write the new segments, SEAL the old last one, replace CURRENT, delete
the old files; a process whose list is not a prefix of the new CURRENT
rebuilds its index from scratch.

Bytes past the last committed frame of the last segment are an unfinished
append: still being written by another process, or torn by a crash. Readers
stop there; a writer, holding the lock, knows nobody is writing and truncates
them before it appends.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import warnings
from typing import Any, Callable, Iterable, Iterator, Protocol, TypeVar

from .compaction import standalone, write_segments
from .errors import CorruptionError, CorruptionWarning, IODictLogError, StoreClosedError
from .filelock import FileLock
from .fileops import fdatasync, sync_directory
from .format import (
    COUNT,
    FLAG_BATCH,
    KIND_COMPACTED,
    KIND_LOG,
    OP_BATCH_BEGIN,
    OP_BATCH_COMMIT,
    OP_SEAL,
    SEGMENT_HEADER_SIZE,
    Frame,
    Manifest,
    Scan,
    decode_frame,
    encode_frame,
)
from .index import MAX_OFFSET, MAX_SLOTS, pack_location, unpack_location
from .manifest import MANIFEST_NAME, read_manifest, write_manifest
from .segment import Segment, parse_segment_name, segment_name

LOCK_NAME = "LOCK"
T = TypeVar("T")
H = TypeVar("H", bound="LogHandle")

# (op, flags, key, stored value, birthtime_ns) of one record to append.
Entry = tuple[int, int, bytes, bytes, int]


class LogConsumer(Protocol):
    """What the log feeds the frames it reads to (the dict's or the queue's index)."""

    def reset(self) -> None: ...

    def apply(self, frame: Frame, loc: int) -> None: ...


def check_options(sync: object, segment_bytes: object) -> None:
    """ValueError for a ``sync`` or ``segment_bytes`` the log cannot work with."""
    if not (isinstance(sync, bool) or (isinstance(sync, (int, float)) and sync > 0)):
        raise ValueError(f"sync must be False, True or a positive number of seconds, not {sync!r}")
    if not isinstance(segment_bytes, int) or not 4096 <= segment_bytes <= 2**31:
        raise ValueError(f"segment_bytes must be an int from 4096 to 2**31, not {segment_bytes!r}")


def _is_store_file(name: str) -> bool:
    return name in (MANIFEST_NAME, MANIFEST_NAME + ".tmp", LOCK_NAME) or parse_segment_name(name) is not None


class Log:
    """The segments of one store directory, kept in step with other processes.

    The caller serialises calls (one thread at a time); the log serialises
    processes. ``consumer`` receives every committed data frame, in order.
    """

    def __init__(self, directory: str, consumer: LogConsumer, *, sync: bool | float, segment_bytes: int) -> None:
        self.directory = directory
        self.segment_bytes = segment_bytes
        self.sync_interval: float | None = None if isinstance(sync, bool) else float(sync)
        self.sync_always = sync is True
        self.corrupt_records = 0
        self.last_seq = 0
        self.last_birthtime = 0
        self._consumer = consumer
        self._segments: list[Segment | None] = []  # by slot; None once dropped
        self._first_live = 0
        self._manifest = Manifest(0, ())
        self._end = 0
        self._sync_timer: threading.Timer | None = None
        self._sync_error: OSError | None = None  # from a group-commit fsync, raised by the next call
        self._check_directory()
        self._lock = FileLock(os.path.join(directory, LOCK_NAME))
        try:
            with self._lock:
                self._load()
        except BaseException:
            self.close()
            raise

    # --- opening ----------------------------------------------------------

    def _check_directory(self) -> None:
        """Create the directory, or make sure it is a store this version can read."""
        path = self.directory
        if os.path.exists(path) and not os.path.isdir(path):
            raise NotADirectoryError(20, "not a directory (an iodict_log store is a directory)", path)
        os.makedirs(path, exist_ok=True)
        read_manifest(path)  # raises FormatVersionError before anything is written
        if not os.path.exists(os.path.join(path, MANIFEST_NAME)):
            foreign = sorted(name for name in os.listdir(path) if not _is_store_file(name))
            if foreign:
                raise IODictLogError(
                    f"{path}: not an iodict_log store (no {MANIFEST_NAME}, and it holds other files such as "
                    f"{foreign[0]!r})"
                )

    def _load(self) -> None:
        """(Re)build all state from the files. Needs the lock."""
        self._close_segments()
        self._consumer.reset()
        self.corrupt_records = 0
        manifest = read_manifest(self.directory)
        if manifest is None:  # a new store, or one whose creation crashed half-way
            self._remove_leftovers(())
            Segment.create(self.directory, 1, KIND_LOG, int.from_bytes(os.urandom(4), "little")).close()
            manifest = Manifest(1, (1,))
            write_manifest(self.directory, manifest)
        else:
            self._remove_leftovers(manifest.segments)
        self._manifest = manifest
        self.last_seq = manifest.seq_floor
        self.last_birthtime = manifest.birthtime_floor
        numbers = manifest.segments
        for i, number in enumerate(numbers):
            self._segments.append(Segment.open(self.directory, number, writable=i == len(numbers) - 1))
        for slot in range(len(self._segments) - 1):
            self._scan_complete(slot)
        self._end = SEGMENT_HEADER_SIZE
        self._catch_up()

    def _close_segments(self) -> None:
        for segment in self._segments:
            if segment is not None:
                segment.close()
        self._segments = []
        self._first_live = 0  # slot of the first segment not dropped
        self._sync_timer = None  # a pending group commit is for a segment now closed

    def _remove_leftovers(self, live: Iterable[int]) -> None:
        """Delete segment files that no manifest lists: remains of an interrupted step."""
        live = set(live)
        removed = False
        for name in os.listdir(self.directory):
            number = parse_segment_name(name)
            if (number is not None and number not in live) or name == MANIFEST_NAME + ".tmp":
                os.unlink(os.path.join(self.directory, name))
                removed = True
        if removed:
            sync_directory(self.directory)

    # --- keeping up with other processes ------------------------------------

    def refresh(self) -> None:
        """Apply whatever other processes appended since our last look."""
        if self._segments[-1].size() != self._end:
            self._catch_up()

    def _catch_up(self) -> None:
        while True:
            active = self._segments[-1]
            size = active.size()
            if size < self._end:  # cut back behind our back (repair): start over
                with self._lock:
                    self._load()
                return
            sealed = self._scan(len(self._segments) - 1, active.read_from(self._end))
            if sealed:
                with self._lock:
                    self._follow_seal()
                continue
            if active.size() == self._end:
                return
            if not self._lock.held:
                # An append in progress, or torn by a crash: wait for the writer, then look again.
                with self._lock:
                    self._catch_up()
                return
            active.truncate(self._end)  # torn by a crash: nobody else is writing
            return

    def _scan(self, slot: int, buf: bytes, complete: bool = False) -> bool:
        """Apply the committed frames of ``buf`` (segment bytes from ``_end``); True if sealed.

        In the last segment a SEAL ends the scan, and bytes past the last whole
        frame are an unfinished append. A ``complete`` (earlier, sealed or
        compacted) segment has no unfinished append: bytes it ends with that
        hold no whole frame are damage.
        """
        base = self._end
        segment = self._segments[slot]
        scan = Scan(buf, segment.salt, complete=complete)
        apply = self._consumer.apply
        sealed = False
        for frame in scan:
            if frame.seq > self.last_seq:
                self.last_seq = frame.seq
            if frame.birthtime_ns > self.last_birthtime:
                self.last_birthtime = frame.birthtime_ns
            if frame.op == OP_SEAL:
                sealed = True
                if not complete:
                    break
                continue
            apply(frame, pack_location(frame.birthtime_ns, slot, base + frame.offset, frame.length))
        for region in scan.damage:
            self.corrupt_records += 1
            warnings.warn(
                f"{segment.path}: skipped {region.length} bytes at offset {base + region.offset} ({region.reason})",
                CorruptionWarning,
                stacklevel=4,
            )
        self._end = base + scan.end
        return sealed

    def _scan_complete(self, slot: int) -> None:
        self._end = SEGMENT_HEADER_SIZE
        self._scan(slot, self._segments[slot].read_from(SEGMENT_HEADER_SIZE), complete=True)

    def _follow_seal(self) -> None:
        """The last segment is sealed: move on to the next one, or rebuild. Needs the lock."""
        manifest = read_manifest(self.directory)
        listed = manifest.segments if manifest else ()
        kept = self._forget_unlisted(listed)
        if listed[: len(kept)] != kept or len(self._segments) + len(listed) - len(kept) > MAX_SLOTS:
            self._load()  # compaction replaced our segments (or the slots need renumbering)
            return
        if listed == kept:
            self._roll_after_seal()  # the roller died after sealing
            return
        first_new = len(self._segments)
        for number in listed[len(kept) :]:
            self._segments.append(Segment.open(self.directory, number, writable=number == listed[-1]))
        for slot in range(first_new, len(self._segments) - 1):
            self._scan_complete(slot)  # sealed in the meantime: read whole
        self._manifest = manifest
        self._end = SEGMENT_HEADER_SIZE
        self._sync_timer = None  # a pending group commit is for the old segment

    def _forget_unlisted(self, listed: tuple[int, ...]) -> tuple[int, ...]:
        """Forget leading segments CURRENT no longer lists (a queue consumer deleted them);
        the numbers of the segments we keep."""
        mine = tuple(s.number for s in self._segments if s is not None)
        gone = 0
        while gone < len(mine) - 1 and mine[gone] not in listed:
            gone += 1
        self._forget(mine[:gone])
        return mine[gone:]

    def _forget(self, numbers: Iterable[int]) -> None:
        """Close dropped segments; their slots stay taken so locations elsewhere keep meaning."""
        numbers = set(numbers)
        for slot, segment in enumerate(self._segments):
            if segment is not None and segment.number in numbers:
                segment.close()
                self._segments[slot] = None
        while self._segments[self._first_live] is None:
            self._first_live += 1

    # --- writing ------------------------------------------------------------

    def locked(self) -> FileLock:
        """The write lock; hold it around refresh() + append() (reentrant)."""
        return self._lock

    def birthtime(self) -> int:
        """A fresh birthtime in ns, later than every one in the log. Needs the lock.

        Whole microseconds, at least one apart: users see birthtimes as float
        seconds, whose resolution today is about 0.24 us, so nanosecond steps
        would make distinct birthtimes compare equal.
        """
        now = time.time_ns() // 1000 * 1000
        self.last_birthtime = now if now > self.last_birthtime else self.last_birthtime + 1000
        return self.last_birthtime

    def append(self, entries: list[Entry]) -> list[tuple[int, int]]:
        """Append entries in one write (a batch if more than one); their (seq, location)s.

        Needs the lock and a refresh() under it. A write that fails leaves
        nothing in the file. An fsync that fails (sync=True) after the bytes
        landed whole raises too, but the record stays: other processes may
        already have read it, and it is as durable as any unsynced write; the
        next refresh applies it here.
        """
        self._raise_sync_error()  # a failed group commit is reported before anything new is written
        if self._end >= self.segment_bytes:
            self._roll()
        slot = len(self._segments) - 1
        active = self._segments[slot]
        if len(entries) == 1:
            op, flags, key, value, birthtime_ns = entries[0]
            seq = self.last_seq + 1
            data = encode_frame(op, flags, seq, birthtime_ns, key, value, salt=active.salt)
            locs = [(seq, pack_location(birthtime_ns, slot, self._end, len(data)))]
        else:
            data, locs, seq = self._encode_batch(entries, slot, active.salt)
        if self._end + len(data) > MAX_OFFSET:
            raise IODictLogError("a segment may not grow past 4 GiB; lower segment_bytes")
        active.append(data, self._end)
        if self.sync_always:
            try:
                active.sync()
            except OSError as exc:
                message = f"written, but fsync failed, so it may not survive a power loss: {exc}"
                raise OSError(exc.errno, message) from exc
        self._end += len(data)
        self.last_seq = seq
        if self.sync_interval is not None:
            self._schedule_group_commit(active)
        return locs

    def _encode_batch(self, entries: list[Entry], slot: int, salt: int) -> tuple[bytes, list[tuple[int, int]], int]:
        """BEGIN, the entries flagged as batch members, COMMIT: (bytes, (seq, location)s, last seq)."""
        seq = self.last_seq + 1
        parts = [encode_frame(OP_BATCH_BEGIN, 0, seq, self.birthtime(), b"", COUNT.pack(len(entries)), salt=salt)]
        offset = self._end + len(parts[0])
        locs = []
        for op, flags, key, value, birthtime_ns in entries:
            seq += 1
            data = encode_frame(op, flags | FLAG_BATCH, seq, birthtime_ns, key, value, salt=salt)
            locs.append((seq, pack_location(birthtime_ns, slot, offset, len(data))))
            parts.append(data)
            offset += len(data)
        seq += 1
        parts.append(encode_frame(OP_BATCH_COMMIT, 0, seq, self.birthtime(), b"", b"", salt=salt))
        return b"".join(parts), locs, seq

    def _schedule_group_commit(self, active: Segment) -> None:
        """Make sure an fsync of the active segment is due within the sync interval."""
        timer = self._sync_timer
        if timer is None or not timer.is_alive():  # (no timer survives a fork: it is not alive)
            # The timer syncs a duplicate descriptor, so it needs no lock and cannot race
            # with close(). When the active segment changes the timer is dropped (the old
            # one still fires) so the next write schedules one for the new segment; a roll
            # fsyncs the sealed segment itself.
            timer = threading.Timer(self.sync_interval, self._group_commit, (os.dup(active.fd),))
            timer.daemon = True
            timer.start()
            self._sync_timer = timer

    def _group_commit(self, fd: int) -> None:
        try:
            fdatasync(fd)
        except OSError as exc:
            self._sync_error = exc
        finally:
            os.close(fd)

    def _raise_sync_error(self) -> None:
        error, self._sync_error = self._sync_error, None
        if error is not None:
            raise OSError(error.errno, f"a group-commit fsync failed; recent writes may not be durable: {error}")

    def _roll(self) -> None:
        """Seal the last segment and start the next one. Needs the lock."""
        with self._rewind_on_error():
            self._seal()
            self._roll_after_seal()

    @contextlib.contextmanager
    def _rewind_on_error(self) -> Iterator[None]:
        """If a step after our SEAL fails, step back before it: the next refresh meets the
        SEAL like any other process does, and finishes the roll or follows CURRENT,
        instead of this process appending past its own SEAL."""
        end = self._end
        try:
            yield
        except BaseException:
            self._end = end
            raise

    def _seal(self) -> None:
        """Append the SEAL frame that tells every process to re-read CURRENT."""
        self.last_seq += 1
        frame = encode_frame(OP_SEAL, 0, self.last_seq, self.birthtime(), b"", b"", salt=self._segments[-1].salt)
        self._segments[-1].append(frame, self._end)
        self._end += len(frame)

    def _roll_after_seal(self) -> None:
        active = self._segments[-1]
        active.sync()
        manifest = read_manifest(self.directory)  # under the lock: the latest
        if manifest is None or manifest.segments[-1:] != (active.number,):
            raise CorruptionError(f"{self.directory}: {MANIFEST_NAME} does not end with the segment being rolled")
        self._forget_unlisted(manifest.segments)
        self._remove_leftovers(manifest.segments)
        number = max(manifest.segments) + 1  # (repair may have put a higher number earlier in the list)
        segment = Segment.create(self.directory, number, KIND_LOG, active.salt)
        manifest = manifest._replace(generation=manifest.generation + 1, segments=manifest.segments + (number,))
        try:
            write_manifest(self.directory, manifest)
        except BaseException:
            segment.close()
            raise
        self._segments.append(segment)
        self._manifest = manifest
        self._end = SEGMENT_HEADER_SIZE
        self._sync_timer = None  # a pending group commit is for the old segment
        if len(self._segments) >= MAX_SLOTS:
            self._load()  # renumber the slots, which dropped segments still hold

    def release_before(self, loc: int | None) -> None:
        """Delete the segments before the one holding ``loc`` (every sealed one if None).

        For a queue: every record in them has been consumed, so nothing is
        rewritten, the files just go (as in Kafka's retention). Needs the lock.
        """
        stop = len(self._segments) - 1 if loc is None else unpack_location(loc)[0]
        if stop <= self._first_live:
            return  # (the common case, checked on every get)
        doomed = [s.number for s in self._segments[:stop] if s is not None]
        manifest = read_manifest(self.directory)
        manifest = manifest._replace(
            generation=manifest.generation + 1,
            segments=tuple(n for n in manifest.segments if n not in doomed),
            seq_floor=self.last_seq,  # the frames holding the latest may be among the dropped
            birthtime_floor=self.last_birthtime,
        )
        write_manifest(self.directory, manifest)
        self._manifest = manifest
        self._forget(doomed)
        for number in doomed:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.directory, segment_name(number)))
        sync_directory(self.directory)

    # --- reading --------------------------------------------------------------

    def read(self, loc: int) -> Frame:
        """The frame at ``loc``, checksums verified."""
        slot, offset, length = unpack_location(loc)
        segment = self._segments[slot]
        frame = decode_frame(segment.read(offset, length), 0, segment.salt)
        if frame is None:
            raise CorruptionError(f"{segment.path}: record at offset {offset} fails its checksum")
        return frame

    def frames(self, start_seq: int = 0) -> Iterator[Frame]:
        """Committed data frames (SET, DELETE, PUT, TAKE) with seq >= start_seq, in sequence order.

        Takes its snapshot now, on duplicates of the file descriptors, so the
        iterator may be consumed while the store is written, compacted or closed.
        """
        live = [s for s in self._segments if s is not None]
        snapshot = [(os.dup(s.fd), s.kind, s.salt) for s in live]
        ends = [None] * (len(snapshot) - 1) + [self._end]
        return self._frames(snapshot, ends, start_seq)

    @staticmethod
    def _frames(snapshot: list[tuple[int, int, int]], ends: list[int | None], start_seq: int) -> Iterator[Frame]:
        def scan(fd: int, salt: int, end: int | None) -> Scan:
            size = os.fstat(fd).st_size if end is None else end
            return Scan(os.pread(fd, size - SEGMENT_HEADER_SIZE, SEGMENT_HEADER_SIZE), salt)

        try:
            # Compacted segments hold their frames in birthtime order: sort them all
            # by seq, remembering only where each frame is, then read them back.
            compacted = []
            for (fd, kind, salt), end in zip(snapshot, ends):
                if kind == KIND_COMPACTED:
                    compacted += [
                        (f.seq, fd, SEGMENT_HEADER_SIZE + f.offset, f.length, salt)
                        for f in scan(fd, salt, end)
                        if f.seq >= start_seq
                    ]
            compacted.sort()
            for _, fd, offset, length, salt in compacted:
                frame = decode_frame(os.pread(fd, length, offset), 0, salt)
                if frame is None:
                    raise CorruptionError(f"record at offset {offset} changed on disk while being replayed")
                yield frame
            for (fd, kind, salt), end in zip(snapshot, ends):
                if kind == KIND_LOG:
                    yield from (f for f in scan(fd, salt, end) if f.op != OP_SEAL and f.seq >= start_seq)
        finally:
            for fd, _, _ in snapshot:
                os.close(fd)

    # --- compaction ---------------------------------------------------------

    def compact(self, live: Iterable[int]) -> None:
        """Rewrite the records at ``live`` (in order) into new segments and drop the rest.

        Needs the lock and a refresh() under it. Steps: write and fsync the new
        segments (unlisted, so a crash leaves them as leftovers to delete), SEAL
        the old last segment so other processes notice, replace CURRENT (the
        single commit point), delete the old segments, rebuild the index.
        """
        directory = self.directory
        salt = self._segments[-1].salt
        manifest = read_manifest(directory)  # under the lock: the latest
        self._remove_leftovers(manifest.segments)
        first = max(manifest.segments) + 1
        frames = (self._live_frame(loc, salt) for loc in live)
        numbers = write_segments(directory, first, KIND_COMPACTED, salt, frames, self.segment_bytes)
        active = first + len(numbers)
        Segment.create(directory, active, KIND_LOG, salt).close()
        with self._rewind_on_error():
            self._seal()
            segments = (*numbers, active)
            write_manifest(directory, Manifest(manifest.generation + 1, segments, self.last_seq, self.last_birthtime))
            for n in manifest.segments:
                os.unlink(os.path.join(directory, segment_name(n)))
            sync_directory(directory)
        self._load()

    def _live_frame(self, loc: int, salt: int) -> bytes:
        """A live frame's bytes for a compacted segment: verified, outside any batch, under ``salt``."""
        slot, offset, length = unpack_location(loc)
        segment = self._segments[slot]
        data = segment.read(offset, length)
        frame = decode_frame(data, 0, segment.salt)
        if frame is None:
            raise CorruptionError(
                f"{segment.path}: record at offset {offset} fails its checksum; see `iodict-log repair`"
            )
        if frame.flags & FLAG_BATCH or segment.salt != salt:
            return standalone(frame, salt)
        return data

    # --- housekeeping ---------------------------------------------------------

    def stats(self) -> dict:
        live = [s for s in self._segments if s is not None]
        total = sum(s.size() for s in live)
        return {
            "segments": len(live),
            "disk_bytes": total,
            "corrupt_records": self.corrupt_records,
            "last_seq": self.last_seq,
            "generation": self._manifest.generation,
        }

    def sync(self) -> None:
        self._raise_sync_error()
        self._segments[-1].sync()

    def close(self) -> None:
        """Close the files; with group commit, fsync first (its error propagates)."""
        try:
            if self.sync_interval is not None and self._segments:
                self.sync()
        finally:
            self._release_files()

    def _release_files(self) -> None:
        self._close_segments()
        lock = getattr(self, "_lock", None)
        if lock is not None:
            lock.close()

    def __del__(self) -> None:
        # A store dropped without close() gives its descriptors back, as a file does.
        # (No fsync here: a pending group commit still holds its own descriptor.)
        if getattr(self, "_segments", None) is not None:
            self._release_files()


class LogHandle:
    """What IODict and DurableQueue share: a Log guarded by the object's lock,
    ``StoreClosedError`` once closed, and use as a context manager.

    Subclasses set ``path``, ``_lock`` (a context-manager lock) and ``_log``.
    """

    path: str
    _lock: Any
    _log: Log | None

    def _open_log(self) -> Log:
        log = self._log
        if log is None:
            raise StoreClosedError(f"{self.path}: this {type(self).__name__} is closed")
        return log

    def _read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn(log, *args) on up-to-date state."""
        with self._lock:
            log = self._open_log()
            log.refresh()
            return fn(log, *args)

    def _write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn(log, *args) holding the file lock, on up-to-date state."""
        with self._lock:
            log = self._open_log()
            with log.locked():
                log.refresh()
                return fn(log, *args)

    def close(self) -> None:
        """Close the files; the data stays on disk, the object is unusable afterwards. Idempotent."""
        with self._lock:
            log, self._log = self._log, None
            if log is not None:
                log.close()

    def __enter__(self: H) -> H:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
