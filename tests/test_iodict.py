"""IODict behaves like a dict / OrderedDict that lives on disk (CONTRACT.md §2 and §7).

Every behaviour is checked against what a real ``dict`` or ``collections.OrderedDict``
does with the same operations, and, where it matters, again after close + reopen and
after ``compact()``.
"""

from __future__ import annotations

import enum
import multiprocessing
import os
import threading
import time
from collections import OrderedDict
from collections.abc import MutableMapping
from pathlib import Path

import pytest
from helpers import same

import iodict_log
from iodict_log import IODict, IODictLogError, Record, StoreClosedError

# --- helpers -------------------------------------------------------------------


def snapshot(path):
    """Every file of a directory, by name, with its bytes."""
    return {p.name: p.read_bytes() for p in sorted(Path(path).iterdir())}


def footprint(d):
    """What a write would change: the contract's counters plus disk size and last seq where reported."""
    stats = d.stats()
    names = ("keys", "segments", "live_bytes", "dead_bytes", "disk_bytes", "last_seq")
    return {name: stats[name] for name in names if name in stats}


def reopen(d, **kwargs):
    d.close()
    return IODict(d.path, **kwargs)


def run_guarded(fn):
    """Run fn() in a thread so that a self-deadlock fails the test instead of hanging it.

    fn should open its store itself: a store whose lock is stuck must not appear among
    the arguments pytest reprs when it reports the failure (repr would block too).
    """
    outcome = {}

    def target():
        try:
            fn()
        except BaseException as exc:  # handed back to the test thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(20)
    assert not thread.is_alive(), "deadlock: the call never returned"
    if "error" in outcome:
        raise outcome["error"]


