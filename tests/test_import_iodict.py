"""``iodict-log import-iodict`` and ``import_iodict``: real iodict 0.0.8 directories in, stores out.

The old directories are written by iodict 0.0.8 itself (the ``[test]`` extra installs
it): in xattr mode on tmp_path's file system, which must have user xattrs (the
``xattrs`` fixture fails, not skips, if it has none), and in plain mode by making
iodict see a file system without them (os.*xattr raising ENOTSUP, as such a file
system does). Then the import is compared key by key, value by value and in order
with what iodict itself reads, and the old directory with how it was.
"""

from __future__ import annotations

import errno
import hashlib
import os
import pickle
import pty
import struct
import subprocess
import sys
from pathlib import Path

import iodict
import pytest

from iodict_log import DurableQueue, IODict
from iodict_log.cli import main
from iodict_log.importer import import_iodict
from iodict_log.serialize import Serializer


class Point:
    """A value only pickle holds (found by the importer: it lives in this module)."""

    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)


VALUES = {
    "text": "hello",
    "number": 42,
    "float": 2.5,
    "none": None,
    "list": [1, "two", [3]],
    "dict": {"nested": {"deeper": [b"bytes"]}},
    "tuple": (1, (2, 3)),
    "bytes": b"\x00\xff" * 300,  # (long enough to be compressed)
    "big int": 2**70,
    "set": {1, 2, 3},
    "bytearray": bytearray(b"mutable"),
    "point": Point(1, 2),
    "": "the empty key",
    "unicode ключ ✓": "ok",
}


def _msgpack_holds(value: object) -> bool:
    """Whether the default serializer gives ``value`` back as it was (the set of such types grows)."""
    serializer = Serializer("msgpack")
    try:
        back = serializer.decode(*serializer.encode(value))
    except TypeError:
        return False
    return type(back) is type(value) and pickle.dumps(back) == pickle.dumps(value)


CONVERTIBLE = {key for key, value in VALUES.items() if _msgpack_holds(value)}
assert {"text", "number", "float", "none", "list", "dict", "tuple", "bytes", "", "unicode ключ ✓"} <= CONVERTIBLE
assert not CONVERTIBLE & {"point", "bytearray"}  # (a class; bytes back for a bytearray)


@pytest.fixture
def xattrs(tmp_path):
    """tmp_path's file system has user xattrs, as iodict's xattr mode needs."""
    probe = tmp_path / "probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "user.probe", b"1")
    except OSError as exc:
        pytest.fail(f"{tmp_path}: no user xattrs on this file system ({exc}); xattr mode cannot be tested")
    probe.unlink()


@pytest.fixture
def no_xattrs(monkeypatch):
    """Make os.*xattr fail as on a file system without xattrs; returns the undo."""

    def unsupported(*args, **kwargs):
        raise OSError(errno.ENOTSUP, "Operation not supported")

    for name in ("getxattr", "setxattr", "listxattr"):
        monkeypatch.setattr(os, name, unsupported)
    return monkeypatch.undo


def write_old(path: Path, items: dict) -> dict[str, float]:
    """Set the items with iodict 0.0.8, in order; key -> birthtime as iodict reads it, in its order."""
    old = iodict.IODict(str(path))
    for key, value in items.items():
        old[key] = value
    born = {key: iodict._get_create_time(os.path.join(old._db_path, old._encoder(key))) for key in items}
    return dict(sorted(born.items(), key=lambda item: item[1]))  # (as iodict orders: keys() shows "" as its hash)


def snapshot(path: Path) -> dict:
    """Everything of a directory an import must not change."""
    seen = {}
    for item in sorted(path.iterdir()):
        stat = item.lstat()
        xattrs = {name: os.getxattr(item, name) for name in os.listxattr(item)} if item.is_file() else {}
        content = item.read_bytes() if item.is_file() else None
        seen[item.name] = (content, xattrs, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_mode)
    return seen


