#!/usr/bin/env python3
"""DurableQueue speed: puts/s, gets/s and lease + ack/s in one process (the last two
in turns, in the same run, and their ratio), items/s end to end with 2 producer and 2
consumer processes on one queue, how soon a SIGKILLed holder's lease is delivered
to a live consumer (median and worst of --kills kills), and how soon a put in another
process wakes a waiting get(), blocking and with iodict_log.aio (--wakes puts each,
at random moments up to 0.2 s into the wait).

    python tools/bench_queue.py [--items 100000] [--repeat 3] [--kills 20] [--wakes 50]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from iodict_log import DurableQueue, aio

PRODUCER = """
import sys
from iodict_log import DurableQueue, aio
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
from iodict_log import DurableQueue, aio
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


WAKER = """
import random, sys, time
from iodict_log import DurableQueue
q = DurableQueue(sys.argv[1])
print("ready", flush=True)
for _ in sys.stdin:
    time.sleep(random.uniform(0, 0.2))
    q.put(time.time())
"""


HOLDER = """
import sys
from iodict_log import DurableQueue, aio
q = DurableQueue(sys.argv[1])
lease = q.lease()
print("leased", flush=True)
sys.stdin.readline()
"""


def one_process(path: str, n: int) -> tuple[float, float, float]:
    """(puts/s, gets/s, lease + ack/s), getting and leasing in alternating blocks."""
    q = DurableQueue(path)
    value = b"v" * 100
    started = time.perf_counter()
    for _ in range(n):
        q.put(value)
    t_put = time.perf_counter() - started
    q.put_many([value] * n)
    t_get = t_lease = 0.0
    block = 1000
    for _ in range(n // block):
        started = time.perf_counter()
        for _ in range(block):
            q.get()
        t_get += time.perf_counter() - started
        started = time.perf_counter()
        for _ in range(block):
            q.lease().ack()
        t_lease += time.perf_counter() - started
    q.close()
    done = n // block * block
    return n / t_put, done / t_get, done / t_lease


def redelivery(path: str, kills: int) -> list[float]:
    """Seconds from a SIGKILL of a lease's holder to a live consumer's lease of the item."""
    q = DurableQueue(path)
    q.put(b"job")
    waits = []
    for _ in range(kills):
        holder = subprocess.Popen([sys.executable, "-c", HOLDER, path], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        try:
            assert holder.stdout.readline().strip() == b"leased"
            holder.send_signal(signal.SIGKILL)
            holder.wait()
            killed = time.perf_counter()
            lease = q.lease(timeout=30)
            waits.append(time.perf_counter() - killed)
            lease.release()
        finally:
            holder.kill()
            holder.wait()
            holder.stdin.close()
            holder.stdout.close()
    q.close()
    return waits


def wake_ups(path: str, rounds: int, use_aio: bool) -> list[float]:
    """Seconds from a put in another process to the return of the get() waiting for it."""
    waker = subprocess.Popen([sys.executable, "-c", WAKER, path], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert waker.stdout.readline().strip() == b"ready"

        def ask() -> None:
            waker.stdin.write(b"go\n")
            waker.stdin.flush()

        if use_aio:

            async def waits() -> list[float]:
                async with aio.DurableQueue(path) as q:
                    out = []
                    for _ in range(rounds):
                        ask()
                        stamp = await q.get()
                        out.append(time.time() - stamp)
                    return out

            return asyncio.run(waits())
        with DurableQueue(path) as q:
            out = []
            for _ in range(rounds):
                ask()
                stamp = q.get()
                out.append(time.time() - stamp)
            return out
    finally:
        waker.kill()
        waker.wait()
        waker.stdin.close()
        waker.stdout.close()


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
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--wakes", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        single = [one_process(os.path.join(tmp, f"one-{r}"), args.items) for r in range(args.repeat)]
        multi = [two_by_two(os.path.join(tmp, f"multi-{r}"), args.items) for r in range(args.repeat)]
        waits = redelivery(os.path.join(tmp, "kills"), args.kills)
        wakes = {kind: wake_ups(os.path.join(tmp, kind), args.wakes, kind == "aio") for kind in ("get", "aio")}
    puts, gets, leases = (statistics.median(x) for x in zip(*single))
    ratio = statistics.median(lease / get for _, get, lease in single)
    print(f"DurableQueue, {args.items:,} items of 100 bytes, sync=False, median of {args.repeat}")
    print("| figure | items/s |")
    print("|---|---:|")
    print(f"| put, one process | {puts:,.0f} |")
    print(f"| get, one process | {gets:,.0f} |")
    print(f"| lease + ack, one process | {leases:,.0f} ({ratio:.2f}x get; target >= 0.5x) |")
    print(f"| end to end, 2 producer + 2 consumer processes | {statistics.median(multi):,.0f} |")
    print(
        f"\nA SIGKILLed holder's lease delivered to a live consumer, {len(waits)} kills: "
        f"median {statistics.median(waits):.3f} s, worst {max(waits):.3f} s (target <= 1 s)"
    )
    for kind, name in (("get", "a blocking get()"), ("aio", "an awaiting aio get()")):
        ms = sorted(1000 * w for w in wakes[kind])
        print(
            f"A put in another process to {name} waiting for it, {len(ms)} puts: "
            f"median {statistics.median(ms):.1f} ms, worst {ms[-1]:.1f} ms"
        )


if __name__ == "__main__":
    main()
