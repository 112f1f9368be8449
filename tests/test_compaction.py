"""Compaction while the store is in use (CONTRACT.md §2), with real threads and
processes: nothing written meanwhile is lost, nothing deleted comes back, order
and birthtimes are kept, and automatic compaction keeps an overwritten store
small without making the write that triggered it wait."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import warnings

import pytest
from helpers import Lines, joined

import iodict_log
import iodict_log.compaction
import iodict_log.log
from iodict_log import IODict, IODictLogError

SMALL = 4096
TIMEOUT = 60


class PausedCopy:
    """Holds a compaction in the middle of its copy until released."""

    def __init__(self, monkeypatch) -> None:
        self.copying = threading.Event()
        self.release = threading.Event()
        real = iodict_log.compaction.copy_live

        def paused(sources, live, out, stop):
            live = list(live)
            half = len(live) // 2
            moved = real(sources, live[:half], out, stop)
            self.copying.set()
            assert self.release.wait(TIMEOUT)
            return moved + real(sources, live[half:], out, stop)

        monkeypatch.setattr(iodict_log.compaction, "copy_live", paused)


def in_thread(fn) -> tuple[threading.Thread, dict]:
    outcome: dict = {}

    def run():
        try:
            outcome["result"] = fn()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def overwritten_store(path, **kwargs) -> IODict:
    d = IODict(path, segment_bytes=SMALL, auto_compact=False, **kwargs)
    for rnd in range(5):
        for i in range(100):
            d[f"k{i}"] = (rnd, i)
    for i in range(0, 100, 10):
        del d[f"k{i}"]
    return d


def snapshot(d: IODict) -> tuple[list, list]:
    return list(d.items()), [d.birthtime(k) for k in d]


def test_other_threads_read_and_write_while_a_compaction_copies(tmp_path, monkeypatch):
    d = overwritten_store(tmp_path / "s")
    before = snapshot(d)
    pause = PausedCopy(monkeypatch)
    thread, outcome = in_thread(d.compact)
    assert pause.copying.wait(TIMEOUT)
    # Mid-copy: the store answers and takes writes (the compaction holds no lock now).
    assert snapshot(d) == before
    d["k1"] = "overwritten during"  # copied already, overwritten after: the new value wins
    d["k99"] = "overwritten late"  # not copied yet
    del d["k2"]  # deleted during: must not come back from its copy
    d["k0"] = "re-added"  # deleted before, set again: goes to the end
    d["new"] = "added during"
    expected = [(k, v) for k, v in before[0] if k != "k2"]
    expected = [(k, {"k1": "overwritten during", "k99": "overwritten late"}.get(k, v)) for k, v in expected]
    expected += [("k0", "re-added"), ("new", "added during")]
    assert list(d.items()) == expected
    pause.release.set()
    joined(thread, TIMEOUT)
    assert "error" not in outcome, outcome
    assert outcome["result"]["live_keys"] == len(before[0])
    assert list(d.items()) == expected
    births = dict(zip([k for k, _ in before[0]], before[1]))
    assert all(d.birthtime(k) == born for k, born in births.items() if k != "k2")
    d.close()
    with IODict(tmp_path / "s", segment_bytes=SMALL) as again:
        assert list(again.items()) == expected
        assert "k2" not in again


def test_a_compaction_drops_dead_bytes_and_tombstones_for_good(tmp_path):
    d = overwritten_store(tmp_path / "s")
    expected = snapshot(d)
    stats = d.stats()
    summary = d.compact()
    assert summary["bytes_after"] < summary["bytes_before"] / 3
    assert d.stats()["dead_bytes"] < 200  # the SEAL and segment headers
    assert snapshot(d) == expected and d.stats()["live_bytes"] == stats["live_bytes"]
    d.close()
    with IODict(tmp_path / "s", segment_bytes=SMALL) as d:
        assert snapshot(d) == expected
        assert [r.op for r in d.records()] == ["set"] * len(expected[0])  # no tombstone left


WRITER = """
import sys
from iodict_log import IODict
path, journal = sys.argv[1], open(sys.argv[2], "w")
d = IODict(path, segment_bytes=16384, auto_compact=False)
print("ready", flush=True)
i = 0
while True:
    key = f"w{i % 500}"
    d[key] = i
    got = d[key]
    assert got == i, (key, got, i)  # its own write, read back, whatever compaction does
    journal.write(f"{key} {i}\\n")
    journal.flush()
    i += 1
