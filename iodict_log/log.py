"""The log: a directory of segments that several processes read and append to.

Theory of operation
-------------------
Files in a store directory: ``CURRENT`` (the manifest: the ordered list of live
segments), ``NNNNNNNNNN.seg`` (segments) and ``LOCK`` (the write lock).

Every process keeps its own index and remembers how far it has applied the
last segment (``_end``). Before each operation it compares that with the
segment's size; if another process appended, it scans just the new tail.
Writers hold the write lock (filelock.py: a robust mutex in the mapped LOCK
file, or flock) from that catch-up until their append has landed, so appends
never interleave and every writer appends at the true end. Every release of
the write lock counts one in LOCK's change counter: a catch-up that finds the
counter where its last one left it (``_changes``) skips the size check, for a
reader always, for a holder only when a holder that died would have been
reported (the mutex protocol; see refresh()).

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

A store holds dict records or queue items, never both (a queue's reclaim
drops whole segments, a dict's compaction drops what it does not index):
CURRENT records which, and opening the other kind refuses before anything is
written. A store from before that field (kind 0) is classified by what its
frames hold, and its kind is recorded under the lock at open, or at the next
change of CURRENT.

After os.fork() the child closes every descriptor it inherited from the
parent's logs at once (a fork hook), and on first use opens its own on the
same segments: a child never keeps the parent's segments (or, filelock.py,
its write lock) past the fork.

Read-only readers (``readonly=True``; docs/CONCURRENCY.md "Read-only readers"
tells the same story): a reader that never changes the directory. It never
takes the write lock and never creates anything (not LOCK, a segment, CURRENT,
a hint or a checkpoint): it reads the change counter through a read-only
mapping of LOCK when LOCK is there and laid out (else it looks at the file's
end on every call), opens every segment O_RDONLY, and records no kind in
CURRENT. Where a writer would take the lock, it does without: at bytes past the
last whole frame it stops (a torn tail is not cut: it is ignored, as an append
not yet finished is not yet seen; the next call looks again once the counter
moves); at a SEAL it reads CURRENT without the lock (CURRENT is replaced
atomically, after the SEAL): a prefix of it means a roll, followed; CURRENT
still ending with the sealed segment means a roll (or a compaction's commit)
not finished yet, so it stays before the SEAL and meets it again next call;
anything else is a compaction, and it rebuilds from the files, starting over
if a segment goes meanwhile (_load). A segment cut back (a repair) also
reloads. Leftovers of interrupted steps stay where they are. Every write
raises ReadOnlyError before anything happens (LogHandle._write, and the
FileLock itself refuses to be taken); the C core's append_begin declines a
read-only Log.

Open files: each Log holds at most ``max_open_segments`` segment descriptors, the
active segment's and a clock of the sealed ones most recently read; the others
are parked and reopen by path on their next read (segment.py says how, and
how iterators and compactions stay bounded too). A parked segment that another
process deleted after this one's last catch-up (a compaction) is SegmentGone: a
read without the lock catches up and tries once more (LogHandle._read).
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import time
import warnings
import weakref
import zlib
from typing import Any, Callable, Iterable, Iterator, Protocol, TypeVar

from . import crashpoints, filelock, fileops, streams
from .checkpoint import CHECKPOINT_MIN_BYTES, CHECKPOINT_NAME, CHECKPOINT_TMP_NAME, read_checkpoint, write_checkpoint
from .compaction import SOURCE_FILES, Sources, Written, install, is_compaction_file
from .errors import CorruptionError, CorruptionWarning, IODictLogError, ReadOnlyError, StoreClosedError
from .filelock import FileLock
from .fileops import sync_directory
from .format import (
    CHECKPOINT_TAIL,
    HEADER_SIZE,
    KIND_COMPACTED,
    KIND_LOG,
    MAX_SEQ,
    OP_DELETE,
    OP_SEAL,
    OP_SET,
    QUEUE_OPS,
    SEGMENT_HEADER_SIZE,
    STORE_DICT,
    STORE_QUEUE,
    STORE_UNKNOWN,
    Checkpoint,
    Damage,
    Frame,
    Hint,
    Manifest,
    Scan,
    decode_frame,
    encode_batch,
    encode_frame,
    frame_value,
    header_seq,
)
from .hintfile import HINT_NAME, HINT_TMP_NAME, publish_hint, read_hint, stage_hint
from .holders import HOLDERS_DIR
from .index import (
    LENGTH_MASK,
    MAX_OFFSET,
    MAX_SLOTS,
    OFFSET_BITS,
    OFFSET_MASK,
    OFFSET_SHIFT,
    SLOT_MASK,
    SLOT_SHIFT,
    pack_location,
    unpack_location,
)
from .manifest import MANIFEST_NAME, MAX_SEGMENTS, read_manifest, upgrade_manifest, write_manifest
from .native import core
from .segment import (
    MAX_NUMBER,
    OpenSegments,
    Readers,
    Segment,
    SegmentGone,
    close_from_thread,
    close_later,
    hand_to_thread,
    parse_segment_name,
    segment_name,
)
from .streams import Record, check_start, check_timeout

LOCK_NAME = "LOCK"
# A clean close writes a hint file once this many records lie past the last one:
# below that, scanning them at open costs about as much as loading the hint.
HINT_AFTER_RECORDS = 10_000
# Rescanning a record costs about this many times what moving one index entry does.
_RESCAN_COST = 10
READ_CHUNK = 2**18  # bytes read_frames() reads at a time
READ_TRIES = 3  # a read that finds its segment gone (compacted meanwhile) catches up and tries again
MIN_CHUNK = 2**14  # the least it reads at a time, however few PUTs are wanted
_REPLAY_BATCH = 16384  # compacted records an iterator reads back at a time, segment by segment
T = TypeVar("T")
H = TypeVar("H", bound="LogHandle")

# (op, flags, key, stored value, birthtime_ns) of one record to append.
Entry = tuple[int, int, bytes, bytes, int]

# The ``kind`` argument, and what CURRENT records; which kind each data op belongs to.
STORE_KINDS = {None: STORE_UNKNOWN, "dict": STORE_DICT, "queue": STORE_QUEUE}
_HOLDS = {STORE_DICT: "dict records", STORE_QUEUE: "queue items", STORE_DICT | STORE_QUEUE: "dict and queue records"}
_OP_KIND = {OP_SET: STORE_DICT, OP_DELETE: STORE_DICT, **dict.fromkeys(QUEUE_OPS, STORE_QUEUE)}

_open_logs: weakref.WeakSet[Log] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for log in list(_open_logs):
        log._drop_descriptors()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class ReloadNeeded(Exception):
    """Raised by refresh(defer_reload=True): let go of the lock, then refresh() again."""


if core is not None:  # (the C fast paths compare against these: _log.c)
    core.setup_log(type(threading.RLock()), fileops, crashpoints, filelock, ReloadNeeded)
_read_value = None if core is None else core.read_value


class LogConsumer(Protocol):
    """What the log feeds the frames it reads to (the dict's or the queue's index).

    With ``hints=True`` the log also asks it for ``snapshot() -> bytes`` and hands
    such bytes back on open to ``restore(snapshot, sizes)``, and after another
    process compacted to ``rebase(snapshot, sizes, first_kept, shift)``: ``sizes``
    are the covered size of each segment the hint names, so that every location is
    checked against its segment; ValueError, changing nothing, if unusable.
    With ``checkpoints=True`` (the queue's), ``snapshot(first_slot) -> bytes | None``
    and ``restore(snapshot, sizes)`` likewise, for checkpoint.py; and a consumer
    with ``attach(log)`` is given the log before the first frame, to read records
    back from (``read_frames``).
    """

    def reset(self) -> None: ...

    def apply(self, frame: Frame, loc: int) -> None: ...

    def settle(self) -> None:
        """Called after each scan, to restore an order that lost records may have broken."""


def check_options(sync: object, segment_bytes: object, max_open_segments: object = 32) -> None:
    """ValueError for a ``sync``, ``segment_bytes`` or ``max_open_segments`` the log cannot work with."""
    if not (isinstance(sync, bool) or (isinstance(sync, (int, float)) and sync > 0)):
        raise ValueError(f"sync must be False, True or a positive number of seconds, not {sync!r}")
    if not isinstance(segment_bytes, int) or not 4096 <= segment_bytes <= 2**31:
        raise ValueError(f"segment_bytes must be an int from 4096 to 2**31, not {segment_bytes!r}")
    if type(max_open_segments) is not int or max_open_segments < 2:
        raise ValueError(f"max_open_segments must be an int >= 2, not {max_open_segments!r}")


def _is_store_file(name: str) -> bool:
    return (
        name in (MANIFEST_NAME, MANIFEST_NAME + ".tmp", LOCK_NAME, HINT_NAME, HINT_TMP_NAME)
        or name in (CHECKPOINT_NAME, CHECKPOINT_TMP_NAME, HOLDERS_DIR)
        or parse_segment_name(name) is not None
        or is_compaction_file(name)
    )


class Log:
    """The segments of one store directory, kept in step with other processes.

    The caller serialises calls (one thread at a time); the log serialises
    processes. ``consumer`` receives every committed data frame, in order.
    ``kind`` ("dict", "queue", or None to accept either, for the tools) is what
    the store must hold; IODictLogError if it holds the other. ``readonly``: never
    change the directory (the module docstring says how it keeps up without the lock).
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        consumer: LogConsumer,
        *,
        sync: bool | float,
        segment_bytes: int,
        hints: bool = False,
        checkpoints: bool = False,
        kind: str | None = None,
        max_open_segments: int = 32,
        readonly: bool = False,
    ) -> None:
        if kind not in STORE_KINDS:
            raise ValueError(f"kind must be 'dict', 'queue' or None, not {kind!r}")
        self.directory = directory = fileops.store_path(directory)
        self.readonly = bool(readonly)  # (exactly a bool: the C core's append_begin compares with False)
        self.segment_bytes = segment_bytes
        self.sync_interval: float | None = None if isinstance(sync, bool) else float(sync)
        self.sync_always = sync is True
        self.corrupt_records = 0
        self.last_seq = 0
        self.last_birthtime = 0
        self._consumer = consumer
        self._segments: list[Segment | None] = []  # by slot; None once dropped
        self._files = OpenSegments(max_open_segments)  # the clock of open sealed segments
        self._first_live = 0
        self._manifest = Manifest(0, ())
        self._end = 0
        self._sealed_bytes = 0  # size of all live segments but the last
        self._hints = hints
        self.hinted_seq = -1  # last_seq covered by the hint this index was loaded from; -1: scanned
        self._checkpoints = checkpoints
        # (segment numbers, last_seq) of the checkpoint this process last loaded or wrote.
        self._checkpointed: tuple[tuple[int, ...], int] | None = None
        self._tail_crcs: dict[int, tuple[int, int]] = {}  # segment number -> (size, CRC of its tail)
        self.from_checkpoint = False  # whether the last (re)load started from the checkpoint
        # Where damage was reported (slot << 32 | offset), so that read_frames() reports what
        # it finds only once: the scan met it, or it came since (or lay behind a checkpoint).
        self._reported: set[int] = set()
        self._sync_timer: threading.Timer | None = None
        self._sync_error: OSError | None = None  # from a group-commit fsync, raised by the next call
        self._kind = STORE_KINDS[kind]
        self._seen = STORE_UNKNOWN  # kinds of the frames read while CURRENT records none (bits)
        self._forked = False  # a forked child whose descriptors the fork hook closed
        _open_logs.add(self)
        attach = getattr(consumer, "attach", None)
        if attach is not None:
            attach(self)
        self._check_directory()
        # Around refresh() + append_*(); a read-only reader's only reads the change counter.
        self.file_lock = FileLock(os.path.join(directory, LOCK_NAME), mapped=True, readonly=readonly)
        # The LOCK file's change counter as of our last complete catch-up (refresh): while
        # it still reads the same, nobody changed anything since. -1: never caught up.
        self._changes: float = -1
        try:
            if readonly:
                self._load()
                self._settle_kind()
                return
            with self.file_lock:
                # Create the store, or delete what interrupted steps left; then read it
                # without the lock, so a big store opening does not hold up writers.
                manifest = read_manifest(directory)
                if manifest is None:
                    self._load()
                else:
                    with contextlib.suppress(OSError):  # (best effort: a full disk lets the next open do it)
                        upgrade_manifest(directory)  # an older version's CURRENT: this one's, so it refuses the store
                    self._remove_leftovers(manifest.segments)
            if not self._segments:
                self._load()
            self._settle_kind()
        except BaseException:
            self.close()
            raise

    # --- opening ----------------------------------------------------------

    def _check_directory(self) -> None:
        """Create the directory (not when read-only), or make sure it is a store this version can read."""
        path = self.directory
        if os.path.exists(path) and not os.path.isdir(path):
            raise NotADirectoryError(20, "not a directory (an iodict_log store is a directory)", path)
        if self.readonly:
            if not os.path.isdir(path):
                raise FileNotFoundError(2, "no store here (a read-only opening creates nothing)", path)
            if not os.path.exists(os.path.join(path, MANIFEST_NAME)):
                raise IODictLogError(
                    f"{path}: not an iodict_log store (no {MANIFEST_NAME}); opened read-only, so nothing was created"
                )
        else:
            os.makedirs(path, exist_ok=True)
        manifest = read_manifest(path)  # raises FormatVersionError before anything is written
        if manifest is not None and self._kind:
            self._refuse_other_kind(manifest.kind)  # (likewise; an older store's kind is known only once read)
        if not os.path.exists(os.path.join(path, MANIFEST_NAME)):
            foreign = sorted(name for name in os.listdir(path) if not _is_store_file(name))
            if foreign:
                raise IODictLogError(
                    f"{path}: not an iodict_log store (no {MANIFEST_NAME}, and it holds other files such as "
                    f"{foreign[0]!r})"
                )

    def _settle_kind(self) -> None:
        """Refuse a store of the other kind; record ours in a store that has none yet.
        Nothing has been written when it refuses."""
        if not self._kind:
            return
        self._refuse_other_kind(self._manifest.kind or self._seen)
        if self._manifest.kind or self.readonly:
            return  # (a read-only reader records nothing: writers record the kind)
        with self.file_lock:
            self.refresh()  # (what was appended since the scan counts too)
            manifest = read_manifest(self.directory)
            if manifest is None:
                raise IODictLogError(f"{self.directory}: {MANIFEST_NAME} is gone")
            self._refuse_other_kind(manifest.kind or self._seen)
            if not manifest.kind:
                write_manifest(self.directory, manifest._replace(generation=manifest.generation + 1, kind=self._kind))
            self._manifest = self._manifest._replace(kind=self._kind)

    def _refuse_other_kind(self, holds: int) -> None:
        if holds not in (STORE_UNKNOWN, self._kind):
            wanted = "a dict" if self._kind == STORE_DICT else "a queue"
            raise IODictLogError(f"{self.directory}: this store holds {_HOLDS[holds]}; it cannot be opened as {wanted}")

    def _kind_to_record(self, manifest: Manifest | None) -> int:
        """The kind a new CURRENT records: the one it has, ours, or what the frames hold."""
        return (
            (manifest and manifest.kind) or self._kind or (self._seen if self._seen in (STORE_DICT, STORE_QUEUE) else 0)
        )

    def _load(self) -> None:
        """(Re)build all state from the files.

        With the lock (opening) it may create the store and deletes leftovers.
        Without it (a reload after another process compacted, or any load of a
        read-only reader), a segment may be deleted under it by yet another
        compaction: then it starts over.
        """
        while True:
            manifest = read_manifest(self.directory)
            try:
                self._load_from(manifest)
                return
            except CorruptionError:
                if self.file_lock.held or read_manifest(self.directory) == manifest:
                    raise

    def _load_from(self, manifest: Manifest | None) -> None:
        self._close_segments(later=True)  # (a reload: those may be deleted segments)
        self._consumer.reset()
        self.corrupt_records = 0
        self._reported.clear()
        self._seen = STORE_UNKNOWN
        if manifest is None:  # a new store, or one whose creation crashed half-way
            if not self.file_lock.held:
                raise IODictLogError(f"{self.directory}: {MANIFEST_NAME} is gone")
            self._refuse_lost_manifest()
            self._remove_leftovers(())
            Segment.create(self.directory, 1, KIND_LOG, int.from_bytes(os.urandom(4), "little")).close()
            manifest = Manifest(1, (1,), kind=self._kind)
            write_manifest(self.directory, manifest)
        elif self.file_lock.held:
            self._remove_leftovers(manifest.segments)
        self._manifest = manifest
        self.last_seq = manifest.seq_floor
        self.last_birthtime = manifest.birthtime_floor
        numbers = manifest.segments
        for i, number in enumerate(numbers):
            self._segments.append(
                Segment.open(
                    self.directory, number, writable=i == len(numbers) - 1, files=self._files, readonly=self.readonly
                )
            )
        first, start = self._restore_hint() or self._restore_checkpoint() or (0, SEGMENT_HEADER_SIZE)
        if self.hinted_seq >= 0:
            self._seen |= STORE_DICT  # (only a dict writes hints)
        last = len(self._segments) - 1
        for slot in range(first, last):
            self._scan_complete(slot, start if slot == first else SEGMENT_HEADER_SIZE)
        self._end = start if first == last else SEGMENT_HEADER_SIZE
        self._count_sealed()
        self._catch_up()

    def _restore_hint(self) -> tuple[int, int] | None:
        """Load the index from the hint file if it vouches for the segments as they
        are; (slot, offset) where scanning must go on from, or None to scan all."""
        self.hinted_seq = -1
        if not self._hints:
            return None
        segments = self._segments
        disk = sum(s.size() for s in segments if s is not None)  # (at open, none is None)
        hint = read_hint(self.directory, disk, len(segments))
        if hint is None or not self._hint_covers(hint, [self._live(slot) for slot in range(len(segments))]):
            return None
        try:
            self._consumer.restore(hint.payload, [size for size, _ in hint.coverage])  # type: ignore[attr-defined]
        except ValueError:
            self._consumer.reset()
            return None
        self.last_seq = max(self.last_seq, hint.last_seq)
        self.last_birthtime = max(self.last_birthtime, hint.last_birthtime)
        self.hinted_seq = self.last_seq
        return len(hint.coverage) - 1, hint.coverage[-1][0]

    @staticmethod
    def _hint_covers(hint: Hint, segments: list[Segment]) -> bool:
        """Whether the first ``segments`` hold exactly the bytes the hint was made from."""
        coverage = hint.coverage
        if not coverage or len(coverage) > len(segments):
            return False
        for i, (size, _) in enumerate(coverage):
            segment = segments[i]
            actual = segment.size()
            if segment.salt != hint.salt or actual < size or (actual != size and i < len(coverage) - 1):
                return False
        return all(segments[i].checksum(size) == crc for i, (size, crc) in enumerate(coverage))

    # --- the queue's checkpoint (checkpoint.py) ----------------------------------

    def _restore_checkpoint(self) -> tuple[int, int] | None:
        """Load the queue's state from its checkpoint if it matches the segments as they
        are; (slot, offset) where scanning must go on from, or None to scan all."""
        self.from_checkpoint = False
        self._checkpointed = None
        if not self._checkpoints:
            return None
        segments = self._segments
        disk = sum(s.size() for s in segments if s is not None)  # (at open, none is None)
        checkpoint = read_checkpoint(self.directory, disk, len(segments))
        if (
            checkpoint is None
            or max(checkpoint.last_seq, checkpoint.last_birthtime) >= MAX_SEQ
            or not self._checkpoint_covers(checkpoint, segments)
        ):
            return None
        sizes = [size for _, size, _ in checkpoint.coverage]
        try:
            self._consumer.restore(checkpoint.payload, sizes)  # type: ignore[attr-defined]
        except ValueError:
            self._consumer.reset()
            return None
        self.last_seq = max(self.last_seq, checkpoint.last_seq)
        self.last_birthtime = max(self.last_birthtime, checkpoint.last_birthtime)
        self._checkpointed = (tuple(number for number, _, _ in checkpoint.coverage), checkpoint.last_seq)
        self.from_checkpoint = True
        return len(sizes) - 1, sizes[-1]

    def _checkpoint_covers(self, checkpoint: Checkpoint, segments: list[Segment | None]) -> bool:
        """Whether CURRENT begins with the checkpoint's segments, each with its salt, its covered
        size (exactly, but for the last) and the same bytes below it (its tail's CRC)."""
        coverage = checkpoint.coverage
        if not coverage or len(coverage) > len(segments):
            return False
        live: list[Segment] = []
        for i, (number, size, _) in enumerate(coverage):
            segment = segments[i]
            if segment is None:
                return False
            live.append(segment)
            actual = segment.size()
            if (
                segment.number != number
                or segment.salt != checkpoint.salt
                or not SEGMENT_HEADER_SIZE <= size <= actual
                or (actual != size and i < len(coverage) - 1)
            ):
                return False
        try:
            return all(self._tail_crc(segment, size) == crc for segment, (_, size, crc) in zip(live, coverage))
        except CorruptionError:  # (cut short meanwhile)
            return False

    def _tail_crc(self, segment: Segment, size: int) -> int:
        """CRC-32 of the CHECKPOINT_TAIL bytes of ``segment`` below ``size`` (kept: a sealed
        segment's never change)."""
        known = self._tail_crcs.get(segment.number)
        if known is not None and known[0] == size:
            return known[1]
        start = max(0, size - CHECKPOINT_TAIL)
        crc = zlib.crc32(segment.read(start, size - start))
        self._tail_crcs[segment.number] = (size, crc)
        return crc

    def checkpoint(self, manifest: Manifest | None = None, *, if_changed: bool = False) -> bool:
        """Write the queue's checkpoint of its state as it is now, if the store is big enough
        for it to matter; whether it did. Needs the lock and a refresh() under it.
        ``manifest``: CURRENT as the caller just wrote it (else it is read).

        Best effort: it is a cache, so a failure only costs the next open a scan.
        Not while this process has damage to report (the next open should). With
        ``if_changed`` (at close), only if the log moved since the last checkpoint
        this process loaded or wrote.
        """
        if not self._checkpoints or self.corrupt_records or self.disk_bytes() < CHECKPOINT_MIN_BYTES:
            return False
        if manifest is None:
            manifest = read_manifest(self.directory)
            if manifest is None:
                return False
            self._forget_unlisted(manifest.segments)  # (a queue consumer deleted some: up to date, we may)
        first = self._first_live
        live = self._segments[first:]
        numbers = tuple(s.number for s in live if s is not None)
        if len(numbers) != len(live) or manifest.segments[: len(numbers)] != numbers:
            return False
        if if_changed and self._checkpointed == (numbers, self.last_seq):
            return False
        payload = self._consumer.snapshot(first)  # type: ignore[attr-defined]
        if payload is None:
            return False
        segments: list[Segment] = live  # type: ignore[assignment]
        sizes = [s.size() for s in segments[:-1]] + [self._end]
        try:
            coverage = tuple((s.number, size, self._tail_crc(s, size)) for s, size in zip(segments, sizes))
            salt = segments[-1].salt
            write_checkpoint(self.directory, Checkpoint(salt, self.last_seq, self.last_birthtime, coverage, payload))
        except (OSError, CorruptionError):
            return False
        self._checkpointed = (numbers, self.last_seq)
        return True

    def _count_sealed(self) -> None:
        self._sealed_bytes = sum(s.size() for s in self._segments[:-1] if s is not None)

    def disk_bytes(self) -> int:
        """Bytes in the live segments, as far as this process has read them."""
        return self._sealed_bytes + self._end

    def _close_segments(self, later: bool = False) -> None:
        segments = [s for s in self._segments if s is not None]
        if later:
            close_later(segments)
        for segment in segments:
            segment.close()
        self._segments = []
        self._first_live = 0  # slot of the first segment not dropped
        self._sync_timer = None  # a pending group commit is for a segment now closed

    def _refuse_lost_manifest(self) -> None:
        """No CURRENT: a new store, or one whose creation died before CURRENT was
        written, holds at most segment 1 with its header alone. Segment files with
        records mean CURRENT was lost: deleting them as leftovers would lose the data."""
        for name in os.listdir(self.directory):
            number = parse_segment_name(name)
            if number is None:
                continue
            path = os.path.join(self.directory, name)
            if number != 1 or os.lstat(path).st_size > SEGMENT_HEADER_SIZE:
                raise CorruptionError(
                    f"{self.directory}: {MANIFEST_NAME} is missing but {name} holds records; "
                    "`iodict-log repair` rebuilds it from the segment files"
                )

    def _remove_leftovers(self, live: Iterable[int]) -> None:
        """Delete segment files that no manifest lists: remains of an interrupted step."""
        live = set(live)
        removed = False
        for name in os.listdir(self.directory):
            number = parse_segment_name(name)
            if (number is not None and number not in live) or name == MANIFEST_NAME + ".tmp":
                fileops.unlink(os.path.join(self.directory, name))
                removed = True
        if removed:
            sync_directory(self.directory)

    # --- keeping up with other processes ------------------------------------

    def refresh(self, defer_reload: bool = False) -> None:
        """Apply whatever other processes appended since our last look.

        When another process compacted, the index must be rebuilt: with
        ``defer_reload``, a caller holding the lock once raises ReloadNeeded
        instead, so that it can let go of the lock and call refresh() again,
        and other writers need not wait for the rebuild (see LogHandle._write).

        Every release of the write lock counts one in the LOCK file, so a counter
        equal to ``_changes`` means nothing changed: one memory read, no syscall.
        That holds for a reader always (a holder that dies mid-append counted
        nothing, but its bytes are uncommitted or, whole, become visible at the
        next release by anyone); for a holder of the lock only under the mutex
        protocol, where a holder that died is reported (``owner_died``): then,
        and under flock (where it is not), a holder checks the file's end, and
        cuts what a dead holder tore. The counter is read before the catch-up,
        so a release during it makes the next call look again. (A torn read of
        the counter, possible only on a 32-bit pure build, gives a value it had
        during the read, or one far from any value it will have before this
        process's next call: at worst one more look at the file.)
        """
        lock = self.file_lock
        changes = lock.changes()
        if self._forked:  # (its descriptors went at the fork: open its own first)
            self._reopen()
            self._catch_up(defer_reload)
        elif changes != self._changes or (lock._depth > 0 and (not lock._mutex or lock.owner_died)):
            if os.lseek(self._active.fd, 0, os.SEEK_END) != self._end:  # (Segment.size(), inlined)
                self._catch_up(defer_reload)
            if lock._depth > 0:
                lock.owner_died = False
        else:
            return
        self._changes = changes

    def _drop_descriptors(self) -> None:
        """In a forked child, at fork time: close the descriptors and drop the mappings
        shared with the parent; the sealed segments stay, parked."""
        for segment in self._segments:
            if segment is not None:
                segment.view = None
                if segment.fd >= 0:
                    os.close(segment.fd)
                    segment.fd = -1
                self._forked = True
        self._files.clear()

    def _reopen(self) -> None:
        """In a forked child, on first use: open our own descriptor on the active segment
        (the sealed ones reopen as they are read), or rebuild everything if it is gone
        (compacted meanwhile)."""
        self._forked = False
        active = self._segments[-1]
        assert active is not None  # (the last segment is never dropped)
        try:
            self._segments[-1] = Segment.open(
                self.directory, active.number, writable=True, files=self._files, readonly=self.readonly
            )
        except CorruptionError:
            self._load()

    def _catch_up(self, defer_reload: bool = False) -> None:
        try:
            self._catch_up_once(defer_reload)
        except SegmentGone:
            # A segment went that CURRENT listed when we last looked: a queue consumer
            # deleted it, its items consumed, before we applied the TAKEs that say so (the
            # queue read it back), or a compaction replaced it. Start over from the files.
            if defer_reload and self.file_lock.depth == 1:
                raise ReloadNeeded from None
            self._load()

    def _catch_up_once(self, defer_reload: bool) -> None:
        while True:
            active = self._active
            size = active.size()
            if size < self._end:  # cut back behind our back (repair): start over
                if self.readonly:
                    self._load()  # (without the lock: it starts over if a segment goes meanwhile)
                    return
                with self.file_lock:
                    self._load()
                return
            sealed = self._scan(len(self._segments) - 1, active.read_from(self._end))
            if sealed:  # (_end stays before the SEAL, so until it is followed every refresh meets it again)
                if self.readonly:
                    reload = self._follow_seal()  # (CURRENT read without the lock: replaced atomically)
                    if reload is None:
                        return  # a roll not finished yet: stay before the SEAL, meet it again next call
                else:
                    with self.file_lock:
                        reload = self._follow_seal()
                if reload:
                    if defer_reload and self.file_lock.depth == 1:
                        raise ReloadNeeded
                    self._rebuild()  # (a rebase leaves the segments after its copies to read below)
                continue
            if active.size() == self._end:
                return
            if self.readonly:
                return  # an append in progress or a torn tail: not yet seen, or ignored
            if not self.file_lock.held:
                # An append in progress, or torn by a crash: wait for the writer, then look again.
                with self.file_lock:
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
        segment = self._live(slot)
        scan = Scan(buf, segment.salt, complete=complete)
        apply = self._consumer.apply if self._manifest.kind else self._classifying
        sealed = False
        for frame in scan:
            if frame.op == OP_SEAL:
                sealed = True
                if not complete:
                    break
                continue
            try:
                apply(frame, pack_location(frame.birthtime_ns, slot, base + frame.offset, frame.length))
            except SegmentGone:
                raise  # (it read back from a segment deleted meanwhile: _catch_up reloads)
            except CorruptionError as exc:  # checksums hold, but the consumer cannot read it (a forged key)
                self.corrupt_records += 1
                warnings.warn(
                    f"{segment.path}: skipped the record at offset {base + frame.offset}: {exc}",
                    CorruptionWarning,
                    stacklevel=4,
                )
        self.last_seq = max(self.last_seq, scan.last_seq)
        self.last_birthtime = max(self.last_birthtime, scan.last_birthtime)
        self._consumer.settle()
        self._report_damage(segment, slot, base, scan.damage)
        self._end = base + scan.end
        return sealed

    def _classifying(self, frame: Frame, loc: int) -> None:
        """The consumer's apply, noting which kind of store the frame belongs to."""
        self._seen |= _OP_KIND.get(frame.op, STORE_UNKNOWN)
        self._consumer.apply(frame, loc)

    def _scan_complete(self, slot: int, start: int = SEGMENT_HEADER_SIZE) -> None:
        self._end = start
        self._scan(slot, self._live(slot).read_from(start), complete=True)

    def _follow_seal(self) -> bool | None:
        """The last segment is sealed: move on to the next one; True if the index
        must be rebuilt instead (by _load, best without the lock). Needs the lock,
        but for a read-only reader, which cannot finish a roll: None then, if CURRENT
        still ends with the sealed segment (the roller is in its step 2 or died there)."""
        manifest = read_manifest(self.directory)
        listed = manifest.segments if manifest else ()
        kept = self._forget_unlisted(listed)
        if listed[: len(kept)] != kept or len(self._segments) + len(listed) - len(kept) > MAX_SLOTS:
            return True  # compaction replaced our segments (or the slots need renumbering)
        lost_place = getattr(self._consumer, "lost_place", None)
        if lost_place is not None and lost_place(self._first_live):
            return True  # a queue consumer deleted segments this process had yet to read back
        if listed == kept:
            if self.readonly:
                return None
            self._roll_after_seal()  # the roller died after sealing
            return False
        assert manifest is not None  # (it lists more segments than this process keeps)
        self._open_after(manifest, len(kept))
        return False

    def _open_after(self, manifest: Manifest, known: int) -> None:
        """Open and read the segments CURRENT lists after the ``known`` ones we end with."""
        listed = manifest.segments
        first_new = len(self._segments)
        previous = self._segments[-1]
        assert previous is not None  # (the last segment is never dropped)
        previous.seal()  # (no longer the last)
        for number in listed[known:]:
            self._segments.append(
                Segment.open(
                    self.directory, number, writable=number == listed[-1], files=self._files, readonly=self.readonly
                )
            )
        for slot in range(first_new, len(self._segments) - 1):
            self._scan_complete(slot)  # sealed in the meantime: read whole
        self._manifest = manifest
        self._end = SEGMENT_HEADER_SIZE
        self._sync_timer = None  # a pending group commit is for the old segment
        self._count_sealed()

    def _rebuild(self) -> None:
        """Rebuild the index after another process replaced our first segments."""
        try:
            if self._rebase():
                return
        except CorruptionError:
            pass  # a segment went missing: compacted again meanwhile; _load starts over as often as needed
        self._load()

    def _rebase(self) -> bool:
        """After a compaction: move the index onto the copies (the compaction's hint
        says where each is) instead of rebuilding it, when rescanning what was
        appended during the compaction would cost more; whether it did.

        Our leading segments were forgotten by _follow_seal; the ones we kept
        must follow the hint's segments in CURRENT, the hint must vouch for
        them, and every key we had in a replaced segment must have its copy.
        """
        manifest = read_manifest(self.directory)
        if manifest is None or not self._hints or self.corrupt_records:
            return False
        try:  # (the hint covers some of these: no larger than they could justify)
            disk = sum(os.stat(os.path.join(self.directory, segment_name(n))).st_size for n in manifest.segments)
        except OSError:
            return False  # compacted again meanwhile
        hint = read_hint(self.directory, disk, len(manifest.segments))
        if hint is None:
            return False
        kept_slots = [slot for slot, s in enumerate(self._segments) if s is not None]
        kept = tuple(self._live(slot).number for slot in kept_slots)
        copies = len(hint.coverage)
        if manifest.segments[copies : copies + len(kept)] != kept:
            return False
        consumer = self._consumer
        frame_bytes = consumer.live_bytes / max(len(consumer), 1)  # type: ignore[attr-defined, arg-type]
        to_rescan = sum(self._live(slot).size() for slot in kept_slots) / max(frame_bytes, 1)
        if to_rescan * _RESCAN_COST < len(consumer):  # type: ignore[arg-type]
            return False
        segments: list[Segment] = []
        try:
            for number in manifest.segments[:copies]:
                segments.append(Segment.open(self.directory, number, files=self._files))
        except CorruptionError:
            close_later(segments)
            return False  # compacted again meanwhile
        try:
            if not self._hint_covers(hint, segments):
                raise ValueError("the hint is not this compaction's")
            sizes = [size for size, _ in hint.coverage]
            consumer.rebase(hint.payload, sizes, kept_slots[0], copies - kept_slots[0])  # type: ignore[attr-defined]
        except BaseException as exc:  # (a parked copy that is gone again: _rebuild starts over)
            for segment in segments:
                segment.close()
            if isinstance(exc, ValueError):
                return False
            raise
        self._segments = [*segments, *(self._segments[slot] for slot in kept_slots)]
        self._first_live = 0
        self.hinted_seq = hint.last_seq
        if manifest.segments[copies + len(kept) :]:
            self._open_after(manifest, copies + len(kept))
        else:
            self._manifest = manifest
            self._count_sealed()
        return True

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
        dropped = []
        for slot, segment in enumerate(self._segments):
            if segment is not None and segment.number in numbers:
                dropped.append(segment)
                self._segments[slot] = None
                self._tail_crcs.pop(segment.number, None)
        close_later(dropped)
        while self._segments[self._first_live] is None:
            self._first_live += 1
        self._count_sealed()

    @property
    def _active(self) -> Segment:
        """The segment appends go to: the last slot, which is never dropped."""
        return self._live(-1)

    def _live(self, slot: int) -> Segment:
        """The segment at ``slot``, which the caller knows was not dropped (Segment | None
        narrowed for the type checker: a dropped slot here is a bug)."""
        segment = self._segments[slot]
        assert segment is not None, f"segment slot {slot} was dropped"
        return segment

    # --- writing ------------------------------------------------------------

    def birthtime(self) -> int:
        """A fresh birthtime in ns, later than every one in the log. Needs the lock.

        Whole microseconds, at least one apart: users see birthtimes as float
        seconds, whose resolution today is about 0.24 us, so nanosecond steps
        would make distinct birthtimes compare equal.
        """
        now = time.time_ns() // 1000 * 1000
        self.last_birthtime = now if now > self.last_birthtime else self.last_birthtime + 1000
        return self.last_birthtime

    def append_one(self, op: int, flags: int, key: bytes, value: bytes, birthtime_ns: int) -> int:
        """Append one record; its location (its seq is then ``last_seq``).

        Needs the lock and a refresh() under it. A write that fails leaves
        nothing in the file. An fsync that fails (sync=True) after the bytes
        landed whole raises too, but the record stays: other processes may
        already have read it, and it is as durable as any unsynced write; the
        next refresh applies it here.
        """
        if self._end >= self.segment_bytes or self._sync_error is not None:
            self._make_room()
        slot = len(self._segments) - 1
        active = self._active
        seq = self.last_seq + 1
        data = encode_frame(op, flags, seq, birthtime_ns, key, value, salt=active.salt)
        end = self._end
        self._land(active, data)
        self.last_seq = seq
        return pack_location(birthtime_ns, slot, end, len(data))

    def append_batch(self, entries: list[Entry]) -> list[tuple[int, int]]:
        """Append entries as one batch, in one write; their (seq, location)s. As append_one."""
        self._make_room()
        slot = len(self._segments) - 1
        active = self._active
        data, locs, seq = self._encode_batch(entries, slot, active.salt)
        if crashpoints.ARMED:
            crashpoints.tear("batch.half", active.fd, data)
        self._land(active, data)
        self.last_seq = seq
        return locs

    def _make_room(self) -> None:
        """Report a failed group commit before anything new is written; roll if due."""
        self._raise_sync_error()
        if self._end >= self.segment_bytes:
            self._roll()

    def _land(self, active: Segment, data: bytes) -> None:
        """Write ``data`` at the end of the active segment, fsync as ``sync`` says, move on."""
        if self._end + len(data) > MAX_OFFSET:
            raise IODictLogError("a segment may not grow past 4 GiB; lower segment_bytes")
        active.append(data, self._end)
        if crashpoints.ARMED:
            crashpoints.reached("append.written")
        if self.sync_always:
            try:
                active.sync()
            except OSError as exc:
                message = f"written, but fsync failed, so it may not survive a power loss: {exc}"
                raise OSError(exc.errno, message) from exc
        self._end += len(data)
        if self.sync_interval is not None:
            self._schedule_group_commit(active)

    def _encode_batch(self, entries: list[Entry], slot: int, salt: int) -> tuple[bytes, list[tuple[int, int]], int]:
        """BEGIN, the entries flagged as batch members, COMMIT: (bytes, (seq, location)s, last seq)."""
        begin = self.birthtime()
        return encode_batch(entries, self.last_seq + 1, begin, self.birthtime(), self._end, slot, salt)

    def _schedule_group_commit(self, active: Segment) -> None:
        """Make sure an fsync of the active segment is due within the sync interval."""
        timer = self._sync_timer
        if timer is None or not timer.is_alive():  # (no timer survives a fork: it is not alive)
            # The timer syncs a duplicate descriptor, so it needs no lock and cannot race
            # with close(). When the active segment changes the timer is dropped (the old
            # one still fires) so the next write schedules one for the new segment; a roll
            # fsyncs the sealed segment itself.
            interval = self.sync_interval
            assert interval is not None  # (a group commit is scheduled only with one)
            timer = threading.Timer(interval, self._group_commit, (hand_to_thread(os.dup(active.fd)),))
            timer.daemon = True
            timer.start()
            self._sync_timer = timer

    def _group_commit(self, fd: int) -> None:
        try:
            fileops.fdatasync(fd)
        except OSError as exc:
            self._sync_error = exc
        finally:
            close_from_thread(fd)

    def _raise_sync_error(self) -> None:
        error, self._sync_error = self._sync_error, None
        if error is not None:
            raise OSError(error.errno, f"a group-commit fsync failed; recent writes may not be durable: {error}")

    def _roll(self) -> None:
        """Seal the last segment and start the next one. Needs the lock."""
        self._check_room(self._manifest, 1)  # (before the SEAL, which commits us to the roll)
        with self._rewind_on_error():
            self._seal()
            if crashpoints.ARMED:
                crashpoints.reached("roll.sealed")
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

    def _check_room(self, manifest: Manifest, new: int) -> None:
        """IODictLogError, before anything is written, if ``new`` more segments would not
        fit CURRENT's limits (MAX_SEGMENTS listed, ten-digit numbers)."""
        if len(manifest.segments) + new > MAX_SEGMENTS:
            raise IODictLogError(
                f"{self.directory}: a store may list at most {MAX_SEGMENTS} segments; "
                "compact it, or reopen it with a larger segment_bytes"
            )
        if max(manifest.segments, default=0) + new > MAX_NUMBER:
            raise IODictLogError(f"{self.directory}: segment numbers have run out (see `iodict-log repair`)")

    def _seal(self) -> None:
        """Append the SEAL frame that tells every process to re-read CURRENT."""
        self.last_seq += 1
        frame = encode_frame(OP_SEAL, 0, self.last_seq, self.birthtime(), b"", b"", salt=self._active.salt)
        self._active.append(frame, self._end)
        self._end += len(frame)

    def _roll_after_seal(self) -> None:
        active = self._segments[-1]
        assert active is not None  # (the last segment is never dropped)
        active.sync()
        manifest = read_manifest(self.directory)  # under the lock: the latest
        if manifest is None or manifest.segments[-1:] != (active.number,):
            raise CorruptionError(f"{self.directory}: {MANIFEST_NAME} does not end with the segment being rolled")
        self._forget_unlisted(manifest.segments)
        self._remove_leftovers(manifest.segments)
        self._check_room(manifest, 1)
        number = max(manifest.segments) + 1  # (repair may have put a higher number earlier in the list)
        segment = Segment.create(self.directory, number, KIND_LOG, active.salt, self._files)
        kind = self._kind_to_record(manifest)
        manifest = manifest._replace(
            generation=manifest.generation + 1, segments=manifest.segments + (number,), kind=kind
        )
        if crashpoints.ARMED:
            crashpoints.reached("roll.created")
        try:
            write_manifest(self.directory, manifest)
        except BaseException:
            segment.close()
            raise
        active.seal()
        self._segments.append(segment)
        self._manifest = manifest
        self._end = SEGMENT_HEADER_SIZE
        self._sync_timer = None  # a pending group commit is for the old segment
        self._count_sealed()
        self.checkpoint(manifest)  # (CURRENT changed: the next open scans from here at most)
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
        if manifest is None:
            raise CorruptionError(f"{self.directory}: {MANIFEST_NAME} is gone from an open store")
        manifest = manifest._replace(
            generation=manifest.generation + 1,
            segments=tuple(n for n in manifest.segments if n not in doomed),
            seq_floor=self.last_seq,  # the frames holding the latest may be among the dropped
            birthtime_floor=self.last_birthtime,
            kind=self._kind_to_record(manifest),
        )
        write_manifest(self.directory, manifest)
        if crashpoints.ARMED:
            crashpoints.reached("queue.released")
        self._manifest = manifest
        self._forget(doomed)
        for number in doomed:
            with contextlib.suppress(FileNotFoundError):
                fileops.unlink(os.path.join(self.directory, segment_name(number)))
        sync_directory(self.directory)
        self.checkpoint(manifest)  # (the last one named the segments just deleted: it no longer matches)

    # --- reading --------------------------------------------------------------

    def read_value(self, loc: int) -> tuple[int, bytes]:
        """(flags, stored value) of the record at ``loc``, checksums verified."""
        if _read_value is not None:  # (the C core reads through a mapping; None: read here, and raise)
            found = _read_value(self, loc)
            if found is not None:
                return found
        segment = self._segments[(loc >> SLOT_SHIFT) & SLOT_MASK]  # (unpack_location, inlined: every get)
        if segment is None:  # (dropped: a queue consumer's reclaim this process has yet to apply)
            raise SegmentGone(f"{self.directory}: the segment of slot {(loc >> SLOT_SHIFT) & SLOT_MASK} was dropped")
        offset = (loc >> OFFSET_SHIFT) & OFFSET_MASK
        if segment.fd < 0 and _read_value is not None:
            segment.reopen()  # parked, and no mapping covers the record: the core maps it whole now
            found = _read_value(self, loc)
            if found is not None:
                return found
        found = frame_value(segment.read(offset, loc & LENGTH_MASK), segment.salt)
        if found is None:
            raise CorruptionError(f"{segment.path}: record at offset {offset} fails its checksum")
        return found

    def read_frames(self, loc: int, stop: int | None = None, want: int = 0) -> Iterator[list[tuple[int, int]]]:
        """The committed PUT frames from the one at ``loc`` on, up to the location ``stop``
        (None: all this process has applied), as (seq, location), a chunk at a time: how a
        consumer that keeps positions instead of every location reads records back
        (PendingItems). Each frame's CRCs are checked as a scan checks them
        (Scan.put_locations), without building Frames, and a batch's members count as they
        come: this process found the batch whole when it applied it (Scan's ``committed``),
        so a read back from the middle of a large batch need not reach its COMMIT.
        ``want``: about how many PUTs the caller will take before it stops (0: all); the
        reads are sized for them from the length of the frame at ``loc``, so that little
        is read and checked beyond them.

        ``loc`` must be a frame this process indexed (or a checkpoint vouched for).
        Damage is warned about and counted unless it was already (by the scan that
        indexed it, or an earlier read back): it lay behind a checkpoint, or came since.
        """
        slot, offset = (loc >> SLOT_SHIFT) & SLOT_MASK, (loc >> OFFSET_SHIFT) & OFFSET_MASK
        if stop is None:
            last, stop_offset = len(self._segments) - 1, self._end
        else:
            last, stop_offset = (stop >> SLOT_SHIFT) & SLOT_MASK, (stop >> OFFSET_SHIFT) & OFFSET_MASK
        left = [want or -1, loc & LENGTH_MASK]  # (PUTs still wanted, -1: all; a frame's length)
        while slot <= last:
            segment = self._segments[slot]
            if segment is not None:
                end = stop_offset if slot == last else segment.size()
                yield from self._chunks_between(slot, segment, offset, end, left)
            slot, offset = slot + 1, SEGMENT_HEADER_SIZE

    def _chunks_between(
        self, slot: int, segment: Segment, pos: int, end: int, left: list[int]
    ) -> Iterator[list[tuple[int, int]]]:
        """read_frames within one segment, from ``pos`` to ``end``: READ_CHUNK bytes at a
        time, or fewer while ``left`` says how many PUTs are still wanted."""
        chunk = 0
        while pos < end:
            if not chunk:  # (the size for what is still wanted, in frames like the first)
                wanted, frame = left
                chunk = READ_CHUNK if wanted <= 0 else max(MIN_CHUNK, min(READ_CHUNK, (wanted + 1) * frame))
            length = min(chunk, end - pos)
            try:
                buf = segment.read(pos, length)
            except SegmentGone:
                raise  # (deleted by a queue consumer this process has not caught up with)
            except CorruptionError as exc:  # (cut short since it was indexed: repair, or damage)
                self._report_damage(segment, slot, pos, [Damage(0, end - pos, str(exc))])
                return
            final = pos + length == end
            scan = Scan(buf, segment.salt, complete=final, committed=True)  # (all applied: batches whole)
            puts = scan.put_locations(slot, pos)
            self._report_damage(segment, slot, pos, scan.damage)
            if left[0] > 0:
                left[0] = max(left[0] - len(puts), 0) or -1
            yield puts
            if final:
                return
            if scan.end:
                pos, chunk = pos + scan.end, 0
            else:
                chunk = length * 2  # (one frame, or one batch, larger than the chunk)

    def _report_damage(self, segment: Segment, slot: int, base: int, damage: list[Damage]) -> None:
        """Warn about and count the damage regions (offsets from ``base``) not reported yet:
        a scan meets each once, and read_frames may meet it again."""
        for region in damage:
            at = base + region.offset
            if slot << OFFSET_BITS | at not in self._reported:
                self._reported.add(slot << OFFSET_BITS | at)
                self.corrupt_records += 1
                warnings.warn(
                    f"{segment.path}: skipped {region.length} bytes at offset {at} ({region.reason})",
                    CorruptionWarning,
                    stacklevel=5,
                )

    def frames(self, start_seq: int = 0) -> Iterator[Frame]:
        """Committed data frames (SET, DELETE, PUT, TAKE) with seq >= start_seq, in sequence order.

        Takes its snapshot now (the segments listed, how far the last one is
        committed, the last seq), so the iterator may be consumed while the store
        is written, compacted or closed. It opens segments by number as it reaches
        them, one at a time and only while reading, so it holds no descriptor
        between records. If one is gone (a compaction or a queue's reclaim deleted
        it), it goes on from CURRENT as it is then, at the first seq not yet yielded
        and up to the snapshot's last: it skips what that compaction dropped, as an
        iterator made after it would, and never yields a record twice or out of order.
        It seeks: segments wholly before ``start_seq`` are passed over by their first
        frame's seq, so the first record comes as soon from the end of a long log as
        from its start.
        """
        numbers = [s.number for s in self._segments if s is not None]
        return _frames(self.directory, numbers, self._end, start_seq, self.last_seq)

    # --- compaction (the long part is in compaction.py) -------------------------

    def seal_for_compaction(self) -> Sources:
        """Roll, so that every record so far sits in a sealed segment; those segments.

        Needs the lock and a refresh() under it. The caller closes the Sources.
        """
        if self._end > SEGMENT_HEADER_SIZE:
            self._roll()
        sealed = [(slot, s) for slot, s in enumerate(self._segments[:-1]) if s is not None]
        segments = {slot: (s.path, s.salt, s.number) for slot, s in sealed}
        # (Descriptors a compaction thread owns: a forked child, without that thread, closes them.)
        files = Readers(SOURCE_FILES, threaded=True)
        return Sources(tuple(s.number for _, s in sealed), segments, self._active.salt, files)

    def commit_compaction(self, replaced: tuple[int, ...], written: list[Written], hint: bool) -> None:
        """Put the ``written`` segments in CURRENT in place of the ``replaced`` ones.

        Needs the lock and a refresh() under it. Raises IODictLogError, changing
        nothing, if CURRENT no longer starts with ``replaced`` (a repair ran).
        With ``hint``, the staged hint file (which covers ``written``) is published.
        This process then meets its own SEAL on its next refresh and rebuilds its
        index like every other process, after letting go of the lock.
        """
        directory = self.directory
        manifest = read_manifest(directory)  # under the lock: the latest
        if manifest is None or manifest.segments[: len(replaced)] != replaced:
            raise IODictLogError(f"{directory}: the segments changed during compaction (a repair?); nothing changed")
        self._check_room(manifest._replace(segments=manifest.segments[len(replaced) :]), len(written) + 1)
        # A compactor that died after installing its copies left them, unlisted, under
        # the very numbers this one is about to use: remove them first.
        self._remove_leftovers(manifest.segments)
        numbers = install(directory, written, max(manifest.segments) + 1)
        active = (numbers[-1] if numbers else max(manifest.segments)) + 1
        Segment.create(directory, active, KIND_LOG, self._active.salt).close()
        if crashpoints.ARMED:
            crashpoints.reached("compaction.installed")
        before_seal = self._end
        with self._rewind_on_error():
            self._seal()
            if crashpoints.ARMED:
                crashpoints.reached("compaction.sealed")
            segments = (*numbers, *manifest.segments[len(replaced) :], active)
            kind = self._kind_to_record(manifest)
            write_manifest(
                directory, Manifest(manifest.generation + 1, segments, self.last_seq, self.last_birthtime, kind)
            )
            if crashpoints.ARMED:
                crashpoints.reached("compaction.committed")
            if hint:
                with contextlib.suppress(OSError):  # only a cache: without it the next open scans
                    publish_hint(directory)
            for n in replaced:
                fileops.unlink(os.path.join(directory, segment_name(n)))
            sync_directory(directory)
        if crashpoints.ARMED:
            crashpoints.reached("compaction.unlinked")
        self._end = before_seal

    # --- the hint file ----------------------------------------------------------

    def stage_hint(self) -> bool:
        """Write a hint file of the index as it is. Needs the compaction lock; whether
        there is anything worth staging (the caller then publishes it)."""
        segments = self._segments
        if not self._hints or self.corrupt_records or any(s is None for s in segments):
            # (A hint would hide damage that opening should report; and once a queue
            # dropped segments, slots no longer match positions in CURRENT.)
            return False
        live = [self._live(slot) for slot in range(len(segments))]
        sizes = [s.size() for s in live[:-1]] + [self._end]
        coverage = [(size, s.checksum(size)) for s, size in zip(live, sizes)]
        payload = self._consumer.snapshot()  # type: ignore[attr-defined]
        salt = live[-1].salt
        stage_hint(self.directory, Hint(salt, self.last_seq, self.last_birthtime, tuple(coverage), payload))
        return True

    def wants_hint(self) -> bool:
        """Whether enough records lie past the last hint to write a new one at close."""
        return self._hints and self.last_seq - max(self.hinted_seq, 0) >= max(HINT_AFTER_RECORDS, 1)

    def covers_current(self) -> bool:
        """Whether CURRENT still starts with the segments this process has indexed."""
        manifest = read_manifest(self.directory)
        numbers = tuple(s.number for s in self._segments if s is not None)
        return manifest is not None and manifest.segments[: len(numbers)] == numbers

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
        self._active.sync()

    def close(self) -> None:
        """Close the files; with group commit, fsync first (its error propagates)."""
        try:
            if self.sync_interval is not None and self._segments and not self._forked and not self.readonly:
                self.sync()
        finally:
            self._release_files()

    def _release_files(self) -> None:
        self._close_segments()
        lock = getattr(self, "file_lock", None)
        if lock is not None:
            lock.close()

    def __del__(self) -> None:
        # A store dropped without close() gives its descriptors back, as a file does.
        # (No fsync here: a pending group commit still holds its own descriptor.)
        if getattr(self, "_segments", None) is not None:
            self._release_files()


