"""readonly=True (CONTRACT §12): opening and reading never change a byte of the directory,
work where the process cannot write, follow other processes, and every write raises
ReadOnlyError. docs/CONCURRENCY.md "Read-only readers" is the protocol under test."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
from helpers import Team, next_line

from iodict_log import DurableQueue, IODict, IODictLogError, ReadOnlyError
from iodict_log.cli import main as cli_main
from iodict_log.crashpoints import CRASH_EXIT

NOBODY = 65534
SMALL = 4096  # segment_bytes: a few dozen records per segment, so writes roll


def listing(path: Path) -> dict[str, tuple]:
    """Every entry under ``path``: its type, mode, size, mtime and, for a file, its bytes."""
    found: dict[str, tuple] = {}
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            full = os.path.join(root, name)
            info = os.lstat(full)
            data = Path(full).read_bytes() if stat.S_ISREG(info.st_mode) else None
            found[os.path.relpath(full, path)] = (info.st_mode, info.st_size, info.st_mtime_ns, info.st_ino, data)
    info = os.lstat(path)
    found["."] = (info.st_mode, info.st_mtime_ns, info.st_ino)
    return found


def make_dict(path: Path, n: int = 300) -> dict:
    """A dict store across several segments, with overwrites and deletes; what it holds."""
    expected = {}
    with IODict(path, segment_bytes=SMALL) as d:
        for i in range(n):
            d[f"k{i}"] = i
            expected[f"k{i}"] = i
        for i in range(0, n, 3):
            d[f"k{i}"] = -i
            expected[f"k{i}"] = -i
        for i in range(1, n, 5):
            del d[f"k{i}"]
            del expected[f"k{i}"]
    return expected


def make_queue(path: Path, n: int = 300, taken: int = 50) -> list:
    with DurableQueue(path, segment_bytes=SMALL) as q:
        q.put_many(range(n))
        got = [q.get() for _ in range(taken)]
    assert got == list(range(taken))
    return list(range(taken, n))


def read_everything(d: IODict) -> dict:
    """Every read method, so that each may be caught changing something."""
    items = dict(d.items())
    assert list(d) == list(items) and len(d) == len(items)
    assert [d[k] for k in d] == list(items.values())
    assert all(k in d for k in items) and d.get("missing", 7) == 7 and "missing" not in d
    list(reversed(d))
    list(d.records())
    d.stats()
    for k in list(items)[:5]:
        d.birthtime(k)
    d.copy()
    d.flush()
    return items


def test_opening_reading_and_closing_a_dict_change_nothing(tmp_path):
    path = tmp_path / "d"
    expected = make_dict(path)
    before = listing(path)
    with IODict(path, readonly=True, segment_bytes=SMALL) as d:
        assert read_everything(d) == expected
        assert d.stats()["segments"] > 3
    assert listing(path) == before


def test_a_queue_read_only_counts_and_changes_nothing(tmp_path):
    path = tmp_path / "q"
    left = make_queue(path)
    before = listing(path)
    with DurableQueue(path, readonly=True) as q:
        assert q.qsize() == len(left) and not q.empty()
        assert q.stats()["items"] == len(left)
        assert q.dead_letters() == []
    assert listing(path) == before


def test_a_store_without_lock_opens_and_nothing_is_created(tmp_path):
    path = tmp_path / "d"
    expected = make_dict(path)
    os.unlink(path / "LOCK")
    before = listing(path)
    with IODict(path, readonly=True) as d:
        assert dict(d.items()) == expected
        assert listing(path) == before
        with IODict(path) as writer:  # (creates LOCK: the reader, which has no counter, looks anyway)
            writer["new"] = 1
        written = listing(path)
        assert d["new"] == 1 and len(d) == len(expected) + 1
    assert listing(path) == written


@pytest.mark.parametrize("where", ["missing", "empty", "foreign", "file"])
def test_a_missing_or_non_store_path_is_a_clear_error_and_nothing_is_created(tmp_path, where):
    path = tmp_path / "x"
    if where == "empty":
        path.mkdir()
    elif where == "foreign":
        path.mkdir()
        (path / "notes.txt").write_text("mine")
    elif where == "file":
        path.write_text("mine")
    before = listing(tmp_path)
    for kind in (IODict, DurableQueue):
        with pytest.raises((IODictLogError, OSError)) as raised:
            kind(path, readonly=True)
        assert str(path) in str(raised.value)
    assert listing(tmp_path) == before


def test_a_dict_store_refuses_to_open_as_a_queue_read_only(tmp_path):
    path = tmp_path / "d"
    make_dict(path, 10)
    before = listing(path)
    with pytest.raises(IODictLogError, match="cannot be opened as a queue"):
        DurableQueue(path, readonly=True)
    assert listing(path) == before


DICT_WRITES = {
    "setitem": lambda d: d.__setitem__("k0", 1),
    "setitem-new": lambda d: d.__setitem__("new", 1),
    "setitem-int-key": lambda d: d.__setitem__(5, 1),
    "delitem": lambda d: d.__delitem__("k0"),
    "delitem-missing": lambda d: d.__delitem__("missing"),
    "update": lambda d: d.update({"a": 1, "b": 2}),
    "update-kwargs": lambda d: d.update(a=1),
    "ior": lambda d: d.__ior__({"a": 1}),
    "fromkeys": lambda d: d.fromkeys(["a"]),
    "clear": lambda d: d.clear(),
    "pop": lambda d: d.pop("k0"),
    "pop-default": lambda d: d.pop("missing", None),
    "popitem": lambda d: d.popitem(),
    "setdefault": lambda d: d.setdefault("new", 1),
    "setdefault-present": lambda d: d.setdefault("k0", 1),
    "compact": lambda d: d.compact(),
}


@pytest.mark.parametrize("write", DICT_WRITES, ids=list(DICT_WRITES))
def test_every_dict_write_raises_read_only_error_and_changes_nothing(tmp_path, write):
    path = tmp_path / "d"
    expected = make_dict(path, 60)
    before = listing(path)
    with IODict(path, readonly=True) as d:
        with pytest.raises(ReadOnlyError):
            DICT_WRITES[write](d)
        assert dict(d.items()) == expected  # (and the index did not move either)
    assert listing(path) == before


QUEUE_WRITES = {
    "put": lambda q: q.put(1),
    "put-nowait": lambda q: q.put_nowait(1),
    "put-timeout": lambda q: q.put(1, timeout=1),
    "put_many": lambda q: q.put_many([1, 2]),
    "get": lambda q: q.get(),
    "get-nowait": lambda q: q.get_nowait(),
    "get-timeout": lambda q: q.get(timeout=1),
    "lease": lambda q: q.lease(),
    "lease-nowait": lambda q: q.lease(block=False),
    "retry_dead_letters": lambda q: q.retry_dead_letters(),
}


@pytest.mark.parametrize("write", QUEUE_WRITES, ids=list(QUEUE_WRITES))
def test_every_queue_write_raises_read_only_error_and_changes_nothing(tmp_path, write):
    path = tmp_path / "q"
    left = make_queue(path, 60, 10)
    before = listing(path)
    with DurableQueue(path, readonly=True) as q:
        with pytest.raises(ReadOnlyError):
            QUEUE_WRITES[write](q)
        assert q.qsize() == len(left)
        with pytest.raises(ValueError):
            q.task_done()  # (it got nothing)
    assert listing(path) == before


def test_read_only_error_is_exported_and_an_iodict_log_error():
    import iodict_log

    assert "ReadOnlyError" in iodict_log.__all__ and issubclass(ReadOnlyError, IODictLogError)


def test_a_pickled_read_only_store_reopens_read_only(tmp_path):
    import pickle

    path = tmp_path / "d"
    make_dict(path, 10)
    with IODict(path, readonly=True) as d, pickle.loads(pickle.dumps(d)) as copy, pytest.raises(ReadOnlyError):
        copy["x"] = 1


# --- torn tails and compactions in progress, left by killed writers -------------------


def crash_writer(path: Path, point: str, code: str) -> None:
    """Run ``code`` (with ``d``, an IODict on ``path``) in a child killed at ``point``."""
    env = dict(os.environ, IODICT_LOG_CRASH_AT=point)
    script = (
        "import sys\nfrom iodict_log import IODict\n"
        f"d = IODict(sys.argv[1], segment_bytes={SMALL}, auto_compact=False)\n{code}"
    )
    done = subprocess.run([sys.executable, "-c", script, str(path)], env=env, capture_output=True, timeout=60)
    assert done.returncode == CRASH_EXIT, done.stderr.decode()


def test_a_torn_tail_is_ignored_not_cut_and_later_writes_are_seen(tmp_path):
    path = tmp_path / "d"
    expected = make_dict(path, 40)
    crash_writer(path, "batch.half", "d.update({'t1': 1, 't2': 2})")
    before = listing(path)
    with IODict(path, readonly=True) as d:
        assert dict(d.items()) == expected  # (half a batch: not there)
        assert dict(d.items()) == expected
        assert listing(path) == before  # not cut, even by a second look
        with IODict(path) as writer:  # (cuts the torn tail, appends at the cut)
            writer["after"] = 1
        assert d["after"] == 1 and "t1" not in d


@pytest.mark.parametrize(
    "point", ["compaction.copied", "compaction.installed", "compaction.sealed", "compaction.committed"]
)
def test_a_compaction_in_progress_is_read_around_and_left_alone(tmp_path, point):
    """A compactor stopped (killed) at each step: the reader sees every key as it was,
    leaves the temporary files, the unlisted copies and the SEAL where they are, and
    follows once a writer finishes or undoes the step."""
    path = tmp_path / "d"
    expected = make_dict(path, 200)
    crash_writer(path, point, "d.compact()")
    before = listing(path)
    with IODict(path, readonly=True) as d:
        assert dict(d.items()) == expected
        assert dict(d.items()) == expected
        assert listing(path) == before
        with IODict(path, segment_bytes=SMALL) as writer:  # (finishes the roll or follows the commit)
            writer["after"] = 1
            writer.compact()
            writer["later"] = 2
        expected.update(after=1, later=2)
        assert dict(d.items()) == expected


# --- a directory the process cannot write ------------------------------------------

AS_NOBODY = textwrap.dedent(
    f"""
    import contextlib, io, json, os, sys
    # (Imported first: the interpreter's own files may lie where uid {NOBODY} cannot read.)
    from iodict_log import DurableQueue, IODict
    from iodict_log.cli import main
    os.setgroups([])
    os.setgid({NOBODY})
    os.setuid({NOBODY})
    path, kind = sys.argv[1], sys.argv[2]
    try:
        open(os.path.join(path, "probe"), "w")
    except PermissionError:
        print("cannot write", flush=True)
    else:
        print("CAN WRITE", flush=True)
    store = IODict(path, readonly=True) if kind == "dict" else DurableQueue(path, readonly=True)
    count = len if kind == "dict" else (lambda q: q.qsize())
    for line in sys.stdin:
        if line.strip() == "cli":
            with contextlib.redirect_stdout(io.StringIO()):
                out = [main([command, path]) for command in ("stats", "verify", "dump")]
            print("cli", *out, flush=True)
        else:
            print(count(store), store.stats()["segments"], flush=True)
    """
)


@pytest.fixture
def unwritable(tmp_path):
    """A directory owned by root, 0755, that uid 65534 can read but not write. (The suite
    runs as root, which may drop to another uid; the children's setuid fails otherwise.)"""
    base = Path(tempfile.mkdtemp(prefix="iodict-readonly-"))
    os.chmod(base, 0o755)
    yield base
    shutil.rmtree(base)


def cli_changes_nothing(child, path, deadline: float) -> None:
    """The unprivileged child runs stats, verify and dump (each exit 0), then ends; the store
    is as it was before."""
    before = listing(path)
    child.send("cli\n")
    assert next_line(child, deadline) == "cli 0 0 0"
    child.proc.stdin.close()
    assert child.proc.wait(timeout=30) == 0, child.describe()
    assert listing(path) == before


@pytest.mark.parametrize("lock", ["lock", "no-lock"])
def test_a_dict_in_a_directory_the_process_cannot_write(unwritable, tmp_path, lock):
    path = unwritable / "d"
    expected = make_dict(path, 100)
    if lock == "no-lock":
        os.unlink(path / "LOCK")
    for root, dirs, files in os.walk(path):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o755)
        for name in files:
            os.chmod(os.path.join(root, name), 0o644)
    deadline = time.monotonic() + 60
    with Team(tmp_path) as team:
        child = team.spawn("nobody", AS_NOBODY, path, "dict")
        assert next_line(child, deadline) == "cannot write"
        child.send("look\n")
        segments = int(next_line(child, deadline).split()[1])
        with IODict(path, segment_bytes=SMALL) as writer:  # root appends, rolling several times
            for i in range(300):
                writer[f"n{i}"] = i
            expected.update((f"n{i}", i) for i in range(300))
            child.send("look\n")
            count, now = map(int, next_line(child, deadline).split())
            assert count == len(expected) and now > segments
            writer.compact()
            for i in range(50):
                del writer[f"n{i}"]
            child.send("look\n")
            assert int(next_line(child, deadline).split()[0]) == len(expected) - 50
        if lock == "no-lock":
            os.unlink(path / "LOCK")  # (the writer made one; the reader never needs it)
        cli_changes_nothing(child, path, deadline)


