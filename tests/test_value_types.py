"""The everyday value types of the default serializer (valuetypes.py, docs/FORMAT.md
"Value extension types"): each comes back with its exact type and value, nested
anywhere and as dict keys; hostile payloads give one of these types or
CorruptionError; a store holding them is refused by an older iodict_log."""

from __future__ import annotations

import datetime as dt
import math
import os
import random
import struct
import subprocess
import sys
import tempfile
import uuid
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from zoneinfo import ZoneInfo

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import iodict_log
from iodict_log import valuetypes
from iodict_log.errors import CorruptionError
from iodict_log.format import FORMAT_VERSION, MANIFEST_HEAD
from iodict_log.manifest import MANIFEST_NAME, upgrade_manifest
from iodict_log.serialize import MAX_TUPLE_DEPTH, Serializer, decode_key

SETTINGS = settings(max_examples=150, deadline=None)
MSGPACK = Serializer("msgpack")
NEW_TYPES = (set, frozenset, dt.datetime, dt.date, dt.time, dt.timedelta, Decimal, uuid.UUID, complex, Fraction)
PLAIN_TYPES = (type(None), bool, int, float, str, bytes, list, tuple, dict)


def exact(a, b) -> bool:
    """Equal with the same type all the way down: floats bit for bit, Decimals by their
    digits (NaN, sNaN, -0, trailing zeros), datetimes and times with fold and offset."""
    if type(a) is not type(b):
        return False
    if type(a) is float:
        return struct.pack("<d", a) == struct.pack("<d", b) or (math.isnan(a) and math.isnan(b))
    if type(a) is complex:
        return exact(a.real, b.real) and exact(a.imag, b.imag)
    if type(a) is Decimal:
        return str(a) == str(b)
    if type(a) in (dt.datetime, dt.time):
        return (
            a == b and a.fold == b.fold and a.utcoffset() == b.utcoffset() and (a.tzinfo is None) == (b.tzinfo is None)
        )
    if type(a) in (list, tuple):
        return len(a) == len(b) and all(exact(x, y) for x, y in zip(a, b))
    if type(a) is dict:
        return len(a) == len(b) and all(
            exact(ka, kb) and exact(va, vb) for (ka, va), (kb, vb) in zip(a.items(), b.items())
        )
    if type(a) in (set, frozenset):
        # (members are hashable and none equals another: pair each with the one equal to it)
        return len(a) == len(b) and all(any(x == y and exact(x, y) for y in b) for x in a)
    return a == b


def round_trip(value):
    return MSGPACK.decode(*MSGPACK.encode(value))


# --- strategies, one per type ------------------------------------------------------------

DAY = dt.timedelta(days=1)
FIXED_ZONES = st.builds(
    dt.timezone,
    st.timedeltas(min_value=-DAY + dt.timedelta(microseconds=1), max_value=DAY - dt.timedelta(microseconds=1)),
) | st.builds(
    dt.timezone, st.timedeltas(min_value=-dt.timedelta(hours=23), max_value=dt.timedelta(hours=23)), st.text(max_size=5)
)
FOLD = st.integers(0, 1)
DATETIMES = st.builds(
    lambda d, fold: d.replace(fold=fold),
    st.datetimes(timezones=st.none() | FIXED_ZONES | st.just(dt.timezone.utc)),
    FOLD,
)
TIMES = st.builds(lambda t, fold: t.replace(fold=fold), st.times(timezones=st.none() | FIXED_ZONES), FOLD)
SPECIAL_DECIMALS = st.sampled_from(
    [
        "-0",
        "0E-10",
        "-0E+5",
        "1.000",
        "NaN",
        "-NaN",
        "NaN123",
        "sNaN",
        "-sNaN7",
        "Infinity",
        "-Infinity",
        "1E+999999",
        "-1.2345678901234567890123456789E-999999",
    ]
).map(Decimal)
DECIMALS = st.decimals(allow_nan=True, allow_infinity=True) | SPECIAL_DECIMALS
BIG_INTS = (
    st.integers(min_value=2**64)
    | st.integers(max_value=-(2**63) - 1)
    | st.sampled_from([2**64, -(2**63) - 1, 2**70, -(2**70), 2**1000, -(2**1000)])
)
FRACTIONS = st.fractions() | st.builds(Fraction, st.integers(-(2**200), 2**200), st.integers(1, 2**200))
COMPLEX = st.complex_numbers(allow_nan=True, allow_infinity=True)

