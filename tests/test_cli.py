"""The iodict-log command: the demo, and one-line errors with exit status 2."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest

from iodict_log import CorruptionWarning, DurableQueue, IODict
from iodict_log.cli import main


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "iodict_log", *args], capture_output=True, text=True, timeout=120)


def test_demo_runs_every_step_and_checks_what_it_read(tmp_path, capsys):
    assert main(["demo", "--events", "3000", "--path", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    for step in ("write", "read", "reopen", "replay", "overwrite", "delete", "compact"):
        assert f"  {step} " in out
    assert "all checks passed" in out
    with IODict(tmp_path / "demo") as d:  # the store it leaves behind is what it said
        assert len(d) == 3000 - 3000 // 5 + 3000 // 10


def test_console_script_runs_the_demo_in_a_temporary_directory():
    script = Path(sys.executable).parent / "iodict-log"
    result = subprocess.run([str(script), "demo", "--events", "500"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "all checks passed" in result.stdout


def test_python_dash_m_is_the_same_command():
    result = run("demo", "--events", "200")
    assert result.returncode == 0, result.stderr


def test_bad_arguments_exit_2_with_one_line_and_no_traceback(tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    for args in (
        [],
        ["no-such-command"],
        ["demo", "--events", "0"],
        ["demo", "--events", "many"],
        ["demo", "--path", str(tmp_path / "busy")],
    ):
        result = run(*args)
        assert result.returncode == 2, args
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def make_store(path) -> None:
    with IODict(path, compression=None) as d:
        d["a"] = b"\x00\x01"
        d[("t", 1)] = {"n": (1, 2), 3: [b"x"]}
        for i in range(50):
            d[f"k{i}"] = "v" * 100
        for i in range(40):
            d[f"k{i}"] = "w" * 100  # overwrites: dead bytes
        del d["k0"]


def test_stats_reports_counts_and_sizes_as_lines_and_json(tmp_path):
    make_store(tmp_path / "s")
    result = run("stats", str(tmp_path / "s"), "--json")
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    assert stats["keys"] == 51 and stats["queue_items"] == 0 and stats["corrupt_records"] == 0
    assert stats["dead_bytes"] > 0 and stats["live_bytes"] + stats["dead_bytes"] == stats["disk_bytes"]
    text = run("stats", str(tmp_path / "s")).stdout
    assert "keys" in text and "51" in text


def test_stats_counts_the_items_of_a_queue(tmp_path):
    with DurableQueue(tmp_path / "q") as q:
        q.put_many([1, 2, 3])
        q.get()
    stats = json.loads(run("stats", "--json", str(tmp_path / "q")).stdout)
    assert stats["queue_items"] == 2 and stats["keys"] == 0


def test_compact_shrinks_a_dict_store_and_keeps_its_contents(tmp_path):
    make_store(tmp_path / "s")
    with IODict(tmp_path / "s") as d:
        before = list(d.items())
    result = run("compact", str(tmp_path / "s"))
    assert result.returncode == 0, result.stderr
    with IODict(tmp_path / "s") as d:
        assert list(d.items()) == before
        assert d.stats()["dead_bytes"] < 100


def test_compact_from_cron_while_an_application_has_the_store_open_and_writes(tmp_path):
    make_store(tmp_path / "s")
    app = IODict(tmp_path / "s", auto_compact=False)
    app["before"] = 1
    expected = list(app.items())
    result = run("compact", str(tmp_path / "s"))
    assert result.returncode == 0, result.stderr
    assert list(app.items()) == expected  # the application follows the swap
    app["after"] = 2  # and writes on, where a fresh reader sees it
    with IODict(tmp_path / "s") as d:
        assert list(d.items()) == [*expected, ("after", 2)]
        assert d.stats()["dead_bytes"] < 200
    app.close()


def test_compact_refuses_a_queue_rather_than_drop_its_items(tmp_path):
    with DurableQueue(tmp_path / "q") as q:
        q.put("keep me")
    result = run("compact", str(tmp_path / "q"))
    assert result.returncode == 2 and "queue" in result.stderr
    with DurableQueue(tmp_path / "q") as q:
        assert q.get_nowait() == "keep me"


def test_verify_exits_0_on_a_clean_store_and_1_naming_file_and_offset_of_damage(tmp_path):
    path = tmp_path / "s"
    make_store(path)
    clean = run("verify", str(path))
    assert clean.returncode == 0 and "no damage" in clean.stdout
    segment = next(path.glob("*.seg"))
    data = bytearray(segment.read_bytes())
    at = data.find(b"v" * 100)  # a value in the middle of the file
    data[at + 10] ^= 0x40
    segment.write_bytes(bytes(data))
    damaged = run("verify", str(path))
    assert damaged.returncode == 1
    line = next(line for line in damaged.stdout.splitlines() if line.startswith("damaged:"))
    assert str(segment) in line
    offset = int(line.split("offset ")[1].split(":")[0])
    assert offset <= at + 10 < offset + int(line.split(": ")[3].split()[0])


def test_verify_calls_a_torn_tail_a_note_not_damage(tmp_path):
    path = tmp_path / "s"
    make_store(path)
    segment = max(path.glob("*.seg"))
    segment.write_bytes(segment.read_bytes()[:-7])  # a crash in the middle of the last append
    result = run("verify", str(path))
    assert result.returncode == 0
    assert "note:" in result.stdout and "unfinished append" in result.stdout


def test_dump_replays_every_record_in_order_as_json_lines(tmp_path):
    make_store(tmp_path / "s")
    lines = [json.loads(line) for line in run("dump", str(tmp_path / "s")).stdout.splitlines()]
    seqs = [r["seq"] for r in lines]
    assert seqs == sorted(seqs) and len(lines) == 2 + 50 + 40 + 1
    assert lines[0] == {**lines[0], "op": "set", "key": "a", "value": {"$bytes": base64.b64encode(b"\0\1").decode()}}
    assert lines[1]["key"] == {"$tuple": ["t", 1]}
    assert lines[1]["value"] == {"$map": [["n", {"$tuple": [1, 2]}], [3, [{"$bytes": "eA=="}]]]}
    assert lines[-1]["op"] == "delete" and lines[-1]["key"] == "k0" and "value" not in lines[-1]
    later = [
        json.loads(line) for line in run("dump", str(tmp_path / "s"), "--start", str(seqs[50])).stdout.splitlines()
    ]
    assert [r["seq"] for r in later] == seqs[50:]


def test_dump_never_unpickles(tmp_path):
    with DurableQueue(tmp_path / "q") as q:
        q.put({1, 2})  # pickled
    (line,) = run("dump", str(tmp_path / "q")).stdout.splitlines()
    record = json.loads(line)
    assert record["op"] == "put" and set(record["value"]) == {"$pickle"}


def test_commands_on_a_missing_path_or_a_non_store_exit_2_without_creating_anything(tmp_path):
    (tmp_path / "plain").mkdir()
    for command in ("stats", "compact", "verify", "dump", "repair"):
        for path in (tmp_path / "missing", tmp_path / "plain"):
            result = run(command, str(path))
            assert result.returncode == 2, (command, path)
            assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "missing").exists()
    assert list((tmp_path / "plain").iterdir()) == []


def test_every_command_has_help():
    for command in ("demo", "stats", "compact", "verify", "dump", "repair"):
        result = run(command, "--help")
        assert result.returncode == 0 and "usage:" in result.stdout


def damage_a_value(path, marker: bytes) -> None:
    segment = next(p for p in sorted(path.glob("*.seg")) if marker in p.read_bytes())
    data = bytearray(segment.read_bytes())
    data[data.find(marker) + 3] ^= 0x10
    segment.write_bytes(bytes(data))


def make_segmented_store(path) -> None:
    """120 keys over 4096-byte segments, each value marked ``value-NNN-`` (for damage_a_value)."""
    with IODict(path, compression=None, segment_bytes=4096) as d:
        for i in range(120):
            d[f"k{i:03d}"] = f"value-{i:03d}-".encode() * 4


def test_repair_drops_damage_for_good_keeps_a_backup_and_loses_nothing_readable(tmp_path):
    path = tmp_path / "s"
    make_segmented_store(path)
    damage_a_value(path, b"value-030-")  # in a finished segment
    damage_a_value(path, b"value-118-")  # in the last one
    with pytest.warns(CorruptionWarning), IODict(path) as d:
        readable = dict(d.items())
    assert len(readable) == 118
    assert run("verify", str(path)).returncode == 1
    result = run("repair", str(path), "--backup", str(tmp_path / "backup"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("dropped:") == 2 and "backup" in result.stdout
    assert run("verify", str(path)).returncode == 0
    with IODict(path) as d:  # no warning now, same contents, and it takes writes
        assert dict(d.items()) == readable and d.stats()["corrupt_records"] == 0
        d["after"] = b"ok"
    with pytest.warns(CorruptionWarning), IODict(tmp_path / "backup") as d:  # the backup is the store as it was
        assert len(d) == 118
    assert run("repair", str(path)).stdout.strip().endswith("nothing to repair")


def test_repair_while_another_process_has_the_store_open(tmp_path):
    path = tmp_path / "s"
    make_segmented_store(path)
    damage_a_value(path, b"value-030-")
    with pytest.warns(CorruptionWarning):
        live = IODict(path, segment_bytes=4096)
    before = dict(live.items())
    assert run("repair", str(path)).returncode == 0
    live["new"] = b"written after the repair"  # the live process follows the swap
    assert dict(live.items()) == {**before, "new": b"written after the repair"}
    live.close()
    with IODict(path) as d:
        assert dict(d.items()) == {**before, "new": b"written after the repair"}
        assert d.stats()["corrupt_records"] == 0


def test_repair_of_a_queue_keeps_the_other_items_in_order(tmp_path):
    path = tmp_path / "q"
    with DurableQueue(path, serializer="msgpack") as q:
        q.put_many([b"item-%03d-" % i * 5 for i in range(20)])
    damage_a_value(path, b"item-007-")
    assert run("repair", str(path)).returncode == 0
    with DurableQueue(path, serializer="msgpack") as q:
        assert [q.get_nowait() for _ in range(19)] == [b"item-%03d-" % i * 5 for i in range(20) if i != 7]


def test_long_commands_show_a_progress_bar_on_a_terminal_only(tmp_path):
    import os
    import pty
    import re

    make_store(tmp_path / "s")
    for command in ("verify", "compact"):
        primary, secondary = pty.openpty()
        result = subprocess.run(
            [sys.executable, "-m", "iodict_log", command, str(tmp_path / "s")],
            stdout=subprocess.PIPE,
            stderr=secondary,
            timeout=120,
        )
        os.close(secondary)
        shown = os.read(primary, 65536).decode()
        os.close(primary)
        assert result.returncode == 0
        assert f"{command} [" in shown and "100.0%" in shown
        assert re.search(r"[\d,.]+ (MB|keys)/s  done", shown), shown  # (the rate, and the time left: done)
        piped = run(command, str(tmp_path / "s"))
        assert "[" not in piped.stderr  # not when stderr is a file or a pipe


def test_repair_of_a_segment_with_nothing_readable_left_keeps_a_working_store(tmp_path):
    path = tmp_path / "s"
    with IODict(path, compression=None) as d:
        d["only"] = b"only-value" * 5
        d.compact()  # a compacted segment holding just that record, then an empty log segment
    damage_a_value(path, b"only-value")
    assert run("repair", str(path)).returncode == 0
    with IODict(path) as d:
        assert len(d) == 0 and d.stats()["corrupt_records"] == 0
        d["again"] = b"works"
    with IODict(path) as d:
        assert d["again"] == b"works"


def test_version_prints_the_package_version_and_build(tmp_path):
    # Guards 17.9: there was no --version; and it says which build runs (native or pure).
    import iodict_log

    # (From outside the source tree, so the child imports the package this process tests.)
    command = [sys.executable, "-m", "iodict_log", "--version"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    expected = f"iodict-log {iodict_log.__version__} ({iodict_log.native.build()} build)"
    assert result.returncode == 0 and result.stdout.strip() == expected


def test_every_subcommand_help_has_a_description_and_its_exit_statuses():
    # Guards 17.9: subcommand --help had neither.
    for command in ("demo", "stats", "compact", "verify", "dump", "repair"):
        out = run(command, "--help").stdout
        description = out.split("\n\n")[1]
        assert not description.startswith(("positional", "options")), (command, out)
        assert "exit status: 0" in out and "2 " in out.split("exit status:")[1], (command, out)


def test_corruption_warnings_print_as_one_plain_line_each(tmp_path):
    # Guards 17.9: warnings came in Python's format, with the source line under them.
    path = tmp_path / "s"
    make_segmented_store(path)
    damage_a_value(path, b"value-030-")
    damage_a_value(path, b"value-070-")
    for command in ("stats", "dump"):
        result = run(command, str(path))
        lines = result.stderr.splitlines()
        warned = [line for line in lines if line.startswith(f"iodict-log {command}: warning: ")]
        assert len(warned) == 2 and "skipped" in warned[0], result.stderr
        assert "CorruptionWarning" not in result.stderr and "warnings.warn" not in result.stderr
        assert result.returncode == (1 if command == "dump" else 0)  # dump skipped damage


def test_the_progress_line_shows_the_rate_and_the_time_left(monkeypatch):
    import io

    from iodict_log import cli

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    clock = [100.0]
    monkeypatch.setattr(cli.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(sys, "stderr", Terminal())
    show = cli._progress("verify", "bytes")
    clock[0] += 10.0
    show(40 * 10**6, 100 * 10**6)  # 4 MB/s: 60 MB more take 15 s
    clock[0] += 5000.0
    keys = cli._progress("compact", "keys")
    clock[0] += 2.0
    keys(1000, 7_201_000)  # 500 keys/s: 7,200,000 more take 4 hours
    keys(7_201_000, 7_201_000)
    shown = sys.stderr.getvalue()
    assert "40.0%  4.0 MB/s  0:15 left" in shown
    assert "500 keys/s  4:00:00 left" in shown and shown.endswith("done\x1b[K\n")