def _frames(directory: str, numbers: list[int], end: int, start_seq: int, last_seq: int) -> Iterator[Frame]:
    """Log.frames' iterator: from the snapshot, then from CURRENT each time a segment is gone."""
    ends: list[int | None] = [None] * (len(numbers) - 1) + [end]
    resume = [start_seq]  # the first seq not yet yielded, as of the last segment or batch begun
    while True:
        try:
            yield from _frames_of(directory, numbers, ends, resume, last_seq)
            return
        except SegmentGone:
            manifest = read_manifest(directory)
            if manifest is None:
                raise IODictLogError(f"{directory}: {MANIFEST_NAME} is gone") from None
            if list(manifest.segments) == numbers:
                raise  # CURRENT lists a segment that is not there: damage, not a compaction
            numbers = list(manifest.segments)
            ends = [None] * len(numbers)


def _frames_of(
    directory: str, numbers: list[int], ends: list[int | None], resume: list[int], last_seq: int
) -> Iterator[Frame]:
    """The frames of the listed segments with resume[0] <= seq <= last_seq, in seq order; each
    segment is read whole up to its end (None: its size), the last one as unfinished.

    Only opening a file can fail for want of it (SegmentGone); before each, ``resume[0]``
    is moved past what was yielded, so that the caller can go on from there. (Not frame
    by frame: a replay yields millions of them.)
    """
    start_seq = resume[0]
    last = len(numbers) - 1

    def scan(segment: Segment, slot: int) -> Scan:
        """The segment's frames, read as the index was built: every one but the last is complete."""
        end = ends[slot]
        size = segment.size() if end is None else end
        data = os.pread(segment.fd, size - SEGMENT_HEADER_SIZE, SEGMENT_HEADER_SIZE)
        return Scan(data, segment.salt, complete=slot < last)

    # Compacted segments hold their frames in birthtime order: sort them all by seq,
    # remembering only where each frame is, then read them back a batch at a time.
    compacted = []
    log_slots = []
    for slot in range(_seek(directory, numbers, start_seq) if start_seq else 0, len(numbers)):
        segment = Segment.open(directory, numbers[slot])  # (SegmentGone if it is not there)
        try:
            if segment.kind != KIND_COMPACTED:
                log_slots.append(slot)  # (read below, once its turn comes)
                continue
            frames = scan(segment, slot)
        finally:
            segment.close()
        compacted += [
            (f.seq, segment.path, SEGMENT_HEADER_SIZE + f.offset, f.length, segment.salt)
            for f in frames
            if start_seq <= f.seq <= last_seq
        ]
    compacted.sort()
    files = Readers(1)
    for first in range(0, len(compacted), _REPLAY_BATCH):
        batch = compacted[first : first + _REPLAY_BATCH]
        if first:
            resume[0] = compacted[first - 1][0] + 1
        try:
            found = files.read_all([(path, offset, length) for _, path, offset, length, _ in batch])
        finally:
            files.close()
        for (_, _, offset, _, salt), data in zip(batch, found):
            frame = decode_frame(data, 0, salt)
            if frame is None:
                raise CorruptionError(f"record at offset {offset} changed on disk while being replayed")
            yield frame
    if compacted:
        resume[0] = max(resume[0], compacted[-1][0] + 1)
    for slot in log_slots:
        segment = Segment.open(directory, numbers[slot])
        try:
            frames = scan(segment, slot)
        finally:
            segment.close()
        yield from (f for f in frames if f.op != OP_SEAL and start_seq <= f.seq <= last_seq)
        resume[0] = max(resume[0], frames.last_seq + 1)


