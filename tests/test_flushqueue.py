"""FlushQueue edge cases (issue 17.7), and the one-kind-per-store rule on the queue's side (17.11).

- ingest() into a bounded queue moves only what fits and never holds an item that is
  neither on disk nor in the queue: the rest stays parked for a later ingest().
- ingest() where nothing was ever flushed creates nothing.
- flush() into a directory holding an IODict refuses with IODictLogError and gives the
  items back; opening a DurableQueue there refuses too, and the dict is unharmed.
"""

from __future__ import annotations

import queue
import sys
import threading

import pytest
from helpers import drain

import iodict_log
from iodict_log import DurableQueue, IODict, IODictLogError

WAIT = 10


class Parking(queue.Queue, iodict_log.FlushQueue):
    """The FlushQueue pattern of iodict's README, with a maxsize."""

    def __init__(self, path, maxsize=0) -> None:
        super().__init__(maxsize)
        self.path = path
        self.lock = None
        self.semaphore = None


def bounded(fn):
    """fn()'s result, or a failure if it has not returned within WAIT seconds."""
    result: list = []
    thread = threading.Thread(target=lambda: result.append(fn()), daemon=True)
    thread.start()
    thread.join(WAIT)
    assert not thread.is_alive(), f"{fn!r} blocked (still running after {WAIT} s)"
    return result[0]


def parked_items(path) -> int:
    with DurableQueue(path) as q:
        return q.qsize()


def test_ingest_into_a_full_queue_moves_what_fits_and_leaves_the_rest_parked(tmp_path):
    # Guards: ingest() hung in a blocked put() holding an item already taken off disk.
    path = str(tmp_path / "parked")
    q = Parking(path, maxsize=2)
    for batch in (["a", "b"], ["c", "d"], ["e"]):
        for item in batch:
            q.put(item)
        q.flush()
    assert parked_items(path) == 5
    assert bounded(q.ingest) == 2
    assert q.full() and drain(q) == ["a", "b"]
    assert parked_items(path) == 3, "every item not in the queue is still on disk"
    assert bounded(q.ingest) == 2 and drain(q) == ["c", "d"]
    assert bounded(q.ingest) == 1 and drain(q) == ["e"]
    assert bounded(q.ingest) == 0 and parked_items(path) == 0


def test_ingest_stops_at_an_item_that_does_not_fit_without_taking_it(tmp_path):
    path = str(tmp_path / "parked")
    q = Parking(path, maxsize=3)
    q.put(1)
    q.put(2)
    q.flush()
    q.put("already in")
    q.put("also in")
    assert bounded(q.ingest) == 1, "one free place: one item moved"
    assert drain(q) == ["already in", "also in", 1]
    assert parked_items(path) == 1
    assert bounded(q.ingest) == 1 and drain(q) == [2]


def test_ingest_where_nothing_was_flushed_creates_nothing(tmp_path):
    # Guards: ingest() on a missing path created the store directory.
    path = tmp_path / "never" / "parked"
    q = Parking(str(path))
    moved = bounded(q.ingest)
    assert not (tmp_path / "never").exists()
    assert moved == 0
    assert q.empty()


def test_flush_into_a_dict_store_refuses_and_gives_the_items_back(tmp_path):
    # Guards: flush() mixed queue items into an IODict's store, which compact then refused.
    path = str(tmp_path / "store")
    with IODict(path) as d:
        d["key"] = "value"
    q = Parking(path)
    q.put("x")
    q.put("y")
    with pytest.raises(IODictLogError, match="dict"):
        q.flush()
    assert drain(q) == ["x", "y"], "nothing was parked: the items are back, in order"
    with IODict(path) as d:
        assert dict(d) == {"key": "value"}
        d.compact()  # refuses a store holding queue items: none were written


def test_a_durable_queue_on_a_dict_store_refuses_to_open_and_drops_nothing(tmp_path):
    # Guards the queue's side of one kind per store: its reclaim would delete the dict's segments.
    path = str(tmp_path / "store")
    with IODict(path, segment_bytes=4096) as d:
        for i in range(100):
            d[i] = "v" * 50
    with pytest.raises(IODictLogError, match="dict"):
        DurableQueue(path, segment_bytes=4096)
    with IODict(path, segment_bytes=4096) as d:
        assert len(d) == 100 and d[99] == "v" * 50


def test_ingest_moves_past_a_poison_item_and_keeps_it_as_a_dead_letter(tmp_path, monkeypatch):
    path = str(tmp_path / "parked")
    with DurableQueue(path) as parked:
        parked.put("ok")
        parked.put(Unloadable())
        parked.put("also ok")
    monkeypatch.delattr(sys.modules[__name__], "_gone_function")  # the stored pickle names it
    q = Parking(path)
    with pytest.warns(RuntimeWarning):
        assert bounded(q.ingest) == 2
    assert drain(q) == ["ok", "also ok"]
    with DurableQueue(path) as parked:
        assert len(parked.dead_letters()) == 1 and parked.qsize() == 0


def _gone_function() -> None:
    raise AssertionError("never called: the test deletes me before unpickling")


class Unloadable:
    """Pickles as a call to a module function the test then deletes."""

    def __reduce__(self):
        return (_gone_function, ())
