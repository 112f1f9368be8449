"""IODict: a persistent, ordered, process-safe dict on the record log."""

from __future__ import annotations

import os
import threading
import time
import warnings
from collections.abc import ItemsView, Iterable, Iterator, KeysView, Mapping, MutableMapping, ValuesView
from itertools import islice
from typing import Any, Callable, NamedTuple, TypeVar

from . import compaction, crashpoints, fileops
from .errors import IODictLogError, StoreClosedError
from .format import KIND_COMPACTED, OP_DELETE, OP_SET, Frame, Hint, compress_value, encode_batch
from .hintfile import publish_hint, stage_hint
from .index import KeyIndex, index_key, location_birthtime, plain_key, snapshot_of
from .log import Entry, Log, LogHandle, check_options
from .native import core
from .objectlock import make_lock
from .serialize import Serializer, canonical_key, decode_key, encode_canonical_key
from .streams import Record

_MISSING = object()
_ABSENT = object()  # looked up in place of a key no store can hold: never found
_CHUNK = 1024  # keys read per lock hold while iterating values
T = TypeVar("T")

# The C core's fast paths (_iodict.c): the common case of update() and records(),
# and of __getitem__ / __setitem__ (set on the class below) for str keys. They do
# nothing whenever the Python path must run (NotImplemented, or calling it).
if core is not None:
    core.setup_iodict(compress_value, encode_batch)
    _update_str, _records = core.update_str, core.records
else:
    _update_str = _records = None
_REPLAY_CHUNK = 1024  # frames turned into Records per C call


