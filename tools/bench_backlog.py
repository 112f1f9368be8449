#!/usr/bin/env python3
"""A queue with a long backlog next to the same queue with a short one, in one run (issue 16).

For each backlog (--small, default 10 items; --big, default 10,000,000 items of
100 bytes, put in batches of 1,000), in a fresh child process per figure:

- memory: the RSS an open DurableQueue adds (opened, qsize(), one get), and what
  tracemalloc counts of it;
- reopening: the median of --repeat opens (to the first qsize()), the store
  closed cleanly (so with its checkpoint), and with the checkpoint deleted (a scan);
- put() and get(): blocks of 1,000 single puts then 1,000 gets, so the backlog
  stays where it is; CPU time per call over all --blocks blocks of a child (a
  mean, not a median: a get pays for reading the backlog back once every 4,096
  items), children for the two backlogs taking turns --turns times (the machine's
  speed drifts), and the median of those.

Then the ratios big ÷ small, against the targets. The stores are built once under
--path and reused, so that the same script can be run against another checkout:

    python tools/bench_backlog.py                      # ~3 minutes to build 10 M items, then ~1
    python tools/bench_backlog.py --big 1000000        # quicker
    PYTHONPATH=../old python tools/bench_backlog.py --path /tmp/b-old --big 1000000   # A/B
    IODICT_LOG_PURE=1 python tools/bench_backlog.py    # the pure-Python build
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

PAD = b"b" * 92

CHILD = r"""
import gc, json, os, statistics, sys, time, tracemalloc
from iodict_log import DurableQueue, native

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

mode, path, repeat = sys.argv[1], sys.argv[2], int(sys.argv[3])
open_queue = lambda: DurableQueue(path, serializer="msgpack")
out = {"build": native.build()}
if mode == "memory":
    gc.collect()
    before = rss()
    tracemalloc.start()
    traced = tracemalloc.get_traced_memory()[0]
    q = open_queue()
    out["items"] = q.qsize()
    q.get_nowait()
    out["traced"] = tracemalloc.get_traced_memory()[0] - traced
    tracemalloc.stop()
    gc.collect()
    out["rss"] = rss() - before
    q.put(b"b" * 92 + b"back")  # (keeps the backlog's length for the next figure)
    q.close()
elif mode in ("open", "scan"):
    times = []
    for _ in range(repeat):
        if mode == "scan":
            try:
                os.unlink(os.path.join(path, "CHECKPOINT"))
            except FileNotFoundError:
                pass
        gc.collect()
        started = time.perf_counter()
        q = open_queue()
        out["items"] = q.qsize()
        times.append(time.perf_counter() - started)
        out["from_checkpoint"] = q.stats().get("state_from_checkpoint", False)
        q.close()  # (writes the checkpoint back)
    out["seconds"] = statistics.median(times)
elif mode == "ops":
    q = open_queue()
    puts, gets = [], []
    item = b"b" * 92 + b"12345678"
    for _ in range(repeat):
        started = time.process_time()
        for _ in range(1000):
            q.put(item)
        puts.append(time.process_time() - started)
        started = time.process_time()
        for _ in range(1000):
            q.get()
        gets.append(time.process_time() - started)
    out["put"], out["get"] = sum(puts) / (1000 * repeat), sum(gets) / (1000 * repeat)
    out["items"] = q.qsize()
    q.close()
print(json.dumps(out))
"""


def build(path: str, items: int) -> None:
    """A queue of ``items`` 100-byte items, put in batches of 1,000, closed cleanly."""
    from iodict_log import DurableQueue

    if os.path.exists(os.path.join(path, "CURRENT")):
        with DurableQueue(path, serializer="msgpack") as q:
            if q.qsize() == items:
                return
        shutil.rmtree(path)
    with DurableQueue(path, serializer="msgpack") as q:
        for start in range(0, items, 1000):
            n = min(1000, items - start)
            q.put_many([PAD + (start + i).to_bytes(8, "little") for i in range(n)])


def child(mode: str, path: str, repeat: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode, path, str(repeat)], capture_output=True, text=True, check=False
    )
    if out.returncode:
        raise SystemExit(f"{mode} on {path} failed:\n{out.stderr}")
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=10)
    parser.add_argument("--big", type=int, default=10_000_000)
    parser.add_argument("--path", default=os.path.join(tempfile.gettempdir(), "bench_backlog"))
    parser.add_argument("--repeat", type=int, default=7, help="opens timed")
    parser.add_argument("--blocks", type=int, default=20, help="blocks of 1,000 puts and 1,000 gets per child")
    parser.add_argument("--turns", type=int, default=5, help="children per backlog for put() and get()")
    args = parser.parse_args()
    if args.small < 1 or args.big <= args.small:
        parser.error("need 1 <= --small < --big")
    figures: dict[int, dict] = {}
    paths = {n: os.path.join(args.path, str(n)) for n in (args.small, args.big)}
    for n, path in paths.items():
        build(path, n)
        figures[n] = {
            "memory": child("memory", path, 1),
            "open": child("open", path, args.repeat),
            "scan": child("scan", path, min(args.repeat, 3)),
        }
        child("open", path, 1)  # (leaves the checkpoint for what follows)
    turns: dict[int, list[dict]] = {n: [] for n in paths}
    for _ in range(args.turns):
        for n, path in paths.items():
            turns[n].append(child("ops", path, args.blocks))
    for n in paths:
        figures[n]["ops"] = {op: statistics.median(t[op] for t in turns[n]) for op in ("put", "get")}
    small, big = figures[args.small], figures[args.big]
    print(f"build: {small['memory']['build']}; backlogs of {args.small:,} and {args.big:,} items of 100 bytes")
    print(f"{'':34}{args.small:>14,}{args.big:>14,}   big/small   target")
    rows = [
        ("memory of the open queue (RSS, MB)", lambda f: f["memory"]["rss"] / 1e6, "{:.1f}"),
        ("  of it traced by tracemalloc (MB)", lambda f: f["memory"]["traced"] / 1e6, "{:.2f}"),
        ("reopening (ms)", lambda f: f["open"]["seconds"] * 1e3, "{:.2f}"),
        ("  without the checkpoint (ms)", lambda f: f["scan"]["seconds"] * 1e3, "{:.1f}"),
        ("put() (us, CPU)", lambda f: f["ops"]["put"] * 1e6, "{:.2f}"),
        ("get() (us, CPU)", lambda f: f["ops"]["get"] * 1e6, "{:.2f}"),
    ]
    targets = {
        "memory of the open queue (RSS, MB)": lambda s, b: f"+{b - s:.1f} MB (<= 5 MB)",
        "reopening (ms)": lambda s, b: f"{b / s:.2f}x (<= 3x)",
        "put() (us, CPU)": lambda s, b: f"speed {s / b:.2f}x (>= 0.9x)",
        "get() (us, CPU)": lambda s, b: f"speed {s / b:.2f}x (>= 0.9x)",
    }
    for label, get, form in rows:
        s, b = get(small), get(big)
        ratio = f"{b / s:9.2f}x" if s else "         -"
        target = targets.get(label, lambda s, b: "")(s, b)
        print(f"{label:34}{form.format(s):>14}{form.format(b):>14}{ratio}   {target}")
    opened = big["open"]
    print(f"(reopening used the checkpoint: {opened['from_checkpoint']}; items: {opened['items']:,})")


if __name__ == "__main__":
    main()
