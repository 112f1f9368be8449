"""verify and repair on stores whose small files are damaged: CURRENT, a segment
header, a missing segment, forged records, huge sparse files, links in the backup."""

from __future__ import annotations

import os
import re
import resource
import stat
import subprocess
import sys
import warnings

import pytest
from forged import forge

from iodict_log import CorruptionError, CorruptionWarning, DurableQueue, IODict
from iodict_log.format import (
    KIND_LOG,
    OP_PUT,
    OP_SET,
    OP_TAKE,
    SEGMENT_HEADER_SIZE,
    encode_segment_header,
)
from iodict_log.repair import repair
from iodict_log.serialize import encode_key


def run(*args: str, limit_data: int | None = None) -> subprocess.CompletedProcess:
    def cap() -> None:
        if limit_data:
            resource.setrlimit(resource.RLIMIT_DATA, (limit_data, limit_data))

    return subprocess.run(
        [sys.executable, "-m", "iodict_log", *args], capture_output=True, text=True, timeout=300, preexec_fn=cap
    )


def segments(path) -> list:
    return sorted(path.glob("*.seg"))


def flip_byte(file, offset: int) -> None:
    data = bytearray(file.read_bytes())
    data[offset] ^= 0x20
    file.write_bytes(bytes(data))


def contents(path) -> list:
    with warnings.catch_warnings():
        warnings.simplefilter("error", CorruptionWarning)  # a repaired store reads without damage
        with IODict(path) as d:
            return [(k, v, d.birthtime(k)) for k, v in d.items()]


def busy_dict(path) -> list:
    """A dict store with compacted segments, log segments after them, and overwrites."""
    with IODict(path, segment_bytes=4096, compression=None, auto_compact=False) as d:
        for i in range(150):
            d[f"k{i:03d}"] = f"first-{i:03d}".encode() * 5
        for i in range(0, 150, 3):
            del d[f"k{i:03d}"]
        d.compact()
        for i in range(100, 220):
            d[f"k{i:03d}"] = f"second-{i:03d}".encode() * 5
        return [(k, v, d.birthtime(k)) for k, v in d.items()]


@pytest.mark.parametrize("damage", ["flip", "delete"])
def test_repair_rebuilds_a_damaged_or_missing_current_with_the_same_contents(tmp_path, damage):
    # Guards 17.4: one flipped byte in CURRENT made opening raise and repair refuse.
    path = tmp_path / "s"
    before = busy_dict(path)
    current = path / "CURRENT"
    if damage == "flip":
        flip_byte(current, 30)
    else:
        current.unlink()
    if damage == "flip":
        with pytest.raises(CorruptionError):
            IODict(path)
    result = run("verify", str(path))
    assert result.returncode == 1 and "CURRENT" in result.stdout, result  # damage, not a usage error
    result = run("repair", str(path), "--backup", str(tmp_path / "backup"))
    assert result.returncode == 0, result.stderr
    assert "CURRENT" in result.stdout
    assert contents(path) == before
    assert run("verify", str(path)).returncode == 0
    with IODict(path) as d:
        d["after"] = b"works"
    assert contents(path)[-1][:2] == ("after", b"works")


def test_rebuilt_current_keeps_a_queue_in_order_without_duplicates_of_a_repaired_segment(tmp_path):
    # Guards 17.4's order question: repair's copies take numbers above later segments,
    # and an original left behind must not deliver its items twice.
    path = tmp_path / "q"
    with DurableQueue(path, serializer="msgpack", segment_bytes=4096) as q:
        for i in range(150):
            q.put(b"item-%03d-" % i * 4)
        for _ in range(10):
            q.get()
    second = segments(path)[1]
    assert b"item-060-" in second.read_bytes()
    flip_byte(second, second.read_bytes().find(b"item-060-") + 2)
    original = second.read_bytes()
    assert run("repair", str(path)).returncode == 0  # replaces the second segment by a higher number
    second.write_bytes(original)  # an original that a crash kept, unlisted
    (path / "CURRENT").unlink()
    result = run("repair", str(path), "--backup", str(tmp_path / "b2"))
    assert result.returncode == 0, result.stderr
    with DurableQueue(path, serializer="msgpack") as q:
        got = [q.get_nowait() for _ in range(q.qsize())]
    assert got == [b"item-%03d-" % i * 4 for i in range(10, 150) if i != 60]


def test_repair_recovers_a_damaged_header_salt_from_the_other_headers(tmp_path):
    # Guards 17.4: one flipped salt byte in the first header made every key in it unreadable.
    path = tmp_path / "s"
    before = busy_dict(path)
    first = segments(path)[0]
    flip_byte(first, 13)  # the salt
    with pytest.raises(CorruptionError, match=first.name):
        IODict(path)
    checked = run("verify", str(path))
    assert checked.returncode == 1 and "header is damaged" in checked.stdout
    result = run("repair", str(path))
    assert result.returncode == 0, result.stderr
    assert contents(path) == before  # nothing lost: the salt was recovered, not guessed


