"""Break the lines README's Guarantees table relies on, one at a time, and check a test notices.

Each mutation below names a file, the text of the line(s) to change (matched on the
stripped text, so it survives reformatting and moved code), the text to put there, and
the tests that must fail: the tests README's Guarantees table credits with the promise
that line keeps. For each one the script copies the repository into a temporary
directory (the working tree is never touched), applies the mutation there, runs the
named tests against the copy with a timeout, and reports:

- caught: every named test failed (a test that hangs fails by pytest-timeout);
- SURVIVED: a named test passed with the line broken, so it cannot fail for that
  promise (the tests that passed are listed);
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


class Mutation(NamedTuple):
    name: str
    path: str  # relative to the repository
    original: str  # one or more lines, compared stripped; must occur exactly once
    mutated: str  # as many lines, each put at its original line's indentation
    tests: tuple[str, ...]  # each must fail: a node id, a file, or a node id up to "[" and a parameter prefix


REC = "tests/test_recovery.py::"
PL = "tests/test_power_loss.py::"

_RESYNC_NEXT = 'failed = b""  # the last header (from hcrc on) whose checksum failed: a run of sync bytes repeats it'

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
        # (the first of two such lines: the one after the bad frame itself, with the line that follows it)
        "pos += length - 1\n" + _RESYNC_NEXT,
        "pos += 0\n" + _RESYNC_NEXT,
        (REC + "test_bit_flip_in_a_value_that_holds_a_frame_of_the_same_store_adds_no_phantom_key",),
    ),
    Mutation(
        "batch held back until something follows it",
        "iodict_log/format.py",
        "if batch and self.complete:",
        "if batch:",
        (
            "tests/test_crashpoints.py::test_a_crash_at_each_point_keeps_what_was_acknowledged[batch.half",
            REC + "test_torn_tail_at_every_offset_keeps_whole_records_and_drops_the_torn_one",
        ),
    ),
    Mutation(
        "truncate-back after a failed write",
        "iodict_log/segment.py",
        "self.truncate(offset)",
        "pass",
        (
            PL + "test_a_failing_call_raises_oserror_and_the_store_holds_what_was_acknowledged",
            REC + "test_partial_write_then_enospc_raises_and_leaves_no_trace",
        ),
    ),
    Mutation(
        "torn tail cut before the next append",
        "iodict_log/log.py",
        "active.truncate(self._end)  # torn by a crash: nobody else is writing",
        "pass",
        (REC + "test_torn_tail_at_every_offset_keeps_whole_records_and_drops_the_torn_one",),
    ),
    Mutation(
        "a write is in the file before the call returns",
        "iodict_log/segment.py",
        "written = fileops.write(self.fd, data)  # the usual case: all of it at once",
        "written = len(data)",
        (
            "tests/test_processes.py::test_sigkill_at_random_moments_loses_no_acknowledged_write",
            REC + "test_kill_9_loses_no_acknowledged_write_and_opens_clean",
        ),
    ),
    Mutation(
        "fsync of every sync=True write",
        "iodict_log/log.py",
        "if self.sync_always:\ntry:\nactive.sync()",
        "if self.sync_always:\ntry:\npass",
        (
            PL + "test_sync_true_keeps_every_acknowledged_write_through_a_power_loss_at_any_call",
            PL + "test_sync_true_queue_keeps_every_acknowledged_put_and_get_through_a_power_loss",
        ),
    ),
    Mutation(
        "fsync of a file before it is renamed into place (CURRENT.tmp)",
        "iodict_log/fileops.py",
        "if sync:\nfsync(fd)",
        "if sync:\npass",
        (PL + "test_sync_true_keeps_every_acknowledged_write_through_a_power_loss_at_any_call",),
    ),
    Mutation(
        "hint checked over every covered segment, the last one too",
        "iodict_log/log.py",
        "return all(segments[i].checksum(size) == crc for i, (size, crc) in enumerate(coverage))",
        "return all(segments[i].checksum(size) == crc for i, (size, crc) in enumerate(coverage[:-1]))",
        (
            "tests/test_hint_coverage.py::test_damage_in_a_covered_segment_under_a_valid_hint_is_scanned_and_reported[last",
        ),
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
        "if self._mutex:\ngive_mutex(self._mutex)",
        "if self._mutex:\npass",
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


def run_tests(repo: str, tests: tuple[str, ...]) -> tuple[str, list[str], str]:
    """(outcome, the named tests that did not fail, last lines of output) of a run of
    ``tests`` against the copy at ``repo``."""
    # (The mutations are of the Python code: run it, not the C core's fast paths beside it.)
    env = {**os.environ, "PYTHONPATH": repo, "PYTHONDONTWRITEBYTECODE": "1", "IODICT_LOG_PURE": "1"}
    selected = list(dict.fromkeys(t.split("[")[0] for t in tests))
    cmd = [sys.executable, "-m", "pytest", "-q", "-rf", "-p", "no:cacheprovider", f"--timeout={TEST_TIMEOUT}"]
    try:
        proc = subprocess.run([*cmd, *selected], cwd=repo, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        return "timeout", [], ""
    out = proc.stdout + proc.stderr
    tail = "\n".join(out.strip().splitlines()[-3:])
    if proc.returncode not in (0, 1):
        return f"error (pytest exit {proc.returncode})", list(tests), tail
    failed = [line.split()[1] for line in out.splitlines() if line.startswith("FAILED ")]
    return ("failed" if failed else "passed"), [t for t in tests if not any(fails(t, f) for f in failed)], tail


def fails(target: str, failed: str) -> bool:
    """Whether the failed test ``failed`` (a node id) is one of ``target``'s."""
    if "[" in target:  # a node id and the start of a parameter id
        return failed.startswith(target)
    if "::" in target:  # a test, any of its parameters
        return failed == target or failed.startswith(target + "[")
    return failed.startswith(target + "::")  # a file, any test in it


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
        outcome, _, tail = run_tests(base, tests)
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
                outcome, passed, tail = run_tests(repo, m.tests)
                if outcome == "timeout":
                    verdict = "caught (timeout)"
                elif outcome.startswith("error"):
                    verdict = outcome
                elif passed:
                    verdict, tail = "SURVIVED", "passed with the line broken: " + ", ".join(passed)
                else:
                    verdict = "caught"
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
