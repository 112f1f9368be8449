#!/usr/bin/env python3
"""Memory safety of the C core's format code (iodict_log/_format.c): ASan fuzz, leak check.

    python tools/fuzz_asan.py                  # 60 s of fuzz under ASan, then the leak check
    python tools/fuzz_asan.py --seconds 300 --iterations 1000000

1. Builds iodict_log._native twice into a temporary directory, from this checkout's
   sources: once with ``-fsanitize=address -fno-omit-frame-pointer``, once plain.
2. Fuzz (child process, the ASan build, its runtime preloaded with LD_PRELOAD,
   ``PYTHONMALLOC=malloc`` so that every Python object is its own allocation and a
   read past a bytes object is caught, ``ASAN_OPTIONS=detect_leaks=0`` for
   CPython's own noise): random inputs through every C decoder beside its Python
   twin (tools/fuzz_atheris.py's mode 8: decode_frame, header_length, frame_value,
   the scan, the scan's PUT locations, decode_locations), plus encode_frame,
   encode_batch, index_dict and the scan's PUT locations on good and bad arguments,
   for the given seconds or iterations.
3. Leaks (child process, the plain build): each C function, on its success and
   its error paths, called many times, the fast paths on a live store and queue
   too; the process's allocated blocks (sys.getallocatedblocks) and RSS must not
   grow, and a bytearray handed to it must still resize afterwards (no buffer
   export left behind). Then 2,000 opens and closes of a store and a queue (with
   a set, a get, a batch, a replay, a put and a get each): no growth of blocks,
   RSS, mappings (LOCK, the segments' views) or descriptors.

4. Tests (the ASan build, as in 2): the test files that drive the fast paths
   (``--tests``; test_native_iodict, test_native_queue, test_native_lock and
   test_iodict by default), whose C code works on the objects of a live store.

Exits non-zero on any ASan report, failed comparison, leak, failed test or build failure.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build(target: str, sanitize: bool) -> None:
    """iodict_log (sources copied) with _native built into ``target``/iodict_log."""
    package = os.path.join(target, "iodict_log")
    shutil.copytree(os.path.join(ROOT, "iodict_log"), package, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    flags = ["-O1", "-g", "-fsanitize=address", "-fno-omit-frame-pointer"] if sanitize else ["-O2"]
    sources = sorted(glob.glob(os.path.join(package, "_*.c")))
    out = os.path.join(package, "_native" + sysconfig.get_config_var("EXT_SUFFIX"))
    include = sysconfig.get_paths()["include"]
    command = ["gcc", "-shared", "-fPIC", "-Wall", *flags, f"-I{include}", *sources, "-lz", "-o", out]
    subprocess.run(command, check=True)


def child_env(path: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([path, os.path.join(ROOT, "tests"), os.path.join(ROOT, "tools")]))
    env.pop("IODICT_LOG_PURE", None)
    env.update(extra)
    return env


FUZZ = r"""
import os, random, sys, time
import iodict_log
from iodict_log import _native
assert _native.__file__.startswith(sys.argv[1]), _native.__file__
import fuzz_atheris
from iodict_log.format import py_encode_batch, py_encode_frame
from test_native_format import outcome

seconds, iterations = float(sys.argv[2]), int(sys.argv[3])
rng = random.Random(int(sys.argv[4]))
deadline, done = time.monotonic() + seconds, 0

def any_int():
    return rng.choice([0, 1, 255, 256, -1, 2**32 - 1, 2**63, 2**64 - 1, 2**64, 1.5, "x", rng.getrandbits(70)])

def any_bytes():
    choices = [b"", b"k", rng.randbytes(rng.randrange(300)), bytearray(b"ab"), memoryview(b"xyz")[1:], "s", None]
    return rng.choice(choices)