PER_TYPE = {
    "datetime": DATETIMES,
    "date": st.dates(),
    "time": TIMES,
    "timedelta": st.timedeltas(),
    "Decimal": DECIMALS,
    "UUID": st.uuids(),
    "complex": COMPLEX,
    "Fraction": FRACTIONS,
    "bigint": BIG_INTS,
}
# Hashable leaves for set members and dict keys: no NaN (it equals nothing, and a
# signalling NaN cannot be hashed), so that equal sets can be paired member by member.
HASHABLE_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.binary(max_size=8),
    DATETIMES,
    st.dates(),
    TIMES,
    st.timedeltas(),
    st.decimals(allow_nan=False),
    st.uuids(),
    st.complex_numbers(allow_nan=False),
    FRACTIONS,
)
HASHABLE = st.recursive(
    HASHABLE_LEAVES,
    lambda inner: st.lists(inner, max_size=3).map(tuple) | st.frozensets(inner, max_size=3),
    max_leaves=8,
)
LEAVES = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8), st.binary(max_size=8), *PER_TYPE.values()
)
VALUES = st.recursive(
    LEAVES,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(HASHABLE, inner, max_size=4),
        st.sets(HASHABLE, max_size=4),
        st.frozensets(HASHABLE, max_size=4),
    ),
    max_leaves=20,
)


@pytest.mark.parametrize("name", sorted(PER_TYPE))
@SETTINGS
@given(data=st.data())
def test_each_type_round_trips_exactly(name, data):
    value = data.draw(PER_TYPE[name])
    assert exact(round_trip(value), value)


@SETTINGS
@given(value=st.sets(HASHABLE, max_size=6) | st.frozensets(HASHABLE, max_size=6))
def test_sets_and_frozensets_round_trip_exactly(value):
    assert exact(round_trip(value), value)


@SETTINGS
@given(value=VALUES)
def test_values_nested_in_lists_tuples_dicts_and_sets_round_trip_exactly(value):
    assert exact(round_trip(value), value)


@SETTINGS
@given(value=st.dictionaries(HASHABLE, st.integers(), max_size=6))
def test_hashable_values_as_dict_keys_round_trip_exactly(value):
    assert exact(round_trip(value), value)


EDGES = [
    set(),
    frozenset(),
    {frozenset(), frozenset({frozenset()})},
    {1, 1.5, "1", b"1", (1,), None, False},
    dt.datetime.min,
    dt.datetime.max.replace(tzinfo=dt.timezone(DAY - dt.timedelta(microseconds=1))),
    dt.datetime(2024, 3, 1, 12, tzinfo=dt.timezone.utc),
    dt.datetime(2024, 3, 1, 12, tzinfo=dt.timezone(-dt.timedelta(hours=9, minutes=30, seconds=1, microseconds=5))),
    dt.datetime(2024, 11, 3, 1, 30, fold=1),
    dt.date.min,
    dt.date.max,
    dt.time(),
    dt.time.max.replace(tzinfo=dt.timezone(dt.timedelta(hours=-12)), fold=1),
    dt.timedelta.min,
    dt.timedelta.max,
    dt.timedelta(0),
    Decimal("-0"),
    Decimal("sNaN"),
    Decimal("-NaN42"),
    Decimal("1.10"),
    uuid.UUID(int=0),
    uuid.UUID(int=2**128 - 1),
    complex(-0.0, float("nan")),
    complex(float("inf"), -float("inf")),
    Fraction(0),
    Fraction(-(2**100), 3**70),
    2**64,
    -(2**63) - 1,
    2**70,
    -(2**70),
    2**100_000,
    [2**64 - 1, -(2**63)],  # (still plain msgpack ints)
]


@pytest.mark.parametrize("value", EDGES, ids=lambda v: type(v).__name__)
def test_edge_values_round_trip_exactly(value):
    assert exact(round_trip(value), value)


