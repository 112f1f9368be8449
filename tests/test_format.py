"""The on-disk format: frames, the Scan over a buffer of frames, segment headers, the manifest.

Every decoder here is a pure function over bytes, so the damage tests are exhaustive
where the input is small (every bit flip, every cut point) and use hypothesis elsewhere.
"""

from __future__ import annotations

import random
import struct
import zlib

import pytest
from helpers import SALT, flip
from hypothesis import given, settings
from hypothesis import strategies as st

from iodict_log.errors import CorruptionError, FormatVersionError, IODictLogError
from iodict_log.format import (
    COMPRESS_MIN,
    COUNT,
    FLAG_BATCH,
    FLAG_LZ4,
    FLAG_PICKLE,
    FORMAT_VERSION,
    HEADER_SIZE,
    KIND_COMPACTED,
    KIND_LOG,
    KNOWN_FLAGS,
    KNOWN_OPS,
    MAX_SEQ,
    OP_BATCH_BEGIN,
    OP_BATCH_COMMIT,
    OP_DELETE,
    OP_SEAL,
    OP_SET,
    SEGMENT_HEADER_SIZE,
    SEGMENT_MAGIC,
    SYNC,
    Damage,
    Frame,
    Manifest,
    Scan,
    compress_value,
    decode_frame,
    decode_manifest,
    decode_segment_header,
    encode_frame,
    encode_manifest,
    encode_segment_header,
    frame_value,
    header_length,
    stored_value,
)

SETTINGS = settings(max_examples=200, deadline=None)
FEW = settings(max_examples=40, deadline=None)

U64 = st.integers(0, 2**64 - 1)

# Byte offsets of the header fields (see the layout in iodict_log/format.py).
KEY_LEN_AT = 12
VALUE_LEN_AT = 16


# --- helpers ----------------------------------------------------------------


def rec(seq: int, key: bytes = b"k", value: bytes = b"v", op: int = OP_SET, flags: int = 0) -> bytes:
    return encode_frame(op, flags, seq, 1000 + seq, key, value, salt=SALT)


def begin(count: int, seq: int = 0) -> bytes:
    return encode_frame(OP_BATCH_BEGIN, 0, seq, 0, b"", COUNT.pack(count), salt=SALT)


def commit(seq: int = 0) -> bytes:
    return encode_frame(OP_BATCH_COMMIT, 0, seq, 0, b"", b"", salt=SALT)


def batch(*members: bytes) -> list[bytes]:
    """A whole batch unit: BEGIN, the members (already flagged FLAG_BATCH), COMMIT."""
    return [begin(len(members)), *members, commit()]


def member(seq: int, key: bytes = b"k", value: bytes = b"v", op: int = OP_SET) -> bytes:
    return rec(seq, key, value, op=op, flags=FLAG_BATCH)


class Layout:
    """Units (a standalone frame, or a whole batch) laid out in one buffer, with offsets."""

    def __init__(self, units: list[list[bytes]], prefix: bytes = b"") -> None:
        self.units = units
        self.prefix = prefix
        self.frame_spans: list[tuple[int, int, int]] = []  # (unit index, start, stop) of every frame
        self.unit_spans: list[tuple[int, int]] = []
        parts = [prefix]
        pos = len(prefix)
        for i, unit in enumerate(units):
            unit_start = pos
            for raw in unit:
                self.frame_spans.append((i, pos, pos + len(raw)))
                parts.append(raw)
                pos += len(raw)
            self.unit_spans.append((unit_start, pos))
        self.buf = b"".join(parts)

    def yielded_by(self, i: int) -> list[Frame]:
        """The frames a Scan should yield for unit ``i`` when it is intact."""
        start, stop = self.unit_spans[i]
        frames = []
        pos = start
        while pos < stop:
            frame = decode_frame(self.buf, pos, SALT)
            assert frame is not None
            frames.append(frame)
            pos += frame.length
        if frames[0].op == OP_BATCH_BEGIN:
            return frames[1:-1]
        return frames

    def expected(self, skip: set[int] = frozenset(), upto: int | None = None) -> list[Frame]:
        units = range(len(self.units) if upto is None else upto)
        return [f for i in units if i not in skip for f in self.yielded_by(i)]

    def unit_of_bit(self, bit: int) -> tuple[int, int, int]:
        """(unit index, frame start, frame stop) of the frame holding ``bit``."""
        byte = bit // 8
        for unit, start, stop in self.frame_spans:
            if start <= byte < stop:
                return unit, start, stop
        raise AssertionError(f"bit {bit} is outside every frame")


def scan(buf: bytes, start: int = 0) -> tuple[list[Frame], Scan]:
    s = Scan(buf, SALT, start)
    return list(s), s


def check_scan_invariants(buf: bytes, frames: list[Frame], s: Scan, start: int = 0) -> None:
    """What holds for any buffer: yielded frames verify, lie before ``end``, regions are in range."""
    assert start <= s.end <= len(buf)
    assert s.tail == len(buf) - s.end
    for frame in frames:
        assert decode_frame(buf, frame.offset, SALT) == frame
        assert frame.offset + frame.length <= s.end
        assert frame.op in (OP_SET, OP_DELETE, OP_SEAL)
    offsets = [f.offset for f in frames]
    assert offsets == sorted(set(offsets))
    for damage in s.damage:
        assert start <= damage.offset and damage.offset + damage.length <= len(buf)
        assert damage.length > 0


# --- frames -----------------------------------------------------------------

ops = st.sampled_from(sorted(KNOWN_OPS))
flag_sets = st.sets(st.sampled_from([FLAG_LZ4, FLAG_PICKLE, FLAG_BATCH])).map(lambda s: sum(s))


