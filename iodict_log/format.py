"""The on-disk format: segment headers, record frames, the manifest.

Pure functions over bytes, no I/O, so every decoder can be fuzzed. docs/FORMAT.md
is the specification in prose; every constant it names is defined here and
nowhere else. All integers are little-endian.

A record frame is a 36-byte header followed by the key and the stored value::

    sync u16 | hcrc u32 | dcrc u32 | op u8 | flags u8 | key_len u32 |
    value_len u32 | seq u64 | birthtime_ns u64 | key | value

``hcrc`` covers header bytes 6..36 (so also ``dcrc`` and both lengths) and
``dcrc`` covers key and value: a flip anywhere in a frame is detected, and a
length is trusted only once ``hcrc`` has vouched for it. Both CRCs start from
a random per-store ``salt`` (kept in every segment header), so the bytes of a
frame from another store, stored inside a value, never pass for a frame here.

The C core (iodict_log/_format.c, native.py) has twins of the frame codecs, of
the walk of Scan and of encode_batch, with the same names, answers and bytes:
when it is built they replace the Python functions below, which stay as the
reference under ``py_`` names (``PyScan`` for the Scan that walks in Python).
"""

from __future__ import annotations

import struct
import zlib
from typing import Callable, Iterator, NamedTuple

import lz4.block

from .errors import CorruptionError, FormatVersionError
from .native import core

# 2: values may hold the extension types of valuetypes.py (sets, datetimes, ...), which
# a version-1 reader would hand out as msgpack.ExtType; the layout is version 1's, so
# version 1 files are read as they are (docs/FORMAT.md, "Changing the format").
FORMAT_VERSION = 2
READ_VERSIONS = frozenset({1, 2})

# --- segment header --------------------------------------------------------

SEGMENT_MAGIC = b"\x89IODLOG\n"
SEGMENT_HEADER = struct.Struct("<8sHBBII")  # magic, version, kind, reserved, salt, crc
SEGMENT_HEADER_SIZE = SEGMENT_HEADER.size  # 20

KIND_LOG = 1  # records in sequence order, as appended
KIND_COMPACTED = 2  # live records in birthtime (index) order, written by compaction


def encode_segment_header(kind: int, salt: int) -> bytes:
    body = SEGMENT_HEADER.pack(SEGMENT_MAGIC, FORMAT_VERSION, kind, 0, salt, 0)[:16]
    return body + COUNT.pack(zlib.crc32(body))


def decode_segment_header(data: bytes) -> tuple[int, int]:
    """Return (kind, salt), or raise for a foreign, newer or damaged header.

    Magic and version sit at fixed offsets in every format version, so a newer
    file is recognised as such before anything else is trusted.
    """
    if len(data) < SEGMENT_HEADER_SIZE or not data.startswith(SEGMENT_MAGIC):
        raise CorruptionError("not an iodict_log segment (bad magic)")
    _, version, kind, _, salt, crc = SEGMENT_HEADER.unpack_from(data)
    if version not in READ_VERSIONS:
        raise FormatVersionError(version)
    if zlib.crc32(data[:16]) != crc:
        raise CorruptionError("segment header checksum mismatch")
    if kind not in (KIND_LOG, KIND_COMPACTED):
        raise CorruptionError(f"unknown segment kind {kind}")
    return kind, salt


# --- record frames ---------------------------------------------------------

SYNC = b"\xd1\x0c"  # every frame starts with these two bytes; scans resync on them
PREFIX = struct.Struct("<2sI")  # sync, hcrc
FIELDS = struct.Struct("<IBBIIQQ")  # dcrc, op, flags, key_len, value_len, seq, birthtime
HEADER = struct.Struct("<2sIIBBIIQQ")  # PREFIX then FIELDS, for reading in one go
HEADER_SIZE = HEADER.size  # 36
_HCRC = struct.Struct("<I")  # hcrc alone, at offset 2
MAX_FIELD = 2**32 - 1  # largest key or stored value
# Sequence numbers and birthtimes stay below 2**63 (birthtimes: the year 2262), so
# that the next one always fits its u64 field: a frame beyond is not valid.
MAX_SEQ = 2**63 - 1

