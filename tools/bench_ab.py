#!/usr/bin/env python3
"""A/B: IODict sets and gets of plain str values, this checkout against another, in one run.

Each round runs one child process per checkout (the order swapped every round:
the machine's speed drifts), each setting then getting --keys str keys with
100-character str values in a fresh store, timing CPU per call; the medians
and their ratio (this ÷ the other) are printed. The children import the
package from each checkout's directory (its C core built in place, or
IODICT_LOG_PURE=1 for the pure-Python build of both), ahead of any installed copy:

    python tools/bench_ab.py ../old-checkout              # 9 rounds of 50,000 keys
    IODICT_LOG_PURE=1 python tools/bench_ab.py ../old-checkout --rounds 5
"""

from __future__ import annotations

import argparse
import os
import site
import statistics
import subprocess
import sys
import tempfile

CHILD = r"""
import sys, tempfile, time
import iodict_log
from iodict_log import IODict
n = int(sys.argv[1])
keys = [f"key-{i:08d}" for i in range(n)]
value = "v" * 100
with IODict(tempfile.mkdtemp() + "/s", auto_compact=False) as d:
    started = time.process_time()
    for key in keys:
        d[key] = value
    sets = n / (time.process_time() - started)
    started = time.process_time()
    for key in keys:
        d[key]
    gets = n / (time.process_time() - started)
print(sets, gets, iodict_log.native.build(), iodict_log.__file__)
"""


def run(checkout: str, keys: int) -> tuple[float, float, str, str]:
    # -S: no site hooks, so an editable install's import hook cannot shadow the checkout;
    # and not run from a directory holding a package of its own (sys.path[0]).
    path = os.pathsep.join([checkout, *site.getsitepackages()])
    command = [sys.executable, "-S", "-c", CHILD, str(keys)]
    env = {**os.environ, "PYTHONPATH": path}
    out = subprocess.run(command, env=env, cwd=tempfile.gettempdir(), capture_output=True, text=True, check=True)
    sets, gets, build, where = out.stdout.split()
    return float(sets), float(gets), build, where


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("other", help="the other checkout's directory")
    parser.add_argument("--keys", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    results: dict[str, list] = {"this": [], "other": []}
    for r in range(args.rounds):
        for name in ("this", "other") if r % 2 == 0 else ("other", "this"):
            results[name].append(run(here if name == "this" else os.path.abspath(args.other), args.keys))
    for name, runs in results.items():
        print(f"{name}: {runs[0][3]} ({runs[0][2]} build)")
    for column, what in ((0, "sets"), (1, "gets")):
        this = statistics.median(r[column] for r in results["this"])
        other = statistics.median(r[column] for r in results["other"])
        print(f"{what}/s: this {this:,.0f}, other {other:,.0f}, ratio {this / other:.3f} (median of {args.rounds})")


if __name__ == "__main__":
    main()
