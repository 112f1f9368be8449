"""Keys and values to bytes and back: exact types, canonical keys, clear refusals."""

from __future__ import annotations

import collections
import datetime
import enum
import fractions
import pickle
import threading

import pytest
from helpers import same
from hypothesis import given, settings
from hypothesis import strategies as st

from iodict_log.errors import IODictLogError
from iodict_log.format import FLAG_BATCH, FLAG_LZ4, FLAG_PICKLE
from iodict_log.serialize import Serializer, canonical_key, decode_key, encode_key

SETTINGS = settings(max_examples=200, deadline=None)


def test_same_helper_tells_types_apart():
    assert same((1, [b"x"]), (1, [b"x"]))
    assert not same((1, 2), [1, 2])
    assert not same([1], [True])
    assert not same({1: "a"}, {1.0: "a"})
    assert not same(b"x", "x")
    assert not same(0.0, -0.0)
    assert same(float("nan"), float("nan"))


# --- keys ---------------------------------------------------------------------

INT_KEYS = st.integers(-(2**63), 2**64 - 1)
SCALAR_KEYS = st.one_of(st.text(max_size=20), st.binary(max_size=20), INT_KEYS)
KEYS = st.recursive(SCALAR_KEYS, lambda inner: st.lists(inner, max_size=4).map(tuple), max_leaves=12)


class StrSub(str):
    pass


class BytesSub(bytes):
    pass


class IntSub(int):
    pass


class Color(enum.IntEnum):
    RED = 1


GOOD_KEYS = [
    "",
    "key",
    "ünïcödé ✓",
    b"",
    b"\x00\xff",
    0,
    -1,
    2**64 - 1,
    -(2**63),
    (),
    ("a", b"b", 3),
    (("nested", (1, (2, ()))), b"x"),
]

# Keys a dict holds as one key with a canonical one: stored as that one.
EQUAL_KEYS = [
    (1.0, 1),
    (True, 1),
    (False, 0),
    (-(2.0**63), -(2**63)),
    (StrSub("s"), "s"),
    (BytesSub(b"b"), b"b"),
    (IntSub(1), 1),
    (("ok", True, (2.0,)), ("ok", 1, (2,))),
]

BAD_KEYS = [
    1.5,
    float("nan"),
    float("inf"),
    2.0**64,
    None,
    [1, 2],
    {"a": 1},
    {1},
    frozenset({1}),
    2**64,
    -(2**63) - 1,
    bytearray(b"b"),
    ("ok", 1.5),
    ("ok", [1]),
    (("deep", (None,)),),
    ("ok", 2**64),
    object(),
]


@pytest.mark.parametrize("key", GOOD_KEYS, ids=repr)
def test_allowed_key_round_trips_with_exact_types(key):
    assert same(canonical_key(key), key)
    data = encode_key(key)
    assert type(data) is bytes
    assert same(decode_key(data), key)


@pytest.mark.parametrize("key", BAD_KEYS, ids=repr)
def test_refused_key_raises_type_error(key):
    with pytest.raises(TypeError):
        canonical_key(key)
    with pytest.raises(TypeError):
        encode_key(key)


@pytest.mark.parametrize(("key", "canonical"), EQUAL_KEYS, ids=repr)
def test_keys_equal_in_a_dict_are_stored_as_one_canonical_key(key, canonical):
    assert key == canonical
    assert same(canonical_key(key), canonical)
    assert encode_key(key) == encode_key(canonical)
    assert same(decode_key(encode_key(key)), canonical)


@SETTINGS
@given(key=KEYS)
def test_key_round_trips_with_exact_types(key):
    decoded = decode_key(encode_key(key))
    assert same(decoded, key)
    hash(decoded)  # usable as a dict key


def rebuilt(key):
    """An equal key made of different objects."""
    if type(key) is tuple:
        return tuple([rebuilt(part) for part in key])
    if type(key) is int:
        return int(str(key))
    if type(key) is str:
        return "".join(list(key))
    return bytes(bytearray(key))


