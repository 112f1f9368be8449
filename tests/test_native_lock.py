"""The store's mapped LOCK file (issue 19 items 4 and 5): one write lock that processes of
both builds share (a robust mutex, or flock), a change counter that replaces the lseek per
call, and every promise of CONTRACT §4 kept: a holder killed with SIGKILL never blocks the
others, and what it tore is cut; a write in one process is seen by the next call of another.

Children are real processes of a chosen build (IODICT_LOG_PURE), killed with real SIGKILLs;
each reports its build, so a "native" child that silently ran pure fails the test. The
store's protocol is chosen by IODICT_LOG_LOCK when its LOCK is initialised.
"""

from __future__ import annotations

import collections
import importlib.util
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import warnings

import pytest
import test_queue_processes
from helpers import Lines, joined

from iodict_log import CorruptionError, IODict, IODictLogError, LockTimeoutError, native
from iodict_log import filelock as fl
from iodict_log.inspection import verify
from iodict_log.repair import repair

TIMEOUT = 60
# Children of both builds wherever the C core is built (also when this process runs pure).
BUILDS = ["pure", "native"] if importlib.util.find_spec("iodict_log._native") else ["pure"]
PROTOCOLS = ["mutex", "flock"]


def env_for(build: str) -> dict:
    env = dict(os.environ)
    env.pop(native.PURE_ENV, None)
    if build == "pure":
        env[native.PURE_ENV] = "1"
    return env


