"""Many processes and threads on one store, with real processes and real SIGKILLs."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import threading

import pytest
from helpers import Lines, joined

from iodict_log import IODict

TIMEOUT = 120


class Child(subprocess.Popen):
    """A Python child whose output is read with a deadline on every line (``lines``)."""

    def __init__(self, code: str, *args: str) -> None:
        super().__init__([sys.executable, "-c", code, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.lines = Lines(self.stdout)

    def end(self) -> None:
        """Kill it if it still runs, and reap it (bounded)."""
        self.kill()
        self.wait(timeout=TIMEOUT)


def expect(proc: Child, word: str) -> str:
    line = proc.lines.next(TIMEOUT)
    assert line.startswith(word), f"expected {word!r}, got {line!r}"
    return line[len(word) :].strip()


def start_together(procs: list[Child]) -> None:
    """Wait until every child says it is ready, then let them all go at once."""
    for p in procs:
        expect(p, "ready")
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()


WRITE_DISTINCT = """
import sys
from iodict_log import IODict
path, name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
d = IODict(path, segment_bytes=64 * 1024)
print("ready", flush=True)
sys.stdin.readline()
for i in range(count):
    d[f"{name}-{i}"] = (name, i)
print("done", len(d), flush=True)
d.close()
"""


def test_four_processes_writing_distinct_keys_at_once_lose_nothing(tmp_path):
    path = str(tmp_path / "s")
    watcher = IODict(path, segment_bytes=64 * 1024)  # open before, checked after
    procs = [Child(WRITE_DISTINCT, path, f"p{n}", "2000") for n in range(4)]
    try:
        start_together(procs)
        for p in procs:
            assert int(expect(p, "done")) >= 2000
            assert p.wait(timeout=TIMEOUT) == 0
    finally:
        for p in procs:
            p.end()
    expected = {f"p{n}-{i}": (f"p{n}", i) for n in range(4) for i in range(2000)}
    assert dict(watcher.items()) == expected
    watcher.close()
    with IODict(path) as fresh:
        assert dict(fresh.items()) == expected
        assert fresh.stats()["corrupt_records"] == 0
        # Each writer's keys keep their own order.
        for n in range(4):
            assert [k for k in fresh if k.startswith(f"p{n}-")] == [f"p{n}-{i}" for i in range(2000)]


HAMMER_SAME_KEYS = """
import json, random, sys
from iodict_log import IODict
path, name = sys.argv[1], sys.argv[2]
d = IODict(path)
rng = random.Random(name)
print("ready", flush=True)
sys.stdin.readline()
for i in range(3000):
    key = f"k{rng.randrange(100)}"
    if i % 7 == 0:
        d.update({key: [name, i], f"k{rng.randrange(100)}": [name, i]})
    else:
        d[key] = [name, i]
print("done", flush=True)
sys.stdin.readline()
print("view", json.dumps(list(d.items())), flush=True)
"""


def test_two_processes_hammering_the_same_keys_agree_on_every_value(tmp_path):
    path = str(tmp_path / "s")
    procs = [Child(HAMMER_SAME_KEYS, path, name) for name in ("a", "b")]
    try:
        start_together(procs)
        for p in procs:
            expect(p, "done")
        views = []
        for p in procs:
            p.stdin.write("show\n")
            p.stdin.flush()
            views.append(json.loads(expect(p, "view")))
            assert p.wait(timeout=TIMEOUT) == 0
    finally:
        for p in procs:
            p.end()
    with IODict(path) as fresh:
        final = [[k, v] for k, v in fresh.items()]
        last_set = {}
        writers = set()
        for record in fresh.records():
            last_set[record.key] = record.value
            writers.add(record.value[0])
    assert views[0] == views[1] == final  # same winners, same order, everywhere
    assert dict((k, v) for k, v in final) == last_set  # the winner is the last write in the log
    assert writers == {"a", "b"}


KILLED_WRITER = """
import sys
from iodict_log import IODict
path, prefix = sys.argv[1], sys.argv[2]
d = IODict(path, segment_bytes=16 * 1024)
i = 0
while True:
    if i % 5 == 4:
        keys = [f"{prefix}-{i}-{j}" for j in range(4)]
        print("begin", ",".join(keys), flush=True)
        d.update({k: k.encode() * 3 for k in keys})
        print("acked", ",".join(keys), flush=True)
    else:
        key = f"{prefix}-{i}"
        d[key] = key.encode() * 3
        print("acked", key, flush=True)
    i += 1
"""


def test_sigkill_at_random_moments_loses_no_acknowledged_write(tmp_path):
    """Guards that an acknowledged write is in the file before the call returns. (A SIGKILL
    never splits one write(), so this cannot see a batch cut short: test_crashpoints[batch.half-*]
    and test_recovery's torn-tail sweep check that one is dropped whole.)"""
    path = str(tmp_path / "s")
    rng = random.Random(20261126)
    acked: set[str] = set()
    cut_batches = 0
    for round_ in range(24):
        child = Child(KILLED_WRITER, path, f"r{round_}")
        lines = []
        try:
            for _ in range(rng.randrange(1, 300)):  # let it run a random while
                lines.append(child.lines.next(TIMEOUT))
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=TIMEOUT)
        # Everything the child printed before it died: its acknowledgements, and
        # the batch it had begun and not finished, if the kill landed in one.
        # A line the kill cut short (no newline yet) is not an acknowledgement.
        lines += child.lines.rest(TIMEOUT)
        in_flight: list[str] = []
        for line in (line.strip() for line in lines if line.endswith("\n")):
            word, _, keys = line.partition(" ")
            if word == "begin":
                in_flight = keys.split(",")
            elif word == "acked":
                acked.update(keys.split(","))
                in_flight = []
        with IODict(path, segment_bytes=16 * 1024) as d:
            present = set(d)
            missing = acked - present
            assert not missing, f"round {round_}: acknowledged keys lost: {sorted(missing)[:5]}"
            assert all(d[key] == key.encode() * 3 for key in present)
            if in_flight:
                cut_batches += 1
                assert len(set(in_flight) & present) in (0, len(in_flight)), in_flight
            # Nothing never written: at most the one single set the kill interrupted.
            assert len(present - acked - set(in_flight)) <= 1
            d[f"after-{round_}"] = f"after-{round_}".encode() * 3
            assert d.stats()["corrupt_records"] == 0
            acked |= present | {f"after-{round_}"}  # what landed unacknowledged is part of the store now
    print(f"{cut_batches} of 24 kills landed inside a batch")