def test_a_queue_in_a_directory_the_process_cannot_write(unwritable, tmp_path):
    path = unwritable / "q"
    left = make_queue(path, 100, 10)
    deadline = time.monotonic() + 60
    with Team(tmp_path) as team:
        child = team.spawn("nobody", AS_NOBODY, path, "queue")
        assert next_line(child, deadline) == "cannot write"
        child.send("look\n")
        assert int(next_line(child, deadline).split()[0]) == len(left)
        with DurableQueue(path, segment_bytes=SMALL) as q:
            q.put_many(range(200))
            child.send("look\n")
            assert int(next_line(child, deadline).split()[0]) == len(left) + 200
            for _ in range(len(left) + 150):
                q.get()  # (drains through rolls: consumed segments are deleted under the reader)
            lease = q.lease()
            child.send("look\n")
            assert int(next_line(child, deadline).split()[0]) == 49
            lease.ack()
        cli_changes_nothing(child, path, deadline)


# --- following a writer in another process ------------------------------------------

WRITER = textwrap.dedent(
    f"""
    import sys
    from iodict_log import IODict
    d = IODict(sys.argv[1], segment_bytes={SMALL}, auto_compact=False)
    for line in sys.stdin:
        command, _, arg = line.strip().partition(" ")
        if command == "set":
            start, stop = map(int, arg.split(":"))
            for i in range(start, stop):
                d[f"w{{i}}"] = i  # (one record at a time: the log rolls between them)
        elif command == "del":
            start, stop = map(int, arg.split(":"))
            for i in range(start, stop):
                del d[f"w{{i}}"]
        elif command == "compact":
            d.compact()
        print("done", d.stats()["segments"], flush=True)
    """
)