# Operation codes. 16..31 are for queues.
OP_SET = 1
OP_DELETE = 2
OP_BATCH_BEGIN = 3  # value: u32 count of the records that follow
OP_BATCH_COMMIT = 4
OP_SEAL = 5  # last frame of a segment: readers move on to the next one
OP_PUT = 16  # queue: key empty, value the item
OP_TAKE = 17  # queue: key the u64 seq of the PUT taken, value empty
OP_DEAD = 18  # queue: key the u64 seq of a PUT moved to the dead letters, value empty
OP_LEASE = 19  # queue: key the u64 seq of a PUT delivered on lease (or its lease extended), value LEASE
OP_RELEASE = 20  # queue: key the u64 seq of a leased PUT handed back, value RELEASE
QUEUE_OPS = frozenset({OP_PUT, OP_TAKE, OP_DEAD, OP_LEASE, OP_RELEASE})
KNOWN_OPS = frozenset({OP_SET, OP_DELETE, OP_BATCH_BEGIN, OP_BATCH_COMMIT, OP_SEAL}) | QUEUE_OPS
DATA_OPS = frozenset({OP_SET, OP_DELETE}) | QUEUE_OPS
SEQ = struct.Struct("<Q")
LEASE = struct.Struct("<QQI")  # holder (its token), expiry (ns since the epoch; 0: none), delivery (1, 2, ...)
RELEASE = struct.Struct("<Q")  # when the item may be delivered again (ns since the epoch; 0: at once)

# Flag bits.
FLAG_LZ4 = 0x01  # stored value is an lz4 block of the serialized value
FLAG_PICKLE = 0x02  # serialized value is a pickle, not msgpack
FLAG_BATCH = 0x04  # frame belongs to a batch: valid only between its BEGIN and COMMIT
KNOWN_FLAGS = FLAG_LZ4 | FLAG_PICKLE | FLAG_BATCH

COMPRESS_MIN = 256  # values shorter than this are never worth compressing
# A value is stored lz4-compressed only if it unpacks to at most MAX_LZ4_RATIO
# times its stored length or LZ4_FREE bytes, whichever is more (lz4_bound), so
# decompressing is bounded by the stored bytes, and so is decoding (a msgpack
# object takes at least one byte). Stores written before that bound may hold
# blocks that unpack up to LZ4_MAX_EXPANSION-fold (lz4's own limit): a reader
# accepts those, and decodes them with a budget of containers (serialize.py);
# a size prefix beyond that is refused before lz4 allocates anything.
MAX_LZ4_RATIO = 32
LZ4_FREE = 2**16
LZ4_MAX_EXPANSION = 255
COUNT = struct.Struct("<I")


class Frame(NamedTuple):
    """One decoded, checksum-verified frame."""

    offset: int
    length: int
    op: int
    flags: int
    seq: int
    birthtime_ns: int
    key: bytes
    value: bytes


def encode_frame(op: int, flags: int, seq: int, birthtime_ns: int, key: bytes, value: bytes, *, salt: int) -> bytes:
    """A frame's bytes; both checksums start from the store's ``salt``."""
    fields = FIELDS.pack(zlib.crc32(value, zlib.crc32(key, salt)), op, flags, len(key), len(value), seq, birthtime_ns)
    return b"".join((PREFIX.pack(SYNC, zlib.crc32(fields, salt)), fields, key, value))


def encode_batch(
    entries: list[tuple[int, int, bytes, bytes, int]],
    seq: int,
    begin_birthtime: int,
    commit_birthtime: int,
    offset: int,
    slot: int,
    salt: int,
) -> tuple[bytes, list[tuple[int, int]], int]:
    """A batch's bytes, written at ``offset`` of segment ``slot``: BEGIN (seq ``seq``), the
    entries (op, flags, key, stored value, birthtime_ns) flagged as members, COMMIT; with
    each member's (seq, packed location) and the COMMIT's seq, the batch's last."""
    from .index import pack_location  # (index imports this module)

    parts = [py_encode_frame(OP_BATCH_BEGIN, 0, seq, begin_birthtime, b"", COUNT.pack(len(entries)), salt=salt)]
    offset += len(parts[0])
    locs = []
    for op, flags, key, value, birthtime_ns in entries:
        seq += 1
        data = py_encode_frame(op, flags | FLAG_BATCH, seq, birthtime_ns, key, value, salt=salt)
        locs.append((seq, pack_location(birthtime_ns, slot, offset, len(data))))
        parts.append(data)
        offset += len(data)
    seq += 1
    parts.append(py_encode_frame(OP_BATCH_COMMIT, 0, seq, commit_birthtime, b"", b"", salt=salt))
    return b"".join(parts), locs, seq