def test_ints_in_msgpack_range_are_plain_msgpack_and_beyond_it_an_ext_type():
    assert MSGPACK.dumps(2**64 - 1) == msgpack.packb(2**64 - 1)
    assert MSGPACK.dumps(-(2**63)) == msgpack.packb(-(2**63))
    for big in (2**64, -(2**63) - 1, 2**70):
        assert msgpack.unpackb(MSGPACK.dumps(big), ext_hook=msgpack.ExtType).code == valuetypes.EXT_BIGINT


def test_a_zoneinfo_datetime_comes_back_with_its_offset_fixed():
    # Documented: a zone keeps only the offset it gave this instant (FORMAT.md).
    zone = ZoneInfo("Europe/Berlin")
    for value in (dt.datetime(2024, 7, 1, 12, tzinfo=zone), dt.datetime(2024, 10, 27, 2, 30, fold=1, tzinfo=zone)):
        back = round_trip(value)
        assert type(back) is dt.datetime and back.tzinfo == dt.timezone(value.utcoffset())
        assert back.timestamp() == value.timestamp() and back.replace(tzinfo=None) == value.replace(tzinfo=None)
        assert back.fold == value.fold


def test_a_named_fixed_offset_keeps_its_offset_not_its_name():
    back = round_trip(dt.datetime(2024, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=1), "CET")))
    assert back.utcoffset() == dt.timedelta(hours=1) and back.tzname() == "UTC+01:00"


def test_a_fraction_with_terms_beyond_the_bound_is_refused_with_type_error():
    # (decoding normalises with a gcd, quadratic in the digits: the bound keeps it cheap)
    big = 2 ** (8 * valuetypes.MAX_FRACTION_BYTES - 1) - 1  # (the largest term that fits)
    for value in (Fraction(big, 3), Fraction(1, big), Fraction(-big, big - 2)):
        assert exact(round_trip(value), value)
    for value in (Fraction(big + 1, 3), Fraction(1, big + 2), Fraction(-(big + 1), 1)):
        with pytest.raises(TypeError, match="serializer='pickle'"):
            MSGPACK.dumps([value])


def test_sets_count_as_tuples_towards_the_nesting_limit():
    value = frozenset()  # (one level)
    for _ in range(MAX_TUPLE_DEPTH - 1):
        value = frozenset({value})
    assert exact(round_trip(value), value)
    with pytest.raises(TypeError, match=f"at most {MAX_TUPLE_DEPTH} deep"):
        MSGPACK.dumps(frozenset({value}))
    with pytest.raises(TypeError, match=f"at most {MAX_TUPLE_DEPTH} deep"):
        MSGPACK.dumps([(frozenset({value}),)])


# --- hostile payloads -------------------------------------------------------------------------

LEAF_CODES = sorted(valuetypes.DECODERS)
ALL_CODES = sorted({*LEAF_CODES, *valuetypes.CONTAINER_TYPES})


def allowed(value) -> bool:
    """Whether ``value`` is built only of the types a msgpack value may hold."""
    kind = type(value)
    if kind in (list, tuple, set, frozenset):
        return all(allowed(member) for member in value)
    if kind is dict:
        return all(allowed(k) and allowed(v) for k, v in value.items())
    if kind in (dt.datetime, dt.time):
        return value.tzinfo is None or type(value.tzinfo) is dt.timezone
    return kind in PLAIN_TYPES or kind in NEW_TYPES or kind is msgpack.ExtType


@settings(max_examples=400, deadline=None)
@given(code=st.sampled_from(ALL_CODES), payload=st.binary(max_size=40))
def test_random_bytes_under_each_ext_code_decode_to_an_allowed_type_or_corruption_error(code, payload):
    data = msgpack.packb(msgpack.ExtType(code, payload))
    for value in (
        data,
        msgpack.packb([1, msgpack.ExtType(code, payload)]),
        msgpack.packb({"k": msgpack.ExtType(code, payload)}),
    ):
        try:
            out = MSGPACK.decode(0, value)
        except CorruptionError:
            continue
        assert allowed(out), out