def test_an_xattr_mode_directory_imports_with_its_keys_values_and_order(tmp_path, xattrs):
    order = ["point", "text", "list", "", "big int"] + [
        k for k in VALUES if k not in ("point", "text", "list", "", "big int")
    ]
    born = write_old(tmp_path / "old", {key: VALUES[key] for key in order})
    assert list(born) == order  # (iodict's own order: birthtime)
    iodict.IODict(str(tmp_path / "old"))["text"] = "overwritten"  # (keeps its birthtime in iodict: its place)
    before = snapshot(tmp_path / "old")
    summary = import_iodict(tmp_path / "old", tmp_path / "new")
    assert (summary.imported, summary.skipped, summary.mode, summary.kind) == (len(VALUES), [], "xattr", "dict")
    assert snapshot(tmp_path / "old") == before
    with IODict(tmp_path / "new", serializer="pickle") as new:
        assert list(new) == order
        expected = dict(VALUES, text="overwritten")
        for key in order:
            assert new[key] == expected[key] and type(new[key]) is type(expected[key]), key
            assert abs(new.birthtime(key) - born[key]) < 2e-6, key
    with IODict(tmp_path / "new", serializer="pickle") as new:  # (and so after a reopen)
        assert list(new) == order


def test_a_plain_mode_directory_imports_names_as_keys_in_ctime_order(tmp_path, no_xattrs):
    keys = [f"key-{i}" for i in (5, 3, 9, 1)]
    born = write_old(tmp_path / "old", {key: {"n": key} for key in keys})
    assert sorted(os.listdir(tmp_path / "old")) == sorted(keys)  # (plain mode: the names are the keys)
    summary = import_iodict(tmp_path / "old", tmp_path / "new")  # (on that same file system without xattrs)
    assert (summary.imported, summary.skipped, summary.mode) == (4, [], "plain")
    no_xattrs()
    with IODict(tmp_path / "new", serializer="pickle") as new:
        assert list(new) == list(born)  # (iodict's order: ctime, ties as iodict broke them)
        assert {key: new[key] for key in keys} == {key: {"n": key} for key in keys}
        assert all(abs(new.birthtime(key) - born[key]) < 1e-3 for key in keys)


def test_a_plain_mode_name_that_is_not_utf8_is_skipped_and_shown_escaped(tmp_path, no_xattrs, capsys):
    write_old(tmp_path / "old", {"good": 1})
    bad = os.path.join(os.fsencode(tmp_path / "old"), b"bad-\xff")  # (a name no str key gives)
    with open(bad, "wb") as file:
        file.write(pickle.dumps(2))
    assert main(["import-iodict", str(tmp_path / "old"), str(tmp_path / "new")]) == 1
    out = capsys.readouterr().out
    assert "bad-\\xff: its name, the key, is not UTF-8" in out and "1 keys imported" in out
    no_xattrs()
    with IODict(tmp_path / "new", serializer="pickle") as new:
        assert dict(new) == {"good": 1}


def test_a_plain_mode_directory_copied_to_a_file_system_with_xattrs_is_still_plain(tmp_path, no_xattrs):
    write_old(tmp_path / "old", {"a": 1, "b": 2})
    no_xattrs()  # (the import runs where xattrs work; the files carry none)
    summary = import_iodict(tmp_path / "old", tmp_path / "new")
    assert (summary.imported, summary.mode) == (2, "plain")
    with IODict(tmp_path / "new", serializer="pickle") as new:
        assert dict(new) == {"a": 1, "b": 2}


def test_msgpack_converts_what_msgpack_holds_and_keeps_the_rest_pickled(tmp_path, xattrs):
    write_old(tmp_path / "old", VALUES)
    summary = import_iodict(tmp_path / "old", tmp_path / "new", msgpack=True)
    assert summary.imported == len(VALUES)
    kept = set(VALUES) - CONVERTIBLE  # (a set, a point; a bytearray would come back bytes; the big int
    assert summary.kept_pickled == len(kept)  # until the default serializer holds them)
    with IODict(tmp_path / "new", serializer="pickle") as new:
        assert dict(new) == VALUES and list(new) == list(VALUES)
        assert type(new["bytearray"]) is bytearray
    with IODict(tmp_path / "new") as new:  # (the default serializer reads every converted value)
        assert {key: new[key] for key in CONVERTIBLE} == {key: VALUES[key] for key in CONVERTIBLE}


def test_a_store_of_only_convertible_values_opens_with_the_default_serializer(tmp_path, xattrs):
    write_old(tmp_path / "old", {key: VALUES[key] for key in CONVERTIBLE})
    assert import_iodict(tmp_path / "old", tmp_path / "new", msgpack=True).kept_pickled == 0
    with IODict(tmp_path / "new") as new:
        assert dict(new) == {key: VALUES[key] for key in CONVERTIBLE}


