"""Bringing an iodict 0.0.8 directory over: ``import_iodict(old, new)`` and ``iodict-log import-iodict``.

iodict kept one file per key holding the pickled value, in one of two modes:

- xattr mode (the file system has extended attributes): the file name is the
  SHA3-224 of the key, the key is in the ``user.key`` xattr and the birthtime,
  a big-endian double, in ``user.birthtime`` (iodict also set that on the
  directory itself). A file without ``user.key`` is an orphan: iodict wrote
  the value first and the xattrs after, so a crash in between (or a key that
  is not a ``str``, which iodict failed to set) left a value with no key.
  The key ``""`` is the exception: iodict never set it, its name says it.
- plain mode (no xattrs): the file name is the key (so keys come back as
  ``str``, as iodict gave them), the birthtime the file's ctime.

The directory's mode is xattr if it or any of its files carries iodict's
xattrs. Each file is opened once to read its key, birthtime and value (values
are kept up to KEEP_BYTES in all, the rest read again later); the keys are
sorted by birthtime as iodict ordered them, and written in that order in
batches, each keeping its birthtime (nudged up by a microsecond where two
tie). An iodict DurableQueue directory was an IODict of uuid4 keys; imported
with ``queue=True`` its values become a DurableQueue's items in the same order.

Values stay the pickles iodict wrote, byte for byte (``serializer="pickle"``
reads them), unless ``msgpack=True`` converts those msgpack can hold. A value
is checked before it is kept, without running it: an unpickler that refuses
every class loads a value of plain types; one naming classes is walked opcode
by opcode instead (pickletools), which finds truncation without importing
anything. Converting has to build the objects, so ``msgpack=True`` unpickles
values that name classes (as iodict did when it read them): trusted data only.

Nothing in the old directory changes. The store is written under a temporary
name beside ``new`` and renamed to it once complete, so ``new`` is either
absent or a whole import. What could not be read is listed in the summary.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import pickletools
import shutil
import struct
import time
from typing import Any, Callable, Iterator, NamedTuple

from . import fileops
from .durablequeue import DurableQueue
from .format import FLAG_PICKLE, MAX_SEQ, OP_SET, compress_value
from .iodict import IODict
from .log import Entry, Log
from .manifest import MANIFEST_NAME
from .segment import parse_segment_name
from .serialize import Serializer, encode_canonical_key

BATCH_KEYS = 1000  # keys per batch written
BATCH_BYTES = 4 * 2**20  # stored bytes per batch written, at most (one value may be larger)
KEEP_BYTES = 256 * 2**20  # values kept in memory from the scan, at most; the others are read a second time
_DOUBLE = struct.Struct(">d")  # iodict's user.birthtime
_LAST_BIRTHTIME = MAX_SEQ / 1e9 - 1  # (seconds: a record's birthtime is ns below 2**63, the year 2262)
_EMPTY_KEY_NAME = hashlib.sha3_224(b"").hexdigest()  # xattr mode's file for the key "" (never given user.key)


class Skipped(NamedTuple):
    """A file of the old directory that was not imported, and why."""

    path: str
    reason: str


class ImportSummary(NamedTuple):
    """What ``import_iodict`` did."""

    imported: int  # keys (or queue items) written
    skipped: list[Skipped]  # what could not be read, in the old directory's order
    kept_pickled: int  # with msgpack=True: values msgpack cannot hold, kept as pickles
    mode: str  # "xattr" or "plain": how the old directory named its keys
    kind: str  # "dict" or "queue": what was written
    seconds: float


class _Entry:
    """A file of the old directory holding a key: its value's bytes until they are written
    (None if not kept from the scan)."""

    __slots__ = ("birthtime", "path", "data", "key")

    def __init__(self, birthtime: float, path: str, data: bytes | None) -> None:
        self.birthtime = birthtime  # (seconds, as iodict sorted them)
        self.path = path
        self.data = data
        self.key = ""


class _NamesClass(pickle.UnpicklingError):
    """The pickle refers to a class or function: not loaded without importing it."""


class _NoClasses(pickle.Unpickler):
    """Loads pickles of plain types (str, bytes, numbers, lists, dicts, ...) and refuses
    any other, so that checking a value never imports or runs anything."""

    def find_class(self, module: str, name: str) -> Any:
        raise _NamesClass(f"{module}.{name}")


def _damage(data: bytes) -> str | None:
    """Why ``data`` is not a whole pickle, or None if it is; runs none of it."""
    if not data:
        return "empty file (a truncated pickle)"
    try:
        _NoClasses(io.BytesIO(data)).load()
        return None
    except _NamesClass:
        pass
    except Exception as exc:  # (what a damaged pickle raises varies: EOFError, UnpicklingError, ...)
        return f"not a whole pickle: {type(exc).__name__}: {exc}"
    try:
        for _ in pickletools.genops(data):  # (names classes: check its structure instead)
            pass
    except Exception as exc:
        return f"not a whole pickle: {type(exc).__name__}: {exc}"
    return None


def _same(decoded: Any, value: Any) -> bool:
    """Whether msgpack gave ``value`` back as it was, types nested anywhere included."""
    try:
        return type(decoded) is type(value) and pickle.dumps(decoded, 4) == pickle.dumps(value, 4)
    except Exception:
        return False


def _xattr(target: str | int, name: str) -> bytes | None:
    """The xattr ``name`` of a path or descriptor, None if it has none."""
    try:
        return os.getxattr(target, name)
    except OSError:  # (ENODATA: not set; ENOTSUP: no xattrs here)
        return None


def _birthtime(fd: int) -> float:
    """As iodict's _get_create_time: user.birthtime, else st_birthtime, else ctime."""
    raw = _xattr(fd, "user.birthtime")
    if raw is not None and len(raw) == 8:
        return _DOUBLE.unpack(raw)[0]
    stat = os.fstat(fd)
    return getattr(stat, "st_birthtime", stat.st_ctime)


