"""The vocabulary of tools/torture.py's workload, and the checker that judges a round.

Shared by the driver, the worker processes and tests/test_torture.py:

- keys, values and queue items, each derived from a small id, so that any
  value found in a store names the one write that produced it (a value that
  no write produced is caught at once, its type included);
- the journal: one append-only JSON-lines file per worker thread, one line
  before each call ("b") and one after it returned ("a") or raised an
  injected write fault ("f");
- ``check_round``: opens the stores after a round and compares them with the
  journals (the oracle below); ``scan_store``/``replay_*``/``check_damage``: an
  independent replay of the segment files, which checks what damage may cost.

The oracle
----------
A "slot" is one thread of one worker process (a process killed and started
again keeps its slots). Every slot owns a key space no other slot writes
(``("o", slot, n)``), so the calls on one of its keys are totally ordered: the
slot's acknowledged calls, its failed calls (an injected write fault: they
must have had no effect), and at most one call per killed process that may or
may not have landed. Only ``clear()`` (any slot) reaches into every key space;
its place among a key's calls is bounded by real time (CLOCK_MONOTONIC, shared
by all processes): a call that returned before the clear began is before it, a
call that began after the clear returned is after it. ``run_key`` enumerates
every history these facts allow (the results the calls returned included: a
``pop`` that returned v proves the key held v) and the final value must be one
of them; a batch in flight at a kill must have landed whole or not at all.
Within a slot the order of the keys must match their births; across slots a
key born in a call that returned before another key's birth began must come
first; birthtimes increase strictly along the order, a key not set anew keeps
its birthtime, and ``records()`` replays to the same values with every
birthtime handed out once. Shared keys (``("s", n)``, written by every slot)
are checked loosely: the value was written to that key by somebody and not by
a failed call, no acknowledged write came after the one that survived, and an
acknowledged write nothing could have removed is there.

Queue items are accounted for exactly: each one put by an acknowledged call
was got by exactly one acknowledged ``get``, or is still in the queue, or was
taken by a ``get`` whose process was killed inside the call (at most one each);
none twice (in this round or any later one), none that nobody put or whose put
failed, a batch all or nothing, and FIFO in real time: an item whose put
returned before another's began is taken first.

Every damaged region the files hold must be one the driver made, and counted
in ``stats()["corrupt_records"]`` and warned about once. A background step that
warns (an automatic compaction that failed) with no fault injected is a failure.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import os
import queue
import shutil
import sys
import tempfile
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

from iodict_log import CorruptionWarning, DurableQueue, IODict
from iodict_log.format import (
    DATA_OPS,
    OP_BATCH_BEGIN,
    OP_BATCH_COMMIT,
    OP_DELETE,
    OP_PUT,
    OP_SEAL,
    OP_SET,
    OP_TAKE,
    SEGMENT_HEADER_SIZE,
    SEQ,
    Frame,
    Scan,
    decode_frame,
    decode_manifest,
    decode_segment_header,
)
from iodict_log.serialize import Serializer, decode_key

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
from helpers import same  # noqa: E402  (type-strict equality, as the tests compare)

OWN_KEYS = 48  # keys per worker slot
SHARED_KEYS = 12  # keys every slot writes
INT_KEY_BASE = 10**12


# --- keys, values, items -------------------------------------------------------------


def key_of(kid: tuple) -> Any:
    """The store key for a key id: ("o", slot, n) owned by a slot, ("s", n) shared."""
    if kid[0] == "o":
        _, slot, n = kid
        form = n % 4
        if form == 0:
            return f"w{slot}/k{n}"
        if form == 1:
            return ("w", slot, n)
        if form == 2:
            return f"w{slot}/k{n}".encode()
        return INT_KEY_BASE + slot * 10**6 + n
    _, n = kid
    return f"shared/{n}" if n % 2 == 0 else ("shared", n)


def all_kids(nslots: int) -> list[tuple]:
    return [("o", s, n) for s in range(nslots) for n in range(OWN_KEYS)] + [("s", n) for n in range(SHARED_KEYS)]


class KeyTable:
    """Store key -> key id, for the keys a workload of ``nslots`` slots may write."""

    def __init__(self, nslots: int) -> None:
        self._by_key: dict[tuple[type, Any], tuple] = {(type(key_of(k)), key_of(k)): k for k in all_kids(nslots)}

    def kid(self, key: Any) -> tuple | None:
        try:
            kid = self._by_key.get((type(key), key))
        except TypeError:  # unhashable: nobody wrote it
            return None
        return kid if kid is not None and same(key_of(kid), key) else None


_PAD_SIZES = (0, 3, 17, 60, 200, 300, 700, 2500)
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _mix(ids: Iterable[int]) -> int:
    x = 0
    for i in ids:
        x = (x * 1_000_003 + i + 1) % (1 << 61)
    return x


def _pad(x: int) -> str:
    size = _PAD_SIZES[(x >> 3) % len(_PAD_SIZES)]
    if (x >> 7) % 3 == 0:  # incompressible
        out, h = [], str(x).encode()
        while sum(map(len, out)) < size:
            h = hashlib.sha256(h).digest()
            out.append(h.hex())
        return "".join(out)[:size]
    start = x % 26
    return ((_LETTERS[start:] + _LETTERS[:start]) * (size // 26 + 1))[:size]


def make_value(wid: tuple) -> Any:
    """The value written by write ``wid`` = (round, slot, incarnation, op number, index in the call)."""
    rnd, slot, inc, opno, j = wid
    x = _mix(wid)
    pad = _pad(x)
    form = x % 6
    if form == 5:  # nested near the serializer's limits (31 tuples, 61 levels in all)
        deep: Any = pad
        for level in range(60):
            deep = (deep,) if level % 2 else [deep]
        return ("v", rnd, slot, inc, opno, j, deep)
    if form == 0:
        return ("v", rnd, slot, inc, opno, j, pad)
    if form == 1:
        return ["v", rnd, slot, inc, opno, j, pad.encode()]
    if form == 2:
        return {"v": (rnd, slot, inc, opno, j), "pad": pad, 3: [None, 1.5, True, -7]}
    if form == 3:
        return ("v", rnd, slot, inc, opno, j, {"nested": [pad, (1, b"\x00\xff")]})
    return ["v", rnd, slot, inc, opno, j, 2**63 + x % 1000, -(2**40), pad]


def wid_of(value: Any) -> tuple | None:
    """The id of the write that produced ``value``, or None if no write did."""
    try:
        if type(value) is dict:
            wid = value.get("v")
        elif type(value) in (tuple, list) and len(value) >= 6 and value[0] == "v":
            wid = value[1:6]
        else:
            return None
        wid = tuple(wid)
        if len(wid) != 5 or not all(type(i) is int and i >= 0 for i in wid):
            return None
    except (TypeError, AttributeError):
        return None
    return wid if same(make_value(wid), value) else None


def make_item(iid: tuple) -> tuple:
    """The queue item put by put ``iid`` = (round, slot, incarnation, op number, index in the call)."""
    x = _mix(iid) ^ 0x5A5A5A
    pad = _pad(x)
    return ("q", *iid, pad.encode() if x % 2 else pad)


def iid_of(item: Any) -> tuple | None:
    if type(item) is not tuple or len(item) != 7 or item[0] != "q":
        return None
    iid = item[1:6]
    if not all(type(i) is int and i >= 0 for i in iid):
        return None
    return iid if same(make_item(iid), item) else None


# --- the journal ---------------------------------------------------------------------


class Journal:
    """An append-only JSON-lines file; each line is one write() (no fsync: only processes die)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def write(self, **record: Any) -> None:
        line = json.dumps(record, separators=(",", ":"), default=list) + "\n"
        os.write(self.fd, line.encode())

    def close(self) -> None:
        os.close(self.fd)


