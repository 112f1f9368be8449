"""A queue's backlog of any length: memory that does not grow with it, opening from a
checkpoint instead of replaying it, and every promise kept with and without one (issue 16).

The backlogs here are a few times pending.WINDOW (the ready items a queue holds in
memory) and over checkpoint.CHECKPOINT_MIN_BYTES, so that the window is refilled
from the log many times and checkpoints are written at rolls, reclaims and close.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import tracemalloc
import warnings
from pathlib import Path

import pytest
from helpers import drain
from hypothesis import given, settings
from hypothesis import strategies as st
from test_power_loss import count_calls, power_loss_run

from iodict_log import CorruptionWarning, DurableQueue
from iodict_log import log as log_module
from iodict_log import pending as pending_module
from iodict_log.checkpoint import CHECKPOINT_NAME, QueueState, decode_state, encode_state
from iodict_log.format import Checkpoint, decode_checkpoint, encode_checkpoint
from iodict_log.pending import WINDOW

SEGMENT = 2**16  # 64 KiB segments: dozens of them, rolls and reclaims all along
PAD = b"p" * 90


def item(i: int) -> bytes:
    return PAD + i.to_bytes(8, "little")


def fill(path: Path, count: int, start: int = 0) -> None:
    with DurableQueue(path, serializer="msgpack", segment_bytes=SEGMENT) as q:
        for i in range(start, start + count, 1000):
            q.put_many([item(j) for j in range(i, min(i + 1000, start + count))])


def opened(path: Path) -> DurableQueue:
    return DurableQueue(path, serializer="msgpack", segment_bytes=SEGMENT)


def take(q: DurableQueue, count: int) -> list[int]:
    got = [q.get_nowait() for _ in range(count)]
    assert all(g[:90] == PAD for g in got)
    return [int.from_bytes(g[90:], "little") for g in got]


# --- memory -----------------------------------------------------------------------------


def memory_of_open_queue(path: Path) -> tuple[int, list[int], dict]:
    """Bytes an open queue holds (traced allocations) after opening and its first get;
    that get; its stats."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        q = opened(path)
        first = take(q, 1)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    stats = q.stats()
    q.close()
    return held, first, stats


@pytest.mark.parametrize("checkpoint", [True, False], ids=["from-checkpoint", "by-scan"])
def test_an_open_queue_holds_the_same_memory_with_60000_pending_items_as_with_100(tmp_path, checkpoint):
    # Guards: every pending item cost ~154 bytes in memory (9 MB here, 7.5 GB for 50 M).
    small, big = tmp_path / "small", tmp_path / "big"
    fill(small, 100)
    fill(big, 70_000)
    with opened(big) as q:
        assert take(q, 10_000) == list(range(10_000))  # consumed through the window many times over
    if not checkpoint:
        for path in (small, big):
            (path / CHECKPOINT_NAME).unlink(missing_ok=True)
    small_bytes, small_first, _ = memory_of_open_queue(small)
    big_bytes, big_first, stats = memory_of_open_queue(big)
    assert small_first == [0] and big_first == [10_000]
    assert stats["items"] == 59_999 and stats["state_from_checkpoint"] is checkpoint
    # The window (WINDOW items, ~150 bytes each) is the most a backlog adds.
    assert big_bytes - small_bytes < WINDOW * 250, (small_bytes, big_bytes)


def test_replaying_60000_takes_in_order_adds_nothing_beyond_the_window(tmp_path):
    # A process that only watches (here: opening by a scan) replays every other process's
    # TAKEs; in FIFO order each is taken from the window, refilled as it runs dry.
    path = tmp_path / "q"
    fill(path, 65_000)
    with opened(path) as q:
        take(q, 60_000)
    (path / CHECKPOINT_NAME).unlink()
    with opened(path) as q:
        pending = q._pending
        assert len(pending) == 5_000 and not pending._gone and len(pending._ready) <= WINDOW
        assert take(q, 5_000) == list(range(60_000, 65_000))


