"""Acknowledged delivery in one process (CONTRACT §9): lease, ack, release, extend,
lease_timeout, max_deliveries, dead letters, bad input, and what survives reopening,
checkpoints and segment reclaim. Processes that die holding leases: test_lease_processes.py."""

from __future__ import annotations

import json
import os
import queue
import time

import pytest

from iodict_log import DurableQueue, LeaseExpiredError, StoreClosedError
from iodict_log.cli import main


def opened(path, **options) -> DurableQueue:
    return DurableQueue(path, serializer="msgpack", **options)


def test_a_leased_item_is_delivered_to_no_one_else_until_it_is_acked(store_path):
    q = opened(store_path)
    q.put_many(["a", "b"])
    lease = q.lease()
    assert (lease.item, lease.deliveries) == ("a", 1) and isinstance(lease.id, int)
    assert q.qsize() == 1
    assert q.stats()["ready"] == 1 and q.stats()["leased"] == 1 and q.stats()["dead"] == 0
    other = opened(store_path)
    assert other.get(block=False) == "b"  # get() never returns a leased item
    with pytest.raises(queue.Empty):
        other.lease(block=False)
    lease.ack()
    assert q.stats()["leased"] == 0
    other.close()
    q.close()
    with opened(store_path) as q, pytest.raises(queue.Empty):
        q.get(block=False)  # acked: never back, reopened or not


def test_an_ack_counts_once_and_a_second_raises_changing_nothing(store_path):
    with opened(store_path) as q:
        q.put("a")
        lease = q.lease()
        lease.ack()
        before = q.stats()["disk_bytes"]
        with pytest.raises(LeaseExpiredError):
            lease.ack()
        with pytest.raises(LeaseExpiredError):
            lease.release()
        assert q.stats()["disk_bytes"] == before


def test_a_released_item_keeps_its_fifo_place_and_counts_its_deliveries(store_path):
    with opened(store_path) as q:
        q.put_many(["a", "b", "c"])
        first = q.lease()
        second = q.lease()
        first.release()
        assert q.qsize() == 2
        again = q.lease()
        assert (again.item, again.id, again.deliveries) == ("a", first.id, 2)
        again.release()
        assert q.get() == "a"  # get() too delivers the item that came back first
        second.release()
        assert [q.get(), q.get()] == ["b", "c"]


def test_a_release_with_a_delay_holds_the_item_back_that_long(store_path):
    with opened(store_path) as q:
        q.put_many(["a", "b"])
        lease = q.lease()
        start = time.monotonic()
        lease.release(delay=0.5)
        assert q.stats()["delayed"] == 1
        assert q.lease().item == "b"  # the delayed one is not ready yet
        with pytest.raises(queue.Empty):
            q.lease(block=False)
        back = q.lease(timeout=10)
        assert time.monotonic() - start >= 0.5
        assert (back.item, back.deliveries) == ("a", 2)


def test_a_lease_past_its_timeout_comes_back_and_its_late_ack_is_refused(store_path):
    with opened(store_path, lease_timeout=0.3) as q, opened(store_path) as other:
        q.put("a")
        lease = q.lease()
        back = other.lease(timeout=10)  # comes back once 0.3 s have passed, holder alive or not
        assert (back.item, back.deliveries) == ("a", 2)
        with pytest.raises(LeaseExpiredError):
            lease.ack()
        back.ack()
        with pytest.raises(queue.Empty):
            q.get(block=False)


def test_extend_restarts_the_clock(store_path):
    with opened(store_path, lease_timeout=0.3) as q, opened(store_path) as other:
        q.put("a")
        lease = q.lease()
        lease.extend(60)
        with pytest.raises(queue.Empty):
            other.lease(timeout=1.0)  # well past the 0.3 s the lease had
        lease.ack()


def test_an_item_delivered_max_deliveries_times_becomes_a_dead_letter_and_can_be_retried(store_path):
    with opened(store_path, max_deliveries=3) as q:
        q.put_many(["poison", "fine"])
        for delivery in (1, 2, 3):
            lease = q.lease()
            assert (lease.item, lease.deliveries) == ("poison", delivery)
            lease.release()
        assert q.lease().item == "fine"  # the fourth delivery would be one too many
        letters = q.dead_letters()
        assert [(d.id, d.item, d.deliveries) for d in letters] == [(lease.id, "poison", 3)]
        assert q.stats()["dead"] == 1
        assert q.retry_dead_letters() == 1
        again = q.lease()
        assert (again.item, again.deliveries) == ("poison", 1)
        assert q.dead_letters() == []