def read_journal(path: str) -> tuple[list[dict], list[str]]:
    """(records, problems). A last line without its newline was cut by a kill and is dropped."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return [], []
    lines = data.split(b"\n")
    lines.pop()  # b"" after the last newline, or a line cut short
    records, problems = [], []
    for n, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except ValueError:
            problems.append(f"{path}: line {n + 1} is not JSON: {line[:100]!r}")
    return records, problems


def tuplify(x: Any) -> Any:
    return tuple(tuplify(i) for i in x) if isinstance(x, list) else x


# --- the operations of a round, as the journals tell them -----------------------------


@dataclass
class Incarnation:
    """One worker process: which slot it ran for, its journal, and how it ended."""

    slot: int
    inc: int
    journal: str
    stderr: str = ""
    killed: bool = False
    reaped: float = math.inf  # monotonic time by which the process was certainly dead
    returncode: int | None = None


@dataclass
class Op:
    slot: int
    inc: int
    opno: int
    name: str
    args: dict
    t0: float
    t1: float  # when it returned or raised; for an op in flight at a kill, when the process was reaped
    status: str  # "ok", "fail" (raised an injected write fault) or "inflight" (killed inside it)
    result: Any = None
    fault: int | None = None
    leased: Any = None  # a qlease's item once leased (journaled "l"), acked or not

    @property
    def id(self) -> tuple:
        return (self.slot, self.inc, self.opno)

    def describe(self) -> str:
        args = {k: v for k, v in self.args.items() if k not in ("e", "i", "t", "op", "fault")}
        res = "" if self.status != "ok" else f" -> {self.result!r}"
        return f"[s{self.slot} i{self.inc} #{self.opno} {self.status}] {self.name}({args}){res}"


@dataclass
class Touch:
    """One op's effect on one key."""

    op: Op
    kind: str  # set, get, del, pop, setdefault
    wid: tuple | None = None
    j: int = 0

    @property
    def birth(self) -> tuple:
        return (1, self.op.inc, self.op.opno, self.j)


def parse_ops(incs: list[Incarnation]) -> tuple[dict[int, list[Op]], list[str], dict]:
    """Ops per slot in order, problems found, and counts."""
    by_slot: dict[int, list[Op]] = {}
    problems: list[str] = []
    counts = Counter()
    for inc in sorted(incs, key=lambda i: (i.slot, i.inc)):
        records, bad = read_journal(inc.journal)
        problems += bad
        ops = by_slot.setdefault(inc.slot, [])
        begun: dict[int, Op] = {}
        ended = False
        for rec in records:
            e = rec.get("e")
            if e == "b":
                op = Op(inc.slot, inc.inc, rec["i"], rec["op"], rec, rec["t"], math.inf, "inflight")
                op.fault = rec.get("fault")
                begun[op.opno] = op
                ops.append(op)
                if op.fault is not None:
                    counts["fault_windows"] += 1
            elif e in ("a", "f"):
                op = begun.pop(rec["i"], None)
                if op is None:
                    problems.append(f"{inc.journal}: result for op {rec['i']} that never began")
                    continue
                op.t1 = rec["t"]
                if e == "a":
                    op.status, op.result = "ok", tuplify(rec.get("r"))
                    counts["ops_acked"] += 1
                    if isinstance(op.result, dict) and "bad" in op.result:
                        problems.append(f"{op.describe()}: the store returned a value no worker wrote")
                else:
                    op.status, op.result = "fail", rec.get("err")
                    counts["write_faults"] += 1
                    if op.fault is None:
                        problems.append(f"{inc.journal}: {op.describe()} failed outside a fault window: {op.result}")
            elif e == "l" and rec["i"] in begun:
                begun[rec["i"]].leased = tuplify(rec.get("r"))
            elif e == "x":
                problems.append(f"worker s{inc.slot} i{inc.inc} raised:\n{rec.get('tb', '')}")
            elif e == "w":
                msg = rec.get("msg", "")
                if "damaged item" in msg:
                    problems.append(f"worker s{inc.slot} i{inc.inc} got a damaged queue item: {msg}")
                elif msg.startswith(("RuntimeWarning", "ResourceWarning")) and not rec.get("fault"):
                    # (a background step, such as an automatic compaction, failed with no fault injected)
                    problems.append(f"worker s{inc.slot} i{inc.inc} warned with no write fault injected: {msg}")
            elif e == "end":
                ended = True
        if begun:
            if not inc.killed:
                problems.append(f"worker s{inc.slot} i{inc.inc} ended with ops not finished: {sorted(begun)}")
            for op in begun.values():
                op.t1 = inc.reaped
                counts["ops_inflight"] += 1
            if len(begun) > 1:
                problems.append(f"worker s{inc.slot} i{inc.inc}: more than one op in flight: {sorted(begun)}")
        if not inc.killed:
            if inc.returncode != 0:
                err = _tail(inc.stderr)
                problems.append(f"worker s{inc.slot} i{inc.inc} exited with status {inc.returncode}:\n{err}")
            elif not ended:
                problems.append(f"worker s{inc.slot} i{inc.inc} exited without finishing its journal")
    return by_slot, problems, counts