@SETTINGS
@given(
    op=ops,
    flags=flag_sets,
    seq=st.integers(0, MAX_SEQ),
    birthtime=st.integers(0, MAX_SEQ),
    key=st.binary(max_size=64),
    value=st.binary(max_size=512),
    prefix=st.binary(max_size=16),
)
def test_frame_round_trips_at_any_offset(op, flags, seq, birthtime, key, value, prefix):
    raw = encode_frame(op, flags, seq, birthtime, key, value, salt=SALT)
    assert len(raw) == HEADER_SIZE + len(key) + len(value)
    assert raw.startswith(SYNC)
    buf = prefix + raw + b"trailing bytes are not part of the frame"
    frame = decode_frame(buf, len(prefix), SALT)
    assert frame == Frame(len(prefix), len(raw), op, flags, seq, birthtime, key, value)
    assert type(frame.key) is bytes and type(frame.value) is bytes


@pytest.mark.parametrize("field", ["seq", "birthtime"])
@pytest.mark.parametrize("value", [MAX_SEQ + 1, 2**64 - 1])
def test_frame_with_a_seq_or_birthtime_of_2_63_or_more_is_not_valid(field, value):
    # Guards 21.8: such a frame opened, then every write overflowed its u64 field.
    fields = {"seq": 1, "birthtime": 1, field: value}
    raw = encode_frame(OP_SET, 0, fields["seq"], fields["birthtime"], b"k", b"v", salt=SALT)
    assert decode_frame(raw, 0, SALT) is None and frame_value(raw, SALT) is None
    scan = Scan(raw + encode_frame(OP_SET, 0, 2, 2, b"k2", b"v", salt=SALT), SALT)
    assert [f.key for f in scan] == [b"k2"] and [d.length for d in scan.damage] == [len(raw)]
    edge = encode_frame(OP_SET, 0, MAX_SEQ, MAX_SEQ, b"k", b"v", salt=SALT)
    assert decode_frame(edge, 0, SALT) is not None


def test_frame_with_unknown_op_or_flag_is_not_decoded():
    assert decode_frame(encode_frame(99, 0, 1, 1, b"k", b"v", salt=SALT), 0, SALT) is None
    assert decode_frame(encode_frame(OP_SET, 0x80, 1, 1, b"k", b"v", salt=SALT), 0, SALT) is None
    assert decode_frame(encode_frame(OP_SET, KNOWN_FLAGS, 1, 1, b"k", b"v", salt=SALT), 0, SALT) is not None


SMALL_FRAMES = {
    "set": encode_frame(OP_SET, FLAG_LZ4, 7, 123456789, b"key", b"value", salt=SALT),
    "empty-key-and-value": encode_frame(OP_DELETE, 0, 0, 0, b"", b"", salt=SALT),
    "batch-begin": begin(3, seq=5),
}


@pytest.mark.parametrize("name", sorted(SMALL_FRAMES))
def test_every_single_bit_flip_in_a_frame_is_detected(name):
    raw = SMALL_FRAMES[name]
    assert decode_frame(raw, 0, SALT) is not None
    for bit in range(len(raw) * 8):
        assert decode_frame(flip(raw, bit), 0, SALT) is None, f"bit {bit} flipped and the frame still decoded"


@pytest.mark.parametrize("name", sorted(SMALL_FRAMES))
def test_every_truncation_of_a_frame_is_not_decoded(name):
    raw = SMALL_FRAMES[name]
    for cut in range(len(raw)):
        assert decode_frame(raw[:cut], 0, SALT) is None, f"frame cut to {cut} bytes still decoded"


def test_decode_frame_past_the_end_of_the_buffer_is_none():
    raw = rec(1)
    assert decode_frame(raw, len(raw), SALT) is None
    assert decode_frame(raw, len(raw) + 100, SALT) is None
    assert decode_frame(b"", 0, SALT) is None


# --- value compression --------------------------------------------------------


@SETTINGS
@given(value=st.one_of(st.binary(max_size=2048), st.binary(max_size=8).map(lambda b: b * 300)))
def test_compress_value_only_when_it_saves_space_and_stored_value_undoes_it(value):
    flags, stored = compress_value(value)
    assert flags in (0, FLAG_LZ4)
    if flags:
        assert len(value) >= COMPRESS_MIN
        assert len(stored) < len(value)
    else:
        assert stored == value
    assert stored_value(flags, stored) == value


def test_compressible_value_is_compressed_and_short_value_never_is():
    long = b"abcd" * 1000
    flags, stored = compress_value(long)
    assert flags == FLAG_LZ4 and len(stored) < len(long)
    short = b"a" * (COMPRESS_MIN - 1)
    assert compress_value(short) == (0, short)


def test_incompressible_value_is_stored_as_is():
    value = random.Random(0).randbytes(4096)  # random bytes: lz4 cannot shrink them
    assert compress_value(value) == (0, value)


def test_stored_value_without_lz4_flag_is_returned_unchanged():
    assert stored_value(0, b"\x00\x01 not lz4") == b"\x00\x01 not lz4"
    assert stored_value(FLAG_PICKLE | FLAG_BATCH, b"raw") == b"raw"


LZ4_SAMPLE = b"hello world, " * 100


def _lz4_damages() -> dict[str, bytes]:
    flags, packed = compress_value(LZ4_SAMPLE)
    assert flags == FLAG_LZ4
    (size,) = struct.unpack_from("<I", packed)
    body = packed[4:]
    return {
        "truncated-by-5": packed[:-5],
        "only-size-prefix": packed[:4],
        "shorter-than-size-prefix": packed[:3],
        "empty": b"",
        "size-prefix-one-too-big": struct.pack("<I", size + 1) + body,
        "size-prefix-one-too-small": struct.pack("<I", size - 1) + body,
        "size-prefix-top-bit-flipped": struct.pack("<I", size | 0x80000000) + body,
        "body-all-ff": packed[:4] + b"\xff" * len(body),
    }


