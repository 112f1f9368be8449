"""Hostile keys and values: nesting limits, forged keys, undecodable values, bombs.

Issue 17.1 (deep nesting crashed every reader), 21.4 (forged keys raised ValueError,
TypeError, ...), 21.7 (a 65 kB lz4 value grew memory by 1.16 GB), 21.9 (decode errors
escaped as msgpack's own types). Whatever the bytes, a reader gets a value or a
CorruptionError; what the public API refuses, it refuses with TypeError before
anything is written. Crashes are looked for in child processes (a segfault is a
return code, not a test failure in this process).
"""

from __future__ import annotations

import os
import random
import struct
import subprocess
import sys
import textwrap

import lz4.block
import msgpack
import pytest
from forged import forge
from helpers import same

from iodict_log import IODict
from iodict_log.errors import CorruptionError
from iodict_log.format import (
    COMPRESS_MIN,
    FLAG_LZ4,
    LZ4_FREE,
    MAX_LZ4_RATIO,
    OP_SET,
    compress_value,
    stored_value,
)
from iodict_log.serialize import MAX_DEPTH, MAX_KEY_DEPTH, MAX_TUPLE_DEPTH, Serializer, decode_key, encode_key

MSGPACK = Serializer("msgpack")
CHILD_SECONDS = 120


def nested_tuple(depth: int, leaf=()) -> tuple:
    for _ in range(depth - 1):
        leaf = (leaf,)
    return leaf if isinstance(leaf, tuple) else (leaf,)


def chain(depth: int) -> tuple:
    """The issue's route: (i, prev) pairs, ``depth`` tuples deep."""
    value: tuple = (0, None)
    for i in range(1, depth):
        value = (i, value)
    return value


def nested_list(depth: int) -> list:
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