def _tail(path: str, n: int = 3000) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()[-n:]
    except OSError:
        return ""


def key_touches(ops: Iterable[Op]) -> tuple[dict[tuple, list[Touch]], list[Op]]:
    """Per key id, the ops that touch it in op order; and the clears."""
    touches: dict[tuple, list[Touch]] = {}
    clears = []
    for op in ops:
        a = op.args
        if op.name in ("set", "setdefault"):
            touches.setdefault(tuplify(a["k"]), []).append(Touch(op, op.name, tuplify(a["w"])))
        elif op.name in ("get", "del", "pop"):
            touches.setdefault(tuplify(a["k"]), []).append(Touch(op, op.name))
        elif op.name == "update":
            for j, (kid, wid) in enumerate(a["kv"]):
                touches.setdefault(tuplify(kid), []).append(Touch(op, "set", tuplify(wid), j))
        elif op.name == "clear":
            clears.append(op)
    return touches, clears


# --- the per-key oracle ----------------------------------------------------------------

# A state: (wid or None, birth or None, frozenset of (op id, applied?) decisions for ops in flight)


def _result_wid(op: Op) -> Any:
    r = op.result
    if isinstance(r, dict) or (isinstance(r, tuple) and r and r[0] == "bad"):
        return "bad"
    return r


def _step(states: set, t: Touch) -> set:
    op = t.op
    if op.status == "fail":
        return states  # a failed write left nothing behind
    if t.kind == "get":
        if op.status != "ok":
            return states
        r = _result_wid(op)
        return {s for s in states if s[0] == r}
    out = set()
    for val, birth, dec in states:
        if op.status == "inflight":
            out.add((val, birth, dec | {(op.id, False)}))
            nval, nbirth = _apply(val, birth, t)
            out.add((nval, nbirth, dec | {(op.id, True)}))
            continue
        r = _result_wid(op) if t.kind in ("pop", "setdefault") else op.result
        if t.kind == "set":
            out.add((t.wid, birth if val is not None else t.birth, dec))
        elif t.kind == "del":
            if (r == "ok") == (val is not None):
                out.add((None, None, dec))
        elif t.kind == "pop":
            if r == val:
                out.add((None, None, dec))
        elif t.kind == "setdefault":
            if val is None and r == t.wid:
                out.add((t.wid, t.birth, dec))
            elif val is not None and r == val:
                out.add((val, birth, dec))
    return out


def _apply(val: Any, birth: Any, t: Touch) -> tuple:
    if t.kind == "set":
        return t.wid, birth if val is not None else t.birth
    if t.kind in ("del", "pop"):
        return None, None
    if t.kind == "setdefault" and val is None:
        return t.wid, t.birth
    return val, birth


def run_key(base: tuple, touches: list[Touch], clears: list[Op]) -> tuple[set, int | None]:
    """Every (value, birth, decisions) the key may end in; and the index of the touch after
    which no history was possible any more (None if some history survives)."""
    n = len(touches)
    windows = []
    for c in clears:
        if c.status == "fail":
            continue
        lo = sum(1 for t in touches if t.op.t1 < c.t0)
        hi = sum(1 for t in touches if t.op.t0 <= c.t1)
        windows.append((c, lo, hi))
    states = {(base[0], base[1], frozenset())}
    for g in range(n + 1):
        for c, lo, hi in windows:
            if lo <= g <= hi:
                states = states | {
                    (None, None, dec | {(c.id, True)}) for val, birth, dec in states if (c.id, True) not in dec
                }
            if g == hi:
                kept = set()
                for val, birth, dec in states:
                    if (c.id, True) in dec:
                        kept.add((val, birth, dec))
                    elif c.status == "inflight":
                        kept.add((val, birth, dec | {(c.id, False)}))
                states = kept
        if g < n:
            states = _step(states, touches[g])
        if not states:
            return states, g
    return states, None


# --- reading the stores ------------------------------------------------------------------


@dataclass
class SegScan:
    """One live segment file as the format module reads it (offsets are absolute)."""

    number: int
    path: str
    last: bool
    kind: int
    salt: int
    data: bytes
    frames: list[Frame]
    damage: list[tuple[int, int, str]]
    tail: int


def scan_store(path: str) -> list[SegScan]:
    with open(os.path.join(path, "CURRENT"), "rb") as f:
        manifest = decode_manifest(f.read())
    out = []
    for i, number in enumerate(manifest.segments):
        seg_path = os.path.join(path, f"{number:010d}.seg")
        with open(seg_path, "rb") as f:
            data = f.read()
        kind, salt = decode_segment_header(data[:SEGMENT_HEADER_SIZE])
        last = i == len(manifest.segments) - 1
        scan = Scan(data[SEGMENT_HEADER_SIZE:], salt, complete=not last)
        frames = [f._replace(offset=f.offset + SEGMENT_HEADER_SIZE) for f in scan]
        damage = [(d.offset + SEGMENT_HEADER_SIZE, d.length, d.reason) for d in scan.damage]
        tail = scan.tail if last else 0
        out.append(SegScan(number, seg_path, last, kind, salt, data, frames, damage, tail))
    return out


def data_frames(scans: list[SegScan]) -> dict[int, Frame]:
    """seq -> frame of every data frame the replay applies."""
    out = {}
    for seg in scans:
        for f in seg.frames:
            if f.op == OP_SEAL:
                if seg.last:
                    break
                continue
            out[f.seq] = f
    return out


def replay_dict(scans: list[SegScan]) -> dict:
    """key -> (value, birthtime in s) after replaying the files, in birthtime order (the
    contract's order; replay gives it by itself unless damage lost a record)."""
    ser = Serializer("msgpack")
    state: dict = {}
    for f in _in_log_order(scans):
        if f.op == OP_SET:
            state[decode_key(f.key)] = (ser.decode(f.flags, f.value), f.birthtime_ns / 1e9)
        elif f.op == OP_DELETE:
            state.pop(decode_key(f.key), None)
    return dict(sorted(state.items(), key=lambda item: item[1][1]))


