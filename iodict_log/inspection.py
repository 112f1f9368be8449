"""Reading a store's files for the iodict-log tool: verify, the census, dump's JSON.

``verify`` reads every segment and reports each region a reader would skip and
each record a reader would refuse (a key or a msgpack value that does not
decode, a TAKE naming no record), with its file and offset; a damaged or
missing CURRENT is damage too. It takes no lock and changes nothing, so it is
safe while applications use the store. ``stats``, ``dump`` and the dead-letter
listing open the store read-only (``open_log``: Log(readonly=True)), so none of
the tool's reading commands changes a byte, even on a store it cannot write.

Every segment is read one at a time (files over 64 MiB are memory-mapped, not
read), so memory stays bounded by about one segment; no legitimate record lies
past 4 GiB (MAX_OFFSET), so bytes there are reported as damage, unread.

``repair`` (repair.py) shares the reading done here: segment contents,
headers, the examination of a segment.
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
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, NamedTuple, cast

import msgpack  # type: ignore[import-untyped]

from .errors import CorruptionError, FormatVersionError, IODictLogError
from .format import (
    FLAG_PICKLE,
    KIND_COMPACTED,
    KIND_LOG,
    LEASE,
    OP_DEAD,
    OP_DELETE,
    OP_LEASE,
    OP_PUT,
    OP_RELEASE,
    OP_SEAL,
    OP_SET,
    OP_TAKE,
    RELEASE,
    SEGMENT_HEADER,
    SEGMENT_HEADER_SIZE,
    SEQ,
    Frame,
    Manifest,
    Scan,
    decode_segment_header,
    stored_value,
)
from .holders import Holders
from .index import MAX_OFFSET, KeyIndex
from .leases import LeasedItems
from .log import Log
from .manifest import MANIFEST_NAME, read_manifest
from .pending import PendingItems
from .segment import parse_segment_name, segment_name
from .serialize import Serializer, decode_key

Progress = Callable[[int, int], None]  # (bytes done, bytes in all)

_MAP_ABOVE = 64 * 2**20  # segment files larger than this are memory-mapped instead of read
_MSGPACK = Serializer("msgpack")


class Finding(NamedTuple):
    """A region of a store file that a reader skips or refuses."""

    path: str
    offset: int
    length: int
    reason: str
    damage: bool  # False for the unfinished tail of the last segment: a crash cut it, not damage


def require_store(path: str, *, rebuildable: bool = False) -> None:
    """Raise IODictLogError unless ``path`` holds a store; never create one.

    With ``rebuildable``, a directory holding segment files but no CURRENT
    counts (verify reports it, repair rebuilds it).
    """
    if not os.path.isdir(path):
        raise IODictLogError(f"{path}: no such store directory")
    if os.path.lexists(os.path.join(path, MANIFEST_NAME)):
        return
    if rebuildable and segment_files(path):
        return
    raise IODictLogError(f"{path}: not an iodict_log store (no {MANIFEST_NAME})")


def segment_files(path: str) -> list[int]:
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


def file_size(file: str) -> int:
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


def intact_header(file: str) -> tuple[int, int] | None:
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


def header_salt(file: str) -> int | None:
    found = intact_header(file)
    return None if found is None else found[1]


def _recover_salt(data: bytes, candidates: Iterable[int]) -> int | None:
    """The first candidate salt under which a frame of ``data``'s body verifies."""
    for salt in candidates:
        if next(iter(Scan(data, salt, SEGMENT_HEADER_SIZE)), None) is not None:
            return salt
    return None


_OPS = {
    OP_SET: "set",
    OP_DELETE: "delete",
    OP_PUT: "put",
    OP_TAKE: "take",
    OP_DEAD: "dead",
    OP_LEASE: "lease",
    OP_RELEASE: "release",
}
_NAMING_A_PUT = {OP_TAKE: 0, OP_DEAD: 0, OP_LEASE: LEASE.size, OP_RELEASE: RELEASE.size}  # op -> value size


def refusal(frame: Frame) -> str | None:
    """Why a reader refuses this checksum-valid record, or None. Never unpickles."""
    op = frame.op
    if op in _NAMING_A_PUT and len(frame.key) != SEQ.size:
        return f"{op_name(op)} record's key is {len(frame.key)} bytes, not {SEQ.size}"
    if op in _NAMING_A_PUT and len(frame.value) != _NAMING_A_PUT[op]:
        return f"{op_name(op)} record's value is {len(frame.value)} bytes, not {_NAMING_A_PUT[op]}"
    try:
        if op in (OP_SET, OP_DELETE):
            decode_key(frame.key)  # (exactly a storable key's bytes, or CorruptionError)
    except CorruptionError as exc:
        return f"key does not decode: {exc}"
    try:
        if op in (OP_SET, OP_PUT):
            if frame.flags & FLAG_PICKLE:
                stored_value(frame.flags, frame.value)  # only the lz4 layer can be checked
            else:
                _MSGPACK.decode(frame.flags, frame.value)
    except CorruptionError as exc:
        return f"value does not decode: {exc}"
    return None