def compress_value(value: bytes) -> tuple[int, bytes]:
    """Return (flags, stored bytes): lz4 only when it saves space, and never beyond the bound below."""
    if len(value) >= COMPRESS_MIN:
        packed = lz4.block.compress(value, store_size=True)
        if len(packed) < len(value) <= lz4_bound(len(packed)):
            return FLAG_LZ4, packed
    return 0, value


def lz4_bound(stored: int) -> int:
    """The most bytes an lz4 block of ``stored`` bytes written by compress_value unpacks to."""
    return max(MAX_LZ4_RATIO * stored, LZ4_FREE)


def stored_value(flags: int, stored: bytes) -> bytes:
    """Undo compress_value."""
    if flags & FLAG_LZ4:
        # The size prefix is checked before lz4 allocates anything: no block, of
        # this version (lz4_bound) or an older one, unpacks to more than this.
        if len(stored) < 4 or COUNT.unpack_from(stored)[0] > LZ4_MAX_EXPANSION * len(stored):
            raise CorruptionError(f"lz4 block has an impossible size prefix (over {LZ4_MAX_EXPANSION}x its length)")
        try:
            return lz4.block.decompress(stored)
        except (lz4.block.LZ4BlockError, ValueError) as exc:
            raise CorruptionError(f"lz4 block does not decompress: {exc}") from None
    return stored


def _checked_header(buf: bytes, pos: int, salt: int) -> tuple | None:
    """The header fields at ``pos`` (sync first) if the header checksum holds, else None."""
    try:
        fields = HEADER.unpack_from(buf, pos)
    except struct.error:  # fewer than HEADER_SIZE bytes left
        return None
    if fields[0] != SYNC or zlib.crc32(buf[pos + 6 : pos + HEADER_SIZE], salt) != fields[1]:
        return None
    return fields


def header_seq(buf: bytes, pos: int, salt: int) -> int | None:
    """The seq in the frame header at ``pos`` if its checksum holds, else None: enough to
    seek by (the seq is under the header checksum), without reading the frame's data."""
    fields = _checked_header(buf, pos, salt)
    return None if fields is None else fields[7]


def _checked_frame(buf: bytes, pos: int, salt: int) -> tuple | None:
    """The header fields of the frame at ``pos`` if it is whole and both checksums
    match, else None (decode_frame's checks, without building the Frame)."""
    fields = _checked_header(buf, pos, salt)
    if fields is None:
        return None
    _, _, dcrc, op, flags, klen, vlen, seq, birthtime = fields
    stop = pos + HEADER_SIZE + klen + vlen
    if stop > len(buf) or op not in KNOWN_OPS or flags & ~KNOWN_FLAGS or (seq | birthtime) > MAX_SEQ:
        return None
    if zlib.crc32(buf[pos + HEADER_SIZE : stop], salt) != dcrc:  # (key and value: one CRC, as the two chained)
        return None
    return fields


def decode_frame(buf: bytes, pos: int, salt: int) -> Frame | None:
    """The frame at ``pos`` if it is whole and both checksums match, else None."""
    fields = _checked_frame(buf, pos, salt)
    if fields is None:
        return None
    _, _, _, op, flags, klen, vlen, seq, birthtime = fields
    start = pos + HEADER_SIZE
    middle = start + klen
    stop = middle + vlen
    return Frame(pos, stop - pos, op, flags, seq, birthtime, buf[start:middle], buf[middle:stop])


def frame_value(buf: bytes, salt: int) -> tuple[int, bytes] | None:
    """(flags, value) of the frame that is all of ``buf``, with decode_frame's checks;
    None if they fail. The hot path of every get: no Frame built, one CRC call over
    key and value together (the same CRC as the two chained). tests/test_fuzz.py
    checks that it agrees with decode_frame on any bytes."""
    try:
        sync, hcrc, dcrc, op, flags, klen, vlen, seq, birthtime = HEADER.unpack_from(buf)
    except struct.error:
        return None
    stop = HEADER_SIZE + klen + vlen
    if (
        sync != SYNC
        or zlib.crc32(buf[6:HEADER_SIZE], salt) != hcrc
        or stop != len(buf)
        or op not in KNOWN_OPS
        or flags & ~KNOWN_FLAGS
        or (seq | birthtime) > MAX_SEQ
        or zlib.crc32(buf[HEADER_SIZE:], salt) != dcrc
    ):
        return None
    return flags, buf[HEADER_SIZE + klen :]


