"""Poison items go to the dead letters instead of blocking the queue (issue 17.6, 21.9).

An intact item that cannot be decoded (its class no longer imports, bytes forged
with the store's salt) is moved aside by get(), with a RuntimeWarning, and the
queue goes on. Dead letters are listed by ``dead_letters()``, survive reopen,
segment reclaim and other processes, and ``retry_dead_letters()`` puts them back
at the end of the queue, in order. An item that fails its checksum is still
skipped as damage (CorruptionWarning), never a dead letter.

A class "no longer imports" here the way it does in real life: its module is
gone. The tests build a module in memory, put items of a class defined in it,
and drop the module from ``sys.modules`` (nothing on disk provides it), so
unpickling raises ModuleNotFoundError; putting the module back makes it importable.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import time
import types
import warnings
from pathlib import Path

import pytest
from forged import append, frame, segment_paths
from helpers import drain

from iodict_log import CorruptionWarning, DurableQueue, IODictLogError
from iodict_log.format import FLAG_LZ4, OP_PUT

WAIT = 10


@pytest.fixture
def gone(monkeypatch):
    """A module ``poison_module`` with a class ``Job``; ``gone.drop()`` / ``gone.restore()``."""
    module = types.ModuleType("poison_module")
    monkeypatch.setitem(sys.modules, "poison_module", module)
    exec(  # noqa: S102 - a class that pickles by reference to this module
        "import dataclasses\n@dataclasses.dataclass(frozen=True)\nclass Job:\n    n: int\n",
        module.__dict__,
    )

    class Controls:
        Job = module.Job

        @staticmethod
        def drop() -> None:
            del sys.modules["poison_module"]

        @staticmethod
        def restore() -> None:
            sys.modules["poison_module"] = module

    return Controls


def segment_files(path: Path) -> list[Path]:
    return sorted(path.glob("*.seg"))


def in_child(code: str, path: Path) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter, the queue's path as ``sys.argv[1]``; its text output."""
    return subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60)


def poison_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]


# --- poison items at the head ------------------------------------------------------------------


def test_an_item_whose_class_is_gone_becomes_a_dead_letter_and_gets_go_on(tmp_path, gone):
    # Guards: such an item made every get() raise, with no way past it.
    q = DurableQueue(tmp_path / "q")
    q.put("before")
    q.put(gone.Job(1))
    q.put("after")
    gone.drop()
    assert q.get_nowait() == "before"
    with pytest.warns(RuntimeWarning) as caught:
        assert q.get_nowait() == "after"
    (message,) = poison_warnings(caught)
    assert "\n" not in message and "dead letters" in message and "poison_module" in message
    letters = q.dead_letters()
    assert [letter.deliveries for letter in letters] == [1]
    assert str(letters[0].id) in message, "the warning names the item's id"
    with pytest.raises(ModuleNotFoundError):
        _ = letters[0].item
    assert q.qsize() == 0 and q.empty()
    assert q.stats()["dead"] == 1 and q.stats()["items"] == 0
    with pytest.raises(queue.Empty):
        q.get_nowait()
    q.close()


def test_a_get_moves_past_a_poison_item_to_an_item_another_process_put(tmp_path, gone):
    q = DurableQueue(tmp_path / "q")
    q.put(gone.Job(2))
    gone.drop()
    code = "import sys; from iodict_log import DurableQueue; DurableQueue(sys.argv[1]).put('from the producer')"
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "q")], check=True, timeout=60)
    with pytest.warns(RuntimeWarning):
        assert q.get(timeout=WAIT) == "from the producer"
    q.close()


def test_dead_letters_survive_reopen_and_are_seen_by_another_process(tmp_path, gone):
    path = tmp_path / "q"
    with DurableQueue(path) as q:
        q.put_many([gone.Job(1), "x", gone.Job(2)])
        gone.drop()
        with pytest.warns(RuntimeWarning):
            assert drain(q) == ["x"]
        ids = [letter.id for letter in q.dead_letters()]
    assert len(ids) == 2 and ids == sorted(ids)
    with DurableQueue(path) as q:
        assert [letter.id for letter in q.dead_letters()] == ids
        assert q.qsize() == 0 and q.stats()["dead"] == 2
    code = (
        "import json, sys\n"
        "from iodict_log import DurableQueue\n"
        "q = DurableQueue(sys.argv[1])\n"
        "print(json.dumps([[d.id for d in q.dead_letters()], q.qsize(), q.stats()['dead']]))\n"
    )
    out = in_child(code, path)
    assert json.loads(out.stdout) == [ids, 0, 2], out.stderr


