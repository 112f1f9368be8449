#!/usr/bin/env python3
"""Torture: a bounded, seeded, multi-process random workload that tries to break iodict_log's promises.

    python tools/torture.py --minutes 5 [--seed S] [--dir D] [--processes P]
    python tools/torture.py --seconds 55 --seed 1      # a short run (CI)

Rounds, until the time is up (a round in progress finishes). In each round:

1. P worker processes (real processes, ``python tools/torture.py --worker``)
   share one ``IODict`` and one ``DurableQueue`` directory and make random
   calls on them: set, get, del, pop, setdefault, update batches, clear,
   compact, iteration and reopen on the dict; put, put_many, get and lease
   (then ack) on the queue, so a worker killed between its lease and its ack
   leaves a lease that must come back. Each round draws its own options (segment sizes, ``sync`` mode,
   automatic compaction threshold or none). Some calls run under an injected
   write fault (``inject_enospc``). Each worker journals every call before it
   starts and after it returns (tools/torture_oracle.py).
2. The driver sends SIGKILL to random workers at random moments and starts
   new ones in their place; the round ends with SIGKILL to all of them or
   with a clean stop (which must not hang).
3. With nobody running, the driver opens the stores and checks them against
   the journals; torture_oracle.py's docstring says exactly what is checked.
4. Sometimes, still with nobody running, it damages files: flips a bit in a
   random record, overwrites a "bad sector" (zeros or garbage), truncates the
   last segment at a random offset (a torn tail), or flips, cuts or puts back
   a stale ``HINT`` file. It first reads the segment with the format module to
   know which records the damage may cost; then it checks that exactly those
   were lost, that nothing appeared, that the store opens to exactly a replay
   of its files (values, order, birthtimes), and that every damaged region is
   one it made and is counted in ``stats()["corrupt_records"]``.
   Damage no reader gets past is repaired (``repair.repair``) before those
   checks: a flipped byte in CURRENT or CURRENT deleted (it costs nothing), a
   flipped byte in a segment header (nothing: the salt comes back from the
   other headers), a deleted segment (exactly its records). Then what repair
   reports as dropped must be missing, and all that is missing must be what it
   reports or what the other damage of the round explains.

Seeded: the same --seed makes the same sequence of decisions (which call, which
key, when to kill whom, what to damage); process timing decides how far each
sequence gets, and so which records the damage lands on. A failure prints what
broke, the seed, and where the work directory was kept (the stores, a copy of
them from before the failing round, and its journals); exit status 1. Exit
status 0 means no failure.

"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import math
import os
import queue
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from collections import Counter
from typing import Any, Callable, Iterator

import torture_oracle as oracle

from iodict_log import DurableQueue, IODict
from iodict_log.repair import repair

MISSING = object()
STOP_WAIT = 60.0  # seconds a worker may take to stop cleanly before it counts as hung
DAMAGE_COUNTS = {
    "flip": "bit_flips",
    "sector": "sector_damage",
    "truncate": "truncations",
    "hint": "hint_damage",
    "current": "current_damage",
    "header": "header_damage",
    "delete": "deleted_segments",
}
NEEDS_REPAIR = ("current", "header", "delete")
REPAIR_CHANCES = (
    ("current", 0.08),
    ("header", 0.08),
    ("delete", 0.06),
)  # damage no reader gets past: iodict-log repair must


# --- fault injection -----------------------------------------------------------------------


def inject_enospc(store_dir: str, rng: random.Random) -> FileSizeCap:
    """Make the worker's next call run with the disk "full": its writes fail part-way or at once.

    Use: ``with inject_enospc(path, rng) as fault: call()``; ``fault.limit`` is
    known before the call starts, so it can be journaled first.

    This is the one place where the workload injects write faults; everything
    else (the journal, the checker) only sees that the call raised ``OSError``,
    after which the store must be exactly as if the call had not happened, and
    stay usable (CONTRACT.md §3). (tests/test_power_loss.py injects ENOSPC and
    EIO through iodict_log.fileops; here, in real worker processes, a real
    kernel limit does it.) The worker caps its own file size with
    ``RLIMIT_FSIZE`` for the length of the call: a ``write()``
    that would grow a file past the cap is cut short at the cap, and the next
    fails with ``EFBIG`` (``SIGXFSZ`` is ignored), inside the library's own
    write, as a full disk does. The cap is drawn around the size of the store's
    last segment, so appends fail part-way or at once; now and then it is so
    low that starting a segment or replacing ``CURRENT`` fails too, or so high
    that only a compaction hits it. The cap holds for the whole process, so a
    background compaction running meanwhile may fail too (with a warning),
    which is a real fault as well.
    """
    size = _last_segment_size(store_dir)
    r, near, far = rng.random(), rng.randrange(-200, 600), rng.randrange(600, 40_000)
    limit = 40 if r < 0.15 else size + near if r < 0.85 else size + far
    return FileSizeCap(max(40, limit))


# Until when (monotonic) a warning may still come from an injected fault: while a cap is
# set, and for a grace period after, for a background compaction that hit it.
fault_window_until = -math.inf
FAULT_GRACE = 5.0


class FileSizeCap:
    """RLIMIT_FSIZE set to ``limit`` while the ``with`` block runs."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._saved: tuple[int, int] | None = None

    def __enter__(self) -> FileSizeCap:
        self._saved = resource.getrlimit(resource.RLIMIT_FSIZE)
        hard = self._saved[1]
        limit = self.limit if hard == resource.RLIM_INFINITY else min(self.limit, hard)
        global fault_window_until
        fault_window_until = math.inf
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
        return self

    def __exit__(self, *exc: object) -> None:
        global fault_window_until
        resource.setrlimit(resource.RLIMIT_FSIZE, self._saved)
        fault_window_until = time.monotonic() + FAULT_GRACE


