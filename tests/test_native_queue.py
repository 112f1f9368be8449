"""The C fast paths of q.put(item) and q.get() (_durablequeue.c) against the Python ones.

Items put by one build are got by the other, in order, exactly once; whatever
the C path declines (a poison item, a damaged one, a bounded queue) the Python
path handles as before.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest

from iodict_log import DurableQueue, native
from iodict_log.errors import CorruptionWarning

PUT = (
    "import sys, iodict_log\n"
    "q = iodict_log.DurableQueue(sys.argv[1])\n"
    "for i in range(int(sys.argv[2]), int(sys.argv[3])):\n"
    "    q.put({'n': i, 'pad': 'x' * (i % 400)})\n"
    "print(iodict_log.native.build())\n"
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