def _in_log_order(scans: list[SegScan]) -> Iterable[Frame]:
    for seg in scans:
        for f in seg.frames:
            if f.op == OP_SEAL:
                if seg.last:
                    break
                continue
            yield f


def replay_queue(scans: list[SegScan]) -> list[tuple[int, Any]]:
    """The pending (seq, item) pairs, oldest first."""
    pending: dict[int, Frame] = {}
    for f in _in_log_order(scans):
        if f.op == OP_PUT:
            pending[f.seq] = f
        elif f.op == OP_TAKE and len(f.key) == SEQ.size:
            pending.pop(SEQ.unpack(f.key)[0], None)
    ser = Serializer("pickle")
    return [(seq, ser.decode(f.flags, f.value)) for seq, f in pending.items()]


@dataclass
class DictView:
    items: list[tuple[Any, Any, float]]  # key, value, birthtime
    stats: dict
    warnings: int
    problems: list[str]
    replayed: dict = field(default_factory=dict)  # what replaying records() gives


def observe_dict(path: str) -> DictView:
    problems: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        d = IODict(path)
        try:
            keys = list(d)
            items = [(k, v, d.birthtime(k)) for k, v in d.items()]
            if [k for k, _, _ in items] != keys:
                problems.append("dict: items() and iteration disagree on the keys or their order")
            if list(reversed(d)) != keys[::-1]:
                problems.append("dict: reversed() is not iteration backwards")
            if len(d) != len(keys):
                problems.append(f"dict: len() is {len(d)} but iteration gives {len(keys)} keys")
            stats = d.stats()
            records_problems, replayed = _check_records(d)
            problems += records_problems
        finally:
            d.close()
    n = sum(1 for w in caught if issubclass(w.category, CorruptionWarning))
    return DictView(items, stats, n, problems, replayed)


def _check_records(d: IODict) -> tuple[list[str], dict]:
    """Problems with records(): seqs strictly increasing, and the birthtimes in it handed out
    strictly increasing: a record's birthtime is newer than every earlier record's, or it is
    a set repeating its key's birthtime (an overwrite), never one another key or a delete
    was given. And what replaying it gives (compared with the store by _compare_records)."""
    state: dict = {}
    last = -1
    newest = -math.inf
    owner: dict[float, Any] = {}  # birthtime -> the key it was handed out for (a delete: ("delete", key))
    for r in d.records():
        if r.seq <= last:
            return [f"dict: records() goes from seq {last} to {r.seq}"], state
        last = r.seq
        if r.birthtime > newest:
            newest = r.birthtime
            owner[r.birthtime] = r.key if r.op == "set" else ("delete", r.key)
        elif r.op != "set":
            return [
                f"dict: the delete of {r.key!r} (seq {r.seq}) has birthtime {r.birthtime}, not newer than "
                f"an earlier record's ({newest})"
            ], state
        elif r.birthtime in owner and not same(owner[r.birthtime], r.key):
            return [
                f"dict: the set of {r.key!r} (seq {r.seq}) has birthtime {r.birthtime}, which was handed out "
                f"for {owner[r.birthtime]!r}"
            ], state
        if r.op == "set":
            state[r.key] = r.value
        else:
            state.pop(r.key, None)
    return [], state


def _compare_records(hist: History, scans: list[SegScan], view: DictView, rep: Report, when: str) -> None:
    """records() replays to the store's items."""
    current = {k: v for k, v, _ in view.items}
    replayed = view.replayed

    def agree(state: dict) -> bool:
        return state.keys() == replayed.keys() and all(same(state[k], replayed[k]) for k in state)

    if agree(current):
        return
    differ = sorted(
        map(repr, {k for k in current.keys() | replayed.keys() if not same(current.get(k), replayed.get(k))})
    )
    rep.fail(f"dict {when}: replaying records() does not give the store's items (keys differing: {differ[:5]})")


@dataclass
class QueueView:
    items: list[Any]  # in the order they would be got
    stats: dict
    warnings: int
    problems: list[str]


def settle(path: str) -> None:
    """Open and close a queue store, so a torn tail is cut and an interrupted roll finished."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        DurableQueue(path).close()


def observe_queue(path: str) -> QueueView:
    """The queue's items, got from a copy of its files (the store itself keeps them)."""
    problems: list[str] = []
    scratch = tempfile.mkdtemp(prefix="torture-queue-copy-")
    try:
        copy = os.path.join(scratch, "q")
        shutil.copytree(path, copy)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            q = DurableQueue(copy)
            try:
                stats = q.stats()
                items = []
                while True:
                    try:
                        items.append(q.get_nowait())
                    except queue.Empty:
                        break
                if stats["items"] != len(items):
                    problems.append(f"queue: stats() says {stats['items']} items, {len(items)} could be got")
            finally:
                q.close()
        n = sum(1 for w in caught if issubclass(w.category, CorruptionWarning))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return QueueView(items, stats, n, problems)


# --- what persists from round to round ---------------------------------------------------


@dataclass
class History:
    nslots: int
    dict_base: list = field(default_factory=list)  # [(key, value, birthtime)] in order
    queue_base: list = field(default_factory=list)  # [iid] in order
    consumed: set = field(default_factory=set)  # items got (or taken by a killed get) in earlier rounds
    damaged_items: set = field(default_factory=set)  # items whose PUT or TAKE was damaged: exempt
    marks: list = field(default_factory=list)  # (store, segment number, start, end) of damage made

    def __post_init__(self) -> None:
        self.keys = KeyTable(self.nslots)


@dataclass
class Report:
    failures: list[str] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)

    def fail(self, text: str) -> None:
        self.failures.append(text)