@settings(max_examples=300, deadline=None)
@given(code=st.sampled_from(LEAF_CODES), data=st.data())
def test_valid_payloads_mutated_decode_to_their_type_or_corruption_error(code, data):
    kind = {v: k for k, (v, _) in valuetypes.ENCODERS.items()}[code]
    value = data.draw(PER_TYPE["bigint" if kind is int else kind.__name__])
    payload = bytearray(valuetypes.ENCODERS[kind][1](value))
    for _ in range(data.draw(st.integers(1, 3))):
        op = data.draw(st.integers(0, 2))
        if op == 0 and payload:
            payload[data.draw(st.integers(0, len(payload) - 1))] = data.draw(st.integers(0, 255))
        elif op == 1:
            payload = payload[: data.draw(st.integers(0, len(payload)))]
        else:
            payload += data.draw(st.binary(min_size=1, max_size=4))
    try:
        out = valuetypes.decode(code, bytes(payload))
    except CorruptionError:
        return
    assert type(out) is kind and allowed(out)


HOSTILE = {
    "datetime month 13": (valuetypes.EXT_DATETIME, struct.pack("<HBBBBBIB", 2024, 13, 1, 0, 0, 0, 0, 0)),
    "datetime year 0": (valuetypes.EXT_DATETIME, struct.pack("<HBBBBBIB", 0, 1, 1, 0, 0, 0, 0, 0)),
    "datetime offset of a day": (
        valuetypes.EXT_DATETIME,
        struct.pack("<HBBBBBIBq", 2024, 1, 1, 0, 0, 0, 0, 0, 86_400_000_000),
    ),
    "datetime offset cut short": (
        valuetypes.EXT_DATETIME,
        struct.pack("<HBBBBBIB", 2024, 1, 1, 0, 0, 0, 0, 0) + b"\x01",
    ),
    "datetime fold 2": (valuetypes.EXT_DATETIME, struct.pack("<HBBBBBIB", 2024, 1, 1, 0, 0, 0, 0, 2)),
    "time microsecond 10**6": (valuetypes.EXT_TIME, struct.pack("<BBBIB", 0, 0, 0, 10**6, 0)),
    "date empty": (valuetypes.EXT_DATE, b""),
    "timedelta beyond range": (valuetypes.EXT_TIMEDELTA, struct.pack("<iii", 2**31 - 1, 0, 0)),
    "decimal garbage": (valuetypes.EXT_DECIMAL, b"garbage"),
    "decimal with spaces": (valuetypes.EXT_DECIMAL, b" 1 "),
    "decimal with underscores": (valuetypes.EXT_DECIMAL, b"1_000"),
    "decimal not ascii": (valuetypes.EXT_DECIMAL, "١".encode()),
    "uuid of 15 bytes": (valuetypes.EXT_UUID, bytes(15)),
    "complex of 8 bytes": (valuetypes.EXT_COMPLEX, bytes(8)),
    "fraction zero denominator": (valuetypes.EXT_FRACTION, struct.pack("<I", 1) + b"\x01\x00"),
    "fraction negative denominator": (valuetypes.EXT_FRACTION, struct.pack("<I", 1) + b"\x01\xff"),
    "fraction no denominator": (valuetypes.EXT_FRACTION, struct.pack("<I", 1) + b"\x01"),
    "fraction length beyond": (valuetypes.EXT_FRACTION, struct.pack("<I", 2**32 - 1) + b"\x01\x01"),
    "fraction terms too long": (valuetypes.EXT_FRACTION, struct.pack("<I", 5000) + b"\x07" * 5000 + b"\x03"),
    "fraction denominator too long": (valuetypes.EXT_FRACTION, struct.pack("<I", 1) + b"\x07" + b"\x03" * 5000),
    "set of a map": (valuetypes.EXT_SET, msgpack.packb({"a": 1})),
    "set of a str": (valuetypes.EXT_SET, msgpack.packb("abc")),
    "set with a list member": (valuetypes.EXT_SET, msgpack.packb([[1]])),
    "frozenset with a dict member": (valuetypes.EXT_FROZENSET, msgpack.packb([{}])),
    "set trailing bytes": (valuetypes.EXT_SET, b"\x90\x00"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_forged_payloads_raise_corruption_error(name):
    code, payload = HOSTILE[name]
    with pytest.raises(CorruptionError):
        MSGPACK.decode(0, msgpack.packb(msgpack.ExtType(code, payload)))


def test_forged_sets_nested_too_deep_raise_corruption_error():
    data = msgpack.packb(msgpack.ExtType(valuetypes.EXT_FROZENSET, b"\x90"))
    for _ in range(40):
        data = msgpack.packb(msgpack.ExtType(valuetypes.EXT_FROZENSET, b"\x91" + data))
    with pytest.raises(CorruptionError, match="deep"):
        MSGPACK.decode(0, data)


def test_decoding_runs_no_code_of_the_payload(monkeypatch):
    # Whatever the bytes, no pickle is loaded and no import happens: only the constructors
    # of the known types run. (A reduce-style payload is just bytes here.)
    import pickle

    calls = []
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: calls.append(a))
    evil = pickle.dumps(os.system)
    rng = random.Random(1)
    for code in ALL_CODES:
        for payload in (evil, evil[:16], bytes(rng.randrange(256) for _ in range(24))):
            try:
                assert allowed(MSGPACK.decode(0, msgpack.packb(msgpack.ExtType(code, payload))))
            except CorruptionError:
                pass
    assert calls == []


@pytest.mark.parametrize(
    "value",
    [
        2**64,
        -(2**63) - 1,
        (1, 2**70),
        {1},
        frozenset({1}),
        (frozenset(),),
        dt.date(2024, 1, 1),
        Decimal(1),
        uuid.UUID(int=1),
    ],
    ids=repr,
)
def test_key_bytes_holding_a_value_type_are_not_a_key(value):
    # Keys stay str, bytes, int in 64 bits and tuples of these: such bytes are damage.
    with pytest.raises(CorruptionError):
        decode_key(MSGPACK.dumps(value))


# --- in a store, both builds ----------------------------------------------------------------


SAMPLE = {
    "set": {1, 2, 3},
    "frozenset": frozenset({"a", (1, 2)}),
    "datetime": dt.datetime(2024, 5, 6, 7, 8, 9, 10, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))),
    "naive": dt.datetime(2024, 5, 6, 7, 8, 9, 10),
    "date": dt.date(2024, 5, 6),
    "time": dt.time(7, 8, 9, 10, tzinfo=dt.timezone.utc),
    "timedelta": dt.timedelta(days=-3, microseconds=7),
    "decimal": Decimal("-0.00"),
    "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "complex": 1 - 2j,
    "fraction": Fraction(22, 7),
    "bigint": -(2**70),
    "record": {"at": dt.datetime(2024, 1, 1), "id": uuid.UUID(int=5), "tags": {"x", "y"}, (1, 2**65): [Decimal("1.5")]},
}