def test_a_pickle_of_a_class_that_is_gone_is_carried_over_as_it_is(tmp_path, xattrs):
    # checking a value never imports anything: a class this process cannot import is no damage
    write_old(tmp_path / "old", {"gone": Point(3, 4)})
    (path,) = (tmp_path / "old").iterdir()
    data = path.read_bytes().replace(b"test_import_iodict", b"gone_module_abcdef")  # (the same length)
    path.write_bytes(data)
    for msgpack in (False, True):
        new = tmp_path / f"new-{msgpack}"
        summary = import_iodict(tmp_path / "old", new, msgpack=msgpack)
        assert (summary.imported, summary.skipped, summary.kept_pickled) == (1, [], int(msgpack))
        with IODict(new, serializer="pickle") as store:
            assert store._read(store._stored_at, "gone") is not None
            with pytest.raises(ModuleNotFoundError, match="gone_module_abcdef"):
                store["gone"]


def damaged_directory(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """An xattr-mode directory with a truncated pickle, an empty file, an orphan and a
    subdirectory among good keys; the bad files' names -> what the summary must say."""
    old = tmp_path / "old"
    write_old(old, {f"good-{i}": [i] * 50 for i in range(5)} | {"cut": list(range(100)), "empty": "x"})
    name = hashlib.sha3_224
    cut = old / name(b"cut").hexdigest()
    cut.write_bytes(cut.read_bytes()[:-7])
    (old / name(b"empty").hexdigest()).write_bytes(b"")
    orphan = old / name(b"orphan").hexdigest()
    orphan.write_bytes(pickle.dumps("no key"))  # (a crash between iodict's write and its setxattr)
    os.setxattr(orphan, "user.birthtime", os.getxattr(cut, "user.birthtime"))
    (old / "subdir").mkdir()
    return old, {
        cut.name: "not a whole pickle",
        name(b"empty").hexdigest(): "empty file",
        orphan.name: "orphan",
        "subdir": "not a regular file",
    }


def test_what_cannot_be_read_is_skipped_and_listed_and_the_rest_imported(tmp_path, xattrs):
    old, bad = damaged_directory(tmp_path)
    before = snapshot(old)
    summary = import_iodict(old, tmp_path / "new")
    assert summary.imported == 5
    assert {os.path.basename(s.path): s.reason.split(":")[0].split(" (")[0] for s in summary.skipped} == bad
    assert snapshot(old) == before
    with IODict(tmp_path / "new", serializer="pickle") as new:
        assert dict(new) == {f"good-{i}": [i] * 50 for i in range(5)}


def test_a_key_repeated_by_a_copied_in_file_is_imported_once_the_oldest(tmp_path, xattrs):
    write_old(tmp_path / "old", {"a": "first", "b": 2})
    copy = tmp_path / "old" / "copy-of-a"
    copy.write_bytes(pickle.dumps("second"))
    os.setxattr(copy, "user.key", b"a")
    os.setxattr(copy, "user.birthtime", struct.pack(">d", 4e9))  # (newer than the original)
    summary = import_iodict(tmp_path / "old", tmp_path / "new")
    assert summary.imported == 2 and len(summary.skipped) == 1
    assert Path(summary.skipped[0].path).name == "copy-of-a"
    assert summary.skipped[0].reason.startswith("the same key as the older")
    with IODict(tmp_path / "new", serializer="pickle") as new:
        assert dict(new) == {"a": "first", "b": 2}


def test_the_command_lists_what_it_skipped_and_exits_1(tmp_path, xattrs, capsys):
    old, bad = damaged_directory(tmp_path)
    assert main(["import-iodict", str(old), str(tmp_path / "new")]) == 1
    out = capsys.readouterr().out
    for name, reason in bad.items():
        assert f"skipped: {old / name}: {reason}" in out
    assert "5 keys imported" in out and "4 file(s) skipped" in out


def test_the_command_exits_0_when_everything_is_imported(tmp_path, xattrs, capsys):
    write_old(tmp_path / "old", {"a": 1})
    assert main(["import-iodict", str(tmp_path / "old"), str(tmp_path / "new")]) == 0
    out = capsys.readouterr().out
    assert "1 keys imported" in out and "0 file(s) skipped" in out and "serializer='pickle'" in out
    with IODict(tmp_path / "new", serializer="pickle") as new:
        assert new["a"] == 1


def test_a_durablequeue_directory_imports_as_a_queue_in_the_same_order(tmp_path, xattrs, capsys):
    old = iodict.DurableQueue(str(tmp_path / "old"))
    items = [("job", i, Point(i, -i)) for i in range(30)]
    for item in items:
        old.put(item)
    assert old.get() == items[0]  # (iodict's get pops the oldest: 29 left)
    assert main(["import-iodict", "--queue", str(tmp_path / "old"), str(tmp_path / "new")]) == 0
    assert "29 queue items imported" in capsys.readouterr().out
    with DurableQueue(tmp_path / "new") as new:
        assert new.qsize() == 29
        assert [new.get_nowait() for _ in range(29)] == items[1:]


def test_bad_arguments_exit_2_and_write_nothing(tmp_path, xattrs, capsys):
    write_old(tmp_path / "old", {"a": 1})
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "file").write_bytes(b"")
    with IODict(tmp_path / "store") as store:
        store["x"] = 1
    cases = [
        ([str(tmp_path / "missing"), str(tmp_path / "n1")], "no such directory"),
        ([str(tmp_path / "old"), str(tmp_path / "full")], "exists"),
        ([str(tmp_path / "store"), str(tmp_path / "n2")], "is an iodict_log store already"),
        ([str(tmp_path / "old"), str(tmp_path / "old" / "inside")], "inside"),
    ]
    for args, message in cases:
        assert main(["import-iodict", *args]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full", "old", "store"]
    assert os.listdir(tmp_path / "full") == ["file"]


def test_an_empty_new_directory_is_filled_and_no_staging_is_left(tmp_path, xattrs):
    write_old(tmp_path / "old", {"a": 1})
    (tmp_path / "new").mkdir()
    assert import_iodict(tmp_path / "old", tmp_path / "new").imported == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "old"]