class Child(subprocess.Popen):
    """A child of one build; its first line says which build it runs."""

    def __init__(self, code: str, build: str, *args: str) -> None:
        prologue = "import sys\nfrom iodict_log import native\nprint('build', native.build(), flush=True)\n"
        super().__init__(
            [sys.executable, "-c", prologue + textwrap.dedent(code), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env_for(build),
        )
        self.lines = Lines(self.stdout)
        assert self.expect("build") == build  # a native child must really run the C core

    def expect(self, word: str) -> str:
        line = self.lines.next(TIMEOUT)
        assert line.startswith(word + " ") or line == word + "\n", f"expected {word!r}, got {line!r}"
        return line[len(word) :].strip()

    def say(self, line: str) -> None:
        self.stdin.write(line + "\n")
        self.stdin.flush()

    def end(self) -> None:
        self.kill()
        self.wait(timeout=TIMEOUT)


@pytest.fixture
def mutex(monkeypatch):
    """A test about the mutex protocol itself (Linux/glibc)."""
    monkeypatch.setenv(fl.LOCK_ENV, "mutex")


@pytest.fixture(params=PROTOCOLS)
def protocol(request, monkeypatch):
    """The store's lock protocol, as the process that initialises its LOCK is told."""
    monkeypatch.setenv(fl.LOCK_ENV, request.param)
    return request.param


def header(path) -> tuple:
    with open(os.path.join(path, "LOCK"), "rb") as f:
        return fl.LOCK_HEADER.unpack(f.read(fl.LOCK_HEADER.size))


def forge_header(path, **fields) -> None:
    names = ["magic", "version", "protocol", "mutex_size", "reserved", "namespace"]
    values = dict(zip(names, header(path)))
    values.update(fields)
    with open(os.path.join(path, "LOCK"), "r+b") as f:
        f.write(fl.LOCK_HEADER.pack(*(values[n] for n in names)))


def clean(path) -> bool:
    """The store verifies clean: nothing skipped, nothing refused."""
    return list(verify(str(path))) == []


# --- the LOCK file ------------------------------------------------------------------


def test_a_new_store_lock_records_its_protocol_and_who_made_it(tmp_path, protocol):
    path = tmp_path / "s"
    with IODict(path) as d:
        lock = d._log.file_lock
        assert lock.protocol == protocol
        assert bool(lock._mutex) == (protocol == "mutex") and lock._counter
    magic, version, recorded, size, _, namespace = header(path)
    assert (magic, version, fl.PROTOCOLS[recorded]) == (fl.LOCK_MAGIC, fl.LOCK_VERSION, protocol)
    assert size == (fl.mutex_size() if protocol == "mutex" else 0)
    assert namespace == os.stat("/proc/self/ns/pid").st_ino
    assert os.path.getsize(path / "LOCK") == fl.LOCK_FILE_SIZE


def test_both_builds_agree_on_the_mutex_and_the_counter_and_take_the_same_ones(tmp_path, mutex):
    lock = fl.FileLock(str(tmp_path / "LOCK"), mapped=True)
    assert lock.protocol == "mutex"
    pure = fl.PURE_MUTEX
    assert pure["mutex_size"]() == fl._SIZE_OF_MUTEX > 0
    if native.core is None:
        return  # (a pure build has one implementation only)
    core = native.core
    assert core.mutex_size() == fl._SIZE_OF_MUTEX  # the ctypes probe measures what C compiles
    for take, give, other in ((pure["take_mutex"], core.give_mutex, core), (core.take_mutex, pure["give_mutex"], None)):
        assert take(lock._mutex, None) == 0
        found = []
        probe = other.try_mutex if other else pure["try_mutex"]
        t = threading.Thread(target=lambda: found.append(probe(lock._mutex)))  # noqa: B023
        t.start()
        joined(t, TIMEOUT)
        assert found == [2]  # busy, whichever build asks
        give(lock._mutex)
    before = lock.changes()
    assert core.bump(lock._counter) == before + 1 == lock._count.value == core.changes(lock._counter)
    lock.close()


def test_an_empty_lock_from_iodict_log_0_2_is_initialised_and_the_data_kept(tmp_path, protocol):
    path = tmp_path / "s"
    with IODict(path) as d:
        d["k"] = 1
    (path / "LOCK").write_bytes(b"")  # as every 0.2 store has it
    with IODict(path) as d:
        assert dict(d) == {"k": 1}
        d["j"] = 2
    assert header(path)[0] == fl.LOCK_MAGIC and fl.PROTOCOLS[header(path)[2]] == protocol
    with IODict(path) as d:
        assert dict(d) == {"k": 1, "j": 2}


def lock_header(protocol: int = fl.PROTOCOL_MUTEX, version: int = fl.LOCK_VERSION) -> bytes:
    return fl.LOCK_HEADER.pack(
        fl.LOCK_MAGIC, version, protocol, fl.mutex_size(), 0, os.stat("/proc/self/ns/pid").st_ino
    )


@pytest.mark.parametrize(
    "contents",
    [
        b"not a lock",
        b"\x01" + bytes(4095),
        b"XXXXLOCK" + bytes(4088),
        lock_header(protocol=7).ljust(4096, b"\0"),
        lock_header()[:20],
        lock_header().ljust(8192, b"\0"),
    ],
    ids=["text", "no-magic", "foreign-magic", "unknown-protocol", "cut-short", "grown"],
)
def test_a_damaged_lock_file_raises_corruption_error_and_is_never_reinitialised(tmp_path, contents):
    # Guards that a LOCK someone may hold a mutex in is never laid out afresh.
    path = tmp_path / "s"
    with IODict(path) as d:
        d["k"] = 1
    (path / "LOCK").write_bytes(contents)
    with pytest.raises(CorruptionError, match=r"LOCK.*delete LOCK"):
        IODict(path)
    assert (path / "LOCK").read_bytes() == contents


def test_a_mutex_store_another_process_cannot_follow_is_refused_before_anything_is_written(tmp_path, mutex):
    path = tmp_path / "s"
    with IODict(path) as d:
        d["k"] = 1
    segments = {p.name: p.read_bytes() for p in path.glob("*.seg")}
    namespace = header(path)[5]
    forge_header(path, namespace=namespace + 1)  # as if made in another container's PID namespace
    with pytest.raises(IODictLogError, match=r"PID namespace.*IODICT_LOG_LOCK=flock"):
        IODict(path)
    forge_header(path, namespace=namespace, mutex_size=fl.mutex_size() + 8)  # another libc or architecture
    with pytest.raises(IODictLogError, match=r"different C library.*IODICT_LOG_LOCK=flock"):
        IODict(path)
    assert {p.name: p.read_bytes() for p in path.glob("*.seg")} == segments
    forge_header(path, mutex_size=fl.mutex_size())
    with IODict(path) as d:
        assert dict(d) == {"k": 1}


def test_a_flock_store_is_followed_by_any_process_whatever_its_namespace(tmp_path, monkeypatch):
    monkeypatch.setenv(fl.LOCK_ENV, "flock")
    path = tmp_path / "s"
    with IODict(path) as d:
        d["k"] = 1
    forge_header(path, namespace=12345)  # (flock knows no owners: nothing to refuse)
    monkeypatch.delenv(fl.LOCK_ENV)
    with IODict(path) as d:
        assert d._log.file_lock.protocol == "flock"
        assert dict(d) == {"k": 1}


def test_one_thread_taking_the_lock_through_two_objects_is_told_instead_of_waiting_forever(tmp_path, mutex):
    a = fl.FileLock(str(tmp_path / "LOCK"), mapped=True)
    b = fl.FileLock(a.path, mapped=True)
    with a:
        assert not b.try_acquire()
        assert not b.acquire(timeout=0.05)
        with pytest.raises(IODictLogError, match="already holds"):
            b.acquire()
    assert b.try_acquire()
    b.release()
    a.close()
    b.close()


def test_the_counter_counts_each_outermost_release_and_nothing_else(tmp_path, protocol):
    lock = fl.FileLock(str(tmp_path / "LOCK"), mapped=True)
    start = lock.changes()
    with lock:
        with lock:
            assert lock.changes() == start  # (nothing counted while held)
        assert lock.changes() == start
    assert lock.changes() == lock._released == start + 1
    assert lock.try_acquire() and lock.acquire(timeout=1)
    lock.release()
    lock.release()
    assert lock.changes() == start + 2
    lock.close()


# --- holders that die ---------------------------------------------------------------

HOLDER = """
import os
from iodict_log import IODict
path, mode = sys.argv[1], sys.argv[2]
d = IODict(path, segment_bytes=1 << 20)
d["child-acked"] = "yes"
log = d._log
log.file_lock.acquire()
log.refresh()
print("locked", flush=True)
sys.stdin.readline()  # (the parent has caught up meanwhile)
if mode == "torn":  # killed in the middle of an append
    os.write(log._segments[-1].fd, (b"\\xd1\\x0c" + os.urandom(60))[:30])
else:  # killed after a whole append, before the release that would have counted it
    d["child-unreleased"] = "landed"
print("wrote", flush=True)
sys.stdin.readline()
"""


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("mode", ["torn", "whole"])
def test_a_holder_killed_holding_the_lock_never_blocks_the_others_and_what_it_left_is_handled(
    tmp_path, protocol, build, mode
):
    path = tmp_path / "s"
    d = IODict(path, segment_bytes=1 << 20, lock_timeout=TIMEOUT)  # (a LockTimeoutError, not a hang)
    d["before"] = 1
    lock = d._log.file_lock
    child = Child(HOLDER, build, str(path), mode)
    try:
        child.expect("locked")
        assert d["child-acked"] == "yes"  # a reader needs no lock; now caught up with the counter
        assert not lock.try_acquire()
        with pytest.raises(LockTimeoutError):
            d._write(lambda log: None, deadline=0)
        child.say("go")
        child.expect("wrote")
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=TIMEOUT)
    finally:
        child.end()
    d["after"] = 2  # never blocked by the dead holder; appends after what it left
    assert not lock.owner_died  # (the refresh under the lock checked the file in full)
    expected = {"before": 1, "child-acked": "yes", "after": 2}
    if mode == "whole":
        expected["child-unreleased"] = "landed"  # (it landed whole: never overwritten)
    assert dict(d) == expected
    d.close()
    assert clean(path)  # the torn append was cut
    with IODict(path) as fresh:
        assert dict(fresh) == expected and fresh.stats()["corrupt_records"] == 0


