"""records(start, follow=True) and aio.follow (CONTRACT §10, §12): a replay that seeks to
``start`` and then waits for what other processes write, through rolls and compactions,
in seq order with no gap and no duplicate."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys

import pytest

from iodict_log import DurableQueue, IODict, aio

WRITER = (  # writes keys k0..k{n-1} (each once) after it reads a line, compacting now and then
    "import sys\n"
    "from iodict_log import IODict\n"
    "path, n, every = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])\n"
    "d = IODict(path, segment_bytes=64 * 1024, auto_compact=False)\n"
    "print('ready', flush=True)\n"
    "sys.stdin.readline()\n"
    "for i in range(n):\n"
    "    d[f'k{i}'] = 'x' * 200\n"
    "    if every and i % every == every - 1:\n"
    "        d.compact()\n"
    "print('done', d.stats()['segments'], flush=True)\n"
)

PUTTER = (  # puts 0..n-1 after it reads a line
    "import sys\n"
    "from iodict_log import DurableQueue\n"
    "q = DurableQueue(sys.argv[1], segment_bytes=64 * 1024)\n"
    "print('ready', flush=True)\n"
    "sys.stdin.readline()\n"
    "for i in range(int(sys.argv[2])):\n"
    "    q.put(i)\n"
    "print('done', flush=True)\n"
)


def started(script: str, *args: object) -> subprocess.Popen:
    child = subprocess.Popen(
        [sys.executable, "-c", script, *map(str, args)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout.readline() == "ready\n"
    child.stdin.write("go\n")
    child.stdin.flush()
    return child


def finished(child: subprocess.Popen) -> str:
    line = child.stdout.readline()
    assert child.wait(60) == 0
    return line


@pytest.mark.parametrize("compact_every", [0, 700])
def test_a_follower_keeps_up_with_another_process_through_rolls_and_compactions(store_path, compact_every):
    n = 3000
    d = IODict(store_path, segment_bytes=64 * 1024, auto_compact=False)
    child = started(WRITER, store_path, n, compact_every)
    try:
        seen = []
        for record in d.records(follow=True, timeout=30):
            seen.append(record)
            if len(seen) == n:
                break
        assert finished(child).startswith("done")
    finally:
        child.kill()
        child.wait()
    assert [r.key for r in seen] == [f"k{i}" for i in range(n)]  # every key once, in write order
    seqs = [r.seq for r in seen]
    assert seqs == sorted(set(seqs)) and all(r.op == "set" and r.value == "x" * 200 for r in seen)
    assert len(os.listdir(store_path)) > 3  # (it did roll)
    d.close()


def test_a_queue_follower_sees_every_put_of_another_process_in_order_and_consumes_nothing(store_path):
    n = 2000
    q = DurableQueue(store_path, segment_bytes=64 * 1024)
    child = started(PUTTER, store_path, n)
    try:
        items = []
        for record in q.records(follow=True, timeout=30):
            assert record.op == "put" and record.key is None
            items.append(record.value)
            if len(items) == n:
                break
        assert finished(child) == "done\n"
    finally:
        child.kill()
        child.wait()
    assert items == list(range(n))
    assert q.qsize() == n and q.get() == 0  # (following took nothing)
    assert [r.value for r in q.records()] == list(range(n))  # (the got item is still on disk)
    q.close()


def test_timeout_ends_a_follow_after_that_long_without_a_record(store_path):
    with IODict(store_path) as d:
        d["a"] = 1
        assert [r.key for r in d.records(follow=True, timeout=0.05)] == ["a"]
        assert list(d.records(start=d.stats()["last_seq"] + 1, follow=True, timeout=0)) == []


def test_records_from_a_start_equal_the_full_replay_from_there(store_path):
    with IODict(store_path, segment_bytes=16 * 1024, auto_compact=False) as d:
        for i in range(600):
            d[f"k{i % 400}"] = "v" * 100
            if i == 300:
                d.compact()  # (compacted segments first, then log segments)
        everything = list(d.records())
        for start in (0, 1, 150, 399, 400, 401, 555, everything[-1].seq, everything[-1].seq + 1):
            assert list(d.records(start)) == [r for r in everything if r.seq >= start]


def test_records_near_the_end_of_a_long_log_read_about_one_segment(store_path, monkeypatch):
    with IODict(store_path, segment_bytes=32 * 1024, compression=None) as d:
        for i in range(4000):
            d[f"k{i}"] = "v" * 200
        assert d.stats()["segments"] > 20
        last = d.stats()["last_seq"]
        read = []
        real_pread = os.pread

        def counting(fd, n, offset):
            data = real_pread(fd, n, offset)
            read.append(len(data))
            return data

        monkeypatch.setattr(os, "pread", counting)
        assert [r.seq for r in d.records(last - 4)] == list(range(last - 4, last + 1))
        monkeypatch.undo()
        assert sum(read) < 3 * 32 * 1024  # (not the ~900 KiB before it)


@pytest.mark.parametrize(
    "start, timeout, error",
    [(-1, None, ValueError), (True, None, TypeError), ("0", None, TypeError), (0, -1, ValueError), (0, "1", TypeError)],
)
def test_bad_start_or_timeout_is_refused_before_anything_is_read(store_path, start, timeout, error):
    with IODict(store_path) as d, DurableQueue(store_path + "-q") as q:
        for store in (d, q):
            with pytest.raises(error):
                store.records(start, follow=True, timeout=timeout)
            with pytest.raises(error):
                store.records(start, timeout=timeout)


def test_aio_follow_waits_on_the_loop_for_another_process(store_path):
    # The putter starts only after the loop has ticked 20 times with the follower waiting:
    # had the follower blocked the loop, no tick would run and nothing would be put.
    q = DurableQueue(store_path, segment_bytes=64 * 1024)
    q.put("before")

    async def main() -> tuple[list, int]:
        got: list = []

        async def follower() -> None:
            async for record in aio.follow(q, start=0, timeout=30):
                got.append(record.value)
                if len(got) == 501:
                    return

        task = asyncio.create_task(follower())
        ticks = 0
        while ticks < 20:
            await asyncio.sleep(0.001)
            ticks += 1
        assert got == ["before"] and not task.done()
        child = started(PUTTER, store_path, 500)
        await asyncio.wait_for(task, 60)
        assert finished(child) == "done\n"
        return got, ticks

    got, ticks = asyncio.run(main())
    assert got == ["before", *range(500)] and ticks == 20
    q.close()


def test_aio_follow_takes_the_async_queue_and_a_dict_and_ends_on_timeout(store_path):
    async def main() -> tuple[list, list]:
        async with aio.DurableQueue(store_path + "-q") as q:
            await q.put("x")
            items = [r.value async for r in aio.follow(q, timeout=0.05)]
        with IODict(store_path) as d:
            d["a"] = 1
            keys = [r.key async for r in aio.follow(d, start=0, timeout=0.05)]
        return items, keys

    assert asyncio.run(main()) == (["x"], ["a"])


def test_the_tail_command_prints_new_records_as_dump_does_until_interrupted(store_path):
    with IODict(store_path, segment_bytes=16 * 1024) as d:
        d["a"] = 1
        d["b"] = [1, 2]
        tail = subprocess.Popen(
            [sys.executable, "-m", "iodict_log", "tail", store_path, "--start", "2"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert json.loads(tail.stdout.readline()) == {
                "seq": 2,
                "birthtime": d.birthtime("b"),
                "op": "set",
                "key": "b",
                "value": [1, 2],
            }
            for i in range(300):  # (rolls: 16 KiB segments)
                d[f"k{i}"] = "v" * 100
            del d["a"]
            lines = [json.loads(tail.stdout.readline()) for _ in range(301)]
            dumped = subprocess.run(
                [sys.executable, "-m", "iodict_log", "dump", store_path, "--start", "3"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.splitlines()
            assert lines == [json.loads(line) for line in dumped]
            assert lines[-1]["op"] == "delete" and lines[-1]["key"] == "a"
        finally:
            tail.send_signal(signal.SIGINT)
            _, err = tail.communicate(timeout=30)
        assert tail.returncode == 130 and err == "iodict-log tail: interrupted\n"  # (no traceback)