def check_regions(hist: History, store: str, path: str, stats: dict, n_warnings: int, rep: Report) -> list:
    """Every damaged region the files hold is one the driver made, and the store counts them."""
    scans = scan_store(path)
    regions = [(seg.number, start, length, reason) for seg in scans for start, length, reason in seg.damage]
    if stats["corrupt_records"] != len(regions):
        rep.fail(
            f"{store}: stats()['corrupt_records'] is {stats['corrupt_records']}, the files hold {len(regions)} "
            f"damaged regions: {regions}"
        )
    if n_warnings != stats["corrupt_records"]:
        rep.fail(f"{store}: {n_warnings} CorruptionWarnings on open, but corrupt_records is {stats['corrupt_records']}")
    for number, start, length, reason in regions:
        if not any(s == store and n == number and a < start + length and start < b for s, n, a, b in hist.marks):
            rep.fail(
                f"{store}: segment {number} has a damaged region the driver did not make: {length} bytes at "
                f"{start} ({reason}) -- a kill or a failed write left garbage in the middle of a file"
            )
    return scans


def check_round(hist: History, incs: list[Incarnation], dict_path: str, queue_path: str) -> Report:
    """Judge one round: open the stores and compare them with the journals and ``hist``.

    On success ``hist`` moves on to the state found (the baseline of the next round).
    """
    rep = Report()
    by_slot, problems, counts = parse_ops(incs)
    rep.counts.update(counts)
    for p in problems:
        rep.fail(p)
    all_ops = [op for ops in by_slot.values() for op in ops]
    try:
        dview = observe_dict(dict_path)
    except Exception as exc:  # any failure to read the store is a finding
        rep.fail(f"dict: opening or reading the store failed: {type(exc).__name__}: {exc}")
        return rep
    rep.failures += dview.problems
    dscans = check_regions(hist, "dict", dict_path, dview.stats, dview.warnings, rep)
    _check_replay_dict(hist, dscans, dview, rep, "after the round")
    _check_dict(hist, by_slot, all_ops, dview, rep)
    try:
        settle(queue_path)
        qview = observe_queue(queue_path)
    except Exception as exc:  # any failure to read the store is a finding
        rep.fail(f"queue: opening or reading the store failed: {type(exc).__name__}: {exc}")
        return rep
    rep.failures += qview.problems
    qscans = check_regions(hist, "queue", queue_path, qview.stats, qview.warnings, rep)
    _check_replay_queue(qscans, qview, rep, "after the round")
    _check_queue(hist, all_ops, qview, rep)
    if not rep.failures:
        hist.dict_base = dview.items
        hist.queue_base = [iid_of(i) for i in qview.items]
    return rep


def _check_replay_dict(hist: History, scans: list[SegScan], view: DictView, rep: Report, when: str) -> None:
    """The store holds what a replay of its files gives (values, order, birthtimes), and
    records() replays to it too."""
    _compare_records(hist, scans, view, rep, when)
    model = replay_dict(scans)
    got = [(k, v, b) for k, v, b in view.items]
    want = [(k, v, b) for k, (v, b) in model.items()]
    if len(got) != len(want) or not all(same(a, b) for a, b in zip(got, want)):
        first = next((i for i, (a, b) in enumerate(zip(got, want)) if not same(a, b)), min(len(got), len(want)))
        rep.fail(
            f"dict {when}: the store differs from a replay of its files at position {first}: store has "
            f"{got[first] if first < len(got) else 'nothing'!r:.300}, replay "
            f"{want[first] if first < len(want) else 'nothing'!r:.300} ({len(got)} vs {len(want)} keys)"
        )


def _check_replay_queue(scans: list[SegScan], view: QueueView, rep: Report, when: str) -> None:
    model = [item for _, item in replay_queue(scans)]
    if len(model) != len(view.items) or not all(same(a, b) for a, b in zip(model, view.items)):
        rep.fail(f"queue {when}: the items got ({len(view.items)}) differ from a replay of the files ({len(model)})")


def _check_dict(hist: History, by_slot: dict, all_ops: list[Op], view: DictView, rep: Report) -> None:
    keys = hist.keys
    base: dict[tuple, tuple] = {}  # kid -> (wid, birth, birthtime)
    base_max_bt = -math.inf
    for pos, (key, value, bt) in enumerate(hist.dict_base):
        base[keys.kid(key)] = (wid_of(value), (0, pos, 0, 0), bt)
        base_max_bt = max(base_max_bt, bt)
    touches, clears = key_touches(all_ops)
    observed: dict[tuple, tuple] = {}
    order: list[tuple] = []
    for key, value, bt in view.items:
        kid = keys.kid(key)
        if kid is None:
            rep.fail(f"dict: key {key!r:.200} was never written by any worker")
            continue
        wid = wid_of(value)
        if wid is None:
            rep.fail(f"dict: key {key!r} holds {value!r:.300}, a value no worker wrote")
            continue
        observed[kid] = (wid, bt)
        order.append(kid)
    rep.counts["keys_checked"] += len(all_kids(hist.nslots))
    births: dict[tuple, set] = {}
    decisions: dict[tuple, dict[tuple, set]] = {}  # op id -> kid -> {applied?}
    for kid in all_kids(hist.nslots):
        ts = touches.get(kid, [])
        b = base.get(kid, (None, None, None))
        obs = observed.get(kid, (None, None))[0]
        if kid[0] == "s":
            _check_shared(kid, b, ts, clears, obs, rep)
            continue
        if any(t.op.slot != kid[1] for t in ts):
            rep.fail(f"dict: key {kid} touched by another slot (the workload broke its own rule)")
            continue
        finals, dead_at = run_key((b[0], b[1]), ts, clears)
        if dead_at is not None:
            rep.fail(
                f"dict: key {key_of(kid)!r}: the results the calls returned are impossible for any history; "
                f"no history survives {ts[dead_at].op.describe() if dead_at < len(ts) else 'the clears'}\n"
                + _history(b, ts, clears)
            )
            continue
        fit = {s for s in finals if s[0] == obs}
        if not fit:
            allowed = sorted({repr(s[0]) for s in finals})
            what = "lost an acknowledged write" if obs is None else "holds a value it may not hold"
            rep.fail(
                f"dict: key {key_of(kid)!r} {what}: it holds {obs!r}, the journals allow only "
                f"{', '.join(allowed)}\n" + _history(b, ts, clears)
            )
            continue
        if obs is not None:
            births[kid] = {s[1] for s in fit}
            bt = observed[kid][1]
            if all(s[1][0] == 0 for s in fit) and bt != b[2]:
                rep.fail(f"dict: key {key_of(kid)!r} was not set anew, yet its birthtime changed from {b[2]} to {bt}")
            if all(s[1][0] == 1 for s in fit) and bt <= base_max_bt:
                rep.fail(
                    f"dict: key {key_of(kid)!r} was born in this round, yet its birthtime {bt} is not after "
                    f"those of the keys already there ({base_max_bt})"
                )
        for s in fit:
            for op_id, applied in s[2]:
                decisions.setdefault(op_id, {}).setdefault(kid, set()).add(applied)
    for op_id, per_key in decisions.items():
        possible = {True, False}
        for applied in per_key.values():
            possible &= applied
        if not possible:
            split = {str(key_of(k)): sorted(v) for k, v in per_key.items()}
            rep.fail(f"dict: the batch (update or clear) {op_id}, in flight at a kill, landed only in part: {split}")
    _check_order(hist, order, observed, births, by_slot, rep)