def _is_store(path: str) -> bool:
    """Whether ``path`` is an iodict_log store: its CURRENT and a segment beside it (in
    plain mode a file named CURRENT is just the key "CURRENT")."""
    return os.path.lexists(os.path.join(path, MANIFEST_NAME)) and any(
        parse_segment_name(name) is not None for name in os.listdir(path)
    )


def _scan(old: str, skipped: list[Skipped]) -> tuple[str, list[_Entry]]:
    """The mode and the readable keys of an iodict directory, oldest first; each file is
    opened once, its value kept while KEEP_BYTES allow (the rest are read again in order)."""
    xattr_mode = _xattr(old, "user.birthtime") is not None
    found: list[tuple[bytes | None, str, _Entry]] = []
    kept = 0
    with os.scandir(old) as listing:
        for item in listing:
            if not item.is_file(follow_symlinks=False):
                skipped.append(Skipped(item.path, "not a regular file"))
                continue
            try:
                fd = os.open(item.path, os.O_RDONLY | fileops.NOFOLLOW | fileops.NONBLOCK)
                try:
                    raw_key = _xattr(fd, "user.key")
                    entry = _Entry(_birthtime(fd), item.path, _read_fd(fd) if kept < KEEP_BYTES else None)
                finally:
                    os.close(fd)
            except OSError as exc:
                skipped.append(Skipped(item.path, f"cannot be read: {exc.strerror or exc}"))
                continue
            kept += len(entry.data or b"")
            xattr_mode = xattr_mode or raw_key is not None
            found.append((raw_key, item.name, entry))
    entries = []
    for raw_key, name, entry in found:
        if raw_key is not None:
            try:
                entry.key = raw_key.decode()
            except UnicodeDecodeError:
                skipped.append(Skipped(entry.path, "its user.key is not UTF-8"))
                continue
        elif not xattr_mode:
            try:
                name.encode()
            except UnicodeEncodeError:  # (os.scandir's stand-in for bytes that are not UTF-8)
                skipped.append(Skipped(entry.path, "its name, the key, is not UTF-8"))
                continue
            entry.key = name
        elif name == _EMPTY_KEY_NAME:
            entry.key = ""
        else:
            skipped.append(Skipped(entry.path, "orphan: a value without a key (no user.key xattr)"))
            continue
        if not 0 <= entry.birthtime <= _LAST_BIRTHTIME:  # (NaN fails it too)
            skipped.append(Skipped(entry.path, f"its birthtime is not a time a record can hold: {entry.birthtime!r}"))
            continue
        entries.append(entry)
    entries.sort(key=lambda entry: entry.birthtime)  # (stable: ties keep the listing's order, as iodict)
    first: dict[str, _Entry] = {}
    for entry in entries:  # (iodict never held a key twice, but a file copied in can repeat a user.key)
        if first.setdefault(entry.key, entry) is not entry:
            skipped.append(Skipped(entry.path, f"the same key as the older {first[entry.key].path}"))
    return ("xattr" if xattr_mode else "plain"), list(first.values())