def test_follows_a_writer_in_another_process_through_rolls_and_compactions(tmp_path):
    path = tmp_path / "d"
    make_dict(path, 0)  # (an empty store: CURRENT and one segment)
    before_reader = listing(path)
    deadline = time.monotonic() + 60
    with IODict(path, readonly=True) as reader:
        assert listing(path) == before_reader
        assert len(reader) == 0
        with Team(tmp_path) as team:
            writer = team.spawn("writer", WRITER, path)
            expected: dict = {}
            for step in ("set 0:100", "set 100:400", "del 0:150", "compact", "set 400:450", "compact", "del 400:420"):
                writer.send(step + "\n")
                assert next_line(writer, deadline).startswith("done")
                command, _, arg = step.partition(" ")
                if command in ("set", "del"):
                    start, stop = map(int, arg.split(":"))
                    for i in range(start, stop):
                        if command == "set":
                            expected[f"w{i}"] = i
                        else:
                            del expected[f"w{i}"]
                assert dict(reader.items()) == expected, step
                if step == "set 100:400":
                    assert reader.stats()["segments"] > 3  # (it rolled, and the reader followed)
            writer.proc.stdin.close()
            assert writer.proc.wait(timeout=30) == 0, writer.describe()


def test_a_read_only_queue_follows_puts_and_gets_in_another_process(tmp_path):
    path = tmp_path / "q"
    make_queue(path, 0, 0)
    code = textwrap.dedent(
        f"""
        import sys
        from iodict_log import DurableQueue
        q = DurableQueue(sys.argv[1], segment_bytes={SMALL})
        for line in sys.stdin:
            command, n = line.split()
            for _ in range(int(n)):
                q.put(0) if command == "put" else q.get()
            print("done", flush=True)
        """
    )
    deadline = time.monotonic() + 60
    with DurableQueue(path, readonly=True) as reader, Team(tmp_path) as team:
        child = team.spawn("writer", code, path)
        size = 0
        for command, n in (("put", 300), ("get", 250), ("put", 20), ("get", 70)):
            child.send(f"{command} {n}\n")
            assert next_line(child, deadline) == "done"
            size += n if command == "put" else -n
            assert reader.qsize() == size, (command, n)
        child.proc.stdin.close()
        assert child.proc.wait(timeout=30) == 0, child.describe()


