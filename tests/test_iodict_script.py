"""iodict's own functional script (iodict/tests/runlocal.py in directord/iodict at 52806e5)
run against iodict_log: the same sequence of calls, written here, changed only where
README's migration table says iodict_log differs, with serializer="pickle" where the
script stores a function (the default msgpack serializer refuses one with TypeError)."""

from __future__ import annotations

import collections.abc
import os
import queue
import re

import pytest

import iodict_log as iodict

STORE_FILE = re.compile(r"CURRENT|LOCK|HINT|CHECKPOINT|[0-9]{10}\.seg")  # (README: the store's own files)


def worked():
    print("worked")


def run_dict_part(path: str, serializer: str) -> None:
    """The script's IODict statements, in order; the function only where pickle can store it."""
    store = iodict.IODict(path=path, serializer=serializer)
    assert type(store) is iodict.IODict

    store.clear()
    store["a"] = 1
    assert store.get("a") == 1
    store["b"] = 2
    store["c"] = 3
    assert repr(store) == str({"a": 1, "b": 2, "c": 3})

    store["d"] = {"a": 1, "b": 2, "c": 3}
    assert type(store["d"]) is dict and store["d"]["a"] == 1

    if serializer == "pickle":
        store["e"] = worked
        assert callable(store["e"])
    else:  # migration table: iodict pickled every value; a function needs serializer="pickle"
        with pytest.raises(TypeError, match="serializer='pickle'"):
            store["e"] = worked
        assert "e" not in store

    assert store.copy() == store

    store.fromkeys(["f", "g"])
    assert store["f"] is None and store["g"] is None
    store.fromkeys(["h", "i"], "testing")
    assert store["h"] == "testing" and store["i"] == "testing"

    # migration table: live views, not one-shot generators
    assert isinstance(store.items(), collections.abc.ItemsView)
    assert isinstance(store.keys(), collections.abc.KeysView)
    assert isinstance(store.values(), collections.abc.ValuesView)

    # migration table: iodict's popitem() popped the oldest and returned its value
    assert store.popitem(last=False) == ("a", 1)

    assert store.setdefault("j") is None
    assert store.setdefault("k", "testing") == "testing"

    store.update({"a": "a", "l": "testing"})
    assert store["a"] == "a" and store["l"] == "testing"

    store["m"] = (1, 2, 3)
    assert type(store["m"]) is tuple
    store["n"] = {1, 2, 3}
    assert type(store["n"]) is set and store["n"] == {1, 2, 3}
    store["o"] = [1, 2, 3]
    assert type(store["o"]) is list
    store["p"] = b"testing"
    assert type(store["p"]) is bytes

    store["q"] = "dedup"
    store["r"] = "dedup"
    store.pop("q")
    assert store["r"] == "dedup"

    if serializer == "pickle":
        function = store.pop("e")
        function()

    store.clear()
    # migration table: the directory keeps the store's own files, and nothing of the keys
    assert len(store) == 0 and list(store) == []
    assert all(STORE_FILE.fullmatch(name) for name in os.listdir(path)), os.listdir(path)
    store.close()


def run_queue_part(path: str) -> None:
    q = iodict.DurableQueue(path=path)
    q.put("test")
    assert q.qsize() == 1
    assert q.get() == "test"
    assert q.qsize() == 0
    q.put_nowait("test1")
    assert q.qsize() == 1
    assert q.get_nowait() == "test1"
    assert q.qsize() == 0
    q.close()


class NewQueue(queue.Queue, iodict.FlushQueue):
    def __init__(self, path, lock=None, semaphore=None):
        super().__init__()
        self.path = path
        self.lock = lock
        self.semaphore = semaphore


def run_flush_part(path: str) -> None:
    q = NewQueue(path=path)
    q.put("test")
    assert q.qsize() == 1
    q.flush()
    assert q.qsize() == 0
    q.ingest()
    assert q.qsize() == 1
    assert q.get() == "test"


def test_the_iodict_script_runs_with_pickle_where_it_stores_a_function(tmp_path, capsys):
    run_dict_part(str(tmp_path / "test-iodict"), serializer="pickle")
    assert capsys.readouterr().out == "worked\n"
    run_queue_part(str(tmp_path / "test-iodict-queue"))
    run_flush_part(str(tmp_path / "test-iodict-queue-flush"))


def test_the_iodict_script_runs_on_the_default_serializer_but_for_the_function(tmp_path, capsys):
    run_dict_part(str(tmp_path / "test-iodict"), serializer="msgpack")
    assert capsys.readouterr().out == ""


def test_the_script_runs_again_on_the_stores_it_left(tmp_path, capsys):
    # runlocal.py starts with clear() on a fixed path, so a second run finds the first's store.
    for _ in range(2):
        run_dict_part(str(tmp_path / "test-iodict"), serializer="pickle")
        run_queue_part(str(tmp_path / "test-iodict-queue"))
        run_flush_part(str(tmp_path / "test-iodict-queue-flush"))
    assert capsys.readouterr().out == "worked\nworked\n"