def _read_fd(fd: int) -> bytes:
    chunks: list[bytes] = []
    while True:
        chunk = os.read(fd, 2**20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _read(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | fileops.NOFOLLOW | fileops.NONBLOCK)
    try:
        return _read_fd(fd)
    finally:
        os.close(fd)


class _Values:
    """Turns the bytes of iodict's files into (flags, stored bytes) for the new store."""

    def __init__(self, msgpack: bool) -> None:
        self.msgpack = Serializer("msgpack") if msgpack else None
        self.kept_pickled = 0

    def encode(self, data: bytes) -> tuple[int, bytes] | str:
        """(flags, stored) for a valid pickle, else the reason it is not one."""
        if self.msgpack is None:
            reason = _damage(data)
            if reason is not None:
                return reason
            return self._pickled(data)
        try:
            value = _NoClasses(io.BytesIO(data)).load()
        except _NamesClass:
            try:
                value = pickle.loads(data)  # (msgpack=True: trusted data, see the module's docstring)
            except Exception:
                reason = _damage(data)
                if reason is not None:
                    return reason
                self.kept_pickled += 1  # (a whole pickle of a class this process cannot import)
                return self._pickled(data)
        except Exception:
            return _damage(data) or "not a whole pickle"
        try:
            flags, stored = self.msgpack.encode(value)
        except TypeError:
            flags = -1
        if flags < 0 or not _same(self.msgpack.decode(flags, stored), value):
            self.kept_pickled += 1  # (msgpack cannot hold it, or not as it was: a bytearray comes back bytes)
            return self._pickled(data)
        return flags, stored

    @staticmethod
    def _pickled(data: bytes) -> tuple[int, bytes]:
        flags, stored = compress_value(data)
        return flags | FLAG_PICKLE, stored


def _batches(
    entries: list[_Entry], values: _Values, skipped: list[Skipped], progress: Callable[[int, int], None] | None
) -> Iterator[list[tuple[_Entry, int, bytes]]]:
    """The readable entries with their (flags, stored bytes), in order, a batch at a time."""
    batch: list[tuple[_Entry, int, bytes]] = []
    size = 0
    for done, entry in enumerate(entries, 1):
        if progress is not None and done % BATCH_KEYS == 0:
            progress(done, len(entries))
        data, entry.data = entry.data, None
        try:
            encoded = values.encode(_read(entry.path) if data is None else data)
        except OSError as exc:
            skipped.append(Skipped(entry.path, f"cannot be read: {exc.strerror or exc}"))
            continue
        if isinstance(encoded, str):
            skipped.append(Skipped(entry.path, encoded))
            continue
        batch.append((entry, *encoded))
        size += len(encoded[1])
        if len(batch) >= BATCH_KEYS or size >= BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch
    if progress is not None:
        progress(len(entries), len(entries))


def _append_sets(log: Log, store: IODict, batch: list[tuple[_Entry, int, bytes]]) -> None:
    """Append a batch of sets, each key keeping its birthtime in whole microseconds (nudged
    up where needed: every birthtime in a store is later than the one before)."""
    records: list[Entry] = []
    last = log.last_birthtime
    for entry, flags, stored in batch:
        birthtime = int(entry.birthtime * 1e6) * 1000
        last = birthtime if birthtime > last else last + 1000
        records.append((OP_SET, flags, encode_canonical_key(entry.key), stored, last))
    log.last_birthtime = last
    locations = [log.append_one(*records[0])] if len(records) == 1 else [loc for _, loc in log.append_batch(records)]
    index = store._index
    for (entry, _, _), loc in zip(batch, locations):
        index.set(entry.key, loc)  # (a str key: its own index key)


def _write_dict(path: str, batches: Iterator[list[tuple[_Entry, int, bytes]]]) -> int:
    written = 0
    with IODict(path, serializer="pickle", auto_compact=False) as store:
        for batch in batches:
            store._write(_append_sets, store, batch)
            written += len(batch)
    return written


def _write_queue(path: str, batches: Iterator[list[tuple[_Entry, int, bytes]]]) -> int:
    written = 0
    with DurableQueue(path) as store:
        for batch in batches:
            store._try_put([(flags, stored) for _, flags, stored in batch], None)
            written += len(batch)
    return written


def import_iodict(
    old: str | os.PathLike,
    new: str | os.PathLike,
    *,
    queue: bool = False,
    msgpack: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> ImportSummary:
    """Write the keys and values of the iodict 0.0.8 directory ``old`` into a new iodict_log
    store at ``new``, in birthtime order; ``old`` is left as it was.

    ``queue``: ``old`` was an iodict DurableQueue; write a DurableQueue of its items.
    ``msgpack``: store values as msgpack where msgpack holds them (then the store
    opens with the default serializer if none was kept pickled); else every value
    stays a pickle (open the store with ``serializer="pickle"``; a DurableQueue's default).
    ``progress(done, total)`` is called as files are read.

    ValueError, before anything is written, if ``old`` is not a directory, is an
    iodict_log store, or ``new`` exists and is not an empty directory.
    """
    started = time.perf_counter()
    old_path, new_path = fileops.store_path(old), fileops.store_path(new)
    if not os.path.isdir(old_path):
        raise ValueError(f"{old_path}: no such directory")
    if _is_store(old_path):
        raise ValueError(f"{old_path}: is an iodict_log store already, not an iodict directory")
    if os.path.lexists(new_path) and not (os.path.isdir(new_path) and not os.listdir(new_path)):
        raise ValueError(f"{new_path}: exists; the import writes a new store (a new or empty directory)")
    if new_path == old_path or new_path.startswith(old_path + os.sep):
        raise ValueError(f"{new_path}: is inside the directory being imported")
    skipped: list[Skipped] = []
    mode, entries = _scan(old_path, skipped)
    values = _Values(msgpack)
    staging = os.path.join(os.path.dirname(new_path), f".{os.path.basename(new_path)}.importing-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)  # (left by an earlier import of ours that was killed)
    try:
        write = _write_queue if queue else _write_dict
        imported = write(staging, _batches(entries, values, skipped, progress))
        os.replace(staging, new_path)  # (a new or empty directory: replaced whole)
        fileops.sync_directory(os.path.dirname(new_path))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ImportSummary(
        imported, skipped, values.kept_pickled, mode, "queue" if queue else "dict", time.perf_counter() - started
    )
