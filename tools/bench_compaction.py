"""Compaction and fast-open figures: what issue "Online compaction, fast open" asks for.

    python tools/bench_compaction.py            # all three, ~2 minutes
    python tools/bench_compaction.py --only open --keys 1000000

1. disk use: an overwrite-heavy store (10 rounds over the same 10,000 keys,
   100-byte values) before and after ``compact()``, and with auto_compact on;
2. open: opening a store of N keys (and reading one) from its hint file and by
   scanning (hint deleted), median of 3;
3. pause: the longest single ``set()`` seen by a writer in another process
   while this one compacts a ~200 MB store, next to the longest one in an equal
   window before the compaction.
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
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from iodict_log import IODict  # noqa: E402

VALUE = b"v" * 100


def _overwrite(d: IODict) -> dict:
    for _ in range(10):
        for i in range(10_000):
            d[f"key{i:06d}"] = VALUE
    return d.stats()


def _times_live(stats: dict) -> str:
    return f"{stats['disk_bytes']:,} bytes ({stats['disk_bytes'] / stats['live_bytes']:.2f}x live)"


def disk_use(workdir: str) -> None:
    path = os.path.join(workdir, "overwrite")
    with IODict(path, auto_compact=False) as d:
        before = _overwrite(d)
        summary = d.compact()
        after = d.stats()
    shutil.rmtree(path)
    with IODict(path) as d:  # the default: auto_compact=True
        auto = _overwrite(d)
    shutil.rmtree(path)
    print("## disk use: 10 rounds over the same 10,000 keys, 100-byte values")
    print(f"- live bytes: {before['live_bytes']:,}")
    print(f"- before compact(): {_times_live(before)}")
    print(f"- after compact(): {_times_live(after)}, in {summary['seconds']:.3f} s")
    print(f"- with auto_compact (defaults: ratio 0.4, min 1 MiB): {_times_live(auto)}")


def open_time(workdir: str, keys: int) -> None:
    path = os.path.join(workdir, "open")
    with IODict(path, auto_compact=False) as d:
        for start in range(0, keys, 10_000):
            d.update((f"key{i:012d}", VALUE) for i in range(start, min(keys, start + 10_000)))
    hint_bytes = os.path.getsize(os.path.join(path, "HINT"))

    def timed_open() -> tuple[float, bool]:
        started = time.perf_counter()
        d = IODict(path, auto_compact=False)
        d["key000000000005"]
        seconds = time.perf_counter() - started
        from_hint = d.stats()["index_from_hint"]
        d._log.hinted_seq = d._log.last_seq  # close without writing a new hint
        d.close()
        return seconds, from_hint

    with_hint = [timed_open() for _ in range(3)]
    assert all(h for _, h in with_hint)
    os.rename(os.path.join(path, "HINT"), os.path.join(workdir, "HINT.saved"))
    without = [timed_open() for _ in range(3)]
    assert not any(h for _, h in without)
    shutil.rmtree(path)
    t_hint = statistics.median(s for s, _ in with_hint)
    t_scan = statistics.median(s for s, _ in without)
    print(f"## open + first get, {keys:,} keys (median of 3)")
    print(f"- with hint file ({hint_bytes / 2**20:.0f} MiB): {t_hint:.3f} s")
    print(f"- without (scan): {t_scan:.3f} s ({t_scan / t_hint:.1f}x slower)")


WRITER = """
import json, os, sys, time
from iodict_log import IODict
d = IODict(sys.argv[1], auto_compact=False)
stop_file = sys.argv[2]
print("ready", flush=True)
slow = []  # (when, seconds) of every set slower than 1 ms
count = 0
value = b"w" * 100
perf = time.perf_counter
while count % 1000 or not os.path.exists(stop_file):
    start = perf()
    d[f"writer{count % 50_000}"] = value
    took = perf() - start
    if took > 0.001:
        slow.append((start, took))
    count += 1
print(count, json.dumps(slow), flush=True)
"""


def writer_pause(workdir: str, megabytes: int) -> None:
    path = os.path.join(workdir, "pause")
    stop_file = os.path.join(workdir, "stop")
    keys = 100_000
    with IODict(path, auto_compact=False) as d:
        rounds = 0
        while d.stats()["disk_bytes"] < megabytes * 2**20:
            for start in range(0, keys, 10_000):
                d.update((f"key{i:08d}", VALUE + bytes([rounds % 256])) for i in range(start, start + 10_000))
            rounds += 1
        size = d.stats()["disk_bytes"]
    d = IODict(path, auto_compact=False)
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, path, stop_file], stdout=subprocess.PIPE, text=True, env=env
    )
    assert writer.stdout.readline() == "ready\n"
    baseline = 3.0
    began = time.perf_counter()  # CLOCK_MONOTONIC on Linux: comparable between the two processes
    time.sleep(baseline)  # the writer alone (a benchmark: the waiting is the measurement)
    compact_start = time.perf_counter()
    summary = d.compact()
    compact_end = time.perf_counter()
    time.sleep(1.0)  # the writer meets the SEAL and reloads its index from the new hint
    open(stop_file, "w").close()
    count, slow = writer.stdout.readline().split(" ", 1)
    writer.wait()
    d.close()
    shutil.rmtree(path)
    os.unlink(stop_file)
    slow = json.loads(slow)
    before = [took for when, took in slow if began <= when < compact_start]
    during = [took for when, took in slow if compact_start <= when <= compact_end + 1.0]
    print(f"## longest set() in another process while a {size / 2**20:.0f} MiB store compacts")
    print(
        f"- compaction: {summary['seconds']:.2f} s, {summary['bytes_before']:,} -> {summary['bytes_after']:,} bytes, "
        f"{summary['live_keys']:,} live keys; the writer made {int(count):,} sets in all"
    )
    print(f"- longest set() in the {baseline:.0f} s before: {max(before, default=0) * 1000:.1f} ms")
    print(
        f"- longest set() during the compaction and the second after it: {max(during, default=0) * 1000:.1f} ms "
        f"({len(during)} sets over 1 ms)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["disk", "open", "pause"], help="run one measurement")
    parser.add_argument("--keys", type=int, default=1_000_000, help="keys for the open measurement")
    parser.add_argument("--megabytes", type=int, default=200, help="store size for the pause measurement")
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="bench_compaction-", dir=os.environ.get("BENCH_DIR"))
    try:
        if args.only in (None, "disk"):
            disk_use(workdir)
        if args.only in (None, "open"):
            open_time(workdir, args.keys)
        if args.only in (None, "pause"):
            writer_pause(workdir, args.megabytes)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