@SETTINGS
@given(key=KEYS)
def test_equal_keys_encode_to_equal_bytes(key):
    assert encode_key(rebuilt(key)) == encode_key(key)


@SETTINGS
@given(a=KEYS, b=KEYS)
def test_different_keys_encode_to_different_bytes(a, b):
    assert (encode_key(a) == encode_key(b)) == (a == b)


def test_keys_of_different_types_encode_differently():
    encoded = [encode_key(k) for k in ("1", b"1", 1, ("1",), (b"1",), (1,), "", b"", ())]
    assert len(set(encoded)) == len(encoded)


def test_str_key_with_lone_surrogate_round_trips_or_raises_type_error():
    # os.listdir() hands out such names (surrogateescape) for non-UTF-8 file names.
    # They are str keys: they must work, or be refused with the documented TypeError.
    for key in ("caf\udce9", ("dir", "\ud800")):
        try:
            data = encode_key(key)
        except TypeError:
            continue
        assert same(decode_key(data), key)


# --- values -------------------------------------------------------------------

SCALAR_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(),
    st.text(max_size=20),
    st.binary(max_size=20),
)
DICT_KEYS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=10),
    st.binary(max_size=10),
    st.lists(st.one_of(st.integers(-5, 5), st.text(max_size=3)), max_size=3).map(tuple),
)
VALUES = st.recursive(
    SCALAR_VALUES,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.lists(inner, max_size=5).map(tuple),
        st.dictionaries(DICT_KEYS, inner, max_size=5),
    ),
    max_leaves=25,
)


@SETTINGS
@given(value=VALUES)
def test_msgpack_value_round_trips_with_exact_types(value):
    ser = Serializer("msgpack")
    assert ser.flag == 0
    data = ser.dumps(value)
    assert type(data) is bytes
    assert same(ser.loads(0, data), value)


@pytest.mark.parametrize(
    "value",
    [
        (),
        [],
        {},
        ((),),
        [()],
        ([],),
        (1, [2, (3, [4])]),
        {(1, 2): (3, 4), b"k": [b"v"], 7: {"x": (None,)}},
        {True: 1, None: 2, 1.5: 3},
        [2**64 - 1, -(2**63)],
        b"\x00" * 1000,
    ],
    ids=repr,
)
def test_msgpack_value_keeps_tuples_lists_and_dict_keys_apart(value):
    ser = Serializer("msgpack")
    assert same(ser.loads(0, ser.dumps(value)), value)


class DatetimeSub(datetime.datetime):
    pass


class Floating(datetime.tzinfo):
    """A tzinfo that gives no UTC offset (as a zoneinfo zone does to a time)."""

    def utcoffset(self, dt):
        return None


UNSERIALIZABLE = [
    object(),
    len,
    lambda: 1,
    Color,
    Color.RED,
    StrSub("s"),
    IntSub(3),
    DatetimeSub(2024, 1, 1),
    collections.OrderedDict(a=1),
    datetime.time(1, tzinfo=Floating()),
    datetime.datetime(2024, 1, 1, tzinfo=Floating()),
    [1, 2, object()],
    {"a": [1, {2, object()}]},
    (1, (2, object())),
    {(1, object()): 2},
    frozenset({print}),
    "lone surrogate \udce9",
]


@pytest.mark.parametrize("value", UNSERIALIZABLE, ids=repr)
def test_unserializable_value_raises_type_error_and_the_next_encode_still_works(value):
    ser = Serializer("msgpack")
    good = [1, (2, b"three"), {"four": 4.0}]
    expected = ser.dumps(good)
    with pytest.raises(TypeError) as info:
        ser.dumps(value)
    if not isinstance(value, str):  # (a str is msgpack's type; it is the text that is wrong)
        assert "serializer='pickle'" in str(info.value)
    assert ser.dumps(good) == expected
    assert same(ser.loads(0, ser.dumps(good)), good)
    assert encode_key(("k", 1)) == encode_key(("k", 1))
    assert decode_key(encode_key(("k", 1))) == ("k", 1)


