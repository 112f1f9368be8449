"""Checking a store's files, for the iodict-log tool.

``verify`` reads every listed segment and reports each region a reader would
skip, with its file and offset. It takes no lock and changes nothing, so it
is safe while applications use the store.
"""

from __future__ import annotations

import base64
import os
from typing import Any, Callable, Iterator, NamedTuple

from .durablequeue import PendingItems
from .errors import IODictLogError
from .format import (
    FLAG_PICKLE,
    OP_DELETE,
    OP_PUT,
    OP_SET,
    OP_TAKE,
    SEGMENT_HEADER_SIZE,
    SEQ,
    Frame,
    Scan,
    decode_segment_header,
    stored_value,
)
from .index import KeyIndex
from .log import Log
from .manifest import MANIFEST_NAME, read_manifest
from .segment import segment_name
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


def examine(file: str, data: bytes, last: bool) -> list[Finding]:
    """The regions of one segment's bytes that a reader skips."""
    try:
        _, salt = decode_segment_header(data)
    except IODictLogError as exc:
        return [Finding(file, 0, len(data), f"unreadable segment header: {exc}", True)]
    scan = Scan(data, salt, SEGMENT_HEADER_SIZE)
    for _ in scan:
        pass
    found = [Finding(file, d.offset, d.length, d.reason, True) for d in scan.damage]
    if scan.tail and last:
        found.append(Finding(file, scan.end, scan.tail, "unfinished append (torn by a crash)", False))
    elif scan.tail:
        found.append(Finding(file, scan.end, scan.tail, "damaged end of a finished segment", True))
    return found


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
        yield from examine(file, data, last=i == len(files) - 1)
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