def test_the_with_block_acks_on_success_and_releases_on_error(store_path):
    with opened(store_path) as q:
        q.put_many(["a", "b"])
        with pytest.raises(RuntimeError), q.lease() as lease:
            assert lease.item == "a"
            raise RuntimeError("worker failed")
        with q.lease() as lease:
            assert (lease.item, lease.deliveries) == ("a", 2)
        with q.lease() as lease:
            lease.ack()  # acked inside: the block's end does not ack again
        with pytest.raises(queue.Empty):
            q.lease(block=False)


@pytest.mark.parametrize(
    "options, error",
    [
        ({"lease_timeout": 0}, ValueError),
        ({"lease_timeout": -1}, ValueError),
        ({"lease_timeout": float("nan")}, ValueError),
        ({"lease_timeout": "5"}, TypeError),
        ({"lease_timeout": 1e11}, ValueError),  # (its expiry would not fit a record)
        ({"max_deliveries": 0}, ValueError),
        ({"max_deliveries": 1.5}, ValueError),
        ({"max_deliveries": True}, ValueError),
    ],
)
def test_bad_options_are_refused_before_the_store_is_made(store_path, options, error):
    with pytest.raises(error):
        opened(store_path, **options)
    assert not os.path.exists(store_path)


def test_bad_delays_and_a_closed_queue_are_refused_before_anything_is_written(store_path):
    q = opened(store_path)
    q.put("a")
    lease = q.lease()
    before = q.stats()["disk_bytes"]
    for bad in (-1, float("inf"), float("nan"), 1e11):
        with pytest.raises(ValueError):
            lease.release(bad)
    with pytest.raises(ValueError):
        lease.extend(1e11)
    with pytest.raises(TypeError):
        lease.release("1")
    with pytest.raises(ValueError):
        lease.extend(0)
    assert q.stats()["disk_bytes"] == before and q.stats()["leased"] == 1
    q.close()
    for use in (lease.ack, lease.release, lease.extend):
        with pytest.raises(StoreClosedError):
            use()


def test_closing_hands_back_the_leases_it_holds_and_no_one_elses(store_path):
    q, keeper = opened(store_path), opened(store_path)
    q.put_many(["a", "b"])
    mine, kept = q.lease(), keeper.lease()
    q.close()  # nothing could ack ``mine`` now: it comes back
    with opened(store_path) as later:
        back = later.lease(block=False)
        assert (back.item, back.deliveries) == ("a", 2)
        with pytest.raises(queue.Empty):
            later.lease(block=False)  # ``kept`` is still keeper's
        kept.ack()
        assert later.stats()["leased"] == 1
    keeper.close()
    assert mine.deliveries == 1


def test_leases_survive_a_checkpoint_and_their_segments_are_kept(store_path):
    items = [os.urandom(1000).hex() for _ in range(1500)]  # 3 MB, incompressible
    holder = opened(store_path, segment_bytes=64 * 1024)
    holder.put_many(items)  # > 1 MiB: closing leaves a checkpoint
    lease = holder.lease()
    with opened(store_path, segment_bytes=64 * 1024) as consumer:
        assert len(drain_all(consumer)) == 1499
    assert len([n for n in os.listdir(store_path) if n.endswith(".seg")]) >= 1
    with opened(store_path, segment_bytes=64 * 1024) as reader:
        stats = reader.stats()
        assert stats["state_from_checkpoint"] and stats["leased"] == 1 and stats["ready"] == 0
    lease.release()
    holder.close()
    with opened(store_path, segment_bytes=64 * 1024) as q:
        back = q.lease(block=False)
        assert (back.item, back.deliveries) == (items[0], 2)  # its segment was not reclaimed
        back.ack()
        assert q.stats()["segments"] <= 2


def drain_all(q: DurableQueue) -> list:
    items = []
    while True:
        try:
            items.append(q.get(block=False))
        except queue.Empty:
            return items