def test_another_process_moves_a_poison_item_aside_for_everyone(tmp_path, gone):
    path = tmp_path / "q"
    q = DurableQueue(path)
    q.put(gone.Job(3))
    q.put("next")
    # A child that cannot import poison_module either: its get() buries the item.
    code = (
        "import sys, warnings\n"
        "from iodict_log import DurableQueue\n"
        "warnings.simplefilter('ignore', RuntimeWarning)\n"
        "print(DurableQueue(sys.argv[1]).get_nowait())\n"
    )
    out = in_child(code, path)
    assert out.stdout.strip() == "next", out.stderr
    assert len(q.dead_letters()) == 1, "the dead letter shows in every process"
    assert q.dead_letters()[0].item == gone.Job(3), "here the class imports: the item decodes"
    with pytest.raises(queue.Empty):
        q.get_nowait()
    q.close()


# --- retry -------------------------------------------------------------------------------------


def test_retry_puts_dead_letters_back_at_the_end_in_order_once_their_class_imports(tmp_path, gone):
    path = tmp_path / "q"
    q = DurableQueue(path)
    q.put_many([gone.Job(1), "a", gone.Job(2), "b"])
    gone.drop()
    with pytest.warns(RuntimeWarning):
        assert drain(q) == ["a", "b"]
    q.put("c")
    gone.restore()
    assert [letter.item for letter in q.dead_letters()] == [gone.Job(1), gone.Job(2)]
    assert q.retry_dead_letters() == 2
    assert q.dead_letters() == [] and q.stats()["dead"] == 0 and q.qsize() == 3
    q.close()
    with DurableQueue(path) as q:  # the retry is on disk
        assert q.dead_letters() == []
        assert drain(q) == ["c", gone.Job(1), gone.Job(2)]


def test_retry_with_nothing_dead_writes_nothing(tmp_path):
    with DurableQueue(tmp_path / "q") as q:
        q.put("a")
        size = sum(p.stat().st_size for p in segment_files(tmp_path / "q"))
        assert q.retry_dead_letters() == 0
        assert sum(p.stat().st_size for p in segment_files(tmp_path / "q")) == size


def test_a_retried_item_that_still_cannot_be_decoded_goes_back_to_the_dead_letters(tmp_path, gone):
    q = DurableQueue(tmp_path / "q")
    q.put(gone.Job(1))
    gone.drop()
    with pytest.warns(RuntimeWarning), pytest.raises(queue.Empty):
        q.get_nowait()
    (first,) = q.dead_letters()
    assert q.retry_dead_letters() == 1
    with pytest.warns(RuntimeWarning), pytest.raises(queue.Empty):
        q.get_nowait()
    (second,) = q.dead_letters()
    assert second.id > first.id, "a new PUT, dead again: one dead letter, not two"
    q.close()


def test_a_dead_letter_damaged_on_disk_is_dropped_by_retry_with_a_corruption_warning(tmp_path, gone):
    path = tmp_path / "q"
    q = DurableQueue(path)
    q.put(gone.Job(7))
    q.put("kept")
    gone.drop()
    with pytest.warns(RuntimeWarning):
        assert q.get_nowait() == "kept"
    (segment,) = segment_files(path)
    data = segment.read_bytes()
    at = data.index(b"poison_module") + 3
    fd = os.open(segment, os.O_RDWR)
    try:
        os.pwrite(fd, bytes([data[at] ^ 0xFF]), at)
    finally:
        os.close(fd)
    with pytest.raises(IODictLogError):
        _ = q.dead_letters()[0].item
    with pytest.warns(CorruptionWarning):
        assert q.retry_dead_letters() == 0
    assert q.dead_letters() == [] and q.stats()["corrupt_records"] >= 1
    q.close()


# --- reclaim -----------------------------------------------------------------------------------


