"""The log: rolls, interrupted rolls and compactions, leftovers, and catching up."""

from __future__ import annotations

import os
import subprocess
import sys

import forged
import pytest

from iodict_log import CorruptionError, CorruptionWarning, IODict, IODictLogError
from iodict_log import log as log_module
from iodict_log.crashpoints import CRASH_EXIT, POINTS
from iodict_log.manifest import read_manifest
from iodict_log.segment import parse_segment_name, segment_name
from iodict_log.serialize import encode_key

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
    with log.file_lock:
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


def open_files() -> list[str]:
    """What this process's descriptors point at."""
    targets = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            targets.append(os.readlink(f"/proc/self/fd/{fd}"))
        except FileNotFoundError:  # the descriptor listdir itself used
            pass
    return targets


def failing_once(real):
    """A stand-in for ``real`` that raises ENOSPC the first time it is called."""
    calls = []

    def fake(*args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)

    return fake


def test_a_compaction_that_fails_after_its_seal_leaves_processes_in_step(tmp_path, monkeypatch):
    path = tmp_path / "s"
    a = IODict(path)
    b = IODict(path)
    fill(a, 20)
    monkeypatch.setattr(log_module, "write_manifest", failing_once(log_module.write_manifest))
    with pytest.raises(OSError):
        a.compact()
    monkeypatch.undo()
    a["x"] = "from a"  # must not land after a's own SEAL, where b would never look
    b["y"] = "from b"
    a["k"] = "a, latest"
    assert a["y"] == "from b" and b["x"] == "from a" and b["k"] == "a, latest"
    seqs = [r.seq for r in b.records()]
    assert len(seqs) == len(set(seqs)) and seqs == sorted(seqs)
    a.close()
    b.close()
    with IODict(path) as d:
        assert d["k"] == "a, latest" and d["x"] == "from a" and d["y"] == "from b"


def test_a_roll_that_fails_after_its_seal_is_finished_and_the_writer_goes_on(tmp_path, monkeypatch):
    path = tmp_path / "s"
    a = IODict(path, segment_bytes=SMALL)
    b = IODict(path, segment_bytes=SMALL)
    written = {}
    monkeypatch.setattr(log_module, "write_manifest", failing_once(log_module.write_manifest))
    with pytest.raises(OSError):
        for i in range(200):  # until the roll fails
            a[f"a{i}"] = b"x" * 60
            written[f"a{i}"] = b"x" * 60
    monkeypatch.undo()
    b["from b"] = b"b"  # meets a's SEAL, finishes the roll
    for i in range(200, 260):  # a goes on writing, into the segment b made
        a[f"a{i}"] = b"y"
        written[f"a{i}"] = b"y"
    written["from b"] = b"b"
    assert dict(a.items()) == dict(b.items()) == written
    a.close()
    b.close()
    with IODict(path) as d:
        assert dict(d.items()) == written


def test_a_producer_does_not_pile_up_segments_a_consumer_deleted(tmp_path):
    from iodict_log import DurableQueue

    path = tmp_path / "q"
    producer = DurableQueue(path, segment_bytes=2 * SMALL)
    consumer = DurableQueue(path, segment_bytes=2 * SMALL)
    for _ in range(50):
        for _ in range(40):
            producer.put(b"p" * 100)  # the producer rolls on its own
        for _ in range(40):
            consumer.get()
    # Bounded, not growing with the rounds: at most the segments deleted since its last look.
    held = [t for t in open_files() if t.startswith(str(path)) and t.endswith(".seg (deleted)")]
    assert len(held) <= 2, held
    producer.close()
    consumer.close()


# --- iterators own nothing once dropped (17.12) ----------------------------------


def test_dropped_records_iterators_give_their_descriptors_back_started_or_not(tmp_path):
    # Guards 17.12: frames() duplicated descriptors eagerly and closed them only in a
    # finally that a never-started generator does not run (1,380 leaked for 20 iterators).
    path = tmp_path / "s"
    d = IODict(path, segment_bytes=SMALL, auto_compact=False)
    fill(d, 300)
    before = len(open_files())
    unstarted = [d.records() for _ in range(20)]
    started = [d.records() for _ in range(5)]
    for iterator in started:
        next(iterator)
    assert len(open_files()) == before  # (each opens a segment only while reading it)
    del unstarted, started, iterator
    assert len(open_files()) == before
    assert len(list(d.records())) == 300  # an exhausted one closes them too
    assert len(open_files()) == before
    d.close()


