#!/usr/bin/env python3
"""Random gets on a dict store of 2,000 segments next to the same keys in 20 (issue 16).

With at most ``max_open_segments`` descriptors per store, most of a 2,000-segment
store's segments are parked (descriptor closed). The target: random gets on it
run at >= 0.8x the rate on a 20-segment store of the same keys and values, in
the native build (a parked segment is read through its mapping); the pure build
reopens a parked segment for each read that lands on it, and its figure is
printed too (a child process with IODICT_LOG_PURE=1). Both stores are built once
under --path (one segment, then compacted into small segments) and reused:

    python tools/bench_open_files.py                    # both builds, 200,000 keys
    python tools/bench_open_files.py --keys 50000 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

import iodict_log
from iodict_log import IODict, native


def build(path: str, keys: list[str], segments: int) -> None:
    """The keys (40-byte values) compacted into about ``segments`` segments."""
    staging = path + ".tmp"
    with IODict(staging, segment_bytes=2**31, compression=None, auto_compact=False) as d:
        for start in range(0, len(keys), 10_000):
            d.update({key: key.ljust(40, "v") for key in keys[start : start + 10_000]})
        size = d.stats()["disk_bytes"]
    with IODict(staging, segment_bytes=max(4096, size // segments), compression=None, auto_compact=False) as d:
        d.compact()
    os.rename(staging, path)


def held(path: str) -> int:
    """Descriptors this process holds on files of the store at ``path``."""
    prefix = os.path.realpath(path) + os.sep
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith(prefix)
        except FileNotFoundError:  # the descriptor listdir itself used
            pass
    return count


def measure(path: str, keys: list[str], rounds: int, cap: int) -> tuple[int, int, float]:
    """(segments, descriptors held, median gets per second of CPU time) over random gets."""
    order = keys[:]
    random.Random(1).shuffle(order)
    with IODict(path, compression=None, auto_compact=False, max_open_segments=cap) as d:
        segments = d.stats()["segments"]
        for key in order:  # warm: every segment read once (the native build maps each)
            d[key]
        rates = []
        for _ in range(rounds):
            started = time.process_time()
            for key in order:
                d[key]
            rates.append(len(order) / (time.process_time() - started))
        return segments, held(path), statistics.median(rates)


def report(args: argparse.Namespace) -> None:
    keys = [f"key-{i:012d}" for i in range(args.keys)]
    results = []
    for segments in (2000, 20):
        path = os.path.join(args.path, f"{args.keys}-{segments}")
        if not os.path.exists(path):
            build(path, keys, segments)
        results.append(measure(path, keys, args.rounds, args.cap))
    (many, many_fds, many_rate), (few, few_fds, few_rate) = results
    print(
        f"{native.build()} build ({iodict_log.__file__}), {args.keys:,} keys, max_open_segments={args.cap}:\n"
        f"  {many:5,} segments: {many_fds:3} descriptors held (at most cap + LOCK = {args.cap + 1}), "
        f"{many_rate:10,.0f} gets/s\n"
        f"  {few:5,} segments: {few_fds:3} descriptors held, {few_rate:10,.0f} gets/s\n"
        f"  ratio {many:,} / {few:,} segments: {many_rate / few_rate:.2f}x",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cap", type=int, default=32, help="max_open_segments")
    parser.add_argument("--path", default=os.path.join(tempfile.gettempdir(), "bench_open_files"))
    parser.add_argument("--this-build", action="store_true", help="only the build this process runs")
    args = parser.parse_args()
    os.makedirs(args.path, exist_ok=True)
    report(args)
    if not args.this_build and native.build() != "pure":
        command = [sys.executable, os.path.abspath(__file__), "--this-build", *sys.argv[1:]]
        subprocess.run(command, env={**os.environ, "IODICT_LOG_PURE": "1"}, check=True)


if __name__ == "__main__":
    main()