def _last_segment_size(store_dir: str) -> int:
    try:
        names = sorted(n for n in os.listdir(store_dir) if n.endswith(".seg"))
        return os.path.getsize(os.path.join(store_dir, names[-1])) if names else 0
    except OSError:
        return 0


# --- the worker ------------------------------------------------------------------------------

# (journal name, weight). Own-key and shared-key variants journal under the same name.
OPS = (
    ("set", 22),
    ("get", 8),
    ("del", 5),
    ("pop", 5),
    ("setdefault", 5),
    ("update", 8),
    ("shared_set", 5),
    ("shared_update", 3),
    ("shared_del", 2),
    ("shared_pop", 2),
    ("shared_get", 2),
    ("put", 8),
    ("put_many", 3),
    ("qget", 14),
    ("qlease", 8),
    ("iterate", 0.4),
    ("compact", 0.3),
    ("reopen", 0.3),
    ("clear", 0.03),
)
_NAMES = [name for name, _ in OPS]
_WEIGHTS = [w for _, w in OPS]
WRITES = {"set", "del", "pop", "setdefault", "update", "clear", "compact", "put", "put_many", "qget", "qlease"}


MAX_THREADS = 3  # threads per worker process; thread t of slot s owns key space s * MAX_THREADS + t


class Gate:
    """Calls run side by side; a call under an injected write fault runs alone, because
    the file-size cap holds for the whole process (a writer-preferring RW lock)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._running = 0
        self._alone = False
        self._waiting = 0

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._alone or self._waiting:
                self._cond.wait()
            self._running += 1
        try:
            yield
        finally:
            with self._cond:
                self._running -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def alone(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            while self._alone or self._running:
                self._cond.wait()
            self._waiting -= 1
            self._alone = True
        try:
            yield
        finally:
            with self._cond:
                self._alone = False
                self._cond.notify_all()


class Stores:
    """The IODict and the DurableQueue of one worker process, shared by its threads."""

    def __init__(self, cfg: dict) -> None:
        self.cfg = cfg
        self.gate = Gate()
        self.d: IODict | None = None
        self.q: DurableQueue | None = None
        self.open()

    def open(self) -> None:
        cfg = self.cfg
        self.d = IODict(
            cfg["dict"],
            sync=cfg["sync"],
            segment_bytes=cfg["dict_segment_bytes"],
            compact_min_bytes=cfg["compact_min_bytes"],
            auto_compact=cfg["compact_min_bytes"] > 0,
        )
        self.q = DurableQueue(cfg["queue"], sync=cfg["sync"], segment_bytes=cfg["queue_segment_bytes"])

    def close(self) -> None:
        self.d.close()
        self.q.close()


class Worker:
    """One thread of a worker process: its own key space, random stream and journal."""

    def __init__(self, cfg: dict, stores: Stores, journal: oracle.Journal, warned: collections.deque, t: int) -> None:
        self.cfg = cfg
        self.stores = stores
        self.journal = journal
        self.warned = warned
        self.rng = random.Random(f"{cfg['seed']}:{t}")
        self.rnd, self.slot, self.inc = cfg["round"], cfg["vslots"][t], cfg["inc"]

    @property
    def d(self) -> IODict:
        return self.stores.d

    @property
    def q(self) -> DurableQueue:
        return self.stores.q

    def run(self) -> None:
        opno = 0
        stop = self.cfg["stop"]
        while not (opno % 8 == 0 and os.path.exists(stop)):
            opno += 1
            self.one(opno)
            while True:
                try:
                    msg, near_fault = self.warned.popleft()
                except IndexError:
                    break
                self.journal.write(e="w", msg=msg[:500], fault=near_fault)

    def _own(self) -> tuple:
        return ("o", self.slot, self.rng.randrange(oracle.OWN_KEYS))

    def _shared(self) -> tuple:
        return ("s", self.rng.randrange(oracle.SHARED_KEYS))

    def _wid(self, opno: int, j: int = 0) -> tuple:
        return (self.rnd, self.slot, self.inc, opno, j)

    def _result(self, value: Any) -> Any:
        wid = oracle.wid_of(value)
        return wid if wid is not None else {"bad": repr(value)[:300]}

    def one(self, opno: int) -> None:
        """Choose a call, journal it, make it, journal what it returned."""
        rng = self.rng
        choice = rng.choices(_NAMES, _WEIGHTS)[0]
        name, args, call = self.prepare(choice, opno)
        fault = None
        if name in WRITES and rng.random() < self.cfg["fault_rate"]:
            target = self.cfg["queue"] if name in ("put", "put_many", "qget", "qlease") else self.cfg["dict"]
            fault = inject_enospc(target, rng)
            args["fault"] = fault.limit
        gate = self.stores.gate
        with gate.shared() if fault is None else gate.alone():
            self.journal.write(e="b", i=opno, t=time.monotonic(), op=name, **args)
            if fault is None:
                result = call()
            else:
                try:
                    with fault:
                        result = call()
                except OSError as exc:
                    self.journal.write(e="f", i=opno, t=time.monotonic(), err=f"{type(exc).__name__}: {exc}")
                    return
            self.journal.write(e="a", i=opno, t=time.monotonic(), r=result)

    def prepare(self, choice: str, opno: int) -> tuple[str, dict, Callable[[], Any]]:
        rng = self.rng
        if choice in ("set", "shared_set"):
            kid = self._own() if choice == "set" else self._shared()
            wid = self._wid(opno)
            return "set", {"k": kid, "w": wid}, lambda: self.d.__setitem__(oracle.key_of(kid), oracle.make_value(wid))
        if choice in ("get", "shared_get"):
            kid = self._own() if choice == "get" else self._shared()

            def get() -> Any:
                value = self.d.get(oracle.key_of(kid), MISSING)
                return None if value is MISSING else self._result(value)

            return "get", {"k": kid}, get
        if choice in ("del", "shared_del"):
            kid = self._own() if choice == "del" else self._shared()

            def delete() -> str:
                try:
                    del self.d[oracle.key_of(kid)]
                except KeyError:
                    return "KeyError"
                return "ok"

            return "del", {"k": kid}, delete
        if choice in ("pop", "shared_pop"):
            kid = self._own() if choice == "pop" else self._shared()
            with_default = rng.random() < 0.5

            def pop() -> Any:
                if with_default:
                    value = self.d.pop(oracle.key_of(kid), MISSING)
                else:
                    try:
                        value = self.d.pop(oracle.key_of(kid))
                    except KeyError:
                        value = MISSING
                return None if value is MISSING else self._result(value)

            return "pop", {"k": kid, "d": with_default}, pop
        if choice == "setdefault":
            kid, wid = self._own(), self._wid(opno)
            return (
                "setdefault",
                {"k": kid, "w": wid},
                lambda: self._result(self.d.setdefault(oracle.key_of(kid), oracle.make_value(wid))),
            )
        if choice in ("update", "shared_update"):
            n = rng.randint(2, 8)
            kids = rng.sample(range(oracle.OWN_KEYS), n)
            kv = [(("o", self.slot, k), self._wid(opno, j)) for j, k in enumerate(kids)]
            if choice == "shared_update":
                kv.insert(rng.randrange(len(kv) + 1), (self._shared(), None))
                kv = [(kid, self._wid(opno, j)) for j, (kid, _) in enumerate(kv)]
            as_mapping = rng.random() < 0.5

            def update() -> None:
                pairs = [(oracle.key_of(kid), oracle.make_value(wid)) for kid, wid in kv]
                self.d.update(dict(pairs) if as_mapping else pairs)

            return "update", {"kv": kv}, update
        if choice == "clear":
            return "clear", {}, lambda: self.d.clear()
        if choice == "compact":
            return "compact", {}, lambda: (self.d.compact(), None)[1]
        if choice == "reopen" and len(self.cfg["vslots"]) == 1:  # (with threads, the others would see it closed)
            return "reopen", {}, lambda: (self.stores.close(), self.stores.open(), None)[2]
        if choice in ("iterate", "reopen"):

            def iterate() -> Any:
                bad = [repr(v)[:100] for _, v in self.d.items() if oracle.wid_of(v) is None]
                return {"bad": bad} if bad else len(list(reversed(self.d)))

            return "iterate", {}, iterate
        if choice in ("put", "put_many"):
            n = 1 if choice == "put" else rng.randint(2, 6)
            iids = [self._wid(opno, j) for j in range(n)]
            if choice == "put":
                return "put", {"items": iids}, lambda: self.q.put(oracle.make_item(iids[0]))
            return "put_many", {"items": iids}, lambda: self.q.put_many([oracle.make_item(i) for i in iids])
        block = rng.random() < 0.3
        if choice == "qlease":

            def qlease() -> Any:
                try:
                    lease = self.q.lease(timeout=0.02) if block else self.q.lease(block=False)
                except queue.Empty:
                    return None
                iid = oracle.iid_of(lease.item)
                leased = iid if iid is not None else {"bad": repr(lease.item)[:300]}
                self.journal.write(e="l", i=opno, t=time.monotonic(), r=leased)  # out on lease, not acked yet
                lease.ack()
                return leased

            return "qlease", {"block": block}, qlease
        assert choice == "qget"

        def qget() -> Any:
            try:
                item = self.q.get(timeout=0.02) if block else self.q.get_nowait()
            except queue.Empty:
                return None
            iid = oracle.iid_of(item)
            return iid if iid is not None else {"bad": repr(item)[:300]}

        return "qget", {"block": block}, qget


def worker_main(cfg_path: str) -> int:
    with open(cfg_path) as f:
        cfg = json.load(f)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past RLIMIT_FSIZE fails with EFBIG instead
    journals = [oracle.Journal(path) for path in cfg["journals"]]
    warned: collections.deque = collections.deque()  # journaled after each call, never under a write fault

    def showwarning(message: Any, category: type, *args: Any, **kwargs: Any) -> None:
        warned.append((f"{category.__name__}: {message}", time.monotonic() < fault_window_until))

    warnings.showwarning = showwarning
    warnings.simplefilter("always")
    for journal in journals:
        journal.write(e="start", t=time.monotonic(), pid=os.getpid())

    def body(worker: Worker) -> None:
        try:
            worker.run()
        except BaseException:
            worker.journal.write(e="x", t=time.monotonic(), tb=traceback.format_exc())
            os._exit(3)
        worker.journal.write(e="end", t=time.monotonic())

    try:
        stores = Stores(cfg)
        workers = [Worker(cfg, stores, journal, warned, t) for t, journal in enumerate(journals)]
        threads = [threading.Thread(target=body, args=(w,), daemon=True) for w in workers[1:]]
        for thread in threads:
            thread.start()
        body(workers[0])
        for thread in threads:
            thread.join()
        stores.close()
    except BaseException:
        journals[0].write(e="x", t=time.monotonic(), tb=traceback.format_exc())
        return 3
    return 0


# --- damage ------------------------------------------------------------------------------------


def damage_store(
    store: str, path: str, kinds: list[str], rng: random.Random, hist: oracle.History, old_hint: str
) -> list[dict]:
    """Damage ``store``'s files in the ways asked (each segment at most once, and only an
    undamaged one); the events, each with the records it may cost."""
    scans = oracle.scan_store(path)
    clean = [(seg, frames) for seg in scans if (frames := oracle.segment_frames(seg))]
    events: list[dict] = []
    used: set[int] = set()
    for kind in kinds:
        if kind == "hint":
            event = _damage_hint(path, rng, old_hint)
            if event:
                events.append(event)
            continue
        if kind == "current":
            events.append(_damage_current(path, rng))
            continue
        if kind == "truncate":
            pool = [(s, f) for s, f in clean if s.last and s.number not in used]
        elif kind == "header" and len(scans) < 2:
            continue  # the salt comes back only from another segment's header
        else:
            pool = [(s, f) for s, f in clean if s.number not in used]
            sealed = [(s, f) for s, f in pool if not s.last]
            if sealed and rng.random() < 0.75:
                pool = sealed
        if not pool:
            continue
        seg, frames = pool[rng.randrange(len(pool))]
        used.add(seg.number)
        events.append(_damage(store, kind, seg, frames, rng, hist))
    return events


def _damage_hint(path: str, rng: random.Random, old_hint: str) -> dict | None:
    """Flip a bit in the dict's HINT, cut it short, or put back the one from before the
    round: a hint that does not vouch for the segments as they are must not be used, and a
    stale one that still does must give what a scan gives. It costs no record."""
    hint = os.path.join(path, "HINT")
    how = rng.choice(("flip", "cut", "stale"))
    if how == "stale":
        if not os.path.exists(old_hint):
            return None
        shutil.copyfile(old_hint, hint)
        what = "put back the HINT file from before the round"
    else:
        try:
            with open(hint, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        if not data:
            return None
        at = rng.randrange(len(data))
        if how == "flip":
            bit = rng.randrange(8)
            with open(hint, "r+b") as f:
                f.seek(at)
                f.write(bytes([data[at] ^ (1 << bit)]))
            what = f"flipped bit {bit} of byte {at} of the HINT file ({len(data)} bytes)"
        else:
            os.truncate(hint, at)
            what = f"cut the HINT file from {len(data)} to {at} bytes"
    return {"kind": "hint", "what": f"{what}: may cost nothing", "loss": []}


def _damage_current(path: str, rng: random.Random) -> dict:
    """Flip a bit of CURRENT or delete it: repair rebuilds it from the segments, at no cost."""
    current = os.path.join(path, "CURRENT")
    if rng.random() < 0.3:
        os.unlink(current)
        return {"kind": "current", "what": "deleted CURRENT: may cost nothing", "loss": []}
    with open(current, "r+b") as f:
        data = f.read()
        at = rng.randrange(len(data))
        f.seek(at)
        f.write(bytes([data[at] ^ (1 << rng.randrange(8))]))
    return {"kind": "current", "what": f"flipped a bit of byte {at} of CURRENT: may cost nothing", "loss": []}


def _damage(store: str, kind: str, seg: oracle.SegScan, frames: list, rng: random.Random, hist: oracle.History) -> dict:
    size = len(seg.data)
    where = f"{store} segment {seg.number}{' (last)' if seg.last else ''}"
    if kind == "header":
        at = rng.choice((rng.randrange(oracle.SEGMENT_HEADER_SIZE), rng.randrange(12, 16)))  # often the salt
        with open(seg.path, "r+b") as f:
            f.seek(at)
            f.write(bytes([seg.data[at] ^ (1 << rng.randrange(8))]))
        return {"kind": kind, "what": f"flipped a bit of header byte {at} of {where}: may cost nothing", "loss": []}
    if kind == "delete":
        os.unlink(seg.path)
        loss = sorted(f.seq for f in frames if f.op in oracle.DATA_OPS)
        return {"kind": kind, "what": f"deleted {where}: may cost its {len(loss)} records", "loss": loss}
    if kind == "flip":
        frame = frames[rng.randrange(len(frames))]
        bit = rng.randrange(frame.length * 8)
        start = frame.offset + bit // 8
        with open(seg.path, "r+b") as f:
            f.seek(start)
            f.write(bytes([seg.data[start] ^ (1 << (bit % 8))]))
        end = start + 1
        what = f"flipped bit {bit % 8} of byte {start} in {where} (frame seq {frame.seq}, op {frame.op})"
    elif kind == "sector":
        length = rng.choice((64, 128, 512))
        if rng.random() < 0.4:  # the end of the file
            start, end = max(oracle.SEGMENT_HEADER_SIZE, size - length), size
        else:
            start = rng.randrange(oracle.SEGMENT_HEADER_SIZE, size)
            end = min(size, start + length)
        zeros = rng.random() < 0.5
        fill = bytes(end - start) if zeros else rng.randbytes(end - start)
        with open(seg.path, "r+b") as f:
            f.seek(start)
            f.write(fill)
        what = f"overwrote bytes {start}..{end} of {where} with {'zeros' if zeros else 'garbage'}"
    else:
        if rng.random() < 0.5:
            start = frames[max(0, len(frames) - 1 - rng.randrange(8))].offset
        else:
            start = rng.randrange(max(oracle.SEGMENT_HEADER_SIZE, size - 3000), size)
        end = size
        os.truncate(seg.path, start)
        what = f"truncated {where} from {size} to {start} bytes"
    with open(seg.path, "rb") as f:
        ranges = oracle.changed_ranges(seg.data, f.read())
    loss = oracle.damage_loss(frames, seg.last, ranges)
    if kind != "truncate":  # a cut leaves no damaged region behind
        hist.marks += [(store, seg.number, a, b) for a, b in ranges]
    return {"kind": kind, "what": f"{what}: may cost {len(loss)} records", "loss": sorted(loss)}


# --- the driver -------------------------------------------------------------------------------


def _crash_report(recs: list[oracle.Incarnation]) -> str:
    """The traceback a worker journaled, or the end of what it printed."""
    for rec in recs:
        records, _ = oracle.read_journal(rec.journal)
        tracebacks = [r["tb"] for r in records if r.get("e") == "x"]
        if tracebacks:
            return tracebacks[-1].rstrip()
    try:
        with open(recs[0].stderr, errors="replace") as f:
            return f.read()[-3000:].rstrip() or "(no output)"
    except OSError:
        return "(no output)"


class Failure(Exception):
    pass


class Driver:
    def __init__(self, args: argparse.Namespace) -> None:
        self.seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10**9)
        self.nproc = args.processes
        self.budget = args.seconds if args.seconds is not None else args.minutes * 60
        self.args = args
        self.own_dir = args.dir is None
        self.work = tempfile.mkdtemp(prefix="iodict-torture-") if args.dir is None else os.path.abspath(args.dir)
        os.makedirs(self.work, exist_ok=True)
        self.store = os.path.join(self.work, "store")
        self.dict_path = os.path.join(self.store, "dict")
        self.queue_path = os.path.join(self.store, "queue")
        if os.path.exists(self.store):
            raise SystemExit(f"torture: {self.store} exists already; give an empty --dir")
        self.hist = oracle.History(self.nproc * MAX_THREADS)
        self.totals: Counter = Counter()
        self.live: dict[int, tuple[subprocess.Popen, list[oracle.Incarnation]]] = {}
        self.processes = 0

    # --- processes

    def spawn(self, rdir: str, rnd: int, slot: int, inc: int, params: dict) -> None:
        base = os.path.join(rdir, f"s{slot}-i{inc}")
        threads = params["threads"]
        cfg = dict(
            params,
            round=rnd,
            inc=inc,
            vslots=[slot * MAX_THREADS + t for t in range(threads)],
            seed=f"{self.seed}:{rnd}:{slot}:{inc}",
            journals=[f"{base}-t{t}.jsonl" for t in range(threads)],
            stop=os.path.join(rdir, "stop"),
            dict=self.dict_path,
            queue=self.queue_path,
        )
        with open(base + ".json", "w") as f:
            json.dump(cfg, f)
        with open(base + ".err", "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "--worker", base + ".json"],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
            )
        recs = [oracle.Incarnation(v, inc, j, base + ".err") for v, j in zip(cfg["vslots"], cfg["journals"])]
        self.incs += recs
        self.live[slot] = (proc, recs)
        self.processes += 1

    @staticmethod
    def _ended(proc: subprocess.Popen, recs: list[oracle.Incarnation], killed: bool) -> None:
        for rec in recs:
            rec.reaped, rec.returncode, rec.killed = time.monotonic(), proc.returncode, killed

    def kill(self, slot: int) -> None:
        proc, recs = self.live.pop(slot)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        killed = proc.returncode == -signal.SIGKILL
        self._ended(proc, recs, killed)
        self.totals["kills"] += killed

    def reap_exited(self) -> None:
        """Workers that ended on their own (they only do on an error) end the run."""
        for slot, (proc, recs) in list(self.live.items()):
            if proc.poll() is not None:
                del self.live[slot]
                self._ended(proc, recs, False)
                raise Failure(
                    f"worker s{slot} i{recs[0].inc} exited by itself with status {proc.returncode}:\n"
                    + _crash_report(recs)
                )

    def stop_all(self, rdir: str) -> list[str]:
        open(os.path.join(rdir, "stop"), "w").close()
        problems = []
        for slot, (proc, recs) in list(self.live.items()):
            killed = False
            try:
                proc.wait(timeout=STOP_WAIT)
            except subprocess.TimeoutExpired:
                problems.append(
                    f"worker s{slot} i{recs[0].inc} did not stop within {STOP_WAIT:.0f} s (a hang?); "
                    f"its journals: {[rec.journal for rec in recs]}"
                )
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                killed = True
            self._ended(proc, recs, killed)
            del self.live[slot]
        return problems

    def kill_all(self) -> None:
        for slot in list(self.live):
            self.kill(slot)

    # --- rounds

    def run(self) -> int:
        started = self.started = time.monotonic()
        print(
            f"torture: seed {self.seed}, {self.nproc} processes, {self.budget:.0f} s, work dir {self.work}", flush=True
        )
        rnd = 0
        status = 0
        try:
            while rnd == 0 or time.monotonic() - started < self.budget:
                rnd += 1
                remaining = self.budget - (time.monotonic() - started)
                self.round(rnd, remaining)
        except Failure as exc:
            status = 1
            self.totals["failures"] += 1
            print(f"\nFAILURE in round {rnd} (seed {self.seed}):\n{exc}", flush=True)
            print(
                f"\nkept for inspection: {self.work} (store/: the stores now; before-round/: as the round found "
                f"them; before-damage/: as the round left them; rounds/r{rnd:05d}/: the journals)",
                flush=True,
            )
            print(
                f"reproduce with: python {sys.argv[0]} --seed {self.seed} --seconds {self.budget:.0f} "
                f"--processes {self.nproc}",
                flush=True,
            )
        except BaseException:
            self.kill_all()
            print(f"torture: interrupted; work dir kept: {self.work}", flush=True)
            raise
        finally:
            self.kill_all()
        self.totals["rounds"] = rnd
        self.summary(time.monotonic() - started)
        if status == 0 and self.own_dir and not self.args.keep:
            shutil.rmtree(self.work, ignore_errors=True)
        return status

    def round(self, rnd: int, remaining: float) -> None:
        rng = random.Random(f"{self.seed}:{rnd}")
        krng = random.Random(f"{self.seed}:{rnd}:kills")
        drng = random.Random(f"{self.seed}:{rnd}:damage")
        params = {
            "dict_segment_bytes": rng.choice((4096, 16384, 65536)),
            "queue_segment_bytes": rng.choice((4096, 8192, 32768)),
            "fault_rate": rng.choice((0.0, 0.0, 0.003, 0.01, 0.03)),
            "compact_min_bytes": rng.choice((0, 2**16, 2**18, 2**20)),  # 0: auto_compact=False
            "sync": rng.choice((False, False, False, 0.05, True)),
            "threads": rng.choice((1, 1, 2, MAX_THREADS)),
        }
        duration = min(rng.uniform(1.5, 5.0), max(0.5, remaining))
        ending = rng.choice(("kill", "kill", "stop"))
        chances = {
            "dict": (("flip", 0.35), ("sector", 0.2), ("truncate", 0.25), ("hint", 0.3), *REPAIR_CHANCES),
            "queue": (("flip", 0.35), ("sector", 0.2), ("truncate", 0.25), *REPAIR_CHANCES),
        }
        damage = {store: [kind for kind, p in kinds if rng.random() < p] for store, kinds in chances.items()}
        rdir = os.path.join(self.work, "rounds", f"r{rnd:05d}")
        os.makedirs(rdir)
        before = os.path.join(self.work, "before-round")
        shutil.rmtree(before, ignore_errors=True)
        if os.path.exists(self.store):
            shutil.copytree(self.store, before)
        self.incs: list[oracle.Incarnation] = []
        self.processes = 0
        next_inc = [0] * self.nproc
        t_start = time.monotonic()
        for slot in range(self.nproc):
            self.spawn(rdir, rnd, slot, 0, params)
            next_inc[slot] = 1
        t_end = t_start + duration
        kills_before = self.totals["kills"]
        while (now := time.monotonic()) < t_end:
            time.sleep(min(krng.expovariate(1 / 0.35), t_end - now))
            self.reap_exited()
            if krng.random() < 0.7:
                slot, respawn = krng.randrange(self.nproc), krng.random() < 0.85
                if slot in self.live:
                    self.kill(slot)
                if respawn or slot not in self.live:
                    self.spawn(rdir, rnd, slot, next_inc[slot], params)
                    next_inc[slot] += 1
        self.reap_exited()
        problems = []
        if ending == "kill":
            self.kill_all()
        else:
            problems = self.stop_all(rdir)
        kills = self.totals["kills"] - kills_before
        try:
            self.judge(rnd, params, duration, ending, kills, damage, problems, drng, before)
        except Failure:
            raise
        except Exception:  # the checker or the damage tripped over something: report it
            raise Failure(f"checking or damaging the stores raised:\n{traceback.format_exc()}") from None
        shutil.rmtree(rdir, ignore_errors=True)

    def judge(
        self,
        rnd: int,
        params: dict,
        duration: float,
        ending: str,
        kills: int,
        damage: dict,
        problems: list[str],
        drng: random.Random,
        before: str,
    ) -> None:
        """Check the round, then damage the stores and check what that cost."""
        rep = oracle.check_round(self.hist, self.incs, self.dict_path, self.queue_path)
        rep.failures[:0] = problems
        self.totals.update(rep.counts)
        line = (
            f"round {rnd} (at {time.monotonic() - self.started:.0f} s): {duration:.1f}s, {self.processes} processes "
            f"of {params['threads']} threads, "
            f"{kills} kills, end={ending}, "
            f"faults={params['fault_rate']}, sync={params['sync']}, auto compaction past "
            f"{params['compact_min_bytes'] or 'never'}: {rep.counts['ops_acked']} calls acknowledged, "
            f"{rep.counts['ops_inflight']} cut by a kill, {rep.counts['write_faults']} write faults; checked "
            f"{rep.counts['keys_checked']} keys, {rep.counts['items_checked']} items"
        )
        if rep.failures:
            print(line, flush=True)
            raise Failure("\n".join(rep.failures))
        dmg = []
        if damage["dict"] or damage["queue"]:
            kept = os.path.join(self.work, "before-damage")
            shutil.rmtree(kept, ignore_errors=True)
            shutil.copytree(self.store, kept)
        for store, path in (("dict", self.dict_path), ("queue", self.queue_path)):
            if not damage[store]:
                continue
            scans = oracle.scan_store(path)
            old_hint = os.path.join(before, "dict", "HINT")
            events = damage_store(store, path, damage[store], drng, self.hist, old_hint)
            if not events:
                continue
            for ev in events:
                self.totals[DAMAGE_COUNTS[ev["kind"]]] += 1
                dmg.append(ev["what"])
            drep = oracle.Report()
            if any(ev["kind"] in NEEDS_REPAIR for ev in events):
                dmg.append(self.repair(store, path, scans, events, drep))
                if drep.failures:
                    print(line + "".join(f"\n    damage: {d}" for d in dmg), flush=True)
                    raise Failure("\n".join(drep.failures))
            oracle.check_damage(self.hist, store, path, scans, events, drep)
            self.totals.update(drep.counts)
            dmg += drep.notes
            if drep.failures:
                print(line + "".join(f"\n    damage: {d}" for d in dmg), flush=True)
                raise Failure("\n".join(drep.failures))
        line += "".join(f"\n    damage: {d}" for d in dmg)
        print(line, flush=True)

    def repair(self, store: str, path: str, scans: list[oracle.SegScan], events: list[dict], rep: oracle.Report) -> str:
        """Run repair on damage no reader gets past; check that what it reports dropped is
        missing, and that all that is missing is what it reports or other damage explains."""
        backup = os.path.join(self.work, "repair-backup")
        shutil.rmtree(backup, ignore_errors=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            repaired = repair(path, backup)
        shutil.rmtree(backup, ignore_errors=True)
        reported = oracle.repair_loss(scans, repaired.dropped)
        missing = set(oracle.data_frames(scans)) - set(oracle.data_frames(oracle.scan_store(path)))
        explained = {seq for ev in events if ev["kind"] not in NEEDS_REPAIR for seq in ev["loss"]}
        if reported - missing:
            rep.fail(f"{store}: repair reports dropping seqs {sorted(reported - missing)[:8]}, which are still there")
        if missing - reported - explained:
            rep.fail(
                f"{store}: seqs {sorted(missing - reported - explained)[:8]} are missing after repair, which "
                f"reported only {sorted(reported)[:8]} ({'; '.join(ev['what'] for ev in events)})"
            )
        self.totals["repairs"] += 1
        return f"repair: {len(repaired.dropped)} findings, {len(reported)} records reported dropped"

    def summary(self, seconds: float) -> None:
        t = self.totals
        checked = t["keys_checked"] + t["items_checked"]
        print(f"\ntorture summary: seed {self.seed}, {seconds:.0f} s", flush=True)
        print(
            f"  rounds {t['rounds']}, kills {t['kills']}, bit flips {t['bit_flips']}, bad sectors "
            f"{t['sector_damage']}, truncations {t['truncations']}, damaged hint files {t['hint_damage']}, "
            f"damaged CURRENT {t['current_damage']}, damaged headers {t['header_damage']}, "
            f"deleted segments {t['deleted_segments']}, repairs {t['repairs']}, "
            f"injected write faults {t['write_faults']}",
            flush=True,
        )
        print(
            f"  calls acknowledged {t['ops_acked']}, cut by a kill {t['ops_inflight']}, records checked {checked}, "
            f"records lost to damage {t['records_lost_to_damage']}",
            flush=True,
        )
        print(
            f"SUMMARY rounds={t['rounds']} kills={t['kills']} bit_flips={t['bit_flips']} "
            f"sector_damage={t['sector_damage']} truncations={t['truncations']} hint_damage={t['hint_damage']} "
            f"current_damage={t['current_damage']} header_damage={t['header_damage']} "
            f"deleted_segments={t['deleted_segments']} repairs={t['repairs']} "
            f"write_faults={t['write_faults']} "
            f"ops_acked={t['ops_acked']} records_checked={checked} failures={t['failures']}",
            flush=True,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=1.0, help="how long to run (default 1)")
    parser.add_argument("--seconds", type=float, help="how long to run, in seconds (overrides --minutes)")
    parser.add_argument("--seed", type=int, help="the seed (default: a random one, printed)")
    parser.add_argument("--dir", help="work directory, empty or new (default: a temporary one, removed on success)")
    parser.add_argument("--processes", type=int, default=4, help="worker processes per round (default 4)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory even when nothing failed")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker_main(args.worker)
    if args.processes < 1:
        parser.error("--processes must be at least 1")
    return Driver(args).run()


if __name__ == "__main__":
    sys.exit(main())
