"""tools/torture.py: the torture run itself (a short one, for CI), and its checker's ability to fail.

The long runs are for people (``python tools/torture.py --minutes 30``); here a
fixed seed runs for about a minute with real processes and real SIGKILLs, and
the test insists that it both passed and actually did something: killed
workers, damaged files, checked records. The checker gets its own fast tests:
a store and a journal that disagree must be reported, and ones that agree
must not be.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import time

import pytest

from iodict_log import DurableQueue, IODict

TOOLS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools")
TORTURE = os.path.join(TOOLS, "torture.py")


def _load_oracle():
    spec = importlib.util.spec_from_file_location("torture_oracle", os.path.join(TOOLS, "torture_oracle.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("torture_oracle", module)
    spec.loader.exec_module(module)
    return module


oracle = _load_oracle()

CI_SECONDS = 55  # plus the last round's checks: about a minute in all
CI_SEED = 20261126


def test_a_short_torture_run_kills_damages_checks_and_passes(tmp_path):
    args = [sys.executable, TORTURE, "--seconds", str(CI_SECONDS), "--seed", str(CI_SEED), "--processes", "3"]
    args += ["--dir", str(tmp_path / "work")]
    started = time.monotonic()
    proc = subprocess.run(args, capture_output=True, text=True, timeout=CI_SECONDS + 240)
    elapsed = time.monotonic() - started
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    found = re.search(r"^SUMMARY (.*)$", proc.stdout, re.M)
    assert found, out[-3000:]
    summary = {k: int(v) for k, v in (pair.split("=") for pair in found.group(1).split())}
    assert summary["failures"] == 0
    assert summary["rounds"] >= 3, summary
    assert summary["kills"] >= 10, summary
    assert summary["records_checked"] >= 1000, summary
    assert summary["ops_acked"] >= 1000, summary
    assert summary["bit_flips"] + summary["sector_damage"] + summary["truncations"] >= 1, summary
    assert summary["write_faults"] >= 1, summary
    assert summary["current_damage"] + summary["header_damage"] + summary["deleted_segments"] >= 1, summary
    assert summary["repairs"] >= 1, summary  # (and what each repair reported dropped was all that went missing)
    assert elapsed < CI_SECONDS + 120, f"took {elapsed:.0f} s"


# --- the checker can fail -------------------------------------------------------------------------


class Scenario:
    """A one-slot round written by hand: the journal says one thing, the store holds what we make it hold."""

    def __init__(self, tmp_path) -> None:
        self.dir = tmp_path
        self.dict_path = str(tmp_path / "dict")
        self.queue_path = str(tmp_path / "queue")
        self.d = IODict(self.dict_path)
        self.q = DurableQueue(self.queue_path)
        self.journal = oracle.Journal(str(tmp_path / "s0-i0.jsonl"))
        self.opno = 0

    def call(self, op: str, do=None, result=None, failed=False, **args):
        """Journal a call as made and acknowledged (or as failed under an injected write
        fault); ``do`` is what really reaches the store."""
        self.opno += 1
        if failed:
            args["fault"] = 40
        self.journal.write(e="b", i=self.opno, t=time.monotonic(), op=op, **args)
        if do is not None:
            do()
        if failed:
            self.journal.write(e="f", i=self.opno, t=time.monotonic(), err="OSError: [Errno 27] File too large")
        else:
            self.journal.write(e="a", i=self.opno, t=time.monotonic(), r=result)
        return self.opno

    def set(self, n: int, really: bool = True) -> tuple:
        kid, wid = ("o", 0, n), (1, 0, 0, self.opno + 1, 0)
        key, value = oracle.key_of(kid), oracle.make_value(wid)
        self.call("set", (lambda: self.d.__setitem__(key, value)) if really else None, k=kid, w=wid)
        return wid

    def put(self, really: bool = True) -> tuple:
        iid = (1, 0, 0, self.opno + 1, 0)
        self.call("put", (lambda: self.q.put(oracle.make_item(iid))) if really else None, items=[iid])
        return iid

    def get(self, really: bool = True, claim=None):
        item = self.q.get_nowait() if really else None
        self.call("qget", result=oracle.iid_of(item) if claim is None else claim, block=False)

    def check(self) -> list[str]:
        self.journal.write(e="end", t=time.monotonic())
        self.journal.close()
        self.d.close()
        self.q.close()
        inc = oracle.Incarnation(0, 0, self.journal.path, returncode=0)
        return oracle.check_round(oracle.History(1), [inc], self.dict_path, self.queue_path).failures


def test_checker_passes_a_store_that_matches_its_journal(tmp_path):
    s = Scenario(tmp_path)
    s.set(0)
    s.set(1)
    s.set(0)
    s.call("del", lambda: s.d.__delitem__(oracle.key_of(("o", 0, 1))), result="ok", k=("o", 0, 1))
    s.put()
    s.put()
    s.get()
    assert s.check() == []


def test_checker_reports_a_lost_acknowledged_dict_write(tmp_path):
    s = Scenario(tmp_path)
    s.set(0)
    s.set(1, really=False)  # acknowledged, but never reaches the store
    failures = s.check()
    assert any("lost an acknowledged write" in f for f in failures), failures


def test_checker_reports_a_stale_value(tmp_path):
    s = Scenario(tmp_path)
    s.set(0)
    s.set(0, really=False)  # the later write is lost: the store holds the older value
    failures = s.check()
    assert any("holds a value it may not hold" in f for f in failures), failures


def test_checker_reports_a_value_nobody_wrote(tmp_path):
    s = Scenario(tmp_path)
    s.set(0)
    s.d["intruder"] = "x"
    failures = s.check()
    assert any("never written" in f for f in failures), failures


def test_checker_reports_a_write_that_raised_yet_landed(tmp_path):
    s = Scenario(tmp_path)
    kid, wid = ("o", 0, 3), (1, 0, 0, 1, 0)
    s.call("set", lambda: s.d.__setitem__(oracle.key_of(kid), oracle.make_value(wid)), failed=True, k=kid, w=wid)
    failures = s.check()
    assert any("holds a value it may not hold" in f for f in failures), failures


def test_checker_reports_a_lost_write_to_a_shared_key(tmp_path):
    s = Scenario(tmp_path)
    kid, wid = ("s", 2), (1, 0, 0, 1, 0)
    s.call("set", None, k=kid, w=wid)  # acknowledged, never in the store, nothing removed it
    failures = s.check()
    assert any("shared key" in f and "is missing" in f for f in failures), failures


def test_checker_reports_a_lost_queue_item(tmp_path):
    s = Scenario(tmp_path)
    s.put()
    s.put(really=False)  # acknowledged put, never in the queue
    failures = s.check()
    assert any("are gone" in f for f in failures), failures


def test_checker_reports_an_item_delivered_twice(tmp_path):
    s = Scenario(tmp_path)
    iid = s.put()
    s.get(really=False, claim=list(iid))  # a get that claims the item, which stays queued
    failures = s.check()
    assert any("twice" in f for f in failures), failures


def test_checker_reports_items_out_of_fifo_order(tmp_path):
    s = Scenario(tmp_path)
    first, second = s.put(), s.put()
    s.q.get_nowait()
    s.q.get_nowait()
    s.get(really=False, claim=list(second))
    s.get(really=False, claim=list(first))
    failures = s.check()
    assert any("FIFO" in f for f in failures), failures


@pytest.mark.parametrize("last", [False, True])
def test_damage_loss_is_the_frames_hit_or_in_the_last_segment_the_torn_unit(last):
    frames = [
        oracle.Frame(20, 50, oracle.OP_SET, 0, 1, 0, b"", b""),
        oracle.Frame(70, 40, oracle.OP_BATCH_BEGIN, 0, 2, 0, b"", b""),
        oracle.Frame(110, 50, oracle.OP_SET, 4, 3, 0, b"", b""),
        oracle.Frame(160, 50, oracle.OP_SET, 4, 4, 0, b"", b""),
        oracle.Frame(210, 36, oracle.OP_BATCH_COMMIT, 0, 5, 0, b"", b""),
    ]
    assert oracle.damage_loss(frames, last, [(30, 31)]) == {1}  # an intact frame follows
    assert oracle.damage_loss(frames, last, [(120, 121)]) == {3}
    assert oracle.damage_loss(frames, last, [(120, 121), (170, 171)]) == {3, 4}
    # The COMMIT: in the last segment nothing intact follows, so the batch is a torn tail; in an
    # earlier (sealed) one the batch was written whole, and only what was hit goes.
    assert oracle.damage_loss(frames, last, [(215, 216)]) == ({3, 4} if last else set())
    assert oracle.damage_loss(frames, last, [(120, 121), (215, 216)]) == ({3, 4} if last else {3})


def test_only_bytes_that_changed_count_as_damage():
    assert oracle.changed_ranges(b"abcdef", b"abXdeY") == [(2, 3), (5, 6)]
    assert oracle.changed_ranges(b"abcdef", b"abc") == [(3, 6)]
    assert oracle.changed_ranges(b"ab\x00\x00", b"\x00\x00\x00\x00") == [(0, 2)]