def test_an_iodict_stores_every_type_and_gives_it_back_after_reopen(store_path):
    with iodict_log.IODict(store_path) as d:
        for key, value in SAMPLE.items():
            d[key] = value
        d.update({"batch-" + key: value for key, value in SAMPLE.items()})
        assert all(exact(d[key], value) for key, value in SAMPLE.items())
    with iodict_log.IODict(store_path) as d:
        for key, value in SAMPLE.items():
            assert exact(d[key], value) and exact(d["batch-" + key], value)
        assert [exact(r.value, SAMPLE[r.key]) for r in d.records() if r.key in SAMPLE] == [True] * len(SAMPLE)
        d.compact()
        assert all(exact(d[key], value) for key, value in SAMPLE.items())


@settings(max_examples=40, deadline=None)
@given(values=st.lists(VALUES, min_size=1, max_size=6))
def test_random_values_round_trip_through_a_store_and_its_reopening(values):
    # (the native build's set, update and get hand these to the Serializer: its C packs scalars only)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "store")
        with iodict_log.IODict(path) as d:
            for i, value in enumerate(values):
                d[i] = value
            d.update({-1 - i: value for i, value in enumerate(values)})
            assert all(exact(d[i], value) and exact(d[-1 - i], value) for i, value in enumerate(values))
        with iodict_log.IODict(path) as d:
            assert all(exact(d[i], value) and exact(d[-1 - i], value) for i, value in enumerate(values))