def header_length(buf: bytes, pos: int, salt: int) -> int | None:
    """Length of the frame at ``pos`` if its header checksum holds (payload unchecked)."""
    fields = _checked_header(buf, pos, salt)
    return None if fields is None else HEADER_SIZE + fields[5] + fields[6]


class Damage(NamedTuple):
    offset: int
    length: int
    reason: str


class Scan:
    """Walk the frames of a buffer, yielding committed data frames and SEALs.

    A batch (BEGIN, members flagged BATCH, COMMIT) is one write() by its
    writer, so anything valid found after a batch proves the batch was
    written whole: its members are held back until then, and if the buffer
    ends first they are an unfinished append and are not yielded. Atomicity
    is about crashes: a batch cut short by a crash is dropped whole; a batch
    written whole and damaged later loses only its damaged frames, like any
    other record. Afterwards:

    - ``end`` is the offset just past the last committed unit: where the next
      append belongs. Bytes past it (``tail``) are an unfinished append, torn by
      a crash or still being written by another process; in a ``complete``
      (finished, earlier) segment they can only be damage, and are reported so.
    - ``damage`` lists regions skipped because something valid follows them.
      A damaged length is never followed; the scan looks for the next frame
      whose checksums hold.
    - ``last_seq`` and ``last_birthtime`` are the highest of the committed
      frames, batch markers included (a COMMIT has its batch's highest seq).

    ``committed``: the buffer lies where this process has applied the log
    already (Log.read_frames reading a queue's backlog back), so every batch in
    it was found whole once: its members are yielded as they come, like any
    frame, instead of being held back until its COMMIT is read too.
    """

    def __init__(self, buf: bytes, salt: int, start: int = 0, complete: bool = False, committed: bool = False) -> None:
        self.buf = buf
        self.salt = salt
        self.start = start
        self.complete = complete  # a finished segment: it cannot end in an unfinished append
        self.committed = committed
        self.end = start
        self.damage: list[Damage] = []
        self.last_seq = 0
        self.last_birthtime = 0

    @property
    def tail(self) -> int:
        return len(self.buf) - self.end

    def __iter__(self) -> Iterator[Frame]:
        yield from self._frames() if self._walk is None else self._walked(self._walk)
        self._check_end()

    def put_locations(self, slot: int, at: int) -> list[tuple[int, int]]:
        """(seq, location) of the PUT frames the walk yields, the buffer lying at offset
        ``at`` of segment ``slot``: the same walk, checks, ``end`` and ``damage``, without
        building Frames in C (how a queue reads its backlog back: Log.read_frames)."""
        if not (0 <= slot < 2**16 and 0 <= at < 2**32):  # (a location's fields)
            raise OverflowError("slot or at out of range")
        if self._walk is not None:
            puts = list(self._walked(self._walk, slot, at))
            self._check_end()
            return puts
        from .index import pack_location  # (index imports this module)

        puts, pos = self._committed_puts(slot, at) if self.committed else ([], self.start)
        rest = (f for f in self._frames(pos) if f.op == OP_PUT)
        puts += [(f.seq, pack_location(f.birthtime_ns, slot, at + f.offset, f.length)) for f in rest]
        self._check_end()
        return puts

    def _committed_puts(self, slot: int, at: int) -> tuple[list[tuple[int, int]], int]:
        """put_locations of a committed walk, up to the first frame that fails its checks
        (where _frames goes on, with its resync and damage): the PUTs' pairs, and where
        it stopped. In Python the Frames are most of a walk's cost, and a committed walk
        needs none: no batch holds its members back, so every frame counts alone."""
        from .index import pack_location  # (index imports this module)

        buf, pos, salt, n = self.buf, self.start, self.salt, len(self.buf)
        puts: list[tuple[int, int]] = []
        while pos < n:
            fields = _checked_frame(buf, pos, salt)
            if fields is None:
                break
            _, _, _, op, _, klen, vlen, seq, birthtime = fields
            length = HEADER_SIZE + klen + vlen
            if op == OP_PUT:
                puts.append((seq, pack_location(birthtime, slot, at + pos, length)))
            pos += length
            self.end = pos
            if seq > self.last_seq:
                self.last_seq = seq
            if birthtime > self.last_birthtime:
                self.last_birthtime = birthtime
        return puts, pos

    def _check_end(self) -> None:
        if self.complete and self.tail:
            self.damage.append(Damage(self.end, self.tail, "damaged end of a finished segment"))

    # The C core's walk (_format.c: _frames and _resync in one call); None: walk in Python.
    _walk: Callable[..., tuple] | None = None if core is None else core.scan

    def _walked(self, walk: Callable[..., tuple], *where: int) -> Iterator:
        """_frames, walked in C a chunk at a time: up to the next SEAL, so that a consumer
        stopping at a SEAL (Log._scan) finds ``end`` and the rest as _frames leaves them,
        or up to about a thousand frames, so that a segment is never all Frames at once.
        ``where``: (slot, at) for put_locations' pairs instead of Frames."""
        resume: int | None = self.start
        while resume is not None:
            frames, self.end, self.last_seq, self.last_birthtime, resume = walk(
                self.buf,
                self.salt,
                resume,
                self.complete,
                self.committed,
                self.damage,
                self.last_seq,
                self.last_birthtime,
                *where,
            )
            yield from frames
            if resume is not None:
                self.end = resume

    def _frames(self, start: int | None = None) -> Iterator[Frame]:
        """The walk, from ``start`` (default: the scan's) with the state the scan has."""
        buf, pos, salt = self.buf, self.start if start is None else start, self.salt
        batch: list[Frame] | None = None  # members of a batch not yet known to be whole
        batch_damage: list[Damage] = []  # damage met inside it: part of the tail if the batch is
        held = not self.committed  # (whether batch members wait for their COMMIT)
        while pos < len(buf):
            frame = py_decode_frame(buf, pos, salt)
            if frame is None:
                resume = self._resync(pos)
                if resume is None:
                    break  # nothing valid follows: an unfinished tail, or a finished segment's damaged end
                region = Damage(pos, resume - pos, "damaged frame")
                pos = resume
                if batch is None:
                    self.damage.append(region)
                    self.end = pos
                else:
                    batch_damage.append(region)
                continue
            pos += frame.length
            if held and frame.flags & FLAG_BATCH and frame.op in DATA_OPS:
                if batch is None:
                    batch = []  # its BEGIN was damaged
                batch.append(frame)
                continue
            if batch is not None:
                yield from batch  # something valid follows the batch: it was written whole
                self.damage += batch_damage
                batch, batch_damage = None, []
                self.end = frame.offset
            if held and frame.op == OP_BATCH_BEGIN:
                batch = []
                continue
            if frame.seq > self.last_seq:
                self.last_seq = frame.seq
            if frame.birthtime_ns > self.last_birthtime:
                self.last_birthtime = frame.birthtime_ns
            if frame.op not in (OP_BATCH_BEGIN, OP_BATCH_COMMIT):
                yield frame
            self.end = pos
        if batch and self.complete:
            # A finished segment was sealed after this batch, so its writer wrote it
            # whole (a torn tail is cut before anything else is appended): only
            # damage to its COMMIT hides that. Its intact members stand.
            self.last_seq = max(self.last_seq, *(f.seq for f in batch))
            self.last_birthtime = max(self.last_birthtime, *(f.birthtime_ns for f in batch))
            yield from batch
            self.damage += batch_damage
            self.end = batch[-1].offset + batch[-1].length

    def _resync(self, pos: int) -> int | None:
        """Where scanning resumes after the bad frame at ``pos``; None if nothing valid follows.

        Wherever a header's checksum holds, it vouches for the length: skip
        exactly its bad payload, or, if the frame runs past the end, it is an
        unfinished append. Never search inside such a frame (its value may hold
        the bytes of other frames), which also keeps the search linear.

        (The rules of header_length and decode_frame, inlined: this loop meets
        every sync pair in a damaged region, so each costs at most one header
        CRC, and none when its header bytes repeat the last one that failed.)
        """
        buf, salt = self.buf, self.salt
        last = len(buf) - HEADER_SIZE  # the last offset a whole header can start at
        find, crc32, hcrc_at = buf.find, zlib.crc32, _HCRC.unpack_from
        if pos <= last and buf[pos : pos + 2] == SYNC:  # (buf may be an mmap: no startswith)
            length = py_header_length(buf, pos, salt)
            if length is not None:
                if pos + length > len(buf):
                    return None
                pos += length - 1
        failed = b""  # the last header (from hcrc on) whose checksum failed: a run of sync bytes repeats it
        while True:
            pos = find(SYNC, pos + 1)
            if pos < 0 or pos > last:
                return None  # (no header fits: no frame can follow)
            header = buf[pos + 2 : pos + HEADER_SIZE]
            if header == failed or crc32(header[4:], salt) != hcrc_at(header)[0]:
                failed = header
                continue  # the common case in a damaged region: at most one CRC per sync pair
            if py_decode_frame(buf, pos, salt) is not None:
                return pos
            length = HEADER_SIZE + sum(HEADER.unpack_from(buf, pos)[5:7])
            if pos + length > len(buf):
                return None
            pos += length - 1


