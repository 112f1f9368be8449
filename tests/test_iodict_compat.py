"""Code written for iodict 0.0.8 runs unchanged (issue 18): its call forms, its paths, and
handing a store to another process, as iodict's stores (plain paths) could be.

- DurableQueue's third positional argument was iodict's semaphore: a semaphore or a
  semaphore factory there is the semaphore, an int is maxsize.
- FlushQueue.__init__(self, path, lock, semaphore) sets the three attributes, as iodict's did.
- ``~`` is expanded and the path made absolute for FlushQueue and the CLI too.
- IODict and DurableQueue pickle as "reopen this path with these options": a spawned
  child or a pool worker gets its own handle on the same store.
"""

from __future__ import annotations

import copy
import multiprocessing
import pickle
import queue
import threading

import pytest

from iodict_log import DurableQueue, FlushQueue, IODict, StoreClosedError
from iodict_log.cli import main

# --- 1. signatures ------------------------------------------------------------------


@pytest.mark.parametrize(
    "semaphore",
    [multiprocessing.Semaphore, threading.Semaphore, multiprocessing.Semaphore(), threading.Semaphore(2)],
    ids=["multiprocessing.Semaphore", "threading.Semaphore", "multiprocessing.Semaphore()", "threading.Semaphore(2)"],
)
def test_a_semaphore_as_the_third_positional_is_the_semaphore_as_in_iodict(tmp_path, semaphore):
    # iodict: DurableQueue(path, lock=None, semaphore=None); this raised "maxsize must be an int"
    with DurableQueue(str(tmp_path / "q"), multiprocessing.Lock(), semaphore) as q:
        assert q.maxsize == 0 and q.semaphore is semaphore
        q.put("a")
        q.put("b")
        assert not q.full()
        assert [q.get(), q.get_nowait()] == ["a", "b"]


def test_iodict_keyword_forms_are_accepted(tmp_path):
    # iodict's FlushQueue.flush(): DurableQueue(path=self.path, lock=self.lock, semaphore=self.semaphore)
    path = str(tmp_path / "q")
    with DurableQueue(path=path, lock=threading.Lock, semaphore=multiprocessing.Semaphore) as q:
        q.put(1)
    with DurableQueue(path=path, lock=None, semaphore=None) as q:
        assert q.get_nowait() == 1
    with DurableQueue(path, None, None) as q:  # iodict's defaults, spelled out positionally
        assert q.maxsize == 0 and q.empty()


def test_an_int_third_positional_is_still_maxsize(tmp_path):
    with DurableQueue(tmp_path / "q", None, 2) as q:
        q.put(1)
        q.put(2)
        assert q.full()
        with pytest.raises(queue.Full):
            q.put_nowait(3)


def test_a_semaphore_given_twice_is_refused_before_anything_is_created(tmp_path):
    with pytest.raises(TypeError, match="both"):
        DurableQueue(tmp_path / "q", None, multiprocessing.Semaphore, semaphore=threading.Semaphore)
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("bad", ["3", 2.5, True, [1]], ids=["str", "float", "bool", "list"])
def test_any_other_third_positional_is_a_type_error_naming_maxsize(tmp_path, bad):
    with pytest.raises(TypeError, match="maxsize must be an int"):
        DurableQueue(tmp_path / "q", None, bad)
    assert not (tmp_path / "q").exists()


class _Host(queue.Queue, FlushQueue):
    """A host class written for iodict: it initialises the queue and calls FlushQueue.__init__."""

    def __init__(self, path, lock=None, semaphore=None, *, positional=False):
        queue.Queue.__init__(self)
        if positional:
            FlushQueue.__init__(self, path, lock, semaphore)
        else:
            FlushQueue.__init__(self, path=path)


@pytest.mark.parametrize("positional", [False, True], ids=["path=p", "path, lock, semaphore"])
def test_flushqueue_init_takes_path_lock_and_semaphore_as_iodicts_did(tmp_path, positional):
    # FlushQueue.__init__(self, path=p) raised TypeError from object.__init__
    path = str(tmp_path / "parked")
    q = _Host(path, threading.Lock, multiprocessing.Semaphore, positional=positional)
    assert q.path == path
    assert (q.lock, q.semaphore) == ((threading.Lock, multiprocessing.Semaphore) if positional else (None, None))
    for item in ["x", ("y", 1), {"z": None}]:
        q.put(item)
    q.flush()
    assert q.empty()
    again = _Host(path, positional=positional)
    assert again.ingest() == 3
    assert [again.get_nowait() for _ in range(3)] == ["x", ("y", 1), {"z": None}]


# --- 2. paths ---------------------------------------------------------------------


