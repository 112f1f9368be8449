#!/usr/bin/env python3
"""Following the log: how soon a write in another process reaches a follower
(``records(follow=True)`` and ``aio.follow``: median and 99th percentile of --wakes
writes, each at a random moment up to 0.1 s after the last), what an idle follower
costs (CPU seconds per wall second of a child that follows an idle store), replay
through a follower against plain ``records()`` (same records, same run), and how
soon ``records(start)`` yields its first record near the end of a long log against
at its start.

    python tools/bench_streams.py [--records 200000] [--segment-bytes 1048576] [--wakes 200] [--idle 5]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import subprocess
import sys
import tempfile
import time

from iodict_log import IODict, aio

WRITER = """
import random, sys, time
from iodict_log import IODict
d = IODict(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()
for i in range(int(sys.argv[2])):
    time.sleep(random.uniform(0.0, 0.1))
    d[f"w{i}"] = time.time()
print("done", flush=True)
"""

IDLE = """
import sys, time
from iodict_log import IODict
d = IODict(sys.argv[1])
start = sys.argv[2]
wall, cpu = time.monotonic(), time.process_time()
for _ in d.records(int(start), follow=True, timeout=float(sys.argv[3])):
    pass
print((time.process_time() - cpu) / (time.monotonic() - wall), flush=True)
"""


def percentiles(delays: list[float]) -> str:
    delays = sorted(delays)
    p99 = delays[min(len(delays) - 1, round(0.99 * (len(delays) - 1)))]
    return f"median {statistics.median(delays) * 1e3:.1f} ms, p99 {p99 * 1e3:.1f} ms, worst {delays[-1] * 1e3:.1f} ms"


def writer(path: str, wakes: int) -> subprocess.Popen:
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, path, str(wakes)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None and child.stdin is not None
    assert child.stdout.readline() == "ready\n"
    child.stdin.write("go\n")
    child.stdin.flush()
    return child


def wake_ups(path: str, wakes: int) -> tuple[list[float], list[float]]:
    with IODict(path) as d:
        start = d.stats()["last_seq"] + 1
        child = writer(path, wakes)
        blocking = []
        for record in d.records(start, follow=True, timeout=30):
            blocking.append(time.time() - record.value)
            if len(blocking) == wakes:
                break
        child.wait()
        start = d.stats()["last_seq"] + 1

        async def follow() -> list[float]:
            child = writer(path, wakes)
            delays = []
            async for record in aio.follow(d, start, timeout=30):
                delays.append(time.time() - record.value)
                if len(delays) == wakes:
                    break
            child.wait()
            return delays

        return blocking, asyncio.run(follow())


def replay(path: str, records: int, segment_bytes: int) -> tuple[float, float, float, float]:
    with IODict(path, segment_bytes=segment_bytes) as d:
        for first in range(0, records, 1000):  # (batches of 1,000: one batch stays in one segment)
            d.update({f"k{i:08d}": {"n": i, "text": "x" * 80} for i in range(first, min(first + 1000, records))})
        t0 = time.perf_counter()
        n = sum(1 for _ in d.records())
        plain = time.perf_counter() - t0
        t0 = time.perf_counter()
        m = 0
        for _ in d.records(follow=True, timeout=0):
            m += 1
        followed = time.perf_counter() - t0
        assert n == m == records
        last = d.stats()["last_seq"]
        t0 = time.perf_counter()
        next(iter(d.records(0)))
        first_at_start = time.perf_counter() - t0
        t0 = time.perf_counter()
        next(iter(d.records(last - 10)))
        first_near_end = time.perf_counter() - t0
    return plain, followed, first_at_start, first_near_end


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--wakes", type=int, default=200)
    parser.add_argument("--segment-bytes", type=int, default=1 << 20, help="of the replayed store")
    parser.add_argument("--idle", type=float, default=5.0, help="seconds the idle follower runs")
    args = parser.parse_args()
    random.seed(1)
    with tempfile.TemporaryDirectory() as tmp:
        plain, followed, at_start, near_end = replay(tmp + "/replay", args.records, args.segment_bytes)
        print(
            f"replay of {args.records:,} records: records() {args.records / plain:,.0f}/s, "
            f"records(follow=True) {args.records / followed:,.0f}/s, ratio {plain / followed:.2f}"
        )
        print(f"first record: from seq 0 {at_start * 1e3:.2f} ms, from near the end {near_end * 1e3:.2f} ms")
        blocking, asynchronous = wake_ups(tmp + "/wake", args.wakes)
        print(f"wake-up, records(follow=True): {percentiles(blocking)}")
        print(f"wake-up, aio.follow:           {percentiles(asynchronous)}")
        with IODict(tmp + "/idle") as d:
            d["a"] = 1
        out = subprocess.run(
            [sys.executable, "-c", IDLE, tmp + "/idle", "2", str(args.idle)], capture_output=True, text=True, check=True
        )
        print(f"idle follower: {float(out.stdout) * 100:.2f}% of a core")


if __name__ == "__main__":
    main()