"""


def test_another_process_keeps_writing_while_this_one_compacts(tmp_path):
    path = tmp_path / "s"
    d = IODict(path, segment_bytes=16384, auto_compact=False)
    for rnd in range(4):
        d.update({f"k{i}": (rnd, "x" * 50) for i in range(2000)})
    journal = tmp_path / "journal"
    command = [sys.executable, "-c", WRITER, str(path), str(journal)]
    writer = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert Lines(writer.stdout).next(TIMEOUT) == "ready\n"
        for _ in range(3):
            mine = {f"k{i}": (3, "x" * 50) for i in range(2000)}
            d.compact()
            assert {k: d[k] for k in mine} == mine
        assert writer.poll() is None, "the writer failed during the compactions"
    finally:
        writer.kill()
        writer.wait(timeout=TIMEOUT)
    lines = journal.read_text().splitlines()
    assert len(lines) > 100, "the writer hardly wrote during the compactions"
    acknowledged = {}
    for line in lines:
        key, value = line.split()
        acknowledged[key] = int(value)
    d.close()
    with IODict(path, segment_bytes=16384) as again:
        for key, value in acknowledged.items():
            assert again[key] >= value  # the killed writer may have written one more
        assert {again[f"k{i}"] for i in range(2000)} == {(3, "x" * 50)}


COMPACTOR = """
import sys, time
from iodict_log import IODict
d = IODict(sys.argv[1], segment_bytes=16384, auto_compact=False)
print("ready", flush=True)
started = time.perf_counter()
d.compact()
print("done", time.perf_counter() - started, flush=True)
"""


def compact_in_child(path, kill_after: float | None) -> tuple[bool, float]:
    """Compact in a child process, SIGKILLed ``kill_after`` seconds in; (killed, seconds)."""
    child = subprocess.Popen([sys.executable, "-c", COMPACTOR, str(path)], stdout=subprocess.PIPE, text=True)
    lines = Lines(child.stdout)
    assert lines.next(TIMEOUT) == "ready\n"
    if kill_after is not None:
        threading.Event().wait(kill_after)  # the workload: a kill at a random moment
        child.send_signal(signal.SIGKILL)
    out = "".join(lines.rest(TIMEOUT))
    child.wait(timeout=TIMEOUT)
    return child.returncode == -signal.SIGKILL, float(out.split()[1]) if out else 0.0


def test_kill_9_at_random_moments_of_a_compaction_keeps_the_contents(tmp_path):
    path = tmp_path / "s"

    def add_dead_bytes(rnd):
        with IODict(path, segment_bytes=16384, auto_compact=False) as d:
            for r in range(3):
                d.update({f"k{i}": (rnd, r, "x" * 80) for i in range(5000)})
            for i in range(rnd, 5000, 7):
                d.pop(f"k{i}", None)
            return snapshot(d)

    add_dead_bytes(0)
    _, seconds = compact_in_child(path, None)  # how long one takes here
    rng = random.Random(7)
    killed = 0
    for rnd in range(1, 7):
        expected = add_dead_bytes(rnd)
        was_killed, _ = compact_in_child(path, rng.uniform(0, seconds))
        killed += was_killed
        with IODict(path, segment_bytes=16384, auto_compact=False) as d:
            assert snapshot(d) == expected
    assert killed >= 3, "too few kills landed during a compaction"
    with IODict(path, segment_bytes=16384, auto_compact=False) as d:
        d.compact()
        assert snapshot(d) == expected
    assert not [n for n in os.listdir(path) if n.startswith("compact.") or n == "HINT.tmp"]


def test_two_compactions_at_once_take_turns(tmp_path):
    path = tmp_path / "s"
    overwritten_store(path).close()
    a = IODict(path, segment_bytes=SMALL, auto_compact=False)
    b = IODict(path, segment_bytes=SMALL, auto_compact=False)
    expected = snapshot(a)
    threads = [in_thread(a.compact), in_thread(b.compact)]
    for thread, outcome in threads:  # joined() guards the lock's release: the second would wait forever
        joined(thread, TIMEOUT)
        assert "error" not in outcome, outcome
    assert snapshot(a) == snapshot(b) == expected
    a.close()
    b.close()


def test_compaction_of_a_store_holding_queue_items_is_refused(tmp_path):
    from iodict_log import DurableQueue

    with DurableQueue(tmp_path / "q") as q:
        q.put("item")
    with pytest.raises(IODictLogError, match="queue"):  # (refused at open: a path holds one kind)
        IODict(tmp_path / "q")
    with DurableQueue(tmp_path / "q") as q:
        assert q.get_nowait() == "item"


# --- automatic compaction ---------------------------------------------------------------


def test_an_overwritten_store_settles_well_under_twice_its_live_size(tmp_path):
    d = IODict(tmp_path / "s", segment_bytes=16384, compact_min_bytes=16 * 1024)
    ratios = []
    for rnd in range(100):
        for i in range(rnd % 5 * 400, rnd % 5 * 400 + 400):  # each round overwrites a fifth of the keys
            d[f"k{i}"] = (rnd, "x" * 100)
        if d._compactor is not None:
            joined(d._compactor, TIMEOUT)  # what the store looks like once the work it started is done
        stats = d.stats()
        ratios.append(stats["disk_bytes"] / stats["live_bytes"])
    assert max(ratios[5:]) < 2 and sum(ratios[5:]) / len(ratios[5:]) < 1.6, ratios
    assert {d[f"k{i}"][0] for i in range(2000)} == {95, 96, 97, 98, 99}
    d.close()


def test_the_write_that_starts_an_automatic_compaction_does_not_wait_for_it(tmp_path, monkeypatch):
    d = IODict(tmp_path / "s", segment_bytes=SMALL, compact_min_bytes=20_000, compact_ratio=0.5)
    pause = PausedCopy(monkeypatch)
    i = 0
    while not pause.copying.is_set():  # each write returns, even the one that started it
        d[f"k{i % 50}"] = i
        i += 1
        assert i < 10_000, "no automatic compaction started"
    d["during"] = "the compaction is parked mid-copy"
    assert d["during"] == "the compaction is parked mid-copy"
    pause.release.set()
    joined(d._compactor, TIMEOUT)
    assert d["during"] == "the compaction is parked mid-copy" and d[f"k{(i - 1) % 50}"] == i - 1
    assert d.stats()["dead_bytes"] < 20_000
    d.close()


def test_closing_stops_a_background_compaction_and_leaves_the_store_as_it_was(tmp_path, monkeypatch):
    d = IODict(tmp_path / "s", segment_bytes=SMALL, compact_min_bytes=20_000, compact_ratio=0.5)
    pause = PausedCopy(monkeypatch)
    i = 0
    while not pause.copying.is_set():
        d[f"k{i % 50}"] = i
        i += 1
    expected = snapshot(d)
    closer, outcome = in_thread(d.close)
    pause.release.set()
    joined(closer, TIMEOUT)
    assert "error" not in outcome and not d._compactor.is_alive()
    assert not [n for n in os.listdir(tmp_path / "s") if n.startswith("compact.")]
    with IODict(tmp_path / "s", segment_bytes=SMALL, auto_compact=False) as again:
        assert snapshot(again) == expected


def test_auto_compact_false_never_compacts(tmp_path):
    d = IODict(tmp_path / "s", segment_bytes=SMALL, auto_compact=False, compact_min_bytes=0)
    for i in range(3000):
        d["same"] = i
    assert d._compactor is None and d.stats()["dead_bytes"] > 100_000
    d.close()


def test_a_failing_automatic_compaction_warns_and_the_writes_go_on(tmp_path, monkeypatch):
    def broken(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(iodict_log.compaction, "copy_live", broken)
    d = IODict(tmp_path / "s", segment_bytes=SMALL, compact_min_bytes=20_000)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(2000):
            d[f"k{i % 20}"] = i
        joined(d._compactor, TIMEOUT)
    assert any("automatic compaction failed" in str(w.message) for w in caught)
    assert {d[f"k{i}"] for i in range(20)} == set(range(1980, 2000))
    assert not [n for n in os.listdir(tmp_path / "s") if n.startswith("compact.")]
    d.close()


@pytest.mark.parametrize(
    "option",
    [{"compact_ratio": 0}, {"compact_ratio": 1}, {"compact_ratio": "0.5"}, {"compact_min_bytes": -1}],
)
def test_bad_compaction_options_are_refused_before_anything_is_written(tmp_path, option):
    with pytest.raises(ValueError, match=next(iter(option))):
        IODict(tmp_path / "s", **option)
    assert not (tmp_path / "s").exists()


def test_a_process_that_wrote_during_a_compaction_moves_its_index_onto_the_copies(tmp_path, monkeypatch):
    # b rebases (cheaper than rescanning all it wrote meanwhile); what it sees must be
    # exactly what a fresh open sees, order, birthtimes and byte counts included.
    path = tmp_path / "s"
    a = overwritten_store(path)
    b = IODict(path, segment_bytes=SMALL, auto_compact=False)
    rebased = []
    real_rebase = iodict_log.log.Log._rebase
    monkeypatch.setattr(iodict_log.log.Log, "_rebase", lambda log: rebased.append(real_rebase(log)) or rebased[-1])
    pause = PausedCopy(monkeypatch)
    thread, outcome = in_thread(a.compact)
    assert pause.copying.wait(TIMEOUT)
    for rnd in range(3):
        for i in range(1, 100, 2):
            b[f"k{i}"] = ("during", rnd, i)
    del b["k3"]
    del b["k5"]
    b["k5"] = "deleted and set again"
    b.update({f"new{i}": i for i in range(50)})
    pause.release.set()
    joined(thread, TIMEOUT)
    assert "error" not in outcome, outcome
    a["written after the commit"] = 1  # into the segment the commit started
    assert b["written after the commit"] == 1  # b's first call after it: b meets the SEAL here
    seen = snapshot(b)
    assert True in rebased, "b rebuilt its index from scratch: the rebase went untested"
    b_stats = {k: v for k, v in b.stats().items() if k != "index_from_hint"}
    with IODict(path, segment_bytes=SMALL, auto_compact=False) as fresh:
        assert snapshot(fresh) == seen == snapshot(a)
        assert {k: v for k, v in fresh.stats().items() if k != "index_from_hint"} == b_stats
    b["after"] = 1  # and b goes on writing where the others read it
    assert a["after"] == 1
    a.close()
    b.close()


def test_a_segment_deleted_under_a_rebase_makes_it_rebuild_from_scratch(tmp_path, monkeypatch):
    # Between reading CURRENT and opening the segments after the copies, yet another
    # compaction may delete one: the rebase gives up and the index is rebuilt from the files.
    path = tmp_path / "s"
    a = overwritten_store(path)
    b = IODict(path, segment_bytes=SMALL, auto_compact=False)
    pause = PausedCopy(monkeypatch)
    thread, outcome = in_thread(a.compact)
    assert pause.copying.wait(TIMEOUT)
    for i in range(100):
        b[f"k{i}"] = ("during", i)
    pause.release.set()
    joined(thread, TIMEOUT)
    assert "error" not in outcome, outcome
    real_open_after = iodict_log.log.Log._open_after
    failures = []

    def gone_once(log, manifest, known):
        if not failures:
            failures.append(known)
            raise iodict_log.CorruptionError("segment listed in the manifest is missing")
        return real_open_after(log, manifest, known)

    monkeypatch.setattr(iodict_log.log.Log, "_open_after", gone_once)
    a["after"] = 1
    assert b["after"] == 1 and failures, "the rebase never met the missing segment"
    assert snapshot(b) == snapshot(a)
    a.close()
    b.close()
