"""Checking and mending a store's files, for the iodict-log tool.

``verify`` reads every segment and reports each region a reader would skip and
each record a reader would refuse (a key or a msgpack value that does not
decode, a TAKE naming no record), with its file and offset; a damaged or
missing CURRENT is damage too. It takes no lock and changes nothing, so it is
safe while applications use the store.

Every segment is read one at a time (files over 64 MiB are memory-mapped, not
read), so memory stays bounded by about one segment; no legitimate record lies
past 4 GiB (MAX_OFFSET), so bytes there are reported as damage, unread.

Theory of operation of ``repair``
---------------------------------
It holds ``COMPACT.LOCK`` throughout (no compaction runs meanwhile) and the
write lock ``LOCK`` only for moments, like a compaction (compaction.py):

1. Survey, without ``LOCK``: each segment CURRENT lists is scanned and its
   damage noted. A segment header that fails its checksum gets its salt back
   from the other headers (every header of a store carries the same salt), but
   only if frames' checksums then hold. Nothing to do: stop, no backup.
2. Backup: the store's own regular files (CURRENT, NNNNNNNNNN.seg, HINT), never
   through a link, into a new directory of mode 0700.
3. If the last segment is damaged: under ``LOCK``, cut its torn tail, SEAL it
   and start a new last segment (a roll), so it never changes again.
4. Without ``LOCK``: each damaged segment, being sealed, is copied into a new
   file under a temporary name (``compact.rNNNNNNNNNN.tmp``), keeping exactly
   the frames a reader applies from it, minus the records a reader refuses.
5. Under ``LOCK``: read CURRENT again (writers rolled, queue consumers may
   have dropped segments meanwhile), cut a torn tail off the last segment,
   SEAL it, give the copies segment numbers above every other, replace CURRENT
   listing each copy in its original's place and without the segments that
   are missing or have nothing readable, delete the originals. Processes with
   the store open meet the SEAL and rebuild their view, as after a compaction.

When CURRENT itself is damaged or missing no process can open the store, and
repair holds ``LOCK`` from the start: it rebuilds the list from the segment
files (``_rebuild_order``) and then goes on as above.
"""

from __future__ import annotations

import array
import base64
import contextlib
import json
import math
import mmap
import os
import stat
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, NamedTuple, cast

import msgpack  # type: ignore[import-untyped]

from . import fileops
from .compaction import SegmentWriter, Written, compaction_lock, install, remove_leftovers, standalone
from .errors import CorruptionError, FormatVersionError, IODictLogError
from .filelock import FileLock
from .fileops import sync_directory
from .format import (
    FLAG_PICKLE,
    KIND_COMPACTED,
    KIND_LOG,
    OP_DEAD,
    OP_DELETE,
    OP_PUT,
    OP_SEAL,
    OP_SET,
    OP_TAKE,
    SEGMENT_HEADER,
    SEGMENT_HEADER_SIZE,
    SEQ,
    Frame,
    Manifest,
    Scan,
    decode_segment_header,
    encode_frame,
    stored_value,
)
from .hintfile import HINT_NAME, read_hint
from .index import MAX_OFFSET, KeyIndex
from .log import LOCK_NAME, Log
from .manifest import MANIFEST_NAME, read_manifest, write_manifest
from .pending import PendingItems
from .segment import Segment, parse_segment_name, segment_name
from .serialize import Serializer, canonical_key, decode_key

Progress = Callable[[int, int], None]  # (bytes done, bytes in all)

_MAP_ABOVE = 64 * 2**20  # segment files larger than this are memory-mapped instead of read
_COPY_CHUNK = 2**20
# What decoding a checksum-valid but forged record may raise: CorruptionError once
# serialize says so for every case; msgpack's own errors (ValueError and
# UnpackException subclasses) and TypeError (a list as a key) until then.
_UNDECODABLE = (CorruptionError, ValueError, TypeError, msgpack.UnpackException)
_MSGPACK = Serializer("msgpack")


class Finding(NamedTuple):
    """A region of a store file that a reader skips or refuses."""

    path: str
    offset: int
    length: int
    reason: str
    damage: bool  # False for the unfinished tail of the last segment: a crash cut it, not damage


class Repaired(NamedTuple):
    """What repair did: the backup (None if nothing needed repair), what it dropped or
    mended, and notes (files left out of the backup, decisions it could not make)."""

    backup: str | None
    dropped: list[Finding]
    notes: list[str]


