"""The ``iodict-log`` command (also ``python -m iodict_log``).

Errors a user can cause (bad arguments, a path that is not a store) print one
line on stderr and exit with status 2; damaged data exits 1; no tracebacks.
A CorruptionWarning prints as one line, ``iodict-log CMD: warning: MESSAGE``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
import warnings
from typing import Any, Callable, Iterable, Iterator, NoReturn, Sequence, TypeVar

from . import __version__, native
from .durablequeue import DurableQueue
from .errors import CorruptionError, CorruptionWarning, IODictLogError
from .fileops import store_path
from .format import Frame
from .importer import import_iodict
from .inspection import Census, dump_line, open_log, require_store, shown_value, verify
from .iodict import IODict
from .repair import repair
from .streams import follow

T = TypeVar("T")


class _Demo:
    """Writes, reads, reopens, replays, rewrites and compacts a store, timing each step."""

    def __init__(self, path: str, events: int, out: Callable[[str], None]) -> None:
        self.path = path
        self.events = events
        self.out = out
        self.rng = random.Random(42)

    def step(self, name: str, count: int, unit: str, fn: Callable[[], T]) -> T:
        started = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - started
        rate = f"{count / seconds:>12,.0f} {unit}/s" if seconds > 0 and count else ""
        self.out(f"  {name:<10} {count:>9,} {unit:<8} {seconds:8.3f} s {rate}")
        return result

    def run(self) -> int:
        n = self.events
        payload = bytes(self.rng.getrandbits(8) for _ in range(64))
        events = {
            f"event-{i:07d}": {"seq": i, "kind": ("click", "view", "buy")[i % 3], "data": payload} for i in range(n)
        }
        keys = list(events)
        self.out(f"iodict-log demo: {n:,} events in {self.path}")
        d = IODict(self.path)
        self.step("write", n, "sets", lambda: _set_each(d, events.items()))
        sample = self.rng.sample(keys, min(n, 10_000))
        got = self.step("read", len(sample), "gets", lambda: [d[k] for k in sample])
        bad = sum(1 for k, v in zip(sample, got) if v != events[k])
        d.close()
        d = self.step("reopen", n, "keys", lambda: IODict(self.path))
        replayed = self.step("replay", n, "records", lambda: [(r.key, r.value) for r in d.records()])
        bad += sum(1 for (k, v), e in zip(replayed, keys) if k != e or v != events[e]) + abs(len(replayed) - n)
        changed = keys[: n // 10]
        doomed = keys[n // 10 : n // 5]
        self.step(
            "overwrite",
            len(changed),
            "sets",
            lambda: _set_each(d, ((k, {**events[k], "kind": "edit"}) for k in changed)),
        )
        self.step("delete", len(doomed), "deletes", lambda: _delete_each(d, doomed))
        summary = self.step("compact", len(d), "keys", d.compact)
        gone = set(doomed)
        expected = [k for k in keys if k not in gone]
        bad += int(list(d) != expected) + sum(1 for k in changed[:100] if d[k]["kind"] != "edit")
        stats = d.stats()
        d.close()
        self.out(
            f"  disk: {summary['bytes_before']:,} bytes before compaction, {summary['bytes_after']:,} after; "
            f"{stats['keys']:,} keys in {stats['segments']} segment(s)"
        )
        if bad:
            self.out(f"FAILED: {bad} mismatches between what was written and what was read")
            return 1
        self.out("all checks passed: every value read back as written, in birthtime order")
        return 0


def _set_each(d: IODict, items: Iterable[tuple[str, Any]]) -> None:
    for key, value in items:
        d[key] = value


def _delete_each(d: IODict, keys: Iterable[str]) -> None:
    for key in keys:
        del d[key]


def _demo(args: argparse.Namespace) -> int:
    if args.events < 1:
        raise _UsageError("--events must be at least 1")
    if args.path:
        if os.path.exists(args.path) and os.listdir(args.path):
            raise _UsageError(f"{args.path}: demo needs a new or empty directory")
        return _Demo(args.path, args.events, print).run()
    with tempfile.TemporaryDirectory(prefix="iodict-log-demo-") as tmp:
        return _Demo(os.path.join(tmp, "store"), args.events, print).run()


class _UsageError(Exception):
    """A mistake in how the command was called: exit status 2."""


def _progress(label: str, unit: str) -> Callable[[int, int], None] | None:
    """A one-line progress bar on stderr, with the rate and the time left, only when
    stderr is a terminal. ``unit``: what done and total count ("bytes" shows MB/s)."""
    if not sys.stderr.isatty():
        return None
    started = time.monotonic()

    def show(done: int, total: int) -> None:
        share = done / total if total else 1.0
        bar = "#" * int(share * 30)
        elapsed = time.monotonic() - started
        rate = done / elapsed if elapsed > 0 else 0.0
        speed = f"{rate / 1e6:,.1f} MB/s" if unit == "bytes" else f"{rate:,.0f} {unit}/s"
        finished = done >= total
        left = "done" if finished else f"{_duration((total - done) / rate)} left" if rate else "--:-- left"
        print(
            f"\r{label} [{bar:<30}] {share:6.1%}  {speed}  {left}\x1b[K",
            end="\n" if finished else "",
            file=sys.stderr,
            flush=True,
        )

    return show


def _duration(seconds: float) -> str:
    """m:ss, or h:mm:ss from an hour on."""
    whole = int(seconds + 0.5)
    hours, rest = divmod(whole, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _stats(args: argparse.Namespace) -> int:
    census = Census(args.path)
    log = open_log(args.path, census)
    try:
        stats = log.stats()
    finally:
        log.close()
    items = census.items
    items.reclaim()  # (which leases came back: their holders dead, or their time up)
    leased, delayed = items.counts()
    live = census.keys.live_bytes + items.pending.live_bytes + items.live_bytes
    report = {
        "path": args.path,
        "keys": len(census.keys),
        "queue_items": len(items),
        "queue_leased": leased,
        "queue_delayed": delayed,
        "dead_letters": len(items.pending.dead),
        "segments": stats["segments"],
        "disk_bytes": stats["disk_bytes"],
        "live_bytes": live,
        "dead_bytes": stats["disk_bytes"] - live,
        "corrupt_records": stats["corrupt_records"] + items.pending.damaged,
        "last_seq": stats["last_seq"],
    }
    if args.json:
        print(json.dumps(report))
    else:
        width = max(map(len, report))
        for name, value in report.items():
            print(
                f"{name.replace('_', ' '):<{width}}  {value:,}"
                if isinstance(value, int)
                else f"{name:<{width}}  {value}"
            )
    return 0


def _compact(args: argparse.Namespace) -> int:
    require_store(args.path)
    with IODict(args.path) as d:
        summary = d.compact(_progress("compact", "keys"))
    print(
        f"{args.path}: {summary['bytes_before']:,} bytes before, {summary['bytes_after']:,} after, "
        f"{summary['live_keys']:,} live keys, {summary['seconds']:.2f} s"
    )
    return 0


def _verify(args: argparse.Namespace) -> int:
    damaged = 0
    for finding in verify(args.path, _progress("verify", "bytes")):
        kind = "damaged" if finding.damage else "note"
        print(f"{kind}: {finding.path}: offset {finding.offset}: {finding.length} bytes: {finding.reason}")
        damaged += finding.damage
    print(f"{args.path}: {'no damage found' if not damaged else f'{damaged} damaged region(s)'}")
    return 1 if damaged else 0


def _repair(args: argparse.Namespace) -> int:
    backup, dropped, notes = repair(args.path, args.backup, _progress("repair", "bytes"))
    if backup is None and not dropped:
        print(f"{args.path}: nothing to repair")
        return 0
    for finding in dropped:
        print(f"dropped: {finding.path}: offset {finding.offset}: {finding.length} bytes: {finding.reason}")
    for note in notes:
        print(f"note: {note}")
    if backup is None:  # only a torn tail, which any writer would cut as well
        print(f"{args.path}: repaired (a torn tail cut; no backup needed)")
    else:
        print(f"{args.path}: repaired; the store as it was is kept in {backup}")
    return 0


def _dump(args: argparse.Namespace) -> int:
    if args.start < 0:
        raise _UsageError("--start must be 0 or more")
    log = open_log(args.path, Census(args.path))
    try:
        frames = log.frames(args.start)
    finally:
        log.close()
    refused = 0
    for frame in frames:
        line, reason = dump_line(frame)
        print(line)
        refused += reason is not None
    if refused:
        print(f'iodict-log dump: {refused} record(s) could not be shown (see their "error")', file=sys.stderr)
    return 1 if refused or args.warned else 0


def _tail(args: argparse.Namespace) -> int:
    if args.start < 0:
        raise _UsageError("--start must be 0 or more")
    log = open_log(args.path, Census(args.path))

    def last_seq() -> int:
        log.refresh()
        return log.last_seq

    def snapshot(start: int) -> tuple[int, Iterator[Frame]]:
        return last_seq(), log.frames(start)

    try:
        for frame in follow(snapshot, last_seq, args.start, None):
            print(dump_line(frame)[0], flush=True)
    finally:
        log.close()
    return 0  # (not reached: it ends with Ctrl-C, main's KeyboardInterrupt)


def _dead_letters(args: argparse.Namespace) -> int:
    if args.retry:
        require_store(args.path)
        with DurableQueue(args.path) as queue:  # (a dict store is refused: IODictLogError)
            count = queue.retry_dead_letters()
        print(f"{count:,} dead letter(s) put back at the end of the queue")
        return 0
    census = Census(args.path)
    log = open_log(args.path, census)
    try:
        items = census.items
        for seq, loc in items.pending.dead_letters():
            letter: dict[str, Any] = {"id": seq, "deliveries": items.deliveries.get(seq, 1)}
            try:
                letter["value"] = shown_value(*log.read_value(loc))
            except (CorruptionError, ValueError, RecursionError) as exc:
                letter["error"] = f"cannot be shown: {exc}"
            print(json.dumps(letter, allow_nan=False))
    finally:
        log.close()
    return 1 if args.warned else 0


def _printable(path: str) -> str:
    """A path as it can be printed: bytes of a name that are not UTF-8 as \\x escapes."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _import_iodict(args: argparse.Namespace) -> int:
    try:
        summary = import_iodict(
            args.old, args.new, queue=args.queue, msgpack=args.msgpack, progress=_progress("import-iodict", "files")
        )
    except ValueError as exc:
        raise _UsageError(str(exc)) from None
    for path, reason in summary.skipped:
        print(f"skipped: {_printable(path)}: {reason}")
    unit = "queue items" if args.queue else "keys"
    print(
        f"{_printable(args.old)}: {summary.imported:,} {unit} imported into {_printable(args.new)} "
        f"({summary.mode} mode, {summary.seconds:.2f} s); {len(summary.skipped):,} file(s) skipped"
    )
    if args.msgpack and summary.kept_pickled:
        print(
            f"note: {summary.kept_pickled:,} value(s) msgpack cannot hold kept as pickles: open the store with "
            "serializer='pickle'"
        )
    elif not args.msgpack and not args.queue:
        print("note: the values are pickles: open the store with IODict(path, serializer='pickle')")
    return 1 if summary.skipped else 0


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line on stderr (and exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


_EXIT = "exit status: 0 done; 2 bad arguments, not a store, or an error naming the file"
_EXIT_DAMAGE = "exit status: 0 no damage; 1 damage found (each place listed); 2 bad arguments or not a store"


def _command(
    sub: argparse._SubParsersAction, name: str, summary: str, description: str, exit: str = _EXIT
) -> argparse.ArgumentParser:
    """A subcommand whose --help has a description and its exit statuses."""
    return sub.add_parser(
        name,
        help=summary,
        description=description,
        epilog=exit + "; 130 interrupted. See docs/OPERATIONS.md.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="iodict-log", description="Inspect, maintain and try out iodict_log stores.")
    parser.add_argument("--version", action="version", version=f"iodict-log {__version__} ({native.build()} build)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = _command(
        sub,
        "demo",
        "write, read, replay and compact a sample store, with timings",
        "Write sample events into a store, read them back, reopen, replay, overwrite,\n"
        "delete and compact, timing each step and checking every value read.",
        "exit status: 0 every check passed; 1 a value read back differs; 2 bad arguments",
    )
    demo.add_argument("--path", help="store directory (new or empty); default: a temporary directory")
    demo.add_argument("--events", type=int, default=100_000, help="number of events to write (default 100000)")
    demo.set_defaults(run=_demo)

    stats = _command(
        sub,
        "stats",
        "counts and sizes of a store",
        "Count the keys or queue items of a store and its live and dead bytes, from its segments.\n"
        "Opens the store read-only: takes no lock and changes nothing.",
    )
    stats.add_argument("path", help="the store directory")
    stats.add_argument("--json", action="store_true", help="one JSON object instead of lines")
    stats.set_defaults(run=_stats)

    compact = _command(
        sub,
        "compact",
        "rewrite a dict store's live keys and drop dead bytes",
        "Rewrite the live keys of a dict store into new segments and delete the old ones,\n"
        "while applications go on using it. A queue store is refused.",
    )
    compact.add_argument("path", help="the store directory")
    compact.set_defaults(run=_compact)

    check = _command(
        sub,
        "verify",
        "check every record; exit 1 and say where if any is damaged",
        "Read every record of every segment and check its checksums, that its key and\n"
        "(msgpack) value decode, and that CURRENT is intact; print each damaged place.\n"
        "Takes no lock and changes nothing.",
        _EXIT_DAMAGE,
    )
    check.add_argument("path", help="the store directory")
    check.set_defaults(run=_verify)

    mend = _command(
        sub,
        "repair",
        "drop damaged records and a torn tail for good, keeping a backup",
        "Copy the store's files aside, then drop damaged and undecodable records and a\n"
        "torn tail for good, rebuild a damaged or missing CURRENT from the segments,\n"
        "recover a damaged segment header's salt from the others, and go on past\n"
        "missing segments, printing everything dropped. Applications may keep using\n"
        "the store meanwhile.",
    )
    mend.add_argument("path", help="the store directory")
    mend.add_argument("--backup", help="where to copy the store first (default: PATH.backup-<time>)")
    mend.set_defaults(run=_repair)

    dump = _command(
        sub,
        "dump",
        "replay the log in order as JSON lines (see docs/OPERATIONS.md)",
        "Print every record in sequence order as one line of strict JSON (RFC 8259);\n"
        "values JSON cannot carry are tagged as docs/OPERATIONS.md describes.\n"
        "Opens the store read-only: takes no lock and changes nothing.",
        'exit status: 0 every record shown; 1 some record could not be shown (an "error"\n'
        "line) or damage was skipped (a warning); 2 bad arguments or not a store",
    )
    dump.add_argument("path", help="the store directory")
    dump.add_argument("--start", type=int, default=0, metavar="SEQ", help="first sequence number to show")
    dump.set_defaults(run=_dump)

    tail = _command(
        sub,
        "tail",
        "print records as JSON lines as they are written, until interrupted",
        "Print every record from --start on as dump does, then each new one as any\n"
        "process writes it (within ~10 ms), until Ctrl-C. Opens the store read-only.",
        "exit status: 130 interrupted; 2 bad arguments or not a store",
    )
    tail.add_argument("path", help="the store directory")
    tail.add_argument("--start", type=int, default=0, metavar="SEQ", help="first sequence number to show")
    tail.set_defaults(run=_tail)

    dead = _command(
        sub,
        "dead-letters",
        "list a queue's dead letters as JSON lines, or put them back (--retry)",
        "List the items of a queue store that could not be decoded or were delivered\n"
        "max_deliveries times, oldest first, one JSON line each: id, deliveries and the\n"
        "value as dump shows it (a pickle is never unpickled). With --retry, put them all\n"
        "back at the end of the queue, in one atomic batch.",
    )
    dead.add_argument("path", help="the store directory")
    dead.add_argument("--retry", action="store_true", help="put every dead letter back at the end of the queue")
    dead.set_defaults(run=_dead_letters)

    port = _command(
        sub,
        "import-iodict",
        "copy an iodict 0.0.8 directory into a new store, in order",
        "Read an iodict 0.0.8 directory (xattr or plain mode) and write its keys and\n"
        "values, in birthtime order, into a new store at NEW_DIR; OLD_DIR is not\n"
        "changed. Values stay pickles (open with serializer='pickle') unless --msgpack\n"
        "converts those msgpack holds. Each file that cannot be read is listed.",
        "exit status: 0 every file imported; 1 some file skipped (each listed); 2 bad\n"
        "arguments (NEW_DIR exists and is not empty, OLD_DIR is not a directory)",
    )
    port.add_argument("old", metavar="OLD_DIR", help="the iodict directory")
    port.add_argument("new", metavar="NEW_DIR", help="where to write the new store (new or empty)")
    port.add_argument("--queue", action="store_true", help="OLD_DIR is an iodict DurableQueue: write a DurableQueue")
    port.add_argument(
        "--msgpack",
        action="store_true",
        help="store values msgpack holds as msgpack (unpickles values naming classes: trusted data only)",
    )
    port.set_defaults(run=_import_iodict)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.warned = 0
    if getattr(args, "path", None):
        args.path = store_path(args.path)  # (``~`` expanded, as IODict and DurableQueue do)

    def show(message: Warning | str, category: type[Warning], *_: object, **__: object) -> None:
        args.warned += 1
        print(f"iodict-log {args.command}: warning: {message}", file=sys.stderr)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", CorruptionWarning)
            warnings.showwarning = show
            return args.run(args)
    except BrokenPipeError:  # e.g. `iodict-log dump PATH | head`: the reader has gone
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (_UsageError, IODictLogError, OSError) as exc:
        print(f"iodict-log {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"iodict-log {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