def _seek(directory: str, numbers: list[int], start_seq: int) -> int:
    """The slot to read from for ``start_seq``: the last log segment whose first seq is <=
    start_seq, before which every record is older; 0 if there is none.

    CURRENT lists compacted segments first, then log segments in seq order, so "compacted,
    or a log segment beginning at or before start_seq" holds for a prefix of the list: a
    binary search finds its end, opening O(log n) segments. A log segment whose first
    header does not read counts as beginning after: the search ends earlier, so the
    iterator reads more, never less.
    """
    kinds: dict[int, int] = {}

    def before(slot: int) -> bool:
        segment = Segment.open(directory, numbers[slot])
        try:
            kinds[slot] = segment.kind
            if segment.kind == KIND_COMPACTED:
                return True
            seq = _first_seq(segment)
            return seq is not None and seq <= start_seq
        finally:
            segment.close()

    low, high = 0, len(numbers)
    while low < high:
        middle = (low + high) // 2
        if before(middle):
            low = middle + 1
        else:
            high = middle
    return low - 1 if low and kinds[low - 1] != KIND_COMPACTED else 0


def _first_seq(segment: Segment) -> int | None:
    """The seq of the segment's first frame, from its header (None: no whole header there)."""
    return header_seq(os.pread(segment.fd, HEADER_SIZE, SEGMENT_HEADER_SIZE), 0, segment.salt)