def test_the_taker_after_a_dead_holder_is_told_and_makes_the_mutex_usable_again(tmp_path, mutex):
    path = tmp_path / "s"
    IODict(path).close()
    child = Child(HOLDER, "pure", str(path), "torn")
    try:
        child.expect("locked")
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=TIMEOUT)
    finally:
        child.end()
    lock = fl.FileLock(str(path / "LOCK"), mapped=True)
    assert lock.acquire(timeout=TIMEOUT) and lock.owner_died  # EOWNERDEAD: consistent again
    lock.release()
    other = fl.FileLock(lock.path, mapped=True)
    assert other.try_acquire() and not other.owner_died  # (only the first taker is told)
    other.release()
    lock.close()
    other.close()


# --- the change counter -------------------------------------------------------------

WRITE_ONE = """
from iodict_log import IODict
with IODict(sys.argv[1]) as d:
    print("saw", repr(d.get("from-parent")), flush=True)
    d[sys.argv[2]] = sys.argv[3]
print("done", flush=True)
"""


@pytest.mark.parametrize("build", BUILDS)
def test_a_write_in_one_process_is_seen_by_the_next_call_of_another(tmp_path, protocol, build):
    path = tmp_path / "s"
    d = IODict(path)
    assert d.get("k") is None  # caught up
    for i in range(3):
        child = Child(WRITE_ONE, build, str(path), "k", str(i))
        try:
            assert child.expect("saw") == repr(d.get("from-parent"))  # ours, seen there
            child.expect("done")
            assert child.wait(timeout=TIMEOUT) == 0
        finally:
            child.end()
        assert d["k"] == str(i)  # a read
        assert d.setdefault("k", "mine") == str(i)  # a write that must see it first
        d["from-parent"] = i
    d.close()
    assert clean(path)