@pytest.mark.parametrize("damage", sorted(_lz4_damages()))
def test_damaged_lz4_block_raises_corruption_error(damage):
    with pytest.raises(CorruptionError):
        stored_value(FLAG_LZ4, _lz4_damages()[damage])


def test_lz4_block_truncated_anywhere_raises_corruption_error():
    _, packed = compress_value(LZ4_SAMPLE)
    for cut in range(len(packed)):
        with pytest.raises(CorruptionError):
            stored_value(FLAG_LZ4, packed[:cut])


# --- Scan: clean buffers ------------------------------------------------------


def test_scan_of_empty_buffer_yields_nothing():
    frames, s = scan(b"")
    assert frames == [] and s.end == 0 and s.tail == 0 and s.damage == []


@pytest.mark.parametrize("n", [1, 2, 10, 100])
def test_scan_of_clean_buffer_yields_every_frame(n):
    layout = Layout([[rec(i, key=b"key%d" % i, value=b"v" * i)] for i in range(n)])
    frames, s = scan(layout.buf)
    assert frames == layout.expected()
    assert [f.seq for f in frames] == list(range(n))
    assert s.end == len(layout.buf) and s.tail == 0 and s.damage == []


def test_scan_yields_sets_deletes_and_seals_in_order():
    layout = Layout([[rec(1)], [rec(2, op=OP_DELETE, value=b"")], [rec(3, op=OP_SEAL, key=b"", value=b"")]])
    frames, s = scan(layout.buf)
    assert [f.op for f in frames] == [OP_SET, OP_DELETE, OP_SEAL]
    assert s.end == len(layout.buf)


def test_scan_from_start_offset_skips_the_segment_header():
    header = encode_segment_header(KIND_LOG, SALT)
    layout = Layout([[rec(1)], [rec(2)]], prefix=header)
    frames, s = scan(layout.buf, SEGMENT_HEADER_SIZE)
    assert frames == layout.expected()
    assert s.end == len(layout.buf) and s.damage == []
    frames, s = scan(header, SEGMENT_HEADER_SIZE)
    assert frames == [] and s.end == SEGMENT_HEADER_SIZE and s.tail == 0


def test_scan_does_not_resync_inside_an_intact_frame_whose_value_holds_a_frame():
    inner = rec(99, key=b"phantom", value=b"never written")
    layout = Layout([[rec(1)], [rec(2, value=SYNC + inner + SYNC)], [rec(3, key=SYNC, value=inner)]])
    frames, s = scan(layout.buf)
    assert frames == layout.expected()
    assert s.damage == [] and s.end == len(layout.buf)


# --- Scan: damage in the middle -----------------------------------------------


def _five_frames() -> Layout:
    return Layout([[rec(i, key=b"key%d" % i, value=b"value %d" % i)] for i in range(5)])


def test_frame_damaged_in_its_payload_is_skipped_and_reported_once():
    layout = _five_frames()
    _, start, stop = layout.frame_spans[2]
    buf = flip(layout.buf, (stop - 1) * 8)  # last byte of the value
    frames, s = scan(buf)
    assert frames == layout.expected(skip={2})
    assert len(s.damage) == 1
    assert (s.damage[0].offset, s.damage[0].length) == (start, stop - start)
    assert s.end == len(buf)


def test_every_bit_flip_in_a_middle_frame_loses_only_that_frame():
    layout = _five_frames()
    _, start, stop = layout.frame_spans[2]
    for bit in range(start * 8, stop * 8):
        frames, s = scan(flip(layout.buf, bit))
        assert frames == layout.expected(skip={2}), f"bit {bit}"
        assert len(s.damage) == 1 and s.damage[0].offset == start, f"bit {bit}: {s.damage}"
        assert s.end == len(layout.buf)


@pytest.mark.parametrize("field_at", [KEY_LEN_AT, VALUE_LEN_AT], ids=["key_len", "value_len"])
def test_damaged_length_field_is_not_trusted(field_at):
    layout = _five_frames()
    _, start, stop = layout.frame_spans[1]
    for bit in range((start + field_at) * 8, (start + field_at + 4) * 8):
        frames, s = scan(flip(layout.buf, bit))
        assert frames == layout.expected(skip={1}), f"bit {bit}"
        assert [(d.offset, d.length) for d in s.damage] == [(start, stop - start)], f"bit {bit}"
        assert s.end == len(layout.buf)


def test_huge_damaged_length_does_not_swallow_the_rest_of_the_buffer():
    layout = _five_frames()
    _, start, _ = layout.frame_spans[0]
    buf = bytearray(layout.buf)
    buf[start + VALUE_LEN_AT + 3] ^= 0x80  # value_len now claims ~2 GB
    frames, s = scan(bytes(buf))
    assert frames == layout.expected(skip={0})
    assert s.end == len(buf)


@SETTINGS
@given(prefix=st.binary(min_size=1, max_size=200))
def test_frames_after_a_garbage_prefix_are_exactly_the_real_ones(prefix):
    layout = Layout([[rec(i, value=b"v%d" % i)] for i in range(3)], prefix=prefix)
    frames, s = scan(layout.buf)
    assert frames == layout.expected()
    assert s.end == len(layout.buf)


def test_frames_after_a_prefix_of_sync_bytes_are_exactly_the_real_ones():
    for prefix in (SYNC, SYNC * 50, b"\xd1", b"\x0c" + SYNC * 3 + b"\xd1", SYNC + bytes(HEADER_SIZE)):
        layout = Layout([[rec(1)], [rec(2)]], prefix=prefix)
        frames, s = scan(layout.buf)
        assert frames == layout.expected(), prefix
        assert s.end == len(layout.buf)


