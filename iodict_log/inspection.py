"""Checking and mending a store's files, for the iodict-log tool.

``verify`` reads every listed segment and reports each region a reader would
skip, with its file and offset. It takes no lock and changes nothing, so it
is safe while applications use the store.

``repair`` holds the write lock, copies the store aside, and replaces each
damaged segment by a new one holding exactly the frames a reader applies
from it, the same way a compaction swaps segments (new files, SEAL, CURRENT,
delete), so processes that have the store open rebuild their view and lose
nothing that was readable.
"""

from __future__ import annotations

import base64
import os
import shutil
import time
from typing import Any, Callable, Iterator, NamedTuple

from . import fileops
from .compaction import SegmentWriter, compaction_lock, install, remove_leftovers, standalone
from .durablequeue import PendingItems
from .errors import IODictLogError
from .filelock import FileLock
from .fileops import sync_directory
from .format import (
    FLAG_PICKLE,
    OP_DELETE,
    OP_PUT,
    OP_SEAL,
    OP_SET,
    OP_TAKE,
    SEGMENT_HEADER_SIZE,
    SEQ,
    Frame,
    Manifest,
    Scan,
    decode_segment_header,
    encode_frame,
    stored_value,
)
from .index import KeyIndex
from .log import LOCK_NAME, Log
from .manifest import MANIFEST_NAME, read_manifest, write_manifest
from .segment import Segment, segment_name
from .serialize import Serializer, decode_key

Progress = Callable[[int, int], None]  # (bytes done, bytes in all)


class Finding(NamedTuple):
    """A region of a segment file that a reader skips."""

    path: str
    offset: int
    length: int
    reason: str
    damage: bool  # False for the unfinished tail of the last segment: a crash cut it, not damage


def require_store(path: str) -> None:
    """Raise IODictLogError unless ``path`` holds a store; never create one."""
    if not os.path.isdir(path):
        raise IODictLogError(f"{path}: no such store directory")
    if not os.path.exists(os.path.join(path, MANIFEST_NAME)):
        raise IODictLogError(f"{path}: not an iodict_log store (no {MANIFEST_NAME})")


def _examine(file: str, data: bytes, last: bool) -> tuple[list[Frame] | None, list[Finding]]:
    """The frames a reader applies from one segment's bytes (None if its header is
    unreadable), and the regions it skips."""
    try:
        _, salt = decode_segment_header(data)
    except IODictLogError as exc:
        return None, [Finding(file, 0, len(data), f"unreadable segment header: {exc}", True)]
    scan = Scan(data, salt, SEGMENT_HEADER_SIZE, complete=not last)
    frames = list(scan)
    found = [Finding(file, d.offset, d.length, d.reason, True) for d in scan.damage]
    if last and scan.tail:
        found.append(Finding(file, scan.end, scan.tail, "unfinished append (torn by a crash)", False))
    return frames, found


def _listed(path: str) -> list[str]:
    return [os.path.join(path, segment_name(n)) for n in read_manifest(path).segments]


def verify(path: str, progress: Progress | None = None) -> Iterator[Finding]:
    """Every region of the store's segments that a reader skips, file by file."""
    require_store(path)
    files = _listed(path)
    total = sum(os.path.getsize(f) for f in files if os.path.exists(f))
    done = 0
    for i, file in enumerate(files):
        try:
            with open(file, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            if file in _listed(path):  # else a queue consumer or a compaction deleted it meanwhile
                yield Finding(file, 0, 0, "segment listed in the manifest is missing", True)
            continue
        yield from _examine(file, data, last=i == len(files) - 1)[1]
        done += len(data)
        if progress:
            progress(done, total)


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


_OPS = {OP_SET: "set", OP_DELETE: "delete", OP_PUT: "put", OP_TAKE: "take"}


def to_json_record(frame: Frame) -> dict:
    """A frame as a JSON-ready dict, for ``iodict-log dump`` (the forms are in docs/OPERATIONS.md)."""
    record: dict[str, Any] = {"seq": frame.seq, "birthtime": frame.birthtime_ns / 1e9, "op": _OPS[frame.op]}
    if frame.op in (OP_SET, OP_DELETE):
        record["key"] = to_json(decode_key(frame.key))
    if frame.op == OP_TAKE:
        record["taken"] = SEQ.unpack(frame.key)[0]
    if frame.op in (OP_SET, OP_PUT):
        if frame.flags & FLAG_PICKLE:  # never unpickled here
            record["value"] = {"$pickle": base64.b64encode(stored_value(frame.flags, frame.value)).decode()}
        else:
            record["value"] = to_json(Serializer("msgpack").decode(frame.flags, frame.value))
    return record


def to_json(value: Any) -> Any:
    """JSON for a msgpack value: bytes, tuples and maps with non-str keys get tagged forms."""
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode()}
    if isinstance(value, tuple):
        return {"$tuple": [to_json(v) for v in value]}
    if isinstance(value, list):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            return {k: to_json(v) for k, v in value.items()}
        return {"$map": [[to_json(k), to_json(v)] for k, v in value.items()]}
    return value