class PyScan(Scan):
    """The Scan that walks in Python: the reference for the C walk."""

    _walk = None


# The pure-Python codecs, the reference; the C core's twins replace them where it is built.
py_encode_frame, py_decode_frame, py_frame_value, py_header_length, py_encode_batch = (
    encode_frame,
    decode_frame,
    frame_value,
    header_length,
    encode_batch,
)
if core is not None:
    core.setup(Frame, Damage)
    encode_frame, decode_frame, frame_value, header_length, encode_batch = (
        core.encode_frame,
        core.decode_frame,
        core.frame_value,
        core.header_length,
        core.encode_batch,
    )


# --- the manifest (file CURRENT) -------------------------------------------

MANIFEST_MAGIC = b"\x89IODCUR\n"
MANIFEST_HEAD = struct.Struct("<8sHHQQQI")  # magic, version, kind, generation, seq floor, birthtime floor, count
MANIFEST_NUMBER = struct.Struct("<Q")

# What a store holds (the manifest's kind): never both, since a queue's reclaim
# and a dict's compaction each drop what is not theirs. 0: a store written before
# the field existed (its contents tell), or one opened only by the tools so far.
STORE_UNKNOWN = 0
STORE_DICT = 1
STORE_QUEUE = 2


class Manifest(NamedTuple):
    """Which segment files make up the store, in order, the floors that keep
    sequence numbers and birthtimes increasing after compaction drops records,
    and what kind of store it is."""

    generation: int
    segments: tuple[int, ...]
    seq_floor: int = 0
    birthtime_floor: int = 0
    kind: int = STORE_UNKNOWN


