"""A/B of the write lock, the idle catch-up and single sets/gets: another checkout (argv[1],
e.g. an export of main with its C core built in place) against this one, each in its pure
and native build, interleaved runs in fresh processes; the best batch of many, best of REPS.

    python tools/bench_lock.py /tmp/main-export    (REPS=5 by default)

Also times raw lock/unlock pairs here: flock, the mutex through ctypes, the mutex through C.
"""

import json
import os
import subprocess
import sys

REPS = int(os.environ.get("REPS", "5"))
CHILD = r"""
import json, os, sys, tempfile, time, fcntl
from iodict_log import IODict, native
from iodict_log import filelock as fl
N = 2000
out = {}
d = tempfile.mkdtemp()
def best(fn, n, k=40):
    b = 1e9
    for _ in range(k):
        t = time.perf_counter(); fn(n); b = min(b, (time.perf_counter() - t) / n)
    return b * 1e6
# the store's lock, as the log takes it
store = IODict(os.path.join(d, "s"))
lock = store._log.file_lock
def pairs(n):
    for _ in range(n):
        with lock:
            pass
out["FileLock pair"] = best(pairs, N)
def sets(n):
    for i in range(n):
        store[i % 1000] = "x" * 100
out["set"] = best(sets, N)
def gets(n):
    for i in range(n):
        store[i % 1000]
out["get"] = best(gets, N)
log = store._log
def refreshes(n):
    for i in range(n):
        log.refresh()
out["refresh (idle)"] = best(refreshes, N)
if sys.argv[1] == "raw":
    fd = os.open(os.path.join(d, "FLOCK"), os.O_RDWR | os.O_CREAT)
    def flocks(n):
        for _ in range(n):
            fcntl.flock(fd, fcntl.LOCK_EX); fcntl.flock(fd, fcntl.LOCK_UN)
    out["raw flock pair"] = best(flocks, N)
    if lock._mutex:
        m = lock._mutex
        p = fl.PURE_MUTEX
        pt, pg = p["take_mutex"], p["give_mutex"]
        def ctypes_pairs(n):
            for _ in range(n):
                pt(m, None); pg(m)
        out["raw ctypes mutex pair"] = best(ctypes_pairs, N)
        if native.core is not None:
            ct, cg = native.core.take_mutex, native.core.give_mutex
            def c_pairs(n):
                for _ in range(n):
                    ct(m, None); cg(m)
            out["raw native mutex pair"] = best(c_pairs, N)
store.close()
print(json.dumps(out))
"""
MAIN = sys.argv[1] if len(sys.argv) > 1 else "/tmp/mainA"
HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
variants = {
    "main-pure": (MAIN, "1"),
    "main-native": (MAIN, ""),
    "lock-pure": (HERE, "1"),
    "lock-native": (HERE, ""),
}
results = {}
for _rep in range(REPS):
    for name, (root, pure) in variants.items():
        env = dict(os.environ, PYTHONPATH=root, IODICT_LOG_PURE=pure)
        r = subprocess.run(
            [sys.executable, "-c", CHILD, "raw" if name.startswith("lock") else "-"],
            env=env,
            capture_output=True,
            text=True,
            cwd="/tmp",
        )
        if r.returncode:
            sys.exit(r.stderr)
        for k, v in json.loads(r.stdout).items():
            results.setdefault((name, k), []).append(v)
rows = sorted({k for _, k in results})
title = f"us/op (best of {REPS})"
print(f"{title:24}" + "".join(f"{n:>13}" for n in variants))
for k in rows:
    print(f"{k:24}" + "".join(f"{min(results[(n, k)]):13.3f}" if (n, k) in results else f"{'':>13}" for n in variants))
for b in ("pure", "native"):
    for k in ("FileLock pair", "set", "get"):
        print(f"ratio lock/main {b:6} {k:14} {min(results[('lock-' + b, k)]) / min(results[('main-' + b, k)]):.3f}")