def in_child(code: str, memory_mb: int | None = None) -> str:
    """Run ``code`` in a fresh interpreter (optionally under an address-space cap of
    its current size plus ``memory_mb``); its stdout, after asserting it exited cleanly."""
    cap = ""
    if memory_mb is not None:
        cap = textwrap.dedent(f"""
            import resource
            with open("/proc/self/status") as f:
                vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
            resource.setrlimit(resource.RLIMIT_AS, (vm + {memory_mb} * 2**20, resource.RLIM_INFINITY))
        """)
    result = subprocess.run(
        [sys.executable, "-c", cap + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=CHILD_SECONDS,
        cwd=os.path.dirname(__file__),
    )
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    return result.stdout


# --- nesting: refused on encode, before anything is written --------------------------------


def test_nesting_limits_are_what_the_docs_say():
    assert (MAX_KEY_DEPTH, MAX_TUPLE_DEPTH, MAX_DEPTH) == (16, 32, 100)


@pytest.mark.parametrize("depth", [MAX_KEY_DEPTH + 1, 200])
def test_deep_tuple_key_is_refused_with_type_error_and_nothing_is_written(store_path, depth):
    # Guards 17.1: a 200-deep tuple key was accepted and then segfaulted every reader.
    with IODict(store_path) as d:
        with pytest.raises(TypeError, match=f"at most {MAX_KEY_DEPTH} deep"):
            d[nested_tuple(depth)] = 1
        d[nested_tuple(MAX_KEY_DEPTH)] = 2
    with IODict(store_path) as d:
        assert list(d.items()) == [(nested_tuple(MAX_KEY_DEPTH), 2)]


@pytest.mark.parametrize(
    "value", [chain(MAX_TUPLE_DEPTH + 1), chain(250), nested_tuple(5000)], ids=["33", "250", "5000"]
)
def test_value_with_tuples_nested_too_deep_is_refused_with_type_error(store_path, value):
    # Guards 17.1: a 250-deep (i, prev) chain was stored and d["route"] segfaulted.
    with IODict(store_path) as d:
        with pytest.raises(TypeError, match=f"tuples may nest at most {MAX_TUPLE_DEPTH} deep"):
            d["route"] = value
        assert "route" not in d and len(d) == 0
        d["ok"] = chain(MAX_TUPLE_DEPTH)
    with IODict(store_path) as d:
        assert same(d["ok"], chain(MAX_TUPLE_DEPTH)) and len(d) == 1


@pytest.mark.parametrize(
    "value",
    [
        nested_list(MAX_DEPTH + 1),
        nested_list(505),
        {"a": nested_list(MAX_DEPTH)},
        [(nested_list(MAX_DEPTH - 1),)],
        [{"k": [("x", [{}])] * 3}] * 30 + [nested_list(MAX_DEPTH + 1)],
        {nested_tuple(2): nested_list(MAX_DEPTH)},
    ],
    ids=["101-lists", "505-lists", "dict-then-100", "list-tuple-99", "wide-then-deep", "tuple-key-then-100"],
)
def test_value_nested_deeper_than_max_depth_is_refused_with_type_error(store_path, value):
    # Guards 21.9 / 17.1: a 505-deep list was stored and made readers raise RecursionError.
    with IODict(store_path) as d:
        with pytest.raises(TypeError, match=f"nest at most {MAX_DEPTH} deep"):
            d["deep"] = value
        assert len(d) == 0


@pytest.mark.parametrize(
    "value",
    [
        nested_list(MAX_DEPTH),
        [(nested_list(MAX_DEPTH - 2),)],
        {"a": [{"b": nested_list(MAX_DEPTH - 3)}]},
        [b"x" * 500, nested_list(99)],
    ],
    ids=["100-lists", "list-tuple-98", "dicts-and-lists", "bytes-and-99"],
)
def test_value_at_the_depth_limit_round_trips(store_path, value):
    with IODict(store_path) as d:
        d["deep"] = value
    with IODict(store_path) as d:
        assert same(d["deep"], value)


def test_a_refused_value_leaves_the_serializer_usable():
    good = [1, (2, (3, b"x")), {"a": [4]}]
    with pytest.raises(TypeError):
        MSGPACK.encode(chain(100))
    with pytest.raises(TypeError):
        MSGPACK.encode(nested_list(300))
    assert same(MSGPACK.decode(*MSGPACK.encode(good)), good)


# --- nesting: decoding forged bytes never crashes -----------------------------------------


def tuple_ext(depth: int) -> bytes:
    """msgpack of ``depth`` tuples nested in each other, as the encoder would write them
    if it had no limit (each an ext 1 holding a one-element array)."""
    data = msgpack.packb(msgpack.ExtType(1, b"\x90"))
    for _ in range(depth - 1):
        data = msgpack.packb(msgpack.ExtType(1, b"\x91" + data))
    return data


def test_forged_tuples_nested_past_the_limit_raise_corruption_error_in_a_child():
    # Guards 17.1: each tuple level was a nested unpackb with a big C stack frame:
    # 200 levels overflowed the C stack (exit -11). Run in a child: a crash is a return code.
    out = in_child(
        """
        from iodict_log.errors import CorruptionError
        from iodict_log.serialize import Serializer, decode_key
        from test_hostile_values import tuple_ext
        for depth in (33, 200, 1000, 20000):
            for decode in (lambda b: Serializer("msgpack").decode(0, b), decode_key):
                try:
                    decode(tuple_ext(depth))
                except CorruptionError:
                    continue
                raise SystemExit(f"depth {depth} decoded")
        print("ok")
        """
    )
    assert out == "ok\n"


def test_forged_deep_value_in_a_store_reads_as_corruption_error_in_a_child(tmp_path):
    # Guards 17.1 end to end: a forged frame (store's salt) holding 250 nested tuples,
    # or 3000 nested lists, opens and reads as CorruptionError; the other keys read fine.
    path = tmp_path / "s"
    with IODict(path) as d:
        d["good"] = [1, 2]
    forge(
        path,
        (OP_SET, encode_key("route"), tuple_ext(250)),
        (OP_SET, encode_key("lists"), b"\x91" * 3000 + b"\xc0"),
        first_seq=1000,
    )
    out = in_child(
        f"""
        from iodict_log import IODict
        from iodict_log.errors import CorruptionError
        with IODict({str(path)!r}) as d:
            for key in ("route", "lists"):
                try:
                    d[key]
                except CorruptionError:
                    print(key, "corrupt")
            print(d["good"])
        """
    )
    assert out == "route corrupt\nlists corrupt\n[1, 2]\n"


# --- forged keys: CorruptionError for any bytes encode_key could not have written -------------


FORGED_KEYS = {
    "empty": b"",
    "list": msgpack.packb([1, 2]),
    "map": msgpack.packb({"a": 1}),
    "nil": b"\xc0",
    "float": msgpack.packb(1.5),
    "integral-float": msgpack.packb(1.0),
    "true": b"\xc3",
    "false": b"\xc2",
    "trailing-byte": encode_key("key") + b"\x00",
    "two-keys": encode_key(1) + encode_key(2),
    "bad-utf8": b"\xa2\xff\xfe",
    "bad-utf8-str8": b"\xd9\x22" + b"\xff" * 34,
    "truncated-str": b"\xa5ab",
    "huge-str-length": b"\xdb\xff\xff\xff\xff",
    "huge-array-length": b"\xdd\xff\xff\xff\xff",
    "unknown-ext": msgpack.packb(msgpack.ExtType(7, b"x")),
    "timestamp-ext": msgpack.packb(msgpack.Timestamp(1)),
    "malformed-timestamp": b"\xd4\xff\x00",
    "tuple-ext-garbage": msgpack.packb(msgpack.ExtType(1, b"\xc1")),
    "tuple-ext-not-an-array": msgpack.packb(msgpack.ExtType(1, b"\x01")),
    "tuple-ext-trailing": msgpack.packb(msgpack.ExtType(1, b"\x90\x00")),
    "tuple-with-float": encode_key(("a",))[:-2] + b"\x91\xcb" + struct.pack(">d", 1.5),
    "tuple-with-list": msgpack.packb(msgpack.ExtType(1, msgpack.packb([[1]]))),
    "tuple-with-bool": msgpack.packb(msgpack.ExtType(1, b"\x91\xc3")),
    "str-as-str8": b"\xd9\x02ab",
    "str8-of-31-bytes": b"\xd9\x1f" + b"x" * 31,
    "str-as-str16": b"\xda\x00\x02ab",
    "bytes-as-bin16": b"\xc5\x00\x02ab",
    "int-as-uint8": b"\xcc\x05",
    "int-as-int64": b"\xd3" + struct.pack(">q", -1),
    "tuple-as-ext8": b"\xc7\x01\x01\x90",
    "tuple-as-ext8-not-fixext4": b"\xc7\x04\x01\x93\x01\x02\x03",
    "array16-in-tuple": msgpack.packb(msgpack.ExtType(1, b"\xdc\x00\x01\x01")),
    "reserved-byte": b"\xc1",
    "tuples-17-deep": tuple_ext(MAX_KEY_DEPTH + 1),
    "tuples-40-deep": tuple_ext(40),
    "lists-3000-deep": b"\x91" * 3000 + b"\x01",
}


@pytest.mark.parametrize("name", sorted(FORGED_KEYS))
def test_forged_key_bytes_raise_corruption_error(name):
    # Guards 21.4: these made opening raise ValueError, TypeError, UnicodeDecodeError or ExtraData.
    with pytest.raises(CorruptionError):
        decode_key(FORGED_KEYS[name])


def test_the_forged_key_cases_are_not_keys_the_encoder_writes():
    # Guard the test above: none of the forgeries is the encoding of a storable key.
    for name, data in FORGED_KEYS.items():
        try:
            key = msgpack.unpackb(data, raw=False, strict_map_key=False)
        except Exception:
            continue
        try:
            assert encode_key(key) != data, name
        except TypeError:
            pass


@pytest.mark.parametrize(
    "key",
    ["", "k", "x" * 31, "x" * 32, "é" * 200, "x" * 70000, b"", b"b" * 300, 0, 127, 128, -32, -33, 2**64 - 1]
    + [-(2**63), (), ("a", 1, (b"", (2**40,))), nested_tuple(MAX_KEY_DEPTH)],
    ids=repr,
)
def test_every_canonical_key_decodes(key):
    assert same(decode_key(encode_key(key)), key)


# --- values: anything wrong in the bytes is a CorruptionError ------------------------------

BAD_VALUES = {
    "reserved-byte-FormatError": b"\xc1",
    "3000-lists-StackError": b"\x91" * 3000 + b"\xc0",
    "two-objects-ExtraData": b"\x01\x02",
    "incomplete": b"\x92\x01",
    "empty": b"",
    "bad-utf8": b"\xa2\xff\xfe",
    "unhashable-map-key": b"\x81\x90\x01",
    "huge-array-length": b"\xdd\xff\xff\xff\xff",
    "huge-bin-length": b"\xc6\xff\xff\xff\xff",
    "tuple-ext-garbage": msgpack.packb(msgpack.ExtType(1, b"\xc1")),
    "tuple-ext-trailing": msgpack.packb(msgpack.ExtType(1, b"\x90\x00")),
    "tuple-ext-empty": b"\xc7\x00\x01",
    "malformed-timestamp": b"\xd4\xff\x00",
    "tuples-33-deep": tuple_ext(MAX_TUPLE_DEPTH + 1),
}


@pytest.mark.parametrize("name", sorted(BAD_VALUES))
def test_undecodable_msgpack_value_raises_corruption_error(name):
    # Guards 21.9: values raised msgpack's FormatError, StackError, ExtraData, TypeError ...
    for decode in (MSGPACK.decode, MSGPACK.loads, Serializer("pickle").decode):
        with pytest.raises(CorruptionError):
            decode(0, BAD_VALUES[name])


@pytest.mark.parametrize(
    "stored", [b"", b"\x00\x00", struct.pack("<I", 1000) + b"\xff" * 40, struct.pack("<I", 10) + b"\x00"]
)
def test_damaged_lz4_value_raises_corruption_error(stored):
    with pytest.raises(CorruptionError):
        MSGPACK.decode(FLAG_LZ4, stored)


def test_value_with_an_unknown_ext_code_reads_back_as_the_ext_type_it_was_stored_as():
    # msgpack.ExtType values are storable (as before this change): not damage.
    value = [msgpack.ExtType(7, b"data"), msgpack.Timestamp(5, 6)]
    assert same(MSGPACK.decode(*MSGPACK.encode(value)), value)


# --- decompression and decode bombs ---------------------------------------------------------


def lz4_bomb(size: int, byte: bytes = b"\x90", every: int = 0) -> bytes:
    """An lz4 block of a msgpack array32 of ``size`` copies of ``byte`` (0x90: empty
    arrays), every ``every``-th one a random small int instead (so lz4 shrinks it less)."""
    items = bytearray(byte * size)
    if every:
        items[::every] = random.Random(0).randbytes(len(items[::every])).translate(bytes(range(128)) * 2)
    return lz4.block.compress(b"\xdd" + struct.pack(">I", size) + bytes(items), store_size=True)


def test_the_bomb_of_the_issue_is_what_it_says():
    bomb = lz4_bomb(2**24 - 10)
    assert COMPRESS_MIN <= len(bomb) < 70_000 and struct.unpack_from("<I", bomb)[0] <= 255 * len(bomb)
    near = lz4_bomb(2_000_000, every=121)  # just within MAX_LZ4_RATIO, about as big
    assert MAX_LZ4_RATIO * len(near) >= 2_000_005 and len(near) < 70_000


def test_decompression_bombs_raise_corruption_error_or_decode_under_a_memory_cap():
    # Guards 21.7: a 65 kB lz4 value within the 255x rule unpacked to 16.7 million empty
    # arrays (1.16 GB). Under a 400 MB address-space cap only success or CorruptionError
    # may come out: beyond the ratio it is refused, within it it decodes (to ~140 MB).
    out = in_child(
        """
        from iodict_log.errors import CorruptionError
        from iodict_log.format import FLAG_LZ4
        from iodict_log.serialize import Serializer
        from test_hostile_values import lz4_bomb
        cases = [(2**24 - 10, b"\\x90", 0), (2**24 - 10, b"\\x80", 0), (4_000_000, b"\\x90", 0),
                 (2_000_000, b"\\x90", 121), (2_000_000, b"\\x80", 121), (2_000_000, b"\\xa0", 121)]
        for size, byte, every in cases:
            try:
                print(len(Serializer("msgpack").decode(FLAG_LZ4, lz4_bomb(size, byte, every))))
            except CorruptionError:
                print("corrupt")
        """,
        memory_mb=400,
    )
    assert out.split() == ["corrupt"] * 3 + ["2000000"] * 3


@pytest.mark.parametrize(
    "value",
    [bytes(100_000), b"ab" * 50_000, [0] * 100_000, [[]] * 100_000, b"".join(b"hi %d, " % i for i in range(100))],
    ids=["zeros", "ab", "zero-list", "empty-lists", "text"],
)
def test_the_writer_never_stores_a_value_the_reader_would_refuse(store_path, value):
    # The bound both ways: what compress_value writes, stored_value accepts; beyond the
    # bound the value is stored as it is.
    data = MSGPACK.dumps(value)
    flags, stored = compress_value(data)
    assert stored_value(flags, stored) == data
    if flags & FLAG_LZ4:
        assert len(data) <= max(MAX_LZ4_RATIO * len(stored), LZ4_FREE)
    else:
        assert stored == data
    with IODict(store_path) as d:
        d["v"] = value
    with IODict(store_path) as d:
        assert same(d["v"], value)


def test_a_value_beyond_the_ratio_is_stored_uncompressed_unless_it_unpacks_to_64_kib_or_less():
    assert compress_value(bytes(100_000)) == (0, bytes(100_000))  # 100 kB from ~400 bytes: refused
    for small in (b"a" * 10_000, bytes(LZ4_FREE)):  # ~250x, but small enough to unpack anyway
        flags, stored = compress_value(small)
        assert flags == FLAG_LZ4 and len(stored) * MAX_LZ4_RATIO < len(small) and stored_value(flags, stored) == small
    text = b"".join(b"hello world %d, " % i for i in range(100))
    flags, stored = compress_value(text)
    assert flags == FLAG_LZ4 and len(stored) < len(text)


# Values an older version stored: lz4 blocks up to lz4's own 255-fold, before the write bound.
OLDER_VALUES = {
    "a megabyte of zeros": bytes(2**20),
    "a long run of one letter": "a" * 500_000,
    "a million zeros": [0] * 1_000_000,
    "many small records": [{"a": 0}] * 50_000,
    "a tuple of numbers": (1, 2, [3] * 100_000),
}


@pytest.mark.parametrize("value", OLDER_VALUES.values(), ids=list(OLDER_VALUES))
def test_a_value_an_older_version_compressed_beyond_the_bound_still_reads(value):
    # Guards against the write bound turning values already on disk into CorruptionError.
    data = Serializer("msgpack").dumps(value)
    stored = lz4.block.compress(data, store_size=True)
    assert len(data) > max(MAX_LZ4_RATIO * len(stored), LZ4_FREE), "beyond what this version writes"
    assert same(Serializer("msgpack").decode(FLAG_LZ4, stored), value)


def test_a_container_bomb_beyond_the_bound_is_refused_before_it_is_built():
    # The issue's bomb (an array of 16.7 million empty arrays in a 65 kB block): decoding
    # stops at one container per CONTAINER_BYTES unpacked bytes.
    stored = lz4.block.compress(msgpack.packb([[]] * 16_700_000), store_size=True)
    with pytest.raises(CorruptionError, match="container"):
        Serializer("msgpack").decode(FLAG_LZ4, stored)