def _history(base: tuple, ts: list[Touch], clears: list[Op]) -> str:
    lines = [f"    baseline: {base[0]!r}"]
    for t in ts[-12:]:
        lines.append(f"    {t.op.describe()}  [{t.op.t0:.6f} .. {t.op.t1:.6f}]")
    for c in clears:
        lines.append(f"    clear: {c.describe()}  [{c.t0:.6f} .. {c.t1:.6f}]")
    return "\n".join(lines)


def _removed(t: Touch) -> bool:
    """An acknowledged call on the key that removed it."""
    return t.op.status == "ok" and (
        (t.kind == "del" and t.op.result == "ok") or (t.kind == "pop" and t.op.result is not None)
    )


def _inserted(t: Touch) -> bool:
    """An acknowledged call on the key that wrote its value."""
    return t.op.status == "ok" and (t.kind == "set" or (t.kind == "setdefault" and t.op.result == t.wid))


def _check_shared(kid: tuple, base: tuple, ts: list[Touch], clears: list[Op], obs: Any, rep: Report) -> None:
    key = key_of(kid)
    removals_possible = [
        (t.op.t0, t.op.t1) for t in ts if t.kind in ("del", "pop") and (t.op.status == "inflight" or _removed(t))
    ] + [(c.t0, c.t1) for c in clears if c.status != "fail"]
    writes_acked: list[tuple[float, Any]] = [(t.op.t0, t) for t in ts if _inserted(t) or _removed(t)]
    writes_acked += [(c.t0, c) for c in clears if c.status == "ok"]
    if obs is not None:
        source: Any
        if base[0] is not None and obs == base[0]:
            source, end = "baseline", -math.inf
        else:
            source = next((t for t in ts if t.wid == obs and t.kind in ("set", "setdefault")), None)
            if source is None:
                rep.fail(f"dict: shared key {key!r} holds {obs!r}, which was never written to it")
                return
            if source.op.status == "fail":
                rep.fail(f"dict: shared key {key!r} holds the value of a write that failed: {source.op.describe()}")
                return
            if source.kind == "setdefault" and source.op.status == "ok" and source.op.result != source.wid:
                rep.fail(f"dict: shared key {key!r} holds the default of a setdefault that returned another value")
                return
            end = source.op.t1
        for t0, t in writes_acked:
            if t is not source and t0 > end:
                later = t.op.describe() if isinstance(t, Touch) else t.describe()
                rep.fail(f"dict: shared key {key!r} holds {obs!r}, but {later} was acknowledged after that write")
                return
    else:
        must = [(t.op.t0, t) for t in ts if _inserted(t)]
        if base[0] is not None:
            must.append((-math.inf, None))
        for t0, t in must:
            if not any(r1 > t0 for _, r1 in removals_possible):
                what = t.op.describe() if t else f"its value {base[0]!r} from before the round"
                rep.fail(f"dict: shared key {key!r} is missing, but nothing could have removed {what}")
                return


def _check_order(hist: History, order: list, observed: dict, births: dict, by_slot: dict, rep: Report) -> None:
    # Birthtimes strictly increase along the order.
    last_bt, last_key = -math.inf, None
    for kid in order:
        key = key_of(kid)
        bt = observed[kid][1]
        if bt <= last_bt:
            rep.fail(
                f"dict: birthtimes do not increase along the order: {last_key!r} ({last_bt}) comes before "
                f"{key!r} ({bt})"
            )
            break
        last_bt, last_key = bt, key
    # Within a slot: the order of the keys follows their births.
    chosen: dict[tuple, tuple] = {}
    prev: dict[int, tuple] = {}
    for kid in order:
        if kid[0] != "o" or kid not in births:
            continue
        slot = kid[1]
        floor = prev.get(slot, (-1,))
        ok = sorted(b for b in births[kid] if b > floor)
        if not ok:
            rep.fail(
                f"dict: key {key_of(kid)!r} is out of order within slot {slot}: it comes after a key born later "
                f"(its births: {sorted(births[kid])}, previous: {floor})"
            )
            return
        chosen[kid] = prev[slot] = ok[0]
    # Across slots: a key whose birth call returned before another key's began comes first.
    ops = {op.id: op for ops in by_slot.values() for op in ops}
    latest_begin, latest_kid = -math.inf, None
    for kid in order:
        if kid not in births or len(births[kid]) != 1:
            continue
        birth = next(iter(births[kid]))
        if birth[0] != 1:
            continue
        op = ops[(kid[1], birth[1], birth[2])]
        if op.t1 < latest_begin:
            rep.fail(
                f"dict: key {key_of(kid)!r} (born by {op.describe()}, returned at {op.t1:.6f}) comes after "
                f"{key_of(latest_kid)!r}, whose birth began only at {latest_begin:.6f}"
            )
            return
        if op.t0 > latest_begin:
            latest_begin, latest_kid = op.t0, kid


# --- the queue ---------------------------------------------------------------------------


