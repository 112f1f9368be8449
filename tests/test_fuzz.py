"""Fuzzing the decoders: frames, the Scan, segment headers, the manifest (format.py); keys and values.

tests/test_format.py pins the codecs down case by case (every bit flip of small frames,
every cut, batches frame by frame). This module feeds them arbitrary and adversarial
bytes instead, and checks what must hold for *any* input:

- the decoders give a result or a documented outcome (None, a damage region,
  CorruptionError, FormatVersionError), never another exception, never a hang;
- every frame the Scan yields re-encodes to exactly the bytes it came from, lies inside
  the buffer and before ``end``, in increasing offset order, and every byte before
  ``end`` is accounted for (a yielded frame, a damage region or a BEGIN/COMMIT);
- the Scan does not depend on where it starts, on a cleanly read prefix, or on bytes
  appended later (a growing file never takes a frame back);
- valid frames under random damage (garbage inserted, bytes overwritten, bits flipped,
  the end cut off): every intact frame is still yielded, except the members of a
  batch with nothing valid after them (docs/FORMAT.md, "Batches").

The decoders' fuzzers run twice, against format.py's pure-Python decoders and against the
C core's (iodict_log/_format.c), whatever the build (the ``decoders`` fixture);
tests/test_native_format.py compares the two directly.

"Adversarial" bytes are built from pieces that look like frames: frames of this store
with unknown ops or flags (both checksums hold), headers whose checksum holds but whose
lengths lie, frames cut short or with a damaged payload, frames of other stores (other
salts), runs of sync bytes. tools/fuzz_atheris.py runs the same checks for longer.

Keys and values (serialize.py) get hostile msgpack (huge lengths, deep arrays, maps and
tuples, bad ext, bad UTF-8, trailing bytes, long forms of short values, lz4 bombs), both
alone and in frames forged with a real store's salt; and values nested past the limits.
"""

from __future__ import annotations

import os
import struct
import sys
import tempfile
import zlib

import lz4.block
import msgpack
import pytest
from helpers import SALT, flip, same
from hypothesis import given, settings
from hypothesis import strategies as st

from iodict_log import IODict, hintfile, index
from iodict_log import format as fmt
from iodict_log.errors import CorruptionError, FormatVersionError, IODictLogError
from iodict_log.format import (
    COUNT,
    DATA_OPS,
    FIELDS,
    FLAG_BATCH,
    FLAG_LZ4,
    FLAG_PICKLE,
    FORMAT_VERSION,
    HEADER_SIZE,
    KIND_COMPACTED,
    KIND_LOG,
    KNOWN_FLAGS,
    KNOWN_OPS,
    LZ4_MAX_EXPANSION,
    MANIFEST_MAGIC,
    OP_BATCH_BEGIN,
    OP_BATCH_COMMIT,
    OP_DELETE,
    OP_PUT,
    OP_SEAL,
    OP_SET,
    OP_TAKE,
    PREFIX,
    READ_VERSIONS,
    SEGMENT_HEADER_SIZE,
    SEGMENT_MAGIC,
    SYNC,
    Damage,
    Frame,
    Manifest,
    Scan,
    compress_value,
    decode_frame,
    decode_hint,
    decode_manifest,
    decode_segment_header,
    encode_frame,
    encode_hint,
    encode_manifest,
    encode_segment_header,
    frame_value,
    header_length,
    lz4_bound,
    stored_value,
)
from iodict_log.hintfile import HINT_NAME, encode_index
from iodict_log.index import KeyIndex, location_birthtime, pack_location, unpack_location
from iodict_log.serialize import CONTAINER_BYTES, MAX_DEPTH, MAX_TUPLE_DEPTH, Serializer, decode_key, encode_key

try:
    from iodict_log import _native  # type: ignore[attr-defined]
except ImportError:  # (not built: the pure decoders only)
    _native = None

MANY = settings(max_examples=300, deadline=None)
SOME = settings(max_examples=150, deadline=None)

U32 = st.integers(0, 2**32 - 1)
U64 = st.integers(0, 2**64 - 1)
FOREIGN_SALTS = (0, SALT ^ 1, SALT ^ 0x80000000, 0xFFFFFFFF)  # other stores
assert SALT not in FOREIGN_SALTS
DOCUMENTED_ERRORS = (CorruptionError, FormatVersionError)

# The decoders each fuzzer runs against: the names this module and the hint's loading use.
DECODERS = {
    "python": {
        (sys.modules[__name__], "decode_frame"): fmt.py_decode_frame,
        (sys.modules[__name__], "header_length"): fmt.py_header_length,
        (sys.modules[__name__], "frame_value"): fmt.py_frame_value,
        (sys.modules[__name__], "Scan"): fmt.PyScan,
        (hintfile, "decode_locations"): hintfile.py_decode_locations,
        (index, "index_dict"): hintfile.py_index_dict,
    }
}
if _native is not None:
    _native.setup(Frame, Damage)  # (format.py does this only when the build is native)

    class CScan(fmt.PyScan):
        _walk = _native.scan

    DECODERS["c"] = {
        (sys.modules[__name__], "decode_frame"): _native.decode_frame,
        (sys.modules[__name__], "header_length"): _native.header_length,
        (sys.modules[__name__], "frame_value"): _native.frame_value,
        (sys.modules[__name__], "Scan"): CScan,
        (hintfile, "decode_locations"): _native.decode_locations,
        (index, "index_dict"): _native.index_dict,
    }


@pytest.fixture(scope="module", params=sorted(DECODERS))
def decoders(request):
    """Run a fuzzer against the Python decoders, then against the C ones (if built)."""
    chosen = DECODERS[request.param]
    saved = {(module, name): getattr(module, name) for module, name in chosen}
    for (module, name), decoder in chosen.items():
        setattr(module, name, decoder)
    yield request.param
    for (module, name), decoder in saved.items():
        setattr(module, name, decoder)


against_both = pytest.mark.usefixtures("decoders")


# --- adversarial bytes ----------------------------------------------------------------

any_op = st.one_of(st.sampled_from(sorted(KNOWN_OPS)), st.integers(0, 255))
any_flags = st.one_of(st.sampled_from([0, FLAG_BATCH, FLAG_LZ4 | FLAG_PICKLE]), st.integers(0, 255))
any_length = st.one_of(st.integers(0, 80), U32)