# --- Scan: torn tails -------------------------------------------------------


def test_every_cut_in_the_last_frames_yields_only_the_whole_frames_before_it():
    layout = Layout([[rec(i, key=b"k%d" % i, value=b"x" * (3 * i))] for i in range(6)])
    first_cut = layout.unit_spans[3][0]
    for cut in range(first_cut, len(layout.buf) + 1):
        whole = [i for i, (_, stop) in enumerate(layout.unit_spans) if stop <= cut]
        frames, s = scan(layout.buf[:cut])
        assert frames == layout.expected(upto=len(whole)), f"cut {cut}"
        assert s.end == layout.unit_spans[whole[-1]][1], f"cut {cut}"
        assert s.tail == cut - s.end
        assert s.damage == [], f"cut {cut}: a torn tail is not damage"


def test_torn_frame_whose_value_embeds_a_frame_yields_no_phantom_record():
    # A value may legitimately contain the bytes of a frame (say, a backup of another
    # store). When the append of that record is torn after the embedded frame, the scan
    # must still treat the partial record as a tail: not yield the embedded frame as a
    # record that was never written, nor move ``end`` past the torn record's start.
    inner = rec(99, key=b"admin", value=b"never written")
    layout = Layout([[rec(1)], [rec(2, value=b"x" * 10 + inner + b"y" * 10)]])
    torn_at = layout.unit_spans[1][0]
    for cut in range(torn_at, len(layout.buf)):
        frames, s = scan(layout.buf[:cut])
        assert [f.seq for f in frames] == [1], f"cut {cut}: yielded {[(f.seq, f.key) for f in frames]}"
        assert s.end == torn_at, f"cut {cut}"


# --- Scan: batches ----------------------------------------------------------


def _with_batch() -> Layout:
    return Layout(
        [
            [rec(1, key=b"a")],
            batch(member(2, key=b"b1"), member(3, key=b"b2", op=OP_DELETE, value=b""), member(4, key=b"b3")),
            [rec(5, key=b"c")],
        ]
    )


def test_complete_batch_yields_its_records_in_order():
    layout = _with_batch()
    frames, s = scan(layout.buf)
    assert [f.seq for f in frames] == [1, 2, 3, 4, 5]
    assert frames == layout.expected()
    assert s.end == len(layout.buf) and s.damage == []
    assert all(f.flags & FLAG_BATCH for f in frames[1:4])


def test_empty_batch_yields_nothing_and_is_not_damage():
    layout = Layout([[rec(1)], [begin(0), commit()], [rec(2)]])
    frames, s = scan(layout.buf)
    assert [f.seq for f in frames] == [1, 2]
    assert s.end == len(layout.buf) and s.damage == []


def test_batch_cut_anywhere_before_its_commit_yields_nothing_of_it():
    layout = Layout([[rec(1)], batch(member(2), member(3), member(4))])
    batch_start, batch_stop = layout.unit_spans[1]
    for cut in range(batch_start, batch_stop):
        frames, s = scan(layout.buf[:cut])
        assert [f.seq for f in frames] == [1], f"cut {cut}"
        assert s.end == batch_start, f"cut {cut}"
        assert s.tail == cut - batch_start
    frames, s = scan(layout.buf)
    assert [f.seq for f in frames] == [1, 2, 3, 4] and s.end == batch_stop


def test_unfinished_batch_with_a_damaged_member_keeps_end_before_begin():
    layout = Layout([[rec(1)], [begin(3), member(2), member(3), member(4)]])  # no COMMIT yet
    batch_start, _ = layout.unit_spans[1]
    _, start, stop = layout.frame_spans[2]  # the first member
    for bit in (start * 8, (stop - 1) * 8):
        frames, s = scan(flip(layout.buf, bit))
        assert [f.seq for f in frames] == [1]
        assert s.end == batch_start, f"bit {bit}: end moved into the unfinished batch"


def _frame_at(layout: Layout, offset: int) -> Frame:
    """The frame written at ``offset`` of the intact buffer."""
    frame = decode_frame(layout.buf, offset, SALT)
    assert frame is not None
    return frame


def test_every_bit_flip_in_a_batch_mid_buffer_loses_only_the_damaged_frame():
    layout = _with_batch()
    batch_start, batch_stop = layout.unit_spans[1]
    for bit in range(batch_start * 8, batch_stop * 8):
        _, start, stop = layout.unit_of_bit(bit)
        lost = _frame_at(layout, start)
        frames, s = scan(flip(layout.buf, bit))
        lost_seqs = {lost.seq} if lost.op in (OP_SET, OP_DELETE) else set()
        assert frames == [f for f in layout.expected() if f.offset != start], f"bit {bit}"
        assert [f.seq for f in frames] == [seq for seq in (1, 2, 3, 4, 5) if seq not in lost_seqs], f"bit {bit}"
        assert s.damage == [Damage(start, stop - start, "damaged frame")], f"bit {bit}: {s.damage}"
        assert s.end == len(layout.buf), f"bit {bit}"