HOLD_STORE_LOCK = """
import sys
from iodict_log import IODict
d = IODict(sys.argv[1])
with d._log.file_lock:
    print("locked", flush=True)
    sys.stdin.readline()
"""


def test_a_process_killed_while_holding_the_write_lock_never_blocks_the_others(tmp_path):
    path = str(tmp_path / "s")
    with IODict(path) as d:
        d["before"] = 1
        holder = Child(HOLD_STORE_LOCK, path)
        try:
            expect(holder, "locked")
            os.kill(holder.pid, signal.SIGKILL)
            holder.wait(timeout=TIMEOUT)
        finally:
            holder.end()
        writer = threading.Thread(target=d.__setitem__, args=("after", 2))
        writer.start()
        joined(writer, TIMEOUT)  # the write would wait forever if the dead holder's lock survived
        assert dict(d) == {"before": 1, "after": 2}


def _child_after_fork(path_unused: str, store: IODict, conn) -> None:
    store["child"] = "from child"
    conn.send(sorted(store))
    conn.recv()  # the parent has written again
    conn.send(store.get("parent again"))


def test_a_store_opened_before_fork_works_in_parent_and_child(tmp_path):
    d = IODict(tmp_path / "s")
    d["before"] = "from parent"
    ctx = multiprocessing.get_context("fork")
    parent_end, child_end = ctx.Pipe()
    child = ctx.Process(target=_child_after_fork, args=("", d, child_end))
    child.start()
    try:
        assert parent_end.poll(TIMEOUT), "the child said nothing"
        assert parent_end.recv() == ["before", "child"]
        assert d["child"] == "from child"  # the parent sees the child's write
        d["parent again"] = 3
        parent_end.send("go")
        assert parent_end.poll(TIMEOUT), "the child said nothing"
        assert parent_end.recv() == 3  # and the child sees the parent's
        child.join(timeout=TIMEOUT)
        assert not child.is_alive() and child.exitcode == 0
    finally:
        if child.is_alive():
            child.kill()
    d["after"] = 4
    assert list(d) == ["before", "child", "parent again", "after"]
    d.close()


def _write_one_and_exit(store: IODict, key: str) -> None:
    store[key] = key


# Python 3.12+ warns that fork() with threads may deadlock the child: that is what this tests.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_fork_while_another_thread_is_writing_does_not_deadlock_the_child(tmp_path):
    d = IODict(tmp_path / "s")
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            d[f"t{i % 50}"] = i
            i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    ctx = multiprocessing.get_context("fork")
    try:
        for n in range(8):
            child = ctx.Process(target=_write_one_and_exit, args=(d, f"child{n}"))
            child.start()
            child.join(timeout=TIMEOUT)
            alive = child.is_alive()
            if alive:
                child.kill()
            assert not alive and child.exitcode == 0
    finally:
        stop.set()
        joined(thread, TIMEOUT)
    assert all(d[f"child{n}"] == f"child{n}" for n in range(8))
    assert d.stats()["corrupt_records"] == 0
    d.close()


@pytest.mark.parametrize("lock", [None, threading.Lock, threading.RLock()])
def test_threads_sharing_one_store_lose_no_update_and_tear_no_record(tmp_path, lock):
    d = IODict(tmp_path / "s", lock=lock, segment_bytes=32 * 1024)
    models: list[dict] = [{} for _ in range(6)]
    errors: list[BaseException] = []
    start = threading.Barrier(len(models) + 1, timeout=TIMEOUT)

    def worker(n: int) -> None:
        rng = random.Random(n)
        model = models[n]
        try:
            start.wait()
            for i in range(600):
                key = (n, rng.randrange(40))
                action = rng.random()
                if action < 0.6:
                    d[key] = [n, i]
                    model[key] = [n, i]
                elif action < 0.75:
                    batch = {(n, rng.randrange(40)): (n, i, j) for j in range(3)}
                    d.update(batch)
                    model.update(batch)
                elif action < 0.9:
                    assert d.pop(key, None) == model.pop(key, None)
                else:
                    assert d.get(key) == model.get(key)
        except BaseException as exc:  # reported below, in the main thread
            errors.append(exc)

    def reader() -> None:
        try:
            start.wait()
            for _ in range(30):
                for key, value in list(d.items()):  # never raises while others write
                    assert isinstance(key, tuple) and value[0] == key[0]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(len(models))]
    threads.append(threading.Thread(target=reader))
    for t in threads:
        t.start()
    for t in threads:
        joined(t, TIMEOUT)
    assert not errors, errors[0]
    expected = {k: v for model in models for k, v in model.items()}
    assert dict(d.items()) == expected
    d.close()
    with IODict(tmp_path / "s") as again:
        assert dict(again.items()) == expected
        assert again.stats()["corrupt_records"] == 0