@st.composite
def frame_bytes(draw, salt: int) -> bytes:
    """A whole frame under ``salt``, any op and flags (unknown ones too: both checksums hold)."""
    op = draw(any_op)
    value = draw(st.binary(max_size=24))
    if op == OP_BATCH_BEGIN and draw(st.booleans()):
        value = COUNT.pack(draw(U32))
    return encode_frame(op, draw(any_flags), draw(U64), draw(U64), draw(st.binary(max_size=12)), value, salt=salt)


@st.composite
def lying_header(draw) -> bytes:
    """A header of this store whose checksum holds but whose lengths and dcrc are made up."""
    fields = FIELDS.pack(draw(U32), draw(any_op), draw(any_flags), draw(any_length), draw(any_length), 0, 0)
    return PREFIX.pack(SYNC, zlib.crc32(fields, SALT)) + fields


@st.composite
def damaged_frame(draw) -> bytes:
    """A frame of this store with one bit flipped (header or payload), or cut short."""
    raw = draw(frame_bytes(SALT))
    if draw(st.booleans()):
        return raw[: draw(st.integers(0, len(raw) - 1))]
    return flip(raw, draw(st.integers(0, len(raw) * 8 - 1)))


sync_noise = st.sampled_from([SYNC, SYNC * 3, b"\xd1", b"\x0c", SYNC + bytes(HEADER_SIZE - 2), bytes(HEADER_SIZE)])

chunk = st.one_of(
    frame_bytes(SALT),
    frame_bytes(SALT),
    st.sampled_from(FOREIGN_SALTS).flatmap(frame_bytes),
    lying_header(),
    damaged_frame(),
    st.binary(max_size=40),
    sync_noise,
)
adversarial = st.lists(chunk, max_size=12).map(b"".join)
garbage_or_adversarial = st.one_of(st.binary(max_size=400), adversarial)


# --- what holds for any buffer ------------------------------------------------------------


def is_member(frame: Frame) -> bool:
    return bool(frame.flags & FLAG_BATCH) and frame.op in DATA_OPS


def scan(buf: bytes, start: int = 0, complete: bool = False) -> tuple[list[Frame], Scan]:
    s = Scan(buf, SALT, start, complete=complete)
    return list(s), s


def check_frame(buf: bytes, frame: Frame, salt: int = SALT) -> None:
    """A decoded frame is exactly the bytes it came from, inside the buffer."""
    assert frame.offset >= 0 and frame.offset + frame.length <= len(buf)
    assert frame.length == HEADER_SIZE + len(frame.key) + len(frame.value)
    assert frame.op in KNOWN_OPS and not frame.flags & ~KNOWN_FLAGS
    raw = encode_frame(frame.op, frame.flags, frame.seq, frame.birthtime_ns, frame.key, frame.value, salt=salt)
    assert raw == buf[frame.offset : frame.offset + frame.length]
    assert type(frame.key) is bytes and type(frame.value) is bytes


def check_scan(buf: bytes, frames: list[Frame], s: Scan, start: int = 0) -> None:
    assert start <= s.end <= len(buf) and s.tail == len(buf) - s.end
    for frame in frames:
        check_frame(buf, frame)
        assert decode_frame(buf, frame.offset, SALT) == frame
        assert frame.op in DATA_OPS or frame.op == OP_SEAL
        assert start <= frame.offset and frame.offset + frame.length <= s.end
    for a, b in zip(frames, frames[1:]):
        assert a.offset + a.length <= b.offset
    for region in s.damage:
        assert region.length > 0 and start <= region.offset and region.offset + region.length <= len(buf)
    # Damage lies before ``end`` (the tail is not damage), in order, without overlaps;
    # with complete=True the tail is then reported as one more region.
    before = s.damage[:-1] if s.complete and s.tail else s.damage
    assert all(d.offset + d.length <= s.end for d in before)
    for a, b in zip(before, before[1:]):
        assert a.offset + a.length <= b.offset
    if s.complete and s.tail:
        assert s.damage[-1] == Damage(s.end, s.tail, "damaged end of a finished segment")
    # Every byte before ``end`` is a yielded frame, a damage region or a batch's BEGIN/COMMIT.
    spans = {f.offset: f.length for f in frames}
    spans.update((d.offset, d.length) for d in before)
    pos = start
    while pos < s.end:
        if pos in spans:
            pos += spans[pos]
            continue
        bookkeeping = decode_frame(buf, pos, SALT)
        assert bookkeeping is not None and bookkeeping.op in (OP_BATCH_BEGIN, OP_BATCH_COMMIT), pos
        pos += bookkeeping.length
    assert pos == s.end


def shifted(frames: list[Frame], by: int) -> list[Frame]:
    return [f._replace(offset=f.offset + by) for f in frames]


# --- decode_frame -------------------------------------------------------------------------


@against_both
@MANY
@given(buf=garbage_or_adversarial, salt=st.one_of(st.just(SALT), U32))
def test_decode_frame_at_every_offset_of_adversarial_bytes_gives_none_or_its_exact_bytes(buf, salt):
    for pos in range(len(buf) + 2):
        frame = decode_frame(buf, pos, salt)
        length = header_length(buf, pos, salt)
        if frame is None:
            continue
        assert frame.offset == pos and length == frame.length
        assert frame.op in KNOWN_OPS and not frame.flags & ~KNOWN_FLAGS
        raw = encode_frame(frame.op, frame.flags, frame.seq, frame.birthtime_ns, frame.key, frame.value, salt=salt)
        assert raw == buf[pos : pos + frame.length]


@against_both
@given(buf=garbage_or_adversarial, salt=st.one_of(st.just(SALT), U32))
def test_frame_value_the_get_path_agrees_with_decode_frame_on_any_bytes(buf, salt):
    # frame_value checks a record read alone (every get); it must accept exactly the
    # buffers that decode_frame decodes whole, and give the same flags and value.
    hits: list[bool] = []
    for start in range(len(buf) + 1):
        vouched = header_length(buf, start, salt) or 0  # (so that valid frames are cut out whole)
        for stop in {start, len(buf), *(start + n for n in (36, 37, vouched - 1, vouched) if start + n <= len(buf))}:
            piece = buf[start:stop]
            frame = decode_frame(piece, 0, salt)
            whole = frame is not None and frame.length == len(piece)
            assert frame_value(piece, salt) == ((frame.flags, frame.value) if whole else None)
            hits.append(whole)
    assert len(hits) > 0