def encode_manifest(m: Manifest) -> bytes:
    body = MANIFEST_HEAD.pack(
        MANIFEST_MAGIC, FORMAT_VERSION, m.kind, m.generation, m.seq_floor, m.birthtime_floor, len(m.segments)
    ) + b"".join(MANIFEST_NUMBER.pack(n) for n in m.segments)
    return body + COUNT.pack(zlib.crc32(body))


def decode_manifest(data: bytes) -> Manifest:
    if not data.startswith(MANIFEST_MAGIC) or len(data) < MANIFEST_HEAD.size + COUNT.size:
        raise CorruptionError("not an iodict_log manifest (bad magic or too short)")
    _, version, kind, generation, seq_floor, bt_floor, count = MANIFEST_HEAD.unpack_from(data)
    if version not in READ_VERSIONS:
        raise FormatVersionError(version)
    size = MANIFEST_HEAD.size + count * MANIFEST_NUMBER.size
    if len(data) != size + COUNT.size or zlib.crc32(data[:size]) != COUNT.unpack_from(data, size)[0]:
        raise CorruptionError("manifest checksum mismatch")
    numbers = tuple(MANIFEST_NUMBER.unpack_from(data, MANIFEST_HEAD.size + i * 8)[0] for i in range(count))
    return Manifest(generation, numbers, seq_floor, bt_floor, kind)


