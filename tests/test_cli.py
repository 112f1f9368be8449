"""The iodict-log command: the demo, and one-line errors with exit status 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from iodict_log import IODict
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


def test_every_subcommand_has_help():
    result = run("demo", "--help")
    assert result.returncode == 0 and "--events" in result.stdout