def test_a_repair_elsewhere_is_noticed_by_the_next_write_of_a_store_opened_before(tmp_path, protocol):
    # Guards that repair counts its changes: a writer trusting the counter would append to the
    # segment repair replaced, and the write would be lost.
    path = tmp_path / "s"
    d = IODict(path, auto_compact=False)
    for i in range(20):
        d[f"k{i}"] = "v" * 50
    last = sorted(path.glob("*.seg"))[-1]
    data = bytearray(last.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a damaged record in the middle of the last segment
    last.write_bytes(bytes(data))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        repair(str(path))
    d["after-repair"] = "kept"
    d.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with IODict(path) as fresh:
            assert fresh["after-repair"] == "kept"
            assert len(fresh) == 20  # the 19 undamaged records, and ours
    assert clean(path)


# --- mixed builds, hammering, killed at random ----------------------------------------------

HAMMER = """
import random
from iodict_log import IODict
path, name = sys.argv[1], sys.argv[2]
d = IODict(path, segment_bytes=32 * 1024)
rng = random.Random(name)
print("ready", flush=True)
i = 0
while True:
    shared = f"shared{rng.randrange(8)}"
    if i % 5 == 4:
        d.update({shared: [name, i], f"{name}-{i}": i})
    else:
        d[shared] = [name, i]
        d[f"{name}-{i}"] = i
    print("acked", f"{name}-{i}", flush=True)
    i += 1
"""


@pytest.mark.parametrize("protocol", PROTOCOLS, indirect=True)
def test_mixed_build_processes_hammering_the_same_keys_under_sigkills_lose_and_tear_nothing(tmp_path, protocol):
    path = tmp_path / "s"
    rng = random.Random(20261202)
    watcher = IODict(path, segment_bytes=32 * 1024)  # open throughout: must follow everything
    acked: set[str] = set()
    builds = collections.Counter()
    live: list[Child] = []
    try:
        for n in range(4):
            live.append(Child(HAMMER, BUILDS[n % len(BUILDS)], str(path), f"c{n}"))
        for c in live:
            c.expect("ready")
        for round_ in range(10):
            victim = live.pop(rng.randrange(len(live)))
            for _ in range(rng.randrange(1, 200)):  # a random moment
                line = victim.lines.next(TIMEOUT)
                if line.startswith("acked "):
                    acked.add(line.split()[1])
            os.kill(victim.pid, signal.SIGKILL)
            victim.wait(timeout=TIMEOUT)
            acked.update(
                line.split()[1]
                for line in victim.lines.rest(TIMEOUT)
                if line.startswith("acked ") and line.endswith("\n")
            )
            builds[BUILDS[round_ % len(BUILDS)]] += 1
            child = Child(HAMMER, BUILDS[round_ % len(BUILDS)], str(path), f"r{round_}")
            child.expect("ready")
            live.append(child)
            assert acked <= set(watcher), f"round {round_}: acknowledged writes not seen by the next call"
    finally:
        for c in live:
            c.end()
    for c in live:
        acked.update(
            line.split()[1] for line in c.lines.rest(TIMEOUT) if line.startswith("acked ") and line.endswith("\n")
        )
    watcher["last"] = 1  # a write after all the carnage: cuts any torn tail
    view = dict(watcher.items())
    watcher.close()
    assert clean(path)
    with IODict(path) as fresh:
        assert dict(fresh.items()) == view  # the watcher followed every process exactly
        assert acked <= set(fresh), sorted(acked - set(fresh))[:5]
        last_set = {}
        for record in fresh.records():
            last_set[record.key] = record.value
        assert {k: v for k, v in fresh.items() if k.startswith("shared")} == {
            k: v for k, v in last_set.items() if k.startswith("shared")
        }
        assert fresh.stats()["corrupt_records"] == 0
    assert len(builds) == len(BUILDS)


MIXER = """
import glob, importlib.util, os, sys
# Every Python child of the test picks its build from its pid (pure only, where the C core
# was not built: looked for without importing the package), and says which it ran.
spec = importlib.util.find_spec("iodict_log")
built = any(glob.glob(os.path.join(p, "_native*")) for p in spec.submodule_search_locations)
pure = not built or os.getpid() % 2 == 1
os.environ.pop("IODICT_LOG_PURE", None)
if pure:
    os.environ["IODICT_LOG_PURE"] = "1"
from iodict_log import native
if native.build() != ("pure" if pure else "native"):
    sys.exit("wrong build: " + native.build())
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "builds.log"), "a") as f:
    f.write(native.build() + "\\n")
"""


def test_mixed_build_queue_producers_and_consumers_under_sigkills_deliver_exactly_once(tmp_path, monkeypatch):
    mixer = tmp_path / "mixer"
    mixer.mkdir()
    (mixer / "sitecustomize.py").write_text(MIXER)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(mixer), os.environ.get("PYTHONPATH", "")]))
    if native.core is None:
        monkeypatch.setenv(native.PURE_ENV, "1")
    # (the queue suite's own SIGKILL test, its children now of both builds)
    test_queue_processes.test_sigkilled_producers_and_consumers_lose_and_duplicate_nothing_acknowledged(tmp_path)
    ran = collections.Counter((mixer / "builds.log").read_text().split())
    assert ran["pure"] > 0 and (ran["native"] > 0 or native.core is None), ran


def test_closing_a_held_lock_lets_go_of_it_and_counts_it(tmp_path, mutex):
    # Guards against unmapping a mutex this thread holds: glibc's robust list runs through it.
    a = fl.FileLock(str(tmp_path / "LOCK"), mapped=True)
    b = fl.FileLock(a.path, mapped=True)
    start = b.changes()
    a.acquire()
    a.close()
    assert b.try_acquire() and not b.owner_died
    assert b.changes() == start + 1
    b.release()
    b.close()