@against_both
@SOME
@given(
    op=st.sampled_from(sorted(KNOWN_OPS)),
    flags=st.integers(0, KNOWN_FLAGS),
    key=st.binary(max_size=20),
    value=st.binary(max_size=60),
    salt=U32,
    other=U32,
)
def test_a_frame_decodes_under_its_own_salt_only(op, flags, key, value, salt, other):
    raw = encode_frame(op, flags, 1, 2, key, value, salt=salt)
    assert decode_frame(raw, 0, salt) is not None
    if other != salt:
        assert decode_frame(raw, 0, other) is None
        assert header_length(raw, 0, other) is None


@SOME
@given(stored=st.binary(max_size=300), prefix=st.one_of(st.none(), U32), flags=st.integers(0, 255))
def test_stored_value_of_arbitrary_bytes_is_bounded_or_a_corruption_error(stored, prefix, flags):
    if prefix is not None:
        stored = COUNT.pack(prefix) + stored
    try:
        value = stored_value(flags, stored)
    except CorruptionError:
        assert flags & FLAG_LZ4
        return
    assert type(value) is bytes
    if flags & FLAG_LZ4:
        assert len(value) <= LZ4_MAX_EXPANSION * len(stored)  # (checked before lz4 allocates)
    else:
        assert value == stored


@SOME
@given(value=st.binary(min_size=1, max_size=64).map(lambda b: b * 20), bits=st.lists(st.integers(0), max_size=4))
def test_damaged_lz4_blocks_decompress_or_raise_corruption_error(value, bits):
    flags, packed = compress_value(value)
    for bit in bits:
        packed = flip(packed, bit % (len(packed) * 8))
    try:
        out = stored_value(flags, packed)
    except CorruptionError:
        return
    assert type(out) is bytes and len(out) <= LZ4_MAX_EXPANSION * len(packed)


# --- Scan over adversarial bytes ------------------------------------------------------------


def check_both_scans(buf: bytes, start: int) -> tuple[list[Frame], Scan]:
    """Scan as the last segment and as a finished one, check both; the first."""
    frames, s = scan(buf, start)
    check_scan(buf, frames, s, start)
    done, c = scan(buf, start, complete=True)
    check_scan(buf, done, c, start)
    # A finished segment is read the same way, but for a batch held back at its end, whose
    # members it yields (the segment was sealed after it); its tail is damage rather than
    # an unfinished append.
    held = done[len(frames) :]
    assert done[: len(frames)] == frames and all(f.flags & FLAG_BATCH and f.offset >= s.end for f in held)
    if held:
        assert c.end == held[-1].offset + held[-1].length
    else:
        assert c.end == s.end
        assert c.damage == s.damage + ([Damage(s.end, s.tail, "damaged end of a finished segment")] if s.tail else [])
    return frames, s


@against_both
@MANY
@given(buf=garbage_or_adversarial, data=st.data())
def test_scan_of_adversarial_bytes_yields_exact_frames_in_order_and_accounts_for_every_byte(buf, data):
    check_both_scans(buf, data.draw(st.integers(0, len(buf)), label="start"))


@against_both
@MANY
@given(kind=st.sampled_from([KIND_LOG, KIND_COMPACTED]), body=adversarial, complete=st.booleans())
def test_segment_of_adversarial_frames_after_a_valid_header(kind, body, complete):
    buf = encode_segment_header(kind, SALT) + body
    assert decode_segment_header(buf) == (kind, SALT)
    frames, s = scan(buf, SEGMENT_HEADER_SIZE, complete)
    check_scan(buf, frames, s, SEGMENT_HEADER_SIZE)


@against_both
@SOME
@given(junk=garbage_or_adversarial, buf=garbage_or_adversarial, complete=st.booleans())
def test_scan_does_not_depend_on_the_bytes_before_its_start(junk, buf, complete):
    frames, s = scan(buf, 0, complete)
    moved, m = scan(junk + buf, len(junk), complete)
    assert moved == shifted(frames, len(junk))
    assert m.end == s.end + len(junk)
    assert m.damage == [d._replace(offset=d.offset + len(junk)) for d in s.damage]


# Units a writer appends whole: a record, or a batch (BEGIN, members, COMMIT).
record_ops = st.sampled_from([OP_SET, OP_DELETE, OP_SEAL, OP_PUT, OP_TAKE])
member_ops = st.sampled_from([OP_SET, OP_DELETE, OP_PUT, OP_TAKE])


@st.composite
def clean_units(draw) -> bytes:
    parts = []
    for seq, is_batch in enumerate(draw(st.lists(st.booleans(), max_size=6))):
        value = draw(st.binary(max_size=16))
        if not is_batch:
            parts.append(encode_frame(draw(record_ops), 0, seq, seq, b"k", value, salt=SALT))
            continue
        ops = draw(st.lists(member_ops, max_size=3))
        members = [encode_frame(op, FLAG_BATCH, seq, seq, b"m", value, salt=SALT) for op in ops]
        parts += [encode_frame(OP_BATCH_BEGIN, 0, seq, 0, b"", COUNT.pack(len(members)), salt=SALT), *members]
        parts.append(encode_frame(OP_BATCH_COMMIT, 0, seq, 0, b"", b"", salt=SALT))
    return b"".join(parts)


@against_both
@SOME
@given(clean=clean_units(), rest=garbage_or_adversarial, complete=st.booleans())
def test_a_cleanly_read_prefix_does_not_change_how_the_rest_is_read(clean, rest, complete):
    head, h = scan(clean)
    assert h.end == len(clean) and h.damage == []
    tail, t = scan(rest, 0, complete)
    frames, s = scan(clean + rest, 0, complete)
    assert frames == head + shifted(tail, len(clean))
    assert s.end == len(clean) + t.end
    assert s.damage == [d._replace(offset=d.offset + len(clean)) for d in t.damage]


