"""The package type-checks, and a user's type checker sees its API (CONTRACT §12).

mypy runs on the package as installed (with the project's mypy settings), and on
a user's module that uses the API: correct use passes, and each misuse in it is
reported where it is, which only happens if the package ships ``py.typed`` and
its public signatures say what they take and give.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import iodict_log

PACKAGE = Path(iodict_log.__file__).parent
CONFIG = Path(__file__).resolve().parent.parent / "pyproject.toml"  # (the project's [tool.mypy])

USER = """
import queue
from iodict_log import DurableQueue, IODict, Lease, Record

def use(path: str) -> None:
    d: IODict = IODict(path, lock_timeout=1.0)
    d["k"] = {"n": 1}
    n: int = len(d)
    born: float = d.birthtime("k")
    for record in d.records(start=0):
        seq: int = record.seq
    q = DurableQueue(path + "-q", maxsize=10, lease_timeout=30.0)
    q.put_many([1, 2])
    try:
        lease: Lease = q.lease(timeout=0.5)
    except queue.Empty:
        return
    lease.release(delay=1.0)
    size: int = q.qsize()
    d.no_such_method()  # MISUSE 1
    q.lease(timeout="soon")  # MISUSE 2
    wrong: str = q.qsize()  # MISUSE 3
"""


def mypy(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    root = str(PACKAGE.parent)
    if "site-packages" not in root:  # (an editable install: mypy cannot follow its import hook)
        env["MYPYPATH"] = root
    command = [sys.executable, "-m", "mypy", "--config-file", str(CONFIG), "--no-incremental", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env)


def test_the_package_type_checks_clean(tmp_path):
    assert (PACKAGE / "py.typed").is_file()  # (PEP 561: without it users' checkers see Any)
    # (-p: the package where it is installed, its errors reported there too, and not those
    # of the packages it imports)
    out = mypy("-p", "iodict_log", "--no-silence-site-packages", "--follow-imports=silent", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Success: no issues found" in out.stdout


def test_a_users_code_is_checked_against_the_api(tmp_path):
    user = tmp_path / "user.py"
    user.write_text(textwrap.dedent(USER))
    out = mypy(str(user), cwd=tmp_path)
    misuses = {n for n, line in enumerate(user.read_text().splitlines(), 1) if "# MISUSE" in line}
    reported = {int(line.split(":")[1]) for line in out.stdout.splitlines() if line.startswith("user.py:")}
    errors = [line for line in out.stdout.splitlines() if ": error:" in line]
    assert reported == misuses and len(errors) == len(misuses), out.stdout + out.stderr