# --- order, exactly once, reopening -----------------------------------------------------


def test_a_long_backlog_comes_out_in_order_exactly_once_across_reopens_and_puts(tmp_path):
    path = tmp_path / "q"
    fill(path, 20_000)
    got = []
    with opened(path) as q:
        got += take(q, 7_000)
        q.put_many([item(j) for j in range(20_000, 21_000)])
    with opened(path) as q:
        assert q.stats()["state_from_checkpoint"] and q.qsize() == 14_000
        got += take(q, 9_000)
    (path / CHECKPOINT_NAME).unlink()
    with opened(path) as q:
        assert not q.stats()["state_from_checkpoint"] and q.qsize() == 5_000
        got += take(q, 5_000)
        with pytest.raises(queue.Empty):
            q.get_nowait()
    assert got == list(range(21_000))


def test_two_objects_in_one_process_share_a_long_backlog(tmp_path):
    path = tmp_path / "q"
    fill(path, 15_000)
    a, b = opened(path), opened(path)
    got = []
    try:
        for n in range(30):
            got += take(a if n % 2 else b, 500)
        assert a.qsize() == b.qsize() == 0
    finally:
        a.close()
        b.close()
    assert got == list(range(15_000))


CONSUMER = """
import sys
from iodict_log import DurableQueue
q = DurableQueue(sys.argv[1], serializer="msgpack", segment_bytes=2**16)
out = []
while True:
    item = q.get(timeout=30)
    if item == b"STOP":
        break
    out.append(int.from_bytes(item[90:], "little"))
q.close()
print(" ".join(map(str, out)))
"""


