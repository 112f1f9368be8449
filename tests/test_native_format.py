"""The C core's format code (iodict_log/_format.c) against the pure-Python reference.

Same bytes, same answers, same exceptions: every C function of _format.c is run
beside its Python twin (format.py's ``py_*`` functions and ``PyScan``, hintfile's
``py_*``) on valid input and on garbage (random bytes, flipped bits, cut
buffers, frames forged with good checksums), and the results compared. The C
module is imported directly, so this runs whatever IODICT_LOG_PURE says.

The comparisons (``same_*``) are also what tools/fuzz_atheris.py's differential
mode and tools/fuzz_asan.py run for longer.
"""

from __future__ import annotations

import itertools
import mmap
import struct
import zlib

import pytest
from helpers import SALT, flip
from hypothesis import given, settings
from hypothesis import strategies as st
from test_fuzz import damage, garbage_or_adversarial, mutation, written_units

from iodict_log import _native  # type: ignore[attr-defined]
from iodict_log.format import (
    FLAG_BATCH,
    HEADER_SIZE,
    OP_PUT,
    OP_SEAL,
    OP_SET,
    Damage,
    Frame,
    PyScan,
    py_decode_frame,
    py_encode_batch,
    py_encode_frame,
    py_frame_value,
    py_header_length,
)
from iodict_log.hintfile import LOCATION_SIZE, py_decode_locations, py_index_dict
from iodict_log.index import pack_location

_native.setup(Frame, Damage)  # (format.py does this only when the build is native)

MANY = settings(max_examples=300, deadline=None)
SOME = settings(max_examples=100, deadline=None)
U32 = st.integers(0, 2**32 - 1)
U64 = st.integers(0, 2**64 - 1)


class CScan(PyScan):
    """The Scan whatever the build, walking in C."""

    _walk = _native.scan


def outcome(fn, *args, **kwargs):
    """What a call gives: ("ok", result) or ("raises", exception type)."""
    try:
        return "ok", fn(*args, **kwargs)
    except Exception as exc:
        return "raises", type(exc)


def same_decoders(buf: bytes, salt: int) -> None:
    """decode_frame and header_length at every offset, frame_value of the pieces frames vouch for."""
    for pos in range(len(buf) + 2):
        frame = _native.decode_frame(buf, pos, salt)
        assert frame == py_decode_frame(buf, pos, salt)
        assert frame is None or (type(frame) is Frame and type(frame.key) is bytes and type(frame.value) is bytes)
        length = _native.header_length(buf, pos, salt)
        assert length == py_header_length(buf, pos, salt)
        for stop in {pos, len(buf), *(pos + n for n in (36, 37, (length or 0) - 1, length or 0))}:
            piece = buf[pos:stop]
            assert _native.frame_value(piece, salt) == py_frame_value(piece, salt)


def scan_results(cls, buf, start: int, complete: bool, until_seal: bool = False, committed: bool = False) -> tuple:
    s = cls(buf, SALT, start, complete=complete, committed=committed)
    frames = []
    for frame in s:
        frames.append(frame)
        if until_seal and frame.op == OP_SEAL:
            break  # (as Log._scan does in the last segment: the state must be the same there)
    assert all(type(f) is Frame for f in frames) and all(type(d) is Damage for d in s.damage)
    return frames, s.end, s.tail, s.damage, s.last_seq, s.last_birthtime


def put_results(cls, buf, start: int, complete: bool, slot: int, at: int, committed: bool = False) -> tuple:
    s = cls(buf, SALT, start, complete=complete, committed=committed)
    puts = s.put_locations(slot, at)
    assert all(type(d) is Damage for d in s.damage)
    return puts, s.end, s.tail, s.damage, s.last_seq, s.last_birthtime