def test_the_tool_shows_leases_and_lists_and_retries_dead_letters(store_path, capsys):
    with opened(store_path, max_deliveries=1) as q:
        q.put_many([{"job": 1}, {"job": 2}, {"job": 3}])
        q.lease().release()
        leased = q.lease()
        assert q.lease(block=False).item == {"job": 3}  # job 1 is dead after one delivery
        assert main(["stats", store_path, "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert (report["queue_items"], report["queue_leased"], report["dead_letters"]) == (0, 2, 1)
        assert main(["dead-letters", store_path]) == 0
        letters = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [(d["value"], d["deliveries"]) for d in letters] == [({"job": 1}, 1)]
        assert main(["dump", store_path]) == 0
        ops = [json.loads(line)["op"] for line in capsys.readouterr().out.splitlines()]
        assert ops.count("lease") == 3 and ops.count("release") == 1 and ops.count("dead") == 1
        assert main(["dead-letters", store_path, "--retry"]) == 0
        assert "1 dead letter(s) put back" in capsys.readouterr().out
        assert q.get(block=False) == {"job": 1}
        leased.ack()


def test_one_process_is_one_holder_however_it_spells_the_path(tmp_path, capsys):
    # Two spellings of one store in one process must not make it judge its own lease dead
    # (trying its own lock file would succeed, and closing it would drop the lock).
    real = tmp_path / "q"
    link = tmp_path / "link"
    q = opened(str(real))
    link.symlink_to(real)
    q.put_many(["a", "b"])
    held = q.lease()
    via_link = opened(str(link))
    assert via_link.lease(block=False).item == "b"
    os.chdir(tmp_path)
    try:
        assert main(["stats", "q", "--json"]) == 0  # (a third spelling, in the holding process)
    finally:
        os.chdir("/")
    assert json.loads(capsys.readouterr().out)["queue_leased"] == 2
    with pytest.raises(queue.Empty):
        opened(str(real)).lease(block=False)
    held.ack()
    via_link.close()
    q.close()


def test_a_lease_does_not_pickle_it_belongs_to_its_process(store_path):
    # A pickled copy in another process could ack it while this one still holds it.
    import copy
    import pickle

    with opened(store_path) as q:
        q.put("a")
        lease = q.lease()
        for attempt in (pickle.dumps, copy.copy):
            with pytest.raises(TypeError, match="belongs to the process"):
                attempt(lease)
        lease.ack()
        assert q.stats()["leased"] == 0 and q.qsize() == 0


def test_a_lease_runs_from_when_it_is_taken_not_from_the_wait_for_the_lock(store_path):
    # Another handle holds the write lock for longer than lease_timeout while lease() waits
    # for it: the lease handed out must still have its whole timeout (no second delivery).
    import threading

    q = opened(store_path, lease_timeout=0.2)
    other = opened(store_path)
    q.put("x")
    holding, done = threading.Event(), threading.Event()
    holder = threading.Thread(target=lambda: other._write(lambda log: (holding.set(), done.wait(10))))
    holder.start()
    try:
        holding.wait(10)
        threading.Timer(0.5, done.set).start()  # (the wait to outlast: longer than lease_timeout)
        lease = q.lease()
        left = (q._leases.held[lease.id].until - time.time_ns()) / 1e9
        assert 0.1 < left <= 0.2
        with pytest.raises(queue.Empty):
            other.lease(block=False)  # (not expired: not delivered again)
        lease.ack()
    finally:
        done.set()
        holder.join()
        other.close()
        q.close()


class Interrupting:
    """An item whose first unpickling is interrupted (a Ctrl-C landing inside it)."""

    unpickled = 0

    def __setstate__(self, state: dict) -> None:
        Interrupting.unpickled += 1
        if Interrupting.unpickled == 1:
            raise KeyboardInterrupt
        self.__dict__.update(state)


@pytest.mark.parametrize("call", ["get", "lease"])
def test_an_interrupt_while_an_item_is_decoded_is_raised_and_the_item_stays(store_path, call):
    with DurableQueue(store_path) as q:
        item = Interrupting()
        item.n = 1
        q.put(item)
        Interrupting.unpickled = 0
        with pytest.raises(KeyboardInterrupt):
            getattr(q, call)()
        assert q.qsize() == 1 and Interrupting.unpickled == 1
        got = getattr(q, call)()
        assert (got if call == "get" else got.item).n == 1 and Interrupting.unpickled == 2