def test_three_processes_drain_a_long_backlog_each_item_once_each_in_order(tmp_path):
    path = tmp_path / "q"
    fill(path, 30_000)
    with opened(path) as q:
        q.put_many([b"STOP"] * 3)
    children = [
        subprocess.Popen([sys.executable, "-c", CONSUMER, str(path)], stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    outputs = []
    try:
        for child in children:
            out, _ = child.communicate(timeout=120)
            assert child.returncode == 0
            outputs.append([int(x) for x in out.split()])
    finally:
        for child in children:
            child.kill()
    for seen in outputs:
        assert seen == sorted(seen)  # FIFO within each consumer
    together = sorted(x for seen in outputs for x in seen)
    assert together == list(range(30_000))


# --- the checkpoint: a cache, never the truth ---------------------------------------------


def queue_with_checkpoint(tmp_path: Path) -> tuple[Path, list[int]]:
    """A queue closed with a checkpoint, and the items it holds."""
    path = tmp_path / "q"
    fill(path, 20_000)
    with opened(path) as q:
        take(q, 3_000)
    assert (path / CHECKPOINT_NAME).exists()
    return path, list(range(3_000, 20_000))


def rewritten(path: Path, **fields) -> None:
    """Replace the checkpoint with one whose fields or state are changed, with good CRCs."""
    file = path / CHECKPOINT_NAME
    checkpoint = decode_checkpoint(file.read_bytes())
    state = fields.pop("state", None)
    if state is not None:
        sizes = [size for _, size, _ in checkpoint.coverage]
        fields["payload"] = encode_state(decode_state(checkpoint.payload, sizes)._replace(**state))
    file.write_bytes(encode_checkpoint(checkpoint._replace(**fields)))


def flip_byte(file: Path, at: int) -> None:
    data = bytearray(file.read_bytes())
    data[at] ^= 0x40
    file.write_bytes(bytes(data))


BAD_CHECKPOINTS = {
    "flipped-head": lambda p: flip_byte(p / CHECKPOINT_NAME, 20),
    "flipped-coverage": lambda p: flip_byte(p / CHECKPOINT_NAME, 45),
    "flipped-payload": lambda p: flip_byte(p / CHECKPOINT_NAME, -12),
    "cut-short": lambda p: (p / CHECKPOINT_NAME).write_bytes((p / CHECKPOINT_NAME).read_bytes()[:-7]),
    "empty": lambda p: (p / CHECKPOINT_NAME).write_bytes(b""),
    "a-directory": lambda p: ((p / CHECKPOINT_NAME).unlink(), (p / CHECKPOINT_NAME).mkdir()),
    "a-link-to-a-big-file": lambda p: (
        (p / CHECKPOINT_NAME).unlink(),
        (p.parent / "big").write_bytes(b"\0" * 2**20),
        (p / CHECKPOINT_NAME).symlink_to(p.parent / "big"),
    ),
    "another-salt": lambda p: rewritten(p, salt=decode_checkpoint((p / CHECKPOINT_NAME).read_bytes()).salt ^ 1),
    "another-segment": lambda p: rewritten(
        p, coverage=((10**9, *decode_checkpoint((p / CHECKPOINT_NAME).read_bytes()).coverage[0][1:]),)
    ),
    "a-size-beyond-the-file": lambda p: rewritten(
        p,
        coverage=tuple(
            (n, size + 100, crc) for n, size, crc in decode_checkpoint((p / CHECKPOINT_NAME).read_bytes()).coverage
        ),
    ),
    "a-tail-that-differs": lambda p: rewritten(
        p,
        coverage=tuple((n, s, crc ^ 1) for n, s, crc in decode_checkpoint((p / CHECKPOINT_NAME).read_bytes()).coverage),
    ),
    "a-location-past-its-segment": lambda p: rewritten(p, state={"first": (1, (1 << 64) | (2**31 << 32) | 60)}),
    "dead-letters-out-of-order": lambda p: rewritten(p, state={"dead": [(9, 100 << 32 | 60), (3, 200 << 32 | 60)]}),
    "garbage-payload": lambda p: rewritten(p, payload=b"\xff" * 77),
    "a-count-past-2-63": lambda p: rewritten(p, state={"ready": 2**63}),
    "a-count-without-a-first-item": lambda p: rewritten(p, state={"first": None}),
    "takes-without-a-first-item": lambda p: rewritten(p, state={"first": None, "ready": 0, "gone": [(5, 1)]}),
    "a-last-seq-with-no-room-left": lambda p: rewritten(p, last_seq=2**64 - 1),
}


@pytest.mark.parametrize("damage", list(BAD_CHECKPOINTS))
def test_a_damaged_or_forged_checkpoint_costs_a_scan_never_a_wrong_item(tmp_path, damage):
    path, expected = queue_with_checkpoint(tmp_path)
    BAD_CHECKPOINTS[damage](path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a scan instead: no damage to report, nothing raised
        with opened(path) as q:
            assert not q.stats()["state_from_checkpoint"]
            assert q.qsize() == len(expected)
            assert take(q, len(expected)) == expected
            assert q.stats()["corrupt_records"] == 0


def test_an_older_checkpoint_that_still_matches_the_segments_is_a_true_state_to_go_on_from(tmp_path):
    path, expected = queue_with_checkpoint(tmp_path)
    old = (path / CHECKPOINT_NAME).read_bytes()
    with opened(path) as q:
        take(q, 100)  # (not enough to delete a segment: the old checkpoint still matches)
        q.put_many([item(j) for j in range(20_000, 20_050)])
    (path / CHECKPOINT_NAME).write_bytes(old)
    with opened(path) as q:
        assert q.stats()["state_from_checkpoint"]
        assert take(q, q.qsize()) == expected[100:] + list(range(20_000, 20_050))


def test_a_checkpoint_state_with_items_taken_from_the_middle_of_the_window_keeps_them_taken():
    # A take from the middle (by seq) leaves the item in the window's order until the
    # head reaches it: a checkpoint must name it, or a restored window would serve it again.
    pending = pending_module.PendingItems()
    for seq in range(1, 11):
        pending.add(seq, pack(seq))
    pending.remove(5)
    state = decode_state(encode_state(pending.state(0)), [2**20])
    assert state.ready == 9 and state.first == (1, pack(1)) and state.gone == [(5, pending_module.PASSED)]


def pack(seq: int) -> int:
    """A location in slot 0 for ``seq``: 100 bytes at offset 100 * seq, births in order."""
    return (seq << 80) | ((100 * seq) << 32) | 100


def test_state_round_trips_through_its_encoding():
    state = QueueState(7, 700, 0, 2, 40, (3, pack(3)), [(1, pack(1)), (2, pack(2))], [(9, 0), (12, 1), (13, 2)])
    assert decode_state(encode_state(state), [2**20]) == state
    with pytest.raises(ValueError):
        decode_state(encode_state(state)[:-1], [2**20])
    with pytest.raises(ValueError):
        decode_state(encode_state(state), [200])  # a location past the covered size


# --- several processes, one lagging behind another's reclaim -----------------------------------

DRAIN = """
import sys
from iodict_log import DurableQueue
q = DurableQueue(sys.argv[1], serializer="msgpack", segment_bytes=2**16)
got = [int.from_bytes(q.get_nowait()[90:], "little") for _ in range(int(sys.argv[2]))]
assert got == list(range(int(sys.argv[2]))), got[:5]
q.close()
"""


def test_a_process_behind_another_that_deleted_consumed_segments_keeps_the_right_count(tmp_path):
    # Guards: the place to read the backlog back from lay in a deleted segment; the TAKEs
    # replayed after it were ignored, and qsize() said 15,904 for 8,000 (and checkpointed it).
    path = tmp_path / "q"
    producer = opened(path)
    for start in range(0, 20_000, 1000):
        producer.put_many([item(j) for j in range(start, start + 1000)])
    subprocess.run([sys.executable, "-c", DRAIN, str(path), "12000"], check=True, timeout=120)
    assert producer.qsize() == 8_000
    producer.close()
    with opened(path) as q:
        assert q.stats()["state_from_checkpoint"]  # (the producer's, naming only live segments)
        assert q.qsize() == 8_000 and take(q, 8_000) == list(range(12_000, 20_000))


# --- damage in a backlog the checkpoint vouched for -----------------------------------------


def test_damage_in_the_backlog_behind_a_checkpoint_is_reported_when_reached_and_loses_only_that_item(tmp_path):
    path, expected = queue_with_checkpoint(tmp_path)
    checkpoint = decode_checkpoint((path / CHECKPOINT_NAME).read_bytes())
    number, size, _ = checkpoint.coverage[len(checkpoint.coverage) // 2]
    segment = path / f"{number:010d}.seg"
    flip_byte(segment, size // 2)  # inside some item of a sealed segment, far from its tail
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with opened(path) as q:
            assert q.stats()["state_from_checkpoint"] and not caught  # nothing read yet
            got = take(q, len(expected) - 1)
            with pytest.raises(queue.Empty):
                q.get_nowait()
            assert q.qsize() == 0 and q.stats()["corrupt_records"] == 1
    damage = [w for w in caught if issubclass(w.category, CorruptionWarning)]
    assert len(damage) == 1 and segment.name in str(damage[0].message)
    assert got == sorted(got) and len(set(expected) - set(got)) == 1


def test_damage_that_came_after_the_scan_is_reported_once_when_the_backlog_is_read_back(tmp_path):
    path = tmp_path / "q"
    fill(path, 20_000)
    with opened(path) as q:  # scanned (no checkpoint yet: fill closed it with one; drop it)
        pass
    (path / CHECKPOINT_NAME).unlink()
    q = opened(path)
    try:
        assert not q.stats()["state_from_checkpoint"]
        segment = sorted(path.glob("*.seg"))[len(list(path.glob("*.seg"))) // 2]
        flip_byte(segment, segment.stat().st_size // 2)  # after this process indexed it
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = take(q, 19_999)
            with pytest.raises(queue.Empty):
                q.get_nowait()
        damage = [w for w in caught if issubclass(w.category, CorruptionWarning)]
        assert len(damage) == 1 and q.stats()["corrupt_records"] == 1 and q.qsize() == 0
        assert got == sorted(got) and len(got) == 19_999
    finally:
        q.close()


def test_a_window_whose_head_was_damaged_since_does_not_make_takes_pile_up(tmp_path):
    # Guards: a producer's window kept an item damaged after it was read (which consumers
    # skip): every item they took beyond its window was noted, without bound.
    path = tmp_path / "q"
    producer = opened(path)
    consumer = None
    try:
        producer.put(b"first" + b"z" * 60)
        producer.put_many([item(j) for j in range(2 * WINDOW)])
        segment = sorted(path.glob("*.seg"))[0]
        flip_byte(segment, segment.read_bytes().find(b"first") + 20)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CorruptionWarning)
            consumer = opened(path)  # scans: skips the damaged item
            for n in range(3 * WINDOW):
                producer.put(item(2 * WINDOW + n))
                assert int.from_bytes(consumer.get_nowait()[90:], "little") == n
                assert len(producer._pending._gone) <= WINDOW
    finally:
        producer.close()
        if consumer is not None:
            consumer.close()


def test_a_checkpoint_is_not_written_while_damage_awaits_reporting(tmp_path):
    path, expected = queue_with_checkpoint(tmp_path)
    (path / CHECKPOINT_NAME).unlink()
    segment = sorted(path.glob("*.seg"))[1]
    flip_byte(segment, 2_000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with opened(path) as q:
            assert q.stats()["corrupt_records"] == 1
        assert not (path / CHECKPOINT_NAME).exists()
        with opened(path) as q:  # so the next open reports it again
            assert q.stats()["corrupt_records"] == 1


# --- dead letters beyond the window ------------------------------------------------------


def test_dead_letters_in_a_long_backlog_survive_a_checkpoint_and_retry_in_order(tmp_path, monkeypatch):
    path = tmp_path / "q"
    fill(path, 12_000)
    with opened(path) as q:
        q.put_many([{"poison": n} for n in range(3)])  # msgpack maps with str keys decode fine...
    fill(path, 12_000, start=12_000)
    # ...so make the serializer refuse them, as a class that no longer imports would.
    from iodict_log import serialize

    decode = serialize.Serializer.decode

    def refusing(self, flags, stored):
        value = decode(self, flags, stored)
        if isinstance(value, dict):
            raise ValueError("cannot be decoded here")
        return value

    monkeypatch.setattr(serialize.Serializer, "decode", refusing)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with opened(path) as q:
            assert take(q, 12_001) == list(range(12_001))
            assert len(q.dead_letters()) == 3
    monkeypatch.setattr(serialize.Serializer, "decode", decode)
    with opened(path) as q:
        assert q.stats()["state_from_checkpoint"] and q.stats()["dead"] == 3
        assert [d.item for d in q.dead_letters()] == [{"poison": n} for n in range(3)]
        assert q.retry_dead_letters() == 3
        assert take(q, 11_999) == list(range(12_001, 24_000))
        assert drain(q) == [{"poison": n} for n in range(3)]


# --- the tool --------------------------------------------------------------------------


def test_iodict_log_stats_counts_a_long_partly_consumed_backlog(tmp_path):
    path, expected = queue_with_checkpoint(tmp_path)
    out = subprocess.run(
        [sys.executable, "-m", "iodict_log", "stats", "--json", str(path)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["queue_items"] == len(expected)


# --- power loss, with the window and checkpoints at their smallest ---------------------------


def backlog_workload(path: str, sync, acked: list, in_flight: list) -> None:
    """Puts and gets over a backlog that outgrows a window of 4, checkpoints at every chance."""
    q = DurableQueue(path, sync=sync, segment_bytes=4096)
    n = 0
    for round_ in range(10):
        in_flight[:] = [("put_many", list(range(n, n + 9)))]
        q.put_many([["item", i, "x" * 60] for i in range(n, n + 9)])
        acked.append(("put_many", list(range(n, n + 9))))
        n += 9
        for _ in range(5):
            in_flight[:] = [("get", None)]
            got = q.get_nowait()
            acked.append(("get", got[1]))
        if round_ % 4 == 3:
            in_flight.clear()
            q.close()
            q = DurableQueue(path, sync=sync, segment_bytes=4096)
    in_flight.clear()
    q.close()


@pytest.mark.timeout(900)
def test_sync_true_backlog_keeps_every_acknowledged_put_and_get_through_a_power_loss_at_any_call(tmp_path, monkeypatch):
    monkeypatch.setattr(pending_module, "WINDOW", 4)
    monkeypatch.setattr(log_module, "CHECKPOINT_MIN_BYTES", 0)
    calls = count_calls(tmp_path, backlog_workload)
    assert os.path.exists(tmp_path / "count-True" / CHECKPOINT_NAME)  # (checkpoints were written)
    for cut in range(1, calls + 1):
        path, acked, in_flight = power_loss_run(tmp_path, monkeypatch, backlog_workload, True, cut, None, cut)
        put = [i for op, arg in acked if op == "put_many" for i in arg]
        gotten = {arg for op, arg in acked if op == "get"}
        expected = [i for i in put if i not in gotten]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with DurableQueue(path, segment_bytes=4096) as q:
                items = [g[1] for g in drain(q)]
        allowed = [expected]
        if in_flight and in_flight[0][0] == "get":
            allowed.append(expected[1:])
        elif in_flight:
            allowed.append(expected + in_flight[0][1])
        assert items in allowed, f"power loss at call {cut}: {items} not in {allowed}"
        shutil.rmtree(path)


# --- the decoders take any bytes ----------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_any_bytes_as_a_checkpoint_or_its_state_are_refused_cleanly(data):
    assert decode_checkpoint(data) is None or isinstance(decode_checkpoint(data).payload, bytes)
    try:
        state = decode_state(data, [2**20, 4096])
    except ValueError:
        return
    assert encode_state(state) == data  # (what decodes is exactly what encoding it gives)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 2**32 - 1))
def test_a_checkpoint_round_trips_and_any_flipped_bit_is_refused(payload, salt):
    checkpoint = Checkpoint(salt, 7, 9, ((1, 4096, 5), (2, 100, 6)), payload)
    data = encode_checkpoint(checkpoint)
    assert decode_checkpoint(data) == checkpoint
    for bit in range(0, len(data) * 8, 37):
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        assert decode_checkpoint(bytes(flipped)) is None


def test_reading_the_backlog_back_from_a_segment_another_object_deleted_reloads_and_keeps_count(tmp_path, monkeypatch):
    # The producer's descriptors are parked (2 open at most) and the consumer never rolls
    # (its segment_bytes is huge), so the producer meets no SEAL: the first it hears of the
    # deleted segments is reading its backlog back from one. That is a lost place, not damage.
    monkeypatch.setattr(pending_module, "WINDOW", 16)
    path = tmp_path / "q"
    producer = DurableQueue(path, serializer="msgpack", segment_bytes=SEGMENT, max_open_segments=2)
    consumer = DurableQueue(path, serializer="msgpack", segment_bytes=2**30)
    try:
        for start in range(0, 20_000, 100):
            producer.put_many([item(j) for j in range(start, start + 100)])
        assert take(consumer, 2_000) == list(range(2_000))
        assert consumer.stats()["segments"] < producer._log.stats()["segments"]  # (it deleted some)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no damage reported
            assert producer.qsize() == 18_000
            assert take(producer, 100) == list(range(2_000, 2_100))
    finally:
        producer.close()
        consumer.close()