def same_scans(buf: bytes, start: int = 0) -> None:
    """Scan in C and in Python, complete or not, committed or not, read whole or up to the
    first SEAL; and put_locations, which must be the PUTs of the whole walk, with its
    ``end`` and damage."""
    for complete, committed in itertools.product((False, True), repeat=2):
        for until_seal in (False, True):
            expected = scan_results(PyScan, buf, start, complete, until_seal, committed)
            assert scan_results(CScan, buf, start, complete, until_seal, committed) == expected
        frames, *state = scan_results(PyScan, buf, start, complete, committed=committed)
        for slot, at in ((0, 0), (3, 4096), (2**16 - 1, 2**32 - 1 - len(buf))):
            puts = [(f.seq, pack_location(f.birthtime_ns, slot, at + f.offset, f.length)) for f in frames]
            expected = ([put for put, f in zip(puts, frames) if f.op == OP_PUT], *state)
            assert put_results(PyScan, buf, start, complete, slot, at, committed) == expected
            assert put_results(CScan, buf, start, complete, slot, at, committed) == expected


@pytest.mark.parametrize("slot, at", [(-1, 0), (2**16, 0), (0, -1), (0, 2**32)])
def test_put_locations_refuse_a_place_no_location_holds(slot, at):
    for cls in (PyScan, CScan):
        with pytest.raises(OverflowError):
            cls(b"", SALT).put_locations(slot, at)


def same_locations(raw: bytes, sizes: list[int]) -> None:
    """decode_locations: the same locations and live bytes, or the same ValueError."""
    try:
        expected = py_decode_locations(raw, sizes)
    except ValueError as exc:
        with pytest.raises(ValueError) as got:
            _native.decode_locations(raw, sizes)
        assert str(got.value) == str(exc)
        return
    assert _native.decode_locations(raw, sizes) == expected


# --- frames ---------------------------------------------------------------------------------


@MANY
@given(
    op=st.integers(0, 255),
    flags=st.integers(0, 255),
    seq=U64,
    birthtime=U64,
    key=st.binary(max_size=40),
    value=st.binary(max_size=300),
    salt=U32,
)
def test_encode_frame_writes_the_same_bytes_and_both_decode_them_alike(op, flags, seq, birthtime, key, value, salt):
    raw = py_encode_frame(op, flags, seq, birthtime, key, value, salt=salt)
    assert _native.encode_frame(op, flags, seq, birthtime, key, value, salt=salt) == raw
    same_decoders(raw, salt)
    same_decoders(b"\xd1\x0c" + raw + raw[:HEADER_SIZE], salt)


@pytest.mark.parametrize(
    "args",
    [
        (256, 0, 1, 1, b"k", b"v"),
        (-1, 0, 1, 1, b"k", b"v"),
        (1, 256, 1, 1, b"k", b"v"),
        (1, 0, 2**64, 1, b"k", b"v"),
        (1, 0, -1, 1, b"k", b"v"),
        (1, 0, 1, 2**64, b"k", b"v"),
        (1.0, 0, 1, 1, b"k", b"v"),
        ("1", 0, 1, 1, b"k", b"v"),
        (1, 0, 1, 1, "k", b"v"),
        (1, 0, 1, 1, b"k", None),
    ],
)
def test_encode_frame_refuses_what_struct_refuses_with_the_same_exception(args):
    assert outcome(_native.encode_frame, *args, salt=SALT) == outcome(py_encode_frame, *args, salt=SALT)
    assert outcome(_native.encode_frame, 1, 0, 1, 1, b"k", b"v", salt="s")[0] == "raises"


def test_salt_is_taken_modulo_2_32_as_zlib_does():
    for salt in (0, 2**32 - 1, 2**32 + 5, -1):
        assert _native.encode_frame(1, 0, 1, 1, b"k", b"v", salt=salt) == py_encode_frame(
            1, 0, 1, 1, b"k", b"v", salt=salt
        )


def test_every_op_and_flag_byte_decodes_alike():
    # The C file has its own copy of KNOWN_OPS, DATA_OPS and KNOWN_FLAGS: this pins it to format.py's.
    for byte in range(256):
        for raw in (
            py_encode_frame(byte, 0, 1, 1, b"k", b"v", salt=SALT),
            py_encode_frame(OP_SET, byte, 1, 1, b"k", b"v", salt=SALT),
            py_encode_frame(byte, FLAG_BATCH, 1, 1, b"k", b"v", salt=SALT)
            + py_encode_frame(1, 0, 2, 2, b"", b"", salt=SALT),
        ):
            assert _native.decode_frame(raw, 0, SALT) == py_decode_frame(raw, 0, SALT)
            same_scans(raw)


