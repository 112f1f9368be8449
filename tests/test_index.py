"""The in-memory index: packed locations, birthtime order, live byte accounting."""

from __future__ import annotations

import os
from collections import OrderedDict

import pytest
from helpers import SALT
from hypothesis import given, settings
from hypothesis import strategies as st

from iodict_log import IODict
from iodict_log import index as index_module
from iodict_log.format import (
    OP_BATCH_BEGIN,
    OP_BATCH_COMMIT,
    OP_DELETE,
    OP_SEAL,
    OP_SET,
    Frame,
    decode_frame,
    encode_frame,
)
from iodict_log.index import (
    MAX_OFFSET,
    MAX_SLOTS,
    KeyIndex,
    location_birthtime,
    pack_location,
    plain_key,
    unpack_location,
)
from iodict_log.serialize import decode_key, encode_key

SETTINGS = settings(max_examples=200, deadline=None)

MAX_LENGTH = 2**32 - 1
BIRTHTIMES = st.integers(0, 2**64 - 1)
SLOTS = st.integers(0, MAX_SLOTS - 1)
OFFSETS = st.integers(0, MAX_OFFSET)
LENGTHS = st.integers(0, MAX_LENGTH)


def loc(length: int, birthtime: int = 1, slot: int = 0, offset: int = 0) -> int:
    return pack_location(birthtime, slot, offset, length)


# --- packed locations -----------------------------------------------------------


def test_field_maxima():
    assert MAX_SLOTS == 2**16
    assert MAX_OFFSET == 2**32 - 1


@pytest.mark.parametrize(
    "fields",
    [
        (0, 0, 0, 0),
        (2**64 - 1, MAX_SLOTS - 1, MAX_OFFSET, MAX_LENGTH),
        (0, MAX_SLOTS - 1, 0, 0),
        (0, 0, MAX_OFFSET, 0),
        (0, 0, 0, MAX_LENGTH),
        (2**64 - 1, 0, 0, 0),
        (1_700_000_000_000_000_000, 1, 16, 37),
    ],
    ids=repr,
)
def test_location_round_trips_at_field_maxima(fields):
    birthtime, slot, offset, length = fields
    packed = pack_location(birthtime, slot, offset, length)
    assert unpack_location(packed) == (slot, offset, length)
    assert location_birthtime(packed) == birthtime


@SETTINGS
@given(birthtime=BIRTHTIMES, slot=SLOTS, offset=OFFSETS, length=LENGTHS)
def test_location_round_trips(birthtime, slot, offset, length):
    packed = pack_location(birthtime, slot, offset, length)
    assert type(packed) is int
    assert unpack_location(packed) == (slot, offset, length)
    assert location_birthtime(packed) == birthtime


@SETTINGS
@given(a=st.tuples(BIRTHTIMES, SLOTS, OFFSETS, LENGTHS), b=st.tuples(BIRTHTIMES, SLOTS, OFFSETS, LENGTHS))
def test_locations_order_by_birthtime_first(a, b):
    if a[0] != b[0]:
        assert (pack_location(*a) < pack_location(*b)) == (a[0] < b[0])
    assert (pack_location(*a) == pack_location(*b)) == (a == b)


# --- KeyIndex -------------------------------------------------------------------


def test_empty_index():
    index = KeyIndex(decode_key)
    assert len(index) == 0 and list(index) == [] and list(reversed(index)) == []
    assert index.live_bytes == 0
    assert index.get("missing") is None and "missing" not in index
    with pytest.raises(KeyError):
        index.first()


def test_keys_iterate_in_insertion_order_and_reversed():
    index = KeyIndex(decode_key)
    keys = ["b", "a", 3, (1, "x"), b"z"]
    for i, key in enumerate(keys):
        index.set(key, loc(10 + i, birthtime=i))
    assert list(index) == keys
    assert list(reversed(index)) == keys[::-1]
    assert index.first() == "b"
    assert [plain_key(k) for k, _ in index.items()] == keys
    assert all(key in index for key in keys)


def test_overwrite_keeps_place():
    index = KeyIndex(decode_key)
    for key in "abc":
        index.set(key, loc(1))
    index.set("a", loc(5, birthtime=9))
    assert list(index) == ["a", "b", "c"]
    assert index.first() == "a"
    assert index.get("a") == loc(5, birthtime=9)


def test_delete_then_set_moves_to_end():
    index = KeyIndex(decode_key)
    for key in "abc":
        index.set(key, loc(1))
    index.delete("a")
    assert list(index) == ["b", "c"] and "a" not in index
    index.set("a", loc(1))
    assert list(index) == ["b", "c", "a"]
    assert list(reversed(index)) == ["a", "c", "b"]
    assert index.first() == "b"


