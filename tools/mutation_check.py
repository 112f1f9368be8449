"""Break the lines README's Guarantees table relies on, one at a time, and check a test notices.

Each mutation below names a file, the text of the line(s) to change (matched on the
stripped text, so it survives reformatting and moved code), the text to put there, and
the tests that must fail. For each one the script copies the repository into a
temporary directory (the working tree is never touched), applies the mutation there,
runs the named tests against the copy with a timeout, and reports:

- caught: a named test failed (or the run hit its timeout: a hang is noticed too);
- SURVIVED: every named test passed with the line broken: nothing guards that line;
- line not found: the code changed and the mutation must be updated to match it;
- error: the tests could not be run (collection error, bad test name).

A first run with no mutation checks that the named tests pass as the code is.
Exit status 1 if anything is not caught. Usage::

    python tools/mutation_check.py              # every mutation
    python tools/mutation_check.py resync ...   # only those whose name contains a word
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import NamedTuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 900  # seconds for one mutation's tests, all together
TEST_TIMEOUT = 240  # seconds for any one test (pytest-timeout), so a hang ends as a failure
VERDICTS = {"failed": "caught", "timeout": "caught (timeout)", "passed": "SURVIVED"}


class Mutation(NamedTuple):
    name: str
    path: str  # relative to the repository
    original: str  # one or more lines, compared stripped; must occur exactly once
    mutated: str  # as many lines, each put at its original line's indentation
    tests: tuple[str, ...]  # pytest node ids (or files) that must fail


REC = "tests/test_recovery.py::"
PL = "tests/test_power_loss.py::"

MUTATIONS = [
    Mutation(
        "data crc in decode_frame",
        "iodict_log/format.py",
        "if zlib.crc32(value, zlib.crc32(key, salt)) != dcrc:",
        "if False:",
        (REC + "test_bit_flip_in_a_middle_record_skips_it_and_keeps_every_intact_record",),
    ),
    Mutation(
        "header crc in decode_frame",
        "iodict_log/format.py",
        "if fields[0] != SYNC or zlib.crc32(buf[pos + 6 : pos + HEADER_SIZE], salt) != fields[1]:",
        "if fields[0] != SYNC:",
        (REC + "test_bit_flip_in_a_middle_record_skips_it_and_keeps_every_intact_record",),
    ),
    Mutation(
        "data crc in frame_value (every get)",
        "iodict_log/format.py",
        "or zlib.crc32(buf[HEADER_SIZE:], salt) != dcrc",
        "or False",
        (REC + "test_record_damaged_while_the_store_is_open_raises_corruption_error_on_read",),
    ),
    Mutation(
        "resync skips a frame whose header holds by its length",
        "iodict_log/format.py",
        "pos += length",
        "pos += 1",
        (REC + "test_bit_flip_in_a_value_that_holds_a_frame_of_the_same_store_adds_no_phantom_key",),
    ),
    Mutation(
        "batch held back until something follows it",
        "iodict_log/format.py",
        "if batch and self.complete:",
        "if batch:",
        (
            REC + "test_torn_tail_at_every_offset_keeps_whole_records_and_drops_the_torn_one",
            "tests/test_crashpoints.py",
        ),
    ),
    Mutation(
        "truncate-back after a failed write",
        "iodict_log/segment.py",
        "self.truncate(offset)",
        "pass",
        (PL + "test_a_failing_call_raises_oserror_and_the_store_holds_what_was_acknowledged",),
    ),
    Mutation(
        "torn tail cut before the next append",
        "iodict_log/log.py",
        "active.truncate(self._end)  # torn by a crash: nobody else is writing",
        "pass",
        (REC + "test_torn_tail_at_every_offset_keeps_whole_records_and_drops_the_torn_one",),
    ),
    Mutation(
        "fsync of every sync=True write",
        "iodict_log/log.py",
        "if self.sync_always:\ntry:\nactive.sync()",
        "if self.sync_always:\ntry:\npass",
        (PL + "test_sync_true_keeps_every_acknowledged_write_through_a_power_loss_at_any_call",),
    ),
    Mutation(
        "fsync of a file before it is renamed into place (CURRENT.tmp)",
        "iodict_log/fileops.py",
        "if sync:\nfsync(fd)",
        "if sync:\npass",
        (PL + "test_sync_true_keeps_every_acknowledged_write_through_a_power_loss_at_any_call",),
    ),
    Mutation(
        "hint checked over every covered segment",
        "iodict_log/log.py",
        "return all(segments[i].checksum(size) == crc for i, (size, crc) in enumerate(coverage))",
        "return all(segments[i].checksum(size) == crc for i, (size, crc) in enumerate(coverage[:-1]))",
        ("tests/test_hint_coverage.py",),
    ),
    Mutation(
        "compaction lock released after compact()",
        "iodict_log/iodict.py",
        "with lock:\nreturn self._compact_holding(progress)\nfinally:\nlock.close()",
        "if lock.acquire():\nreturn self._compact_holding(progress)\nfinally:\npass",
        ("tests/test_compaction.py::test_two_compactions_at_once_take_turns",),
    ),
    Mutation(
        "write lock released after each write",
        "iodict_log/filelock.py",
        "if self._depth == 0:\n_flock(self._fd, _UN)",
        "if self._depth == 0:\npass",
        ("tests/test_processes.py::test_four_processes_writing_distinct_keys_at_once_lose_nothing",),
    ),
]


def apply(source: str, m: Mutation) -> str | None:
    """``source`` with the mutation applied; None if its lines are not there exactly once."""
    lines = source.split("\n")
    want = [line.strip() for line in m.original.split("\n")]
    new = [line.strip() for line in m.mutated.split("\n")]
    assert len(want) == len(new), f"{m.name}: the mutation must keep the number of lines"
    stripped = [line.strip() for line in lines]
    found = [i for i in range(len(lines) - len(want) + 1) if stripped[i : i + len(want)] == want]
    if len(found) != 1:
        return None
    at = found[0]
    for k, text in enumerate(new):
        line = lines[at + k]
        lines[at + k] = line[: len(line) - len(line.lstrip())] + text
    return "\n".join(lines)


def copy_repo(dst: str) -> None:
    ignore = shutil.ignore_patterns(".git", "__pycache__", "*.egg-info", ".pytest_cache", ".hypothesis", "build")
    shutil.copytree(ROOT, dst, ignore=ignore)


def run_tests(repo: str, tests: tuple[str, ...]) -> tuple[str, str]:
    """(outcome, last lines of output) of the tests run against the copy at ``repo``."""
    env = {**os.environ, "PYTHONPATH": repo, "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", f"--timeout={TEST_TIMEOUT}", *tests]
    try:
        proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        return "timeout", ""
    tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-3:])
    return {0: "passed", 1: "failed"}.get(proc.returncode, f"error (pytest exit {proc.returncode})"), tail


def imports_the_copy(repo: str) -> bool:
    """Whether a Python started as the tests are imports the package from the copy."""
    env = {**os.environ, "PYTHONPATH": repo}
    code = "import iodict_log, os; print(os.path.realpath(iodict_log.__file__))"
    out = subprocess.run([sys.executable, "-c", code], cwd=repo, env=env, capture_output=True, text=True).stdout
    return out.strip().startswith(os.path.realpath(repo) + os.sep)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("words", nargs="*", help="run only mutations whose name contains one of these")
    args = parser.parse_args()
    chosen = [m for m in MUTATIONS if not args.words or any(w in m.name for w in args.words)]
    results: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="mutation-check-") as tmp:
        base = os.path.join(tmp, "unmutated")
        copy_repo(base)
        if not imports_the_copy(base):
            print("the tests would not import the copy of iodict_log (check PYTHONPATH and the install)")
            return 2
        tests = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
        outcome, tail = run_tests(base, tests)
        print(f"unmutated: the named tests {outcome}", flush=True)
        if outcome != "passed":
            print(tail)
            return 1
        for n, m in enumerate(chosen):
            repo = os.path.join(tmp, f"m{n}")
            copy_repo(repo)
            target = os.path.join(repo, m.path)
            with open(target) as f:
                mutated = apply(f.read(), m)
            started = time.monotonic()
            if mutated is None:
                verdict, tail = "line not found", f"{m.path}: {m.original!r} does not occur exactly once"
            else:
                with open(target, "w") as f:
                    f.write(mutated)
                outcome, tail = run_tests(repo, m.tests)
                verdict = VERDICTS.get(outcome, outcome)
            print(f"{verdict:16} {m.name}  ({time.monotonic() - started:.0f} s)", flush=True)
            if not verdict.startswith("caught"):
                print("    " + tail.replace("\n", "\n    "))
            results.append((m.name, verdict))
            shutil.rmtree(repo)
    bad = [name for name, verdict in results if not verdict.startswith("caught")]
    print(f"{len(results) - len(bad)} of {len(results)} mutations caught" + (f"; not caught: {bad}" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
