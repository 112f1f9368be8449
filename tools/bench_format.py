#!/usr/bin/env python3
"""The format's hot paths, C core against pure Python and against another checkout, in one run.

    python tools/bench_format.py                          # this checkout: native, pure
    python tools/bench_format.py --other /work/main       # and another checkout (A/B)
    python tools/bench_format.py --records 20000 --rounds 2   # quick

Each variant runs in its own child process (cwd a temporary directory, PYTHONPATH
the checkout, IODICT_LOG_PURE=1 for the pure build), the variants interleaved
round after round; the table gives the median of the rounds and each variant's
ratio to the first. Figures: encode_frame, decode_frame and frame_value (µs per
call; 16-byte keys, 100-byte values), a Scan of a segment of --records records,
opening a store of --records keys without a hint (the scan plus the index),
records() over them, and update() with batches of 1,000 (ms per batch). Opening
from a hint is tools/bench_hint_open.py's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = r"""
import json, os, sys, tempfile, time
from iodict_log import IODict, native
from iodict_log.format import Scan, decode_frame, encode_frame, frame_value

n = int(sys.argv[1])
salt, key, value = 0x5EED5A17, b"k" * 16, b"v" * 100
out = {"build": native.build()}

def per_call(fn, calls):
    started = time.perf_counter()
    fn(calls)
    return (time.perf_counter() - started) / calls * 1e6

def encode(calls):
    for i in range(calls):
        encode_frame(1, 0, i, i, key, value, salt=salt)
frame = encode_frame(1, 0, 1, 1, key, value, salt=salt)
def decode(calls):
    for _ in range(calls):
        decode_frame(frame, 0, salt)
def value_of(calls):
    for _ in range(calls):
        frame_value(frame, salt)
out["encode_frame us"] = per_call(encode, 200_000)
out["decode_frame us"] = per_call(decode, 200_000)
out["frame_value us"] = per_call(value_of, 200_000)

segment = b"".join(encode_frame(1, 0, i, i, b"%016d" % i, value, salt=salt) for i in range(n))
started = time.perf_counter()
assert len(list(Scan(segment, salt))) == n
out["Scan s"] = time.perf_counter() - started

with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "s")
    with IODict(path) as d:
        for start in range(0, n, 1000):
            d.update({f"{i:016d}": "v" * 100 for i in range(start, start + 1000)})
    os.remove(os.path.join(path, "HINT"))
    started = time.perf_counter()
    with IODict(path) as d:
        assert len(d) == n
        out["open without hint s"] = time.perf_counter() - started
        started = time.perf_counter()
        assert sum(1 for _ in d.records()) == n
        out["records() s"] = time.perf_counter() - started
    path = os.path.join(tmp, "u")
    batches = [{f"{b:04d}-{i:011d}": "v" * 100 for i in range(1000)} for b in range(50)]
    with IODict(path, auto_compact=False) as d:
        started = time.perf_counter()
        for batch in batches:
            d.update(batch)
        out["update(1000) ms"] = (time.perf_counter() - started) / len(batches) * 1e3
print(json.dumps(out))
"""


def run(checkout: str, pure: bool, records: int) -> dict:
    env = dict(os.environ, PYTHONPATH=checkout)
    env.pop("IODICT_LOG_PURE", None)
    if pure:
        env["IODICT_LOG_PURE"] = "1"
    with tempfile.TemporaryDirectory() as cwd:
        done = subprocess.run(
            [sys.executable, "-c", CHILD, str(records)], env=env, cwd=cwd, capture_output=True, text=True, timeout=1800
        )
    if done.returncode:
        sys.exit(f"{checkout} (pure={pure}) failed:\n{done.stderr}")
    return json.loads(done.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--other", help="another checkout to compare with (its default build)")
    args = parser.parse_args()
    variants = [("this, native", ROOT, False), ("this, pure", ROOT, True)]
    if args.other:
        variants.append((f"{args.other}, pure", args.other, True))
    results: dict[str, list[dict]] = {name: [] for name, _, _ in variants}
    for _ in range(args.rounds):
        for name, checkout, pure in variants:
            results[name].append(run(checkout, pure, args.records))
    for name, _, pure in variants:
        builds = {r["build"] for r in results[name]}
        assert builds == {"pure" if pure else "native"}, (name, builds)
    figures = [key for key in results[variants[0][0]][0] if key != "build"]
    medians = {name: {f: statistics.median(r[f] for r in runs) for f in figures} for name, runs in results.items()}
    first = variants[0][0]
    print(f"{'figure':22}" + "".join(f"{name:>28}" for name, _, _ in variants))
    for f in figures:
        cells = [f"{medians[name][f]:10.3f} ({medians[name][f] / medians[first][f]:5.2f}x)" for name, _, _ in variants]
        print(f"{f:22}" + "".join(f"{cell:>28}" for cell in cells))
    print(f"(median of {args.rounds} rounds, {args.records:,} records; ratios to '{first}', lower is faster)")


if __name__ == "__main__":
    main()