def test_delete_of_missing_key_is_a_no_op():
    index = KeyIndex(decode_key)
    index.set("a", loc(7))
    index.delete("nope")
    assert list(index) == ["a"] and index.live_bytes == 7


def test_live_bytes_counts_only_current_records():
    index = KeyIndex(decode_key)
    index.set("a", loc(100))
    index.set("b", loc(20, offset=MAX_OFFSET, slot=MAX_SLOTS - 1, birthtime=2**64 - 1))
    assert index.live_bytes == 120
    index.set("a", loc(30))  # the old 100 bytes are dead now
    assert index.live_bytes == 50
    index.delete("b")
    assert index.live_bytes == 30
    index.set("b", loc(MAX_LENGTH))
    assert index.live_bytes == 30 + MAX_LENGTH
    index.delete("a")
    index.delete("b")
    assert index.live_bytes == 0 and len(index) == 0


def test_reset_forgets_everything():
    index = KeyIndex(decode_key)
    for i in range(10):
        index.set(i, loc(i + 1))
    index.reset()
    assert len(index) == 0 and index.live_bytes == 0 and list(index) == []
    with pytest.raises(KeyError):
        index.first()
    index.set("new", loc(4))
    assert list(index) == ["new"] and index.live_bytes == 4


def test_index_finds_keys_decoded_from_frames_by_equality():
    index = KeyIndex(decode_key)
    index.set(decode_key(encode_key((1, "a", b"b"))), loc(3))
    assert (1, "a", b"b") in index
    assert index.get(tuple([1, "a", b"b"])) == loc(3)
    assert (1, "a", "b") not in index


operations = st.lists(
    st.tuples(st.sampled_from(["set", "delete"]), st.sampled_from(["a", "b", "c", 1, 2, (1,), b"a"]), LENGTHS),
    max_size=40,
)


@SETTINGS
@given(ops=operations)
def test_index_matches_an_ordered_dict_model(ops):
    index = KeyIndex(decode_key)
    model: OrderedDict = OrderedDict()
    for i, (op, key, length) in enumerate(ops):
        if op == "set":
            location = loc(length, birthtime=i, offset=i)
            index.set(key, location)
            model[key] = location  # OrderedDict: overwrite keeps place
        else:
            index.delete(key)
            model.pop(key, None)
    assert list(index) == list(model)
    assert list(reversed(index)) == list(reversed(model))
    assert [(plain_key(k), v) for k, v in index.items()] == list(model.items())
    assert len(index) == len(model)
    assert index.live_bytes == sum(unpack_location(v)[2] for v in model.values())
    if model:
        assert index.first() == next(iter(model))


# --- apply() with frames ------------------------------------------------------------


def frame(op: int, key, value: bytes = b"", seq: int = 0) -> Frame:
    raw = encode_frame(op, 0, seq, seq, encode_key(key), value, salt=SALT)
    decoded = decode_frame(raw, 0, SALT)
    assert decoded is not None
    return decoded


def test_apply_set_and_delete_frames():
    index = KeyIndex(decode_key)
    index.apply(frame(OP_SET, "a", b"1"), loc(10, birthtime=1))
    index.apply(frame(OP_SET, ("t", 2), b"2"), loc(20, birthtime=2))
    index.apply(frame(OP_SET, b"c", b"3"), loc(30, birthtime=3))
    assert list(index) == ["a", ("t", 2), b"c"]
    assert index.live_bytes == 60

    index.apply(frame(OP_SET, "a", b"new"), loc(5, birthtime=4))
    assert list(index) == ["a", ("t", 2), b"c"]
    assert index.get("a") == loc(5, birthtime=4)
    assert index.live_bytes == 55

    index.apply(frame(OP_DELETE, ("t", 2)), 0)
    assert list(index) == ["a", b"c"] and index.live_bytes == 35

    index.apply(frame(OP_SET, ("t", 2), b"again"), loc(1, birthtime=5))
    assert list(index) == ["a", b"c", ("t", 2)] and index.live_bytes == 36

    index.apply(frame(OP_DELETE, "never set"), 0)
    assert len(index) == 3 and index.live_bytes == 36


def test_apply_decodes_keys_with_the_given_decoder():
    seen = []

    def decoder(data: bytes):
        seen.append(data)
        return decode_key(data)

    index = KeyIndex(decoder)
    index.apply(frame(OP_SET, (1, b"x")), loc(1))
    assert seen == [encode_key((1, b"x"))]
    assert list(index) == [(1, b"x")]