def test_progress_is_reported_up_to_the_total(tmp_path, xattrs):
    write_old(tmp_path / "old", {f"k{i}": i for i in range(2500)})
    calls = []
    import_iodict(tmp_path / "old", tmp_path / "new", progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (2500, 2500) and len(calls) >= 3
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)


def test_the_command_shows_a_progress_bar_on_a_terminal(tmp_path, xattrs):
    write_old(tmp_path / "old", {f"k{i}": i for i in range(50)})
    primary, secondary = pty.openpty()
    command = [sys.executable, "-m", "iodict_log", "import-iodict", str(tmp_path / "old"), str(tmp_path / "new")]
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=secondary, timeout=120)
    os.close(secondary)
    shown = os.read(primary, 65536).decode()
    os.close(primary)
    assert result.returncode == 0, shown
    assert "import-iodict [" in shown and "100.0%" in shown


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 1e300, -5.0])
def test_a_birthtime_no_record_can_hold_is_skipped_and_listed(tmp_path, xattrs, bad):
    # A damaged user.birthtime used to abort the whole import (a traceback, or exit 2).
    write_old(tmp_path / "old", {f"k{i}": i for i in range(5)})
    victim = tmp_path / "old" / iodict.IODict(str(tmp_path / "old"))._encoder("k2")
    os.setxattr(victim, "user.birthtime", struct.pack(">d", bad))
    summary = import_iodict(tmp_path / "old", tmp_path / "new")
    assert [(s.path, s.reason.split(":")[0]) for s in summary.skipped] == [
        (str(victim), "its birthtime is not a time a record can hold")
    ]
    with IODict(tmp_path / "new", serializer="pickle") as new:
        assert dict(new) == {"k0": 0, "k1": 1, "k3": 3, "k4": 4}


def test_a_plain_mode_key_named_current_is_a_key_not_a_store(tmp_path, no_xattrs):
    write_old(tmp_path / "old", {"CURRENT": "a key", "other": 1})
    summary = import_iodict(tmp_path / "old", tmp_path / "new")
    assert (summary.imported, summary.skipped, summary.mode) == (2, [], "plain")
    with IODict(tmp_path / "new", serializer="pickle") as new:
        assert new["CURRENT"] == "a key" and new["other"] == 1
