"""Speed of ``import_iodict``: keys per second from a real iodict 0.0.8 directory.

Writes ``--keys`` keys with iodict 0.0.8 itself (``pip install iodict==0.0.8``,
part of the ``[test]`` extra) into DIR/old, in xattr mode where the file system
has xattrs, each value a small dict like an application's record; then imports
it ``--runs`` times into a fresh DIR/new (the page cache warm, as after an
application ran) and prints keys/s for each run and the median, for the default
(pickles kept) and, with ``--msgpack``, for converting::

    python tools/bench_import.py --dir /tmp/bench-import --keys 100000
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time

import iodict

from iodict_log.importer import import_iodict


def build(old: str, keys: int) -> None:
    store = iodict.IODict(old)
    for i in range(keys):
        store[f"user:{i:08d}"] = {"id": i, "name": f"name-{i}", "score": i * 0.5, "tags": ["a", "b"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", required=True, help="a scratch directory (its old/ is reused if complete)")
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--msgpack", action="store_true", help="convert values to msgpack (import_iodict msgpack=True)")
    args = parser.parse_args()
    old, new = os.path.join(args.dir, "old"), os.path.join(args.dir, "new")
    if not os.path.isdir(old) or len(os.listdir(old)) != args.keys:
        shutil.rmtree(old, ignore_errors=True)
        started = time.perf_counter()
        build(old, args.keys)
        print(f"iodict 0.0.8 wrote {args.keys:,} keys in {time.perf_counter() - started:.1f} s")
    mode = "msgpack" if args.msgpack else "pickles kept"
    rates = []
    for run in range(args.runs):
        shutil.rmtree(new, ignore_errors=True)
        started = time.perf_counter()
        summary = import_iodict(old, new, msgpack=args.msgpack)
        seconds = time.perf_counter() - started
        assert summary.imported == args.keys and not summary.skipped, summary[:2]
        rates.append(args.keys / seconds)
        print(
            f"run {run + 1}: {summary.imported:,} keys ({summary.mode} mode, {mode}) in {seconds:.2f} s: "
            f"{rates[-1]:,.0f} keys/s"
        )
    print(f"median: {statistics.median(rates):,.0f} keys/s")


if __name__ == "__main__":
    main()