def test_every_bit_flip_in_a_batch_at_the_end_of_the_buffer_loses_the_frame_or_holds_the_batch_back():
    # Only a damaged COMMIT leaves the members with nothing valid after them: then the
    # batch cannot be told from a torn append and is held back whole, as a tail.
    layout = Layout([[rec(1, key=b"a")], batch(member(2, key=b"b1"), member(3, key=b"b2"), member(4, key=b"b3"))])
    batch_start, batch_stop = layout.unit_spans[1]
    _, commit_start, _ = layout.frame_spans[-1]
    for bit in range(batch_start * 8, batch_stop * 8):
        _, start, stop = layout.unit_of_bit(bit)
        frames, s = scan(flip(layout.buf, bit))
        if start == commit_start:
            assert [f.seq for f in frames] == [1], f"bit {bit}"
            assert s.end == batch_start and s.tail == batch_stop - batch_start, f"bit {bit}"
            assert s.damage == [], f"bit {bit}: a held-back tail is not damage"
        else:
            assert frames == [f for f in layout.expected() if f.offset != start], f"bit {bit}"
            assert s.damage == [Damage(start, stop - start, "damaged frame")], f"bit {bit}: {s.damage}"
            assert s.end == len(layout.buf), f"bit {bit}"


def test_batch_with_damaged_member_mid_file_loses_only_that_member():
    layout = _with_batch()
    _, start, stop = layout.frame_spans[3]  # the second member
    buf = flip(layout.buf, (stop - 1) * 8)
    frames, s = scan(buf)
    assert [f.key for f in frames] == [b"a", b"b1", b"b3", b"c"]
    assert frames == [f for f in layout.expected() if f.offset != start]
    assert s.damage == [Damage(start, stop - start, "damaged frame")]
    assert s.end == len(buf)


@pytest.mark.parametrize("where", ["payload", "sync", "header"])
def test_batch_members_after_a_damaged_begin_are_held_back_until_something_valid_follows(where):
    def damaged_begin(layout: Layout) -> tuple[bytes, int, int]:
        _, start, stop = layout.frame_spans[1]  # BEGIN
        bit = {"payload": (stop - 1) * 8, "sync": start * 8, "header": (start + 10) * 8}[where]
        return flip(layout.buf, bit), start, stop

    # Mid-buffer: the COMMIT proves the batch whole; only the BEGIN is lost.
    layout = _with_batch()
    buf, start, stop = damaged_begin(layout)
    frames, s = scan(buf)
    assert [f.key for f in frames] == [b"a", b"b1", b"b2", b"b3", b"c"]
    assert frames == layout.expected()
    assert all(f.flags & FLAG_BATCH for f in frames[1:4])
    assert s.damage == [Damage(start, stop - start, "damaged frame")]
    assert s.end == len(buf)

    # At the end of the buffer, cut anywhere: the orphan members are a torn batch until
    # something valid follows them, and ``end`` stays before the first of them.
    layout = Layout([[rec(1, key=b"a")], batch(member(2, key=b"b1"), member(3, key=b"b2"), member(4, key=b"b3"))])
    buf, start, stop = damaged_begin(layout)
    _, first_start, first_stop = layout.frame_spans[2]
    assert first_start == stop
    for cut in range(start, len(buf)):
        frames, s = scan(buf[:cut])
        assert [f.seq for f in frames] == [1], f"cut {cut}: a torn batch with a damaged BEGIN was applied"
        if cut < first_stop:  # nothing valid after the BEGIN: all of it is tail
            assert s.end == start and s.damage == [], f"cut {cut}"
        else:
            assert s.end == first_start, f"cut {cut}"
            assert s.damage == [Damage(start, stop - start, "damaged frame")], f"cut {cut}"
    frames, s = scan(buf)
    assert frames == layout.expected()
    assert s.end == len(buf) and s.damage == [Damage(start, stop - start, "damaged frame")]


def test_orphan_batch_members_are_held_back_like_a_batch_and_a_stray_commit_is_ignored():
    cases = {
        # units: the seqs yielded, and which unit ``end`` stops before (None: the end of the buffer)
        "member then commit": ([[rec(1)], [member(2)], [commit()], [rec(3)]], [1, 2, 3], None),
        "member then record": ([[rec(1)], [member(2)], [rec(3)]], [1, 2, 3], None),
        "member then commit at the end": ([[rec(1)], [member(2)], [commit()]], [1, 2], None),
        "members at the end": ([[rec(1)], [member(2)], [member(3)]], [1], 1),
        "stray commit": ([[rec(1)], [commit()], [rec(3)]], [1, 3], None),
        "stray commit at the end": ([[rec(1)], [commit()]], [1], None),
        "stray commit first": ([[commit()], [rec(3)]], [3], None),
    }
    for name, (units, seqs, held_from) in cases.items():
        layout = Layout(units)
        frames, s = scan(layout.buf)
        assert [f.seq for f in frames] == seqs, name
        for frame in frames:
            assert frame == _frame_at(layout, frame.offset), name
        assert [f.flags & FLAG_BATCH != 0 for f in frames] == [seq == 2 for seq in seqs], name
        assert s.damage == [], f"{name}: {s.damage}"
        assert s.end == (len(layout.buf) if held_from is None else layout.unit_spans[held_from][0]), name


def test_batch_count_is_informational_so_a_mismatch_drops_nothing():
    for begin_count, members in ((2, 3), (4, 3), (0, 1), (3, 0), (2**32 - 1, 2)):
        units = [[rec(1)], [begin(begin_count), *(member(10 + i) for i in range(members)), commit()], [rec(2)]]
        layout = Layout(units)
        frames, s = scan(layout.buf)
        assert [f.seq for f in frames] == [1, *range(10, 10 + members), 2], (begin_count, members)
        assert frames == layout.expected(), (begin_count, members)
        assert s.damage == [] and s.end == len(layout.buf), (begin_count, members)
    # Nor does a count that matches prove a batch whole: without anything after its
    # members it is still an unfinished append.
    for begin_count in (0, 1, 2, 3):
        layout = Layout([[rec(1)], [begin(begin_count), member(2), member(3)]])
        frames, s = scan(layout.buf)
        assert [f.seq for f in frames] == [1], begin_count
        assert s.end == layout.unit_spans[1][0] and s.damage == [], begin_count


