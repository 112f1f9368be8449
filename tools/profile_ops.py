"""Where one operation spends its time: cProfile of N sets, gets, puts or queue gets.

    python tools/profile_ops.py set             # or: get, put, qget
    python tools/profile_ops.py get --n 200000 --top 25

Prints the Python function calls per operation and the functions that take the
most time (cProfile inflates the cost of each call, so read it for where the
time goes, not for absolute speed: tools/bench_core.py and tools/bench.py time
the operations). For syscalls per operation, run it under ``strace -c -f``; for
native frames, under ``py-spy record --native``. docs/PERFORMANCE.md has the
results and what they mean for the speed targets.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import random
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from iodict_log import DurableQueue, IODict  # noqa: E402

VALUE = random.Random(0).randbytes(100)


def workload(op: str, n: int, directory: str):
    """(the store, the loop to profile); the store is filled first for get and qget."""
    keys = [f"key-{i:012d}" for i in range(n)]
    if op in ("set", "get"):
        d = IODict(os.path.join(directory, "s"), auto_compact=False)
        if op == "set":
            return d, lambda: [d.__setitem__(k, VALUE) for k in keys]
        for k in keys:
            d[k] = VALUE
        order = random.Random(1).sample(keys, n)
        return d, lambda: [d[k] for k in order]
    q = DurableQueue(os.path.join(directory, "q"))
    if op == "put":
        return q, lambda: [q.put(VALUE) for _ in range(n)]
    for _ in range(n):
        q.put(VALUE)
    return q, lambda: [q.get() for _ in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("op", choices=["set", "get", "put", "qget"])
    parser.add_argument("--n", type=int, default=100_000, help="operations (default 100,000)")
    parser.add_argument("--top", type=int, default=20, help="functions to list (default 20)")
    args = parser.parse_args()
    directory = tempfile.mkdtemp(prefix="profile_ops-", dir=os.environ.get("BENCH_DIR"))
    try:
        store, loop = workload(args.op, args.n, directory)
        profile = cProfile.Profile()
        profile.enable()
        loop()
        profile.disable()
        store.close()
        stats = pstats.Stats(profile)
        print(f"{args.op}: {stats.total_calls / args.n:.1f} function calls per operation (the loop's own included)")
        stats.sort_stats("tottime").print_stats(args.top)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