def test_a_durable_queue_stores_every_type(store_path):
    with iodict_log.DurableQueue(store_path, serializer="msgpack") as q:
        for value in SAMPLE.values():
            q.put(value)
        q.put_many(list(SAMPLE.values()))
    with iodict_log.DurableQueue(store_path, serializer="msgpack") as q:
        got = [q.get_nowait() for _ in range(2 * len(SAMPLE))]
    assert all(exact(a, b) for a, b in zip(got, [*SAMPLE.values(), *SAMPLE.values()]))


@pytest.mark.parametrize(
    "value",
    [lambda: 1, print, int, object(), [1, {2: object()}]],
    ids=["lambda", "builtin", "class", "object", "nested"],
)
def test_an_unsupported_value_is_refused_before_anything_is_written(store_path, value):
    with iodict_log.IODict(store_path) as d:
        d["keep"] = {1, 2}
        before = list(d.records())
        for write in (lambda: d.__setitem__("k", value), lambda: d.update({"a": 1, "k": value})):
            with pytest.raises(TypeError, match="serializer='pickle'"):
                write()
        assert list(d.records()) == before and dict(d) == {"keep": {1, 2}}
    with iodict_log.DurableQueue(store_path + "-q", serializer="msgpack") as q:
        with pytest.raises(TypeError, match="serializer='pickle'"):
            q.put_many([1, value])
        assert q.qsize() == 0


# --- the format gate ---------------------------------------------------------------------------


def file_version(path: str) -> int:
    return MANIFEST_HEAD.unpack_from(Path(path).read_bytes())[1]  # (a segment header's is at the same offset)


def test_a_new_store_is_written_in_format_version_2(store_path):
    with iodict_log.IODict(store_path) as d:
        d["s"] = {1}
    assert FORMAT_VERSION == 2
    assert file_version(os.path.join(store_path, MANIFEST_NAME)) == 2
    assert file_version(os.path.join(store_path, "0000000001.seg")) == 2


REPO = Path(__file__).resolve().parent.parent
OLD_COMMIT = "f54beea"  # main before the value types


@pytest.fixture(scope="module")
def old_package(tmp_path_factory):
    """The package as it was before the value types (the pure build: no C core to build)."""
    where = tmp_path_factory.mktemp("old")
    archive = subprocess.run(["git", "-C", str(REPO), "archive", OLD_COMMIT, "iodict_log"], capture_output=True)
    if archive.returncode:  # (a failure, not a skip: this is the only test of what an older version does)
        pytest.fail(f"the tests must run from a git checkout holding {OLD_COMMIT}: {archive.stderr.decode()[:200]}")
    subprocess.run(["tar", "-x", "-C", str(where)], input=archive.stdout, check=True)
    return where


def run_old(old_package, code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(old_package), "IODICT_LOG_PURE": "1"}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=str(old_package), timeout=120
    )


OLD_OPEN = """
import iodict_log
assert iodict_log.__file__.startswith({old!r}), iodict_log.__file__
try:
    d = iodict_log.{kind}({path!r})
except iodict_log.IODictLogError as exc:
    print(type(exc).__name__, exc)
else:
    print("OPENED", {read})
"""


@pytest.mark.parametrize("kind", ["IODict", "DurableQueue"])
def test_an_older_iodict_log_refuses_a_store_with_the_new_types(old_package, tmp_path, kind):
    path = str(tmp_path / "store")
    with getattr(iodict_log, kind)(path, serializer="msgpack") as store:
        if kind == "IODict":
            store["when"] = dt.datetime(2024, 1, 1)
        else:
            store.put({1, 2})
    before = {name: Path(path, name).read_bytes() for name in os.listdir(path) if name != "LOCK"}
    read = "dict(d)" if kind == "IODict" else "d.get_nowait()"
    result = run_old(old_package, OLD_OPEN.format(old=str(old_package), kind=kind, path=path, read=read))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("FormatVersionError"), result.stdout
    assert "format version 2 is not supported" in result.stdout and "nothing was changed" in result.stdout
    assert {name: Path(path, name).read_bytes() for name in os.listdir(path) if name != "LOCK"} == before


def old_store(old_package, path: str) -> None:
    """A store written by the older iodict_log: CURRENT and segment in version 1."""
    result = run_old(
        old_package,
        f"import iodict_log\nd = iodict_log.IODict({path!r})\n"
        "d['t'] = (1, [2])\nd.update({'big': 2**64 - 1})\nd.close()",
    )
    assert result.returncode == 0, result.stderr
    assert file_version(os.path.join(path, MANIFEST_NAME)) == 1