@against_both
@SOME
@given(buf=adversarial, data=st.data())
def test_a_growing_buffer_never_takes_back_a_frame_or_a_damage_report(buf, data):
    # What a reader sees while another process appends: a prefix of the final bytes.
    # ``adversarial`` never puts a frame of this store inside another one's value (see
    # test_same_store_frames_inside_intact_or_torn_values_never_surface for those).
    cut = data.draw(st.integers(0, len(buf)), label="cut")
    early, e = scan(buf[:cut])
    late, s = scan(buf)
    assert late[: len(early)] == early
    assert e.end <= s.end
    assert s.damage[: len(e.damage)] == e.damage


# --- valid frames under random damage: a model -----------------------------------------------


@st.composite
def value_bytes(draw) -> bytes:
    value = draw(st.binary(max_size=24))
    if draw(st.integers(0, 4)) == 0:  # a value holding a frame of another store
        foreign = encode_frame(OP_SET, 0, 7, 7, b"phantom", b"", salt=draw(st.sampled_from(FOREIGN_SALTS)))
        value += foreign + value
    return value


HELD = encode_frame(OP_SET, 0, 0, 0, b"x", b"", salt=SALT)  # held in a value when no frame precedes it


@st.composite
def written_units(draw, holders: bool = False) -> list[tuple[bytes, bool]]:
    """(frame bytes, holds frames of this store) of each frame of some whole units, as a writer appends them."""
    frames: list[tuple[bytes, bool]] = []
    seq = 0

    def add(op: int, flags: int, key: bytes, value: bytes, holder: bool = False) -> None:
        nonlocal seq
        seq += 1
        frames.append((encode_frame(op, flags, seq, 10**18 + seq, key, value, salt=SALT), holder))

    for kind in draw(st.lists(st.sampled_from(["record", "batch", "member", "commit", "holder"]), max_size=8)):
        if kind == "record":
            add(draw(record_ops), 0, b"k%d" % seq, draw(value_bytes()))
        elif kind == "batch":
            members = draw(st.lists(member_ops, max_size=3))
            add(OP_BATCH_BEGIN, 0, b"", COUNT.pack(len(members)))
            for op in members:
                add(op, FLAG_BATCH, b"m%d" % seq, draw(value_bytes()))
            add(OP_BATCH_COMMIT, 0, b"", b"")
        elif kind == "member":  # one whose BEGIN was lost long ago
            add(draw(member_ops), FLAG_BATCH, b"o%d" % seq, draw(value_bytes()))
        elif kind == "commit":  # a COMMIT with no batch open
            add(OP_BATCH_COMMIT, 0, b"", b"")
        elif holders:  # a value holding frames of this very store: a backup of its own segment, say
            inner = b"".join(raw for raw, _ in frames[-3:]) or HELD
            add(OP_SET, 0, b"h%d" % seq, b"<" + inner + b">", holder=True)
    return frames


# Garbage that holds no header of this store whose checksum holds.
garbage = st.one_of(
    st.binary(min_size=1, max_size=40),
    sync_noise,
    st.sampled_from(FOREIGN_SALTS).flatmap(frame_bytes),
    frame_bytes(SALT).map(lambda raw: flip(raw, 8 * 6)),  # dcrc damaged: the header checksum fails
)
mutation = st.one_of(
    st.tuples(st.just("insert"), st.floats(0, 1), garbage),
    st.tuples(st.just("overwrite"), st.floats(0, 1), garbage),
    st.tuples(st.just("flip"), st.floats(0, 1), st.integers(0, 7)),
)


def damage(frames: list[tuple[bytes, bool]], mutations: list[tuple], cut: float | None) -> tuple[bytes, list[int]]:
    """Apply the mutations, then cut the end off; return the buffer and where each
    written frame starts now (it may be damaged or gone)."""
    buf = bytearray(b"".join(raw for raw, _ in frames))
    offsets: list[int] = []
    pos = 0
    for raw, _ in frames:
        offsets.append(pos)
        pos += len(raw)
    for kind, where, what in mutations:
        if kind == "insert":
            at = int(where * len(buf))
            buf[at:at] = what
            offsets = [pos + len(what) if pos >= at else pos for pos in offsets]
            continue
        if not buf:
            continue
        at = min(int(where * len(buf)), len(buf) - 1)
        if kind == "overwrite":
            what = what[: len(buf) - at]
            buf[at : at + len(what)] = what
        else:
            buf[at] ^= 1 << what
    if cut is not None:
        del buf[int(cut * len(buf)) :]
    return bytes(buf), offsets


def expected_scan(survivors: list[Frame], complete: bool = False) -> tuple[list[Frame], int, list[Damage]]:
    """What docs/FORMAT.md says a Scan gives when ``survivors`` are the only frames in the
    buffer: (the frames yielded, ``end``, the damage regions before ``end``)."""
    yielded: list[Frame] = []
    held: list[Frame] | None = None  # batch members nothing valid has followed yet
    for frame in survivors:
        if is_member(frame):
            held = (held or []) + [frame]
            continue
        if held is not None:
            yielded += held  # something valid follows them: the batch was written whole
            held = None
        if frame.op == OP_BATCH_BEGIN:
            held = []
        elif frame.op != OP_BATCH_COMMIT:
            yielded.append(frame)
    # ``end``: before the batch still held back (its BEGIN, or its first member if the
    # BEGIN is lost), else just past the last valid frame; bytes after it are the tail.
    i = len(survivors)
    while i and is_member(survivors[i - 1]):
        i -= 1
    if i and survivors[i - 1].op == OP_BATCH_BEGIN:
        end = survivors[i - 1].offset
    elif i < len(survivors):
        end = survivors[i].offset
    else:
        end = survivors[-1].offset + survivors[-1].length if survivors else 0
    if complete and held:  # a finished segment: a batch held back at its end was written whole
        yielded += held
        end = held[-1].offset + held[-1].length
    # Damage: the bytes between valid frames (never a trailing run: that is the tail).
    regions = []
    pos = 0
    for frame in survivors:
        if frame.offset > pos:
            regions.append(Damage(pos, frame.offset - pos, "damaged frame"))
        pos = frame.offset + frame.length
    return yielded, end, [d for d in regions if d.offset < end]