while done < iterations and time.monotonic() < deadline:
    data = rng.randbytes(rng.randrange(1, 700))
    fuzz_atheris.check_native(fuzz_atheris.Input(data))
    args = [any_int(), any_int(), any_int(), any_int(), any_bytes(), any_bytes()]
    assert outcome(_native.encode_frame, *args, salt=any_int())[0] in ("ok", "raises")
    entries = [tuple([any_int(), any_int(), any_bytes(), any_bytes(), any_int()]) for _ in range(rng.randrange(4))]
    if rng.random() < 0.5:
        entries = [
            (1, 0, b"k" * rng.randrange(50), rng.randbytes(rng.randrange(200)), rng.getrandbits(62))
            for _ in range(rng.randrange(20))
        ]
    bits = rng.getrandbits
    batch = (entries, bits(62), bits(63), bits(63), bits(31), rng.randrange(2**16), bits(32))
    got, expected = outcome(_native.encode_batch, *batch), outcome(py_encode_batch, *batch)
    assert got == expected or (got[0] == expected[0] == "raises"), (batch, got, expected)
    where = [any_int(), any_int()] if rng.random() < 0.5 else [rng.randrange(2**16), rng.randrange(2**32)]
    walk = (data, 7, rng.randrange(len(data) + 1), True, rng.random() < 0.5, [], 0, 0, *where)
    assert outcome(_native.scan, *walk)[0] in ("ok", "raises")
    keys = [rng.randbytes(2) for _ in range(rng.randrange(50))]
    assert _native.index_dict(keys, list(range(len(keys)))) == dict(zip(keys, range(len(keys))))
    done += 1
print(f"{done} iterations")
"""

LEAKS = r"""
import gc, os, sys
from iodict_log import _native
assert _native.__file__.startswith(sys.argv[1]), _native.__file__
from iodict_log.format import COUNT, Damage, Frame, encode_frame
from iodict_log.hintfile import LOCATION_SIZE
from iodict_log.index import pack_location
_native.setup(Frame, Damage)
SALT = 7

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

frame = encode_frame(1, 0, 1, 1, b"key", b"value" * 40, salt=SALT)
batch = encode_frame(3, 0, 2, 2, b"", COUNT.pack(1), salt=SALT) + encode_frame(1, 4, 3, 3, b"m", b"x", salt=SALT)
segment = (frame + b"\xd1\x0cjunk" + batch + encode_frame(5, 0, 9, 9, b"", b"", salt=SALT) + frame[:-3]) * 20
put, put_member = (encode_frame(16, flags, 4, 4, b"", b"item" * 20, salt=SALT) for flags in (0, 4))
puts = (put + b"\xd1\x0cjunk" + batch[:40] + put_member + put + frame[:-3]) * 20  # (batch[:40]: its BEGIN)
locations = b"".join(pack_location(1000 + i, 0, 36 * i, 36).to_bytes(LOCATION_SIZE, "little") for i in range(50))
bad_locations = locations[:LOCATION_SIZE * 3] + pack_location(1, 0, 0, 36).to_bytes(LOCATION_SIZE, "little")
entries = [(1, 0, b"k%d" % i, b"v" * i, 10**18 + i) for i in range(20)]
keys = [f"k{i}" for i in range(100)]
import itertools, tempfile, iodict_log
store = iodict_log.IODict(tempfile.mkdtemp() + "/s", auto_compact=False)
queue = iodict_log.DurableQueue(tempfile.mkdtemp() + "/q")
store["seed"] = queue.put(0)  # (the first call of each catches up in Python)
pairs = [(f"u{i}", "v" * i) for i in range(10)]
queue.put(1)
acked, held = queue.lease(), []
acked.ack()  # (acked: a second ack is refused, LeaseExpiredError)

