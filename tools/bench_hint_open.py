#!/usr/bin/env python3
"""Opening a dict store from its hint, next to pickle.loads of the same index, in one run.

The target (issue 19): opening N keys from the hint takes no longer than
``pickle.loads`` takes to rebuild a plain dict of the same keys to the same int
values (the packed locations). Both are timed side by side, interleaved, and
the ratio of the medians is printed. The store is built once under --path and
reused, so the same script can be run against two checkouts (A/B):

    python tools/bench_hint_open.py                                  # 1,000,000 keys
    PYTHONPATH=/work/main python tools/bench_hint_open.py --path /tmp/h   # another checkout
    IODICT_LOG_PURE=1 python tools/bench_hint_open.py                # the pure-Python build
"""

from __future__ import annotations

import argparse
import gc
import os
import pickle
import statistics
import tempfile
import time

import iodict_log
from iodict_log import IODict, native


def build(path: str, n: int) -> None:
    """A store of n 16-character keys with small values, closed with a hint."""
    with IODict(path) as d:
        for start in range(0, n, 10_000):
            d.update({f"key-{i:012d}": i for i in range(start, min(n, start + 10_000))})
        d.compact()  # (writes the hint)


def open_once(path: str) -> tuple[float, dict]:
    gc.collect()
    started = time.perf_counter()
    d = IODict(path)
    keys = len(d)  # (the index is loaded by now)
    elapsed = time.perf_counter() - started
    locations = dict(d._index.items())
    d.close()
    assert keys, "the store is empty"
    return elapsed, locations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--path", default=os.path.join(tempfile.gettempdir(), "bench_hint_open"))
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    path = os.path.join(args.path, str(args.keys))
    if not os.path.exists(os.path.join(path, "HINT")):
        build(path, args.keys)
    _, locations = open_once(path)
    pickled = pickle.dumps(locations, protocol=pickle.HIGHEST_PROTOCOL)
    opens, loads = [], []
    for _ in range(args.repeat):
        opens.append(open_once(path)[0])
        gc.collect()
        started = time.perf_counter()
        pickle.loads(pickled)
        loads.append(time.perf_counter() - started)
    o, p = statistics.median(opens), statistics.median(loads)
    print(
        f"{iodict_log.__file__} ({native.build()}), {args.keys:,} keys: "
        f"open from hint {o:.3f} s, pickle.loads {p:.3f} s, ratio {o / p:.2f}"
    )


if __name__ == "__main__":
    main()
