"""iodict_log.aio.DurableQueue (CONTRACT §12): asyncio.Queue's API on a store, whose waits
never block the event loop; a put in another process wakes an awaiting get()."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from iodict_log import DurableQueue, aio

PUTTER = (  # puts its argument once it reads a line
    "import sys\n"
    "from iodict_log import DurableQueue\n"
    "q = DurableQueue(sys.argv[1], serializer='msgpack')\n"
    "print('ready', flush=True)\n"
    "sys.stdin.readline()\n"
    "q.put(sys.argv[2])\n"
    "print('put', flush=True)\n"
)


def opened(path, **options) -> aio.DurableQueue:
    return aio.DurableQueue(path, serializer="msgpack", **options)


def test_items_go_in_and_out_in_order_as_in_asyncio_queue(store_path):
    async def main() -> None:
        async with opened(store_path) as q:
            with pytest.raises(asyncio.QueueEmpty):
                q.get_nowait()
            await q.put("a")
            q.put_nowait("b")
            await q.put_many(["c", "d"])
            assert q.qsize() == 4 and not q.empty() and not q.full()
            assert [await q.get(), q.get_nowait(), await q.get(), await q.get()] == ["a", "b", "c", "d"]
            for _ in range(4):
                q.task_done()
            await q.join()
            with pytest.raises(ValueError):
                q.task_done()

    asyncio.run(main())
    with DurableQueue(store_path, serializer="msgpack") as q:
        assert q.qsize() == 0  # (got: gone on disk too)


def test_the_loop_keeps_running_while_a_get_waits_for_another_process(store_path):
    # The other process puts only after the loop has ticked 20 times with the get waiting:
    # had the get blocked the loop, no tick would run and the child would never put.
    child = subprocess.Popen(
        [sys.executable, "-c", PUTTER, store_path, "from the child"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline() == "ready\n"

        async def main() -> tuple[str, int]:
            async with opened(store_path) as q:
                getter = asyncio.create_task(q.get())
                ticks = 0
                while ticks < 20:
                    await asyncio.sleep(0.001)
                    ticks += 1
                    assert not getter.done()  # (nothing was put yet)
                child.stdin.write("go\n")
                child.stdin.flush()
                return await asyncio.wait_for(getter, 10), ticks

        item, ticks = asyncio.run(main())
        assert item == "from the child" and ticks == 20
        assert child.stdout.readline() == "put\n"
    finally:
        child.stdin.close()
        child.wait(10)


def test_a_bounded_queue_waits_for_room_on_the_loop(store_path):
    async def main() -> None:
        async with opened(store_path, maxsize=1) as q:
            await q.put(1)
            with pytest.raises(asyncio.QueueFull):
                q.put_nowait(2)
            putter = asyncio.create_task(q.put(2))
            await asyncio.sleep(0.01)
            assert not putter.done()  # (still no room)
            assert await q.get() == 1
            await asyncio.wait_for(putter, 10)
            assert q.get_nowait() == 2

    asyncio.run(main())


def test_leases_are_awaited_and_acked(store_path):
    async def main() -> None:
        async with opened(store_path, lease_timeout=60) as q:
            with pytest.raises(asyncio.TimeoutError):
                await q.lease(timeout=0.05)
            waiting = asyncio.create_task(q.lease())
            await q.put("job")  # (wakes the waiting lease at once: a put through this object)
            lease = await asyncio.wait_for(waiting, 10)
            assert (lease.item, lease.deliveries) == ("job", 1) and q.qsize() == 0
            lease.release()
            again = await q.lease()
            assert (again.item, again.deliveries) == ("job", 2)
            again.ack()
            assert q.sync.stats()["leased"] == 0 and q.qsize() == 0

    asyncio.run(main())


def test_a_cancelled_get_takes_nothing(store_path):
    async def main() -> None:
        async with opened(store_path) as q:
            getter = asyncio.create_task(q.get())
            await asyncio.sleep(0.01)
            getter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await getter
            await q.put("kept")
            assert q.get_nowait() == "kept"

    asyncio.run(main())


def test_one_object_serves_successive_event_loops(store_path):
    # asyncio.run makes a new loop each time: the object's wake-up Event follows it.
    q = opened(store_path)
    try:
        for n in range(3):

            async def round_trip(n: int = n) -> int:
                waiting = asyncio.create_task(q.get())
                await asyncio.sleep(0)
                await q.put(n)
                return await asyncio.wait_for(waiting, 10)

            assert asyncio.run(round_trip()) == n
    finally:
        q.close()
