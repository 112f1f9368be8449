"""Mending a store's files, for ``iodict-log repair``.

Theory of operation
-------------------
It holds ``COMPACT.LOCK`` throughout (no compaction runs meanwhile) and the
write lock ``LOCK`` only for moments, like a compaction (compaction.py):

1. Survey, without ``LOCK``: each segment CURRENT lists is scanned and its
   damage noted. A segment header that fails its checksum gets its salt back
   from the other headers (every header of a store carries the same salt), but
   only if frames' checksums then hold. Nothing to do: stop, no backup.
2. Backup: the store's own regular files (CURRENT, NNNNNNNNNN.seg, HINT, CHECKPOINT), never
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

import contextlib
import os
import stat
import time
from typing import NamedTuple, cast

from . import fileops
from .checkpoint import CHECKPOINT_NAME
from .compaction import SegmentWriter, Written, compaction_lock, install, remove_leftovers, standalone
from .errors import IODictLogError
from .filelock import FileLock
from .fileops import sync_directory
from .format import (
    KIND_COMPACTED,
    KIND_LOG,
    OP_SEAL,
    SEGMENT_HEADER_SIZE,
    Manifest,
    Scan,
    encode_frame,
)
from .hintfile import HINT_NAME, read_hint
from .inspection import (
    Examined,
    Finding,
    Progress,
    examine,
    file_size,
    header_salt,
    intact_header,
    read_current,
    require_store,
    segment_files,
)
from .log import LOCK_NAME
from .manifest import MANIFEST_NAME, read_manifest, write_manifest
from .segment import Segment, parse_segment_name, segment_name

_COPY_CHUNK = 2**20


class Repaired(NamedTuple):
    """What repair did: the backup (None if nothing needed repair), what it dropped or
    mended, and notes (files left out of the backup, decisions it could not make)."""

    backup: str | None
    dropped: list[Finding]
    notes: list[str]


def repair(path: str, backup: str | None = None, progress: Progress | None = None) -> Repaired:
    """Drop damaged regions, refused records and a torn tail for good, rebuild a damaged
    CURRENT, recover damaged headers, carry on past missing segments."""
    require_store(path, rebuildable=True)
    rewriting = compaction_lock(path)  # (no compaction may be writing new segments meanwhile)
    lock = FileLock(os.path.join(path, LOCK_NAME), mapped=True)
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
        manifest, problem = read_current(self.path)
        if manifest is not None:
            return self._mend(manifest)
        with self.lock:  # nobody can open the store meanwhile; keep it that way
            return self._rebuild(cast(Finding, problem))

    def _survey(self, numbers: tuple[int, ...], complete_all_but_last: bool) -> list[Examined]:
        files = [self._file(n) for n in numbers]
        self.salts = list(dict.fromkeys(s for s in map(header_salt, files) if s is not None))
        total = sum(map(file_size, files))
        done = 0
        surveyed = []
        for i, (number, file) in enumerate(zip(numbers, files)):
            complete = complete_all_but_last and i < len(numbers) - 1
            seen = examine(number, file, complete=complete, salts=self.salts, keep_seqs=not complete_all_but_last)
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
        numbers = tuple(segment_files(self.path))
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

    def _finish(self, surveyed: list[Examined], force: bool = False) -> Repaired:
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
            salt = header_salt(file)
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

    def _roll(self, last: Examined) -> None:
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

    def _copy(self, seen: Examined) -> Written | None:
        """Step 4: the frames a reader keeps from sealed segment ``seen``, in a new file
        under a temporary name (None if nothing is left). Its findings are reported."""
        salt = cast(int, seen.salt)
        self.kinds[seen.number] = seen.kind
        out = SegmentWriter(self.path, seen.kind, salt, segment_bytes=2**62)
        try:
            again = examine(
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
        number = max([*listed, *segment_files(self.path)], default=0) + 1
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
    found = intact_header(file)
    return KIND_LOG if found is None else found[0]


def _rebuild_order(surveyed: list[Examined], notes: list[str]) -> tuple[int, ...]:
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
    kept: list[Examined] = []
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
    """Copy ``path``'s CURRENT, segments, HINT and CHECKPOINT into the new directory ``backup``
    (created with mode 0700; IODictLogError if it exists). Only regular files,
    opened without following links; anything else is left out. Notes of what was."""
    try:
        os.mkdir(backup, 0o700)
    except FileExistsError:
        raise IODictLogError(f"{backup}: already exists; choose another --backup") from None
    notes = []
    names = sorted(os.listdir(path), key=lambda n: (n != MANIFEST_NAME, n))  # CURRENT first
    for name in names:
        if name not in (MANIFEST_NAME, HINT_NAME, CHECKPOINT_NAME) and parse_segment_name(name) is None:
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
