"""At most ``max_open_segments`` segment descriptors per store and process (issue 16).

A store of thousands of small segments is read, written, reopened, compacted,
iterated (while another process writes and compacts it), shared by two
processes and forked; through all of it the descriptors this process holds on
the store's files stay within the cap plus the LOCK file's, and every value
read is the one written. Both builds (``IODICT_LOG_PURE=1`` for the pure one).
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import textwrap
import threading

import pytest
from helpers import wait_pid

import iodict_log.log
from iodict_log import CorruptionError, DurableQueue, IODict, fileops
from iodict_log.log import Log

CAP = 6
SMALL = 4096
KEYS = 16_000
OVERWRITTEN = 800
TIMEOUT = 120


def value(i: int, version: str = "v") -> str:
    return f"{i}".ljust(500, version)  # (stored uncompressed: about 8 per 4 KiB segment)


def held(path) -> int:
    """Descriptors this process holds on files of the store at ``path``, once the
    background closes of segments a reload let go of are done."""
    for thread in threading.enumerate():
        if thread.name == "iodict_log-close":
            thread.join(TIMEOUT)
    prefix = os.path.realpath(path) + os.sep
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith(prefix)
        except FileNotFoundError:  # the descriptor listdir itself used
            pass
    return count


def opened(path, **options) -> IODict:
    return IODict(path, segment_bytes=SMALL, compression=None, auto_compact=False, max_open_segments=CAP, **options)


@pytest.fixture(scope="module")
def big_store(tmp_path_factory) -> tuple[str, dict]:
    """A dict store of ~2,400 segments: 16,000 keys compacted into 4 KiB segments, then
    800 of them overwritten (~100 log segments); and what it holds."""
    path = str(tmp_path_factory.mktemp("big") / "s")
    expected = {f"k{i}": value(i) for i in range(KEYS)}
    with IODict(path, segment_bytes=2**24, compression=None, auto_compact=False) as d:
        d.update(expected)
    with opened(path) as d:
        d.compact()  # (the copies are written in 4 KiB files: thousands, fast)
        for i in range(OVERWRITTEN):
            d[f"k{i}"] = expected[f"k{i}"] = value(i, "w")
        assert d.stats()["segments"] > 2000
    return path, expected


@pytest.fixture
def store(big_store, tmp_path) -> tuple[str, dict]:
    """A copy of the big store, for one test to change."""
    path, expected = big_store
    copy = str(tmp_path / "s")
    shutil.copytree(path, copy)
    return copy, dict(expected)


def test_a_dict_of_thousands_of_segments_holds_at_most_the_cap(store):
    path, expected = store
    d = opened(path)
    assert held(path) <= CAP + 1  # (+1: LOCK)
    assert d.stats()["segments"] > 2000 and held(path) <= CAP + 1
    keys = list(expected)
    random.Random(1).shuffle(keys)
    assert all(d[key] == expected[key] for key in keys)
    assert held(path) <= CAP + 1
    for i in range(0, KEYS, 5):
        d[f"k{i}"] = expected[f"k{i}"] = value(i, "x")
    assert held(path) <= CAP + 1
    before = d.stats()["segments"]
    d.compact()
    assert d.stats()["segments"] < before and held(path) <= CAP + 1
    assert all(d[key] == expected[key] for key in keys) and held(path) <= CAP + 1
    d.close()
    assert held(path) == 0
    d = opened(path)
    assert held(path) <= CAP + 1
    assert all(d[key] == expected[key] for key in reversed(keys)) and held(path) <= CAP + 1
    d.close()


WRITE_AND_COMPACT = textwrap.dedent(
    """
    import sys
    from iodict_log import IODict
    with IODict(sys.argv[1], segment_bytes=4096, compression=None, auto_compact=False) as d:
        for i in range(100):
            d[f"new{i}"] = i
        d.compact()
    """
)


def as_tuple(record) -> tuple:
    return (record.seq, record.birthtime, record.op, record.key, record.value)


@pytest.mark.parametrize(
    "pause, batch",
    [(100, None), (100, 1000), (KEYS + 50, None)],
    ids=["in-compacted-part", "between-compacted-batches", "in-log-part"],
)
def test_records_iterated_while_another_process_writes_and_compacts(store, pause, batch, monkeypatch):
    path, expected = store
    if batch:  # (compacted records are read back a batch at a time: stop between two)
        monkeypatch.setattr(iodict_log.log, "_REPLAY_BATCH", batch)
    d = opened(path)
    reference = [as_tuple(r) for r in d.records()]
    assert len(reference) == KEYS + OVERWRITTEN
    dropped = d.records()
    next(dropped)
    records = d.records()
    got = [as_tuple(next(records)) for _ in range(pause)]
    assert got == reference[:pause] and held(path) <= CAP + 1
    del dropped
    assert held(path) <= CAP + 1
    subprocess.run([sys.executable, "-c", WRITE_AND_COMPACT, path], check=True, timeout=TIMEOUT)
    got += [as_tuple(r) for r in records]  # its segments are gone: it goes on from the new CURRENT
    assert held(path) <= CAP + 1
    seqs = [r[0] for r in got]
    assert seqs == sorted(set(seqs))  # in order, none twice
    assert set(got) <= set(reference)  # nothing from after its snapshot (the other process's writes)
    latest = {r[3]: r for r in reference}  # every key's last record survived that compaction
    last_seen = got[pause - 1][0]
    assert sorted(r for r in latest.values() if r[0] > last_seen) == [r for r in got[pause:] if latest[r[3]] == r]
    assert {r[3]: r[4] for r in got} == expected  # the newest value of every key came through
    assert d["new99"] == 99 and all(d[key] == expected[key] for key in expected)
    assert held(path) <= CAP + 1
    d.close()


def test_records_over_a_segment_deleted_by_hand_raise_instead_of_looking_forever(store):
    path, _ = store
    d = opened(path)
    records = d.records()
    next(records)
    victim = sorted(n for n in os.listdir(path) if n.endswith(".seg"))[-3]  # (one it has not read yet)
    os.unlink(os.path.join(path, victim))  # (CURRENT still lists it: damage, not a compaction)
    with pytest.raises(CorruptionError, match=victim):
        list(records)
    d.close()


def test_a_get_racing_another_process_compaction_reads_the_value(store, monkeypatch):
    # The segment holding the value is parked and unmapped (just reopened): between this
    # process's catch-up and its read another process compacts and deletes it.
    path, expected = store
    d = opened(path)
    real = Log.read_value
    raced = []

    def compacting_first(log, loc):
        if not raced:
            raced.append(loc)
            subprocess.run([sys.executable, "-c", WRITE_AND_COMPACT, path], check=True, timeout=TIMEOUT)
        return real(log, loc)

    monkeypatch.setattr(Log, "read_value", compacting_first)
    assert d["k5000"] == expected["k5000"] and raced
    assert d["new5"] == 5 and held(path) <= CAP + 1
    d.close()


def test_two_processes_on_one_store_each_hold_at_most_the_cap(store):
    path, expected = store
    d = opened(path)
    assert all(d[key] == expected[key] for key in expected)
    child = textwrap.dedent(
        """
        import os, sys
        from iodict_log import IODict
        path, cap = sys.argv[1], int(sys.argv[2])

        def held():
            prefix, count = os.path.realpath(path) + os.sep, 0
            for fd in os.listdir("/proc/self/fd"):
                try:
                    count += os.readlink(f"/proc/self/fd/{fd}").startswith(prefix)
                except FileNotFoundError:
                    pass
            return count

        with IODict(path, segment_bytes=4096, compression=None, auto_compact=False, max_open_segments=cap) as d:
            assert all(d[f"k{i}"].startswith(str(i)) for i in range(16000))
            for i in range(400):
                d[f"child{i}"] = str(i).ljust(500, "c")
            print(held())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", child, path, str(CAP)], check=True, timeout=TIMEOUT, capture_output=True, text=True
    )
    assert int(done.stdout) <= CAP + 1
    assert held(path) <= CAP + 1
    assert all(d[f"child{i}"] == str(i).ljust(500, "c") for i in range(400))  # (read across its rolls)
    assert held(path) <= CAP + 1
    d.close()