def test_batch_with_malformed_count_is_yielded_like_any_batch():
    for count_bytes in (b"", b"\x01\x00", b"\x01\x00\x00\x00\x00\x00\x00\x00"):
        bad_begin = encode_frame(OP_BATCH_BEGIN, 0, 0, 0, b"", count_bytes, salt=SALT)
        layout = Layout([[rec(1)], [bad_begin, member(2), commit()], [rec(3)]])
        frames, s = scan(layout.buf)
        assert [f.seq for f in frames] == [1, 2, 3], count_bytes
        assert frames == layout.expected(), count_bytes
        assert s.damage == [] and s.end == len(layout.buf), count_bytes
        torn = Layout([[rec(1)], [bad_begin, member(2)]])
        frames, s = scan(torn.buf)
        assert [f.seq for f in frames] == [1], count_bytes
        assert s.end == torn.unit_spans[1][0] and s.damage == [], count_bytes


def test_unflagged_record_inside_a_batch_releases_the_members_before_it_and_all_are_yielded_in_order():
    layout = Layout([[begin(2), member(1)], [rec(2)], [member(3)], [commit()]])
    frames, s = scan(layout.buf)
    assert [f.seq for f in frames] == [1, 2, 3]
    assert [f.flags & FLAG_BATCH != 0 for f in frames] == [True, False, True]
    assert all(f == _frame_at(layout, f.offset) for f in frames)
    assert s.damage == [] and s.end == len(layout.buf)
    # Without the COMMIT, the member after the record has nothing valid after it.
    frames, s = scan(layout.buf[: layout.unit_spans[3][0]])
    assert [f.seq for f in frames] == [1, 2]
    assert s.end == layout.unit_spans[2][0] and s.damage == []


def test_batch_interrupted_by_a_new_batch_is_kept_and_so_is_the_new_one():
    layout = Layout([[begin(2), member(1)], batch(member(2)), [rec(3)]])
    frames, s = scan(layout.buf)
    assert [f.seq for f in frames] == [1, 2, 3]
    assert all(f == _frame_at(layout, f.offset) for f in frames)
    assert s.damage == [] and s.end == len(layout.buf)
    # The new BEGIN proves the first batch whole even when the new batch is torn; until
    # that BEGIN is whole, nothing valid follows the first batch and it is held back too.
    second_begin, second_stop = layout.unit_spans[1]
    begin_stop = layout.frame_spans[2][2]
    for cut in range(second_begin, second_stop):
        frames, s = scan(layout.buf[:cut])
        if cut < begin_stop:
            assert frames == [] and s.end == 0, f"cut {cut}"
        else:
            assert [f.seq for f in frames] == [1] and s.end == second_begin, f"cut {cut}"
        assert s.damage == [], f"cut {cut}"


def test_scan_never_yields_a_batch_begin_or_commit_even_one_flagged_batch():
    # The Scan docstring: it yields "committed data frames and SEALs". No writer sets
    # FLAG_BATCH on a BEGIN or COMMIT, but any frame whose checksums hold is trusted,
    # and such a frame must not come out of the scan as if it were a record.
    for op, value in ((OP_BATCH_BEGIN, COUNT.pack(1)), (OP_BATCH_COMMIT, b"")):
        flagged = encode_frame(op, FLAG_BATCH, 9, 0, b"", value, salt=SALT)
        layout = Layout([[rec(1)], [flagged], [rec(2)]])
        frames, s = scan(layout.buf)
        assert [(f.op, f.seq) for f in frames] == [(OP_SET, 1), (OP_SET, 2)], op
        check_scan_invariants(layout.buf, frames, s)


# --- Scan: a model over random units, cuts and flips ------------------------------

unit_strategy = st.one_of(
    st.tuples(st.just("record"), st.sampled_from([OP_SET, OP_DELETE, OP_SEAL]), st.binary(max_size=40)),
    st.tuples(st.just("batch"), st.integers(0, 4), st.binary(max_size=40)),
)


def _build(spec: list[tuple]) -> Layout:
    units = []
    seq = 0
    for kind, arg, value in spec:
        if kind == "record":
            seq += 1
            units.append([rec(seq, key=b"k%d" % seq, value=value, op=arg)])
        else:
            members = []
            for _ in range(arg):
                seq += 1
                members.append(member(seq, key=b"k%d" % seq, value=value))
            units.append(batch(*members))
    return Layout(units)


@SETTINGS
@given(spec=st.lists(unit_strategy, min_size=1, max_size=8), data=st.data())
def test_scan_model_torn_anywhere_keeps_exactly_the_whole_units(spec, data):
    layout = _build(spec)
    cut = data.draw(st.integers(0, len(layout.buf)), label="cut")
    whole = [i for i, (_, stop) in enumerate(layout.unit_spans) if stop <= cut]
    frames, s = scan(layout.buf[:cut])
    assert frames == layout.expected(upto=len(whole))
    assert s.end == (layout.unit_spans[whole[-1]][1] if whole else 0)
    assert s.damage == []


