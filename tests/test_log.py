"""The log: rolls, interrupted rolls and compactions, leftovers, and catching up."""

from __future__ import annotations

import os

import pytest

from iodict_log import IODict
from iodict_log import log as log_module
from iodict_log.manifest import read_manifest
from iodict_log.segment import parse_segment_name, segment_name

SMALL = 4096


def segment_files(path) -> list[int]:
    return sorted(n for n in (parse_segment_name(name) for name in os.listdir(path)) if n is not None)


def fill(d: IODict, count: int, prefix: str = "k") -> dict:
    written = {f"{prefix}{i}": f"value {i} ".encode() * 8 for i in range(count)}
    for key, value in written.items():
        d[key] = value
    return written


def test_rolls_list_every_segment_in_the_manifest_and_reopen_reads_them_all(tmp_path):
    path = tmp_path / "s"
    with IODict(path, segment_bytes=SMALL) as d:
        written = fill(d, 300)
    manifest = read_manifest(str(path))
    assert len(manifest.segments) > 3
    assert list(manifest.segments) == segment_files(path)
    with IODict(path, segment_bytes=SMALL) as d:
        assert list(d.items()) == list(written.items())


def test_a_second_object_follows_rolls_made_by_the_first(tmp_path):
    path = tmp_path / "s"
    writer = IODict(path, segment_bytes=SMALL)
    reader = IODict(path, segment_bytes=SMALL)
    written = fill(writer, 300)
    assert list(reader.items()) == list(written.items())
    reader["after"] = b"x"  # the reader appends to the right (last) segment
    assert writer["after"] == b"x"
    writer.close()
    reader.close()
    with IODict(path) as d:
        assert len(d) == 301


def seal_without_rolling(d: IODict) -> None:
    """What a roller that dies right after its SEAL frame leaves behind."""
    log = d._log
    with log.locked():
        log.refresh()
        log._seal()


def test_a_roll_interrupted_after_its_seal_is_finished_on_reopen(tmp_path):
    path = tmp_path / "s"
    d = IODict(path)
    written = fill(d, 20)
    seal_without_rolling(d)
    d.close()
    with IODict(path) as d:
        assert list(d.items()) == list(written.items())
        d["new"] = b"n"
    with IODict(path) as d:
        assert d["new"] == b"n" and len(d) == 21
        assert len(read_manifest(str(path)).segments) == 2


def test_a_roll_interrupted_after_its_seal_is_finished_by_a_live_process(tmp_path):
    path = tmp_path / "s"
    first = IODict(path)
    other = IODict(path)
    written = fill(first, 20)
    seal_without_rolling(first)
    first._log = None  # the roller "dies" without finishing
    other["new"] = b"n"  # sees the SEAL, finds CURRENT unchanged, finishes the roll
    assert list(other.items()) == [*written.items(), ("new", b"n")]
    other.close()
    with IODict(path) as d:
        assert len(d) == 21


def test_unlisted_segment_files_are_leftovers_and_are_removed_on_open(tmp_path):
    path = tmp_path / "s"
    with IODict(path) as d:
        written = fill(d, 10)
    stray = path / segment_name(99)
    stray.write_bytes(b"half-written compaction output")
    with IODict(path) as d:
        assert dict(d) == written
    assert not stray.exists()


@pytest.mark.parametrize("crash_at", ["after_outputs", "after_seal", "after_manifest", "after_unlink"])
def test_compaction_interrupted_at_each_step_keeps_the_same_contents(tmp_path, monkeypatch, crash_at):
    path = tmp_path / "s"
    d = IODict(path, segment_bytes=SMALL)
    fill(d, 200)
    for i in range(0, 200, 3):
        del d[f"k{i}"]
    for i in range(1, 200, 3):
        d[f"k{i}"] = b"rewritten"
    expected = list(d.items())
    birthtimes = [d.birthtime(k) for k in d]

    class Crash(Exception):
        pass

    def crash(*args, **kwargs):
        raise Crash

    log = d._log
    if crash_at == "after_outputs":
        monkeypatch.setattr(log, "_seal", crash)
    elif crash_at == "after_seal":
        monkeypatch.setattr(log_module, "write_manifest", crash)
    elif crash_at == "after_manifest":
        monkeypatch.setattr(log_module.os, "unlink", crash)
    else:
        monkeypatch.setattr(log, "_load", crash)
    with pytest.raises(Crash):
        d.compact()
    monkeypatch.undo()
    d._log = None  # the process died here
    with IODict(path, segment_bytes=SMALL) as again:
        assert list(again.items()) == expected
        assert [again.birthtime(k) for k in again] == birthtimes
        again["later"] = b"ok"
    with IODict(path, segment_bytes=SMALL) as again:
        assert list(again.items()) == [*expected, ("later", b"ok")]
        assert segment_files(path) == list(read_manifest(str(path)).segments)


def test_another_process_view_is_rebuilt_after_a_compaction(tmp_path):
    path = tmp_path / "s"
    compactor = IODict(path, segment_bytes=SMALL)
    watcher = IODict(path, segment_bytes=SMALL)
    fill(compactor, 100)
    for i in range(50):
        del compactor[f"k{i}"]
    assert len(watcher) == 50
    compactor.compact()
    compactor["after"] = b"a"
    expected = list(compactor.items())
    assert list(watcher.items()) == expected  # its old segments were deleted under it
    watcher["from watcher"] = b"w"
    assert compactor["from watcher"] == b"w"
    compactor.close()
    watcher.close()


def test_sequence_numbers_and_birthtimes_never_go_back_after_compaction_drops_deletes(tmp_path):
    path = tmp_path / "s"
    with IODict(path) as d:
        d["a"] = 1
        d["b"] = 2
        del d["b"]  # the highest seq and birthtime are in this tombstone
        last_seq = d.stats()["last_seq"]
        d.compact()
    with IODict(path) as d:
        d["c"] = 3
        records = list(d.records())
        assert records[-1].seq > last_seq
        assert d.birthtime("c") > d.birthtime("a")
        assert [r.seq for r in records] == sorted(r.seq for r in records)