def _check_queue(hist: History, all_ops: list[Op], view: QueueView, rep: Report) -> None:
    put_of: dict[tuple, tuple[Op, int]] = {}
    batches = []
    for op in all_ops:
        if op.name in ("put", "put_many"):
            iids = [tuplify(i) for i in op.args["items"]]
            for j, iid in enumerate(iids):
                put_of[iid] = (op, j)
            batches.append((op, iids))
    gets = [op for op in all_ops if op.name in ("qget", "qlease")]  # (a qlease acks what it leased)
    inflight_gets = sum(1 for op in gets if op.status == "inflight")
    # A worker killed holding a lease: its item comes back after items got meanwhile, so it
    # is out of FIFO order by design (or it was acked just before the kill: one missing).
    # (Likewise one whose ack failed under an injected fault: the lease stayed out until the kill.)
    came_back = {op.leased for op in gets if op.status != "ok" and op.leased is not None}
    got: list[tuple[tuple, Op]] = []
    for op in gets:
        if op.status == "ok" and op.result is not None:
            if op.result == "bad" or isinstance(op.result, dict):
                rep.fail(f"queue: a get returned an item no worker put: {op.describe()}")
                continue
            got.append((op.result, op))
    remaining = []
    for item in view.items:
        iid = iid_of(item)
        if iid is None:
            rep.fail(f"queue: the queue holds {item!r:.200}, an item no worker put")
        else:
            remaining.append(iid)
    seen = Counter([iid for iid, _ in got] + remaining)
    rep.counts["items_checked"] += len(seen)
    twice = [iid for iid, n in seen.items() if n > 1]
    if twice:
        rep.fail(f"queue: items delivered (or still queued) twice this round: {twice[:5]}")
    again = [iid for iid in seen if iid in hist.consumed and iid not in hist.damaged_items]
    if again:
        rep.fail(f"queue: items got in an earlier round came back: {again[:5]}")
    base_set = set(hist.queue_base)
    for iid in seen:
        if iid in base_set:
            continue
        source = put_of.get(iid)
        if source is None:
            if iid not in hist.damaged_items:
                rep.fail(f"queue: item {iid} was never put (this round or still queued from the last)")
        elif source[0].status == "fail":
            rep.fail(f"queue: item {iid} comes from a put that failed: {source[0].describe()}")
    missing = set(hist.queue_base) - set(seen)
    for op, iids in batches:
        if op.status == "ok":
            missing |= set(iids) - set(seen)
        elif op.status == "inflight":
            n = sum(1 for iid in iids if iid in seen)
            if 0 < n < len(iids):
                missing |= {iid for iid in iids if iid not in seen}
    missing -= hist.damaged_items
    if len(missing) > inflight_gets:
        rep.fail(
            f"queue: {len(missing)} items put (and acknowledged, or part of a batch seen in part) are gone, "
            f"and only {inflight_gets} gets were cut short by a kill: {sorted(missing)[:8]}"
        )
    # (And one cut short before it could journal its item: killed, or its journal write failed
    # under the injected fault, which caps every file of the process. That many may be late.)
    unknown = sum(1 for op in gets if op.name == "qlease" and op.status != "ok" and op.leased is None)
    _check_fifo(hist, put_of, got, remaining, batches, rep, came_back, unknown)
    if not rep.failures:
        hist.consumed |= {iid for iid, _ in got} | missing
        for op, iids in batches:  # a put in flight whose items never showed up can never show up later
            if op.status != "ok":
                hist.consumed |= {iid for iid in iids if iid not in seen}


def _check_fifo(
    hist: History, put_of: dict, got: list, remaining: list, batches: list, rep: Report, came_back: set, unknown: int
) -> None:
    """An item whose put returned before another's began is taken before it (damaged items, and
    items whose lease came back from a killed worker, aside). ``unknown`` leases were cut short
    by a kill before their worker could journal which item they took: that many items may come
    back late too (each the one taken late in a breach)."""
    while True:
        breach = _fifo_breach(hist, put_of, got, remaining, batches, came_back)
        if breach is None:
            return
        late, message = breach
        if not unknown or late is None:
            rep.fail(message)
            return
        came_back = came_back | {late}
        unknown -= 1


def _fifo_breach(
    hist: History, put_of: dict, got: list, remaining: list, batches: list, came_back: set
) -> tuple[tuple | None, str] | None:
    """The first FIFO breach: (the item taken late, or None, and what broke), or None."""
    far = 1e12
    base_pos = {iid: i for i, iid in enumerate(hist.queue_base)}
    rows = []  # (put begin, put end, take begin, take end, iid)
    take = {}
    for iid, op in got:
        take[iid] = (op.t0, op.t1)
    for pos, iid in enumerate(remaining):
        take[iid] = (far + pos, far + pos)
    for iid, (tb, te) in take.items():
        if iid in hist.damaged_items or iid in came_back:
            continue
        if iid in base_pos:
            pb = pe = -far + base_pos[iid]
        elif iid in put_of:
            op = put_of[iid][0]
            pb, pe = op.t0, op.t1
        else:
            continue
        rows.append((pb, pe, tb, te, iid))
    by_end = sorted(rows, key=lambda r: r[1])
    ends = [r[1] for r in by_end]
    best: list[tuple[float, tuple]] = []  # running max of take begin over by_end
    top = (-math.inf, None)
    for r in by_end:
        if r[2] > top[0]:
            top = (r[2], r[4])
        best.append(top)
    for pb, _, _, te, iid in rows:
        i = bisect.bisect_left(ends, pb)  # rows whose put ended before this one's began
        if i and best[i - 1][0] > te:
            other = best[i - 1][1]
            return other, (
                f"queue: FIFO broken: item {other} was put before item {iid} but taken after it "
                f"({_where(other, take, far)} vs {_where(iid, take, far)})"
            )
    for op, iids in batches:
        seen = [iid for iid in iids if iid in take and iid not in hist.damaged_items and iid not in came_back]
        for a, b in zip(seen, seen[1:]):
            if take[b][1] < take[a][0]:
                return a, f"queue: FIFO broken inside the batch {op.describe()}: {b} was taken before {a}"
    return None


def _where(iid: tuple, take: dict, far: float) -> str:
    tb = take[iid][0]
    return f"still queued at position {int(tb - far)}" if tb >= far else f"got at {tb:.6f}"


# --- damage: what it may cost -------------------------------------------------------------


def segment_frames(seg: SegScan) -> list[Frame] | None:
    """Every frame of an undamaged segment, bookkeeping frames included; None if it is damaged."""
    if seg.damage or seg.tail:
        return None
    frames, pos = [], SEGMENT_HEADER_SIZE
    while pos < len(seg.data):
        f = decode_frame(seg.data, pos, seg.salt)
        if f is None:
            return None
        frames.append(f)
        pos += f.length
    return frames