def valid_frames(buf: bytes) -> tuple[list[Frame], bool]:
    """The frames a Scan must find in ``buf``, and whether the model is exact for it.

    They are the valid frames that do not start inside the span a header of this store
    vouches for (its checksum holds): the frames held in an intact record's value are
    not frames, nor are those in a torn record's value (docs/FORMAT.md, "Reading a
    segment"). Found by trying every offset, not by following the Scan.
    """
    headers = [(at, n) for at in range(len(buf)) if (n := header_length(buf, at, SALT)) is not None]
    valid = {at: frame for at, _ in headers if (frame := decode_frame(buf, at, SALT)) is not None}
    found = [valid[at] for at in sorted(valid) if not any(q < at < q + n for q, n in headers)]
    exact = True
    for q, n in headers:
        if q in valid or not any(q < at < q + n for at in valid):
            continue
        # A damaged or torn record whose value holds frames of this same store (say, a
        # backup of its own segment). Damaged, a resync may land inside its value (the
        # last paragraph of "Reading a segment"); torn, it is the tail, and no frame in
        # it may come out, whatever damage came before it.
        exact = exact and q + n > len(buf)
    return found, exact


def check_against_model(frames: list[tuple[bytes, bool]], mutations: list[tuple], cut: float | None) -> bool:
    """Scan the damaged buffer both ways; True if the model applied."""
    buf, offsets = damage(frames, mutations, cut)
    survivors, exact = valid_frames(buf)
    written = {raw for raw, _ in frames} | {HELD}
    assert all(buf[f.offset : f.offset + f.length] in written for f in survivors)  # garbage makes no frames
    # Every written frame whose bytes are all still there is expected (its offset moves
    # with the inserts before it; an insert into it, an overwrite with equal bytes or a
    # bit flipped twice may leave it whole).
    starts = {f.offset for f in survivors}
    assert all(at in starts for at, (raw, _) in zip(offsets, frames) if buf[at : at + len(raw)] == raw)
    for complete in (False, True):
        got, s = scan(buf, 0, complete)
        check_scan(buf, got, s)
        if not exact:
            continue
        yielded, end, regions = expected_scan(survivors, complete)
        assert got == yielded
        assert s.end == end
        assert [d for d in s.damage if d.offset < s.end] == regions
        if complete and s.tail:
            assert s.damage[-1] == Damage(end, len(buf) - end, "damaged end of a finished segment")
    return exact


@against_both
@settings(max_examples=400, deadline=None)
@given(
    frames=written_units(),
    mutations=st.lists(mutation, max_size=4),
    cut=st.one_of(st.none(), st.floats(0, 1)),
)
def test_scan_model_every_intact_frame_survives_inserted_overwritten_flipped_and_cut_bytes(frames, mutations, cut):
    assert check_against_model(frames, mutations, cut)


@against_both
@SOME
@given(frames=written_units(), mutations=st.lists(mutation, min_size=1, max_size=12))
def test_scan_model_many_damaged_regions_in_one_buffer(frames, mutations):
    assert check_against_model(frames, mutations, None)


@against_both
@SOME
@given(
    frames=written_units(holders=True),
    mutations=st.lists(mutation, max_size=4),
    cut=st.one_of(st.none(), st.floats(0, 1)),
)
def test_same_store_frames_inside_intact_or_torn_values_never_surface(frames, mutations, cut):
    # Damage anywhere else never makes a resync land inside the value of an intact
    # record, even one holding frames of this very store, and a torn last record is a
    # tail whatever its value holds.
    check_against_model(frames, mutations, cut)


@against_both
def test_the_model_test_sees_the_damage_it_is_about():
    # Guard against a model that agrees with the Scan because nothing was damaged.
    frames = [(encode_frame(OP_SET, 0, i, i, b"k%d" % i, b"v", salt=SALT), False) for i in range(4)]
    buf, offsets = damage(frames, [("insert", 0.5, b"\xd1\x0cgarbage"), ("flip", 0.0, 3)], 0.9)
    survivors, exact = valid_frames(buf)
    assert exact and len(survivors) == 2  # the first frame flipped, the last one cut; the insert fell between frames
    assert [f.offset for f in survivors] == offsets[1:3]
    yielded, end, regions = expected_scan(survivors)
    got, s = scan(buf)
    assert got == yielded == survivors and s.end == end == len(buf) - s.tail
    assert s.damage == regions == [Damage(0, survivors[0].offset, "damaged frame"), Damage(78, 9, "damaged frame")]


# --- segment header -------------------------------------------------------------------------


@st.composite
def segment_headers(draw) -> bytes:
    """Header-like bytes: the magic, then fields that are right or wrong, a CRC that holds or not."""
    version = draw(st.one_of(st.just(FORMAT_VERSION), st.just(FORMAT_VERSION), st.integers(0, 0xFFFF)))
    kind = draw(st.one_of(st.sampled_from([KIND_LOG, KIND_COMPACTED]), st.integers(0, 255)))
    reserved = draw(st.one_of(st.just(0), st.just(0), st.integers(0, 255)))
    body = SEGMENT_MAGIC + struct.pack("<HBBI", version, kind, reserved, draw(U32))
    crc = zlib.crc32(body) if draw(st.integers(0, 3)) else draw(U32)
    data = body + struct.pack("<I", crc) + draw(st.binary(max_size=8))
    return data[: draw(st.integers(0, len(data)))] if draw(st.integers(0, 5)) == 0 else data


