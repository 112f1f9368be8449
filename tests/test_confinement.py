"""Confinement (issue 21.1, 21.10): whoever can write a store's directory can put
links, FIFOs and directories where its files belong. The store never writes
through a link, never creates a link's target, opens regular files only, and
anything else in its place is an IODictLogError, never a hang or MemoryError.

Run as root (as the cron job of 21.1 is): permissions stop nothing here.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from iodict_log import DurableQueue, IODict, IODictLogError
from iodict_log import log as log_module
from iodict_log.errors import CorruptionError

# Every name a dict store writes (or creates), and the first segment number it has not used yet.
NAMES = ["CURRENT", "CURRENT.tmp", "HINT", "HINT.tmp", "LOCK", "COMPACT.LOCK", "compact.0000.tmp", "0000000009.seg"]
SMALL = 4096


def make_store(path: str) -> None:
    with IODict(path, segment_bytes=SMALL, auto_compact=False) as d:
        for i in range(60):
            d[f"k{i}"] = b"v" * 100  # a few segments
        d.compact()


def use_store(path: str) -> None:
    """Everything that writes: open, write and roll, compact, close with a hint."""
    d = IODict(path, segment_bytes=SMALL, auto_compact=False)
    try:
        for i in range(120):
            d[f"n{i}"] = b"w" * 100
        d.compact()
    finally:
        d.close()


@pytest.mark.parametrize("dangling", [False, True], ids=["to-a-file", "dangling"])
@pytest.mark.parametrize("name", NAMES)
def test_a_link_in_place_of_a_store_file_is_never_written_through(tmp_path, monkeypatch, name, dangling):
    monkeypatch.setattr(log_module, "HINT_AFTER_RECORDS", 1)  # every close writes a hint
    path = str(tmp_path / "store")
    make_store(path)
    victim = tmp_path / "victim"
    if not dangling:
        victim.write_bytes(b"precious")
    link = os.path.join(path, name)
    if os.path.lexists(link):
        os.unlink(link)
    os.symlink(victim, link)
    try:
        use_store(path)
    except IODictLogError:
        pass  # (refusing is fine; writing through is not)
    if dangling:
        assert not os.path.lexists(victim), f"{name} as a dangling link created its target"
    else:
        assert victim.read_bytes() == b"precious", f"{name} as a link wrote through it"
        assert not os.path.islink(link) or os.readlink(link) == str(victim)


@pytest.mark.parametrize("name", ["CURRENT.tmp", "HINT.tmp", "compact.0000.tmp"])
def test_a_stale_temporary_link_is_replaced_by_a_fresh_file(tmp_path, monkeypatch, name):
    monkeypatch.setattr(log_module, "HINT_AFTER_RECORDS", 1)
    path = str(tmp_path / "store")
    make_store(path)
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    os.symlink(victim, os.path.join(path, name))
    use_store(path)  # works: a temporary is created anew, the link removed
    assert victim.read_bytes() == b"precious"
    with IODict(path) as d:
        assert len(d) == 180


def test_a_queue_releasing_segments_never_writes_through_a_current_tmp_link(tmp_path):
    path = str(tmp_path / "q")
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    q = DurableQueue(path, segment_bytes=SMALL)
    for _ in range(200):
        q.put(b"x" * 100)
    segments = len(os.listdir(path))
    os.symlink(victim, os.path.join(path, "CURRENT.tmp"))  # (after the rolls, which remove leftovers)
    for _ in range(60):
        q.get_nowait()
    assert len(os.listdir(path)) < segments  # consumed segments were released: CURRENT was replaced
    q.close()
    assert victim.read_bytes() == b"precious"


def test_lock_files_as_dangling_links_refuse_the_store_and_create_nothing(tmp_path):
    path = str(tmp_path / "store")
    make_store(path)
    for name in ("LOCK", "COMPACT.LOCK"):
        target = tmp_path / f"created-by-{name}"
        os.unlink(os.path.join(path, name))
        os.symlink(target, os.path.join(path, name))
    with pytest.raises(CorruptionError, match="LOCK: is a symbolic link"):
        IODict(path)
    assert not os.path.lexists(tmp_path / "created-by-LOCK")
    os.unlink(os.path.join(path, "LOCK"))
    with IODict(path) as d, pytest.raises(CorruptionError, match="COMPACT.LOCK: is a symbolic link"):
        d.compact()
    assert not os.path.lexists(tmp_path / "created-by-COMPACT.LOCK")


OPEN = """
import sys
from iodict_log import IODict, IODictLogError
try:
    IODict(sys.argv[1])
except IODictLogError as e:
    print(e)
    sys.exit(3)
"""


def open_elsewhere(path: str) -> subprocess.CompletedProcess:
    """Open ``path`` in another process, so that a hang fails the test instead of hanging it."""
    return subprocess.run([sys.executable, "-c", OPEN, path], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("name", ["CURRENT", "0000000001.seg", "LOCK"])
def test_a_fifo_in_place_of_a_store_file_is_refused_without_hanging(tmp_path, name):
    path = str(tmp_path / "store")
    IODict(path).close()
    os.unlink(os.path.join(path, name))
    os.mkfifo(os.path.join(path, name))
    opened = open_elsewhere(path)
    assert opened.returncode == 3 and f"{name}: is not a regular file" in opened.stdout, opened.stderr


def test_a_segment_too_large_to_address_is_damage_naming_it_not_memory_error(tmp_path):
    path = str(tmp_path / "store")
    with IODict(path) as d:
        d["k"] = 1
    segment = os.path.join(path, "0000000001.seg")
    os.truncate(segment, 5 * 2**30)  # sparse
    opened = open_elsewhere(path)
    assert opened.returncode == 3 and f"{segment}: is 5368709120 bytes" in opened.stdout, opened.stderr