def test_a_forked_child_holds_at_most_the_cap_and_the_parent_is_unaffected(store):
    path, expected = store
    d = opened(path)
    keys = list(expected)
    assert all(d[key] == expected[key] for key in keys[:3000])
    before = held(path)
    pid = os.fork()
    if pid == 0:  # the child: its inherited descriptors went at the fork
        code = 1
        try:
            right = all(d[key] == expected[key] for key in keys)
            d["from-child"] = "yes"
            code = 0 if right and held(path) <= CAP + 1 else 2
        finally:
            os._exit(code)
    assert wait_pid(pid, TIMEOUT) == 0
    assert held(path) == before
    assert d["from-child"] == "yes" and all(d[key] == expected[key] for key in keys)
    assert held(path) <= CAP + 1
    d.close()


def test_a_queue_backlog_over_many_segments_holds_at_most_the_cap(tmp_path, monkeypatch):
    path = str(tmp_path / "q")
    rng = random.Random(3)
    items = [rng.randbytes(400) for _ in range(3000)]  # (incompressible: ~9 a segment)
    with monkeypatch.context() as fast:  # (durability is not what this test is about: fill it quickly)
        for name in ("fsync", "fdatasync"):
            fast.setattr(fileops, name, lambda fd: None)
        q = DurableQueue(path, segment_bytes=SMALL, max_open_segments=2)
        for item in items:
            q.put(item)
    assert q.stats()["segments"] > 300 and held(path) <= 2 + 1
    assert [q.get_nowait() for _ in range(1000)] == items[:1000]  # (across many segments)
    assert held(path) <= 2 + 1
    q.close()
    q = DurableQueue(path, segment_bytes=SMALL, max_open_segments=2)
    assert held(path) <= 2 + 1
    assert q.qsize() == 2000 and held(path) <= 2 + 1
    assert [q.get_nowait() for _ in range(2000)] == items[1000:]
    assert held(path) <= 2 + 1
    q.close()


@pytest.mark.parametrize("bad", [0, 1, -1, "3", 2.5, True])
@pytest.mark.parametrize("kind", [IODict, DurableQueue])
def test_a_bad_max_open_segments_is_refused_before_anything_is_written(tmp_path, kind, bad):
    with pytest.raises(ValueError, match="max_open_segments"):
        kind(tmp_path / "s", max_open_segments=bad)
    assert not (tmp_path / "s").exists()