@MANY
@given(data=st.one_of(st.binary(max_size=40), segment_headers()))
def test_segment_header_decoder_follows_the_spec_for_any_bytes(data):
    ok_magic = len(data) >= SEGMENT_HEADER_SIZE and data.startswith(SEGMENT_MAGIC)
    try:
        kind, salt = decode_segment_header(data)
    except FormatVersionError as exc:
        # Magic and version are read before anything else is trusted, the CRC included.
        assert ok_magic
        assert exc.version == struct.unpack_from("<H", data, 8)[0] not in READ_VERSIONS
        return
    except CorruptionError:
        if ok_magic and data[11] == 0:
            version, kind, _, _, crc = struct.unpack_from("<HBBII", data, 8)
            assert version in READ_VERSIONS
            assert kind not in (KIND_LOG, KIND_COMPACTED) or crc != zlib.crc32(data[:16])
        return
    assert ok_magic and kind in (KIND_LOG, KIND_COMPACTED)
    assert decode_segment_header(data[:SEGMENT_HEADER_SIZE]) == (kind, salt)
    if data[11] == 0 and data[8] == FORMAT_VERSION:  # (a non-zero reserved byte, or version 1, is accepted too)
        assert encode_segment_header(kind, salt) == data[:SEGMENT_HEADER_SIZE]


# --- manifest -------------------------------------------------------------------------------


@st.composite
def manifest_like(draw) -> bytes:
    """Manifest-like bytes: the magic, any fields, a count that may not match, a CRC that holds or not."""
    numbers = draw(st.lists(U64, max_size=6))
    count = draw(st.one_of(st.just(len(numbers)), st.just(len(numbers)), st.integers(0, 8), U32))
    version = draw(st.one_of(st.just(FORMAT_VERSION), st.just(FORMAT_VERSION), st.integers(0, 0xFFFF)))
    kind = draw(st.one_of(st.just(0), st.just(1), st.integers(0, 0xFFFF)))
    head = struct.pack("<8sHHQQQI", MANIFEST_MAGIC, version, kind, draw(U64), draw(U64), draw(U64), count)
    body = head + b"".join(struct.pack("<Q", n) for n in numbers)
    data = body + struct.pack("<I", zlib.crc32(body) if draw(st.integers(0, 3)) else draw(U32))
    choice = draw(st.integers(0, 5))
    if choice == 0:
        data = data[: draw(st.integers(0, len(data)))]
    elif choice == 1:
        data += draw(st.binary(min_size=1, max_size=12))
    return data


@MANY
@given(
    data=st.one_of(
        st.binary(max_size=120),
        manifest_like(),
        st.builds(Manifest, U64, st.tuples(U64), U64, U64, st.integers(0, 2**16 - 1)),
    )
)
def test_manifest_decoder_follows_the_spec_for_any_bytes(data):
    if isinstance(data, Manifest):
        data = encode_manifest(data)
    ok_magic = len(data) >= 44 and data.startswith(MANIFEST_MAGIC)
    try:
        m = decode_manifest(data)
    except FormatVersionError as exc:
        assert ok_magic and exc.version == struct.unpack_from("<H", data, 8)[0] not in READ_VERSIONS
        return
    except CorruptionError:
        if ok_magic:
            assert struct.unpack_from("<H", data, 8)[0] in READ_VERSIONS
            count = struct.unpack_from("<I", data, 36)[0]
            size = 40 + 8 * count
            assert len(data) != size + 4 or zlib.crc32(data[:size]) != struct.unpack_from("<I", data, size)[0]
        return
    assert ok_magic
    _, _, kind, generation, seq_floor, bt_floor, count = struct.unpack_from("<8sHHQQQI", data)
    assert len(data) == 44 + 8 * count
    assert m == Manifest(generation, struct.unpack_from(f"<{count}Q", data, 40), seq_floor, bt_floor, kind)
    again = encode_manifest(m)  # (a version-1 manifest is written back as this version)
    assert again == data if struct.unpack_from("<H", data, 8)[0] == FORMAT_VERSION else again[10:-4] == data[10:-4]


def test_manifest_with_a_huge_count_is_refused_without_reading_it():
    for count in (2**32 - 1, 2**31, 10**9):
        body = struct.pack("<8sHHQQQI", MANIFEST_MAGIC, FORMAT_VERSION, 0, 1, 0, 0, count) + bytes(8)
        for data in (body + struct.pack("<I", zlib.crc32(body)), body):
            try:
                decode_manifest(data)
            except CorruptionError:
                continue
            raise AssertionError(f"count {count} accepted")


def test_a_resync_reads_each_byte_a_bounded_number_of_times(monkeypatch):
    # Crafted headers whose checksums hold and whose lengths all run to the end, after
    # one bad byte: a search that looked past each of them would checksum the rest of
    # the buffer once per header (quadratic); stopping at the first is linear.

    n, pad = 1000, 64
    size = 1 + n * fmt.HEADER_SIZE + pad

    def header(i: int) -> bytes:  # header i's frame ends exactly at the end of the buffer
        value_len = size - (1 + i * fmt.HEADER_SIZE) - fmt.HEADER_SIZE - 1
        return encode_frame(OP_SET, 0, 1, 1, b"k", bytes(value_len), salt=SALT)[: fmt.HEADER_SIZE]

    buf = b"\x00" + b"".join(header(i) for i in range(n)) + bytes(pad)
    assert len(buf) == size
    checked = []

    class CountingZlib:
        @staticmethod
        def crc32(data, value=0):
            checked.append(len(data))
            return zlib.crc32(data, value)

    monkeypatch.setattr(fmt, "zlib", CountingZlib)
    scan = fmt.PyScan(buf, SALT)  # (the Python walk: the C one's CRCs are not counted here)
    assert list(scan) == [] and scan.end == 0 and scan.damage == []  # all of it is a torn tail
    assert sum(checked) <= 4 * len(buf)


# --- keys and values: hostile msgpack, deep nesting, forged frames in a store ------------------
#
# The same promise one level up (docs/DESIGN.md, "Keys and values"): whatever the bytes of
# a key or value, decoding gives what encode_key / the serializer wrote, or CorruptionError;
# no other exception, no crash, bounded memory. Values nested past the limits are refused
# with TypeError on encode. Forged frames carry the store's salt (read from the segment
# header, docs/FORMAT.md), so the checksums hold and only the payload is hostile.

HUGE = st.sampled_from([2**16 - 1, 2**31, 2**32 - 1])
VALUES_SMALL = st.recursive(
    st.one_of(st.none(), st.integers(-5, 300), st.text(max_size=5), st.binary(max_size=5)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.lists(inner, max_size=3).map(tuple)),
    max_leaves=6,
)