@pytest.mark.parametrize("field", ["seq", "birthtime"])
def test_seq_and_birthtime_over_max_seq_are_invalid_in_both(field):
    for value in (2**63 - 1, 2**63, 2**64 - 1):
        seq, birthtime = (value, 1) if field == "seq" else (1, value)
        raw = py_encode_frame(OP_SET, 0, seq, birthtime, b"k", b"v", salt=SALT)
        same_decoders(raw, SALT)


@MANY
@given(buf=garbage_or_adversarial, salt=st.one_of(st.just(SALT), U32))
def test_decoders_agree_on_garbage_and_forged_frames(buf, salt):
    same_decoders(buf, salt)


@SOME
@given(raw=st.binary(min_size=HEADER_SIZE, max_size=120), data=st.data())
def test_decoders_agree_on_flipped_and_cut_frames(raw, data):
    frame = py_encode_frame(OP_SET, 0, 5, 6, raw[:10], raw[10:], salt=SALT)
    flipped = flip(frame, data.draw(st.integers(0, len(frame) * 8 - 1)))
    same_decoders(flipped, SALT)
    same_decoders(frame[: data.draw(st.integers(0, len(frame)))], SALT)


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview, "mmap"])
def test_any_bytes_like_buffer_decodes_as_bytes_do(kind, tmp_path):
    raw = b"junk" + py_encode_frame(OP_SET, 0, 5, 6, b"key", b"value", salt=SALT) + b"\xd1\x0c" * 30
    if kind == "mmap":
        path = tmp_path / "buf"
        path.write_bytes(raw)
        with open(path, "rb") as f:
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    else:
        buf = kind(raw)
    frame = _native.decode_frame(buf, 4, SALT)
    assert frame == py_decode_frame(raw, 4, SALT) and type(frame.key) is bytes
    assert _native.header_length(buf, 4, SALT) == frame.length
    piece = kind(raw[4 : 4 + frame.length]) if kind != "mmap" else raw[4 : 4 + frame.length]
    assert _native.frame_value(piece, SALT) == (0, b"value")
    assert scan_results(CScan, buf, 0, True) == scan_results(PyScan, raw, 0, True)
    if kind == "mmap":
        buf.close()


def test_decoders_refuse_what_is_not_a_buffer_or_a_position():
    for args in ((None, 0, SALT), ("text", 0, SALT), (b"", "0", SALT), (b"", 2**70, SALT)):
        assert outcome(_native.decode_frame, *args) == outcome(py_decode_frame, *args)
        assert outcome(_native.header_length, *args) == outcome(py_header_length, *args)


# --- the scan -------------------------------------------------------------------------------


@MANY
@given(buf=garbage_or_adversarial, data=st.data())
def test_scan_agrees_on_garbage_and_forged_frames_from_any_start(buf, data):
    same_scans(buf, data.draw(st.integers(0, len(buf) + 2), label="start"))


@settings(max_examples=400, deadline=None)
@given(
    frames=written_units(holders=True),
    mutations=st.lists(mutation, max_size=6),
    cut=st.one_of(st.none(), st.floats(0, 1)),
)
def test_scan_agrees_on_records_batches_and_seals_under_damage_and_torn_tails(frames, mutations, cut):
    buf, _ = damage(frames, mutations, cut)
    same_scans(buf)