# --- the tool's reading commands --------------------------------------------------


@pytest.mark.parametrize("command", ["stats", "verify", "dump"])
def test_the_reading_commands_change_nothing_even_after_a_crash(tmp_path, command, capsys):
    path = tmp_path / "d"
    make_dict(path, 60)
    crash_writer(path, "batch.half", "d.update({'t1': 1, 't2': 2})")  # (a torn tail stats once cut)
    before = listing(path)
    assert cli_main([command, str(path)]) == 0  # (half a batch is an append not finished: no damage)
    assert listing(path) == before
    assert capsys.readouterr().err == ""


def test_tail_follows_a_crashed_store_and_changes_nothing(tmp_path):
    path = tmp_path / "d"
    make_dict(path, 60)
    crash_writer(path, "batch.half", "d.update({'t1': 1, 't2': 2})")
    before = listing(path)
    tail = subprocess.Popen(
        [sys.executable, "-m", "iodict_log", "tail", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = [tail.stdout.readline() for _ in range(60)]  # (the torn batch is not shown: not committed)
        assert all('"op": "set"' in line for line in lines)
    finally:
        tail.send_signal(signal.SIGINT)
        _, err = tail.communicate(timeout=30)
    assert tail.returncode == 130 and err == "iodict-log tail: interrupted\n"
    assert listing(path) == before


def test_a_dead_holders_lease_comes_back_in_a_read_only_count_and_its_file_stays(tmp_path):
    path = tmp_path / "q"
    make_queue(path, 3, 0)
    code = textwrap.dedent(
        """
        import sys
        from iodict_log import DurableQueue
        q = DurableQueue(sys.argv[1])
        q.lease()
        print("leased", flush=True)
        sys.stdin.read()
        """
    )
    deadline = time.monotonic() + 60
    with DurableQueue(path, readonly=True) as reader, Team(tmp_path) as team:
        child = team.spawn("holder", code, path)
        assert next_line(child, deadline) == "leased"
        assert reader.qsize() == 2 and reader.stats()["leased"] == 1  # (its holder lives)
        child.kill()
        child.proc.wait(timeout=30)
        holders = sorted(os.listdir(path / "holders"))
        before = listing(path)
        while reader.qsize() != 3:  # (a holder is tried at most every 0.25 s)
            assert time.monotonic() < deadline, "the dead holder's lease never came back"
            time.sleep(0.05)
        assert reader.stats()["leased"] == 0
        assert sorted(os.listdir(path / "holders")) == holders  # (a writer deletes it, not a reader)
        assert listing(path) == before


@pytest.mark.parametrize("kind", ["dict", "queue"])
def test_closing_writes_no_hint_or_checkpoint_where_a_writer_would(tmp_path, kind):
    """A store a writer left without closing (no HINT, no CHECKPOINT, and enough records
    for a writable close to leave one): a read-only close leaves none."""
    path = tmp_path / kind
    code = textwrap.dedent(
        """
        import os, sys
        from iodict_log import DurableQueue, IODict
        if sys.argv[2] == "dict":
            IODict(sys.argv[1]).update((f"k{i}", i) for i in range(12_000))
        else:
            DurableQueue(sys.argv[1]).put_many([b"x" * 100] * 12_000)
        os._exit(0)  # (no close: nothing cached)
        """
    )
    subprocess.run([sys.executable, "-c", code, str(path), kind], check=True, timeout=60)
    cache = "HINT" if kind == "dict" else "CHECKPOINT"
    assert not (path / cache).exists()
    before = listing(path)
    opened = IODict if kind == "dict" else DurableQueue
    with opened(path, readonly=True) as store:
        assert (len(store) if kind == "dict" else store.qsize()) == 12_000
    assert listing(path) == before
    with opened(path):
        pass
    assert (path / cache).exists()  # (what a writable close does, and the read-only one did not)
