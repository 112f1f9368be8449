"""A process dies at every named crash point (IODICT_LOG_CRASH_AT): the store it
leaves opens with exactly what was acknowledged, plus at most the call that was
in flight, whole; and it goes on working.

The child journals each call before making it ("do") and after it returned
("ok"), so the test knows what was acknowledged and what was in flight.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from iodict_log import DurableQueue, IODict
from iodict_log.crashpoints import CRASH_EXIT, POINTS

WORKLOAD = textwrap.dedent(
    """
    import json, sys
    import iodict_log.log
    from iodict_log import DurableQueue, IODict

    iodict_log.log.HINT_AFTER_RECORDS = 1  # every close writes a hint file
    path, journal = sys.argv[1], open(sys.argv[2], "a")

    def call(op, *args):
        journal.write(json.dumps(["do", op, *args]) + "\\n")
        journal.flush()
        result = {
            "set": lambda k, v: d.__setitem__(k, v),
            "del": lambda k: d.__delitem__(k),
            "update": lambda items: d.update(items),
            "compact": lambda: d.compact(),
            "put": lambda item: q.put(item),
            "get": lambda: q.get_nowait(),
        }[op](*args)
        journal.write(json.dumps(["ok", op, *args, result if op == "get" else None]) + "\\n")
        journal.flush()

    for rnd in range(3):
        d = IODict(path + "/d", segment_bytes=4096, auto_compact=False)
        for i in range(80):
            call("set", f"k{i % 25}", [rnd, i, "x" * 40])
            if i % 9 == 4 and f"k{(i + 7) % 25}" in d:
                call("del", f"k{(i + 7) % 25}")
            if i % 20 == 10:
                call("update", [[f"b{rnd}-{i}-{n}", n] for n in range(4)])
        call("compact")
        call("set", f"after-compact-{rnd}", rnd)
        d.close()
        q = DurableQueue(path + "/q", segment_bytes=4096)
        for i in range(120):
            call("put", [rnd, i, "y" * 30])
        for i in range(100):
            call("get")
        q.close()
    """
)


def _expected(journal: str) -> tuple[list[dict], list[list]]:
    """The dict states and queue contents the store may hold: after every
    acknowledged call, and after the call in flight as well (if any)."""
    d: dict = {}
    q: list = []
    in_flight = None
    with open(journal) as lines:
        calls = [json.loads(line) for line in lines]
    for kind, op, *args in calls:
        if kind == "do":
            in_flight = (op, args)
            continue
        in_flight = None
        _apply(d, q, op, args)
    states = [(dict(d), list(q))]
    if in_flight:
        d2, q2 = dict(d), list(q)
        _apply(d2, q2, in_flight[0], [*in_flight[1], None])
        states.append((d2, q2))
    return [s[0] for s in states], [s[1] for s in states]


def _apply(d: dict, q: list, op: str, args: list) -> None:
    if op == "set":
        d[args[0]] = args[1]
    elif op == "del":
        del d[args[0]]
    elif op == "update":
        d.update((k, v) for k, v in args[0])
    elif op == "put":
        q.append(args[0])
    elif op == "get":
        q.pop(0)  # FIFO: whatever the store returned, it is the oldest


# Later passes of the points the workload passes often, to crash deep into it too.
DEEP = [("append.written", 700), ("batch.half", 8), ("roll.sealed", 12), ("roll.created", 12), ("queue.released", 5)]


@pytest.mark.parametrize(("point", "nth"), [(p, n) for p in POINTS for n in (1, 3)] + DEEP)
def test_a_crash_at_each_point_keeps_what_was_acknowledged(tmp_path, point, nth):
    journal = tmp_path / "journal"
    env = {**os.environ, "IODICT_LOG_CRASH_AT": f"{point}:{nth}"}
    child = subprocess.run(
        [sys.executable, "-c", WORKLOAD, str(tmp_path), str(journal)], env=env, capture_output=True, timeout=120
    )
    assert child.returncode == CRASH_EXIT, f"the workload never reached {point} {nth}x: {child.stderr.decode()}"

    dicts, queues = _expected(str(journal))
    with IODict(tmp_path / "d", segment_bytes=4096, auto_compact=False) as d:
        got = list(d.items())
        assert got in [list(s.items()) for s in dicts], f"dict after a crash at {point}: {got}"
        births = [d.birthtime(k) for k in d]
        assert births == sorted(births) and len(set(births)) == len(births)
        d["still-works"] = 1
        d.compact()
        assert list(d.items()) == [*got, ("still-works", 1)]
    if (tmp_path / "q").exists():
        with DurableQueue(tmp_path / "q", segment_bytes=4096) as q:
            items = [q.get_nowait() for _ in range(q.qsize())]
            assert items in queues, f"queue after a crash at {point}: {items}"


def test_every_crash_point_is_in_the_code():
    import iodict_log

    package = pathlib.Path(iodict_log.__file__).parent
    source = "".join(p.read_text() for p in package.glob("*.py") if p.name != "crashpoints.py")
    assert [p for p in POINTS if f'"{p}"' not in source] == []


def test_a_misspelt_crash_point_is_refused():
    env = {**os.environ, "IODICT_LOG_CRASH_AT": "no.such.point:1"}
    child = subprocess.run([sys.executable, "-c", "import iodict_log"], env=env, capture_output=True, timeout=60)
    assert child.returncode == 1 and b"IODICT_LOG_CRASH_AT" in child.stderr