def test_a_salt_under_which_no_frame_verifies_is_not_trusted(tmp_path):
    # Guards the salt recovery: a sibling's salt is used only if the frames' checksums then hold.
    path = tmp_path / "s"
    with IODict(path, segment_bytes=4096, compression=None) as d:
        for i in range(60):
            d[f"k{i:02d}"] = b"v" * 100
    first, *others = segments(path)
    flip_byte(first, 13)
    for s in others:  # intact headers, but of another salt
        s.write_bytes(encode_segment_header(KIND_LOG, 12345) + s.read_bytes()[SEGMENT_HEADER_SIZE:])
    result = run("verify", str(path))
    assert result.returncode == 1
    assert (
        f"{first}: offset 0: {first.stat().st_size} bytes: segment header is damaged and no salt verifies"
        in result.stdout
    )


def test_repair_goes_on_past_a_missing_segment_and_says_what_was_lost(tmp_path):
    # Guards 17.4: a deleted segment made repair fail with a raw [Errno 2].
    path = tmp_path / "s"
    with IODict(path, segment_bytes=4096, compression=None) as d:
        for i in range(150):
            d[f"k{i:03d}"] = f"value-{i:03d}-".encode() * 4
    gone = segments(path)[2]
    lost = {f"k{m.decode()}" for m in re.findall(rb"value-(\d{3})-", gone.read_bytes())}
    gone.unlink()
    with pytest.raises(CorruptionError, match=gone.name):
        IODict(path)
    assert run("verify", str(path)).returncode == 1
    result = run("repair", str(path))
    assert result.returncode == 0, result.stderr
    assert gone.name in result.stdout and "missing" in result.stdout
    with IODict(path) as d:
        assert set(d) == {f"k{i:03d}" for i in range(150)} - lost
        d["after"] = b"works"


def test_verify_reports_and_repair_drops_records_a_reader_refuses(tmp_path):
    # Guards 21.4: forged keys and undecodable values passed verify ("no damage found").
    path = tmp_path / "s"
    with IODict(path, compression=None) as d:
        d["good"] = 1
    forge(
        path,
        (OP_SET, b"\x91\x01", b"\x01"),  # a list as a key
        (OP_SET, encode_key("x") + b"\x00", b"\x01"),  # a trailing byte
        (OP_SET, b"\xa2\xff\xfe", b"\x01"),  # bad UTF-8
        (OP_SET, encode_key("v"), b"\xc1"),  # a value msgpack never writes
        (OP_SET, encode_key("fine"), b"\x02"),
    )
    result = run("verify", str(path))
    assert result.returncode == 1
    damaged = [line for line in result.stdout.splitlines() if line.startswith("damaged:")]
    assert len(damaged) == 4 and all("not" in line and "decode" in line for line in damaged), damaged
    assert run("repair", str(path)).returncode == 0
    assert run("verify", str(path)).returncode == 0
    with IODict(path) as d:
        assert dict(d.items()) == {"good": 1, "fine": 2}


def test_verify_reports_a_take_naming_no_record(tmp_path):
    path = tmp_path / "q"
    with DurableQueue(path, serializer="msgpack") as q:
        q.put(1)
    forge(path, (OP_TAKE, b"\x01\x02\x03", b""), (OP_PUT, b"", b"\xc1"))
    result = run("verify", str(path))
    assert result.returncode == 1 and "TAKE record's key is 3 bytes" in result.stdout
    assert "value does not decode" in result.stdout


def test_verify_and_repair_a_sparse_16_gib_segment_in_bounded_memory(tmp_path):
    # Guards 21.10: a sparse 16 GiB segment made verify raise MemoryError (it read it whole).
    path = tmp_path / "s"
    with IODict(path, segment_bytes=4096, compression=None) as d:
        for i in range(60):
            d[f"k{i:02d}"] = b"v" * 100
        before = dict(d.items())
    first = segments(path)[0]
    size = first.stat().st_size
    with open(first, "r+b") as f:
        f.truncate(16 * 2**30)
    cap = 1 << 30  # the heap may not grow past 1 GiB; a mapped file does not count
    result = run("verify", str(path), limit_data=cap)
    assert result.returncode == 1, result.stderr
    assert "4 GiB" in result.stdout and "Traceback" not in result.stderr
    result = run("repair", str(path), "--backup", "/dev/null/none", limit_data=cap)
    assert result.returncode == 2 and "none" in result.stderr  # a backup that cannot be made stops it first
    assert first.stat().st_size == 16 * 2**30
    os.truncate(first, size + 5000)  # (a backup of 16 GiB of zeros would take a while to write)
    result = run("repair", str(path), limit_data=cap)
    assert result.returncode == 0, result.stderr
    with IODict(path) as d:
        assert dict(d.items()) == before


