#!/usr/bin/env python3
"""DurableQueue speed: puts/s and gets/s in one process, and items/s end to end with
2 producer and 2 consumer processes on one queue.

    python tools/bench_queue.py [--items 100000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from iodict_log import DurableQueue

PRODUCER = """
import sys
from iodict_log import DurableQueue
q = DurableQueue(sys.argv[1])
value = b"p" * 100
print("ready", flush=True)
sys.stdin.readline()
for _ in range(int(sys.argv[2])):
    q.put(value)
print("done", flush=True)
"""

CONSUMER = """
import queue, sys
from iodict_log import DurableQueue
q = DurableQueue(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()
got = 0
while True:
    item = q.get()
    if item is None:
        break
    got += 1
print(got, flush=True)
"""


def one_process(path: str, n: int) -> tuple[float, float]:
    q = DurableQueue(path)
    value = b"v" * 100
    started = time.perf_counter()
    for _ in range(n):
        q.put(value)
    t_put = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(n):
        q.get()
    t_get = time.perf_counter() - started
    q.close()
    return n / t_put, n / t_get


def two_by_two(path: str, n: int) -> float:
    DurableQueue(path).close()
    per_producer = n // 2

    def spawn(code: str, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-c", code, path, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    producers = [spawn(PRODUCER, str(per_producer)) for _ in range(2)]
    consumers = [spawn(CONSUMER) for _ in range(2)]
    procs = producers + consumers
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready"
        started = time.perf_counter()
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        for p in producers:
            assert p.stdout.readline().strip() == "done"
        q = DurableQueue(path)
        q.put_many([None, None])  # one stop marker per consumer, after every item
        got = sum(int(p.stdout.readline()) for p in consumers)
        seconds = time.perf_counter() - started
        q.close()
        assert got == 2 * per_producer, got
    finally:
        for p in procs:
            p.kill()
            p.wait()
    return got / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        single = [one_process(os.path.join(tmp, f"one-{r}"), args.items) for r in range(args.repeat)]
        multi = [two_by_two(os.path.join(tmp, f"multi-{r}"), args.items) for r in range(args.repeat)]
    puts, gets = (statistics.median(x) for x in zip(*single))
    print(f"DurableQueue, {args.items:,} items of 100 bytes, sync=False, median of {args.repeat}")
    print("| figure | items/s |")
    print("|---|---:|")
    print(f"| put, one process | {puts:,.0f} |")
    print(f"| get, one process | {gets:,.0f} |")
    print(f"| end to end, 2 producer + 2 consumer processes | {statistics.median(multi):,.0f} |")


if __name__ == "__main__":
    main()