# --- compaction after a compactor died, from an already-open process (17.13) --------

COMPACT_AND_DIE = (
    "import sys; from iodict_log import IODict; IODict(sys.argv[1], segment_bytes=4096, auto_compact=False).compact()"
)


@pytest.mark.parametrize("point", [p for p in POINTS if p.startswith("compaction.")])
@pytest.mark.parametrize("empty_tail", [True, False])
def test_compaction_works_from_an_open_process_after_a_compactor_died_at_any_point(tmp_path, point, empty_tail):
    # Guards 17.13: after a death at compaction.installed, compact() in an open process
    # raised FileExistsError until some write rolled the dead compactor's files away.
    path = str(tmp_path / "s")
    d = IODict(path, segment_bytes=SMALL, auto_compact=False)
    written = fill(d, 200)
    fill(d, 50)  # (dead records, for the compactions to drop)
    written.update(fill(d, 50))
    d.compact()
    if not empty_tail:
        d["tail"] = b"t"
        written["tail"] = b"t"
    env = dict(os.environ, IODICT_LOG_CRASH_AT=point)
    child = subprocess.run([sys.executable, "-c", COMPACT_AND_DIE, path], env=env, capture_output=True, timeout=120)
    assert child.returncode == CRASH_EXIT, child.stderr
    summary = d.compact()
    assert summary["live_keys"] == len(written)
    assert dict(d.items()) == written
    d["after"] = b"a"
    d.close()
    with IODict(path) as d:
        assert dict(d.items()) == {**written, "after": b"a"}
    assert segment_files(path) == sorted(read_manifest(path).segments)


# --- extreme fields and limits (21.8, 17.4) -----------------------------------------


@pytest.mark.parametrize("field", ["seq", "birthtime"])
def test_a_frame_with_a_seq_or_birthtime_beyond_2_63_is_damage_and_writes_go_on(tmp_path, field):
    # Guards 21.8: a forged frame with seq or birthtime 2**64-1 opened, then every write,
    # compact and close raised struct.error.
    path = str(tmp_path / "s")
    with IODict(path, auto_compact=False) as d:
        d["a"] = 1
    last = forged.segment_paths(path)[-1]
    huge = {"seq": 5, "birthtime": 5, field: 2**64 - 1}
    after = forged.frame(last, encode_key("after"), b"\x03", seq=6, birthtime=6)  # (so it is not a torn tail)
    forged.append(last, forged.frame(last, encode_key("forged"), b"\x01", **huge), after)
    with pytest.warns(CorruptionWarning):
        d = IODict(path, auto_compact=False)
    assert d.stats()["corrupt_records"] == 1 and "forged" not in d
    d["b"] = 2
    d.compact()
    d.close()
    with IODict(path) as d:
        assert dict(d.items()) == {"a": 1, "after": 3, "b": 2}


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"segments": (1, 10**10)}, "beyond the ten-digit names"),
        ({"segments": tuple(range(1, 2**16 + 1))}, "more than the 65535"),
        ({"segments": (1, 1)}, "twice"),
        ({"seq_floor": 2**63}, "floor"),
        ({"kind": 7}, "unknown store kind"),
    ],
)
def test_a_current_beyond_the_limits_is_damage_naming_the_file(tmp_path, fields, message):
    # Guards 21.8 and the suspected slot wrap: such a CURRENT is refused before any
    # segment is opened, never an 11-digit file or a slot number that wraps.
    path = str(tmp_path / "s")
    IODict(path).close()
    forged.rewrite_current(path, **fields)
    with pytest.raises(CorruptionError, match=message) as raised:
        IODict(path)
    assert os.path.join(path, "CURRENT") in str(raised.value)


def test_a_damaged_current_is_reported_with_its_path(tmp_path):
    # Guards 17.4: "manifest checksum mismatch" did not say which file.
    path = str(tmp_path / "s")
    IODict(path).close()
    current = os.path.join(path, "CURRENT")
    with open(current, "r+b") as f:
        data = bytearray(f.read())
        data[14] ^= 1
        f.seek(0)
        f.write(bytes(data))
    with pytest.raises(CorruptionError, match=f"{current}: manifest checksum mismatch"):
        IODict(path)