def test_a_store_an_older_iodict_log_wrote_reads_the_same_and_takes_the_new_types(old_package, tmp_path):
    path = str(tmp_path / "store")
    old_store(old_package, path)
    with iodict_log.IODict(path) as d:
        assert exact(dict(d), {"t": (1, [2]), "big": 2**64 - 1})
        d["s"] = {1, 2}
        assert exact(d["s"], {1, 2})
    upgrade_manifest(path)  # (what a writer is to do before its first append: FORMAT.md, version 2)
    assert file_version(os.path.join(path, MANIFEST_NAME)) == 2
    result = run_old(old_package, OLD_OPEN.format(old=str(old_package), kind="IODict", path=path, read="dict(d)"))
    assert result.stdout.startswith("FormatVersionError"), result.stdout + result.stderr
    with iodict_log.IODict(path) as d:
        assert exact(dict(d), {"t": (1, [2]), "big": 2**64 - 1, "s": {1, 2}})


def test_upgrade_manifest_rewrites_an_older_current_once_with_the_same_contents(old_package, tmp_path):
    path = str(tmp_path / "store")
    old_store(old_package, path)
    before = Path(path, MANIFEST_NAME).read_bytes()
    assert upgrade_manifest(path) is True
    after = Path(path, MANIFEST_NAME).read_bytes()
    assert after[8:10] == b"\x02\x00" and after[10:-4] == before[10:-4]  # (only the version and CRC differ)
    assert upgrade_manifest(path) is False
    assert Path(path, MANIFEST_NAME).read_bytes() == after


def test_upgrade_manifest_of_a_directory_with_no_store_does_nothing(tmp_path):
    assert upgrade_manifest(str(tmp_path)) is False
    assert os.listdir(tmp_path) == []


def test_a_version_1_store_opened_for_writing_is_refused_by_an_older_version_from_then_on(old_package, tmp_path):
    # An older version writes the store (version 1); this one opens it to write: CURRENT is
    # version 2 from that open on, so the older one refuses it and never misreads a new type.
    path = str(tmp_path / "store")
    made = run_old(old_package, f"import iodict_log\nd = iodict_log.IODict({path!r})\nd['old'] = 1\nd.close()\n")
    assert made.returncode == 0, made.stderr
    assert file_version(os.path.join(path, MANIFEST_NAME)) == 1
    with iodict_log.IODict(path, readonly=True) as d:
        assert dict(d) == {"old": 1}
    assert file_version(os.path.join(path, MANIFEST_NAME)) == 1  # (read-only: nothing changed)
    with iodict_log.IODict(path) as d:
        assert file_version(os.path.join(path, MANIFEST_NAME)) == 2
        d["new"] = {1, 2}
    result = run_old(old_package, OLD_OPEN.format(old=str(old_package), kind="IODict", path=path, read="dict(d)"))
    assert result.stdout.startswith("FormatVersionError"), result.stdout + result.stderr
    with iodict_log.IODict(path) as d:
        assert dict(d) == {"old": 1, "new": {1, 2}}


def test_decimals_are_written_and_read_alike_whatever_the_threads_decimal_context(store_path):
    # str(Decimal) follows the context (capitals=0 writes 1e+2): the stored text must not,
    # or values written under one context read as damage under the other.
    import decimal

    values = {"price": Decimal("1E+2"), "rate": Decimal("2.5E-10"), "plain": Decimal("-0.00")}
    with decimal.localcontext(decimal.Context(capitals=0)), iodict_log.IODict(store_path) as d:
        d.update(values)
        assert {k: d[k] for k in values} == values
    with iodict_log.IODict(store_path) as d:
        got = {k: d[k] for k in values}
        assert got == values and [str(v) for v in got.values()] == ["1E+2", "2.5E-10", "-0.00"]
    with decimal.localcontext(decimal.Context(capitals=0)), iodict_log.IODict(store_path) as d:
        assert {k: d[k] for k in values} == values and d.stats()["corrupt_records"] == 0
