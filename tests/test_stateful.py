"""A hypothesis state machine: IODict against a collections.OrderedDict model.

Every step does the same thing to the store and to the model; after each step the
store must hold the model's items in the model's order, with strictly increasing
birthtimes that never change while a key lives, through compaction, reopening and
segment rolls (segment_bytes=4096 throughout, with some large incompressible values).
"""

from __future__ import annotations

import random
import shutil
import tempfile
from collections import OrderedDict

import hypothesis.strategies as st
from helpers import same
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from iodict_log import IODict
from iodict_log.serialize import canonical_key

SEGMENT_BYTES = 4096

# A small key space, so overwrites, deletes and re-sets of the same key happen often;
# with keys a dict holds equal to others (True and 1.0 are 1), which are one key (17.8).
KEYS = st.sampled_from(
    ["a", "b", "c", "", 0, 1, -7, 2**40, b"a", (1, "a"), ("a", (2, b"x")), ()]
    + [True, 1.0, False, -7.0, (True, "a"), ("a", (2.0, b"x"))]
)
STR_KEYS = st.sampled_from(["a", "b", "c", "kw"])

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=12)
    | st.binary(max_size=12)
)
NESTED = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=4).map(tuple)
        | st.dictionaries(st.text(max_size=4) | st.integers(-100, 100), inner, max_size=3)
    ),
    max_leaves=8,
)
# ~1.5 KB that lz4 cannot shrink: a few of these roll a 4 KiB segment.
BIG = st.integers(min_value=0, max_value=2**32).map(lambda seed: random.Random(seed).randbytes(1500))
VALUES = NESTED | BIG


class Model(OrderedDict):
    """The model: an OrderedDict that, like the store, keeps a new key in its
    canonical form (1 for True or 1.0); an existing key keeps its place and form."""

    def __setitem__(self, key, value):
        super().__setitem__(key if key in self else canonical_key(key), value)


class IODictMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.directory = tempfile.mkdtemp(prefix="iodict-stateful-")
        self.store = None
        self.model = Model()
        self.births = {}  # key -> birthtime seen while the key has lived

    @initialize()
    def open_store(self):
        self.store = IODict(self.directory, segment_bytes=SEGMENT_BYTES)

    def teardown(self):
        try:
            if self.store is not None:
                self.store.close()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    def _forget(self, key):
        self.births.pop(key, None)

    # --- writes ------------------------------------------------------------

    @rule(key=KEYS, value=VALUES)
    def set(self, key, value):
        self.store[key] = value
        self.model[key] = value

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def delete(self, data):
        key = data.draw(st.sampled_from(list(self.model)), label="key")
        del self.store[key]
        del self.model[key]
        self._forget(key)

    @rule(key=KEYS)
    def delete_missing_or_existing(self, key):
        if key in self.model:
            del self.store[key]
            del self.model[key]
            self._forget(key)
        else:
            try:
                del self.store[key]
            except KeyError:
                pass
            else:
                raise AssertionError(f"del of missing key {key!r} did not raise KeyError")

    @rule(key=KEYS, default=st.none() | st.just(0) | st.just((1, [2])), use_default=st.booleans())
    def pop(self, key, default, use_default):
        if use_default:
            assert same(self.store.pop(key, default), self.model.pop(key, default))
        elif key in self.model:
            assert same(self.store.pop(key), self.model.pop(key))
        else:
            try:
                self.store.pop(key)
            except KeyError:
                pass
            else:
                raise AssertionError(f"pop of missing key {key!r} did not raise KeyError")
        self._forget(key)

    @rule(last=st.booleans())
    def popitem(self, last):
        if self.model:
            expected = self.model.popitem(last=last)
            got = self.store.popitem(last=last)
            assert same(got, expected), (got, expected)
            self._forget(expected[0])
        else:
            try:
                self.store.popitem(last=last)
            except KeyError:
                pass
            else:
                raise AssertionError("popitem on an empty store did not raise KeyError")

    @rule(key=KEYS, default=VALUES)
    def setdefault(self, key, default):
        assert same(self.store.setdefault(key, default), self.model.setdefault(key, default))

    @rule(
        pairs=st.lists(st.tuples(KEYS, VALUES), min_size=1, max_size=6),
        kwargs=st.dictionaries(STR_KEYS, NESTED, max_size=2),
    )
    def update(self, pairs, kwargs):
        self.store.update(pairs, **kwargs)
        self.model.update(pairs, **kwargs)

    @rule(keys=st.lists(KEYS, max_size=4), value=NESTED)
    def fromkeys(self, keys, value):
        assert self.store.fromkeys(keys, value) is self.store
        self.model.update(dict.fromkeys(keys, value))

    @rule()
    def clear(self):
        self.store.clear()
        self.model.clear()
        self.births.clear()

    # --- maintenance --------------------------------------------------------

    @rule()
    def compact(self):
        summary = self.store.compact()
        assert summary["live_keys"] == len(self.model)

    @rule()
    def reopen(self):
        self.store.close()
        self.store = IODict(self.directory, segment_bytes=SEGMENT_BYTES)

    # --- reads --------------------------------------------------------------

    @rule(key=KEYS)
    def read(self, key):
        assert (key in self.store) == (key in self.model)
        if key in self.model:
            assert same(self.store[key], self.model[key])
        assert same(self.store.get(key, "dflt"), self.model.get(key, "dflt"))

    # --- invariants -------------------------------------------------------------

    @invariant()
    def same_items_in_same_order(self):
        if self.store is None:
            return
        items = list(self.store.items())
        assert items == list(self.model.items())
        assert all(same(a, b) for a, b in zip(items, self.model.items()))
        assert list(reversed(self.store)) == list(reversed(self.model))

    @invariant()
    def same_length(self):
        if self.store is None:
            return
        assert len(self.store) == len(self.model)
        assert self.store.stats()["keys"] == len(self.model)

    @invariant()
    def birthtimes_increase_and_do_not_change(self):
        if self.store is None:
            return
        births = [self.store.birthtime(key) for key in self.model]
        assert all(a < b for a, b in zip(births, births[1:])), births
        for key, birth in zip(self.model, births):
            assert self.births.setdefault(key, birth) == birth, key

    @invariant()
    def records_replay_to_the_same_items(self):
        if self.store is None:
            return
        replay = {}
        last_seq = -1
        for record in self.store.records():
            assert record.seq > last_seq
            last_seq = record.seq
            if record.op == "set":
                replay[record.key] = record.value
            else:
                assert record.op == "delete"
                replay.pop(record.key, None)
        assert replay == dict(self.model)


IODictMachine.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TestIODictStateful = IODictMachine.TestCase