# --- the hint file and the queue checkpoint -------------------------------------------
# Snapshots of a consumer's state (the dict's index: HINT; the queue's positions:
# CHECKPOINT), so that opening need not replay every record. Each is a cache:
# whatever is wrong with it (damage, another version, segments changed since)
# makes the reader scan instead. Both are one container: a head, one entry per
# covered segment, the consumer's own payload (checked on its own), a CRC-32.
#
# A hint names the segments it covers by position in CURRENT, each with the size
# covered and the CRC-32 of those bytes, so it is used only for segments whose
# every byte is as it was indexed. A checkpoint names them by number (a queue's
# reclaim drops leading segments), with the size covered and the CRC-32 of the
# last CHECKPOINT_TAIL bytes below it: a queue's segments are only ever appended
# to, and every frame it later reads back is checked on its own, so opening
# costs O(segments), not O(bytes) (checkpoint.py).

HINT_MAGIC = b"\x89IODHN2\n"  # (2: the payload is hintfile's index; a pickle one had "\x89IODHNT\n")
HINT_HEAD = struct.Struct("<8sHHIQQI")  # magic, version, reserved, salt, last seq, last birthtime, count
HINT_COVER = struct.Struct("<QI")  # size covered, crc32 of bytes [0, size)
CHECKPOINT_MAGIC = b"\x89IODQCK\n"
CHECKPOINT_COVER = struct.Struct("<QQI")  # segment number, size covered, crc32 of its last CHECKPOINT_TAIL bytes
CHECKPOINT_TAIL = 4096


class Hint(NamedTuple):
    """An index snapshot over the first ``len(coverage)`` segments of CURRENT."""

    salt: int
    last_seq: int
    last_birthtime: int
    coverage: tuple[tuple[int, int], ...]  # (size, crc32) per covered segment
    payload: bytes  # the index's own snapshot


class Checkpoint(NamedTuple):
    """A queue's state over the segments named in ``coverage``, which begin CURRENT."""

    salt: int
    last_seq: int
    last_birthtime: int
    coverage: tuple[tuple[int, int, int], ...]  # (number, size, crc32 of the tail below size) per segment
    payload: bytes  # the queue's own snapshot (checkpoint.encode_state)


def _encode_snapshot(magic: bytes, cover: struct.Struct, snapshot: Hint | Checkpoint) -> bytes:
    salt, last_seq, last_birthtime, coverage, payload = snapshot
    head = HINT_HEAD.pack(magic, FORMAT_VERSION, 0, salt, last_seq, last_birthtime, len(coverage))
    body = b"".join([head, *(cover.pack(*entry) for entry in coverage), payload])
    return body + COUNT.pack(zlib.crc32(body))


def _decode_snapshot(data: bytes, magic: bytes, cover: struct.Struct) -> tuple | None:
    """(salt, last seq, last birthtime, coverage, payload); None if damaged, cut short or of another version."""
    if not data.startswith(magic) or len(data) < HINT_HEAD.size + COUNT.size:
        return None
    _, version, _, salt, last_seq, last_birthtime, count = HINT_HEAD.unpack_from(data)
    start = HINT_HEAD.size + count * cover.size
    end = len(data) - COUNT.size
    if version not in READ_VERSIONS or start > end:
        return None
    if zlib.crc32(memoryview(data)[:end]) != COUNT.unpack_from(data, end)[0]:
        return None
    coverage = tuple(cover.unpack_from(data, HINT_HEAD.size + i * cover.size) for i in range(count))
    return salt, last_seq, last_birthtime, coverage, data[start:end]


def encode_hint(hint: Hint) -> bytes:
    return _encode_snapshot(HINT_MAGIC, HINT_COVER, hint)


def decode_hint(data: bytes) -> Hint | None:
    """The hint in ``data``; None if it is damaged, cut short or of another version."""
    fields = _decode_snapshot(data, HINT_MAGIC, HINT_COVER)
    return None if fields is None else Hint(*fields)


def encode_checkpoint(checkpoint: Checkpoint) -> bytes:
    return _encode_snapshot(CHECKPOINT_MAGIC, CHECKPOINT_COVER, checkpoint)


def decode_checkpoint(data: bytes) -> Checkpoint | None:
    """The checkpoint in ``data``; None if it is damaged, cut short or of another version."""
    fields = _decode_snapshot(data, CHECKPOINT_MAGIC, CHECKPOINT_COVER)
    return None if fields is None else Checkpoint(*fields)