def _model_after_damaging_frame(layout: Layout, damaged: int) -> tuple[list[Frame], int, list[Damage]]:
    """What a Scan must report when only frame number ``damaged`` is damaged: the units are
    single frames; a batch's members wait for any valid frame after them, and are held
    back (with ``end`` before the batch) only when the buffer ends first."""
    written = [_frame_at(layout, start) for _, start, _ in layout.frame_spans]
    lost = written[damaged]
    if damaged < len(written) - 1:  # something valid follows: only the damaged frame is lost
        survivors = [f for f in written if f is not lost and f.op not in (OP_BATCH_BEGIN, OP_BATCH_COMMIT)]
        return survivors, len(layout.buf), [Damage(lost.offset, lost.length, "damaged frame")]
    # The last frame: indistinguishable from a torn tail. If it is a batch's COMMIT the
    # batch's members have nothing valid after them and the whole batch is that tail.
    unit = layout.frame_spans[damaged][0]
    tail_start = layout.unit_spans[unit][0] if lost.op == OP_BATCH_COMMIT else lost.offset
    survivors = [f for f in written if f.offset < tail_start and f.op not in (OP_BATCH_BEGIN, OP_BATCH_COMMIT)]
    return survivors, tail_start, []


@SETTINGS
@given(spec=st.lists(unit_strategy, min_size=1, max_size=8), data=st.data())
def test_scan_model_single_bit_flip_loses_only_the_damaged_frame(spec, data):
    layout = _build(spec)
    bit = data.draw(st.integers(0, len(layout.buf) * 8 - 1), label="bit")
    damaged = next(i for i, (_, start, stop) in enumerate(layout.frame_spans) if start <= bit // 8 < stop)
    frames, s = scan(flip(layout.buf, bit))
    check_scan_invariants(layout.buf, frames, s)
    survivors, end, damage = _model_after_damaging_frame(layout, damaged)
    assert frames == survivors  # equal Frames: same offsets, same contents, as written
    assert s.end == end
    assert s.damage == damage


def test_scan_model_every_bit_flip_in_a_fixed_mix_of_units_loses_only_the_damaged_frame():
    spec = [
        ("record", OP_SET, b"first"),
        ("batch", 0, b""),
        ("batch", 2, b"two members"),
        ("record", OP_DELETE, b""),
        ("batch", 1, b"one"),
        ("record", OP_SEAL, b""),
        ("batch", 3, b"last batch"),
    ]
    layout = _build(spec)
    for bit in range(len(layout.buf) * 8):
        damaged = next(i for i, (_, start, stop) in enumerate(layout.frame_spans) if start <= bit // 8 < stop)
        frames, s = scan(flip(layout.buf, bit))
        survivors, end, damage = _model_after_damaging_frame(layout, damaged)
        assert frames == survivors, f"bit {bit}"
        assert (s.end, s.damage) == (end, damage), f"bit {bit}"


# --- Scan: garbage never raises or hangs -------------------------------------------


@SETTINGS
@given(buf=st.binary(max_size=2048), start=st.integers(0, 64))
def test_scan_of_arbitrary_bytes_never_raises(buf, start):
    start = min(start, len(buf))
    frames, s = scan(buf, start)
    check_scan_invariants(buf, frames, s, start)


@SETTINGS
@given(
    chunks=st.lists(
        st.one_of(st.sampled_from([SYNC, SYNC * 4, b"\xd1", b"\x0c", bytes(HEADER_SIZE)]), st.binary(max_size=40)),
        max_size=60,
    )
)
def test_scan_of_sync_heavy_garbage_never_raises(chunks):
    buf = b"".join(chunks)
    frames, s = scan(buf)
    check_scan_invariants(buf, frames, s)
    assert frames == []


def test_scan_of_a_megabyte_of_sync_bytes_returns():
    for buf in (SYNC * 2**19, b"\xd1" + SYNC * 2**19, SYNC * 2**19 + rec(1)):
        frames, s = scan(buf)
        check_scan_invariants(buf, frames, s)
        assert len(frames) == (1 if buf.endswith(rec(1)) else 0)


def test_scan_of_many_checksummed_headers_with_lying_lengths_returns():
    # Headers whose checksum holds but whose payload does not: each one is skipped by
    # its (vouched-for) length, which here points into the middle of the next header.
    raw = encode_frame(OP_SET, 0, 1, 1, b"k" * 20, b"v" * 20, salt=SALT)
    header_only = raw[:HEADER_SIZE]
    buf = header_only * 20000
    frames, s = scan(buf)
    check_scan_invariants(buf, frames, s)
    assert frames == [] and s.end == 0


# --- segment header -----------------------------------------------------------


@pytest.mark.parametrize("kind", [KIND_LOG, KIND_COMPACTED])
def test_segment_header_round_trips(kind):
    header = encode_segment_header(kind, SALT)
    assert len(header) == SEGMENT_HEADER_SIZE
    assert header.startswith(SEGMENT_MAGIC)
    assert decode_segment_header(header) == (kind, SALT)
    assert decode_segment_header(header + rec(1)) == (kind, SALT)


def _header_with_version(version: int, fix_crc: bool) -> bytes:
    body = SEGMENT_MAGIC + struct.pack("<HBBI", version, KIND_LOG, 0, SALT)
    crc = zlib.crc32(body) if fix_crc else 0xDEADBEEF
    return body + struct.pack("<I", crc)


@pytest.mark.parametrize("fix_crc", [True, False], ids=["good-crc", "bad-crc"])
@pytest.mark.parametrize("version", [FORMAT_VERSION + 1, 0xFFFF])
def test_segment_header_of_newer_version_raises_format_version_error(version, fix_crc):
    with pytest.raises(FormatVersionError) as info:
        decode_segment_header(_header_with_version(version, fix_crc))
    assert info.value.version == version
    assert isinstance(info.value, IODictLogError)
    assert str(FORMAT_VERSION) in str(info.value)


def test_format_version_error_is_not_a_corruption_error():
    assert issubclass(FormatVersionError, IODictLogError)
    assert not issubclass(FormatVersionError, CorruptionError)
    assert issubclass(CorruptionError, IODictLogError)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        SEGMENT_MAGIC,
        b"\x89IODLOX\n" + encode_segment_header(KIND_LOG, SALT)[8:],
        b"\x00" * SEGMENT_HEADER_SIZE,
        encode_manifest(Manifest(1, (1,))),
    ],
    ids=["empty", "magic-only", "bad-magic", "zeros", "a-manifest"],
)
def test_segment_header_with_bad_magic_or_too_short_raises_corruption_error(data):
    with pytest.raises(CorruptionError):
        decode_segment_header(data)


