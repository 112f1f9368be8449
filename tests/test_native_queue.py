"""The C fast paths of q.put(item), q.get(), q.lease() and lease.ack() (_durablequeue.c)
against the Python ones.

Items put by one build are got by the other, in order, exactly once; leases taken
and acked by one build read back the same in the other, and the C lease and ack
write the records the Python ones write; whatever the C path declines (a poison
item, a damaged one, a bounded queue, an item back from a lease, a lease no longer
current) the Python path handles as before. conftest.py leaves this file out where
the extension is not built.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings

import pytest

from iodict_log import DurableQueue, LeaseExpiredError, _native, durablequeue, native
from iodict_log.errors import CorruptionWarning
from iodict_log.format import LEASE, SEGMENT_HEADER_SIZE, SEQ, Scan, decode_segment_header

PUT = (
    "import sys, iodict_log\n"
    "q = iodict_log.DurableQueue(sys.argv[1])\n"
    "for i in range(int(sys.argv[2]), int(sys.argv[3])):\n"
    "    q.put({'n': i, 'pad': 'x' * (i % 400)})\n"
    "print(iodict_log.native.build())\n"
)
LEASE_SOME = (  # acks the items whose number is not a multiple of 3; closing releases the rest
    "import sys, iodict_log\n"
    "q = iodict_log.DurableQueue(sys.argv[1])\n"
    "print(iodict_log.native.build())\n"
    "held = [q.lease() for _ in range(int(sys.argv[2]))]\n"
    "for lease in held:\n"
    "    if lease.item['n'] % 3:\n"
    "        lease.ack()\n"
    "    print(lease.item['n'])\n"
)
GET = (
    "import sys, iodict_log\n"
    "q = iodict_log.DurableQueue(sys.argv[1])\n"
    "print(iodict_log.native.build())\n"
    "for _ in range(int(sys.argv[2])):\n"
    "    print(q.get()['n'])\n"
)


def run(script: str, build: str, *args: object) -> list[str]:
    env = dict(os.environ, IODICT_LOG_PURE="1" if build == "pure" else "0")
    out = subprocess.run(
        [sys.executable, "-c", script, *map(str, args)], env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.split()


@pytest.mark.parametrize("producer,consumer", [("native", "pure"), ("pure", "native"), ("native", "native")])
def test_items_put_by_one_build_are_got_by_the_other_in_order(store_path, producer, consumer):
    # The two builds write and read the same PUT and TAKE records: FIFO, nothing lost or repeated.
    expected = "native" if native.core is not None else "pure"
    assert run(PUT, producer, store_path, 0, 300)[-1] == (expected if producer == "native" else "pure")
    got = run(GET, consumer, store_path, 200)
    assert [int(n) for n in got[1:]] == list(range(200))
    assert run(PUT, producer, store_path, 300, 350)
    got = run(GET, "pure" if consumer == "native" else "native", store_path, 150)
    assert [int(n) for n in got[1:]] == list(range(200, 350))
    with DurableQueue(store_path) as q:
        assert q.qsize() == 0 and q.stats()["corrupt_records"] == 0


def test_a_poison_item_is_left_to_the_python_path(store_path):
    # An item that does not decode: the C get declines, the Python get moves it to the dead letters.
    with DurableQueue(store_path, serializer="pickle") as q:
        q.put("first")
        with q._lock:  # (a poison item: a PUT whose bytes are no pickle)
            q._write(
                lambda log: q._pending.add(
                    log.last_seq + 1, log.append_one(16, 2, b"", b"not a pickle", log.birthtime())
                )
            )
        q.put("last")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert [q.get(), q.get()] == ["first", "last"]
        assert any("dead letters" in str(w.message) for w in caught)
        assert len(q.dead_letters()) == 1 and q.qsize() == 0


def test_a_damaged_item_is_skipped_with_a_warning(store_path):
    # An item failing its checksum: the C get declines, the Python get takes it, counts and warns.
    with DurableQueue(store_path) as q:
        q.put("a" * 100)
        q.put("b" * 100)
        segment = os.path.join(store_path, "0000000001.seg")
        with open(segment, "r+b") as f:
            f.seek(20 + 36 + 10)  # inside the first item's value
            f.write(b"\x00\x01")
        with pytest.warns(CorruptionWarning):
            assert q.get() == "b" * 100
        assert q.stats()["corrupt_records"] == 1


def test_a_bounded_queue_still_blocks_and_counts(store_path):
    # maxsize: the Python path (the C one declines bounded queues), with its Full.
    import queue

    with DurableQueue(store_path, maxsize=2) as q:
        q.put(1)
        q.put(2)
        with pytest.raises(queue.Full):
            q.put(3, timeout=0.05)
        assert q.get() == 1 and q.get() == 2
        q.task_done()
        q.task_done()
        q.join()


@pytest.mark.parametrize("leaser,getter", [("native", "pure"), ("pure", "native")])
def test_leases_taken_and_acked_by_one_build_read_back_the_same_in_the_other(store_path, leaser, getter):
    # The acked items never come back; those released (at close) come back first, in their
    # FIFO place, then the items never delivered.
    run(PUT, "native", store_path, 0, 300)
    leased = run(LEASE_SOME, leaser, store_path, 200)
    assert leased[0] == leaser and [int(n) for n in leased[1:]] == list(range(200))
    got = run(GET, getter, store_path, 167)
    assert [int(n) for n in got[1:]] == [n for n in range(200) if n % 3 == 0] + list(range(200, 300))
    with DurableQueue(store_path) as q:
        assert q.qsize() == 0 and q.stats()["leased"] == 0 and q.stats()["corrupt_records"] == 0


def records(path: str) -> list[tuple[int, int, bytes, bytes]]:
    """(op, flags, key, value) of every frame in the store, in log order."""
    out = []
    for name in sorted(n for n in os.listdir(path) if n.endswith(".seg")):
        with open(os.path.join(path, name), "rb") as f:
            data = f.read()
        salt = decode_segment_header(data[:SEGMENT_HEADER_SIZE])[1]
        out += [(f.op, f.flags, f.key, f.value) for f in Scan(data, salt, SEGMENT_HEADER_SIZE)]
    return out


def test_the_c_lease_and_ack_write_the_records_the_python_ones_write(tmp_path, monkeypatch):
    # The same calls with the C paths and without them: the same frames, but for the
    # holder's token (one per store) and the expiry (a time), which are checked apart.
    def leases_and_acks(path: str) -> tuple[list, int, int, int]:
        with DurableQueue(path, serializer="msgpack", lease_timeout=60) as q:
            q.put_many(["a", "b", "c"])
            started = time.time_ns()
            first, second = q.lease(), q.lease()
            second.ack()
            first.ack()
            third = q.lease()
            ended = time.time_ns()
            assert [first.item, second.item, third.item] == ["a", "b", "c"] and third.deliveries == 1
            return records(path), q._leases.holders.own(), started, ended

    native_records, native_holder, *native_times = leases_and_acks(str(tmp_path / "c"))
    monkeypatch.setattr(durablequeue, "_lease_one", None)
    monkeypatch.setattr(durablequeue, "_ack_one", None)
    python_records, python_holder, *python_times = leases_and_acks(str(tmp_path / "py"))

    def masked(recs: list, holder: int, started: int, ended: int) -> list:
        out = []
        for op, flags, key, value in recs:
            if op == 19:  # OP_LEASE
                token, expiry, delivery = LEASE.unpack(value)
                assert token == holder and started + 60 * 10**9 <= expiry <= ended + 60 * 10**9
                value = delivery
            out.append((op, flags, SEQ.unpack(key)[0] if key else None, value))
        return out

    assert masked(native_records, native_holder, *native_times) == masked(python_records, python_holder, *python_times)
    assert [r[0] for r in python_records].count(19) == 3 and [r[0] for r in python_records].count(17) == 2


def test_the_c_paths_lease_and_ack_or_decline_having_changed_nothing(store_path):
    # Called directly: the common case is C's; an item back from a lease, a bounded queue
    # and a lease no longer current are left to Python (NotImplemented), and nothing is
    # written then.
    with DurableQueue(store_path) as q:
        q.put_many(["a", "b"])
        lease = _native.queue_lease(q, durablequeue.Lease)
        assert isinstance(lease, durablequeue.Lease) and (lease.item, lease.deliveries) == ("a", 1)
        assert _native.queue_ack(q, lease) is None and q.stats()["leased"] == 0
        lease = _native.queue_lease(q, durablequeue.Lease)
        lease.release()
        size = q.stats()["disk_bytes"]
        assert _native.queue_lease(q, durablequeue.Lease) is NotImplemented  # ("b" is back, first)
        assert _native.queue_ack(q, lease) is NotImplemented  # (released: not current)
        assert q.stats()["disk_bytes"] == size
        with pytest.raises(LeaseExpiredError):
            lease.ack()
        again = q.lease()
        assert (again.item, again.deliveries) == ("b", 2)
        again.ack()
    with DurableQueue(store_path, maxsize=5) as q:
        q.put("c")
        assert _native.queue_lease(q, durablequeue.Lease) is NotImplemented
        assert q.lease().item == "c"