def swallow(fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except Exception:
        pass

def scan(buf, complete, *where, committed=False):
    resume, damage = 0, []
    while resume is not None:
        resume = _native.scan(buf, SALT, resume, complete, committed, damage, 0, 0, *where)[4]

CALLS = {
    "encode_frame": lambda: _native.encode_frame(1, 0, 1, 1, b"key", b"value", salt=SALT),
    "encode_frame, refused": lambda: swallow(_native.encode_frame, 1, 0, 2**64, 1, b"k", bytearray(b"v"), salt=SALT),
    "encode_frame, not a buffer": lambda: swallow(_native.encode_frame, 1, 0, 1, 1, b"k", "v", salt=SALT),
    "decode_frame": lambda: _native.decode_frame(bytearray(segment), 0, SALT),
    "decode_frame, none": lambda: _native.decode_frame(segment, 3, SALT),
    "decode_frame, not a buffer": lambda: swallow(_native.decode_frame, "x", 0, SALT),
    "frame_value": lambda: _native.frame_value(bytearray(frame), SALT),
    "frame_value, none": lambda: _native.frame_value(frame[:-1], SALT),
    "header_length": lambda: _native.header_length(memoryview(segment), 0, SALT),
    "scan": lambda: scan(bytearray(segment), False),
    "scan, complete": lambda: scan(segment, True),
    "scan, refused": lambda: swallow(_native.scan, segment, SALT, -1, False, False, [], 0, 0),
    "scan, PUT locations": lambda: scan(bytearray(puts), True, 3, 4096),
    "scan, committed PUT locations": lambda: scan(bytearray(puts), False, 3, 4096, committed=True),
    "scan, PUT locations refused": lambda: swallow(_native.scan, segment, SALT, 0, False, False, [], 0, 0, 2**16, 0),
    "encode_batch": lambda: _native.encode_batch(entries, 1, 2, 3, 100, 1, SALT),
    "encode_batch, refused mid-way": lambda: swallow(
        _native.encode_batch, entries + [(1, 0, bytearray(b"k"), None, 1)], 1, 2, 3, 0, 0, SALT
    ),
    "encode_batch, bad field": lambda: swallow(
        _native.encode_batch, entries + [(1, 0, b"k", bytearray(b"v"), -1)], 1, 2, 3, 0, 0, SALT
    ),
    "decode_locations": lambda: _native.decode_locations(bytearray(locations), [36 * 50]),
    "decode_locations, refused": lambda: swallow(_native.decode_locations, bad_locations, [36 * 50]),
    "decode_locations, bad sizes": lambda: swallow(_native.decode_locations, locations, [1, "x"]),
    "index_dict": lambda: _native.index_dict(keys, list(range(100))),
    "index_dict, unhashable": lambda: swallow(_native.index_dict, [[1]], [1]),
    # the fast paths, on a live store and queue
    "d[key] = value": lambda: store.__setitem__("k", "v" * 50),
    "d[key] = value, a dict": lambda: store.__setitem__("k", {"a": [1, (2, 3)]}),
    "d[key] = value, refused": lambda: swallow(store.__setitem__, "k", object()),
    "d[key]": lambda: store["k"],
    "d[key], missing": lambda: swallow(store.__getitem__, "missing"),
    "d.update(pairs)": lambda: store.update(pairs),
    "d.records()": lambda: list(itertools.islice(store.records(), 20)),
    "q.put(item), q.get()": lambda: (queue.put("x" * 30), queue.get()),
    "q.lease(), lease.ack()": lambda: (queue.put("x" * 30), queue.lease().ack()),
    "q.lease() while one is held": lambda: (queue.put("y"), queue.put("z"), held.append(queue.lease()), queue.get(),
                                            held.pop().ack()),
    "lease.ack(), refused": lambda: swallow(acked.ack),
}
failed = []
for name, call in CALLS.items():
    for _ in range(2000):
        call()
    gc.collect()
    blocks, size = sys.getallocatedblocks(), rss()
    for _ in range(20000):
        call()
    gc.collect()
    grown, rss_grown = sys.getallocatedblocks() - blocks, rss() - size
    status = "ok" if grown < 200 and rss_grown < 4 * 2**20 else "LEAK"
    print(f"{name:34} blocks {grown:+6d}  rss {rss_grown / 2**10:+8.0f} KiB  {status}")
    if status != "ok":
        failed.append(name)
for buf in (bytearray(segment), bytearray(frame), bytearray(locations)):
    for fn, args in ((_native.decode_frame, (buf, 0, SALT)), (_native.frame_value, (buf, SALT)),
                     (_native.header_length, (buf, 0, SALT)), (_native.decode_locations, (buf, [10**6]))):
        swallow(fn, *args)
    swallow(_native.scan, buf, SALT, 0, True, False, [], 0, 0)
    swallow(_native.scan, buf, SALT, 0, True, True, [], 0, 0, 1, 0)
    buf.extend(b"x")  # (BufferError if a view of it was not released)
sys.exit(f"leaks in: {failed}" if failed else 0)
"""


OPEN_CLOSE = r"""
import gc, os, sys, tempfile, iodict_log
from iodict_log import _native
assert _native.__file__.startswith(sys.argv[1]), _native.__file__
d_path, q_path = tempfile.mkdtemp() + "/s", tempfile.mkdtemp() + "/q"

def counts():
    gc.collect()
    with open("/proc/self/statm") as f:
        rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    with open("/proc/self/maps") as f:
        maps = sum(1 for _ in f)
    return sys.getallocatedblocks(), rss, maps, len(os.listdir("/proc/self/fd"))

def once():
    with iodict_log.IODict(d_path) as d:
        d["k"] = "v" * 50
        d["k"]
        d.update([("a", 1), ("b", 2)])
        next(d.records())
    with iodict_log.DurableQueue(q_path) as q:
        q.put("x")
        q.get()

for _ in range(200):
    once()
before = counts()
for _ in range(2000):
    once()
blocks, rss, maps, fds = (now - then for now, then in zip(counts(), before))
print(f"2,000 opens and closes: blocks {blocks:+d}, rss {rss / 2**10:+.0f} KiB, mappings {maps:+d}, fds {fds:+d}")
sys.exit(0 if blocks < 200 and rss < 8 * 2**20 and maps <= 2 and fds == 0 else 1)
"""

FAST_PATH_TESTS = ("test_native_iodict.py", "test_native_queue.py", "test_native_lock.py", "test_iodict.py")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--iterations", type=int, default=10**9)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument(
        "--tests",
        nargs="*",
        default=list(FAST_PATH_TESTS),
        help="test files run on the ASan build afterwards, for the fast paths (default: %(default)s; none: skip)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fuzz_asan-") as tmp:
        asan, plain = os.path.join(tmp, "asan"), os.path.join(tmp, "plain")
        build(asan, sanitize=True)
        build(plain, sanitize=False)
        libasan = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True, check=True)
        env = child_env(asan, LD_PRELOAD=libasan.stdout.strip(), ASAN_OPTIONS="detect_leaks=0", PYTHONMALLOC="malloc")
        print(f"fuzz under ASan: {args.seconds:g} s at most, seed {args.seed}", flush=True)
        fuzz = subprocess.run(
            [sys.executable, "-c", FUZZ, asan, str(args.seconds), str(args.iterations), str(args.seed)],
            env=env,
            cwd=tmp,
            capture_output=True,
            text=True,
            timeout=args.seconds + 600,
        )
        print(fuzz.stdout.strip())
        asan_report = "AddressSanitizer" in fuzz.stderr
        if fuzz.returncode or asan_report:
            print(fuzz.stderr[-20000:], file=sys.stderr)
            sys.exit(f"fuzz: exit status {fuzz.returncode}{', an ASan report' if asan_report else ''}")
        print("leak check (plain build):", flush=True)
        leaks = subprocess.run([sys.executable, "-c", LEAKS, plain], env=child_env(plain), cwd=tmp, timeout=1800)
        if leaks.returncode:
            sys.exit("leak check failed")
        opened = subprocess.run([sys.executable, "-c", OPEN_CLOSE, plain], env=child_env(plain), cwd=tmp, timeout=1800)
        if opened.returncode:
            sys.exit("open/close leak check failed")
        if args.tests:
            # The fast paths (_log.c, _iodict.c, _durablequeue.c, _lock.c) run on the objects
            # of a live store: the tests that drive them, on the ASan build, children included.
            print(f"tests under ASan: {' '.join(args.tests)}", flush=True)
            tests = [os.path.join(ROOT, "tests", name) for name in args.tests]
            run = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", *tests],
                env=env,
                cwd=tmp,
                capture_output=True,
                text=True,
                timeout=3600,
            )
            print(run.stdout.strip().splitlines()[-1] if run.stdout.strip() else "(no output)")
            if run.returncode or "AddressSanitizer" in run.stdout + run.stderr:
                print((run.stdout + run.stderr)[-20000:], file=sys.stderr)
                sys.exit(f"tests under ASan: exit status {run.returncode}")
    print("no ASan report, no leak")


if __name__ == "__main__":
    main()
