"""The file layer: segment files, the manifest file and the crash-safe file steps."""

from __future__ import annotations

import errno
import os

import pytest
from helpers import SALT

from iodict_log import CorruptionError, FormatVersionError, fileops
from iodict_log.format import FORMAT_VERSION, KIND_COMPACTED, KIND_LOG, SEGMENT_HEADER_SIZE, Manifest, encode_frame
from iodict_log.manifest import MANIFEST_NAME, read_manifest, write_manifest
from iodict_log.segment import Segment, parse_segment_name, segment_name


def test_segment_names_round_trip_and_foreign_names_are_not_segments():
    assert parse_segment_name(segment_name(42)) == 42
    for name in ("CURRENT", "LOCK", "42.seg", "00000000042.seg", "000000004x.seg", "0000000042.seg.tmp"):
        assert parse_segment_name(name) is None


def test_created_segment_holds_its_header_and_reopens_with_its_kind(tmp_path):
    seg = Segment.create(str(tmp_path), 7, KIND_COMPACTED, SALT)
    assert seg.size() == SEGMENT_HEADER_SIZE
    seg.close()
    again = Segment.open(str(tmp_path), 7)
    assert (again.kind, again.salt, again.number) == (KIND_COMPACTED, SALT, 7)
    again.close()


def test_create_refuses_to_overwrite_an_existing_segment(tmp_path):
    Segment.create(str(tmp_path), 1, KIND_LOG, SALT).close()
    with pytest.raises(FileExistsError):
        Segment.create(str(tmp_path), 1, KIND_LOG, SALT)


def test_append_then_read_returns_the_same_bytes(tmp_path):
    seg = Segment.create(str(tmp_path), 1, KIND_LOG, SALT)
    frame = encode_frame(1, 0, 1, 1, b"k", b"v" * 50, salt=SALT)
    seg.append(frame, seg.size())
    assert seg.read(SEGMENT_HEADER_SIZE, len(frame)) == frame
    assert seg.read_from(SEGMENT_HEADER_SIZE) == frame
    seg.close()


def test_read_past_the_end_is_corruption_not_short_data(tmp_path):
    seg = Segment.create(str(tmp_path), 1, KIND_LOG, SALT)
    with pytest.raises(CorruptionError):
        seg.read(SEGMENT_HEADER_SIZE, 10)
    seg.close()


def test_failed_partial_append_leaves_the_file_as_it_was(tmp_path, monkeypatch):
    seg = Segment.create(str(tmp_path), 1, KIND_LOG, SALT)
    before = seg.size()
    real_write = fileops.write

    def short_then_full_disk(fd, data):
        real_write(fd, bytes(data)[:7])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fileops, "write", short_then_full_disk)
    with pytest.raises(OSError) as raised:
        seg.append(b"x" * 100, before)
    monkeypatch.undo()
    assert raised.value.errno == errno.ENOSPC
    assert seg.size() == before
    seg.close()


def test_open_rejects_a_foreign_file_and_a_newer_version(tmp_path):
    path = tmp_path / segment_name(1)
    path.write_bytes(b"this is not a segment at all")
    with pytest.raises(CorruptionError, match="bad magic"):
        Segment.open(str(tmp_path), 1)
    Segment.create(str(tmp_path), 2, KIND_LOG, SALT).close()
    data = bytearray((tmp_path / segment_name(2)).read_bytes())
    data[8] = FORMAT_VERSION + 1  # version field
    (tmp_path / segment_name(2)).write_bytes(bytes(data))
    with pytest.raises(FormatVersionError, match=segment_name(2)):
        Segment.open(str(tmp_path), 2)


def test_a_missing_segment_is_reported_as_corruption(tmp_path):
    with pytest.raises(CorruptionError, match="missing"):
        Segment.open(str(tmp_path), 3)


def test_manifest_round_trips_and_absent_manifest_reads_as_none(tmp_path):
    assert read_manifest(str(tmp_path)) is None
    manifest = Manifest(5, (3, 4, 9), seq_floor=77, birthtime_floor=123)
    write_manifest(str(tmp_path), manifest)
    assert read_manifest(str(tmp_path)) == manifest
    assert not (tmp_path / (MANIFEST_NAME + ".tmp")).exists()


def test_replace_file_is_all_or_nothing_when_the_write_fails(tmp_path, monkeypatch):
    target = tmp_path / "f"
    fileops.replace_file(str(target), b"old contents")

    def full_disk(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fileops, "write", full_disk)
    with pytest.raises(OSError):
        fileops.replace_file(str(target), b"new contents")
    monkeypatch.undo()
    assert target.read_bytes() == b"old contents"


def test_write_all_finishes_after_short_writes(tmp_path, monkeypatch):
    real_write = fileops.write
    monkeypatch.setattr(fileops, "write", lambda fd, data: real_write(fd, bytes(data)[:3]))
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    fileops.write_all(fd, b"0123456789")
    os.close(fd)
    monkeypatch.undo()
    assert (tmp_path / "f").read_bytes() == b"0123456789"