def require_store(path: str, *, rebuildable: bool = False) -> None:
    """Raise IODictLogError unless ``path`` holds a store; never create one.

    With ``rebuildable``, a directory holding segment files but no CURRENT
    counts (verify reports it, repair rebuilds it).
    """
    if not os.path.isdir(path):
        raise IODictLogError(f"{path}: no such store directory")
    if os.path.lexists(os.path.join(path, MANIFEST_NAME)):
        return
    if rebuildable and _segment_files(path):
        return
    raise IODictLogError(f"{path}: not an iodict_log store (no {MANIFEST_NAME})")


def _segment_files(path: str) -> list[int]:
    return sorted(n for n in map(parse_segment_name, os.listdir(path)) if n is not None)


# --- reading one segment ----------------------------------------------------------


@contextlib.contextmanager
def _contents(file: str) -> Iterator[tuple[bytes, int]]:
    """(the bytes of segment ``file`` up to MAX_OFFSET, its true size); never through a
    link, regular files only (CorruptionError naming it), larger ones mapped, not read.

    A mapped last segment could in principle lose a torn tail to a writer while it
    is scanned; a writer cuts only a torn tail and appends right after it, so the
    window is one append wide.
    """
    try:
        fd = os.open(file, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise
    except OSError:
        if os.path.islink(file):
            raise CorruptionError(f"{file}: is a symbolic link; a store's files never are") from None
        raise  # (unreadable, say: the user's problem to fix, not damage to drop)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise CorruptionError(f"{file}: is not a regular file")
        size = min(info.st_size, MAX_OFFSET)
        if size <= _MAP_ABOVE:
            chunks = []
            offset = 0
            while offset < size:
                chunk = os.pread(fd, size - offset, offset)
                if not chunk:
                    break
                chunks.append(chunk)
                offset += len(chunk)
            yield b"".join(chunks), info.st_size
            return
        mapped = mmap.mmap(fd, size, prot=mmap.PROT_READ)
        try:
            yield cast(bytes, mapped), info.st_size
        finally:
            mapped.close()
    finally:
        os.close(fd)


def _size(file: str) -> int:
    """Size of ``file`` if it is a regular file (not through a link), else 0."""
    try:
        info = os.lstat(file)
    except OSError:
        return 0
    return info.st_size if stat.S_ISREG(info.st_mode) else 0


def _header(data: bytes) -> tuple[int, int] | None:
    """(kind, salt) of a segment header, None if it is damaged. A header whose
    checksum holds but names another format version raises FormatVersionError."""
    head = bytes(data[:SEGMENT_HEADER_SIZE])
    try:
        return decode_segment_header(head)
    except FormatVersionError:
        if len(head) == SEGMENT_HEADER_SIZE and zlib.crc32(head[:16]) == SEGMENT_HEADER.unpack(head)[5]:
            raise
        return None  # (a flipped version byte)
    except CorruptionError:
        return None


def _intact_header(file: str) -> tuple[int, int] | None:
    """(kind, salt) of ``file``'s header if it is a regular file whose header is intact."""
    try:
        fd = os.open(file, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return _header(os.pread(fd, SEGMENT_HEADER_SIZE, 0))
    finally:
        os.close(fd)


def _header_salt(file: str) -> int | None:
    found = _intact_header(file)
    return None if found is None else found[1]


def _recover_salt(data: bytes, candidates: Iterable[int]) -> int | None:
    """The first candidate salt under which a frame of ``data``'s body verifies."""
    for salt in candidates:
        if next(iter(Scan(data, salt, SEGMENT_HEADER_SIZE)), None) is not None:
            return salt
    return None


_OPS = {OP_SET: "set", OP_DELETE: "delete", OP_PUT: "put", OP_TAKE: "take", OP_DEAD: "dead"}


def refusal(frame: Frame) -> str | None:
    """Why a reader refuses this checksum-valid record, or None. Never unpickles."""
    op = frame.op
    if op in (OP_TAKE, OP_DEAD) and len(frame.key) != SEQ.size:
        return f"{op_name(op)} record's key is {len(frame.key)} bytes, not {SEQ.size}"
    try:
        if op in (OP_SET, OP_DELETE):
            canonical_key(decode_key(frame.key))
    except _UNDECODABLE as exc:
        return f"key does not decode: {exc}"
    try:
        if op in (OP_SET, OP_PUT):
            if frame.flags & FLAG_PICKLE:
                stored_value(frame.flags, frame.value)  # only the lz4 layer can be checked
            else:
                _MSGPACK.decode(frame.flags, frame.value)
    except _UNDECODABLE as exc:
        return f"value does not decode: {exc}"
    return None


@dataclass
class _Examined:
    """One segment file as a reader sees it."""

    number: int
    file: str
    size: int = 0
    kind: int = KIND_LOG
    salt: int | None = None  # None: header damaged and no salt verifies, or no file
    missing: bool = False
    header_damaged: bool = False
    findings: list[Finding] = field(default_factory=list)
    frames: int = 0  # frames kept (SEALs included)
    first_seq: int | None = None
    first_birthtime: int | None = None
    last_seq: int = 0
    last_birthtime: int = 0
    end: int = SEGMENT_HEADER_SIZE  # past the last committed unit
    tail: int = 0  # bytes past ``end``
    seqs: array.array = field(default_factory=lambda: array.array("Q"))

    @property
    def lost(self) -> bool:
        """Nothing in it can be read: leave it out of CURRENT."""
        return self.missing or self.salt is None

    @property
    def damaged(self) -> bool:
        return self.header_damaged or any(f.damage for f in self.findings)


def _examine(
    number: int,
    file: str,
    *,
    complete: bool,
    salts: Iterable[int] = (),
    sink: Callable[[Frame, int], object] | None = None,
    keep_seqs: bool = False,
) -> _Examined:
    """Scan one segment: what a reader applies (each kept frame handed to ``sink``
    with the salt), what it skips or refuses. ``complete``: a finished segment,
    whose unfinished-looking end can only be damage."""
    seen = _Examined(number, file)
    found = seen.findings
    try:
        with _contents(file) as (data, size):
            seen.size = size
            if size > len(data):
                found.append(Finding(file, len(data), size - len(data), "past the 4 GiB a segment can hold", True))
            header = _header(data)
            if header is None:
                seen.header_damaged = True
                if len(data) > 10 and data[10] in (KIND_LOG, KIND_COMPACTED):
                    seen.kind = data[10]
                own = [SEGMENT_HEADER.unpack_from(data)[4]] if len(data) >= SEGMENT_HEADER_SIZE else []
                seen.salt = _recover_salt(data, [*own, *salts])
                if seen.salt is None and len(data) <= SEGMENT_HEADER_SIZE:
                    seen.salt = next(iter(salts), None)  # nothing to verify it on, nothing to lose
                if seen.salt is None:
                    found.append(Finding(file, 0, len(data), "segment header is damaged and no salt verifies", True))
                    return seen
                found.append(Finding(file, 0, SEGMENT_HEADER_SIZE, "segment header is damaged (salt recovered)", True))
            else:
                seen.kind, seen.salt = header
            salt = seen.salt
            scan = Scan(data, salt, SEGMENT_HEADER_SIZE, complete=complete)
            for frame in scan:
                reason = None if frame.op == OP_SEAL else refusal(frame)
                if reason is not None:
                    found.append(Finding(file, frame.offset, frame.length, reason, True))
                    continue
                if seen.first_seq is None:
                    seen.first_seq, seen.first_birthtime = frame.seq, frame.birthtime_ns
                seen.frames += 1
                if keep_seqs:
                    seen.seqs.append(frame.seq)
                if sink is not None:
                    sink(frame, salt)
            found += [Finding(file, d.offset, d.length, d.reason, True) for d in scan.damage]
            seen.last_seq, seen.last_birthtime = scan.last_seq, scan.last_birthtime
            seen.end, seen.tail = scan.end, scan.tail
            if scan.tail and not complete:
                found.append(Finding(file, scan.end, scan.tail, "unfinished append (torn by a crash)", False))
    except FileNotFoundError:
        seen.missing = True
        found.append(Finding(file, 0, 0, "segment listed in CURRENT is missing: its records are lost", True))
    except CorruptionError as exc:  # a link or a special file where a segment should be
        seen.missing = True
        found.append(Finding(file, 0, 0, f"{exc}; its records cannot be read", True))
    found.sort(key=lambda f: f.offset)
    return seen


# --- verify ----------------------------------------------------------------------


def _current(path: str) -> tuple[Manifest | None, Finding | None]:
    """CURRENT, or None and what is wrong with it."""
    file = os.path.join(path, MANIFEST_NAME)
    try:
        manifest = read_manifest(path)
    except FormatVersionError:
        raise
    except CorruptionError as exc:
        return None, Finding(file, 0, 0, f"{exc}; `iodict-log repair` rebuilds it", True)
    if manifest is None:
        return None, Finding(file, 0, 0, f"{MANIFEST_NAME} is missing; `iodict-log repair` rebuilds it", True)
    return manifest, None


def verify(path: str, progress: Progress | None = None) -> Iterator[Finding]:
    """Every region of the store's files that a reader skips or refuses, file by file."""
    require_store(path, rebuildable=True)
    manifest, problem = _current(path)
    if manifest is None:  # check every segment file there is, in number order
        yield cast(Finding, problem)
        numbers: tuple[int, ...] = tuple(_segment_files(path))
    else:
        numbers = manifest.segments
    files = [os.path.join(path, segment_name(n)) for n in numbers]
    salts = [s for s in map(_header_salt, files) if s is not None]
    total = sum(map(_size, files))
    done = 0
    for i, (number, file) in enumerate(zip(numbers, files)):
        seen = _examine(number, file, complete=i < len(numbers) - 1, salts=salts)
        if seen.missing and manifest is not None and number not in (read_manifest(path) or manifest).segments:
            continue  # a queue consumer or a compaction deleted it meanwhile
        yield from seen.findings
        done += seen.size
        if progress:
            progress(min(done, total), total)


# --- repair ----------------------------------------------------------------------


def repair(path: str, backup: str | None = None, progress: Progress | None = None) -> Repaired:
    """Drop damaged regions, refused records and a torn tail for good, rebuild a damaged
    CURRENT, recover damaged headers, carry on past missing segments."""
    require_store(path, rebuildable=True)
    rewriting = compaction_lock(path)  # (no compaction may be writing new segments meanwhile)
    lock = FileLock(os.path.join(path, LOCK_NAME))
    try:
        with rewriting:
            remove_leftovers(path)
            return _Repair(path, lock, backup, progress).run()
    finally:
        lock.close()
        rewriting.close()


class _Repair:
    """One run of repair; see the module's theory of operation."""

    def __init__(self, path: str, lock: FileLock, backup: str | None, progress: Progress | None) -> None:
        self.path = path
        self.lock = lock
        self.backup_dir = backup or f"{path.rstrip(os.sep)}.backup-{time.strftime('%Y%m%d-%H%M%S')}"
        self.progress = progress
        self.dropped: list[Finding] = []
        self.notes: list[str] = []
        self.salts: list[int] = []
        self.last_seq = 0
        self.last_birthtime = 0
        self.rebuilt: Manifest | None = None  # CURRENT as rebuilt, while the file is still damaged
        self.kinds: dict[int, int] = {}  # of the segments being replaced

    def _file(self, number: int) -> str:
        return os.path.join(self.path, segment_name(number))

    def run(self) -> Repaired:
        manifest, problem = _current(self.path)
        if manifest is not None:
            return self._mend(manifest)
        with self.lock:  # nobody can open the store meanwhile; keep it that way
            return self._rebuild(cast(Finding, problem))

    def _survey(self, numbers: tuple[int, ...], complete_all_but_last: bool) -> list[_Examined]:
        files = [self._file(n) for n in numbers]
        self.salts = list(dict.fromkeys(s for s in map(_header_salt, files) if s is not None))
        total = sum(map(_size, files))
        done = 0
        surveyed = []
        for i, (number, file) in enumerate(zip(numbers, files)):
            complete = complete_all_but_last and i < len(numbers) - 1
            seen = _examine(number, file, complete=complete, salts=self.salts, keep_seqs=not complete_all_but_last)
            surveyed.append(seen)
            self.last_seq = max(self.last_seq, seen.last_seq)
            self.last_birthtime = max(self.last_birthtime, seen.last_birthtime)
            done += seen.size
            if self.progress:
                self.progress(min(done, total), total)
        return surveyed

    def _mend(self, manifest: Manifest) -> Repaired:
        self.last_seq, self.last_birthtime = manifest.seq_floor, manifest.birthtime_floor
        surveyed = self._survey(manifest.segments, complete_all_but_last=True)
        if any(s.missing for s in surveyed):  # a queue consumer may have released it meanwhile
            listed = self._manifest().segments
            surveyed = [s for s in surveyed if not s.missing or s.number in listed]
        return self._finish(surveyed)

    def _rebuild(self, problem: Finding) -> Repaired:
        numbers = tuple(_segment_files(self.path))
        surveyed = {s.number: s for s in self._survey(numbers, complete_all_but_last=False)}
        order = _rebuild_order(list(surveyed.values()), self.notes)
        for i, number in enumerate(order):  # a finished segment cannot end unfinished: that is damage
            seen = surveyed[number]
            if seen.tail and i < len(order) - 1:
                seen.findings = [
                    f._replace(damage=True, reason="damaged end of a finished segment") if not f.damage else f
                    for f in seen.findings
                ]
        left_out = [s for n, s in surveyed.items() if n not in order]
        # (a hint of this store may know of later records than its files still hold)
        hint = read_hint(self.path, sum(os.lstat(self._file(n)).st_size for n in order), len(order))
        if hint is not None and hint.salt in self.salts:
            self.last_seq = max(self.last_seq, hint.last_seq)
            self.last_birthtime = max(self.last_birthtime, hint.last_birthtime)
        self.rebuilt = Manifest(max(numbers, default=0) + 1, order, self.last_seq, self.last_birthtime)
        self.dropped.append(
            problem._replace(reason=f"{MANIFEST_NAME} was damaged or missing: rebuilt from the segment files")
        )
        self.notes.append(f"{MANIFEST_NAME} rebuilt listing segments {', '.join(map(str, order)) or '(none)'}")
        for seen in left_out:
            if seen.lost:
                self.dropped += seen.findings
            else:
                self.notes.append(f"{seen.file}: left out of {MANIFEST_NAME}; kept in the backup")
        return self._finish([surveyed[n] for n in order], force=True)

    def _finish(self, surveyed: list[_Examined], force: bool = False) -> Repaired:
        """Steps 2 to 5, given the survey of the listed segments in order."""
        lost = {s.number for s in surveyed if s.lost}
        damaged = {s.number: s for s in surveyed if s.damaged and not s.lost}
        torn = bool(surveyed) and surveyed[-1].tail > 0
        if not (lost or damaged or force):
            if torn:  # (or an append in progress): cut under the lock if it still is; no backup for that
                with self.lock:
                    self._settle_last(surveyed[-1].number, surveyed[-1].end, seal=False)
            return Repaired(None, self.dropped, self.notes)
        self._backup()
        for seen in surveyed:
            if seen.lost:
                self.dropped += seen.findings
        last = surveyed[-1] if surveyed else None
        active_end = (last.number, last.end) if last is not None and not last.lost else None
        if last is not None and last.number in damaged:
            with self.lock:
                self._roll(last)
            active_end = None
        replacements = {}
        try:
            total = sum(s.size for s in damaged.values())
            done = 0
            for number, seen in damaged.items():
                replacements[number] = self._copy(seen)
                done += seen.size
                if self.progress:
                    self.progress(done, total)
            with self.lock:
                self._commit(replacements, lost, active_end, force)
        finally:
            for written in replacements.values():  # (what the commit did not install)
                if written is not None and os.path.exists(written.path):
                    fileops.unlink(written.path)
        return Repaired(self.backup_dir, self.dropped, self.notes)

    def _manifest(self) -> Manifest:
        """CURRENT as it is now (under LOCK): the file, or the rebuilt list."""
        if self.rebuilt is not None:
            return self.rebuilt
        manifest = read_manifest(self.path)
        if manifest is None:
            raise IODictLogError(f"{self.path}: {MANIFEST_NAME} vanished during repair; nothing more changed")
        return manifest

    def _settle_last(self, number: int, known_end: int | None, *, seal: bool, salt: int | None = None) -> None:
        """Cut a torn tail off the last segment and, with ``seal``, append a SEAL. Needs LOCK.

        Reads only what was appended since the survey (from ``known_end``), so the
        lock is held for moments. Works on a segment whose header is damaged too.
        """
        file = self._file(number)
        if salt is None:
            salt = _header_salt(file)
        if salt is None and self.salts:
            salt = self.salts[0]
        fd = fileops.open_fd(file, os.O_RDWR | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0))
        try:
            size = os.lseek(fd, 0, os.SEEK_END)
            start = SEGMENT_HEADER_SIZE if known_end is None or known_end > size else known_end
            if salt is None or size < SEGMENT_HEADER_SIZE:
                raise IODictLogError(f"{file}: the last segment has no readable header; nothing more changed")
            scan = Scan(os.pread(fd, size - start, start), salt)
            for _ in scan:
                pass
            self.last_seq = max(self.last_seq, scan.last_seq)
            self.last_birthtime = max(self.last_birthtime, scan.last_birthtime)
            end = start + scan.end
            if scan.tail:
                fileops.ftruncate(fd, end)
                self.dropped.append(Finding(file, end, scan.tail, "unfinished append (torn by a crash), cut", False))
            if seal:
                self.last_seq += 1
                self.last_birthtime += 1000
                fileops.write_all(fd, encode_frame(OP_SEAL, 0, self.last_seq, self.last_birthtime, b"", b"", salt=salt))
                fileops.fdatasync(fd)
        finally:
            os.close(fd)

    def _roll(self, last: _Examined) -> None:
        """Seal the damaged last segment and start a new one after it. Needs LOCK."""
        manifest = self._manifest()
        if manifest.segments[-1:] != (last.number,):
            return  # a writer rolled already: it is sealed
        self._settle_last(last.number, last.end, seal=True, salt=last.salt)
        number = max(manifest.segments) + 1
        Segment.create(self.path, number, KIND_LOG, cast(int, last.salt)).close()
        rolled = manifest._replace(generation=manifest.generation + 1, segments=manifest.segments + (number,))
        if self.rebuilt is not None:
            self.rebuilt = rolled._replace(seq_floor=self.last_seq, birthtime_floor=self.last_birthtime)
        else:
            write_manifest(self.path, rolled)

    def _copy(self, seen: _Examined) -> Written | None:
        """Step 4: the frames a reader keeps from sealed segment ``seen``, in a new file
        under a temporary name (None if nothing is left). Its findings are reported."""
        salt = cast(int, seen.salt)
        self.kinds[seen.number] = seen.kind
        out = SegmentWriter(self.path, seen.kind, salt, segment_bytes=2**62)
        try:
            again = _examine(
                seen.number, seen.file, complete=True, salts=[salt], sink=lambda f, s: out.add(standalone(f, s))
            )
            written = out.finish()
        except BaseException:
            out.abort()
            raise
        self.dropped += [f for f in again.findings if f.damage]
        if not written:
            return None
        tmp = os.path.join(self.path, f"compact.r{seen.number:010d}.tmp")
        fileops.replace(written[0].path, tmp)
        return written[0]._replace(path=tmp)

    def _commit(
        self, replacements: dict[int, Written | None], lost: set[int], active_end: tuple[int, int] | None, force: bool
    ) -> None:
        """Step 5. Needs LOCK."""
        manifest = self._manifest()
        listed = manifest.segments
        changed = force or any(n in replacements or n in lost for n in listed)
        active = listed[-1] if listed else None
        if active is not None and active not in lost:
            known = active_end[1] if active_end is not None and active_end[0] == active else None
            self._settle_last(active, known, seal=changed)
        if not changed:
            return
        number = max([*listed, *_segment_files(self.path)], default=0) + 1
        segments: list[int] = []
        replaced = []
        for n in listed:
            if n in lost:
                continue
            if n in replacements:
                written = replacements[n]
                if written is None:
                    Segment.create(self.path, number, self.kinds[n], self._salt()).close()
                else:
                    install(self.path, [written], number)
                replaced.append(n)
                n, number = number, number + 1
            segments.append(n)
        if (
            not segments
            or active is None
            or active in lost
            or active in replacements
            or _kind_of(self._file(segments[-1])) != KIND_LOG
        ):
            Segment.create(self.path, number, KIND_LOG, self._salt()).close()
            segments.append(number)
        floors = (max(manifest.seq_floor, self.last_seq), max(manifest.birthtime_floor, self.last_birthtime))
        write_manifest(self.path, Manifest(manifest.generation + 1, tuple(segments), *floors, kind=manifest.kind))
        self.rebuilt = None
        for n in [*replaced, *lost]:
            with contextlib.suppress(FileNotFoundError):
                fileops.unlink(self._file(n))
        sync_directory(self.path)

    def _salt(self) -> int:
        return self.salts[0] if self.salts else int.from_bytes(os.urandom(4), "little")

    def _backup(self) -> None:
        """Step 2: copy the store's own regular files, never through a link, into a new
        directory (mode 0700). Files skipped are noted."""
        self.notes += backup_store(self.path, self.backup_dir)


def _kind_of(file: str) -> int:
    found = _intact_header(file)
    return KIND_LOG if found is None else found[0]


def _rebuild_order(surveyed: list[_Examined], notes: list[str]) -> tuple[int, ...]:
    """The segments a lost CURRENT listed, in order, from their contents.

    A compaction's copies (KIND_COMPACTED) come first, in the birthtime order
    they were written in; then log segments in sequence order (a compaction
    numbers its copies above the log segments written meanwhile, and repair its
    copies above everything, so numbers alone do not give the order). A log
    segment whose records all appear in another one (an original a repair or
    compaction had not deleted yet) is superseded and left out; log segments
    that overlap otherwise are both kept, and noted. Keeping a compaction's
    copies beside the log segments they came from reads the same for a dict.
    Segments with no readable frame are left out, except an empty last one.
    """
    usable = [s for s in surveyed if not s.lost]
    compacted = sorted(
        (s for s in usable if s.kind == KIND_COMPACTED and s.frames), key=lambda s: (s.first_birthtime, s.number)
    )
    logs = sorted(
        (s for s in usable if s.kind == KIND_LOG and s.frames), key=lambda s: (s.first_seq, -s.frames, -s.number)
    )
    kept: list[_Examined] = []
    for seen in logs:
        prev = kept[-1] if kept else None
        if prev is not None and cast(int, seen.first_seq) <= prev.last_seq:
            if set(seen.seqs) <= set(prev.seqs):
                notes.append(f"{seen.file}: left out of {MANIFEST_NAME}: its records are all in {prev.file}")
                continue
            notes.append(f"{seen.file} and {prev.file} hold some of the same records; both kept, check the result")
        kept.append(seen)
    order = [s.number for s in compacted + kept]
    empty = [s for s in usable if not s.frames]
    if empty and usable and max(usable, key=lambda s: s.number) is empty[-1] and empty[-1].kind == KIND_LOG:
        order.append(empty[-1].number)  # the new last segment of a roll
    if compacted and kept and cast(int, kept[0].first_seq) <= max(s.last_seq for s in compacted):
        notes.append("a compaction's copies and the log segments they came from are both kept (a dict reads the same)")
    return tuple(order)


def backup_store(path: str, backup: str) -> list[str]:
    """Copy ``path``'s CURRENT, segments and HINT into the new directory ``backup``
    (created with mode 0700; IODictLogError if it exists). Only regular files,
    opened without following links; anything else is left out. Notes of what was."""
    try:
        os.mkdir(backup, 0o700)
    except FileExistsError:
        raise IODictLogError(f"{backup}: already exists; choose another --backup") from None
    notes = []
    names = sorted(os.listdir(path), key=lambda n: (n != MANIFEST_NAME, n))  # CURRENT first
    for name in names:
        if name not in (MANIFEST_NAME, HINT_NAME) and parse_segment_name(name) is None:
            continue
        source = os.path.join(path, name)
        try:
            src = os.open(source, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        except FileNotFoundError:
            continue  # deleted meanwhile (a queue released it)
        except OSError as exc:
            notes.append(f"{source}: not copied to the backup: {'a symbolic link' if os.path.islink(source) else exc}")
            continue
        try:
            info = os.fstat(src)
            if not stat.S_ISREG(info.st_mode):
                notes.append(f"{source}: not copied to the backup: not a regular file")
                continue
            _copy_file(src, info.st_size, os.path.join(backup, name))
        finally:
            os.close(src)
    sync_directory(backup)
    return notes


def _copy_file(src: int, size: int, target: str) -> None:
    """Copy the first ``size`` bytes of ``src`` into the new file ``target``, durably."""
    dst = fileops.open_fd(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        offset = 0
        while offset < size:
            chunk = os.pread(src, min(_COPY_CHUNK, size - offset), offset)
            if not chunk:
                break
            fileops.write_all(dst, chunk)
            offset += len(chunk)
        fileops.fsync(dst)
    finally:
        os.close(dst)


# --- stats and dump ----------------------------------------------------------------


class Census:
    """A log consumer that indexes both kinds of contents: dict keys and queue items.

    The tool does not know whether a store holds an IODict or a DurableQueue
    (or both), so it keeps both indexes.
    """

    def __init__(self) -> None:
        self.keys = KeyIndex(decode_key)
        self.items = PendingItems()

    def reset(self) -> None:
        self.keys.reset()
        self.items.reset()

    def apply(self, frame: Frame, loc: int) -> None:
        self.keys.apply(frame, loc)
        self.items.apply(frame, loc)

    def settle(self) -> None:
        self.keys.settle()
        self.items.settle()


def open_log(path: str, census: Census) -> Log:
    """Open an existing store (never create one) with ``census`` as its consumer."""
    require_store(path)
    return Log(path, census, sync=False, segment_bytes=64 * 2**20)


MAX_DUMP_DEPTH = 1000  # containers nested in one value that dump shows; deeper is an error record


def dump_line(frame: Frame) -> tuple[str, str | None]:
    """A frame as one line of strict JSON for ``iodict-log dump`` (the forms are in
    docs/OPERATIONS.md), and None; for a record that cannot be shown, its error
    form (no "value", an "error" member) and the reason."""
    record: dict[str, Any] = {"seq": frame.seq, "birthtime": frame.birthtime_ns / 1e9, "op": _OPS[frame.op]}
    op = frame.op
    try:
        if op in (OP_SET, OP_DELETE):
            key = decode_key(frame.key)
            canonical_key(key)  # (TypeError for what no key can be)
            record["key"] = to_json(key)
        if op in (OP_TAKE, OP_DEAD):
            if len(frame.key) != SEQ.size:
                raise CorruptionError(f"{op_name(op)} record's key is {len(frame.key)} bytes, not {SEQ.size}")
            record["taken"] = SEQ.unpack(frame.key)[0]
        if op in (OP_SET, OP_PUT):
            if frame.flags & FLAG_PICKLE:  # never unpickled here
                record["value"] = {"$pickle": base64.b64encode(stored_value(frame.flags, frame.value)).decode()}
            else:
                record["value"] = to_json(_MSGPACK.decode(frame.flags, frame.value))
        return json.dumps(record, allow_nan=False), None
    except (*_UNDECODABLE, RecursionError) as exc:
        record.pop("value", None)
        record["error"] = reason = f"cannot be shown: {exc}"
        return json.dumps(record, allow_nan=False), reason


def op_name(op: int) -> str:
    return _OPS[op].upper()


_FLOATS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def to_json(value: Any, depth: int = 0) -> Any:
    """Strict JSON for a msgpack value; every non-JSON value is a one-member object
    whose name starts with "$", and a dict with a key that is not a str or starts
    with "$" is a "$map", so no user value looks like a tag (from_json undoes it)."""
    if depth > MAX_DUMP_DEPTH:
        raise ValueError(f"value nests more than {MAX_DUMP_DEPTH} containers deep")
    kind = type(value)
    if value is None or kind in (bool, int, str):
        return value
    if kind is float:
        if math.isfinite(value):
            return value
        return {"$float": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
    if kind is bytes:
        return {"$bytes": base64.b64encode(value).decode()}
    if kind is list or kind is tuple:
        items = []
        for item in value:
            items.append(to_json(item, depth + 1))
        return items if kind is list else {"$tuple": items}
    if kind is dict:
        if all(type(k) is str and not k.startswith("$") for k in value):
            plain = {}
            for k, v in value.items():
                plain[k] = to_json(v, depth + 1)
            return plain
        pairs = []
        for k, v in value.items():
            pairs.append([to_json(k, depth + 1), to_json(v, depth + 1)])
        return {"$map": pairs}
    if isinstance(value, msgpack.ExtType):
        return {"$ext": [value.code, base64.b64encode(value.data).decode()]}
    return {"$repr": repr(value)}  # a type added to the serializer later: shown, not decodable


def from_json(value: Any) -> Any:
    """Undo to_json (the decoder docs/OPERATIONS.md shows): the value as stored."""
    if isinstance(value, list):
        items = []
        for item in value:  # (loops, not comprehensions: one frame per level of nesting)
            items.append(from_json(item))
        return items
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        ((tag, body),) = value.items()
        if tag == "$bytes":
            return base64.b64decode(body)
        if tag == "$tuple":
            return tuple(from_json(body))
        if tag == "$map":
            mapping = {}
            for k, v in body:
                mapping[from_json(k)] = from_json(v)
            return mapping
        if tag == "$float":
            return _FLOATS[body]
        if tag == "$ext":
            return msgpack.ExtType(body[0], base64.b64decode(body[1]))
        if tag.startswith("$"):
            return value  # $pickle, $repr: left as they are
    plain = {}
    for k, v in value.items():
        plain[k] = from_json(v)
    return plain