def packed_header(kind: str, length: int) -> bytes:
    """The msgpack header of a container or string of ``length`` (its widest form, so it may lie)."""
    code = {"array": 0xDD, "map": 0xDF, "str": 0xDB, "bin": 0xC6, "ext": 0xC9}[kind]
    return bytes([code]) + length.to_bytes(4, "big") + (b"\x01" if kind == "ext" else b"")


def tuple_levels(depth: int, leaf: bytes = b"\x90") -> bytes:
    """msgpack of ``depth`` tuples (ext 1) nested in each other around ``leaf``."""
    data = leaf
    for _ in range(depth):
        body = b"\x91" + data
        data = b"\xc9" + len(body).to_bytes(4, "big") + b"\x01" + body
    return data


@st.composite
def hostile_msgpack(draw) -> bytes:
    """msgpack that lies: huge lengths, deep arrays and maps, deep or bad ext, bad UTF-8, trailing bytes."""
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.binary(max_size=60))
    if kind == 1:  # a length far beyond the bytes that follow
        return packed_header(draw(st.sampled_from(["array", "map", "str", "bin", "ext"])), draw(HUGE)) + draw(
            st.binary(max_size=8)
        )
    if kind == 2:  # lists or maps nested around a leaf
        opener = draw(st.sampled_from([b"\x91", b"\x81\x01", b"\x92\x90"]))
        return opener * draw(st.sampled_from([50, 101, 600, 1100, 5000])) + draw(
            st.sampled_from([b"\xc0", b"", b"\x01"])
        )
    if kind == 3:  # tuples nested around a leaf (each a nested unpack)
        return tuple_levels(
            draw(st.sampled_from([1, 16, 17, 32, 33, 200, 3000])), draw(st.sampled_from([b"\x90", b"\xc1", b""]))
        )
    if kind == 4:  # an ext of any code with any data
        data = draw(st.binary(max_size=12))
        return b"\xc7" + bytes([len(data), draw(st.integers(0, 255))]) + data
    if kind == 5:  # invalid UTF-8 in a str
        body = draw(st.binary(min_size=1, max_size=10)) + b"\xff"
        return bytes([0xA0 | len(body)]) + body
    if kind == 6:  # a valid value with bytes after it, or cut short
        good = msgpack.packb(draw(st.lists(st.integers(0, 300), max_size=5)), use_bin_type=True)
        return good + draw(st.binary(min_size=1, max_size=4)) if draw(st.booleans()) else good[:-1]
    if kind == 7:  # unhashable or odd map keys
        return (
            b"\x81" + draw(st.sampled_from([b"\x90", b"\x80", b"\xc0", b"\xcb" + bytes(8), tuple_levels(1)])) + b"\x01"
        )
    if kind == 8:  # a valid key or value, written the long way
        return draw(st.sampled_from([b"\xd9\x01a", b"\xda\x00\x01a", b"\xcc\x05", b"\xd3" + bytes(8), b"\xc5\x00\x00"]))
    return b"".join(draw(st.lists(hostile_msgpack(), min_size=1, max_size=3)))


@st.composite
def lz4_blocks(draw) -> bytes:
    """lz4 blocks that lie: a hostile payload compressed, its size prefix kept or replaced."""
    inner = draw(hostile_msgpack())
    if draw(st.booleans()):
        inner = packed_header("array", 2**20) + b"\x90" * (2**20)  # a million empty arrays (a bomb)
    block = lz4.block.compress(inner, store_size=True)
    if draw(st.booleans()):
        block = COUNT.pack(draw(st.one_of(U32, st.integers(0, 64)))) + block[4:]
    return block


def check_key_bytes(data: bytes) -> None:
    """decode_key gives the key these bytes encode (and nothing else does) or CorruptionError."""
    try:
        key = decode_key(data)
    except CorruptionError:
        return
    assert encode_key(key) == data


def check_value_bytes(flags: int, stored: bytes) -> None:
    """A msgpack value decodes (to a value that round-trips) or is CorruptionError; never more
    than LZ4_MAX_EXPANSION times the stored bytes is decompressed, and past lz4_bound only with
    a budget of containers."""
    ser = Serializer("msgpack")
    try:
        value = ser.decode(flags & FLAG_LZ4, stored)
    except CorruptionError:
        return
    if flags & FLAG_LZ4:
        unpacked = stored_value(FLAG_LZ4, stored)
        assert len(unpacked) <= LZ4_MAX_EXPANSION * len(stored)
        if len(unpacked) > lz4_bound(len(stored)):
            assert containers_in(value) <= len(unpacked) // CONTAINER_BYTES + 1
    try:
        again = ser.dumps(value)
    except TypeError:  # a forged value deeper than the encoder allows (read in bounded C stack)
        assert depth_of(value) > MAX_DEPTH
        return
    assert same(ser.loads(0, again), value)


def depth_of(value, tuples: bool = False) -> int:
    """How deep lists, dicts and tuples (or tuples only) nest in ``value`` (without recursion)."""
    deepest, todo = 0, [(value, 0)]
    while todo:
        part, depth = todo.pop()
        kind = type(part)
        if kind in (list, dict, tuple):
            depth += kind is tuple or not tuples
            deepest = max(deepest, depth)
            todo.extend((child, depth) for child in ([*part, *part.values()] if kind is dict else part))
    return deepest


@st.composite
def nested_values(draw):
    """A value with a random mix of lists, dicts and tuples nested up to ~150 deep, with siblings."""
    value = draw(st.sampled_from([None, 1, "leaf", b"x" * 40]))
    for _ in range(draw(st.integers(0, 150))):
        wrap = draw(st.integers(0, 3))
        sibling = draw(st.sampled_from([0, "s", b"b", 2.5]))
        value = [value, sibling] if wrap == 0 else {"k": value} if wrap == 1 else (value,) if wrap == 2 else [value]
    return value


@SOME
@given(
    data=st.one_of(hostile_msgpack(), st.builds(encode_key, st.text(max_size=40) | st.integers(-(2**63), 2**64 - 1)))
)
def test_hostile_key_bytes_decode_to_their_key_or_raise_corruption_error(data):
    check_key_bytes(data)