def units(frames: list[Frame]) -> list[list[Frame]]:
    """Frames grouped as written: a batch (BEGIN .. COMMIT) is one unit, any other frame one each."""
    out: list[list[Frame]] = []
    batch = None
    for f in frames:
        if batch is not None:
            batch.append(f)
            if f.op == OP_BATCH_COMMIT:
                out.append(batch)
                batch = None
        elif f.op == OP_BATCH_BEGIN:
            batch = [f]
        else:
            out.append([f])
    if batch is not None:
        out.append(batch)
    return out


def changed_ranges(old: bytes, new: bytes) -> list[tuple[int, int]]:
    """The [start, end) runs of bytes that differ between two versions of a file (bytes cut
    off the end count as changed)."""
    ranges: list[tuple[int, int]] = []
    start = None
    for i in range(max(len(old), len(new))):
        differs = i >= len(old) or i >= len(new) or old[i] != new[i]
        if differs and start is None:
            start = i
        elif not differs and start is not None:
            ranges.append((start, i))
            start = None
    if start is not None:
        ranges.append((start, max(len(old), len(new))))
    return ranges


def damage_loss(frames: list[Frame], last: bool, ranges: list[tuple[int, int]]) -> set[int]:
    """The seqs that changing bytes ``ranges`` of a clean segment may cost.

    It may cost the data frames with a changed byte; and, in the last segment, if
    no intact frame follows the last of them, that damage is indistinguishable
    from a torn append: the whole unit (batch) it begins in goes, and everything
    after it. In an earlier segment nothing else may go (CONTRACT 3: no intact
    record is lost because of a damaged one).
    """
    hit = [i for i, f in enumerate(frames) if any(a < f.offset + f.length and f.offset < b for a, b in ranges)]
    lost = {frames[i].seq for i in hit if frames[i].op in DATA_OPS}
    tail: set[int] = set()
    if last and hit and hit[-1] == len(frames) - 1:
        first = hit[-1]  # the start of the last run of damaged frames: nothing intact follows it
        while first - 1 in hit:
            first -= 1
        groups = units(frames)
        seq = frames[first].seq
        start = next(k for k, u in enumerate(groups) if any(f.seq == seq for f in u))
        for u in groups[start:]:
            tail |= {f.seq for f in u if f.op in DATA_OPS}
    return lost | tail


def repair_loss(before: list[SegScan], dropped: Iterable[Any]) -> set[int]:
    """The seqs of the data frames (as ``before`` read them) that repair's findings
    (path, offset, length, reason, damage) say it dropped: those a region covers,
    and every one of a segment it reports missing."""
    by_path = {seg.path: seg for seg in before}
    seqs: set[int] = set()
    for path, offset, length, reason, _ in dropped:
        seg = by_path.get(path)
        if seg is None:
            continue  # CURRENT, or a segment no earlier reader could read
        whole = length == 0 and "missing" in reason
        for f in seg.frames:
            if f.op in DATA_OPS and (whole or (offset < f.offset + f.length and f.offset < offset + length)):
                seqs.add(f.seq)
    return seqs


def check_damage(hist: History, store: str, path: str, before: list[SegScan], events: list[dict], rep: Report) -> None:
    """After the driver damaged ``store``'s files: the records lost are the ones the damage
    explains, no record appeared, and a fresh open holds exactly a replay of the files."""
    after = scan_store(path)
    old, new = data_frames(before), data_frames(after)
    lost = set(old) - set(new)
    phantom = set(new) - set(old)
    if phantom:
        rep.fail(f"{store}: records appeared after damage: seqs {sorted(phantom)[:8]}")
    expected: set[int] = set()
    for ev in events:
        expected |= set(ev["loss"])
    extra, kept = lost - expected, expected - lost
    if extra:
        rep.fail(
            f"{store}: damage cost intact records too: seqs {sorted(extra)[:8]} were lost besides "
            f"{sorted(expected)[:8]} ({_describe_events(events)})\n" + _frames_text(old, extra)
        )
    if kept:
        rep.fail(f"{store}: damaged records were not dropped: seqs {sorted(kept)[:8]} ({_describe_events(events)})")
    rep.counts["records_lost_to_damage"] += len(lost)
    if store == "dict":
        view = observe_dict(path)
        rep.failures += view.problems
        _check_replay_dict(hist, after, view, rep, "after damage")
        check_regions(hist, store, path, view.stats, view.warnings, rep)
        if not rep.failures:
            hist.dict_base = view.items
            _check_dict_order_after_damage(hist, view, rep)
    else:
        puts = {f.seq: f for f in old.values() if f.op == OP_PUT}
        ser = Serializer("pickle")
        for seq in lost:
            f = old[seq]
            put = f if f.op == OP_PUT else puts.get(SEQ.unpack(f.key)[0]) if len(f.key) == SEQ.size else None
            if put is not None:
                iid = iid_of(ser.decode(put.flags, put.value))
                if iid is not None:
                    hist.damaged_items.add(iid)
        settle(path)
        qview = observe_queue(path)
        rep.failures += qview.problems
        _check_replay_queue(scan_store(path), qview, rep, "after damage")
        check_regions(hist, store, path, qview.stats, qview.warnings, rep)
        if not rep.failures:
            hist.queue_base = [iid_of(i) for i in qview.items]


def _check_dict_order_after_damage(hist: History, view: DictView, rep: Report) -> None:
    """Birthtimes strictly increase along the order, also after damage cost records."""
    last, last_key = -math.inf, None
    for key, _, bt in view.items:
        if bt <= last:
            rep.fail(
                f"dict after damage: birthtimes do not increase along the order: {last_key!r} ({last}) "
                f"before {key!r} ({bt})"
            )
            return
        last, last_key = bt, key


def _describe_events(events: list[dict]) -> str:
    return "; ".join(ev["what"] for ev in events)


def _frames_text(frames: dict[int, Frame], seqs: set[int]) -> str:
    lines = []
    for seq in sorted(seqs)[:8]:
        f = frames[seq]
        lines.append(f"    seq {seq}: op {f.op} flags {f.flags:#x} at offset {f.offset}, {f.length} bytes")
    return "\n".join(lines)