def test_segment_reclaim_keeps_the_segment_holding_a_dead_letter(tmp_path, gone):
    path = tmp_path / "q"
    filler = [b"%05d" % i * 20 for i in range(400)]  # 100-byte items over many 4 KiB segments
    q = DurableQueue(path, segment_bytes=4096)
    for item in filler[:100]:
        q.put(item)
    q.put(gone.Job(9))
    for item in filler[100:]:
        q.put(item)
    (holder,) = [p for p in segment_files(path) if b"poison_module" in p.read_bytes()]
    before = [p for p in segment_files(path) if p < holder]
    assert before, "the test needs segments before the dead letter's"
    gone.drop()
    with pytest.warns(RuntimeWarning):
        assert drain(q) == filler
    left = segment_files(path)
    assert holder in left, "the segment holding the dead letter's PUT stays"
    assert not set(before) & set(left), "segments before it are reclaimed"
    q.close()
    gone.restore()
    with DurableQueue(path, segment_bytes=4096) as q:
        (letter,) = q.dead_letters()
        assert letter.item == gone.Job(9), "its PUT is still on disk after reclaim and reopen"
        assert q.retry_dead_letters() == 1
        q.put("last")
        assert drain(q) == [gone.Job(9), "last"]
        assert len(segment_files(path)) < len(left), "once retried, its old segment goes too"


# --- what is and is not a dead letter ------------------------------------------------------------


def append_forged_put(path: Path, flags: int, value: bytes, seq: int) -> None:
    """Append a PUT frame that passes every checksum (made with the store's salt)."""
    segment = segment_paths(path)[-1]
    append(segment, frame(segment, b"", value, op=OP_PUT, flags=flags, seq=seq, birthtime=time.time_ns()))


@pytest.mark.parametrize(
    "flags, value",
    [(0, b"\xc1"), (0, b"\x92\x01"), (FLAG_LZ4, b"\x05\x00\x00\x00\xff\xff")],
    ids=["msgpack-never-used-byte", "msgpack-truncated-array", "lz4-broken-block"],
)
def test_a_forged_undecodable_item_at_the_head_becomes_a_dead_letter(tmp_path, flags, value):
    # Guards: msgpack's FormatError escaped every get() and the item stayed at the head.
    path = tmp_path / "q"
    with DurableQueue(path, serializer="msgpack") as q:
        q.put("first")
    append_forged_put(path, flags, value, seq=1000)
    with DurableQueue(path, serializer="msgpack") as q:
        q.put("after")
        assert q.get_nowait() == "first"
        with pytest.warns(RuntimeWarning):
            assert q.get_nowait() == "after"
        (letter,) = q.dead_letters()
        assert letter.id == 1000
        with pytest.raises(Exception):  # noqa: B017 - whatever the decoder raises, again
            _ = letter.item


def test_a_pickled_item_read_by_a_msgpack_queue_raises_and_stays(tmp_path):
    # A reader's setting, not a poison item: moving every item aside would empty a healthy queue.
    path = tmp_path / "q"
    with DurableQueue(path) as q:
        q.put(("a", 1))
    with DurableQueue(path, serializer="msgpack") as q:
        with pytest.raises(IODictLogError, match="pickle"):
            q.get_nowait()
        assert q.dead_letters() == [] and q.qsize() == 1
    with DurableQueue(path) as q:
        assert q.get_nowait() == ("a", 1)


def test_a_damaged_item_is_skipped_as_damage_not_kept_as_a_dead_letter(tmp_path):
    path = tmp_path / "q"
    marker = b"damaged-item-marker" * 4
    with DurableQueue(path) as q:
        q.put(marker)
        q.put("next")
        (segment,) = segment_files(path)
        data = segment.read_bytes()
        at = data.index(marker) + 10
        fd = os.open(segment, os.O_RDWR)
        try:
            os.pwrite(fd, bytes([data[at] ^ 0xFF]), at)
        finally:
            os.close(fd)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert q.get_nowait() == "next"
        assert [w.category for w in caught] == [CorruptionWarning]
        assert q.dead_letters() == [] and q.stats()["corrupt_records"] == 1


def test_iodict_log_stats_counts_the_dead_letters(tmp_path, gone, capsys):
    from iodict_log.cli import main

    with DurableQueue(tmp_path / "q") as q:
        q.put(gone.Job(1))
        q.put("after")
        gone.drop()
        with pytest.warns(RuntimeWarning):
            assert q.get_nowait() == "after"
    capsys.readouterr()
    assert main(["stats", str(tmp_path / "q"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dead_letters"] == 1 and report["queue_items"] == 0