def test_a_roll_past_the_segment_limit_is_refused_before_its_seal(tmp_path, monkeypatch):
    monkeypatch.setattr(log_module, "MAX_SEGMENTS", 3)
    path = str(tmp_path / "s")
    d = IODict(path, segment_bytes=SMALL, auto_compact=False)
    with pytest.raises(IODictLogError, match="at most 3 segments"):
        fill(d, 300)
    written = dict(d.items())
    assert len(read_manifest(path).segments) == 3
    d.close()
    monkeypatch.undo()
    with IODict(path, segment_bytes=SMALL) as d:
        assert dict(d.items()) == written
        d["more"] = b"m"


class Refusing:
    """A log consumer that cannot read one key, as decode_key cannot read a forged one."""

    def __init__(self) -> None:
        self.keys: list[bytes] = []

    def reset(self) -> None:
        self.keys = []

    def apply(self, frame, loc) -> None:
        if frame.key == b"bad":
            raise CorruptionError("key does not decode")
        self.keys.append(frame.key)

    def settle(self) -> None:
        pass


def test_a_record_the_consumer_cannot_read_counts_as_one_damaged_record(tmp_path):
    # Guards 21.4: a forged key's decode error escaped from open.
    path = str(tmp_path / "s")
    IODict(path).close()
    last = forged.segment_paths(path)[-1]
    forged.append(last, *(forged.frame(last, key, seq=seq) for seq, key in enumerate([b"a", b"bad", b"c"], 10)))
    with pytest.warns(CorruptionWarning, match="key does not decode"):
        log = log_module.Log(path, Refusing(), sync=False, segment_bytes=SMALL)
    assert log._consumer.keys == [b"a", b"c"] and log.corrupt_records == 1
    log.close()


def test_a_relative_path_stays_the_same_store_after_chdir(tmp_path, monkeypatch):
    # Guards 17.2 (the log's part): the directory is made absolute once, at open.
    monkeypatch.chdir(tmp_path)
    log = log_module.Log("s", Refusing(), sync=False, segment_bytes=SMALL)
    (tmp_path / "elsewhere").mkdir()
    os.chdir(tmp_path / "elsewhere")
    assert log.directory == str(tmp_path / "s")
    log.close()
    assert not os.listdir(tmp_path / "elsewhere")


def test_a_lost_current_is_refused_and_no_segment_is_deleted(tmp_path):
    # Guards against opening treating every segment as a leftover of a store whose
    # creation crashed, when CURRENT was lost: that deleted all the data.
    d = IODict(tmp_path / "s", segment_bytes=4096)
    fill(d, 200)
    d.close()
    before = segment_files(tmp_path / "s")
    os.unlink(tmp_path / "s" / "CURRENT")
    with pytest.raises(CorruptionError, match="repair"):
        IODict(tmp_path / "s")
    assert segment_files(tmp_path / "s") == before


def test_a_store_whose_creation_died_before_current_is_created_anew(tmp_path):
    d = IODict(tmp_path / "s")
    d.close()
    os.unlink(tmp_path / "s" / "CURRENT")  # segment 1 holds its header alone
    d = IODict(tmp_path / "s")
    d["k"] = 1
    assert dict(d) == {"k": 1}
    d.close()


def test_a_read_meeting_a_segment_a_compaction_deleted_while_it_holds_the_lock_catches_up(tmp_path, monkeypatch):
    # Another object compacts. The reader caught up after the compaction's roll, and reads
    # while the commit holds the lock, the old segments deleted: the change counter has not
    # moved yet, so the reader, its segment files parked, must look at the files (it used
    # to retry on the counter alone and raise SegmentGone, a CorruptionError). Read-only,
    # so that it may read in the compactor's thread, which holds the lock (LogHandle._read
    # is the same for a writable reader, whose catch-up would wait for the lock instead).
    from iodict_log import crashpoints

    path = str(tmp_path / "s")
    with IODict(path, segment_bytes=SMALL, auto_compact=False) as d:
        written = fill(d, 300)
    reader = IODict(path, max_open_segments=2, readonly=True)
    compactor = IODict(path, segment_bytes=SMALL, auto_compact=False)
    seen = {}

    def at(point: str) -> None:  # (the crash points, as hooks in this process)
        if point == "compaction.copied":
            reader.stats()  # (caught up: the roll that began the compaction)
        elif point == "compaction.unlinked":
            seen["items"] = dict(reader.items())
            seen["gets"] = {k: reader[k] for k in written}

    monkeypatch.setattr(crashpoints, "ARMED", True)
    monkeypatch.setattr(crashpoints, "reached", at)
    try:
        assert reader.stats()["segments"] > 5  # (more than it keeps open)
        compactor.compact()
        assert seen == {"items": written, "gets": written}
    finally:
        compactor.close()
        reader.close()
