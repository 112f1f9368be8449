#!/usr/bin/env python3
"""Core speed and memory figures of iodict_log, next to the raw-syscall floor, in one run.

Measures on N keys with 100-byte values (defaults: the figures the foundation
issue asks for): sets/s, gets/s, open time, and the index's bytes per key at
--index-keys keys. The floor is what the same machine does with pre-framed
records and bare os.write / os.pread, so the ratios say how much the Python
layers cost.

    python tools/bench_core.py                 # 100,000 keys, index at 1,000,000
    python tools/bench_core.py --keys 20000 --index-keys 100000   # quick
    IODICT_LOG_PURE=1 python tools/bench_core.py   # the pure-Python build (the first line says which ran)

tools/bench.py runs the builds side by side (iodict_log, iodict_log-pure, --baseline).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import tempfile
import time

from bench_workloads import index_sizes

from iodict_log import IODict, native
from iodict_log.format import encode_frame


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def floor_run(directory: str, keys: list[str], value: bytes) -> tuple[float, float]:
    """Raw floor: pre-framed records appended with os.write, read back with os.pread."""
    frames = [encode_frame(1, 0, i, i, k.encode(), value, salt=0) for i, k in enumerate(keys)]
    path = os.path.join(directory, "floor.log")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC, 0o644)
    offsets = {}
    try:

        def write() -> None:
            pos = 0
            for k, f in zip(keys, frames):
                os.write(fd, f)
                offsets[k] = (pos, len(f))
                pos += len(f)

        t_write = timed(write)
        order = keys[:]
        random.Random(1).shuffle(order)
        t_read = timed(lambda: [os.pread(fd, offsets[k][1], offsets[k][0]) for k in order])
    finally:
        os.close(fd)
    return len(keys) / t_write, len(keys) / t_read


def store_run(directory: str, keys: list[str], value: bytes) -> tuple[float, float, float]:
    path = os.path.join(directory, "store")
    shutil.rmtree(path, ignore_errors=True)
    d = IODict(path)

    def write() -> None:
        for k in keys:
            d[k] = value

    t_write = timed(write)
    order = keys[:]
    random.Random(1).shuffle(order)
    t_read = timed(lambda: [d[k] for k in order])
    d.close()
    started = time.perf_counter()
    d = IODict(path)
    t_open = time.perf_counter() - started
    assert len(d) == len(keys)
    d.close()
    return len(keys) / t_write, len(keys) / t_read, t_open


def index_bytes_per_key(directory: str, n: int) -> tuple[float, float, float]:
    """(index bytes per key without the keys, the keys' own bytes per key, open seconds) at n keys."""
    path = os.path.join(directory, "index")
    value = b"v" * 100
    d = IODict(path)
    batch = 10_000
    for start in range(0, n, batch):
        d.update((f"key-{i:012d}", value) for i in range(start, min(n, start + batch)))
    d.close()
    started = time.perf_counter()
    d = IODict(path)
    seconds = time.perf_counter() - started
    sizes = index_sizes(d)
    d.close()
    if sizes is None:
        raise SystemExit("this build keeps its index in other structures: see tools/bench.py's peak RSS per key")
    return sizes[0], sizes[1], seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--index-keys", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; the median is reported")
    parser.add_argument("--dir", help="where to put the files (default: a temporary directory)")
    args = parser.parse_args()
    keys = [f"key-{i:08d}" for i in range(args.keys)]
    value = bytes(random.Random(0).getrandbits(8) for _ in range(100))
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        floors = [floor_run(tmp, keys, value) for _ in range(args.repeat)]
        runs = [store_run(tmp, keys, value) for _ in range(args.repeat)]
        per_key, key_size, open_big = index_bytes_per_key(tmp, args.index_keys)
    f_set, f_get = (statistics.median(x) for x in zip(*floors))
    s_set, s_get, s_open = (statistics.median(x) for x in zip(*runs))
    print(
        f"iodict_log core figures ({native.build()} build): {args.keys:,} keys, 100-byte values, "
        f"median of {args.repeat} runs"
    )
    print("| figure | iodict_log | raw floor | ratio |")
    print("|---|---:|---:|---:|")
    print(f"| sets/s (sync=False) | {s_set:,.0f} | {f_set:,.0f} (os.write) | {s_set / f_set:.2f} |")
    print(f"| gets/s (random) | {s_get:,.0f} | {f_get:,.0f} (os.pread) | {s_get / f_get:.2f} |")
    print(f"| open, {args.keys:,} keys | {s_open:.3f} s | | |")
    print(f"| open, {args.index_keys:,} keys | {open_big:.3f} s | | |")
    print(f"| index bytes/key at {args.index_keys:,} keys | {per_key:.1f} + key | | |")
    print(f"| (the keys themselves, 16-char str) | {key_size:.1f} | | |")


if __name__ == "__main__":
    main()
