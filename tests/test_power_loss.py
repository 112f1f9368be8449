"""Simulated power loss and failing disks, through the faulty file layer
(tests/faultyfs.py), at every step a workload makes (CONTRACT.md §3).

- sync=True: after a power loss at any file-system call, every write that
  returned is there, and the one in flight is there whole or not at all.
- sync=False: a power loss may lose recent writes, but the store opens, holds
  only values that were written, and takes new writes.
- ENOSPC (after half a write) or EIO at any call: the call raises OSError, the
  store holds exactly what was acknowledged, and goes on working.
"""

from __future__ import annotations

import errno
import random
import warnings

import pytest
from faultyfs import TAILS, FaultyFS, PowerLoss

from iodict_log import DurableQueue, IODict, holders

SMALL = 4096
SWEEP = pytest.mark.timeout(900)  # a power cut at every call: a minute alone, several under a loaded CI


def dict_workload(path, sync, acked: list, in_flight: list) -> None:
    """Sets, deletes, batches, rolls (small segments), a compaction, a reopen."""

    def call(op, *args):
        in_flight[:] = [(op, args)]
        if op == "set":
            d[args[0]] = args[1]
        elif op == "del":
            del d[args[0]]
        elif op == "update":
            d.update(args[0])
        elif op == "compact":
            d.compact()
        in_flight.clear()
        acked.append((op, args))

    d = IODict(path, sync=sync, segment_bytes=SMALL, auto_compact=False)
    for i in range(60):
        call("set", f"k{i % 17}", [i, "v" * (i % 5 * 30)])
        if i % 11 == 5:
            call("del", f"k{(i + 3) % 17}") if f"k{(i + 3) % 17}" in d else None
        if i % 13 == 7:
            call("update", {f"b{i}-{n}": n for n in range(4)})
        if i == 40:
            call("compact")
    d.close()
    d = IODict(path, sync=sync, segment_bytes=SMALL, auto_compact=False)
    for i in range(10):
        call("set", f"after{i}", i)
    d.close()


def model(ops) -> dict:
    state: dict = {}
    for op, args in ops:
        if op == "set":
            state[args[0]] = args[1]
        elif op == "del":
            del state[args[0]]
        elif op == "update":
            state.update(args[0])
    return state


def opened(path) -> list:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a damaged tail is allowed to be reported
        with IODict(path, segment_bytes=SMALL, auto_compact=False) as d:
            items = list(d.items())
            d["written after"] = True  # and it takes writes
        with IODict(path, segment_bytes=SMALL, auto_compact=False) as d:
            assert d["written after"] is True
    return items


def count_calls(tmp_path, workload, sync=True) -> int:
    """How many file-layer calls the workload makes, from start to end."""
    fs = FaultyFS(str(tmp_path / f"count-{sync}"))
    mp = pytest.MonkeyPatch()
    try:
        fs.install(mp)
        workload(str(tmp_path / f"count-{sync}"), sync, [], [])
    finally:
        mp.undo()
        fs.close()
    return fs.calls


def cut_points(total: int) -> range:
    """Every call the workload makes (README promises a power cut at every one)."""
    return range(1, total + 1)


def power_loss_run(tmp_path, monkeypatch, workload, sync, cut, tail, seed):
    path = str(tmp_path / f"s{cut}")
    fs = FaultyFS(path)
    fs.power_off_at = cut
    acked: list = []
    in_flight: list = []
    with monkeypatch.context() as mp:
        fs.install(mp)
        with pytest.raises(PowerLoss):
            workload(path, sync, acked, in_flight)
    fs.crash_image(random.Random(seed), tail)
    fs.close()
    return path, acked, in_flight


@pytest.fixture(scope="module")
def dict_calls(tmp_path_factory):
    return count_calls(tmp_path_factory.mktemp("count"), dict_workload)


@SWEEP
@pytest.mark.parametrize("tail", TAILS)
def test_sync_true_keeps_every_acknowledged_write_through_a_power_loss_at_any_call(
    tmp_path, monkeypatch, dict_calls, tail
):
    assert dict_calls > 200  # the workload does reach the disk often
    for cut in cut_points(dict_calls):
        path, acked, in_flight = power_loss_run(tmp_path, monkeypatch, dict_workload, True, cut, tail, cut)
        got = opened(path)
        allowed = [list(model(acked).items())]
        if in_flight:
            allowed.append(list(model(acked + in_flight).items()))
        assert got in allowed, f"power loss at call {cut} ({tail} tails): {got} not in {allowed}"


@SWEEP
def test_sync_false_after_a_power_loss_opens_with_only_values_that_were_written(tmp_path, monkeypatch):
    for cut in cut_points(count_calls(tmp_path, dict_workload, sync=False)):
        path, acked, in_flight = power_loss_run(tmp_path, monkeypatch, dict_workload, False, cut, None, cut)
        written: dict = {}
        for op, args in acked + in_flight:
            pairs = [args] if op == "set" else args[0].items() if op == "update" else []
            for key, value in pairs:
                written.setdefault(key, []).append(value)
        for key, value in opened(path):
            assert value in written.get(key, []), f"power loss at call {cut}: {key!r}={value!r} was never written"


def queue_workload(path, sync, acked: list, in_flight: list) -> None:
    q = DurableQueue(path, sync=sync, segment_bytes=SMALL)
    n = 0
    for _ in range(12):
        for _ in range(8):
            in_flight[:] = [("put", n)]
            q.put(["item", n, "x" * 60])
            acked.append(("put", n))
            n += 1
        in_flight[:] = [("put_many", list(range(n, n + 3)))]
        q.put_many([["item", i, "x" * 60] for i in range(n, n + 3)])
        acked.append(("put_many", list(range(n, n + 3))))
        n += 3
        for _ in range(7):
            in_flight[:] = [("get", None)]
            item = q.get_nowait()
            acked.append(("get", item[1]))
    in_flight.clear()
    q.close()