@pytest.fixture
def home(tmp_path, monkeypatch):
    """HOME is tmp_path/home and the working directory tmp_path/cwd (which must stay empty)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    return tmp_path / "home"


def test_flushqueue_expands_a_tilde_path(home, tmp_path):
    q = _Host("~/parked")
    assert q.ingest() == 0 and not (home / "parked").exists()  # (nothing parked: nothing created)
    q.put("item")
    q.flush()
    assert (home / "parked").is_dir()
    assert _Host("~/parked").ingest() == 1
    assert list((tmp_path / "cwd").iterdir()) == []


def test_the_cli_expands_a_tilde_path(home, tmp_path, capsys):
    with IODict(home / "store") as d:
        d["k"] = "v"
    assert main(["stats", "~/store", "--json"]) == 0
    assert '"keys": 1' in capsys.readouterr().out
    assert list((tmp_path / "cwd").iterdir()) == []


# --- 3. pickling ------------------------------------------------------------------


def test_a_pickled_iodict_reopens_the_same_store_with_the_same_options(tmp_path):
    with IODict(tmp_path / "d", serializer="pickle", compression=None, segment_bytes=4096) as d:
        d.auto_compact = False  # (the current setting travels, not the one it was opened with)
        d["k"] = {1, 2}  # (a set: only the pickle serializer holds it)
        other = pickle.loads(pickle.dumps(d))
        try:
            assert type(other) is IODict and other is not d and other.path == d.path
            assert other["k"] == {1, 2}
            assert other._options == d._options and other.auto_compact is False
            other["new"] = 1
            assert d["new"] == 1
        finally:
            other.close()
        assert d["k"] == {1, 2}  # (closing the copy left this handle open)


def test_copy_of_a_store_is_a_second_handle_not_a_shared_one(tmp_path):
    with IODict(tmp_path / "d") as d:
        d["k"] = 1
        with copy.copy(d) as other:
            assert other._log is not d._log and dict(other) == {"k": 1}
        assert d["k"] == 1


def test_a_pickled_queue_keeps_its_options(tmp_path):
    q = DurableQueue(tmp_path / "q", None, 3, serializer="msgpack", lease_timeout=30, max_deliveries=2)
    with q, pickle.loads(pickle.dumps(q)) as other:
        assert (other.maxsize, other.lease_timeout, other.max_deliveries) == (3, 30, 2)
        assert other._serializer.name == "msgpack"


@pytest.mark.parametrize("lock", [threading.Lock(), threading.RLock(), multiprocessing.Lock()])
def test_a_lock_passed_in_is_not_carried_the_other_side_makes_its_own(tmp_path, lock):
    # a threading lock cannot be pickled at all, a multiprocessing one only while spawning:
    # the lock guards threads of this process; other processes are kept safe by the file locks
    with IODict(tmp_path / "d", lock) as d, pickle.loads(pickle.dumps(d)) as other:
        assert other._lock is not d._lock
        other["k"] = 1
        with lock:  # (the copy does not use it)
            assert other["k"] == 1


def test_a_closed_store_does_not_pickle(tmp_path):
    d = IODict(tmp_path / "d")
    q = DurableQueue(tmp_path / "q")
    d.close()
    q.close()
    for closed in (d, q):
        with pytest.raises(StoreClosedError):
            pickle.dumps(closed)


def _child_writes(d: IODict, q: DurableQueue, n: int) -> None:
    for i in range(n):
        d[f"child-{i}"] = i
    q.put_many(range(n))
    assert q.get() == "from the parent"  # (the child's queue sees what the parent put)


def _square_into(args: tuple[IODict, int]) -> int:
    d, i = args
    d[i] = i * i
    return len(d)


def test_a_store_and_a_queue_pass_to_a_spawned_child(tmp_path):
    # under spawn this failed: cannot pickle '_thread.RLock'
    spawn = multiprocessing.get_context("spawn")
    with IODict(tmp_path / "d") as d, DurableQueue(tmp_path / "q", serializer="msgpack") as q:
        d["parent"] = 0
        q.put("from the parent")
        child = spawn.Process(target=_child_writes, args=(d, q, 5))
        child.start()
        child.join(120)
        assert child.exitcode == 0
        assert list(d) == ["parent"] + [f"child-{i}" for i in range(5)]
        assert [q.get_nowait() for _ in range(5)] == list(range(5)) and q.empty()


def test_a_store_passes_to_a_spawned_pool(tmp_path):
    with IODict(tmp_path / "d") as d, multiprocessing.get_context("spawn").Pool(2) as pool:
        sizes = pool.map(_square_into, [(d, i) for i in range(20)])
        assert max(sizes) == 20
        assert dict(d) == {i: i * i for i in range(20)}


def _get_nowait_or_empty(q: DurableQueue) -> str:
    try:
        return q.get_nowait()
    except queue.Empty:
        return "empty"


def test_a_lease_held_stays_with_the_process_that_took_it(tmp_path):
    with DurableQueue(tmp_path / "q") as q, multiprocessing.get_context("spawn").Pool(1) as pool:
        q.put("leased")
        lease = q.lease(timeout=5)
        assert pool.apply(_get_nowait_or_empty, (q,)) == "empty"  # (the child's queue holds no lease of it)
        lease.ack()
        q.put("next")
        assert pool.apply(_get_nowait_or_empty, (q,)) == "next"