class LogHandle:
    """What IODict and DurableQueue share: a Log guarded by the object's lock,
    ``StoreClosedError`` once closed, and use as a context manager.

    Subclasses set ``path``, ``_lock`` (a context-manager lock) and ``_log``.
    """

    path: str
    _lock: Any
    _log: Log | None
    # Seconds any call may wait for the store's write lock (IODict's lock_timeout), else
    # LockTimeoutError; None waits as long as it takes. A call's own deadline comes first.
    lock_timeout: float | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle as "reopen this path with these options", so a store can be passed to a
        spawned process or a pool (and copy.copy() opens a second handle)."""
        self._open_log()  # (StoreClosedError: a closed store is not reopened elsewhere)
        return (functools.partial(type(self), **self._reopen_options()), (self.path,))

    def _reopen_options(self) -> dict[str, Any]:
        """The options a pickle reopens the store with (a subclass's)."""
        raise NotImplementedError

    def _open_log(self) -> Log:
        log = self._log
        if log is None:
            raise StoreClosedError(f"{self.path}: this {type(self).__name__} is closed")
        return log

    def _read(self, fn: Callable[..., T], *args: Any, deadline: float | None = None) -> T:
        """Run fn(log, *args) on up-to-date state. With a ``deadline`` (time.monotonic()),
        waiting for the write lock past it raises LockTimeoutError."""
        with self._lock:
            log = self._log or self._open_log()  # (StoreClosedError once closed)
            if deadline is None and self.lock_timeout is not None:
                deadline = time.monotonic() + self.lock_timeout
            log.file_lock.deadline = deadline
            try:
                log.refresh()
                try:
                    return fn(log, *args)
                except SegmentGone:  # deleted since the catch-up, by a compaction
                    return self._read_again(log, fn, args)
            finally:
                log.file_lock.deadline = None

    def records(self, start: int = 0, *, follow: bool = False, timeout: float | None = None) -> Iterator[Record]:
        """Every record still in the log (a dict's sets and deletes, a queue's puts), in
        sequence order, from seq ``start``; with ``follow``, then each new one as any process
        writes it (streams.py), until ``timeout`` seconds pass without one (None: never)."""
        start = check_start(start)
        timeout = check_timeout(timeout)
        if follow:
            return streams.follow(self._snapshot, self._last_seq, start, timeout)
        return self._snapshot(start)[1]

    def _snapshot(self, start: int) -> tuple[int, Iterator[Record]]:
        """The log's last seq now, and the records up to it from seq ``start`` (each store's own)."""
        raise NotImplementedError

    def _last_seq(self) -> int:
        return self._read(lambda log: log.last_seq)

    def _read_again(self, log: Log, fn: Callable[..., T], args: tuple) -> T:
        """_read's fn, after a SegmentGone: catch up and try again, up to READ_TRIES times.
        It looks at the files, not the change counter: a compaction deletes the old segments
        while it holds the lock, before the counter moves."""
        for tries in range(READ_TRIES - 1, 0, -1):
            log._changes = -1
            log.refresh()
            try:
                return fn(log, *args)
            except SegmentGone:
                if tries == 1:
                    raise
        raise AssertionError("unreachable")  # (READ_TRIES >= 2)

    def _refuse_writes(self) -> None:
        """ReadOnlyError if opened read-only (StoreClosedError once closed): a write
        method's first step, before it encodes, waits or takes any lock."""
        if self._open_log().readonly:
            raise self._read_only()

    def _read_only(self) -> ReadOnlyError:
        return ReadOnlyError(f"{self.path}: this {type(self).__name__} is open read-only; nothing was changed")

    def _catch_up(self) -> None:
        """Apply what other processes appended, without the write lock (StoreClosedError once closed)."""
        with self._lock:
            self._open_log().refresh()

    def _write(self, fn: Callable[..., T], *args: Any, deadline: float | None = None) -> T:
        """Run fn(log, *args) holding the file lock, on up-to-date state. With a
        ``deadline`` (time.monotonic()), waiting for the lock past it raises LockTimeoutError.
        ReadOnlyError, before anything, on a store opened read-only."""
        with self._lock:
            log = self._log or self._open_log()  # (StoreClosedError once closed)
            if log.readonly:
                raise self._read_only()
            if deadline is None and self.lock_timeout is not None:
                deadline = time.monotonic() + self.lock_timeout
            log.file_lock.deadline = deadline
            try:
                lock = log.file_lock
                while True:
                    try:
                        with lock:
                            log.refresh(defer_reload=True)
                            end = log._end
                            result = fn(log, *args)
                            wrote = log._end != end
                        if wrote and lock._depth == 0:
                            # Our release counted our own append, and nothing else changed
                            # while we held the lock: the next call need not look again.
                            # (Only after an append, which moves _end: a compaction's commit
                            # leaves _end before its own SEAL, for the next refresh to meet.)
                            log._changes = lock._released
                        return result
                    except ReloadNeeded:
                        log.refresh()  # rebuild the index without holding up other writers
            finally:
                log.file_lock.deadline = None

    def close(self) -> None:
        """Close the files; the data stays on disk, the object is unusable afterwards. Idempotent."""
        with self._lock:
            log, self._log = self._log, None
            if log is not None:
                try:
                    self._before_close(log)
                finally:
                    log.close()

    def _before_close(self, log: Log) -> None:
        """Last words with the log, under the object's lock (a subclass hook)."""

    def __enter__(self: H) -> H:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