@SOME
@given(payload=st.one_of(hostile_msgpack(), lz4_blocks()), flags=st.sampled_from([0, FLAG_LZ4]))
def test_hostile_value_bytes_decode_or_raise_corruption_error(payload, flags):
    check_value_bytes(flags, payload)


@SOME
@given(value=nested_values())
def test_nested_values_round_trip_or_are_refused_with_type_error_by_their_depth(value):
    ser = Serializer("msgpack")
    too_deep = depth_of(value) > MAX_DEPTH or depth_of(value, tuples=True) > MAX_TUPLE_DEPTH
    try:
        data = ser.dumps(value)
    except TypeError:
        assert too_deep
        return
    assert not too_deep and same(ser.loads(0, data), value)


def check_forged_store(path: str, frames: list[tuple[int, int, bytes, bytes]]) -> None:
    """Append forged frames (op, flags, key, value) to a store made here, then open it and read
    everything: each step gives its result or an IODictLogError."""
    with IODict(path) as d:
        d["good"] = [1, (2, "three")]
    last = sorted(name for name in os.listdir(path) if name.endswith(".seg"))[-1]
    with open(os.path.join(path, last), "rb+") as f:
        salt = decode_segment_header(f.read(SEGMENT_HEADER_SIZE))[1]
        f.seek(0, os.SEEK_END)
        for n, (op, flags, key, value) in enumerate(frames):
            f.write(encode_frame(op, flags, 1000 + n, 2**62 + n, key, value, salt=salt))
    try:
        with IODict(path) as d:
            for key in list(d):
                try:
                    d[key]
                except IODictLogError:
                    pass
            try:
                list(d.records())
            except IODictLogError:
                pass
    except IODictLogError:
        pass


@settings(max_examples=60, deadline=None)
@given(
    frames=st.lists(
        st.tuples(
            st.sampled_from([OP_SET, OP_SET, OP_DELETE]),
            st.sampled_from([0, FLAG_LZ4]),
            st.one_of(st.builds(encode_key, st.text(max_size=8)), hostile_msgpack()),
            st.one_of(
                hostile_msgpack(), lz4_blocks(), st.builds(lambda v: Serializer("msgpack").dumps(v), VALUES_SMALL)
            ),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_a_store_with_forged_hostile_keys_and_values_opens_and_reads_or_raises_iodictlog_error(frames):
    with tempfile.TemporaryDirectory() as tmp:
        check_forged_store(os.path.join(tmp, "s"), frames)


def containers_in(value) -> int:
    """How many lists, dicts and tuples ``value`` holds, itself included (without recursion)."""
    count, todo = 0, [value]
    while todo:
        part = todo.pop()
        kind = type(part)
        if kind in (list, dict, tuple):
            count += 1
            todo.extend([*part, *part.values()] if kind is dict else part)
    return count


# --- hint payloads ----------------------------------------------------------------------------


HINT_KEYS = st.one_of(
    st.text(max_size=8),
    st.binary(max_size=8),
    st.integers(-(2**63), 2**64 - 1),
    st.tuples(st.text(max_size=3), st.integers(0, 9)),
)


def check_hint_payload(payload: bytes, sizes: list[int]) -> None:
    """An index snapshot restores to locations inside the covered ``sizes``, keys in
    birthtime order, or is refused with ValueError (the log then scans); nothing else."""
    index = KeyIndex(decode_key)
    try:
        index.restore(payload, sizes)
    except ValueError:
        assert len(index) == 0
        return
    births = []
    for _, loc in index.items():
        slot, offset, length = unpack_location(loc)
        assert slot < len(sizes) and offset + length <= sizes[slot] and length >= HEADER_SIZE
        births.append(location_birthtime(loc))
    assert births == sorted(set(births))


def hint_payload_like(keys: list, lengths: list[int], sizes: list[int], flips: list[int]) -> bytes:
    """A valid snapshot of ``keys`` laid out in ``sizes``, then with bits flipped."""
    locations, offset = [], SEGMENT_HEADER_SIZE
    for n, length in enumerate(lengths[: len(keys)]):
        locations.append(pack_location(1000 * (n + 1), 0, offset, length))
        offset += length
    payload = encode_index(keys[: len(locations)], locations, 0)
    for bit in flips:
        payload = flip(payload, bit % (len(payload) * 8))
    return payload


@against_both
@SOME
@given(
    keys=st.lists(HINT_KEYS, max_size=6, unique_by=encode_key),
    lengths=st.lists(st.integers(0, 300), max_size=6),
    sizes=st.lists(st.integers(0, 2000), min_size=1, max_size=3),
    flips=st.lists(st.integers(0), max_size=3),
    raw=st.one_of(st.none(), st.binary(max_size=200)),
)
def test_a_hint_payload_restores_inside_its_segments_or_is_refused(keys, lengths, sizes, flips, raw):
    check_hint_payload(raw if raw is not None else hint_payload_like(keys, lengths, sizes, flips), sizes)


def check_forged_hint_store(path: str, payload: bytes) -> None:
    """A store whose HINT carries ``payload`` under valid checksums and coverage opens and
    reads (what a forged hint says is the forger's, SECURITY.md) or raises IODictLogError."""
    with IODict(path) as d:
        d.update((f"k{i}", i) for i in range(5))
        d.compact()  # (writes a hint)
    hint_path = os.path.join(path, HINT_NAME)
    with open(hint_path, "rb") as f:
        hint = decode_hint(f.read())
    assert hint is not None
    with open(hint_path, "wb") as f:
        f.write(encode_hint(hint._replace(payload=payload)))
    try:
        with IODict(path) as d:
            for key in list(d):
                try:
                    d[key]
                except (IODictLogError, KeyError):
                    pass
    except IODictLogError:
        pass


@settings(max_examples=40, deadline=None)
@given(
    keys=st.lists(HINT_KEYS, max_size=6, unique_by=encode_key),
    lengths=st.lists(st.integers(0, 300), max_size=6),
    flips=st.lists(st.integers(0), max_size=3),
)
def test_a_store_with_a_forged_hint_opens_or_raises_iodictlogerror(keys, lengths, flips):
    with tempfile.TemporaryDirectory() as tmp:
        check_forged_hint_store(os.path.join(tmp, "s"), hint_payload_like(keys, lengths, [2000], flips))
