"""Small helpers shared by the test modules (import with ``from helpers import ...``)."""

from __future__ import annotations

import math
import os
import queue
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

SALT = 0x5EED5A17  # any per-store salt: the codec takes it as given
WAIT = 10  # seconds: an upper bound on anything that should happen at once; never reached when all is well


def same(a, b) -> bool:
    """Equal *and* of the same type, recursively (dict keys included, in order): a tuple
    never passes for a list, and floats compare bit for bit (NaN equals NaN)."""
    if type(a) is not type(b):
        return False
    if type(a) is float:
        return struct.pack("<d", a) == struct.pack("<d", b) or (math.isnan(a) and math.isnan(b))
    if type(a) in (list, tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if type(a) is dict:
        return len(a) == len(b) and all(
            same(ka, kb) and same(va, vb) for (ka, va), (kb, vb) in zip(a.items(), b.items())
        )
    return a == b


def flip(buf: bytes, bit: int) -> bytes:
    """``buf`` with bit number ``bit`` (0 = lowest bit of byte 0) inverted."""
    out = bytearray(buf)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


class Lines:
    """A child's text output read line by line, each line with a deadline: a child that goes
    quiet fails the test (AssertionError) instead of hanging it. A thread does the
    blocking reads; lines keep their newline, so a line cut short by a kill shows."""

    def __init__(self, stream) -> None:
        self._lines: queue.Queue = queue.Queue()
        self._eof = False

        def pump() -> None:
            try:
                while line := stream.readline():
                    self._lines.put(line)
            finally:
                self._lines.put(None)  # end of output

        threading.Thread(target=pump, name="test-lines", daemon=True).start()

    def next(self, seconds: float) -> str:
        """The next line, or "" at the end of the output, like readline()."""
        if self._eof:
            return ""
        try:
            line = self._lines.get(timeout=seconds)
        except queue.Empty:
            raise AssertionError(f"the child printed nothing for {seconds} s") from None
        if line is None:
            self._eof = True
            return ""
        return line

    def rest(self, seconds: float) -> list[str]:
        """Every line left until the end of the output (the child must have ended)."""
        deadline = time.monotonic() + seconds
        out = []
        while (line := self.next(max(0.0, deadline - time.monotonic()))) != "":
            out.append(line)
        return out


class Call(threading.Thread):
    """Run ``fn()`` in a daemon thread (start it, or use started()), keeping its result or
    exception for the test thread."""

    def __init__(self, fn) -> None:
        super().__init__(daemon=True)
        self.fn = fn
        self.result = None
        self.error: BaseException | None = None
        self.finished = threading.Event()

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as exc:  # handed to the test thread
            self.error = exc
        finally:
            self.finished.set()

    def outcome(self, what: str = ""):
        """Wait (at most WAIT) for the call to end and return its result, re-raising its error;
        ``what`` names the call in the failure (its ``fn`` by default)."""
        self.join(timeout=WAIT)
        assert not self.is_alive(), f"{what or repr(self.fn)} did not return within {WAIT} s"
        if self.error is not None:
            raise self.error
        return self.result


def started(fn) -> Call:
    """A Call of ``fn``, started."""
    call = Call(fn)
    call.start()
    return call


def joined(thread: threading.Thread, seconds: float) -> None:
    """Join ``thread``, failing the test if it is still running after ``seconds``."""
    thread.join(seconds)
    assert not thread.is_alive(), f"{thread.name} still running after {seconds} s: a hang"


def wait_pid(pid: int, seconds: float) -> int:
    """The exit code of child ``pid`` (from os.fork), failing the test past ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"child {pid} still running after {seconds} s: a hang")
        time.sleep(0.01)  # polling an exit, not a synchronisation: bounded by the deadline


def drain(q) -> list:
    """Every item get_nowait() hands out, until queue.Empty."""
    items = []
    while True:
        try:
            items.append(q.get_nowait())
        except queue.Empty:
            return items


# --- children and their output ---------------------------------------------------


class Child:
    """A Python child process whose stdout the test reads line by line, never blocking."""

    def __init__(self, name: str, code: str, args: list, cwd: Path) -> None:
        self.name = name
        self.err_path = cwd / f"{name}.stderr"
        with open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", code, *map(str, args)],
                cwd=cwd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
            )
        self.fd = self.proc.stdout.fileno()
        os.set_blocking(self.fd, False)
        self.lines: list[str] = []  # complete lines only: a line cut short by a kill is not a report
        self.partial = b""
        self.eof = False
        self.cursor = 0  # for next_line()

    def feed(self) -> None:
        """Read what is available (call when select() says the pipe is readable)."""
        try:
            data = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return
        if not data:
            self.eof = True
            return
        *complete, self.partial = (self.partial + data).split(b"\n")
        self.lines.extend(line.decode() for line in complete)

    def send(self, text: str) -> None:
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)

    def describe(self) -> str:
        try:
            err = self.err_path.read_text(errors="replace")[-2000:]
        except OSError:
            err = "?"
        return f"{self.name}: returncode={self.proc.poll()} last lines={self.lines[-3:]} stderr={err!r}"


class Team:
    """The children of one test; leaving the ``with`` block SIGKILLs whatever still runs."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.children: list[Child] = []

    def spawn(self, name: str, code: str, *args: object) -> Child:
        child = Child(name, code, list(args), self.cwd)
        self.children.append(child)
        return child

    def __enter__(self) -> Team:
        return self

    def __exit__(self, *exc: object) -> None:
        for child in self.children:
            child.kill()
        for child in self.children:
            try:
                child.proc.wait(timeout=10)
            finally:
                child.proc.stdout.close()
                child.proc.stdin.close()


def pump(children: list[Child], until: Callable[[], bool], deadline: float, what: str) -> None:
    """Read the children's output until ``until()`` holds; fail at ``deadline`` (monotonic)."""
    while not until():
        open_ = {child.fd: child for child in children if not child.eof}
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not open_:
            state = "timed out" if open_ else "every child closed its output"
            raise AssertionError(f"{state} waiting for {what}:\n" + "\n".join(c.describe() for c in children))
        readable, _, _ = select.select(list(open_), [], [], min(remaining, 1.0))
        for fd in readable:
            open_[fd].feed()


def next_line(child: Child, deadline: float) -> str:
    pump([child], lambda: len(child.lines) > child.cursor, deadline, f"a line from {child.name}")
    child.cursor += 1
    return child.lines[child.cursor - 1]


def wait_exit(child: Child, deadline: float) -> int:
    """Read the child's output to its end, then its exit status."""
    pump([child], lambda: child.eof, deadline, f"{child.name} to exit")
    return child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
