"""Peak memory of ``iodict-log repair`` and the longest wait it causes a writer.

Builds a queue store of about ``--mb`` MB (1 KiB incompressible items, 64 MiB
segments), damages one byte in the middle of its second segment, then runs
``python -m iodict_log repair`` on a fresh copy while a second process calls
``put_nowait`` in a loop and times the longest stretch without a successful put,
and a third takes and releases LOCK in a loop, timing the longest wait. Prints the repair's peak RSS
(from wait4) and the longest stretch. Run it with PYTHONPATH pointing at
another checkout to compare versions::

    python tools/bench_repair.py --dir /tmp/bench-repair --mb 400
    PYTHONPATH=/path/to/old python tools/bench_repair.py --dir /tmp/bench-repair --mb 400
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time

PROBER = r"""
import queue, select, sys, time
from iodict_log import DurableQueue, IODictLogError
q = DurableQueue(sys.argv[1], serializer="msgpack")
print("ready", flush=True)
longest = 0.0
last = time.perf_counter()
while not select.select([sys.stdin], [], [], 0)[0]:
    try:
        q.put_nowait(b"probe")
    except (queue.Full, IODictLogError):  # a put_nowait that honours the lock holder: refused
        pass
    else:
        now = time.perf_counter()
        longest = max(longest, now - last)
        last = now
    time.sleep(0.001)
q.close()
print(f"{longest:.4f}", flush=True)
"""

LOCKER = r"""
import os, select, sys, time
from iodict_log.filelock import FileLock
lock = FileLock(os.path.join(sys.argv[1], "LOCK"), mapped=True)
print("ready", flush=True)
longest = 0.0
while not select.select([sys.stdin], [], [], 0)[0]:
    started = time.perf_counter()
    with lock:
        pass
    longest = max(longest, time.perf_counter() - started)
    time.sleep(0.001)
print(f"{longest:.4f}", flush=True)
"""


def build(pristine: str, mb: int) -> None:
    from iodict_log import DurableQueue

    with DurableQueue(pristine, serializer="msgpack") as q:
        for _ in range(mb * 1024 // 64):
            q.put_many([os.urandom(1024) for _ in range(64)])
    second = sorted(n for n in os.listdir(pristine) if n.endswith(".seg"))[1]
    with open(os.path.join(pristine, second), "r+b") as f:
        f.seek(os.path.getsize(f.name) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x10]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default="/tmp/bench-repair")
    parser.add_argument("--mb", type=int, default=400)
    args = parser.parse_args()
    pristine = os.path.join(args.dir, f"pristine-{args.mb}")
    if not os.path.isdir(pristine):
        build(pristine, args.mb)
    store = os.path.join(args.dir, "store")
    for old in (store, store + ".backup"):
        shutil.rmtree(old, ignore_errors=True)
    shutil.copytree(pristine, store)
    size = sum(os.path.getsize(os.path.join(store, n)) for n in os.listdir(store))
    probers = [
        subprocess.Popen([sys.executable, "-c", code, store], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for code in (PROBER, LOCKER)
    ]
    for prober in probers:
        assert prober.stdout is not None and prober.stdout.readline().strip() == "ready"
    started = time.perf_counter()
    repair = subprocess.Popen(
        [sys.executable, "-m", "iodict_log", "repair", store, "--backup", store + ".backup"],
        stdout=subprocess.DEVNULL,
    )
    _, status, usage = os.wait4(repair.pid, 0)
    seconds = time.perf_counter() - started
    longest = []
    for prober in probers:
        assert prober.stdin is not None and prober.stdout is not None
        prober.stdin.close()
        longest.append(float(prober.stdout.readline()))
        prober.wait(timeout=60)
    print(
        f"store {size / 1e6:,.0f} MB: repair exit {os.waitstatus_to_exitcode(status)}, {seconds:.1f} s, "
        f"peak RSS {usage.ru_maxrss / 1024:,.0f} MiB; longest stretch without a put {longest[0] * 1000:,.1f} ms "
        f"(an open queue; it rebuilds its index after the swap), longest wait for LOCK {longest[1] * 1000:,.1f} ms"
    )


if __name__ == "__main__":
    main()