def repair(path: str, backup: str | None = None, progress: Progress | None = None) -> tuple[str | None, list[Finding]]:
    """Drop damaged regions and a torn tail for good; (backup directory or None, what was dropped)."""
    require_store(path)
    rewriting = compaction_lock(path)  # (no compaction may be writing new segments meanwhile)
    lock = FileLock(os.path.join(path, LOCK_NAME))
    try:
        with rewriting, lock:
            remove_leftovers(path)
            return _repair_locked(path, backup, progress)
    finally:
        lock.close()
        rewriting.close()


def _repair_locked(path: str, backup: str | None, progress: Progress | None) -> tuple[str | None, list[Finding]]:
    manifest = read_manifest(path)
    numbers = manifest.segments
    contents = []
    for i, number in enumerate(numbers):
        file = os.path.join(path, segment_name(number))
        with open(file, "rb") as f:
            data = f.read()
        frames, found = _examine(file, data, last=i == len(numbers) - 1)
        if frames is None:
            raise IODictLogError(f"{file}: the segment header is damaged; restore this store from a backup")
        contents.append((number, data, frames, found))
    dropped = [finding for *_, found in contents for finding in found]
    if not dropped:
        return None, []
    backup = backup or f"{path.rstrip(os.sep)}.backup-{time.strftime('%Y%m%d-%H%M%S')}"
    shutil.copytree(path, backup, ignore=shutil.ignore_patterns(LOCK_NAME))
    last_seq = max([manifest.seq_floor] + [f.seq for *_, frames, _ in contents for f in frames])
    last_birthtime = max([manifest.birthtime_floor] + [f.birthtime_ns for *_, frames, _ in contents for f in frames])
    replaced: dict[int, int] = {}
    next_number = max(numbers) + 1
    total = sum(len(data) for _, data, _, _ in contents)
    done = 0
    for number, data, frames, found in contents:
        if any(finding.damage for finding in found):
            replaced[number] = next_number
            _write_segment(path, next_number, data, frames)
            next_number += 1
        elif found:  # only the torn tail of the last segment: cut it, as any writer would
            fileops.truncate(os.path.join(path, segment_name(number)), found[0].offset)
        done += len(data)
        if progress:
            progress(done, total)
    if replaced:
        # SEAL the old last segment so that processes with the store open re-read CURRENT.
        last = Segment.open(path, numbers[-1], writable=True)
        try:
            seal = encode_frame(OP_SEAL, 0, last_seq + 1, last_birthtime + 1000, b"", b"", salt=last.salt)
            last.append(seal, last.size())
            last.sync()
        finally:
            last.close()
        segments = tuple(replaced.get(n, n) for n in numbers)
        write_manifest(path, Manifest(manifest.generation + 1, segments, last_seq + 1, last_birthtime + 1000))
        for number in replaced:
            fileops.unlink(os.path.join(path, segment_name(number)))
        sync_directory(path)
    return backup, dropped


def _write_segment(path: str, number: int, original: bytes, frames: list[Frame]) -> None:
    """A new segment of the original's kind holding ``frames``, each standing alone."""
    kind, salt = decode_segment_header(original)
    out = SegmentWriter(path, kind, salt, segment_bytes=2**62)
    try:
        for frame in frames:
            out.add(standalone(frame, salt))
        written = out.finish()
    except BaseException:
        out.abort()
        raise
    if written:
        install(path, written, number)
    else:
        Segment.create(path, number, kind, salt).close()  # nothing readable was left in it