def queued_numbers(path) -> tuple[list, dict]:
    """The numbers of the items a reopened queue delivers, in order (a damaged tail may be
    warned about), and its stats() once they are got."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with DurableQueue(path, segment_bytes=SMALL) as q:
            numbers = [q.get_nowait()[1] for _ in range(q.qsize())]
            return numbers, q.stats()


@SWEEP
def test_sync_true_queue_keeps_every_acknowledged_put_and_get_through_a_power_loss(tmp_path, monkeypatch):
    total = count_calls(tmp_path, queue_workload)
    assert total > 150
    for cut in cut_points(total):
        path, acked, in_flight = power_loss_run(tmp_path, monkeypatch, queue_workload, True, cut, None, cut)
        put = [n for op, arg in acked for n in ([arg] if op == "put" else arg if op == "put_many" else [])]
        got = [arg for op, arg in acked if op == "get"]
        expected = [n for n in put if n not in got]
        items, _ = queued_numbers(path)
        allowed = [expected]
        if in_flight and in_flight[0][0] == "get":
            allowed.append(expected[1:])  # the get in flight may have taken its item
        elif in_flight:
            extra = in_flight[0][1] if in_flight[0][0] == "put_many" else [in_flight[0][1]]
            allowed.append(expected + extra)
        assert items in allowed, f"power loss at call {cut}: {items} not in {allowed}"


def lease_workload(path, sync, acked: list, in_flight: list) -> None:
    """Puts, leases, acks and releases, rolling through small segments."""
    q = DurableQueue(path, sync=sync, segment_bytes=SMALL)
    n = 0
    held = []
    for _ in range(8):
        for _ in range(6):
            in_flight[:] = [("put", n)]
            q.put(["item", n, "x" * 60])
            acked.append(("put", n))
            n += 1
        for _ in range(4):
            in_flight[:] = [("lease", None)]
            held.append(q.lease(block=False))
            acked.append(("lease", held[-1].item[1]))
        for end in ("ack", "release", "ack"):
            lease = held.pop(0)
            in_flight[:] = [(end, lease.item[1])]
            lease.ack() if end == "ack" else lease.release()
            acked.append((end, lease.item[1]))
    in_flight.clear()
    q.close()


@SWEEP
def test_sync_true_leases_lose_no_item_and_bring_back_no_acked_one_through_a_power_loss(tmp_path, monkeypatch):
    total = count_calls(tmp_path, lease_workload)
    assert total > 150
    for cut in cut_points(total):
        path, acked, in_flight = power_loss_run(tmp_path, monkeypatch, lease_workload, True, cut, None, cut)
        holders._mine.forget()  # every holder died with the power: their leases come back
        unacked = {arg for op, arg in acked if op == "put"} - {arg for op, arg in acked if op == "ack"}
        numbers, stats = queued_numbers(path)
        items = set(numbers)
        assert stats["leased"] == stats["delayed"] == 0
        allowed = [unacked]
        if in_flight and in_flight[0][0] == "put":
            allowed.append(unacked | {in_flight[0][1]})
        elif in_flight and in_flight[0][0] == "ack":
            allowed.append(unacked - {in_flight[0][1]})
        assert items in allowed, f"power loss at call {cut}: {sorted(items)} not in {allowed}"


FAILURES = [
    ("open_fd", "none"),
    ("write", "half"),  # ENOSPC after half the bytes, as a full disk does
    ("write", "whole"),  # EIO reported after every byte went out: still a failed write
    ("fsync", "none"),
    ("fdatasync", "none"),
    ("replace", "none"),
    ("unlink", "none"),
    ("write+ftruncate", "half"),  # truncation only cleans up after a failed write: fail both
]


@pytest.mark.parametrize(("primitive", "lands"), FAILURES, ids=[f"{p}-{lands}" for p, lands in FAILURES])
def test_a_failing_call_raises_oserror_and_the_store_holds_what_was_acknowledged(
    tmp_path, monkeypatch, primitive, lands
):
    """ENOSPC or EIO at the 1st, 4th, ... call of each primitive. Guards the truncate-back
    after a failed write (Segment.append): the file is as before the call at once, not only
    after a later catch-up cuts it, and a write that landed whole yet raised leaves nothing."""
    code = errno.EIO if primitive in ("fsync", "fdatasync") or lands == "whole" else errno.ENOSPC
    failures = 0
    for nth in range(1, 40, 3):
        path = str(tmp_path / f"{primitive}{nth}")
        fs = FaultyFS(path)
        fs.fail(primitive.split("+")[0], nth, code, lands=lands)
        if primitive == "write+ftruncate":
            fs.fail("ftruncate", 1, errno.EIO)
        acked: list = []
        in_flight: list = []
        with monkeypatch.context() as mp:
            fs.install(mp)
            try:
                dict_workload(path, True, acked, in_flight)
            except OSError as exc:
                assert exc.errno == code
                failures += 1
                if primitive == "write":
                    assert not fs.left_behind(), f"write call {nth} failed, yet its bytes stay in {fs.left_behind()}"
        fs.close()
        if not fs.injected:
            continue
        got = opened(path)
        allowed = [list(model(acked).items())]
        if in_flight and primitive in ("fsync", "fdatasync"):
            # A failed fsync keeps its whole record (DURABILITY.md): the bytes were written.
            # Any other failed call leaves nothing of the operation it was part of.
            allowed.append(list(model(acked + in_flight).items()))
        assert got in allowed, f"{primitive} call {nth} failed: {got} not in {allowed}"
    assert failures > 0, f"no {primitive} failure reached the caller"