@pytest.mark.parametrize("op", [OP_BATCH_BEGIN, OP_BATCH_COMMIT, OP_SEAL], ids=["begin", "commit", "seal"])
def test_apply_ignores_bookkeeping_frames(op):
    index = KeyIndex(decode_key)
    index.set("a", loc(3))
    bookkeeping = decode_frame(encode_frame(op, 0, 1, 1, b"", b"\x00\x00\x00\x00", salt=SALT), 0, SALT)
    index.apply(bookkeeping, loc(99))
    assert list(index) == ["a"] and index.live_bytes == 3


# --- colliding hashes (issue 21.6) --------------------------------------------------

_M64 = 2**64 - 1
_P1, _P2, _P5 = 11400714785074694791, 14029467366897019727, 2870177450012600261  # CPython's tuple hash primes


def colliding_pairs(n: int, target: int = 12345) -> list[tuple[int, int]]:
    """``n`` (int, int) keys with one CPython tuple hash: CPython hashes small ints
    to themselves and combines a tuple's item hashes with an unkeyed xxHash-like
    step, so for each ``a`` the hash that ``b`` needs can be solved for; the pairs
    whose solution is an int's hash are kept."""

    def rotl(x: int) -> int:
        return ((x << 31) | (x >> 33)) & _M64

    inverse = pow(_P2, -1, 2**64)
    out: list[tuple[int, int]] = []
    a = 0
    while len(out) < n:
        a += 1
        acc = rotl((_P5 + a * _P2) & _M64) * _P1 & _M64
        wanted = (target - acc) * inverse & _M64
        b = wanted - 2**64 if wanted >= 2**63 else wanted
        if 0 <= b < 2**61 - 1 or -(2**61 - 1) < b < -1:  # (an int's own hash; -1 hashes to -2)
            out.append((a, b))
    return out


COLLIDING = colliding_pairs(3000)


def test_the_colliding_keys_do_collide():
    assert len(set(COLLIDING)) == 3000 and len({hash(key) for key in COLLIDING}) == 1


class Probes:
    """Counts HashedKey comparisons: a dict compares keys only when their full
    hashes are equal, so on colliding hashes the count grows with the square of
    the keys, and otherwise with the lookups (one per hit)."""

    def __init__(self, monkeypatch) -> None:
        self.count = 0
        compare = index_module.HashedKey.__eq__

        def counting(this, other):
            self.count += 1
            return compare(this, other)

        monkeypatch.setattr(index_module.HashedKey, "__eq__", counting)


def test_colliding_tuple_keys_are_held_without_their_tuple_hash(monkeypatch):
    # guards 21.6: (int, int) keys with one hash made open and update() quadratic (15 s for 1 MB)
    index = KeyIndex(decode_key)
    probes = Probes(monkeypatch)
    for i, key in enumerate(COLLIDING):
        index.apply(frame(OP_SET, key), loc(40, birthtime=i + 1))
    for key in COLLIDING:
        assert index.get(key) is not None
    held = list(index._locations)
    assert all(type(key) is not tuple for key in held)  # no dict here ever hashes the tuple
    assert len({hash(key) for key in held}) == len(COLLIDING)
    assert probes.count <= 2 * len(COLLIDING)  # (quadratic: ~4.5 million)
    assert list(index) == COLLIDING


def test_opening_and_updating_colliding_tuple_keys_stays_linear(tmp_path, monkeypatch):
    # guards 21.6 end to end: update()'s bookkeeping, the scan at open, the hint and rebase
    path = tmp_path / "s"
    probes = Probes(monkeypatch)
    with IODict(path, auto_compact=False) as d:
        d.update((key, i) for i, key in enumerate(COLLIDING))
        d.update((key, -i) for i, key in enumerate(COLLIDING))  # all present: every one a hit
        assert probes.count <= 10 * len(COLLIDING)
        probes.count = 0
        d.compact()
        assert list(d) == COLLIDING  # (this process moves onto the copies too)
        assert probes.count <= 10 * len(COLLIDING)
    for hint in (True, False):
        if not hint:
            os.unlink(path / "HINT")
        probes.count = 0
        with IODict(path) as d:
            assert d.stats()["index_from_hint"] is hint
            assert list(d.items()) == [(key, -i) for i, key in enumerate(COLLIDING)]
            assert probes.count <= 10 * len(COLLIDING)