def test_backup_copies_only_the_stores_own_regular_files_and_follows_no_link(tmp_path):
    # Guards 21.2: shutil.copytree followed links (a directory copied whole, /dev/zero filling the disk).
    path = tmp_path / "s"
    with IODict(path) as d:
        d["k"] = 1
    secret = tmp_path / "secret"
    secret.write_text("root's secret")
    os.symlink(secret, path / "HINT")
    os.symlink("/dev/zero", path / "0000000091.seg")
    os.symlink("/usr", path / "0000000092.seg")
    os.symlink("..", path / "0000000093.seg")
    os.symlink("/usr", path / "linked-dir")
    os.mkfifo(path / "0000000094.seg")
    from iodict_log.repair import backup_store

    notes = backup_store(str(path), str(tmp_path / "backup"))
    copied = sorted(p.name for p in (tmp_path / "backup").iterdir())
    assert copied == ["0000000001.seg", "CURRENT"]
    assert all(stat.S_ISREG(os.lstat(p).st_mode) for p in (tmp_path / "backup").iterdir())
    assert stat.S_IMODE(os.stat(tmp_path / "backup").st_mode) & 0o077 == 0
    assert len(notes) == 5 and sum("symbolic link" in n for n in notes) == 4
    with pytest.raises(Exception, match="already exists"):
        backup_store(str(path), str(tmp_path / "backup"))


def test_repair_with_nothing_to_do_changes_nothing_and_makes_no_backup(tmp_path):
    path = tmp_path / "s"
    before = busy_dict(path)
    listing = sorted(os.listdir(path))
    assert repair(str(path))[0] is None
    assert sorted(os.listdir(path)) == listing and not list(tmp_path.glob("s.backup-*"))
    assert contents(path) == before


def test_repair_copies_damaged_segments_without_holding_the_write_lock(tmp_path, monkeypatch):
    # Guards 17.3: repair held LOCK throughout (a put_nowait elsewhere blocked 9.7 s).
    from iodict_log import repair as repairing
    from iodict_log.filelock import FileLock

    path = tmp_path / "q"
    with DurableQueue(path, serializer="msgpack", segment_bytes=4096) as q:
        for i in range(150):
            q.put(b"item-%03d-" % i * 4)
    last = segments(path)[-1]
    first_in_last = int(re.search(rb"item-(\d{3})-", last.read_bytes()).group(1))
    hit = (30, first_in_last)  # in a sealed segment, and in the last one (with records after it)
    for i in hit:
        marker = b"item-%03d-" % i
        file = next(p for p in segments(path) if marker in p.read_bytes())
        flip_byte(file, file.read_bytes().find(marker) + 2)
    free_while_copying = []
    copy = repairing._Repair._copy

    def watched(self, seen):
        probe = FileLock(str(path / "LOCK"), mapped=True)
        try:
            free_while_copying.append(probe.try_acquire())  # (a second object: the write lock, either protocol)
            if free_while_copying[-1]:
                probe.release()
        finally:
            probe.close()
        return copy(self, seen)

    monkeypatch.setattr(repairing._Repair, "_copy", watched)
    repaired = repair(str(path))
    assert free_while_copying == [True, True] and len([f for f in repaired.dropped if f.damage]) == 2
    with DurableQueue(path, serializer="msgpack") as q:
        assert [q.get_nowait() for _ in range(q.qsize())] == [b"item-%03d-" % i * 4 for i in range(150) if i not in hit]


def test_rebuilding_current_next_to_links_and_fifos_named_like_segments_reads_none_of_them(tmp_path):
    # Guards 21.10 for repair: a FIFO named like a segment must not hang it, a link must not be read.
    path = tmp_path / "s"
    before = busy_dict(path)
    os.mkfifo(path / "0000000097.seg")
    os.symlink("/dev/zero", path / "0000000098.seg")
    (path / "CURRENT").unlink()
    result = run("verify", str(path))
    assert result.returncode == 1 and "0000000097.seg" in result.stdout
    result = run("repair", str(path), "--backup", str(tmp_path / "backup"))
    assert result.returncode == 0, result.stderr
    os.unlink(path / "0000000097.seg")  # (left out of CURRENT; an open would delete them as leftovers)
    os.unlink(path / "0000000098.seg")
    assert contents(path) == before


def test_a_torn_tail_alone_is_cut_without_a_backup(tmp_path):
    path = tmp_path / "s"
    with IODict(path, compression=None) as d:
        d["a"] = b"x" * 50
        d["b"] = b"y" * 50
    last = segments(path)[-1]
    last.write_bytes(last.read_bytes()[:-7])  # a crash in the middle of the last append
    result = run("repair", str(path))
    assert result.returncode == 0 and "torn tail cut" in result.stdout, result.stdout
    assert not list(tmp_path.glob("s.backup-*"))
    assert "note:" not in run("verify", str(path)).stdout
    assert contents(path)[0][:2] == ("a", b"x" * 50)