@SOME
@given(parts=st.lists(st.sampled_from(["record", "seal", "batch", "junk", "torn"]), max_size=10), data=st.data())
def test_scan_agrees_on_segments_with_seals_in_the_middle(parts, data):
    out = []
    for seq, part in enumerate(parts, 1):
        if part == "record":
            out.append(py_encode_frame(OP_SET, 0, seq, seq, b"k", b"v", salt=SALT))
        elif part == "seal":
            out.append(py_encode_frame(OP_SEAL, 0, seq, seq, b"", b"", salt=SALT))
        elif part == "batch":
            entries = [(OP_SET, 0, b"m", b"x", seq)] * data.draw(st.integers(0, 3))
            out.append(py_encode_batch(entries, seq, seq, seq + 9, 0, 0, SALT)[0])
        elif part == "junk":
            out.append(data.draw(st.binary(min_size=1, max_size=20)))
        else:
            out.append(py_encode_frame(OP_SET, 0, seq, seq, b"k", b"torn", salt=SALT)[:-2])
    same_scans(b"".join(out))


def test_scan_agrees_across_the_chunks_the_c_walk_returns():
    # The C walk hands back about a thousand frames at a time, never inside a batch:
    # batches, damage and seals around the chunk boundaries read as in one walk.
    parts, seq = [], 0
    for n in range(5000):
        seq += 1
        if n % 997 in (0, 1, 2):  # batches around each boundary, some cut by damage
            entries = [(OP_SET, 0, b"m%d" % n, b"x", seq)] * (n % 5)
            raw = py_encode_batch(entries, seq, seq, seq, 0, 0, SALT)[0]
            parts.append(flip(raw, 8 * (len(raw) // 2)) if n % 3 == 0 else raw)
            seq += len(entries) + 1
        elif n % 1500 == 7:
            parts.append(py_encode_frame(OP_SEAL, 0, seq, seq, b"", b"", salt=SALT))
        else:
            parts.append(py_encode_frame(OP_SET, 0, seq, seq, b"k%d" % n, b"v", salt=SALT))
    buf = b"".join(parts)
    assert len(list(CScan(buf, SALT))) > 3000
    same_scans(buf)
    same_scans(buf[: len(buf) - 5])


def test_scan_of_sync_heavy_and_lying_headers_agrees():
    lying = [py_encode_frame(OP_SET, 0, 1, 1, b"k", bytes(n), salt=SALT)[:HEADER_SIZE] for n in (0, 5, 2**20)]
    for buf in (b"\xd1\x0c" * 5000, b"\xd1" * 100 + b"".join(lying) * 50, b"\x00" + b"".join(lying)):
        same_scans(buf)


# --- batches --------------------------------------------------------------------------------

entries = st.lists(
    st.tuples(
        st.integers(0, 255),
        st.integers(0, 255).map(lambda f: f & ~FLAG_BATCH),
        st.binary(max_size=20),
        st.binary(max_size=100),
        st.integers(0, 2**63 - 1),
    ),
    max_size=20,
)


@MANY
@given(
    entries=entries,
    seq=st.integers(0, 2**63),
    begin=U64,
    commit=U64,
    offset=st.integers(0, 2**31),
    slot=st.integers(0, 2**16 - 1),
    salt=U32,
)
def test_encode_batch_writes_the_same_bytes_and_locations(entries, seq, begin, commit, offset, slot, salt):
    expected = py_encode_batch(entries, seq, begin, commit, offset, slot, salt)
    assert _native.encode_batch(entries, seq, begin, commit, offset, slot, salt) == expected


def test_encode_batch_locations_point_at_its_members():
    entries = [(OP_SET, 0, b"k%d" % i, b"v" * i, 10**18 + i) for i in range(5)]
    data, locs, last = _native.encode_batch(entries, 7, 1, 2, 100, 3, SALT)
    assert last == 7 + len(entries) + 1 and [seq for seq, _ in locs] == list(range(8, 8 + len(entries)))
    frames = list(CScan(bytes(100) + data, SALT, 100))
    assert [f.key for f in frames] == [e[2] for e in entries]
    assert [loc for _, loc in locs] == [pack_location(f.birthtime_ns, 3, f.offset, f.length) for f in frames]


@pytest.mark.parametrize(
    "entries",
    [
        [(256, 0, b"k", b"v", 1)],
        [(1, 252, b"k", b"v", 1)],
        [(1, 0, "k", b"v", 1)],
        [(1, 0, b"k", b"v", 2**64)],
        [(1, 0, b"k", b"v", -1)],
        [(1, 0, b"k", b"v", 1), (1, 0, b"k", None, 1)],
        [(1, 1.5, b"k", b"v", 1)],
        [(1, 0, b"k", b"v")],
        [[1, 0, b"k", b"v", 1]],
        [1],
    ],
)
def test_encode_batch_refuses_what_the_python_one_refuses(entries):
    assert outcome(_native.encode_batch, entries, 1, 1, 1, 0, 0, SALT) == outcome(
        py_encode_batch, entries, 1, 1, 1, 0, 0, SALT
    )


# --- the hint's locations -------------------------------------------------------------------


@st.composite
def location_bytes(draw) -> tuple[bytes, list[int]]:
    """Packed locations mostly inside segments of ``sizes``, some not; births mostly increasing."""
    sizes = draw(st.one_of(st.lists(st.integers(0, 5000), min_size=0, max_size=4), st.just([4000] * 300)))
    raw, birth = [], draw(st.integers(0, 2**40))
    for _ in range(draw(st.integers(0, 12))):
        birth += draw(st.one_of(st.integers(1, 10**6), st.just(0), st.integers(-100, 0)))
        slot = draw(st.one_of(st.integers(0, max(0, len(sizes) - 1)), st.integers(0, 2**16 - 1)))
        length = draw(st.one_of(st.integers(HEADER_SIZE, 400), st.integers(0, 2**32 - 1)))
        offset = draw(st.one_of(st.integers(0, 4000), st.integers(0, 2**32 - 1)))
        raw.append(pack_location(max(birth, 0) % 2**64, slot, offset, length).to_bytes(LOCATION_SIZE, "little"))
    out = b"".join(raw)
    for bit in draw(st.lists(st.integers(0, max(0, len(out) * 8 - 1)), max_size=2 if out else 0)):
        out = flip(out, bit)
    return out, sizes


@MANY
@given(case=location_bytes())
def test_decode_locations_gives_the_same_locations_or_the_same_error(case):
    same_locations(*case)


@SOME
@given(raw=st.binary(max_size=200), sizes=st.lists(st.integers(0, 2**40), max_size=3))
def test_decode_locations_of_random_bytes_agrees(raw, sizes):
    same_locations(raw, sizes)


@pytest.mark.parametrize("decode", [py_decode_locations, _native.decode_locations])
@pytest.mark.parametrize("segments", [3, 300])
def test_a_slot_past_the_covered_segments_is_a_value_error(decode, segments):
    # Guards the Python one's path for over 256 segments, which raised IndexError.
    raw = pack_location(1, segments, 0, HEADER_SIZE).to_bytes(LOCATION_SIZE, "little")
    with pytest.raises(ValueError, match="outside the covered segments"):
        decode(raw, [4000] * segments)


def test_index_dict_is_dict_of_zip():
    keys, locs = ["a", b"b", 3, "a"], [1, 2, 3, 4]
    assert _native.index_dict(keys, locs) == py_index_dict(keys, locs) == {"a": 4, b"b": 2, 3: 3}
    assert list(_native.index_dict(keys, locs)) == ["a", b"b", 3]
    assert _native.index_dict([], []) == {}


# --- that the strategies here reach what they are about --------------------------------------


def test_the_strategies_reach_valid_frames_batches_and_damage():
    buf, _ = damage(
        [(py_encode_frame(OP_SET, 0, 1, 1, b"k", b"v", salt=SALT), False)] * 3,
        [("flip", 0.5, 1)],
        None,
    )
    frames, end, tail, regions, _, _ = scan_results(CScan, buf, 0, False)
    assert len(frames) == 2 and len(regions) == 1 and end == len(buf) and tail == 0


def test_the_c_checksums_are_zlibs():
    raw = _native.encode_frame(OP_SET, 0, 0, 0, b"k", b"x", salt=SALT)
    dcrc, hcrc = struct.unpack_from("<I", raw, 6)[0], struct.unpack_from("<I", raw, 2)[0]
    assert dcrc == zlib.crc32(b"x", zlib.crc32(b"k", SALT)) and hcrc == zlib.crc32(raw[6:HEADER_SIZE], SALT)
