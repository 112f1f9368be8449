"""The sync modes: what is fsynced, when, and what a failed fsync does."""

from __future__ import annotations

import errno
import os
import threading

import pytest
from helpers import joined

from iodict_log import IODict, fileops

SEGMENT = "0000000001.seg"


@pytest.fixture
def fsyncs(monkeypatch):
    """Record (file size at the time, thread) of every fdatasync on a segment file."""
    calls: list[tuple[int, str]] = []
    happened = threading.Event()
    real = fileops.fdatasync

    def recording(fd: int) -> None:
        real(fd)
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".seg"):
            calls.append((os.fstat(fd).st_size, threading.current_thread().name))
            happened.set()

    monkeypatch.setattr(fileops, "fdatasync", recording)
    return calls, happened


def test_sync_true_fsyncs_every_write_before_it_returns(tmp_path, fsyncs):
    calls, _ = fsyncs
    with IODict(tmp_path / "s", sync=True) as d:
        for i in range(5):
            d[i] = b"v" * 100
            size = os.path.getsize(tmp_path / "s" / SEGMENT)
            # The last fsync happened after the write, in the calling thread.
            assert calls[-1] == (size, threading.current_thread().name)
        d.update({10: 1, 11: 2})
        assert calls[-1][0] == os.path.getsize(tmp_path / "s" / SEGMENT)
    assert len(calls) >= 6


def test_sync_false_never_fsyncs_a_write(tmp_path, fsyncs):
    calls, _ = fsyncs
    with IODict(tmp_path / "s") as d:
        for i in range(20):
            d[i] = i
    assert calls == []


def test_group_commit_fsyncs_in_the_background_within_the_interval(tmp_path, fsyncs):
    calls, happened = fsyncs
    d = IODict(tmp_path / "s", sync=0.05)
    for i in range(50):
        d[i] = b"v" * 100
    size = os.path.getsize(tmp_path / "s" / SEGMENT)
    assert happened.wait(timeout=30), "no group-commit fsync happened"
    # Far fewer fsyncs than writes, done by the timer thread, not the writer.
    assert 1 <= len(calls) < 50
    assert calls[0][1] != threading.current_thread().name
    d.close()  # close fsyncs whatever the timer has not
    assert calls[-1][0] == size


def test_a_failed_group_commit_fsync_is_raised_by_the_next_call(tmp_path, monkeypatch):
    failed = threading.Event()

    def broken(fd: int) -> None:
        failed.set()
        raise OSError(errno.EIO, "Input/output error")

    d = IODict(tmp_path / "s", sync=0.01)
    monkeypatch.setattr(fileops, "fdatasync", broken)
    d["a"] = 1
    assert failed.wait(timeout=30)
    joined(d._log._sync_timer, 30)  # the timer has recorded its error
    monkeypatch.undo()
    with pytest.raises(OSError) as raised:
        d["b"] = 2
    assert raised.value.errno == errno.EIO
    d["c"] = 3  # reported once; the store goes on
    assert d["a"] == 1 and d["c"] == 3
    d.close()


def test_sync_fsyncs_on_demand(tmp_path, fsyncs):
    calls, _ = fsyncs
    with IODict(tmp_path / "s") as d:
        d["a"] = 1
        d.sync()
        assert calls[-1][0] == os.path.getsize(tmp_path / "s" / SEGMENT)


def test_group_commit_follows_the_active_segment_across_a_roll(tmp_path, monkeypatch):
    synced: list[str] = []
    newest_synced = threading.Event()
    real = fileops.fdatasync

    def recording(fd: int) -> None:
        real(fd)
        target = os.readlink(f"/proc/self/fd/{fd}")
        synced.append(target)
        if target.endswith("0000000002.seg"):
            newest_synced.set()

    monkeypatch.setattr(fileops, "fdatasync", recording)
    d = IODict(tmp_path / "s", sync=0.2, segment_bytes=4096)
    for i in range(60):  # about 7 KB: the last writes land in the second segment
        d[i] = b"v" * 100
    assert os.path.exists(tmp_path / "s" / "0000000002.seg")
    # With no write after these, the timer must still reach the segment they are in.
    assert newest_synced.wait(timeout=30), synced
    d.close()