class Point:
    """A module-level class, so pickle can find it."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __eq__(self, other):
        return type(other) is Point and (self.x, self.y) == (other.x, other.y)


class KeysOnly:
    """Not a Mapping, but has keys() and [] — dict.update accepts it."""

    def __init__(self, data):
        self._data = dict(data)

    def keys(self):
        return list(self._data)

    def __getitem__(self, key):
        return self._data[key]


class AcquireReleaseOnly:
    """A lock with acquire()/release() and nothing else (no ``with`` support)."""

    def __init__(self):
        self._lock = threading.RLock()
        self.acquired = 0
        self.released = 0

    def acquire(self, *args, **kwargs):
        self.acquired += 1
        return self._lock.acquire(*args, **kwargs)

    def release(self):
        self.released += 1
        self._lock.release()


@pytest.fixture
def d(store_path):
    store = IODict(store_path)
    yield store
    store.close()


@pytest.fixture
def d_manual(store_path):
    """A store that compacts only when told to, for tests that look at history and dead bytes."""
    store = IODict(store_path, auto_compact=False)
    yield store
    store.close()


def fill(d, ref, items):
    for key, value in items:
        d[key] = value
        ref[key] = value


# --- the basic mapping protocol ------------------------------------------------


def test_is_a_mutable_mapping(d):
    assert isinstance(d, MutableMapping)
    with pytest.raises(TypeError):
        hash(d)  # like dict: unhashable


def test_accepts_str_and_pathlike_paths(tmp_path):
    with IODict(str(tmp_path / "as-str")) as a, IODict(tmp_path / "as-path" / "nested") as b:
        a["k"] = 1
        b["k"] = 2
    assert (tmp_path / "as-path" / "nested").is_dir()
    with IODict(str(tmp_path / "as-str")) as a, IODict(tmp_path / "as-path" / "nested") as b:
        assert (a["k"], b["k"]) == (1, 2)


def test_getitem_setitem(d):
    d["a"] = 1
    d["b"] = "two"
    assert d["a"] == 1
    assert d["b"] == "two"
    d["a"] = 3
    assert d["a"] == 3


def test_getitem_missing_raises_keyerror_with_the_key(d):
    d["a"] = 1
    with pytest.raises(KeyError) as info:
        d["missing"]
    assert info.value.args == ("missing",)
    with pytest.raises(KeyError):
        d[("a",)]


def test_get(d):
    d["a"] = 1
    d["zero"] = 0
    assert d.get("a") == 1
    assert d.get("missing") is None
    assert d.get("missing", "dflt") == "dflt"
    assert d.get("zero", 99) == 0  # a falsy stored value is returned, not the default


def test_contains(d):
    assert "a" not in d
    d["a"] = 1
    d[(1, "x")] = 2
    assert "a" in d
    assert (1, "x") in d
    assert "b" not in d
    assert (1, "y") not in d
    del d["a"]
    assert "a" not in d


def test_len(d):
    assert len(d) == 0
    d["a"] = 1
    d["b"] = 2
    assert len(d) == 2
    d["a"] = 3  # overwrite
    assert len(d) == 2
    del d["a"]
    assert len(d) == 1


def test_delitem(d):
    ref = {}
    fill(d, ref, [("a", 1), ("b", 2), ("c", 3)])
    del d["b"]
    del ref["b"]
    assert list(d.items()) == list(ref.items())
    with pytest.raises(KeyError):
        del d["b"]
    with pytest.raises(KeyError):
        del d["never"]
    assert list(d.items()) == list(ref.items())


def test_pop(d):
    ref = {}
    fill(d, ref, [("a", 1), ("b", (2, 3))])
    assert same(d.pop("b"), ref.pop("b"))
    assert "b" not in d
    assert list(d.items()) == list(ref.items())
    with pytest.raises(KeyError):
        d.pop("b")
    assert d.pop("b", "dflt") == "dflt"
    assert d.pop("a", "dflt") == 1  # a default does not stop an existing key being popped
    assert len(d) == 0


@pytest.mark.parametrize("default", [0, None, "", False, (), 0.0], ids=repr)
def test_pop_returns_falsy_default(d, default):
    d["a"] = 1
    result = d.pop("missing", default)
    assert same(result, {}.pop("missing", default))
    assert len(d) == 1


def test_pop_existing_falsy_value(d):
    d["z"] = 0
    assert d.pop("z", 5) == 0
    assert "z" not in d


def test_popitem_last_pops_newest(d):
    ref = OrderedDict()
    fill(d, ref, [("a", 1), ("b", 2), ("c", (3,))])
    d["a"] = 10  # an overwrite does not make "a" the newest
    ref["a"] = 10
    got = d.popitem()
    assert isinstance(got, tuple)
    assert same(got, ref.popitem(last=True))
    assert same(d.popitem(last=True), ref.popitem(last=True))
    assert list(d.items()) == list(ref.items())


def test_popitem_first_pops_oldest(d):
    ref = OrderedDict()
    fill(d, ref, [("a", 1), ("b", 2), ("c", 3)])
    assert d.popitem(last=False) == ref.popitem(last=False) == ("a", 1)
    del d["b"]
    del ref["b"]
    d["b"] = 4  # re-set: now the newest
    ref["b"] = 4
    assert d.popitem(last=False) == ref.popitem(last=False) == ("c", 3)
    assert d.popitem(last=False) == ("b", 4)


def test_popitem_empty_raises_keyerror(d):
    with pytest.raises(KeyError):
        d.popitem()
    with pytest.raises(KeyError):
        d.popitem(last=False)
    d["a"] = 1
    d.popitem()
    with pytest.raises(KeyError):
        d.popitem()


def test_setdefault(d):
    ref = {}
    fill(d, ref, [("a", 1), ("zero", 0)])
    assert d.setdefault("a", 99) == ref.setdefault("a", 99) == 1  # existing key: not overwritten
    assert d["a"] == 1
    assert d.setdefault("zero", 5) == 0
    assert same(d.setdefault("new", (1, 2)), ref.setdefault("new", (1, 2)))
    assert d.setdefault("none") is None  # default default is None, and it is stored
    ref.setdefault("none")
    assert "none" in d and d["none"] is None
    assert list(d.items()) == list(ref.items())


def test_setdefault_existing_does_not_write(d):
    d["a"] = 1
    before = footprint(d)
    assert d.setdefault("a", 2) == 1
    assert footprint(d) == before
    assert [r.op for r in d.records()] == ["set"]


UPDATE_FORMS = {
    "dict": (lambda other: ({"b": 20, "x": 1, "y": (2,)},), {}),
    "ordereddict": (lambda other: (OrderedDict([("y", [3]), ("b", 21)]),), {}),
    "another_iodict": (lambda other: (other,), {}),
    "pairs_list": (lambda other: ([("x", 1), ("b", 22), ("y", 2)],), {}),
    "pairs_generator": (lambda other: (((k, v) for k, v in [("x", 1), ("a", 0)]),), {}),
    "pairs_of_lists": (lambda other: ([["x", 1], ["y", 2]],), {}),
    "kwargs": (lambda other: (), {"x": 1, "b": 23}),
    "mapping_and_kwargs": (lambda other: ({"x": 1, "b": 2},), {"b": 3, "z": 4}),
    "keys_only_object": (lambda other: (KeysOnly({"y": 1, "a": 5}),), {}),
    "nothing": (lambda other: (), {}),
}


@pytest.mark.parametrize("form", list(UPDATE_FORMS))
def test_update_forms_like_dict(d, tmp_path, form):
    make_args, kwargs = UPDATE_FORMS[form]
    other = IODict(tmp_path / "other")
    other["q"] = (1, [2])
    other["b"] = "from-other"
    ref = {}
    fill(d, ref, [("a", 1), ("b", 2), ("c", 3)])
    assert d.update(*make_args(other), **kwargs) is None
    ref.update(*make_args(other), **kwargs)
    assert list(d.items()) == list(ref.items())
    assert all(same(d[k], v) for k, v in ref.items())
    d = reopen(d)
    assert list(d.items()) == list(ref.items())
    d.close()
    other.close()


def test_update_duplicate_keys_last_value_wins_first_position_kept(d):
    ref = {}
    fill(d, ref, [("start", 0)])
    pairs = [("a", 1), ("b", 2), ("a", 3), ("c", 4), ("b", 5)]
    d.update(pairs)
    ref.update(pairs)
    assert list(d.items()) == list(ref.items()) == [("start", 0), ("a", 3), ("b", 5), ("c", 4)]
    assert d.birthtime("a") < d.birthtime("b") < d.birthtime("c")
    d = reopen(d)
    assert list(d.items()) == list(ref.items())
    d.close()


@pytest.mark.parametrize("bad", [[1], [("a",)], [("a", 1, 2)], ["ab", "cde"]], ids=repr)
def test_update_bad_sequence_element_raises_like_dict_and_writes_nothing(d, bad):
    d["k"] = 0
    with pytest.raises(Exception) as expected:
        {}.update(bad)
    with pytest.raises(expected.type):
        d.update([("x", 1)] + bad)
    assert list(d.items()) == [("k", 0)]


def test_update_too_many_positional_args(d):
    with pytest.raises(TypeError):
        d.update({"a": 1}, {"b": 2})


def test_clear(d):
    fill(d, {}, [("a", 1), ("b", 2), ((1, 2), 3)])
    assert d.clear() is None
    assert len(d) == 0
    assert list(d) == []
    assert d == {}
    d.clear()  # clearing an empty store is fine
    d["c"] = 1
    assert list(d.items()) == [("c", 1)]
    d = reopen(d)
    assert list(d.items()) == [("c", 1)]
    d.close()


def test_views_are_live(d):
    ref = {}
    fill(d, ref, [("a", 1)])
    keys, values, items = d.keys(), d.values(), d.items()
    rkeys, rvalues, ritems = ref.keys(), ref.values(), ref.items()
    fill(d, ref, [("b", (2,)), ("c", [3])])
    assert "b" in keys and "c" in keys
    assert len(keys) == len(values) == len(items) == len(rkeys) == 3
    assert list(keys) == list(rkeys)
    assert list(values) == list(rvalues)
    assert list(items) == list(ritems)
    assert ("b", (2,)) in items
    assert ("b", [2]) not in items
    assert ("b", 3) not in items
    assert ("zz", 1) not in items
    assert (2,) in values
    del d["a"]
    del ref["a"]
    assert "a" not in keys
    assert ("a", 1) not in items
    assert list(items) == list(ritems)
    assert len(items) == 2
    d["a"] = 1
    assert list(keys) == ["b", "c", "a"]


def test_views_are_sets_like_dict_views(d):
    fill(d, {}, [("a", 1), ("b", 2)])
    assert d.keys() == {"a", "b"}
    assert d.keys() & {"a", "z"} == {"a"}
    assert d.items() == {("a", 1), ("b", 2)}
    assert d.keys() - {"a"} == {"b"}


def test_views_are_reversible_like_dict_views(d):
    ref = {}
    fill(d, ref, [("a", 1), ("b", 2), ("c", 3)])
    assert list(reversed(d.keys())) == list(reversed(ref.keys()))
    assert list(reversed(d.values())) == list(reversed(ref.values()))
    assert list(reversed(d.items())) == list(reversed(ref.items()))


def test_views_are_not_one_shot(d):
    fill(d, {}, [("a", 1), ("b", 2)])
    keys, values, items = d.keys(), d.values(), d.items()
    for _ in range(2):  # iodict's were one-shot generators
        assert list(keys) == ["a", "b"]
        assert list(values) == [1, 2]
        assert list(items) == [("a", 1), ("b", 2)]


def test_copy_is_a_plain_dict(d):
    ref = {}
    fill(d, ref, [("b", 1), ("a", (2, [3])), (3, b"x")])
    copy = d.copy()
    assert type(copy) is dict
    assert copy is not d
    assert same(copy, ref)  # same items, same order, same types
    copy["new"] = 1
    assert "new" not in d
    d["other"] = 2
    assert "other" not in copy


def test_eq_and_ne(d, tmp_path):
    fill(d, {}, [("a", 1), ("b", (2,))])
    assert d == {"b": (2,), "a": 1}  # order ignored, like dict
    assert {"b": (2,), "a": 1} == d  # noqa: SIM300 - dict.__eq__ defers to the store
    assert d == OrderedDict([("b", (2,)), ("a", 1)])
    assert OrderedDict([("b", (2,)), ("a", 1)]) == d
    assert not (d != {"a": 1, "b": (2,)})  # noqa: SIM202 - __ne__ itself
    assert d != {"a": 1}
    assert d != {"a": 1, "b": (2,), "c": 3}
    assert d != {"a": 1, "b": [2]}  # a tuple is not a list
    assert d != {"a": 2, "b": (2,)}
    assert {"a": 1} != d  # noqa: SIM300 - the reflected comparison
    assert d != [("a", 1), ("b", (2,))]  # not a mapping
    assert d != "ab"
    assert d == d
    with IODict(tmp_path / "other") as other:
        other["b"] = (2,)
        other["a"] = 1
        assert d == other
        other["c"] = 0
        assert d != other


def test_eq_empty(d):
    assert d == {}
    assert d == OrderedDict()
    assert d != {"a": 1}


@pytest.mark.parametrize(
    "items",
    [
        [],
        [("a", 1)],
        [("b", (1, 2)), ("a", [1, (2,)]), (1, b"x"), ((1, "k"), None), ("f", 1.5), ("t", True)],
        [("s", 'it\'s "quoted"'), ("d", {1: "x", "y": {}})],
    ],
    ids=["empty", "one", "mixed", "strings"],
)
def test_repr_like_dict(d, items):
    ref = {}
    fill(d, ref, items)
    assert repr(d) == repr(ref)
    assert str(d) == str(ref)


def test_iteration_and_reversed(d):
    ref = {}
    fill(d, ref, [("m", 1), ("a", 2), (5, 3), (b"z", 4), ((0,), 5)])
    assert list(d) == list(ref)
    assert [k for k in d] == list(ref)  # the for protocol itself
    assert list(reversed(d)) == list(reversed(ref))


def test_fromkeys_sets_keys_in_this_store_and_returns_it(d):
    ref = {}
    fill(d, ref, [("a", 1), ("x", 2)])
    result = d.fromkeys(["x", "y", "z"], (0,))
    assert result is d
    ref.update(dict.fromkeys(["x", "y", "z"], (0,)))
    assert same(dict(d.items()), ref)
    assert list(d) == list(ref)  # existing "x" kept its place
    assert d.fromkeys(iter(["n1", "n2"])) is d
    assert d["n1"] is None and d["n2"] is None
    d = reopen(d)
    assert d["y"] == (0,)
    d.close()


# --- order -------------------------------------------------------------------------


def test_iteration_follows_insertion_order_not_sorting(d):
    keys = ["m", "a", "z", 3, 1, 2, (2,), (1,), b"b", b"a"]
    for k in keys:
        d[k] = 0
    assert list(d) == keys
    assert list(reversed(d)) == keys[::-1]


def test_overwrite_keeps_place(d):
    ref = OrderedDict()
    fill(d, ref, [("a", 1), ("b", 2), ("c", 3)])
    fill(d, ref, [("a", 10), ("b", 20)])
    assert list(d.items()) == list(ref.items()) == [("a", 10), ("b", 20), ("c", 3)]


def test_delete_then_set_moves_to_end(d):
    ref = OrderedDict()
    fill(d, ref, [("a", 1), ("b", 2), ("c", 3)])
    del d["a"]
    del ref["a"]
    fill(d, ref, [("a", 4)])
    d.pop("b")
    ref.pop("b")
    fill(d, ref, [("b", 5)])
    assert list(d.items()) == list(ref.items()) == [("c", 3), ("a", 4), ("b", 5)]


def _history(d, ref):
    fill(d, ref, [(i, i) for i in range(30)])
    for i in range(0, 30, 3):
        del d[i]
        del ref[i]
    fill(d, ref, [(i, -i) for i in range(0, 30, 2)])  # some overwrites, some re-sets
    d.update([(100, "u"), (1, "one")])
    ref.update([(100, "u"), (1, "one")])
    assert d.popitem(last=False) == ref.popitem(last=False)
    d.setdefault(0, "zero")
    ref.setdefault(0, "zero")


@pytest.mark.parametrize("segment_bytes", [4096, 64 * 2**20])
def test_order_survives_reopen_and_compact(store_path, segment_bytes):
    d = IODict(store_path, segment_bytes=segment_bytes, compression=None)
    ref = OrderedDict()
    _history(d, ref)
    expected = list(ref.items())
    assert list(d.items()) == expected
    d = reopen(d, segment_bytes=segment_bytes)
    assert list(d.items()) == expected
    assert list(reversed(d)) == list(reversed(ref))
    d.compact()
    assert list(d.items()) == expected
    d = reopen(d, segment_bytes=segment_bytes)
    assert list(d.items()) == expected
    assert d.popitem(last=False) == ref.popitem(last=False)
    assert d.popitem() == ref.popitem()
    fill(d, ref, [(5, "new"), (200, "x")])
    assert list(d.items()) == list(ref.items())
    d.close()


# --- birthtime -----------------------------------------------------------------


def test_birthtime_is_float_seconds_since_epoch(d):
    before = time.time()
    d["a"] = 1
    after = time.time()
    birth = d.birthtime("a")
    assert type(birth) is float
    assert before - 1 <= birth <= after + 1  # seconds, not ns or ms


def test_birthtime_strictly_increasing_in_insertion_order(d):
    for i in range(300):
        d[f"k{i}"] = i
    births = [d.birthtime(k) for k in d]
    assert all(a < b for a, b in zip(births, births[1:]))


def test_birthtime_strictly_increasing_within_one_batch(d):
    d.update((i, i) for i in range(500))
    d.fromkeys(range(500, 1000), 0)
    births = [d.birthtime(k) for k in d]
    assert len(births) == 1000
    repeated = [(i, b) for i, (a, b) in enumerate(zip(births, births[1:])) if not a < b]
    assert not repeated, f"{len(repeated)} birthtimes not greater than their predecessor, e.g. {repeated[:3]}"


def test_birthtime_unchanged_by_overwrite(d):
    d["a"] = 1
    d["b"] = 2
    born = d.birthtime("a")
    d["a"] = 3
    d.update({"a": 4})
    d.setdefault("a", 5)
    d.fromkeys(["a"], 6)
    assert d.birthtime("a") == born
    assert d.birthtime("a") < d.birthtime("b")


def test_birthtime_changed_by_delete_and_set(d):
    d["a"] = 1
    d["b"] = 2
    born = d.birthtime("a")
    del d["a"]
    with pytest.raises(KeyError):
        d.birthtime("a")
    d["a"] = 1
    assert d.birthtime("a") > born
    assert d.birthtime("a") > d.birthtime("b")


def test_birthtime_missing_raises_keyerror(d):
    with pytest.raises(KeyError):
        d.birthtime("nope")
    d["a"] = 1
    d.pop("a")
    with pytest.raises(KeyError):
        d.birthtime("a")


def test_birthtime_survives_reopen_and_compact(store_path):
    d = IODict(store_path, segment_bytes=4096)
    ref = OrderedDict()
    _history(d, ref)
    births = {k: d.birthtime(k) for k in d}
    d = reopen(d)
    assert {k: d.birthtime(k) for k in d} == births
    d.compact()
    assert {k: d.birthtime(k) for k in d} == births
    d = reopen(d)
    assert {k: d.birthtime(k) for k in d} == births
    d["new"] = 1  # a key set after compaction + reopen is still the newest
    assert d.birthtime("new") > max(births.values())
    d.close()


# --- key and value types ---------------------------------------------------------

GOOD_KEYS = [
    "a",
    "",
    "üñí©ødé",
    b"",
    b"\x00\xff",
    0,
    -1,
    2**63 - 1,
    -(2**63),
    2**64 - 1,
    (),
    (1, "a", b"b"),
    (("nested", (1, (b"deep",))), -3),
]


@pytest.mark.parametrize("key", GOOD_KEYS, ids=repr)
def test_key_round_trips_with_exact_type(store_path, key):
    d = IODict(store_path)
    d[key] = "v"
    assert key in d
    assert d[key] == "v"
    (stored,) = list(d)
    assert same(stored, key)
    d = reopen(d)
    (stored,) = list(d)
    assert same(stored, key)
    assert d[key] == "v"
    (record,) = list(d.records())
    assert same(record.key, key)
    d.close()


def test_keys_of_different_types_are_different_keys(d):
    d["1"] = "str"
    d[b"1"] = "bytes"
    d[1] = "int"
    d[(1,)] = "tuple"
    d = reopen(d)
    assert len(d) == 4
    assert [d["1"], d[b"1"], d[1], d[(1,)]] == ["str", "bytes", "int", "tuple"]
    d.close()


BAD_KEYS = [1.5, float("nan"), None, [1], (1, 1.5), (1, [2]), ((None,),), frozenset([1]), object()]


@pytest.mark.parametrize("key", BAD_KEYS, ids=repr)
def test_bad_key_raises_typeerror_and_writes_nothing(store_path, key):
    d = IODict(store_path)
    d["existing"] = 1
    before = footprint(d)
    with pytest.raises(TypeError):
        d[key] = 1
    with pytest.raises(TypeError):
        d.setdefault(key, 1)
    with pytest.raises(TypeError):
        d.update([("fine", 1), (key, 1)])
    with pytest.raises(TypeError):
        d.fromkeys(["fine2", key])
    assert len(d) == 1
    assert list(d.items()) == [("existing", 1)]
    assert footprint(d) == before
    d = reopen(d)
    assert list(d.items()) == [("existing", 1)]
    assert [r.key for r in d.records()] == ["existing"]
    d.close()


GOOD_VALUES = [
    None,
    True,
    False,
    0,
    -(2**63),
    2**64 - 1,
    1.5,
    -0.0,
    "text",
    "",
    b"\x00bytes",
    (),
    [],
    {},
    (1, 2),
    [1, 2],
    (1, [2, (3, [4])]),
    [(1,), [2, (3,)]],
    {1: "a", 2: (3, 4), -5: [6]},
    {"k": {"n": (1, [2])}, "l": []},
    {(1, 2): "tuple key"},
    "x" * 5000,
]


@pytest.mark.parametrize("value", GOOD_VALUES, ids=lambda v: repr(v)[:40])
def test_value_round_trips_with_exact_type(store_path, value):
    d = IODict(store_path)
    d["k"] = value
    assert same(d["k"], value)
    assert same(d.get("k"), value)
    assert same(list(d.values())[0], value)
    d = reopen(d)
    assert same(d["k"], value)
    assert same(list(d.records())[0].value, value)
    assert same(d.pop("k"), value)
    d.close()


class Unhashable:
    pass


BAD_VALUES = [object(), len, Unhashable, Unhashable(), [1, object()], (1, {2, object()}), {"k": {3: object()}}]


@pytest.mark.parametrize("value", BAD_VALUES, ids=lambda v: type(v).__name__ + repr(v)[:20])
def test_unserializable_value_raises_typeerror_and_store_unchanged(store_path, value):
    d = IODict(store_path)
    d["a"] = (1, 2)
    before_items, before_stats = d.copy(), footprint(d)
    with pytest.raises(TypeError):
        d["b"] = value
    with pytest.raises(TypeError):
        d["a"] = value  # overwriting keeps the old value
    with pytest.raises(TypeError):
        d.setdefault("c", value)
    with pytest.raises(TypeError):
        d.update([("ok", 1), ("bad", value)])
    with pytest.raises(TypeError):
        d.fromkeys(["x", "y"], value)
    assert same(d.copy(), before_items)
    assert footprint(d) == before_stats
    d["after"] = [1, (2,)]  # a failed serialization leaves no residue behind
    assert same(d["after"], [1, (2,)])
    d = reopen(d)
    assert same(d.copy(), {"a": (1, 2), "after": [1, (2,)]})
    assert [r.key for r in d.records()] == ["a", "after"]
    d.close()


def test_update_with_one_bad_item_writes_none(d):
    d["keep"] = 1
    before = footprint(d)
    with pytest.raises(TypeError):
        d.update({"x": 1, "y": 2, "bad": object(), "z": 3})
    with pytest.raises(TypeError):
        d.update({"x": 1, 2.5: 2})
    with pytest.raises(TypeError):
        d.update([("x", 1)], bad=object())
    assert list(d.items()) == [("keep", 1)]
    assert footprint(d) == before
    d = reopen(d)
    assert list(d.items()) == [("keep", 1)]
    d.close()


def test_pickle_serializer_round_trips_arbitrary_objects(store_path):
    values = {"set": {1, 2}, "point": Point(1, (2, [3])), "tuple": (1, [2]), "frozen": frozenset("ab"), "big": 2**70}
    d = IODict(store_path, serializer="pickle")
    d.update(values)
    assert all(same(d[k], v) for k, v in values.items())
    d = reopen(d, serializer="pickle")
    assert list(d) == list(values)
    assert all(same(d[k], v) for k, v in values.items())
    assert [r.value for r in d.records()] == list(values.values())
    d.close()


def test_pickle_serializer_still_checks_keys_and_unpicklable_values(store_path):
    d = IODict(store_path, serializer="pickle")
    d["a"] = 1
    before = footprint(d)
    with pytest.raises(TypeError):
        d[1.5] = 1
    with pytest.raises(TypeError):
        d["b"] = lambda: None
    with pytest.raises(TypeError):
        d["b"] = threading.Lock()
    assert footprint(d) == before
    assert list(d.items()) == [("a", 1)]
    d.close()


def test_pickled_store_read_with_default_serializer_raises(store_path):
    with IODict(store_path, serializer="pickle") as d:
        d["s"] = {1, 2}
    with IODict(store_path) as d:
        assert "s" in d  # keys are not pickled
        with pytest.raises(IODictLogError):
            d["s"]
        with pytest.raises(IODictLogError):
            d.get("s")


# --- records() -------------------------------------------------------------------


def test_records_replays_sets_and_deletes_in_write_order(d_manual):
    d = d_manual
    d["a"] = 1
    d["b"] = (2,)
    d["a"] = 3
    del d["b"]
    d.pop("a")
    d[(1, "t")] = [4]
    records = list(d.records())
    assert all(type(r) is Record for r in records)
    assert Record._fields == ("seq", "birthtime", "op", "key", "value")
    assert [(r.op, r.key, r.value) for r in records] == [
        ("set", "a", 1),
        ("set", "b", (2,)),
        ("set", "a", 3),
        ("delete", "b", None),
        ("delete", "a", None),
        ("set", (1, "t"), [4]),
    ]
    assert same(records[1].value, (2,)) and same(records[5].value, [4])
    seqs = [r.seq for r in records]
    assert all(type(s) is int for s in seqs)
    assert all(a < b for a, b in zip(seqs, seqs[1:]))
    assert all(type(r.birthtime) is float for r in records)
    assert records[0].birthtime == records[2].birthtime  # a set carries the key's birthtime
    assert records[5].birthtime == d.birthtime((1, "t"))


def test_records_start_filters_by_seq(d):
    for i in range(10):
        d[i % 4] = i
    del d[0]
    records = list(d.records())
    seqs = [r.seq for r in records]
    assert list(d.records(0)) == records
    for start in range(0, seqs[-1] + 3):
        assert list(d.records(start=start)) == [r for r in records if r.seq >= start]
    assert list(d.records(start=seqs[-1] + 1)) == []


def test_records_of_a_batch_are_its_individual_records(d_manual):
    d = d_manual
    d["before"] = 0
    d.update([("x", 1), ("y", (2,)), ("x", 3)], z=4)
    d.clear()
    records = list(d.records())
    assert {r.op for r in records} == {"set", "delete"}
    assert [(r.op, r.key, r.value) for r in records] == [
        ("set", "before", 0),
        ("set", "x", 1),
        ("set", "y", (2,)),
        ("set", "x", 3),
        ("set", "z", 4),
        ("delete", "before", None),
        ("delete", "x", None),
        ("delete", "y", None),
        ("delete", "z", None),
    ]
    seqs = [r.seq for r in records]
    assert all(a < b for a, b in zip(seqs, seqs[1:]))


def test_records_survive_reopen(d_manual):
    d = d_manual
    d.update({"a": 1, "b": 2})
    d["a"] = 3
    del d["b"]
    records = list(d.records())
    d = reopen(d, auto_compact=False)
    assert list(d.records()) == records
    d.close()


def _check_cursor(d, records):
    """records(start) for every start: a strictly increasing suffix of ``records``."""
    for start in range(0, records[-1].seq + 2):
        got = list(d.records(start=start))
        assert all(r.seq >= start for r in got), start
        assert all(a.seq < b.seq for a, b in zip(got, got[1:])), (start, [r.seq for r in got])
        assert got == [r for r in records if r.seq >= start], start


def test_records_after_compact_keep_live_records_in_seq_order(d_manual):
    d = d_manual
    for i in range(20):
        d[i % 7] = (i, "v")
    del d[3]
    d.update({"b1": 1, "b2": 2})
    latest = {}
    for r in d.records():
        if r.op == "set":
            latest[r.key] = r
        else:
            latest.pop(r.key, None)
    d.compact()
    records = list(d.records())
    assert {r.op for r in records} == {"set"}
    assert sorted(records) == sorted(latest.values())  # history is gone, live records keep seq and birthtime
    assert [r.seq for r in records] == sorted(r.seq for r in records)
    assert {r.key: r.value for r in records} == d.copy()
    _check_cursor(d, records)
    last = records[-1].seq
    d["after"] = 1
    (new,) = list(d.records(start=last + 1))
    assert (new.op, new.key, new.value) == ("set", "after", 1)
    assert new.seq > last


def test_records_after_compact_into_several_segments_are_in_seq_order(store_path):
    d = IODict(store_path, segment_bytes=4096, compression=None)
    for i in range(40):
        d[i] = bytes([i]) * 300
    for i in range(0, 40, 3):  # overwrite every third key: live seqs no longer follow birthtime order
        d[i] = bytes([i + 1]) * 300
    d.compact()
    assert d.stats()["segments"] > 2
    records = list(d.records())
    assert len(records) == 40
    assert {r.key: r.value for r in records} == d.copy()
    seqs = [r.seq for r in records]
    assert seqs == sorted(seqs), "records() after compaction are not in sequence order"
    _check_cursor(d, records)
    d.close()


# --- stats() and compact() ---------------------------------------------------------


def test_stats_keys_and_types(d):
    stats = d.stats()
    for name in ("keys", "segments", "live_bytes", "dead_bytes", "corrupt_records"):
        assert type(stats[name]) is int, name
    assert stats["keys"] == 0
    assert stats["segments"] >= 1
    assert stats["corrupt_records"] == 0


def test_stats_keys_tracks_len(d):
    for i in range(10):
        d[i] = i
        assert d.stats()["keys"] == len(d) == i + 1
    d[0] = "overwrite"
    assert d.stats()["keys"] == 10
    del d[0]
    d.pop(1)
    d.popitem()
    assert d.stats()["keys"] == len(d) == 7
    d.clear()
    assert d.stats()["keys"] == 0


def test_dead_bytes_grow_with_overwrites_and_shrink_after_compact(d_manual):
    d = d_manual
    d.update({i: "v" * 100 for i in range(10)})
    dead = d.stats()["dead_bytes"]
    live = d.stats()["live_bytes"]
    assert live > 0
    for n in range(5):
        d[n] = "w" * 100
        now = d.stats()["dead_bytes"]
        assert now > dead
        dead = now
    for _ in range(50):
        d[0] = "x" * 100
    before = d.stats()
    assert before["dead_bytes"] > 50 * 100
    summary = d.compact()
    after = d.stats()
    assert after["dead_bytes"] < before["dead_bytes"]
    assert after["dead_bytes"] < after["live_bytes"]
    assert after["keys"] == before["keys"] == 10
    assert set(summary) >= {"bytes_before", "bytes_after", "live_keys", "seconds"}
    assert summary["live_keys"] == 10
    assert summary["bytes_after"] < summary["bytes_before"]
    assert isinstance(summary["seconds"], float) and summary["seconds"] >= 0


def test_compact_shrinks_an_overwrite_heavy_store(d_manual):
    d = d_manual
    for i in range(300):
        d[i % 5] = (i, "payload" * 10)
    summary = d.compact()
    assert summary["bytes_after"] * 5 < summary["bytes_before"]
    assert summary["live_keys"] == 5
    assert d.copy() == {k: (295 + k, "payload" * 10) for k in range(5)}


def test_compact_of_empty_and_cleared_store(d):
    d.compact()
    assert len(d) == 0
    d.update({"a": 1, "b": 2})
    d.clear()
    summary = d.compact()
    assert summary["live_keys"] == 0
    d["c"] = 3
    d = reopen(d)
    assert list(d.items()) == [("c", 3)]
    d.close()


def test_segments_roll_and_everything_survives_reopen(store_path):
    d = IODict(store_path, segment_bytes=4096, compression=None)
    ref = OrderedDict()
    for i in range(300):
        key = ("k", i % 120)
        if i % 7 == 0 and key in ref:
            del d[key]
            del ref[key]
        d[key] = [i, "x" * 80]
        ref[key] = [i, "x" * 80]
    assert d.stats()["segments"] > 1
    births = [d.birthtime(k) for k in d]
    assert list(d.items()) == list(ref.items())
    for kwargs in ({"segment_bytes": 4096}, {}):
        d = reopen(d, **kwargs)
        assert d.stats()["segments"] > 1
        assert list(d.items()) == list(ref.items())
        assert [d.birthtime(k) for k in d] == births
    d.close()


# --- flush, sync, close, with -------------------------------------------------------


@pytest.mark.parametrize("sync", [False, True, 0.5])
def test_flush_and_sync(store_path, sync):
    d = IODict(store_path, sync=sync)
    d["a"] = 1
    assert d.flush() is None
    assert d.sync() is None
    d["b"] = 2
    d.sync()
    d = reopen(d)
    assert list(d.items()) == [("a", 1), ("b", 2)]
    d.close()


def test_close_is_idempotent(store_path):
    d = IODict(store_path)
    d["a"] = 1
    assert d.close() is None
    d.close()
    d.close()
    with IODict(store_path) as again:
        assert again["a"] == 1


CLOSED_CALLS = {
    "getitem": lambda d: d["a"],
    "getitem_missing": lambda d: d["missing"],
    "setitem": lambda d: d.__setitem__("b", 2),
    "delitem": lambda d: d.__delitem__("a"),
    "contains": lambda d: "a" in d,
    "len": len,
    "iter": lambda d: list(iter(d)),
    "reversed": lambda d: list(reversed(d)),
    "get": lambda d: d.get("a"),
    "get_missing_with_default": lambda d: d.get("missing", 0),
    "pop": lambda d: d.pop("a"),
    "pop_with_default": lambda d: d.pop("missing", None),
    "popitem": lambda d: d.popitem(),
    "popitem_first": lambda d: d.popitem(last=False),
    "setdefault": lambda d: d.setdefault("a", 1),
    "update": lambda d: d.update({"b": 2}),
    "update_kwargs": lambda d: d.update(b=2),
    "update_empty": lambda d: d.update([]),
    "clear": lambda d: d.clear(),
    "keys": lambda d: list(d.keys()),
    "values": lambda d: list(d.values()),
    "items": lambda d: list(d.items()),
    "items_contains": lambda d: ("a", 1) in d.items(),
    "copy": lambda d: d.copy(),
    "eq": lambda d: d == {"a": 1},
    "ne": lambda d: d != {"a": 1},
    "repr": repr,
    "fromkeys": lambda d: d.fromkeys(["b"], 0),
    "birthtime": lambda d: d.birthtime("a"),
    "records": lambda d: list(d.records()),
    "records_start": lambda d: list(d.records(start=1)),
    "stats": lambda d: d.stats(),
    "compact": lambda d: d.compact(),
    "flush": lambda d: d.flush(),
    "sync": lambda d: d.sync(),
}


@pytest.mark.parametrize("name", list(CLOSED_CALLS))
def test_every_method_after_close_raises_store_closed(store_path, name):
    d = IODict(store_path)
    d["a"] = 1
    d.close()
    with pytest.raises(StoreClosedError):
        CLOSED_CALLS[name](d)
    d.close()  # still idempotent
    with IODict(store_path) as again:
        assert list(again.items()) == [("a", 1)]  # nothing was written through the closed object


def test_store_closed_error_is_an_iodict_log_error():
    assert issubclass(StoreClosedError, IODictLogError)
    assert issubclass(iodict_log.CorruptionError, IODictLogError)


def test_with_closes_and_keeps_the_data(store_path):
    with IODict(store_path) as d:
        assert isinstance(d, IODict)
        d["a"] = (1, 2)
        d["b"] = [3]
    with pytest.raises(StoreClosedError):
        d["a"]
    assert os.path.isdir(store_path)  # iodict deleted everything here
    with IODict(store_path) as d:
        assert same(d.copy(), {"a": (1, 2), "b": [3]})


def test_with_closes_on_exception_and_keeps_the_data(store_path):
    with pytest.raises(RuntimeError), IODict(store_path) as d:
        d["a"] = 1
        raise RuntimeError("boom")
    with pytest.raises(StoreClosedError):
        len(d)
    with IODict(store_path) as d:
        assert d.copy() == {"a": 1}


# --- the lock argument ---------------------------------------------------------------


def exercise_every_method(d):
    """Call every method once, checking each result against an OrderedDict."""
    ref = OrderedDict()
    d["a"] = 1
    ref["a"] = 1
    d.update([("b", (2,)), ("c", [3])], d=4)
    ref.update([("b", (2,)), ("c", [3])], d=4)
    d.update({"e": 5})
    ref.update({"e": 5})
    assert d["a"] == 1
    assert d.get("b") == (2,) and d.get("zz", 5) == 5
    assert "c" in d and "zz" not in d
    assert len(d) == 5
    assert d.setdefault("a", 9) == 1
    assert d.setdefault("f", 6) == ref.setdefault("f", 6)
    assert d.pop("d") == ref.pop("d")
    assert d.pop("zz", None) is None
    assert d.popitem() == ref.popitem()
    assert d.popitem(last=False) == ref.popitem(last=False)
    del d["e"]
    del ref["e"]
    assert d.fromkeys(["x", "y"], 0) is d
    ref.update(dict.fromkeys(["x", "y"], 0))
    assert list(d) == list(ref)
    assert list(reversed(d)) == list(reversed(ref))
    assert list(d.keys()) == list(ref.keys())
    assert list(d.values()) == list(ref.values())
    assert list(d.items()) == list(ref.items())
    assert ("x", 0) in d.items()
    assert d.copy() == dict(ref)
    assert d == ref and not (d != ref)  # noqa: SIM202 - __ne__ itself
    assert repr(d) == repr(dict(ref))
    assert isinstance(d.birthtime("x"), float)
    assert len(list(d.records())) > 0
    assert list(d.records(start=3))
    assert d.stats()["keys"] == len(ref)
    assert d.compact()["live_keys"] == len(ref)
    d.flush()
    d.sync()
    assert list(d.items()) == list(ref.items())
    d.clear()
    assert len(d) == 0
    d["last"] = "one"
    d.close()
    d.close()


LOCK_ARGS = {
    "none": lambda: None,
    "threading.Lock()": threading.Lock,
    "threading.RLock()": threading.RLock,
    "threading.Lock": lambda: threading.Lock,
    "threading.RLock": lambda: threading.RLock,
    "multiprocessing.Lock": lambda: multiprocessing.Lock,
    "multiprocessing.RLock": lambda: multiprocessing.RLock,
    "multiprocessing.Lock()": multiprocessing.Lock,
    "acquire_release_only_instance": AcquireReleaseOnly,
    "acquire_release_only_class": lambda: AcquireReleaseOnly,
}


@pytest.mark.parametrize("name", list(LOCK_ARGS))
def test_lock_argument_forms_work_for_every_method(store_path, name):
    lock = LOCK_ARGS[name]()
    run_guarded(lambda: exercise_every_method(IODict(store_path, lock=lock)))
    with IODict(store_path, lock=LOCK_ARGS[name]()) as d:
        assert list(d.items()) == [("last", "one")]


def test_non_reentrant_lock_does_not_self_deadlock(store_path):
    """iodict users pass lock=threading.Lock: no method may take the lock twice."""
    run_guarded(lambda: exercise_every_method(IODict(store_path, lock=threading.Lock)))

    def with_block():
        with IODict(store_path, lock=threading.Lock()) as d:
            assert d == {"last": "one"}
            d["a"] = 1

    run_guarded(with_block)


def test_lock_instance_is_used_and_released(store_path):
    lock = AcquireReleaseOnly()
    d = IODict(store_path, lock=lock)
    d["a"] = 1
    assert d["a"] == 1
    assert lock.acquired >= 2
    assert lock.acquired == lock.released
    d.close()


def test_lock_factory_called_once(store_path):
    made = []

    def factory():
        made.append(threading.Lock())
        return made[-1]

    d = IODict(store_path, lock=factory)
    d["a"] = 1
    d.update(b=2)
    assert d.copy() == {"a": 1, "b": 2}
    d.close()
    assert len(made) == 1
    assert not made[0].locked()


@pytest.mark.parametrize("lock", [42, "lock", object(), 3.5], ids=repr)
def test_invalid_lock_raises_typeerror(store_path, lock):
    with pytest.raises(TypeError):
        IODict(store_path, lock=lock)


# --- bad construction ------------------------------------------------------------------


def test_path_that_is_a_file_raises_oserror_naming_it(tmp_path):
    path = tmp_path / "a-file"
    path.write_bytes(b"not a store")
    with pytest.raises(OSError) as info:
        IODict(path)
    exc = info.value
    assert str(path) in str(exc) or exc.filename == str(path)
    assert path.read_bytes() == b"not a store"


def test_directory_with_foreign_files_raises(tmp_path):
    path = tmp_path / "foreign"
    path.mkdir()
    (path / "notes.txt").write_text("mine")
    before = snapshot(path)
    with pytest.raises(IODictLogError):
        IODict(path)
    assert snapshot(path) == before


def test_existing_empty_directory_becomes_a_store(tmp_path):
    path = tmp_path / "empty"
    path.mkdir()
    with IODict(path) as d:
        d["a"] = 1
    with IODict(path) as d:
        assert d == {"a": 1}


def test_newer_format_version_is_refused_and_nothing_changes(store_path):
    with IODict(store_path) as d:
        d.update({"a": 1, "b": (2,)})
        d["a"] = 3
    current = Path(store_path) / "CURRENT"
    data = bytearray(current.read_bytes())
    data[8:10] = (99).to_bytes(2, "little")
    current.write_bytes(bytes(data))
    before = snapshot(store_path)
    with pytest.raises(IODictLogError) as info:
        IODict(store_path)
    assert "99" in str(info.value)
    assert "version" in str(info.value).lower()
    assert snapshot(store_path) == before
    with pytest.raises(IODictLogError):
        IODict(store_path, lock=threading.Lock)  # a second try: still refused, still untouched
    assert snapshot(store_path) == before


BAD_OPTIONS = [
    {"sync": -1},
    {"sync": -0.5},
    {"sync": "always"},
    {"segment_bytes": 0},
    {"segment_bytes": -4096},
    {"segment_bytes": "64MB"},
    {"compression": "zstd"},
    {"compression": "LZ4-please"},
    {"serializer": "json"},
    {"serializer": "marshal"},
]


@pytest.mark.parametrize("options", BAD_OPTIONS, ids=repr)
def test_invalid_options_raise_valueerror(store_path, options):
    with pytest.raises(ValueError):
        IODict(store_path, **options)


# --- README example, two objects, compression --------------------------------------------


def test_readme_example(store_path):
    d = IODict(store_path, lock=threading.Lock)
    d["a"] = (1, 2)
    assert repr(d) == "{'a': (1, 2)}"
    assert isinstance(d.birthtime("a"), float)
    d.close()


def test_two_objects_on_one_path_see_each_others_writes(store_path):
    a = IODict(store_path, segment_bytes=4096, compression=None)
    b = IODict(store_path, segment_bytes=4096)
    a["x"] = 1
    assert len(b) == 1
    assert b.get("x") == 1
    assert list(b) == ["x"]
    b["y"] = (2,)
    assert a["y"] == (2,)
    assert list(a) == ["x", "y"]
    a.update({"z": 3, "x": 10})
    assert list(b.items()) == [("x", 10), ("y", (2,)), ("z", 3)]
    del b["x"]
    assert "x" not in a
    assert a.birthtime("y") == b.birthtime("y")
    for i in range(100):  # roll segments through a, read through b
        a[("n", i)] = "v" * 100
    assert b.stats()["segments"] > 1
    assert list(b.items()) == list(a.items())
    a.compact()
    assert list(b.items()) == list(a.items())
    b["after"] = 1
    assert a["after"] == 1
    assert list(a) == list(b)
    a.close()
    assert b["after"] == 1  # closing one does not close the other
    b.close()


@pytest.mark.parametrize("value", ["a" * 10_000, b"\x00" * 10_240, ["same"] * 2000], ids=["str", "bytes", "list"])
def test_compression_saves_space_and_round_trips(tmp_path, value):
    sizes = {}
    for compression in ("lz4", None):
        path = tmp_path / str(compression)
        with IODict(path, compression=compression) as d:
            d["big"] = value
            assert same(d["big"], value)
            sizes[compression] = d.stats()["disk_bytes"]
        with IODict(path) as d:
            assert same(d["big"], value)
        with IODict(path, compression=None if compression else "lz4") as d:
            assert same(d["big"], value)  # compression only decides how new values are written
    assert sizes[None] > 10_000
    assert sizes["lz4"] * 4 < sizes[None]


def test_compact_reports_progress_as_it_copies_keys(tmp_path):
    with IODict(tmp_path / "s") as d:
        d.update((i, i) for i in range(25_000))
        seen = []
        d.compact(lambda done, total: seen.append((done, total)))
    assert seen[-1] == (25_000, 25_000)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen) and len(seen) >= 3


def test_a_store_dropped_without_close_gives_its_file_descriptors_back(tmp_path):
    import gc

    def open_descriptors() -> int:
        return len(os.listdir("/proc/self/fd"))

    gc.collect()
    before = open_descriptors()
    for i in range(20):
        d = IODict(tmp_path / f"s{i}", segment_bytes=4096)
        for j in range(100):
            d[j] = b"x" * 100  # a few segments each
        del d
    gc.collect()
    assert open_descriptors() <= before + 1
    with IODict(tmp_path / "s3") as again:  # and the data is all there
        assert len(again) == 100


# --- keys equal in a dict are one key in every method (issue 17.8) --------------------


class Color(enum.IntEnum):
    RED = 1


class Name(str):
    pass


# (a key, an equal key of another type, as a dict sees them)
EQUAL_KEYS = [
    (1, True),
    (1, 1.0),
    (1, Color.RED),
    (0, False),
    (-3, -3.0),
    ("name", Name("name")),
    ((1, "a"), (True, Name("a"))),
    ((0, (2,)), (0.0, (2.0,))),
]


@pytest.mark.parametrize(("key", "equal"), EQUAL_KEYS, ids=repr)
def test_keys_equal_in_a_dict_are_one_key_in_every_method(d, key, equal):
    # guards 17.8: d[True] and 1.0 in d found key 1, but d.pop(1.0) and del d[True] raised TypeError
    ref: dict = {}
    for target in (d, ref):
        target[key] = "first"
        target[equal] = "second"  # overwrites, in place
    assert list(d.items()) == list(ref.items()) and all(type(k) is type(key) for k in d)
    assert equal in d and d[equal] == "second" and d.get(equal) == "second"
    assert d.birthtime(equal) == d.birthtime(key)
    assert d.setdefault(equal, "other") == ref.setdefault(equal, "other") == "second"
    assert d.setdefault(equal, object()) == "second"  # (a default not used is not serialized, as before)
    assert d.pop(equal) == ref.pop(equal) == "second" and key not in d
    d[equal] = "third"  # a new key: stored in its plain form, as a dict keeps the first one
    assert same(list(d), [key])
    del d[equal]
    with pytest.raises(KeyError):
        del d[equal]
    d.update({equal: 1, key: 2})
    ref.update({equal: 1, key: 2})
    assert list(d.values()) == list(ref.values()) == [2] and same(list(d), [key])
    d.fromkeys([equal], "f")
    assert dict(d) == {key: "f"}
    d = reopen(d)
    assert d[equal] == "f" and same(list(d), [key])
    d.close()


# hashable keys no store can hold: a dict would say they are missing
NEVER_KEYS = [1.5, float("nan"), None, 2**64, -(2**63) - 1, (1, 1.5), (None,), frozenset([1]), object(), "\ud800"]


@pytest.mark.parametrize("key", NEVER_KEYS, ids=repr)
def test_a_key_no_store_can_hold_is_missing_for_lookups_and_a_typeerror_for_writes(d, key):
    d["existing"] = 1
    before = footprint(d)
    assert key not in d
    assert d.get(key) is None and d.get(key, "dflt") == "dflt"
    assert d.pop(key, "dflt") == "dflt"
    for lookup in (lambda: d[key], lambda: d.pop(key), lambda: d.birthtime(key), lambda: d.__delitem__(key)):
        with pytest.raises(KeyError) as info:
            lookup()
        assert info.value.args[0] is key  # (the key as given, as a dict says)
    for write in (lambda: d.__setitem__(key, 1), lambda: d.setdefault(key), lambda: d.update({key: 1})):
        with pytest.raises(TypeError):
            write()
    assert footprint(d) == before


@pytest.mark.parametrize("key", [[1], {}, (1, [2]), {1}], ids=repr)
def test_an_unhashable_key_raises_typeerror_in_every_method_like_dict(d, key):
    d["existing"] = 1
    methods = [
        lambda: d[key],
        lambda: key in d,
        lambda: d.get(key),
        lambda: d.pop(key, None),
        lambda: d.__delitem__(key),
        lambda: d.birthtime(key),
        lambda: d.__setitem__(key, 1),
        lambda: d.setdefault(key),
    ]
    for method in methods:
        with pytest.raises(TypeError):
            method()
    with pytest.raises(TypeError):
        {"existing": 1}.get(key)  # (what dict itself says)
    assert list(d.items()) == [("existing", 1)]


# --- PEP 584 (issue 17.8) ----------------------------------------------------------


def test_or_gives_a_plain_dict_like_copy(d):
    # guards 17.8: d | {}, {} | d and d |= {} failed
    d.update({"a": 1, "b": 2})
    merged = d | {"b": 3, "c": 4}
    assert type(merged) is dict and merged == {"a": 1, "b": 3, "c": 4} and list(merged) == ["a", "b", "c"]
    assert list(d.items()) == [("a", 1), ("b", 2)]  # unchanged
    merged = {"b": 3, "z": 0} | d
    assert type(merged) is dict and list(merged.items()) == [("b", 2), ("z", 0), ("a", 1)]
    assert d | {} == {} | d == {"a": 1, "b": 2}
    other = IODict(d.path + "-other")
    other["b"] = "o"
    assert d | other == {"a": 1, "b": "o"} and other | d == {"b": 2, "a": 1}
    other.close()


def test_ior_updates_in_place_as_one_batch_and_returns_the_store(d):
    d["a"] = 1
    before = d.stats()["last_seq"]
    same_store = d
    d |= {"a": 2, "b": 3}
    assert d is same_store and list(d.items()) == [("a", 2), ("b", 3)]
    d |= [("c", 4)]  # (like dict's |=, whatever update() takes)
    assert d["c"] == 4
    records = [r for r in d.records() if r.seq > before]
    assert [(r.key, r.value) for r in records] == [("a", 2), ("b", 3), ("c", 4)]
    d = reopen(d)
    assert dict(d) == {"a": 2, "b": 3, "c": 4}
    d.close()


@pytest.mark.parametrize("other", [[("a", 1)], 1, "ab", None], ids=repr)
def test_or_with_a_non_mapping_is_a_typeerror_like_dict(d, other):
    d["a"] = 0
    for combine in (lambda: d | other, lambda: other | d):
        with pytest.raises(TypeError):
            combine()
    assert d.__or__(other) is NotImplemented and d.__ror__(other) is NotImplemented


def test_ior_with_something_update_refuses_is_its_typeerror_and_writes_nothing(d):
    d["a"] = 0
    with pytest.raises(TypeError):
        d |= 1
    with pytest.raises(TypeError):
        d |= [("fine", 1), (1.5, 2)]
    assert dict(d) == {"a": 0}


# --- paths (issue 17.2) ------------------------------------------------------------


def test_a_relative_path_is_fixed_at_open_so_chdir_changes_nothing(tmp_path, monkeypatch):
    # guards 17.2: after os.chdir(), a relative store broke ("CURRENT is gone") within 30 sets
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")  # (restores the cwd afterwards)
    d = IODict("store", segment_bytes=4096)
    assert d.path == str(tmp_path / "a" / "store")
    os.chdir(tmp_path / "b")
    for i in range(200):  # rolls many segments
        d[f"k{i}"] = "v" * 50
    assert len(d) == 200
    d.compact()
    d.close()
    assert not (tmp_path / "b" / "store").exists()
    with IODict(tmp_path / "a" / "store") as again:
        assert len(again) == 200 and again["k199"] == "v" * 50


def test_a_tilde_path_is_expanded(tmp_path, monkeypatch):
    # guards 17.2: IODict("~/appdata") created ./~/appdata
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    with IODict("~/appdata") as d:
        d["k"] = 1
        assert d.path == str(tmp_path / "home" / "appdata")
    assert (tmp_path / "home" / "appdata" / "CURRENT").exists()
    assert list((tmp_path / "cwd").iterdir()) == []
