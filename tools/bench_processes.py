#!/usr/bin/env python3
"""What cross-process coordination costs: one process alone vs. with a second process on the path.

Three runs on the same machine in one invocation, each on N keys with 100-byte
values (median of --repeat runs):

- alone:        this process is the only one with the store open;
- second idle:  another process has the same path open and does nothing;
- second busy:  another process writes its own keys at the same time.

Every call catches up with the log's end (one lseek) and every write takes the
file lock (one flock pair) in all three; "second busy" adds the real cost of
sharing: lock waits and reading the other's appends. A fourth, reference run
stubs the lock and the catch-up out, to show what coordination costs per call.

    python tools/bench_processes.py [--keys 100000] [--repeat 3]
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

from iodict_log import IODict

SECOND = """
import sys
from iodict_log import IODict
path, mode, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
d = IODict(path)
print("ready", flush=True)
if mode == "busy":
    value = b"w" * 100
    i = 0
    while sys.stdin.readable():
        d[f"other-{i % n}"] = value
        i += 1
        if i % 1000 == 0 and d.get("stop"):
            break
    print(i, flush=True)
else:
    sys.stdin.readline()
"""


class _NoLock:
    """Stands in for the file lock in the 'no coordination' reference run."""

    held = True

    def __enter__(self) -> None:
        pass

    def __exit__(self, *exc: object) -> None:
        pass

    def close(self) -> None:
        pass


def run(path: str, keys: list[str], second: str | None) -> tuple[float, float, int]:
    d = IODict(path)
    if second == "none":  # reference: what the same calls cost with no coordination at all
        d._log.file_lock.close()
        d._log.file_lock = _NoLock()
        d._log.refresh = lambda defer_reload=False: None
        second = None
    proc = None
    if second:
        proc = subprocess.Popen(
            [sys.executable, "-c", SECOND, path, second, str(len(keys))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout.readline().strip() == "ready"
    value = b"v" * 100
    started = time.perf_counter()
    for k in keys:
        d[k] = value
    t_set = time.perf_counter() - started
    order = keys[:]
    random.Random(1).shuffle(order)
    started = time.perf_counter()
    for k in order:
        d[k]
    t_get = time.perf_counter() - started
    other_writes = 0
    if proc:
        d["stop"] = True
        out, _ = proc.communicate("stop\n", timeout=600)
        other_writes = int(out.strip() or 0)
    d.close()
    return len(keys) / t_set, len(keys) / t_get, other_writes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    keys = [f"key-{i:08d}" for i in range(args.keys)]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        runs_wanted = (
            ("alone", None),
            ("alone, no coordination (reference)", "none"),
            ("second idle", "idle"),
            ("second busy", "busy"),
        )
        for name, second in runs_wanted:
            runs = [run(os.path.join(tmp, f"run-{len(results)}-{r}"), keys, second) for r in range(args.repeat)]
            results[name] = [statistics.median(x) for x in zip(*runs)]
    base_set, base_get, _ = results["alone"]
    print(f"{args.keys:,} keys, 100-byte values, sync=False, median of {args.repeat}")
    print("| run | sets/s | vs alone | gets/s | vs alone | the other process's sets |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, (s, g, other) in results.items():
        print(f"| {name} | {s:,.0f} | {s / base_set:.2f} | {g:,.0f} | {g / base_get:.2f} | {other:,.0f} |")


if __name__ == "__main__":
    main()
