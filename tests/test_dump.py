"""iodict-log dump: strict JSON whose tags no user value can imitate, and records it
cannot show printed in an error form instead of a traceback."""

from __future__ import annotations

import json
import math
import subprocess
import sys

from forged import forge
from helpers import same
from hypothesis import given, settings
from hypothesis import strategies as st

from iodict_log import DurableQueue, IODict
from iodict_log.format import OP_DEAD, OP_SET, OP_TAKE
from iodict_log.inspection import from_json, to_json
from iodict_log.serialize import MAX_DEPTH, encode_key


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "iodict_log", *args], capture_output=True, text=True, timeout=120)


def strict(text: str):
    """json.loads that refuses NaN and the infinities, as RFC 8259 parsers do."""

    def refuse(name: str):
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


tag_like = st.sampled_from(["$bytes", "$tuple", "$map", "$float", "$ext", "$pickle", "$repr", "$", "$x"])
text = st.one_of(st.text(max_size=8), tag_like)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    text,
    st.binary(max_size=8),
)
keys = st.one_of(text, st.integers(-(2**63), 2**64 - 1), st.binary(max_size=4), st.tuples(text, st.integers(0, 9)))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(text, inner, max_size=4),
        st.dictionaries(keys, inner, max_size=4),
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(values)
def test_every_value_round_trips_through_strict_json(value):
    # Guards 17.5: NaN came out as NaN, and {"$bytes": "aGk="} dumped exactly like b"hi".
    line = json.dumps(to_json(value), allow_nan=False)
    assert same(from_json(strict(line)), value)


def test_user_values_that_look_like_tags_dump_differently_from_what_they_imitate():
    imitations = [
        (b"hi", {"$bytes": "aGk="}),
        ((1, 2), {"$tuple": [1, 2]}),
        ({1: 2}, {"$map": [[1, 2]]}),
        (math.nan, {"$float": "nan"}),
    ]
    for real, fake in imitations:
        assert to_json(real) != to_json(fake)
        assert same(from_json(to_json(fake)), fake)


def test_dump_of_a_store_is_strict_json_and_decodes_to_the_stored_values(tmp_path):
    stored = {
        "nan": math.nan,
        "inf": [math.inf, -math.inf],
        "fake-bytes": {"$bytes": "aGk="},
        "real-bytes": b"hi",
        "fake-tuple": {"$tuple": [1]},
        "deep": [[[[[[1]]]]]],
        ("t", 1): {"$map": "x", 2: (b"", None)},
    }
    deep = []
    for _ in range(MAX_DEPTH - 1):  # as deep as the public API writes
        deep = [deep]
    with IODict(tmp_path / "s") as d:
        d.update(stored)
        d["deepest"] = deep
    result = run("dump", str(tmp_path / "s"))
    assert result.returncode == 0, result.stderr
    got = {}
    for line in result.stdout.splitlines():
        record = strict(line)
        got[from_json(record["key"])] = from_json(record["value"])
    assert got.pop("deepest") == deep  # (compared in C: same() recurses twice per level)
    assert same(got, stored)


def test_records_dump_cannot_show_print_an_error_line_and_exit_1_and_the_rest_goes_on(tmp_path):
    # Guards 21.9: a TAKE key that is not 8 bytes, or an undecodable value, made dump traceback.
    path = tmp_path / "q"
    with DurableQueue(path, serializer="msgpack") as q:
        q.put("first")
    too_deep = b"\x91" * 3000 + b"\xc0"  # 3000 nested lists
    forge(
        path,
        (OP_TAKE, b"\x01\x02\x03", b""),
        (OP_SET, encode_key("v"), b"\xc1"),
        (OP_SET, encode_key("deep"), too_deep),
        (OP_DEAD, (7).to_bytes(8, "little"), b""),
    )
    result = run("dump", str(path))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    records = [strict(line) for line in result.stdout.splitlines()]
    assert [r["op"] for r in records] == ["put", "take", "set", "set", "dead"]
    assert records[0]["value"] == "first"
    assert all("error" in r and "value" not in r for r in records[1:4])
    assert records[4] == {**records[4], "taken": 7} and "error" not in records[4]
    assert "3 record(s) could not be shown" in result.stderr