class IODict(LogHandle, MutableMapping):
    """A dict kept on disk in a log-structured store directory at ``path``.

    See CONTRACT.md §2: dict behaviour, order by birthtime (an overwrite keeps
    a key's place), every write handed to the OS before it returns, and any
    number of threads and processes on one path.

    Keys equal in a dict are one key in every method (serialize.canonical_key:
    ``True``, ``1.0`` and ``1`` are the key ``1``). A hashable key that no store
    can hold (``1.5``, ``None``) is simply missing for lookups (KeyError, False,
    the default) and a TypeError for writes; an unhashable one is a TypeError,
    as in a dict. Internally keys are index keys (index.index_key).

    ``readonly=True`` opens without ever changing the directory (CONTRACT §12):
    it follows other processes' writes, and every write method raises
    ReadOnlyError, changing nothing.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        lock: Any = None,
        *,
        sync: bool | float = False,
        serializer: str = "msgpack",
        compression: str | None = "lz4",
        segment_bytes: int = 64 * 2**20,
        auto_compact: bool = True,
        compact_ratio: float = 0.4,
        compact_min_bytes: int = 2**20,
        lock_timeout: float | None = None,
        max_open_segments: int = 32,
        readonly: bool = False,
    ) -> None:
        check_options(sync, segment_bytes, max_open_segments)
        if compression not in ("lz4", None):
            raise ValueError(f"compression must be 'lz4' or None, not {compression!r}")
        if not isinstance(compact_ratio, (int, float)) or isinstance(compact_ratio, bool) or not 0 < compact_ratio < 1:
            raise ValueError(f"compact_ratio must be a number between 0 and 1, not {compact_ratio!r}")
        if not isinstance(compact_min_bytes, int) or isinstance(compact_min_bytes, bool) or compact_min_bytes < 0:
            raise ValueError(f"compact_min_bytes must be an int >= 0, not {compact_min_bytes!r}")
        if lock_timeout is not None and (
            not isinstance(lock_timeout, (int, float)) or isinstance(lock_timeout, bool) or not lock_timeout >= 0
        ):
            raise ValueError(f"lock_timeout must be None or a number of seconds >= 0, not {lock_timeout!r}")
        self._options: dict[str, Any] = {  # what a pickle reopens it with, besides the attributes set below
            "sync": sync,
            "serializer": serializer,
            "compression": compression,
            "segment_bytes": segment_bytes,
            "max_open_segments": max_open_segments,
            "readonly": readonly,
        }
        self._serializer = Serializer(serializer)
        self._lock = make_lock(lock, self)
        self._compress = compression == "lz4"
        self.auto_compact = auto_compact
        self.compact_ratio = compact_ratio
        self.compact_min_bytes = compact_min_bytes
        self.lock_timeout = lock_timeout
        self._auto_retry_at = 0  # disk bytes below which no new automatic compaction starts
        self._compact_check_at = 0  # the last_seq at which a write next looks at the dead bytes
        self._compactor: threading.Thread | None = None
        self._closing = threading.Event()
        self.path = fileops.store_path(path)  # (absolute: a later os.chdir() changes nothing)
        self._index = KeyIndex(decode_key)
        self._log: Log | None = None
        self._log = Log(
            self.path,
            self._index,
            sync=sync,
            segment_bytes=segment_bytes,
            hints=True,
            kind="dict",
            max_open_segments=max_open_segments,
            readonly=readonly,
        )

    def _reopen_options(self) -> dict[str, Any]:
        """LogHandle.__reduce__'s options: the current ones (a lock passed here is not carried)."""
        return dict(
            self._options,
            auto_compact=self.auto_compact,
            compact_ratio=self.compact_ratio,
            compact_min_bytes=self.compact_min_bytes,
            lock_timeout=self.lock_timeout,
        )

    # --- plumbing -------------------------------------------------------------

    def _stored_at(self, log: Log, key: Any) -> tuple[int, bytes] | None:
        loc = self._index.get(key)
        return None if loc is None else log.read_value(loc)

    def _value_at(self, log: Log, key: Any) -> Any:
        """The value of a key known to be present."""
        return self._serializer.decode(*log.read_value(self._index.get(key)))  # type: ignore[arg-type]

    def _set(self, log: Log, key: Any, key_bytes: bytes, flags: int, stored: bytes) -> None:
        """Append one set: the path of ``d[k] = v``."""
        index = self._index
        loc = index.get(key)
        birthtime = log.birthtime() if loc is None else location_birthtime(loc)
        index.set(key, log.append_one(OP_SET, flags, key_bytes, stored, birthtime))
        if log.last_seq >= self._compact_check_at:
            self._consider_compacting(log)

    def _put(self, log: Log, items: list[tuple[Any, bytes, int, bytes]]) -> None:
        """Append sets of (key, key bytes, flags, stored value) as one write."""
        if len(items) <= 1:
            if items:
                self._set(log, *items[0])
            return
        index = self._index
        born: dict[Any, int] = {}  # keys first set earlier in this same batch
        entries: list[Entry] = []
        for key, key_bytes, flags, stored in items:
            birthtime = born.get(key)
            if birthtime is None:
                loc = index.get(key)
                birthtime = born[key] = log.birthtime() if loc is None else location_birthtime(loc)
            entries.append((OP_SET, flags, key_bytes, stored, birthtime))
        for (key, *_), (_, loc) in zip(items, log.append_batch(entries)):
            index.set(key, loc)
        if log.last_seq >= self._compact_check_at:
            self._consider_compacting(log)

    def _remove(self, log: Log, keys: list[Any]) -> None:
        """Append deletes of existing keys as one write."""
        entries: list[Entry] = [
            (OP_DELETE, 0, encode_canonical_key(plain_key(key)), b"", log.birthtime()) for key in keys
        ]
        if len(entries) == 1:
            log.append_one(*entries[0])
        else:
            log.append_batch(entries)
        for key in keys:
            self._index.delete(key)
        if log.last_seq >= self._compact_check_at:
            self._consider_compacting(log)

    def _encoded(self, key: Any, value: Any) -> tuple[Any, bytes, int, bytes]:
        """(index key, key bytes, flags, stored value): checked and serialized
        before anything is written (TypeError on bad input)."""
        if type(key) is not str:
            key = canonical_key(key)
        return (index_key(key), encode_canonical_key(key), *self._serializer.encode(value, self._compress))

    # --- the mapping ----------------------------------------------------------

    def __getitem__(self, key: Any) -> Any:
        found = self._read(self._stored_at, key if type(key) is str else _lookup_key(key))
        if found is None:
            raise KeyError(key)
        return self._serializer.decode(*found)  # (decoded after the lock)

    def __setitem__(self, key: Any, value: Any) -> None:
        if type(key) is str:  # (the hot path: _encoded() without its calls)
            self._write(self._set, key, encode_canonical_key(key), *self._serializer.encode(value, self._compress))
        else:
            self._write(self._set, *self._encoded(key, value))

    def __delitem__(self, key: Any) -> None:
        if not self._write(self._delete, _lookup_key(key)):
            raise KeyError(key)

    def _delete(self, log: Log, key: Any) -> bool:
        """Delete ``key`` if present; whether it was."""
        if key not in self._index:
            return False
        self._remove(log, [key])
        return True

    def __contains__(self, key: object) -> bool:
        if type(key) is not str:
            key = _lookup_key(key)
        return self._read(lambda log: key in self._index)

    def __len__(self) -> int:
        return self._read(lambda log: len(self._index))

    def __iter__(self) -> Iterator[Any]:
        return iter(self._read(lambda log: list(self._index)))

    def __reversed__(self) -> Iterator[Any]:
        return iter(self._read(lambda log: list(reversed(self._index))))

    def __repr__(self) -> str:
        return repr(dict(self.items()))

    def keys(self) -> KeysView:
        return _KeysView(self)

    def values(self) -> ValuesView:
        return _ValuesView(self)

    def items(self) -> ItemsView:
        return _ItemsView(self)

    def _iter_items(self, reverse: bool = False) -> Iterator[tuple[Any, Any]]:
        """Items in order; keys deleted while iterating are skipped, not raised."""
        keys = list(reversed(self) if reverse else self)
        for start in range(0, len(keys), _CHUNK):
            yield from self._read(self._present_items, keys[start : start + _CHUNK])

    def _present_items(self, log: Log, keys: list[Any]) -> list[tuple[Any, Any]]:
        index, out = self._index, []
        for key in keys:
            loc = index.get(key)
            if loc is not None:
                out.append((key, self._serializer.decode(*log.read_value(loc))))
        return out

    def get(self, key: Any, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def pop(self, key: Any, default: Any = _MISSING) -> Any:
        value = self._write(self._pop, _lookup_key(key), default)
        if value is _MISSING:
            raise KeyError(key)
        return value

    def _pop(self, log: Log, key: Any, default: Any) -> Any:
        if key not in self._index:
            return default
        value = self._value_at(log, key)
        self._remove(log, [key])
        return value

    def popitem(self, last: bool = True) -> tuple[Any, Any]:
        """Remove and return the newest (``last=True``) or oldest item."""
        return self._write(self._popitem, last)

    def _popitem(self, log: Log, last: bool) -> tuple[Any, Any]:
        if not len(self._index):
            raise KeyError("popitem(): dictionary is empty")
        key = next(reversed(self._index)) if last else self._index.first()
        return key, self._pop(log, index_key(key), _MISSING)

    def setdefault(self, key: Any, default: Any = None) -> Any:
        if type(key) is not str:
            key = canonical_key(key)  # (TypeError for a key no store can hold: this may write it)
        return self._write(self._setdefault, key, default)

    def _setdefault(self, log: Log, key: Any, default: Any) -> Any:
        if key in self._index:
            return self._value_at(log, index_key(key))  # (the default is not even serialized)
        self._put(log, [self._encoded(key, default)])
        return default

    def update(self, other: Any = (), /, **kwargs: Any) -> None:
        """Set many items as one atomic batch: after a crash all or none are there."""
        self._refuse_writes()  # (before ``other`` is consumed)
        if isinstance(other, Mapping):
            pairs = [(key, other[key]) for key in other]
        elif hasattr(other, "keys"):
            pairs = [(key, other[key]) for key in other.keys()]  # noqa: SIM118 - dict.update's protocol
        else:
            pairs = [_pair(item) for item in other]
        pairs.extend(kwargs.items())
        if _update_str is not None and _update_str(self, pairs) is not NotImplemented:
            return
        self._write(self._put, [self._encoded(key, value) for key, value in pairs])

    def clear(self) -> None:
        """Delete every key, as one atomic batch."""
        self._write(lambda log: self._remove(log, list(self._index)) if len(self._index) else None)

    def copy(self) -> dict:
        """A plain dict with the same items (iodict returned the store itself)."""
        return dict(self.items())

    # PEP 584, as dict: ``|`` gives a plain dict (like copy()), ``|=`` is update().

    def __or__(self, other: Any) -> dict:
        if not isinstance(other, Mapping):
            return NotImplemented
        merged = self.copy()
        merged.update(other)
        return merged

    def __ror__(self, other: Any) -> dict:
        if not isinstance(other, Mapping):
            return NotImplemented
        merged = dict(other)
        merged.update(self.items())
        return merged

    def __ior__(self, other: Any) -> IODict:
        self.update(other)  # (one atomic batch; like dict's |=, whatever update() takes)
        return self

    def fromkeys(self, iterable: Iterable[Any], value: Any = None) -> IODict:
        """Set each key to ``value`` in this store (as iodict did) and return the store."""
        self.update((key, value) for key in iterable)
        return self

    # --- beyond dict ----------------------------------------------------------

    def birthtime(self, key: Any) -> float:
        """When ``key`` was first set since it was last deleted, in seconds since the epoch."""
        found = _lookup_key(key)
        loc = self._read(lambda log: self._index.get(found))
        if loc is None:
            raise KeyError(key)
        return location_birthtime(loc) / 1e9

    def _snapshot(self, start: int) -> tuple[int, Iterator[Record]]:
        """records(): the log's last seq now, and the sets and deletes up to it from seq ``start``."""
        last, frames = self._read(lambda log: (log.last_seq, log.frames(start)))
        if _records is not None:
            return last, self._records_of(frames)
        return last, (self._record(frame) for frame in frames if frame.op in (OP_SET, OP_DELETE))

    def _records_of(self, frames: Iterator[Frame]) -> Iterator[Record]:
        """What records() yields, made by the C core a chunk of frames at a time."""
        serializer = self._serializer
        while True:
            chunk = list(islice(frames, _REPLAY_CHUNK))
            if not chunk:
                return
            yield from _records(chunk, serializer, decode_key, Record, "set", "delete")

    def _record(self, frame: Frame) -> Record:
        key = decode_key(frame.key)
        if frame.op == OP_SET:
            value = self._serializer.decode(frame.flags, frame.value)
            return Record(frame.seq, frame.birthtime_ns / 1e9, "set", key, value)
        return Record(frame.seq, frame.birthtime_ns / 1e9, "delete", key, None)

    def stats(self) -> dict:
        """Counts and sizes: keys, segments, live_bytes, dead_bytes, corrupt_records, ..."""
        return self._read(self._stats)

    def _stats(self, log: Log) -> dict:
        stats = log.stats()
        live = self._index.live_bytes
        return {
            "keys": len(self._index),
            "segments": stats["segments"],
            "live_bytes": live,
            "dead_bytes": stats["disk_bytes"] - live,
            "disk_bytes": stats["disk_bytes"],
            "corrupt_records": stats["corrupt_records"],
            "last_seq": stats["last_seq"],
            "index_from_hint": log.hinted_seq >= 0,  # opened (or last reloaded) from a hint file
        }

    # --- compaction (see compaction.py) -----------------------------------------

    def compact(self, progress: Callable[[int, int], None] | None = None) -> dict:
        """Rewrite the live keys into new segments, keeping order, birthtimes and seqs.

        Other threads and processes keep reading and writing meanwhile; only the
        start and the end take the write lock, briefly. Waits for a compaction
        already running (here or in another process) to finish first.
        ``progress(done, total)``, if given, is called as keys are copied.
        """
        self._refuse_writes()  # (before COMPACT.LOCK, which taking would create)
        self._catch_up()  # (StoreClosedError before waiting for anything)
        lock = compaction.compaction_lock(self.path)
        try:
            with lock:
                return self._compact_holding(progress)
        finally:
            lock.close()

    def _compact_holding(self, progress: Callable[[int, int], None] | None) -> dict:
        """The three steps of a compaction; needs the compaction lock."""
        started = time.perf_counter()
        compaction.remove_leftovers(self.path)
        self._catch_up()  # (as before the commit, below)
        plan = self._write(self._seal_for_compaction)
        sources = plan.sources
        live: Iterable[tuple[Any, int]] = plan.live
        try:
            if progress:
                live = _reporting(plan.live, len(plan.live), progress)
            out = compaction.SegmentWriter(self.path, KIND_COMPACTED, sources.salt, plan.segment_bytes)
            try:
                moved = compaction.copy_live(sources, live, out, self._closing.is_set)
                written = out.finish()
                hint = self._stage_compaction_hint(plan, written, moved)
                if crashpoints.ARMED:
                    crashpoints.reached("compaction.copied")
                if self._closing.is_set():
                    raise compaction.CompactionStopped("compaction stopped: the store is closing")
                self._catch_up()  # on what was written during the copy, unlocked: the commit stays short
                self._write(lambda log: log.commit_compaction(sources.numbers, written, hint))
            except BaseException:
                out.abort()
                raise
        finally:
            sources.close()
        return {
            "bytes_before": plan.disk_bytes,
            "bytes_after": self._read(lambda log: log.disk_bytes()),
            "live_keys": len(moved),
            "seconds": time.perf_counter() - started,
        }

    def _seal_for_compaction(self, log: Log) -> _Plan:
        if self._index.other_frames:
            raise IODictLogError(f"{self.path}: the store holds queue items; compacting it as a dict would drop them")
        before = log.disk_bytes()
        sources = log.seal_for_compaction()
        return _Plan(sources, list(self._index.items()), before, log.last_seq, log.last_birthtime, log.segment_bytes)

    def _stage_compaction_hint(
        self, plan: _Plan, written: list[compaction.Written], moved: list[tuple[Any, int]]
    ) -> bool:
        """Stage a hint file for the compacted segments, so that every process
        reloads them quickly after the commit; whether one was staged."""
        if not written:
            return False
        coverage = tuple((w.size, w.crc) for w in written)
        hint = Hint(plan.sources.salt, plan.last_seq, plan.last_birthtime, coverage, snapshot_of(moved))
        try:
            stage_hint(self.path, hint)
        except OSError:
            return False
        return True

    def _consider_compacting(self, log: Log) -> None:
        """Start a compaction in the background once dead bytes pass both thresholds.
        Writes call it every 64 records (_compact_check_at), so most pay one compare."""
        self._compact_check_at = log.last_seq + 64
        if not self.auto_compact:
            return
        disk = log.disk_bytes()
        dead = disk - self._index.live_bytes
        if dead < self.compact_min_bytes or dead < self.compact_ratio * disk or disk < self._auto_retry_at:
            return
        thread = self._compactor
        if (thread is not None and thread.is_alive()) or self._closing.is_set():
            return
        self._auto_retry_at = disk + max(self.compact_min_bytes // 4, 1)  # no retry at every write
        self._compactor = threading.Thread(target=self._auto_compact, name="iodict_log-compaction", daemon=True)
        self._compactor.start()

    def _auto_compact(self) -> None:
        lock = None
        try:
            lock = compaction.compaction_lock(self.path)
            if lock.try_acquire():  # else another process is compacting this store
                try:
                    self._compact_holding(None)
                    self._auto_retry_at = 0  # (only a failed or skipped one waits for more growth)
                finally:
                    lock.release()
        except (StoreClosedError, compaction.CompactionStopped):
            pass
        except Exception as exc:
            warnings.warn(f"{self.path}: automatic compaction failed: {exc}", RuntimeWarning, stacklevel=1)
        finally:
            if lock is not None:
                lock.close()

    def close(self) -> None:
        """Close the files; the data stays on disk, the object is unusable afterwards. Idempotent.

        Stops a background compaction first, and leaves a hint file when enough
        was written since the last one, so the next open is fast.
        """
        self._closing.set()
        with self._lock:  # (a write starting a compaction holds it: none starts after this)
            thread = self._compactor
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        super().close()

    def _before_close(self, log: Log) -> None:
        """Write a hint file if worth it. Best effort: skipped while another process
        compacts (which writes one too); never for a read-only store."""
        if log.readonly or not log.wants_hint():
            return
        try:
            lock = compaction.compaction_lock(self.path)
        except OSError:
            return  # (a cache: the next open scans instead)
        try:
            if lock.try_acquire():
                try:
                    if log.stage_hint() and log.covers_current():
                        if crashpoints.ARMED:
                            crashpoints.reached("hint.staged")
                        publish_hint(self.path)
                finally:
                    lock.release()
        except OSError:
            pass  # a cache: the next open scans instead
        finally:
            lock.close()

    def flush(self) -> None:
        """Push everything to the OS: every write already has, so this only checks the store is open."""
        self._catch_up()

    def sync(self) -> None:
        """fsync: what has been written survives a power loss."""
        self._read(lambda log: log.sync())


class _Plan(NamedTuple):
    """What a compaction copies: taken under the write lock, used without it."""

    sources: compaction.Sources
    live: list[tuple[Any, int]]  # (key, location) in order
    disk_bytes: int  # before
    last_seq: int
    last_birthtime: int
    segment_bytes: int


def _reporting(items: Iterable[T], total: int, progress: Callable[[int, int], None]) -> Iterator[T]:
    """Pass ``items`` through, calling progress(done, total) every 10,000 and at the end."""
    done = 0
    for item in items:
        yield item
        done += 1
        if done % 10_000 == 0:
            progress(done, total)
    progress(done, total)


def _lookup_key(key: Any) -> Any:
    """The index key to look ``key`` up by: keys equal in a dict are one key; a
    hashable key no store can hold is never found (as a dict would say), and an
    unhashable one raises TypeError (as a dict does)."""
    if type(key) is str:  # (most keys: as they are)
        return key
    try:
        return index_key(canonical_key(key))
    except TypeError:
        hash(key)
        return _ABSENT


def _pair(item: Any) -> tuple[Any, Any]:
    key, value = item  # the same ValueError/TypeError dict.update raises
    return key, value


# Live views like dict's: iteration skips keys deleted meanwhile, and reversed() works.


class _KeysView(KeysView):
    _mapping: IODict  # (MappingView's, undeclared in typeshed)

    def __reversed__(self) -> Iterator[Any]:
        return reversed(self._mapping)


class _ValuesView(ValuesView):
    _mapping: IODict

    def __iter__(self) -> Iterator[Any]:
        return (value for _, value in self._mapping._iter_items())

    def __reversed__(self) -> Iterator[Any]:
        return (value for _, value in self._mapping._iter_items(reverse=True))


class _ItemsView(ItemsView):
    _mapping: IODict

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        return self._mapping._iter_items()

    def __reversed__(self) -> Iterator[tuple[Any, Any]]:
        return self._mapping._iter_items(reverse=True)


if core is not None:
    # d[key] and d[key] = value in C without a Python frame; the methods above run
    # for every key and case the C path declines.
    IODict._py_getitem, IODict._py_setitem = IODict.__getitem__, IODict.__setitem__  # type: ignore[attr-defined]
    IODict.__getitem__ = core.method(core.getitem)  # type: ignore[method-assign]
    IODict.__setitem__ = core.method(core.setitem)  # type: ignore[method-assign]
