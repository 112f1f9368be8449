"""Crash recovery and damaged files (CONTRACT.md §3).

What a user relies on, tested from the outside with real files and real
processes:

- a crash (torn tail, ``kill -9``) loses nothing a call returned for, and keeps
  every batch all-or-nothing;
- a damaged record is skipped with a ``CorruptionWarning`` and counted, never
  read back as a wrong value, and no intact record is lost because of it;
- garbage never crashes ``open`` with anything but ``IODictLogError``;
- a failed write (``ENOSPC``, ``EIO``) raises ``OSError`` and leaves the store
  consistent and writable;
- another process's writes are visible on this process's next call.

The tests know the frame layout documented in ``iodict_log/format.py`` (a
36-byte header: sync u16 | hcrc u32 | dcrc u32 | op u8 | flags u8 |
key_len u32 | value_len u32 | seq u64 | birthtime u64, then key and value) so
they can aim at a field, and that segment files end in ``.seg`` and start with
a 16-byte header. Everything else they learn from the file sizes the store
leaves behind after each call.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import warnings

import msgpack
import pytest
from helpers import flip
from hypothesis import given, settings
from hypothesis import strategies as st

import iodict_log
from iodict_log import CorruptionError, CorruptionWarning, IODict, IODictLogError, fileops
from iodict_log.format import OP_SET, SEGMENT_HEADER_SIZE, decode_segment_header, encode_frame

SEGMENT_HEADER = SEGMENT_HEADER_SIZE
FRAME_HEADER = 36
HEADER_FIELDS = {
    "sync": (0, 2),
    "hcrc": (2, 6),
    "dcrc": (6, 10),
    "op": (10, 11),
    "flags": (11, 12),
    "key_len": (12, 16),
    "value_len": (16, 20),
    "seq": (20, 28),
    "birthtime": (28, 36),
}
CHILD_SECONDS = 60  # bound on any one child process; they normally take well under a second

GARBAGE_SETTINGS = settings(max_examples=60, deadline=None, database=None, derandomize=True)


@pytest.fixture(autouse=True, params=["scan", "hint"])
def index_source(request, monkeypatch):
    """Every test runs twice: once as written, once with a hint file left by every
    close, so a hint can never change what opening a damaged store yields."""
    if request.param == "hint":
        monkeypatch.setattr(iodict_log.log, "HINT_AFTER_RECORDS", 1)
    return request.param


# --- a model of what the store must hold -----------------------------------------------
#
# An operation is ("set", key, value), ("del", key) or ("batch", [[key, value], ...]),
# JSON-friendly so child processes can run the same list.


def _apply(d, op) -> None:
    if op[0] == "set":
        d[op[1]] = op[2]
    elif op[0] == "del":
        del d[op[1]]
    else:
        d.update({key: value for key, value in op[1]})


def _replay(ops) -> dict:
    """What a store holds after ``ops``: a dict keeps the order rules of the contract."""
    state: dict = {}
    for op in ops:
        if op[0] == "set":
            state[op[1]] = op[2]
        elif op[0] == "del":
            state.pop(op[1], None)  # a delete whose set was lost deletes nothing
        else:
            for key, value in op[1]:
                state[key] = value
    return state


def _in_birth_order(d, state: dict) -> list:
    """``state``'s items in the order of the birthtimes ``d``'s records carry: when damage
    cost a record, replay order and birthtime order can differ (a lost DELETE, then a key
    set again; a lost first SET, then an overwrite), and birthtime wins (CONTRACT §2)."""
    return sorted(state.items(), key=lambda item: d.birthtime(item[0]))


def _log_of(ops) -> list:
    """What records() must replay after ``ops``: (op, key, value), a batch as its members."""
    out = []
    for op in ops:
        if op[0] == "set":
            out.append(("set", op[1], op[2]))
        elif op[0] == "del":
            out.append(("delete", op[1], None))
        else:
            out.extend(("set", key, value) for key, value in op[1])
    return out


def _records(d) -> list:
    records = list(d.records())
    seqs = [r.seq for r in records]
    assert seqs == sorted(set(seqs)), "records() must come in strictly increasing sequence order"
    return [(r.op, r.key, r.value) for r in records]


def _segments(path) -> list[str]:
    return sorted(os.path.join(path, name) for name in os.listdir(path) if name.endswith(".seg"))


def _only_segment(path) -> str:
    found = _segments(path)
    assert len(found) == 1, found
    return found[0]


def _write_ops(d, path, ops) -> list[tuple[str, int, int]]:
    """Run ``ops`` on ``d``; for each, (segment file, start, end) of the bytes it appended."""
    spans = []
    for op in ops:
        before = {seg: os.path.getsize(seg) for seg in _segments(path)}
        _apply(d, op)
        last = _segments(path)[-1]
        spans.append((last, before.get(last, SEGMENT_HEADER), os.path.getsize(last)))
    return spans


def _read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _write(path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def _clone(src, dst, replace: dict | None = None):
    """Copy store ``src`` to ``dst``, giving the files named in ``replace`` new contents."""
    shutil.copytree(src, dst)
    for name, data in (replace or {}).items():
        _write(os.path.join(dst, name), data)
    return dst


def _frames(seg: bytes, start: int, stop: int) -> list[tuple[int, int]]:
    """(offset, length) of the frames in seg[start:stop], read from their length fields."""
    out = []
    while start < stop:
        key_len, value_len = struct.unpack_from("<II", seg, start + 12)
        out.append((start, FRAME_HEADER + key_len + value_len))
        start += out[-1][1]
    assert start == stop
    return out


@contextlib.contextmanager
def _no_corruption_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error", CorruptionWarning)
        yield


@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CorruptionWarning)
        yield


def _open_clean(path, **kwargs) -> IODict:
    """Open a store that must need no repair: no warning, nothing counted as corrupt."""
    with _no_corruption_warning():
        d = IODict(path, **kwargs)
    assert d.stats()["corrupt_records"] == 0
    return d


class _Hang(Exception):
    pass


@contextlib.contextmanager
def _bounded(seconds: float = 20.0):
    """Turn a hang into a test failure (a bound, not a timing assertion)."""

    def on_alarm(signum, frame):
        raise _Hang(f"still running after {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# --- 1. torn tails ---------------------------------------------------------------------

HEAD_OPS = [("set", f"k{i:02d}", f"value-{i}") for i in range(12)]
TAIL_OPS = [
    ("set", "k03", "overwritten"),
    ("batch", [["b0", "batch-0"], ["k05", "overwritten-in-batch"], ["b1", [1, 2, 3]]]),
    ("del", "k07"),
    ("set", "last", "the-last-value"),
]


def test_torn_tail_at_every_offset_keeps_whole_records_and_drops_the_torn_one(tmp_path):
    src = str(tmp_path / "src")
    ops = HEAD_OPS + TAIL_OPS
    with IODict(src) as d:
        spans = _write_ops(d, src, ops)
    seg_path = _only_segment(src)
    seg = _read(seg_path)
    name = os.path.basename(seg_path)
    first = spans[len(HEAD_OPS)][1]
    batch_start, batch_end = spans[len(HEAD_OPS) + 1][1:]
    assert len(seg) - first < 600, "keep the sweep small"

    for cut in range(first, len(seg) + 1):
        whole = sum(1 for _, _, end in spans if end <= cut)
        kept = ops[:whole]
        expected = _replay(kept)
        store = _clone(src, str(tmp_path / f"cut{cut}"), {name: seg[:cut]})
        d = _open_clean(store)
        try:
            assert list(d.items()) == list(expected.items()), f"cut at {cut}"
            assert len(d) == len(expected)
            if batch_start < cut < batch_end:
                assert "b0" not in d and "b1" not in d, f"half a batch survived a cut at {cut}"
                assert d["k05"] == "value-5"
            d["after"] = cut
        finally:
            d.close()
        d = _open_clean(store)
        try:
            assert list(d.items()) == [*expected.items(), ("after", cut)], f"cut at {cut}"
            assert _records(d) == [*_log_of(kept), ("set", "after", cut)], f"cut at {cut}"
        finally:
            d.close()
        shutil.rmtree(store)


def test_zero_filled_tail_after_power_loss_opens_cleanly_and_takes_writes(tmp_path):
    path = str(tmp_path / "store")
    ops = HEAD_OPS + TAIL_OPS
    with IODict(path) as d:
        _write_ops(d, path, ops)
    with open(_only_segment(path), "ab") as f:
        f.write(bytes(4096))
    d = _open_clean(path)
    with d:
        assert list(d.items()) == list(_replay(ops).items())
        d["after"] = "zeros"
    with _open_clean(path) as d:
        assert list(d.items()) == [*_replay(ops).items(), ("after", "zeros")]
        assert _records(d) == [*_log_of(ops), ("set", "after", "zeros")]


def _frame_that_sets(key, value, seq=10**6, salt=0) -> bytes:
    """The bytes of a valid frame, as a user might keep inside a value (a backup).

    Stores draw a random 32-bit salt for their checksums; 0 stands for any other store's.
    """
    return encode_frame(OP_SET, 0, seq, time.time_ns(), msgpack.packb(key), msgpack.packb(value), salt=salt)


def _salt_of(store) -> int:
    """The salt of a store's checksums, from its first segment's header."""
    return decode_segment_header(_read(_segments(store)[0])[:SEGMENT_HEADER_SIZE])[1]


def test_torn_tail_inside_a_value_that_holds_frame_bytes_adds_no_phantom_key(tmp_path):
    src = str(tmp_path / "src")
    inner = _frame_that_sets("ghost", "never written")
    ops = [*HEAD_OPS, ("set", "blob", b"<" + inner + b">")]
    with IODict(src, compression=None) as d:
        spans = _write_ops(d, src, ops)
    seg_path = _only_segment(src)
    seg = _read(seg_path)
    start, end = spans[-1][1:]
    assert seg.find(inner, start) > 0, "the value is stored verbatim"
    for cut in range(start, end):
        store = _clone(src, str(tmp_path / f"cut{cut}"), {os.path.basename(seg_path): seg[:cut]})
        with _quiet(), IODict(store, compression=None) as d:
            assert list(d.items()) == list(_replay(HEAD_OPS).items()), f"torn at {cut}: {dict(d)}"
            assert d.stats()["corrupt_records"] == 0, f"a torn tail at {cut} is not corruption"
        shutil.rmtree(store)


# --- 2. bit flips on disk --------------------------------------------------------------

FLIP_BEFORE = [("set", f"k{i:02d}", f"old-{i}") for i in range(5)]
FLIP_TARGET = ("set", "k02", "new-value-of-k02")
FLIP_AFTER = [("set", f"n{i:02d}", f"after-{i}") for i in range(5)] + [("set", "k04", "new-4")]


@pytest.fixture(scope="module")
def flip_store(tmp_path_factory):
    """A one-segment store whose middle record (an overwrite of k02) is the target."""
    assert (iodict_log.format.HEADER_SIZE, iodict_log.format.SEGMENT_HEADER_SIZE) == (FRAME_HEADER, SEGMENT_HEADER)
    path = str(tmp_path_factory.mktemp("flip") / "store")
    with IODict(path) as d:
        spans = _write_ops(d, path, [*FLIP_BEFORE, FLIP_TARGET, *FLIP_AFTER])
    seg_path = _only_segment(path)
    start, end = spans[len(FLIP_BEFORE)][1:]
    return path, seg_path, start, end


def _field_span(seg: bytes, start: int, end: int, field: str) -> tuple[int, int]:
    if field in HEADER_FIELDS:
        lo, hi = HEADER_FIELDS[field]
        return start + lo, start + hi
    key_len = struct.unpack_from("<I", seg, start + 12)[0]
    key_end = start + FRAME_HEADER + key_len
    return (start + FRAME_HEADER, key_end) if field == "key" else (key_end, end)


@pytest.mark.parametrize("field", [*HEADER_FIELDS, "key", "value"])
def test_bit_flip_in_a_middle_record_skips_it_and_keeps_every_intact_record(tmp_path, flip_store, field):
    src, seg_path, start, end = flip_store
    seg = _read(seg_path)
    lo, hi = _field_span(seg, start, end, field)
    assert hi > lo
    expected = list(_replay([*FLIP_BEFORE, *FLIP_AFTER]).items())  # k02 keeps its older, intact value
    for bit in range(lo * 8, hi * 8):
        store = _clone(src, str(tmp_path / f"bit{bit}"), {os.path.basename(seg_path): flip(seg, bit)})
        with pytest.warns(CorruptionWarning):
            d = IODict(store)
        with d:
            assert list(d.items()) == expected, f"{field}: bit {bit - start * 8} of the record"
            assert d.stats()["corrupt_records"] >= 1
            d["later"] = bit
        with _quiet(), IODict(store) as d:
            assert list(d.items()) == [*expected, ("later", bit)]
        shutil.rmtree(store)


def test_bit_flip_in_header_of_a_record_whose_value_holds_frame_bytes_adds_no_phantom_key(tmp_path):
    src = str(tmp_path / "src")
    inner = _frame_that_sets("k00", "never written")
    ops = [*FLIP_BEFORE, ("set", "blob", b"<" + inner + b">"), *FLIP_AFTER]
    with IODict(src, compression=None) as d:
        spans = _write_ops(d, src, ops)
    seg_path = _only_segment(src)
    seg = _read(seg_path)
    start = spans[len(FLIP_BEFORE)][1]
    expected = list(_replay([*FLIP_BEFORE, *FLIP_AFTER]).items())
    for field in ("sync", "hcrc", "value_len"):
        bit = HEADER_FIELDS[field][0] * 8 + 3
        store = _clone(src, str(tmp_path / field), {os.path.basename(seg_path): flip(seg, start * 8 + bit)})
        with _quiet(), IODict(store, compression=None) as d:
            assert list(d.items()) == expected, f"flipped {field}: k00 must keep 'old-0', got {d.get('k00')!r}"


def test_bit_flip_in_a_value_that_holds_a_frame_of_the_same_store_adds_no_phantom_key(tmp_path):
    """Guards the resync step: a damaged frame whose header checksum holds is skipped by its
    length, never searched inside (Scan._resync's ``pos += length``), because its value may
    hold the bytes of a frame with this store's own salt, which would pass every check."""
    src = str(tmp_path / "src")
    with IODict(src, compression=None) as d:
        _write_ops(d, src, FLIP_BEFORE)
    inner = _frame_that_sets("ghost", "never written", salt=_salt_of(src))
    ops = [*FLIP_BEFORE, ("set", "blob", b"<" + inner + b">"), *FLIP_AFTER]
    with IODict(src, compression=None) as d:
        spans = _write_ops(d, src, ops[len(FLIP_BEFORE) :])
    seg_path = _only_segment(src)
    seg = _read(seg_path)
    start, end = spans[0][1:]
    at = seg.find(inner, start)
    assert start < at < end, "the value is stored verbatim"
    expected = list(_replay([*FLIP_BEFORE, *FLIP_AFTER]).items())
    for where in (at - 1, at + len(inner)):  # the "<" before the inner frame, the ">" after it
        store = _clone(src, str(tmp_path / f"at{where}"), {os.path.basename(seg_path): flip(seg, where * 8)})
        with pytest.warns(CorruptionWarning), IODict(store, compression=None) as d:
            assert list(d.items()) == expected, f"byte {where - start} of the record flipped: {dict(d)}"


def test_bit_flip_in_a_sealed_segment_keeps_the_later_segments(tmp_path):
    src = str(tmp_path / "src")
    ops = [("set", f"k{i:03d}", {"i": i, "pad": "p" * 60}) for i in range(150)]
    with IODict(src, segment_bytes=4096) as d:
        spans = _write_ops(d, src, ops)
    first = _segments(src)[0]
    assert len(_segments(src)) >= 3
    victims = [i for i, (seg, _, _) in enumerate(spans) if seg == first][5:-5:7]
    seg = _read(first)
    for i in victims:
        start, end = spans[i][1:]
        store = _clone(src, str(tmp_path / f"v{i}"), {os.path.basename(first): flip(seg, (start + end) * 4)})
        with pytest.warns(CorruptionWarning):
            d = IODict(store, segment_bytes=4096)
        with d:
            expected = _replay(ops[:i] + ops[i + 1 :])
            assert list(d.items()) == list(expected.items())
            assert d.stats()["corrupt_records"] >= 1


def test_damage_at_the_end_of_a_sealed_segment_is_reported(tmp_path):
    """A sealed segment has no torn tail: losing its last record must not go unnoticed."""
    src = str(tmp_path / "src")
    ops = [("set", f"k{i:03d}", {"i": i, "pad": "p" * 60}) for i in range(80)]
    with IODict(src, segment_bytes=4096) as d:
        spans = _write_ops(d, src, ops)
    first = _segments(src)[0]
    last = max(i for i, span in enumerate(spans) if span[0] == first)
    start = spans[last][1]
    seg = bytearray(_read(first))
    seg[start:] = bytes(len(seg) - start)  # a bad sector wipes the last record and the SEAL
    store = _clone(src, str(tmp_path / "wiped"), {os.path.basename(first): bytes(seg)})
    with pytest.warns(CorruptionWarning):
        d = IODict(store, segment_bytes=4096)
    with d:
        assert list(d.items()) == list(_replay(ops[:last] + ops[last + 1 :]).items())
        assert d.stats()["corrupt_records"] >= 1


# --- 3. damage after open --------------------------------------------------------------


@pytest.mark.parametrize("region", ["value", "key", "seq", "value_len", "sync"])
def test_record_damaged_while_the_store_is_open_raises_corruption_error_on_read(tmp_path, region):
    path = str(tmp_path / "store")
    ops = [("set", f"k{i}", f"value-{i}") for i in range(6)]
    d = IODict(path)
    with d:
        spans = _write_ops(d, path, ops)
        assert d["k3"] == "value-3"
        seg_path, start, end = spans[3]
        lo, hi = _field_span(_read(seg_path), start, end, region)
        with open(seg_path, "r+b") as f:
            f.seek((lo + hi) // 2)
            byte = f.read(1)
            f.seek((lo + hi) // 2)
            f.write(bytes([byte[0] ^ 0x20]))
        with pytest.raises(CorruptionError):
            d["k3"]
        with pytest.raises(CorruptionError):
            d.get("k3")
        with pytest.raises(CorruptionError):
            d.pop("k3")
        assert [d[f"k{i}"] for i in (0, 1, 2, 4, 5)] == [f"value-{i}" for i in (0, 1, 2, 4, 5)]
        assert len(d) == 6


# --- 4. garbage ------------------------------------------------------------------------

GARBAGE_OPS = [
    *[("set", f"k{i:02d}", f"v{i}" * (i % 7 + 1)) for i in range(20)],
    ("batch", [["k03", "batch-3"], ["b1", [1, 2]], ["b2", {"x": 1}]]),
    ("del", "k05"),
    ("set", "k07", "seven again"),
    ("batch", [["b3", 3], ["k09", "batch-9"]]),
    *[("set", f"m{i:02d}", i) for i in range(10)],
    ("del", "b1"),
]


@pytest.fixture(scope="module")
def garbage_store(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("garbage") / "store")
    with IODict(path) as d:
        spans = _write_ops(d, path, GARBAGE_OPS)
    return path, _only_segment(path), spans


def _written_values() -> dict:
    written: dict = {}
    for op in GARBAGE_OPS:
        pairs = [op[1:]] if op[0] == "set" else op[1] if op[0] == "batch" else []
        for key, value in pairs:
            written.setdefault(key, []).append(value)
    return written


def _check_opened_or_refused(path, check) -> None:
    """Open ``path``: a refusal must be an IODictLogError; success must pass ``check``."""
    files = {name: _read(os.path.join(path, name)) for name in os.listdir(path) if name != "LOCK"}
    try:
        with _bounded(), _quiet():
            d = IODict(path)
    except IODictLogError:
        after = {name: _read(os.path.join(path, name)) for name in os.listdir(path) if name != "LOCK"}
        assert after == files, "a refused open must leave the files as they were"
        return
    with d:
        check(d)


def test_random_bytes_appended_to_a_segment_are_cut_off_like_a_torn_tail(tmp_path, garbage_store):
    src, seg_path, _ = garbage_store
    seg = _read(seg_path)
    expected = list(_replay(GARBAGE_OPS).items())

    @GARBAGE_SETTINGS
    @given(garbage=st.binary(min_size=1, max_size=300))
    def check(garbage):
        store = _clone(src, tempfile.mkdtemp(dir=tmp_path) + "/s", {os.path.basename(seg_path): seg + garbage})
        with _bounded():
            d = _open_clean(store)
        with d:
            assert list(d.items()) == expected
            d["after"] = 1
        with _open_clean(store) as d:
            assert list(d.items()) == [*expected, ("after", 1)]
        shutil.rmtree(store)

    check()


def _frame_units(seg: bytes, ops, spans) -> list[tuple[int, int, tuple | None, bool]]:
    """Every frame ``ops`` wrote, in file order: (start, end, the op it carries, is a batch member).

    The op is ("set", key, value) or ("del", key); None for a batch's BEGIN and COMMIT.
    """
    out = []
    for op, (_, start, end) in zip(ops, spans):
        frames = _frames(seg, start, end)
        if op[0] == "batch":
            assert len(frames) == len(op[1]) + 2
            out.append((*_span(frames[0]), None, False))
            for (key, value), frame in zip(op[1], frames[1:-1]):
                out.append((*_span(frame), ("set", key, value), True))
            out.append((*_span(frames[-1]), None, False))
        else:
            assert len(frames) == 1
            out.append((*_span(frames[0]), op, False))
    return out


def _span(frame: tuple[int, int]) -> tuple[int, int]:
    offset, length = frame
    return offset, offset + length


def _surviving(units, hit: list[bool]) -> list:
    """The ops a reader must apply when the frames marked in ``hit`` are damaged.

    Every intact frame is applied, except batch members with no intact frame after them:
    they cannot be told from a batch torn by a crash, so they are held back.
    """
    kept, held = [], []
    for (_, _, op, is_member), was_hit in zip(units, hit):
        if was_hit:
            continue
        if is_member:
            held.append(op)
            continue
        kept += held
        held = []
        if op is not None:
            kept.append(op)
    return kept


def test_random_bytes_over_part_of_a_segment_lose_only_the_frames_they_hit(tmp_path, garbage_store):
    src, seg_path, spans = garbage_store
    seg = _read(seg_path)
    units = _frame_units(seg, GARBAGE_OPS, spans)
    in_batches = [i for op, (_, start, end) in zip(GARBAGE_OPS, spans) if op[0] == "batch" for i in range(start, end)]
    offsets = st.one_of(st.integers(SEGMENT_HEADER, len(seg) - 1), st.sampled_from(in_batches))

    @GARBAGE_SETTINGS
    @given(data=st.data())
    def check(data):
        offset = data.draw(offsets, label="offset")
        garbage = data.draw(st.binary(min_size=1, max_size=200), label="garbage")
        damaged = bytearray(seg)
        damaged[offset : offset + len(garbage)] = garbage
        changed = [i for i in range(offset, min(len(seg), offset + len(garbage))) if damaged[i] != seg[i]]
        hit = [any(start <= i < end for i in changed) for start, end, _, _ in units]
        kept = _surviving(units, hit)
        store = _clone(src, tempfile.mkdtemp(dir=tmp_path) + "/s", {os.path.basename(seg_path): bytes(damaged)})
        with _bounded(), _quiet():
            d = IODict(store)
        with d:
            assert list(d.items()) == _in_birth_order(d, _replay(kept))
            births = [d.birthtime(k) for k in d]
            assert births == sorted(set(births))
            assert _records(d) == _log_of(kept)
            if any(hit[i] and not all(hit[i + 1 :]) for i in range(len(hit))):
                assert d.stats()["corrupt_records"] >= 1, "damage followed by intact records is counted"
            d["after"] = 1
        with _bounded(), _quiet(), IODict(store) as d:
            assert list(d.items()) == [*_in_birth_order(d, _replay(kept)), ("after", 1)]
            assert _records(d) == [*_log_of(kept), ("set", "after", 1)]
        shutil.rmtree(store)

    check()


def test_surviving_model_keeps_intact_batch_members_unless_nothing_intact_follows_them():
    # The model the test above checks the store against, on a set, a batch of two, a set.
    a, b, c, d = ("set", "a", 1), ("set", "b", 2), ("set", "c", 3), ("set", "d", 4)
    units = [(0, 1, a, False), (1, 2, None, False), (2, 3, b, True), (3, 4, c, True), (4, 5, None, False)]
    units.append((5, 6, d, False))
    A, BEGIN, B, C, COMMIT, D = range(6)

    def hit(*which):
        return [i in which for i in range(len(units))]

    assert _surviving(units, hit()) == [a, b, c, d]
    assert _surviving(units, hit(B)) == [a, c, d]
    assert _surviving(units, hit(BEGIN)) == [a, b, c, d]
    assert _surviving(units, hit(COMMIT)) == [a, b, c, d]
    assert _surviving(units, hit(COMMIT, D)) == [a]  # nothing intact after the members: held back
    assert _surviving(units, hit(BEGIN, COMMIT, D)) == [a]
    assert _surviving(units, hit(A, C, D)) == [b]


def test_random_bytes_as_the_current_file_are_refused_with_iodictlogerror(tmp_path, garbage_store):
    src, _, _ = garbage_store
    expected = list(_replay(GARBAGE_OPS).items())

    def unchanged(d):
        assert list(d.items()) == expected

    @GARBAGE_SETTINGS
    @given(garbage=st.one_of(st.binary(max_size=120), st.binary(max_size=60).map(lambda b: b"\x89IODCUR\n" + b)))
    def check(garbage):
        store = _clone(src, tempfile.mkdtemp(dir=tmp_path) + "/s", {"CURRENT": garbage})
        _check_opened_or_refused(store, unchanged)
        shutil.rmtree(store)

    check()


def test_random_bytes_over_a_segment_header_are_refused_with_iodictlogerror(tmp_path):
    src = str(tmp_path / "src")
    ops = [("set", f"k{i:03d}", [i, "p" * 50]) for i in range(120)]
    with IODict(src, segment_bytes=4096) as d:
        _write_ops(d, src, ops)
    segments = _segments(src)
    assert len(segments) >= 3
    written = _replay(ops)

    def only_written_values(d):
        for key, value in d.items():
            assert written[key] == value

    @GARBAGE_SETTINGS
    @given(data=st.data())
    def check(data):
        seg_path = data.draw(st.sampled_from(segments), label="segment")
        offset = data.draw(st.integers(0, SEGMENT_HEADER - 1), label="offset")
        garbage = data.draw(st.binary(min_size=1, max_size=40), label="garbage")
        seg = bytearray(_read(seg_path))
        seg[offset : offset + len(garbage)] = garbage
        store = _clone(src, tempfile.mkdtemp(dir=tmp_path) + "/s", {os.path.basename(seg_path): bytes(seg)})
        _check_opened_or_refused(store, only_written_values)
        shutil.rmtree(store)

    check()


def test_garbage_over_a_segment_never_yields_a_value_that_was_not_written(tmp_path, garbage_store):
    src, seg_path, _ = garbage_store
    seg = _read(seg_path)
    written = _written_values()

    def only_written_values(d):
        for key, value in d.items():
            assert value in written[key], f"{key!r} = {value!r} was never written"
        for record in d.records():
            assert record.key in written

    @GARBAGE_SETTINGS
    @given(data=st.data())
    def check(data):
        damaged = bytearray(seg)
        for _ in range(data.draw(st.integers(1, 4), label="regions")):
            offset = data.draw(st.integers(0, len(damaged)), label="offset")
            garbage = data.draw(st.binary(min_size=1, max_size=64), label="garbage")
            damaged[offset : offset + len(garbage)] = garbage
        if data.draw(st.booleans(), label="truncate"):
            del damaged[data.draw(st.integers(0, len(damaged)), label="cut") :]
        store = _clone(src, tempfile.mkdtemp(dir=tmp_path) + "/s", {os.path.basename(seg_path): bytes(damaged)})
        _check_opened_or_refused(store, only_written_values)
        shutil.rmtree(store)

    check()


# --- 5. a damaged batch in the middle of a file ----------------------------------------

BATCH_BEFORE = [("set", f"k{i:02d}", f"old-{i}") for i in range(5)]
BATCH = ("batch", [["k01", "batch-overwrite"], ["new1", "batch-1"], ["new2", "batch-2"], ["new3", "batch-3"]])
BATCH_AFTER = [("set", f"a{i:02d}", f"after-{i}") for i in range(4)] + [("set", "k02", "after-2")]


@pytest.mark.parametrize("lost", ["the delete before a key was set again", "a key's first set"])
def test_a_lost_record_never_puts_a_key_out_of_birthtime_order(tmp_path, lost):
    src = str(tmp_path / "src")
    if lost == "a key's first set":
        ops = [("set", "a", 1), ("set", "k", "first"), ("set", "b", 2), ("set", "k", "overwritten")]
        victim, expected = 1, ["a", "k", "b"]  # the overwrite carries k's birthtime: before b's
    else:
        ops = [("set", "k", "old"), ("set", "a", 1), ("del", "k"), ("set", "k", "new")]
        victim, expected = 2, ["a", "k"]  # set again after its delete: born after a
    with IODict(src) as d:
        spans = _write_ops(d, src, ops)
    seg_path, start, end = spans[victim]
    store = _clone(
        src, str(tmp_path / "damaged"), {os.path.basename(seg_path): flip(_read(seg_path), (start + end) * 4)}
    )
    for _ in range(2):  # and again from the hint file the first close leaves
        with pytest.warns(CorruptionWarning), IODict(store) as d:
            assert list(d) == expected
            births = [d.birthtime(k) for k in d]
            assert births == sorted(births)


def test_a_lost_compacted_record_and_an_overwrite_in_a_later_segment_keep_birthtime_order(tmp_path):
    # The damage is in one segment, what it puts out of order in the next: the order is
    # put right across segments, not only within the one that held the damage.
    src = str(tmp_path / "src")
    with IODict(src, auto_compact=False) as d:
        d["a"] = 1
        d["b"] = 2
        d.compact()  # a and b now sit in a compacted segment
        d["c"] = 3
        d["a"] = 10  # an overwrite keeps a's birthtime
    from iodict_log.manifest import read_manifest

    compacted = os.path.join(src, f"{read_manifest(src).segments[0]:010d}.seg")  # (CURRENT's first)
    seg = _read(compacted)
    start = seg.index(msgpack.packb("a")) - FRAME_HEADER  # a's compacted record (key "a" packs to 1 byte)
    store = _clone(src, str(tmp_path / "damaged"), {os.path.basename(compacted): flip(seg, (start + 20) * 8)})
    for name in os.listdir(store):
        if name == "HINT":
            os.unlink(os.path.join(store, name))
    with pytest.warns(CorruptionWarning), IODict(store) as d:
        assert list(d.items()) == [("a", 10), ("b", 2), ("c", 3)]
        births = [d.birthtime(k) for k in d]
        assert births == sorted(births)


def test_damage_over_a_batchs_commit_and_the_seal_keeps_the_batchs_intact_members(tmp_path):
    # The SEAL proves the batch before it was written whole: only its COMMIT is unreadable.
    src = str(tmp_path / "src")
    batch = ("batch", [[f"b{i}", [i, "x" * 100]] for i in range(5)])  # ~700 bytes
    with IODict(src, segment_bytes=4096) as d:
        i = 0
        while os.path.getsize(_segments(src)[-1]) < 4096 - 300:
            _apply(d, ("set", f"k{i:03d}", "p" * 60))
            i += 1
        spans = _write_ops(d, src, [batch])  # the segment is past segment_bytes now...
        d["next"] = "rolls first"  # ...so this write SEALs it and starts the next one
    seg_path, start, end = spans[0]
    assert len(_segments(src)) == 2 and seg_path == _segments(src)[0]
    commit = _frames(_read(seg_path), start, end)[-1][0]
    seg = bytearray(_read(seg_path))
    seg[commit:] = bytes(len(seg) - commit)  # a bad sector over the COMMIT and the SEAL after it
    store = _clone(src, str(tmp_path / "damaged"), {os.path.basename(seg_path): bytes(seg)})
    with pytest.warns(CorruptionWarning), IODict(store, segment_bytes=4096) as d:
        assert [d[f"b{i}"] for i in range(5)] == [[i, "x" * 100] for i in range(5)]
        assert d["next"] == "rolls first" and d.stats()["corrupt_records"] == 1
        replayed = {r.key: r.value for r in d.records()}  # (only sets here)
        assert replayed == dict(d.items()), "records() must replay to what the store holds"
    with _quiet(), IODict(store, segment_bytes=4096) as d:  # a fresh sequence number for what comes next
        d["after"] = 1
        seqs = [r.seq for r in d.records()]
        assert len(seqs) == len(set(seqs)) and seqs == sorted(seqs)


@pytest.mark.parametrize("frame", ["begin", "first member", "middle member", "last member", "commit"])
def test_damaged_frame_of_a_batch_in_the_middle_of_a_file_loses_only_that_frame(tmp_path, frame):
    src = str(tmp_path / "src")
    with IODict(src) as d:
        spans = _write_ops(d, src, [*BATCH_BEFORE, BATCH, *BATCH_AFTER])
    seg_path, start, end = spans[len(BATCH_BEFORE)]
    seg = _read(seg_path)
    frames = _frames(seg, start, end)
    members = BATCH[1]
    assert len(frames) == 2 + len(members)
    index = {"begin": 0, "first member": 1, "middle member": 2, "last member": len(members), "commit": -1}[frame]
    lost = {"begin": None, "commit": None}.get(frame, index - 1)  # which member the damage costs
    kept_members = [m for i, m in enumerate(members) if i != lost]
    expected_ops = [*BATCH_BEFORE, ("batch", kept_members), *BATCH_AFTER]
    expected = list(_replay(expected_ops).items())
    before = dict(_replay(BATCH_BEFORE))
    offset, length = frames[index]
    targets = {offset + HEADER_FIELDS["sync"][0], offset + HEADER_FIELDS["seq"][0], offset + length - 1}
    for target in sorted(targets):  # a damaged header (resynced past) and a damaged payload (skipped by length)
        store = _clone(src, str(tmp_path / f"damaged{target}"), {os.path.basename(seg_path): flip(seg, target * 8)})
        with pytest.warns(CorruptionWarning):
            d = IODict(store)
        with d:
            where = f"{frame}, byte {target - offset} of the frame"
            for key, value in kept_members:
                assert d[key] == value, f"{where}: intact member {key!r} of the batch is missing or wrong"
            for op in BATCH_AFTER:
                assert d[op[1]] == op[2], f"{where}: a later write is missing"
            if lost is not None:
                key = members[lost][0]
                if key in before:
                    assert d[key] == before[key], f"{where}: {key!r} must keep its older value"
                else:
                    assert key not in d, f"{where}"
            assert list(d.items()) == expected, where
            assert _records(d) == _log_of(expected_ops), where
            assert d.stats()["corrupt_records"] >= 1
            d["later"] = target
        with _quiet(), IODict(store) as d:
            assert list(d.items()) == [*expected, ("later", target)], where
        shutil.rmtree(store)


# --- 6. write errors -------------------------------------------------------------------


def _partial_write_then_enospc(real_write):
    def write(fd, data):
        real_write(fd, bytes(data[: max(1, len(data) // 2)]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    return write


FAILING_OPS = {
    "new key": ("set", "fresh", "never stored"),
    "overwrite": ("set", "k01", "never stored"),
    "batch": ("batch", [["fresh", 1], ["k02", "never stored"], ["fresh2", "x" * 500]]),
    "delete": ("del", "k03"),
}


@pytest.mark.parametrize("kind", FAILING_OPS)
def test_partial_write_then_enospc_raises_and_leaves_no_trace(tmp_path, monkeypatch, kind):
    path = str(tmp_path / "store")
    ops = [("set", f"k{i:02d}", f"value-{i}") for i in range(8)]
    failing = FAILING_OPS[kind]
    d = IODict(path)
    with d:
        _write_ops(d, path, ops)
        seg_path = _only_segment(path)
        size = os.path.getsize(seg_path)
        with monkeypatch.context() as patch:
            patch.setattr(fileops, "write", _partial_write_then_enospc(fileops.write))
            with pytest.raises(OSError) as raised:
                _apply(d, failing)
        assert raised.value.errno == errno.ENOSPC
        assert os.path.getsize(seg_path) == size, "the partial bytes must be cut away"
        assert list(d.items()) == list(_replay(ops).items())
        _apply(d, failing)  # space is back
        assert list(d.items()) == list(_replay([*ops, failing]).items())
    with _open_clean(path) as d:
        assert list(d.items()) == list(_replay([*ops, failing]).items())
        assert _records(d) == _log_of([*ops, failing])


def test_fdatasync_eio_with_sync_true_raises_but_keeps_the_whole_record(tmp_path, monkeypatch):
    # The bytes landed whole before fsync failed: other processes may already have read
    # them, so taking them back would make two processes disagree. The call raises (the
    # write may not survive a power loss), the record stays like any unsynced write.
    path = str(tmp_path / "store")
    ops = [("set", f"k{i:02d}", f"value-{i}") for i in range(5)]
    d = IODict(path, sync=True)
    with d:
        _write_ops(d, path, ops)
        watcher = IODict(path)

        def fdatasync(fd):
            raise OSError(errno.EIO, os.strerror(errno.EIO))

        with monkeypatch.context() as patch:
            patch.setattr(fileops, "fdatasync", fdatasync)
            with pytest.raises(OSError) as raised:
                d["unsynced"] = "landed"
            with pytest.raises(OSError):
                d.update({"unsynced2": 1, "k00": "landed too"})
        assert raised.value.errno == errno.EIO and "fsync" in str(raised.value)
        expected = [*_replay(ops).items(), ("unsynced", "landed"), ("unsynced2", 1)]
        expected[0] = ("k00", "landed too")
        assert list(d.items()) == expected
        assert list(watcher.items()) == expected  # both processes agree
        watcher.close()
        d["later"] = "works"
    with _open_clean(path, sync=True) as d:
        assert list(d.items()) == [*expected, ("later", "works")]
        assert d.stats()["corrupt_records"] == 0


def _fill_to_roll(d, path) -> list:
    """Write until the next write must start a new segment (segment_bytes=4096)."""
    ops = []
    while os.path.getsize(_segments(path)[-1]) < 4096:
        ops.append(("set", f"k{len(ops):03d}", {"n": len(ops), "pad": "p" * 40}))
        _apply(d, ops[-1])
    return ops


def _enospc_for_new_files(real_write):
    """A full disk as a store sees it: a file with blocks still grows, a new file cannot."""

    def write(fd, data):
        if os.fstat(fd).st_size == 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    return write


@pytest.mark.parametrize("then", ["write again", "reopen and write"])
def test_enospc_while_starting_a_new_segment_keeps_the_store_usable(tmp_path, monkeypatch, then):
    path = str(tmp_path / "store")
    d = IODict(path, segment_bytes=4096)
    ops = _fill_to_roll(d, path)
    with monkeypatch.context() as patch:
        patch.setattr(fileops, "write", _enospc_for_new_files(fileops.write))
        with pytest.raises(OSError) as raised:
            d["trigger"] = "no room for a new segment"
    assert raised.value.errno == errno.ENOSPC
    assert "trigger" not in d
    assert list(d.items()) == list(_replay(ops).items())
    if then == "reopen and write":
        d.close()
        d = _open_clean(path, segment_bytes=4096)
    with d:
        d["later"] = "after the disk was freed"
    with _open_clean(path, segment_bytes=4096) as d:
        assert list(d.items()) == [*_replay(ops).items(), ("later", "after the disk was freed")]


# --- child processes ---------------------------------------------------------------------


class _Child:
    """A child Python process whose stdout is read line by line, each read bounded in time."""

    def __init__(self, tmp_path, script: str, *args: str) -> None:
        self.stderr_path = os.path.join(tmp_path, f"stderr-{os.getpid()}-{id(self)}.txt")
        self._stderr = os.open(self.stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", script, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            cwd=str(tmp_path),  # import the installed iodict_log, not a copy in the working directory
        )
        self._buf = b""
        self._deadline = time.monotonic() + CHILD_SECONDS

    def readline(self) -> str | None:
        """The next line, or None at end of output."""
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = self._deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                self.kill()
                raise AssertionError(f"child silent for too long; stderr:\n{self.stderr()}")
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()

    def send(self, line: str) -> None:
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.wait()

    def wait(self) -> int:
        code = self.proc.wait(timeout=CHILD_SECONDS)
        self.proc.stdin.close()
        self.proc.stdout.close()
        if self._stderr >= 0:
            os.close(self._stderr)
            self._stderr = -1
        return code

    def stderr(self) -> str:
        with open(self.stderr_path, errors="replace") as f:
            return f.read()


# --- 7. a real crash ---------------------------------------------------------------------

# Op i of a crash round writes one new key (or, every 5th op, a batch of two new keys
# and an overwrite of the round's "hot" key), then prints i once the call has returned.
CRASH_WRITER = r"""
import sys
import iodict_log

path, prefix, segment_bytes, sync = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "sync"
d = iodict_log.IODict(path, segment_bytes=segment_bytes, sync=sync)
for i in range(100000):
    if i % 5 == 4:
        d.update({f"{prefix}/{i}/a": [i, "a"], f"{prefix}/{i}/b": [i, "b" * (i % 50)], f"{prefix}/hot": i})
    else:
        d[f"{prefix}/{i}"] = [i, "x" * (i % 60)]
    sys.stdout.write(f"{i}\n")
    sys.stdout.flush()
"""


def _crash_op(prefix: str, i: int):
    if i % 5 == 4:
        return (
            "batch",
            [[f"{prefix}/{i}/a", [i, "a"]], [f"{prefix}/{i}/b", [i, "b" * (i % 50)]], [f"{prefix}/hot", i]],
        )
    return ("set", f"{prefix}/{i}", [i, "x" * (i % 60)])


def _new_key(op) -> str:
    return op[1] if op[0] == "set" else op[1][0][0]


def test_kill_9_loses_no_acknowledged_write_and_opens_clean(tmp_path):
    """Guards what a kill can do: lose nothing acknowledged, leave nothing to repair. (A SIGKILL
    never splits one write(), so it cannot leave a batch cut short: the torn-tail sweep above
    and test_crashpoints[batch.half-*] check that such a batch is dropped whole.)"""
    path = str(tmp_path / "store")
    seed = 20240611
    rng = random.Random(seed)
    baseline: list = []  # the store's items, as verified after the previous round
    for round_ in range(12):
        prefix = f"r{round_:02d}"
        sync = "sync" if round_ % 4 == 3 else "nosync"
        acked_wanted = rng.randint(1, 300)
        child = _Child(tmp_path, CRASH_WRITER, path, prefix, "4096", sync)
        acked = 0
        while acked < acked_wanted:
            line = child.readline()
            assert line is not None, f"writer exited early (seed {seed}); stderr:\n{child.stderr()}"
            assert int(line) == acked
            acked += 1
        child.kill()

        d = _open_clean(path, segment_bytes=4096)
        with d:
            items = list(d.items())
            assert items[: len(baseline)] == baseline, f"round {round_}: earlier rounds changed (seed {seed})"
            mine = dict(items[len(baseline) :])
            done = 0  # how many ops of this round made it: a prefix of at least the acknowledged ones
            while _new_key(_crash_op(prefix, done)) in mine:
                done += 1
            assert done >= acked, f"round {round_}: op {done} was acknowledged but is missing (seed {seed})"
            ops = [_crash_op(prefix, i) for i in range(done)]
            assert items[len(baseline) :] == list(_replay(ops).items()), f"round {round_} (seed {seed})"
            d[f"{prefix}/after"] = "written after the crash"
            baseline = list(d.items())
    with _open_clean(path, segment_bytes=4096) as d:
        assert list(d.items()) == baseline
        d["final"] = 1
        assert d["final"] == 1


# A writer that dies (like kill -9) at the Nth write into a brand-new file: the new
# segment while rolling (N=1), or the new CURRENT that lists it (N=2).
DYING_ROLLER = r"""
import os, sys
import iodict_log
from iodict_log import fileops

path, die_at = sys.argv[1], int(sys.argv[2])
d = iodict_log.IODict(path, segment_bytes=4096)
real_write = fileops.write
new_file_writes = 0

def write(fd, data):
    global new_file_writes
    if os.fstat(fd).st_size == 0:
        new_file_writes += 1
        if new_file_writes == die_at:
            os._exit(137)
    return real_write(fd, data)

fileops.write = write
for i in range(1000):
    d[f"k{i:03d}"] = [i, "p" * 40]
    sys.stdout.write(f"{i}\n")
    sys.stdout.flush()
"""


@pytest.mark.parametrize("die_at", [1, 2], ids=["creating the segment", "writing CURRENT"])
def test_crash_while_rolling_to_a_new_segment_loses_nothing_and_later_writes_stay(tmp_path, die_at):
    path = str(tmp_path / "store")
    child = _Child(tmp_path, DYING_ROLLER, path, str(die_at))
    acked = 0
    while child.readline() is not None:
        acked += 1
    assert child.wait() == 137, child.stderr()
    assert 0 < acked < 1000
    ops = [("set", f"k{i:03d}", [i, "p" * 40]) for i in range(acked)]
    with _open_clean(path, segment_bytes=4096) as d:
        assert list(d.items()) == list(_replay(ops).items())
        d["after"] = "written after the crash"
    with _open_clean(path, segment_bytes=4096) as d:
        assert list(d.items()) == [*_replay(ops).items(), ("after", "written after the crash")]


# --- 8. another process's view -----------------------------------------------------------

OTHER_WRITER = r"""
import json, sys
import iodict_log

path, ops = sys.argv[1], json.loads(sys.argv[2])
with iodict_log.IODict(path, segment_bytes=4096) as d:
    for op in ops:
        if op[0] == "set":
            d[op[1]] = op[2]
        elif op[0] == "del":
            del d[op[1]]
        else:
            d.update({key: value for key, value in op[1]})
"""

OTHER_READER = r"""
import json, sys
import iodict_log


def view(d):
    return {
        "len": len(d),
        "keys": list(d),
        "items": [[k, v] for k, v in d.items()],
        "get": {k: d[k] for k in d},
        "records": [[r.op, r.key, r.value] for r in d.records()],
        "segments": d.stats()["segments"],
    }

with iodict_log.IODict(sys.argv[1], segment_bytes=4096) as d:
    print(json.dumps(view(d)), flush=True)
    assert sys.stdin.readline() == "go\n"
    print(json.dumps(view(d)), flush=True)
"""


def _other_process_ops(who: str) -> list:
    return [
        *[("set", f"{who}-{i:03d}", {"i": i, "pad": who[0] * 90}) for i in range(70)],
        ("batch", [[f"{who}-batch-a", [1, 2]], ["p-000", f"overwritten by {who}"], [f"{who}-batch-b", "b"]]),
        ("del", "p-001"),
        ("set", "p-002", f"also from {who}"),
        *[("set", f"{who}-late-{i:02d}", "z" * 120) for i in range(20)],
    ]


def test_writes_of_another_process_are_seen_on_the_next_call_without_reopening(tmp_path):
    path = str(tmp_path / "store")
    mine = [("set", f"p-{i:03d}", f"parent-{i}") for i in range(5)]
    theirs = _other_process_ops("child")
    d = IODict(path, segment_bytes=4096)
    with d:
        for op in mine:
            _apply(d, op)
        assert len(d) == 5 and d.stats()["segments"] == 1
        child = subprocess.run(
            [sys.executable, "-c", OTHER_WRITER, path, json.dumps(theirs)],
            cwd=str(tmp_path),
            capture_output=True,
            text=True,
            timeout=CHILD_SECONDS,
        )
        assert child.returncode == 0, child.stderr
        expected = _replay([*mine, *theirs])
        assert len(d) == len(expected)
        assert d["child-batch-a"] == [1, 2]
        assert "p-001" not in d
        assert list(d) == list(expected)
        assert list(d.items()) == list(expected.items())
        assert _records(d) == _log_of([*mine, *theirs])
        assert d.stats()["segments"] > 1, "the child's writes rolled segments"
        d["p-after"] = "parent again"
    with _open_clean(path, segment_bytes=4096) as d:
        assert list(d.items()) == [*expected.items(), ("p-after", "parent again")]


def test_another_process_sees_this_process_writes_on_its_next_call(tmp_path):
    path = str(tmp_path / "store")
    first = [("set", f"p-{i:03d}", f"parent-{i}") for i in range(5)]
    then = _other_process_ops("parent")
    d = IODict(path, segment_bytes=4096)
    with d:
        for op in first:
            _apply(d, op)
        child = _Child(tmp_path, OTHER_READER, path)
        try:
            before = json.loads(child.readline() or "null")
            assert before is not None, child.stderr()
            assert before["items"] == [list(item) for item in _replay(first).items()]
            for op in then:
                _apply(d, op)
            assert d.stats()["segments"] > 1, "these writes rolled segments"
            child.send("go")
            seen = json.loads(child.readline() or "null")
            assert seen is not None, child.stderr()
            assert child.wait() == 0, child.stderr()
        finally:
            child.kill()
    expected = _replay([*first, *then])
    assert seen["len"] == len(expected)
    assert seen["keys"] == list(expected)
    assert seen["items"] == [list(item) for item in expected.items()]
    assert seen["get"] == expected
    assert [tuple(r) for r in seen["records"]] == _log_of([*first, *then])
    assert seen["segments"] == len(_segments(path))