@dataclass
class Examined:
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


def examine(
    number: int,
    file: str,
    *,
    complete: bool,
    salts: Iterable[int] = (),
    sink: Callable[[Frame, int], object] | None = None,
    keep_seqs: bool = False,
) -> Examined:
    """Scan one segment: what a reader applies (each kept frame handed to ``sink``
    with the salt), what it skips or refuses. ``complete``: a finished segment,
    whose unfinished-looking end can only be damage."""
    seen = Examined(number, file)
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


def read_current(path: str) -> tuple[Manifest | None, Finding | None]:
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
    manifest, problem = read_current(path)
    if manifest is None:  # check every segment file there is, in number order
        yield cast(Finding, problem)
        numbers: tuple[int, ...] = tuple(segment_files(path))
    else:
        numbers = manifest.segments
    files = [os.path.join(path, segment_name(n)) for n in numbers]
    salts = [s for s in map(header_salt, files) if s is not None]
    total = sum(map(file_size, files))
    done = 0
    for i, (number, file) in enumerate(zip(numbers, files)):
        seen = examine(number, file, complete=i < len(numbers) - 1, salts=salts)
        if seen.missing and manifest is not None and number not in (read_manifest(path) or manifest).segments:
            continue  # a queue consumer or a compaction deleted it meanwhile
        yield from seen.findings
        done += seen.size
        if progress:
            progress(min(done, total), total)


# --- repair ----------------------------------------------------------------------


# --- stats and dump ----------------------------------------------------------------


class Census:
    """A log consumer that indexes both kinds of contents: dict keys and queue items.

    The tool does not know whether a store holds an IODict or a DurableQueue
    (or both), so it keeps both indexes.
    """

    def __init__(self, path: str) -> None:
        self.keys = KeyIndex(decode_key)
        self.items = LeasedItems(PendingItems(), Holders(path, readonly=True))  # (judges, deletes nothing)

    def attach(self, log: Any) -> None:
        self.items.attach(log)  # (a long backlog is read back from the log)

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
    """Open an existing store read-only (never create or change anything) with ``census``
    as its consumer."""
    require_store(path)
    return Log(path, census, sync=False, segment_bytes=64 * 2**20, readonly=True)


MAX_DUMP_DEPTH = 1000  # containers nested in one value that dump shows; deeper is an error record


def dump_line(frame: Frame) -> tuple[str, str | None]:
    """A frame as one line of strict JSON for ``iodict-log dump`` (the forms are in
    docs/OPERATIONS.md), and None; for a record that cannot be shown, its error
    form (no "value", an "error" member) and the reason."""
    record: dict[str, Any] = {"seq": frame.seq, "birthtime": frame.birthtime_ns / 1e9, "op": _OPS[frame.op]}
    op = frame.op
    try:
        if op in (OP_SET, OP_DELETE):
            record["key"] = to_json(decode_key(frame.key))
        if op in _NAMING_A_PUT:
            why = refusal(frame)
            if why is not None:
                raise CorruptionError(why)
            record["taken"] = SEQ.unpack(frame.key)[0]  # (the seq of the PUT it names)
        if op == OP_LEASE:
            record["holder"], expiry, record["delivery"] = LEASE.unpack(frame.value)
            record["expires"] = expiry / 1e9 if expiry else None
        if op == OP_RELEASE:
            due = RELEASE.unpack(frame.value)[0]
            record["due"] = due / 1e9 if due else None
        if op in (OP_SET, OP_PUT):
            record["value"] = shown_value(frame.flags, frame.value)
        return json.dumps(record, allow_nan=False), None
    except (CorruptionError, ValueError, RecursionError) as exc:  # (to_json: ValueError past MAX_DUMP_DEPTH)
        record.pop("value", None)
        record["error"] = reason = f"cannot be shown: {exc}"
        return json.dumps(record, allow_nan=False), reason


def shown_value(flags: int, stored: bytes) -> Any:
    """A stored value as strict JSON (to_json), a pickle as its base64 (never unpickled)."""
    if flags & FLAG_PICKLE:
        return {"$pickle": base64.b64encode(stored_value(flags, stored)).decode()}
    return to_json(_MSGPACK.decode(flags, stored))


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