def test_failure_midway_through_a_large_value_leaves_no_bytes_behind():
    ser = Serializer("msgpack")
    with pytest.raises(TypeError):
        ser.dumps([b"x" * 100_000, (1, 2), object()])
    assert ser.dumps(None) == b"\xc0"
    assert ser.dumps([]) == b"\x90"


@pytest.mark.parametrize("value", [bytearray(b"abc"), memoryview(b"abc")], ids=["bytearray", "memoryview"])
def test_binary_buffers_come_back_as_bytes_with_the_same_content(value):
    # Documented exception to "same type back": msgpack stores every binary as bin.
    ser = Serializer("msgpack")
    back = ser.loads(0, ser.dumps(value))
    assert type(back) is bytes and back == bytes(value)


def test_serializers_are_independent_across_threads():
    ser = Serializer("msgpack")
    errors = []

    def work(n):
        try:
            for i in range(300):
                value = [n, i, (n, str(i)), {i: b"x" * (i % 7)}]
                if i % 50 == 0:
                    with pytest.raises(TypeError):
                        ser.dumps([n, object()])
                assert same(ser.loads(0, ser.dumps(value)), value)
        except BaseException as exc:  # pytest.fail is a BaseException; reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


# --- pickle -------------------------------------------------------------------


class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __eq__(self, other):
        return type(other) is Point and (self.x, self.y) == (other.x, other.y)


PICKLABLE = [
    Point(1, 2),
    {1, 2, 3},
    frozenset({"a"}),
    2**70,
    Color.RED,
    collections.OrderedDict(a=1, b=2),
    fractions.Fraction(1, 3),
    StrSub("s"),
    bytearray(b"ba"),
    (1, [2, {3: (4,)}]),
]


@pytest.mark.parametrize("value", PICKLABLE, ids=repr)
def test_pickle_serializer_round_trips_arbitrary_objects(value):
    ser = Serializer("pickle")
    assert ser.flag == FLAG_PICKLE
    loaded = ser.loads(ser.flag, ser.dumps(value))
    assert loaded == value
    assert type(loaded) is type(value)


@SETTINGS
@given(value=VALUES)
def test_pickle_serializer_round_trips_plain_values(value):
    ser = Serializer("pickle")
    assert same(ser.loads(FLAG_PICKLE | FLAG_LZ4 | FLAG_BATCH, ser.dumps(value)), value)


def test_pickle_serializer_refuses_unpicklable_value_with_type_error():
    ser = Serializer("pickle")
    for value in (lambda: 1, threading.Lock(), [1, threading.Lock()]):
        with pytest.raises(TypeError):
            ser.dumps(value)
    assert ser.loads(ser.flag, ser.dumps([1])) == [1]


def test_pickle_serializer_reads_msgpack_values():
    value = {"a": (1, [2])}
    data = Serializer("msgpack").dumps(value)
    assert same(Serializer("pickle").loads(0, data), value)


def test_msgpack_serializer_refuses_pickled_value():
    data = pickle.dumps({"a": 1})
    with pytest.raises(IODictLogError, match="pickle"):
        Serializer("msgpack").loads(FLAG_PICKLE, data)
    with pytest.raises(IODictLogError):
        Serializer("msgpack").loads(FLAG_PICKLE | FLAG_LZ4, data)


def test_msgpack_serializer_ignores_other_flags():
    ser = Serializer("msgpack")
    assert ser.loads(FLAG_LZ4 | FLAG_BATCH, ser.dumps((1, 2))) == (1, 2)


@pytest.mark.parametrize("name", ["json", "Pickle", "", "marshal"])
def test_unknown_serializer_name_raises_value_error(name):
    with pytest.raises(ValueError, match="serializer"):
        Serializer(name)


def test_serializer_names_and_flags():
    assert Serializer("msgpack").name == "msgpack" and Serializer("msgpack").flag == 0
    assert Serializer("pickle").name == "pickle" and Serializer("pickle").flag == FLAG_PICKLE