def test_segment_header_with_bad_checksum_raises_corruption_error():
    header = encode_segment_header(KIND_LOG, SALT)
    with pytest.raises(CorruptionError, match="checksum"):
        decode_segment_header(header[:16] + bytes(4))


def test_segment_header_with_unknown_kind_raises_corruption_error():
    body = SEGMENT_MAGIC + struct.pack("<HBBI", FORMAT_VERSION, 9, 0, SALT)
    with pytest.raises(CorruptionError):
        decode_segment_header(body + struct.pack("<I", zlib.crc32(body)))


def test_every_bit_flip_in_a_segment_header_raises():
    header = encode_segment_header(KIND_COMPACTED, SALT)
    for bit in range(SEGMENT_HEADER_SIZE * 8):
        with pytest.raises((CorruptionError, FormatVersionError)):
            decode_segment_header(flip(header, bit))
    for cut in range(SEGMENT_HEADER_SIZE):
        with pytest.raises(CorruptionError):
            decode_segment_header(header[:cut])


# --- manifest -----------------------------------------------------------------

manifests = st.builds(Manifest, U64, st.lists(U64, max_size=20).map(tuple), U64, U64, st.integers(0, 2**16 - 1))


@SETTINGS
@given(m=manifests)
def test_manifest_round_trips(m):
    decoded = decode_manifest(encode_manifest(m))
    assert decoded == m
    assert type(decoded.segments) is tuple


def test_manifest_defaults_floors_to_zero():
    assert decode_manifest(encode_manifest(Manifest(3, (1, 2)))) == Manifest(3, (1, 2), 0, 0)


@FEW
@given(m=manifests)
def test_every_bit_flip_in_a_manifest_raises(m):
    data = encode_manifest(m)
    for bit in range(len(data) * 8):
        with pytest.raises((CorruptionError, FormatVersionError)):
            decode_manifest(flip(data, bit))


@FEW
@given(m=manifests, extra=st.binary(min_size=1, max_size=16))
def test_every_truncation_or_extension_of_a_manifest_raises_corruption_error(m, extra):
    data = encode_manifest(m)
    for cut in range(len(data)):
        with pytest.raises(CorruptionError):
            decode_manifest(data[:cut])
    with pytest.raises(CorruptionError):
        decode_manifest(data + extra)


@pytest.mark.parametrize("fix_crc", [True, False], ids=["good-crc", "bad-crc"])
def test_manifest_of_newer_version_raises_format_version_error(fix_crc):
    data = bytearray(encode_manifest(Manifest(1, (1, 2))))
    struct.pack_into("<H", data, 8, FORMAT_VERSION + 1)
    if fix_crc:
        struct.pack_into("<I", data, len(data) - 4, zlib.crc32(data[:-4]))
    with pytest.raises(FormatVersionError) as info:
        decode_manifest(bytes(data))
    assert info.value.version == FORMAT_VERSION + 1


@SETTINGS
@given(data=st.binary(max_size=300))
def test_manifest_decoder_on_arbitrary_bytes_raises_only_corruption_errors(data):
    for candidate in (data, b"\x89IODCUR\n" + data):
        try:
            decode_manifest(candidate)
        except (CorruptionError, FormatVersionError):
            pass


# --- resync: the same rules, one header CRC per candidate (21.6) ------------------------


def reference_resync(buf: bytes, pos: int, salt: int) -> int | None:
    """Scan._resync as FORMAT.md words it (and as it was written before it was made
    cheap): header_length vouches for a length, decode_frame for a resume point."""
    while True:
        length = header_length(buf, pos, salt)
        if length is not None:
            if pos + length > len(buf):
                return None
            pos += length
        else:
            pos += 1
        pos = buf.find(SYNC, pos)
        if pos < 0:
            return None
        if decode_frame(buf, pos, salt) is not None:
            return pos


resync_chunks = st.one_of(
    st.builds(
        lambda *a: encode_frame(*a, salt=SALT),
        ops,
        flag_sets,
        st.integers(0, 9),
        st.integers(0, 9),
        st.binary(max_size=8),
        st.binary(max_size=40),
    ),
    st.builds(
        lambda op, k, v: encode_frame(op, 0, 1, 1, b"", b"", salt=SALT)[:2] + bytes(k) + bytes(v),
        st.integers(0, 255),
        st.integers(0, 8),
        st.integers(0, 40),
    ),
    st.builds(
        lambda op, klen, vlen: (lambda f: SYNC + struct.pack("<I", zlib.crc32(f, SALT)) + f)(
            struct.pack("<IBBIIQQ", 0, op, 0, klen, vlen, 1, 1)
        ),
        st.integers(0, 255),
        st.integers(0, 60),
        st.integers(0, 60),
    ),  # a header whose hcrc holds, lengths and dcrc made up
    st.sampled_from([SYNC, SYNC * 5, b"\xd1", b"\x0c", bytes(40)]),
    st.binary(max_size=30),
)


@SETTINGS
@given(buf=st.lists(resync_chunks, max_size=14).map(b"".join), data=st.data())
def test_resync_finds_exactly_where_the_rules_say(buf, data):
    pos = data.draw(st.integers(0, len(buf)))
    assert Scan(buf, SALT)._resync(pos) == reference_resync(buf, pos, SALT)
