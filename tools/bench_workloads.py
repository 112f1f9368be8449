"""Store adapters and workloads for tools/bench.py (imported by it and by its child processes).

A store adapter wraps one library behind a tiny common interface:

    open(path, sync=False) / put(key, value) / get(key) / items() / flush() / close()
    open_batches(path) / put_batch(pairs) one write batch (transaction) per call
    replay()                              every record, decoded as the store gives them
    load(path, pairs)                     untimed bulk setup, the store's fastest idiomatic way
    compact() -> bool                     the store's own compaction (False: it has none)
    qopen(path, sync=False) / qput(item) / qget() / qget_wait() / qclose()   the queue side

Class attributes say what a store is and what one write guarantees (``durability``),
and which workloads it takes part in. A workload is a function
``(store, path, params) -> list of (row, result)`` run inside a fresh child process
(see ``child``); ``tools/bench.py`` schedules them and writes the tables.

Builds of iodict_log: "iodict_log" runs whatever is installed (the C core if it was
compiled), "iodict_log-pure" the same code with IODICT_LOG_PURE=1 in the child's
environment (``Store.environ``), "iodict_log-base" another checkout (bench.py
--baseline), first on the child's sys.path, pure too. Each child reports the build
it ran (``iodict_log_build``), so a table never passes one build off as another.
"""

from __future__ import annotations

import collections
import importlib
import os
import pickle
import random
import shutil
import sys
import time
from typing import Any, Callable, Iterable, Iterator

KEY_FORMAT = "key-{:012d}"  # 16-character str keys, as in tools/bench_core.py
PROBES = 1000  # random gets after the open in the memory workload
BATCH = 1000  # items per batch in the batch workload


def make_keys(n: int) -> list[str]:
    return [KEY_FORMAT.format(i) for i in range(n)]


def small_value(seed: int = 0) -> bytes:
    """100 random (incompressible) bytes."""
    return random.Random(seed).randbytes(100)


def compressible_values(count: int = 64, size: int = 4096) -> list[bytes]:
    """`count` distinct 4 KiB text-like values (a 200-word vocabulary, lz4 shrinks them ~2-3x)."""
    rng = random.Random(4096)
    words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 9))) for _ in range(200)]
    values = []
    for _ in range(count):
        out = bytearray()
        while len(out) < size:
            out += rng.choice(words) + b" "
        values.append(bytes(out[:size]))
    return values


def disk_bytes(path: str) -> int:
    """Bytes allocated on disk under path (st_blocks, so sparse files count as what they use)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


def proc_status(field: str) -> int:
    """A memory figure of this process from /proc/self/status, in bytes (VmRSS, VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


# --- store adapters -----------------------------------------------------------------


class Store:
    name = ""  # registry key (--only)
    label = ""  # shown in the table
    requires = ""  # modules to import; a failed import makes every row "n/a (not installed)"
    durability = ""  # what one dict write guarantees when it returns
    order = ""  # the order items() yields
    compaction = "none"  # what compact() runs
    dict_ops = True
    max_keys = 0  # cap on keys for the dict workloads (0: none); the reason goes in cap_reason
    cap_reason = ""
    queue_label = ""  # "" means: not a queue
    queue_durability = ""
    multiprocess = ""  # "" supported, else why not (the 2 x 2 queue workload)
    sync_label = ""  # the store's fsync-per-write configuration, "" none
    sync_durability = ""
    sync_na = ""  # shown as n/a in the sync workload when there is no such configuration
    batch = ""  # how put_batch writes a batch ("" means: no batch workload)
    replay_how = ""  # what replay() yields ("" means: no replay workload)
    open_reference = False  # the reference of the reopen and memory workloads (not a store)
    environ: dict[str, str | None] = {}  # the child's environment: set (str) or removed (None)
    baseline = False  # the child imports iodict_log from bench.py --baseline

    def __init__(self) -> None:
        for module in self.requires.split():
            importlib.import_module(module)

    # dict side
    def open(self, path: str, sync: bool = False) -> None:
        raise NotImplementedError

    def prewrite(self, pairs: Iterable[tuple[str, bytes]]) -> None:
        """Untimed preparation of the writes to come (only the raw floor pre-frames them)."""

    def put(self, key: str, value: bytes) -> None:
        raise NotImplementedError

    def get(self, key: str) -> Any:
        raise NotImplementedError

    def items(self) -> Iterator[tuple[Any, Any]]:
        raise NotImplementedError

    def flush(self) -> None:
        """Called at the end of a timed write loop, inside the timing (stores with write-behind)."""

    def compact(self) -> bool:
        return False

    def close(self) -> None:
        raise NotImplementedError

    def open_batches(self, path: str) -> None:
        """Open for the batch workload (where batching needs other options than single writes)."""
        self.open(path)

    def put_batch(self, pairs: list[tuple[str, bytes]]) -> None:
        raise NotImplementedError

    def replay(self) -> Iterator[Any]:
        return self.items()

    def open_extra(self) -> dict:
        """Facts about the open just done, for the notes (iodict_log: whether its hint was used)."""
        return {}

    def index_sizes(self) -> tuple[float, float] | None:
        """(index bytes per key without the keys, the keys' own bytes per key), where the store can tell."""
        return None

    def load(self, path: str, pairs: list[tuple[str, bytes]]) -> None:
        """Untimed bulk setup; overridden where the store has a faster idiomatic way."""
        self.open(path)
        self.prewrite(pairs)
        for k, v in pairs:
            self.put(k, v)
        self.flush()
        self.close()

    # queue side
    def qopen(self, path: str, sync: bool = False) -> None:
        raise NotImplementedError

    def qput(self, item: Any) -> None:
        raise NotImplementedError

    def qget(self) -> Any:
        """Take one item, known to be there."""
        raise NotImplementedError

    def qget_wait(self) -> Any:
        """Take one item, waiting for it (items may come from other processes)."""
        return self.qget()

    def qclose(self) -> None:
        pass


class IODictLog(Store):
    name, label, requires = "iodict_log", "iodict_log", "iodict_log"
    durability = "no fsync (sync=False); one write() per op"
    order = "insertion (birthtime)"
    compaction = "IODict.compact()"
    queue_label = "iodict_log DurableQueue"
    queue_durability = "no fsync (sync=False); one write() per put and per get (its TAKE record)"
    sync_label = "iodict_log sync=True"
    sync_durability = "fsync/op (sync=True); write() + fdatasync() per op"
    batch = "update() of the batch: one atomic batch, one write()"
    replay_how = "records(): a Record(seq, birthtime, op, key, value) per set, in sequence order (a segment scan)"
    environ = {"IODICT_LOG_PURE": None}

    def open(self, path: str, sync: bool = False) -> None:
        from iodict_log import IODict

        self.d = IODict(path, sync=sync)

    def put(self, key: str, value: bytes) -> None:
        self.d[key] = value

    def get(self, key: str) -> Any:
        return self.d[key]

    def items(self) -> Iterator[tuple[Any, Any]]:
        return iter(self.d.items())

    def put_batch(self, pairs: list[tuple[str, bytes]]) -> None:
        self.d.update(pairs)

    def replay(self) -> Iterator[Any]:
        return self.d.records()

    def open_extra(self) -> dict:
        hinted = self.d.stats().get("index_from_hint")  # (None: a checkout from before the field)
        return {"opened": "hint use unknown" if hinted is None else "from the hint" if hinted else "by a scan"}

    def index_sizes(self) -> tuple[float, float] | None:
        return index_sizes(self.d)

    def compact(self) -> bool:
        self.d.compact()
        return True

    def close(self) -> None:
        self.d.close()

    def load(self, path: str, pairs: list[tuple[str, bytes]]) -> None:
        self.open(path)
        for start in range(0, len(pairs), 10_000):
            self.d.update(pairs[start : start + 10_000])
        self.close()

    def qopen(self, path: str, sync: bool = False) -> None:
        from iodict_log import DurableQueue

        self.q = DurableQueue(path, sync=sync)

    def qput(self, item: Any) -> None:
        self.q.put(item)

    def qget(self) -> Any:
        return self.q.get()

    def qclose(self) -> None:
        self.q.close()


class IODictLogPure(IODictLog):
    name, label = "iodict_log-pure", "iodict_log-pure"
    queue_label = "iodict_log-pure DurableQueue"
    sync_label = "iodict_log-pure sync=True"
    environ = {"IODICT_LOG_PURE": "1"}


class IODictLogBase(IODictLog):
    name, label = "iodict_log-base", "iodict_log-base"
    queue_label = "iodict_log-base DurableQueue"
    sync_label = "iodict_log-base sync=True"
    environ = {"IODICT_LOG_PURE": "1"}
    baseline = True


def index_sizes(d: Any) -> tuple[float, float] | None:
    """(index bytes per key without the keys, the keys' bytes per key) of an open IODict, by sys.getsizeof
    of its index's dict of key -> location and of the locations; None for an index in other structures."""
    locations = getattr(getattr(d, "_index", None), "_locations", None)
    if not isinstance(locations, dict) or not locations:
        return None  # (the peak RSS figure still holds)
    n = len(locations)
    index = sys.getsizeof(locations) + sum(sys.getsizeof(loc) for loc in locations.values())
    return index / n, sum(sys.getsizeof(k) for k in locations) / n


def iodict_log_build() -> str:
    """Which iodict_log this process imported: "native" | "pure" | "pure (no native.py)", and from where."""
    import iodict_log

    package = os.path.dirname(os.path.abspath(iodict_log.__file__))
    if not os.path.isfile(os.path.join(package, "native.py")):
        # a checkout from before the C core (and no import: an editable install's finder would
        # find the installed tree's native.py for a package that has none)
        return f"pure (no native.py), {package}"
    from iodict_log import native

    return f"{native.build()}, {package}"


class IODictOld(Store):
    name, label, requires = "iodict", "iodict 0.0.8", "iodict"
    durability = "no fsync; one file per key: open, pickle, close, setxattr"
    order = "insertion (birthtime xattr; sorted per scan)"
    compaction = "none (a file per key, rewritten in place)"
    max_keys = 20_000
    cap_reason = "one file per key"
    queue_label = "iodict 0.0.8 DurableQueue"
    queue_durability = "no fsync; a file per item; get = scan + sort of the directory, then unlink"
    multiprocess = "needs a semaphore shared by a parent; get is a read then a separate delete, not atomic"
    sync_na = "no fsync option"

    def open(self, path: str, sync: bool = False) -> None:
        import iodict

        self.d = iodict.IODict(path)

    def put(self, key: str, value: bytes) -> None:
        self.d[key] = value

    def get(self, key: str) -> Any:
        return self.d[key]

    def items(self) -> Iterator[tuple[Any, Any]]:
        return iter(self.d.items())

    def close(self) -> None:
        pass

    def qopen(self, path: str, sync: bool = False) -> None:
        import iodict

        self.q = iodict.DurableQueue(path)

    def qput(self, item: Any) -> None:
        self.q.put(item)

    def qget(self) -> Any:
        return self.q.get()


class DiskCache(Store):
    name, label, requires = "diskcache", "diskcache.Cache", "diskcache"
    durability = "no fsync/op (WAL, synchronous=NORMAL); SQLite fsyncs at WAL checkpoints only; a transaction per op"
    order = "insertion (rowid)"
    compaction = "none needed (SQLite auto_vacuum=FULL)"
    queue_label = "diskcache.Deque"
    queue_durability = (
        "no fsync/op (WAL, synchronous=NORMAL); SQLite fsyncs at WAL checkpoints only; a transaction per op"
    )
    sync_label = "diskcache.Cache sqlite_synchronous=2"
    sync_durability = "fsync/op (WAL, synchronous=FULL); sqlite_synchronous=2: the WAL fsynced at each commit"
    batch = "cache.transact(): the batch's sets in one SQLite transaction"
    replay_how = "iteration: the keys (rowid order), then cache[key] per key"

    def open(self, path: str, sync: bool = False) -> None:
        import diskcache

        self.d = diskcache.Cache(path, **({"sqlite_synchronous": 2} if sync else {}))

    def put(self, key: str, value: bytes) -> None:
        self.d[key] = value

    def get(self, key: str) -> Any:
        return self.d[key]

    def items(self) -> Iterator[tuple[Any, Any]]:
        d = self.d
        return ((k, d[k]) for k in d)

    def close(self) -> None:
        self.d.close()

    def put_batch(self, pairs: list[tuple[str, bytes]]) -> None:
        d = self.d
        with d.transact():
            for k, v in pairs:
                d[k] = v

    def load(self, path: str, pairs: list[tuple[str, bytes]]) -> None:
        self.open(path)
        for start in range(0, len(pairs), 10_000):
            with self.d.transact():
                for k, v in pairs[start : start + 10_000]:
                    self.d[k] = v
        self.close()

    def qopen(self, path: str, sync: bool = False) -> None:
        import diskcache

        self.q = diskcache.Deque(directory=path)

    def qput(self, item: Any) -> None:
        self.q.append(item)

    def qget(self) -> Any:
        return self.q.popleft()

    def qget_wait(self) -> Any:
        while True:  # Deque has no blocking get: poll
            try:
                return self.q.popleft()
            except IndexError:
                time.sleep(0.001)

    def qclose(self) -> None:
        self.q.cache.close()


class DiskCacheIndex(DiskCache):
    name, label = "diskcache-index", "diskcache.Index"
    durability = (
        "no fsync/op (WAL, synchronous=NORMAL); SQLite fsyncs at WAL checkpoints only; a transaction per op; "
        "no eviction"
    )
    queue_label = ""
    sync_label = ""
    batch = replay_how = ""  # (the same SQLite underneath as diskcache.Cache: one of them is enough)

    def open(self, path: str, sync: bool = False) -> None:
        import diskcache

        self.d = diskcache.Index(path)

    def items(self) -> Iterator[tuple[Any, Any]]:
        return iter(self.d.items())

    def close(self) -> None:
        self.d.cache.close()


class SqliteDictStore(Store):
    name, label, requires = "sqlitedict", "sqlitedict", "sqlitedict"
    durability = (
        "no fsync (synchronous=OFF); autocommit=True: a transaction per op, journal DELETE, synchronous=OFF "
        "set by sqlitedict; writes go through a thread, the timing includes the final commit()"
    )
    order = "insertion (rowid)"
    compaction = "none (no API)"
    sync_na = "sqlitedict always sets synchronous=OFF"
    batch = "autocommit=False: the batch's sets, then one commit()"
    replay_how = "items(): one SELECT, values unpickled"

    def open(self, path: str, sync: bool = False, autocommit: bool = True) -> None:
        from sqlitedict import SqliteDict

        os.makedirs(path, exist_ok=True)
        self.d = SqliteDict(os.path.join(path, "db.sqlite"), autocommit=autocommit)

    def open_batches(self, path: str) -> None:
        self.open(path, autocommit=False)

    def put_batch(self, pairs: list[tuple[str, bytes]]) -> None:
        d = self.d
        for k, v in pairs:
            d[k] = v
        d.commit()

    def put(self, key: str, value: bytes) -> None:
        self.d[key] = value

    def get(self, key: str) -> Any:
        return self.d[key]

    def items(self) -> Iterator[tuple[Any, Any]]:
        return iter(self.d.items())

    def flush(self) -> None:
        self.d.commit()

    def close(self) -> None:
        self.d.close()

    def load(self, path: str, pairs: list[tuple[str, bytes]]) -> None:
        from sqlitedict import SqliteDict

        os.makedirs(path, exist_ok=True)
        with SqliteDict(os.path.join(path, "db.sqlite"), autocommit=False) as d:
            for k, v in pairs:
                d[k] = v
            d.commit()


class Lmdb(Store):
    name, label, requires = "lmdb", "lmdb (default)", "lmdb"
    durability = (
        "fsync/op (sync=True, default); data + meta fsynced at each commit; a write txn per put, a read txn per get"
    )
    order = "key bytes (= insertion here)"
    compaction = "Environment.copy(compact=True)"
    sync = True
    sync_label = "lmdb (default)"
    sync_durability = durability
    batch = "one write txn of the batch's txn.put()s, fsynced at its commit"
    replay_how = "a cursor in one read txn: (key bytes, value bytes), key order"

    def open(self, path: str, sync: bool = False) -> None:
        import lmdb

        self.path = path
        self.env = lmdb.open(path, map_size=2**32, sync=self.sync or sync)

    def put(self, key: str, value: bytes) -> None:
        with self.env.begin(write=True) as txn:
            txn.put(key.encode(), value)

    def get(self, key: str) -> Any:
        with self.env.begin() as txn:
            return txn.get(key.encode())

    def items(self) -> Iterator[tuple[Any, Any]]:
        with self.env.begin() as txn:
            for k, v in txn.cursor():
                yield k.decode(), v

    def put_batch(self, pairs: list[tuple[str, bytes]]) -> None:
        with self.env.begin(write=True) as txn:
            put = txn.put
            for k, v in pairs:
                put(k.encode(), v)

    def replay(self) -> Iterator[Any]:
        with self.env.begin() as txn:
            yield from txn.cursor()

    def compact(self) -> bool:
        copy = self.path + ".compact"
        os.makedirs(copy)
        self.env.copy(copy, compact=True)
        self.env.close()
        for name in os.listdir(copy):
            os.replace(os.path.join(copy, name), os.path.join(self.path, name))
        os.rmdir(copy)
        self.open(self.path)
        return True

    def close(self) -> None:
        self.env.close()

    def load(self, path: str, pairs: list[tuple[str, bytes]]) -> None:
        self.open(path)
        with self.env.begin(write=True) as txn:
            txn.cursor().putmulti((k.encode(), v) for k, v in pairs)
        self.close()


class LmdbNoSync(Lmdb):
    name, label = "lmdb-nosync", "lmdb (sync=False)"
    durability = "no fsync (sync=False); a commit is write()s only; a write txn per put, a read txn per get"
    sync = False
    sync_label = ""
    batch = "one write txn of the batch's txn.put()s, no fsync"


class RocksDict(Store):
    name, label, requires = "rocksdict", "rocksdict (RocksDB)", "rocksdict"
    durability = "no fsync (RocksDB default, WriteOptions.sync=False); each write appended to the WAL with write()"
    order = "key bytes (= insertion here)"
    compaction = "Rdict.compact_range() (an LSM also compacts in the background)"
    sync_label = "rocksdict sync=True"
    sync_durability = "fsync/op (WriteOptions.sync=True); the WAL fsynced at each write"
    batch = "a WriteBatch of the batch's puts, one Rdict.write()"
    replay_how = "items(): (key, value) decoded by rocksdict (default, not raw mode), key order"

    def open(self, path: str, sync: bool = False) -> None:
        from rocksdict import Rdict, WriteOptions

        self.d = Rdict(path)  # default options (create_if_missing)
        if sync:
            options = WriteOptions()
            options.sync = True
            self.d.set_write_options(options)

    def put(self, key: str, value: bytes) -> None:
        self.d[key] = value

    def get(self, key: str) -> Any:
        return self.d[key]

    def items(self) -> Iterator[tuple[Any, Any]]:
        return iter(self.d.items())

    def put_batch(self, pairs: list[tuple[str, bytes]]) -> None:
        from rocksdict import WriteBatch

        batch = WriteBatch()
        put = batch.put
        for k, v in pairs:
            put(k, v)
        self.d.write(batch)

    def compact(self) -> bool:
        self.d.compact_range(None, None)
        return True

    def close(self) -> None:
        self.d.close()

    def load(self, path: str, pairs: list[tuple[str, bytes]]) -> None:
        self.open(path)
        for start in range(0, len(pairs), 10_000):
            self.put_batch(pairs[start : start + 10_000])
        self.close()


class PickleReference(Store):
    """The open target's yardstick: a plain dict of the same keys to ints, rebuilt by pickle.loads."""

    name, label, requires = "pickle", "pickle.loads of a dict {key: int} (reference)", "pickle"
    durability = "not a store: a pickled dict of the keys, read and unpickled at open"
    dict_ops = False
    open_reference = True

    def open(self, path: str, sync: bool = False) -> None:
        with open(os.path.join(path, "dict.pickle"), "rb") as f:
            self.d = pickle.loads(f.read())

    def get(self, key: str) -> Any:
        return self.d[key]

    def close(self) -> None:
        del self.d

    def load(self, path: str, pairs: list[tuple[str, bytes]]) -> None:
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "dict.pickle"), "wb") as f:
            f.write(pickle.dumps({k: i for i, (k, _) in enumerate(pairs)}, protocol=pickle.HIGHEST_PROTOCOL))


class Shelve(Store):
    name, label, requires = "shelve", "shelve (dbm.dumb)", "shelve dbm.dumb"
    durability = (
        "no fsync; dbm.dumb (no gdbm/ndbm in this Python): a set writes the .dat file, the .dir index at close only"
    )
    order = "insertion (dbm.dumb's dict)"
    compaction = "none (dbm.dumb never reclaims space)"
    sync_na = "no fsync option"

    def open(self, path: str, sync: bool = False) -> None:
        import dbm.dumb
        import shelve

        os.makedirs(path, exist_ok=True)
        db = dbm.dumb.open(os.path.join(path, "shelf"), "c")  # noqa: SIM115 (closed in close())
        self.d: shelve.Shelf[Any] = shelve.Shelf(db)  # type: ignore[arg-type]  # (dbm.dumb: a mapping of bytes)

    def put(self, key: str, value: bytes) -> None:
        self.d[key] = value

    def get(self, key: str) -> Any:
        return self.d[key]

    def items(self) -> Iterator[tuple[Any, Any]]:
        return iter(self.d.items())

    def close(self) -> None:
        self.d.close()


class RawFloor(Store):
    """Pre-framed iodict_log records appended with os.write; a dict of key -> (offset, length)."""

    name, label, requires = "floor", "raw append floor", "iodict_log"
    durability = "no fsync; pre-framed records, one os.write per op, os.pread per get, a dict index"
    order = "insertion (dict)"
    queue_label = "raw append floor"
    queue_durability = "no fsync; pre-framed PUT and TAKE records, one os.write each"
    multiprocess = "no coordination between processes"
    sync_label = "floor: os.write + os.fdatasync"
    sync_durability = "fsync/op; one os.write + os.fdatasync per record"
    batch = "the batch's pre-framed records joined, one os.write"

    def open(self, path: str, sync: bool = False) -> None:
        from iodict_log.format import HEADER, HEADER_SIZE

        os.makedirs(path, exist_ok=True)
        self.sync = sync
        self.fd = os.open(os.path.join(path, "floor.log"), os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        self.frames: dict[str, bytes] = {}
        self.index: dict[str, tuple[int, int]] = {}
        pos, data, start = 0, b"", 0  # reopen: rebuild the index by a scan, 1 MiB at a time
        while chunk := os.pread(self.fd, 2**20, pos + len(data) - start):
            data, pos, start = data[start:] + chunk, pos, 0
            while start + HEADER_SIZE <= len(data):
                klen, vlen = HEADER.unpack_from(data, start)[5:7]
                size = HEADER_SIZE + klen + vlen
                if start + size > len(data):
                    break
                self.index[data[start + HEADER_SIZE : start + HEADER_SIZE + klen].decode()] = (pos, size)
                pos, start = pos + size, start + size
        self.pos = pos

    def prewrite(self, pairs: Iterable[tuple[str, bytes]]) -> None:
        from iodict_log.format import encode_frame

        for i, (k, v) in enumerate(pairs):
            self.frames[k] = encode_frame(1, 0, i, i, k.encode(), v, salt=0)

    def put(self, key: str, value: bytes) -> None:
        frame = self.frames[key]
        os.write(self.fd, frame)
        if self.sync:
            os.fdatasync(self.fd)
        self.index[key] = (self.pos, len(frame))
        self.pos += len(frame)

    def put_batch(self, pairs: list[tuple[str, bytes]]) -> None:
        frames, index, pos = self.frames, self.index, self.pos
        os.write(self.fd, b"".join([frames[k] for k, _ in pairs]))
        for k, _ in pairs:
            size = len(frames[k])
            index[k] = (pos, size)
            pos += size
        self.pos = pos

    def get(self, key: str) -> Any:
        offset, size = self.index[key]
        return os.pread(self.fd, size, offset)

    def items(self) -> Iterator[tuple[Any, Any]]:
        fd = self.fd
        for k, (offset, size) in self.index.items():
            yield k, os.pread(fd, size, offset)

    def close(self) -> None:
        os.close(self.fd)

    def load(self, path: str, pairs: list[tuple[str, bytes]]) -> None:
        self.open(path)
        self.prewrite(pairs)
        for start in range(0, len(pairs), 10_000):
            self.put_batch(pairs[start : start + 10_000])
        self.close()

    def qopen(self, path: str, sync: bool = False) -> None:
        from iodict_log.format import encode_frame

        self.open(path, sync)
        self.put_frame = encode_frame(16, 0, 0, 0, b"", b"v" * 100, salt=0)
        self.take_frame = encode_frame(17, 0, 0, 0, b"\0" * 8, b"", salt=0)
        self.pending: collections.deque[tuple[int, int]] = collections.deque()

    def qput(self, item: Any) -> None:
        os.write(self.fd, self.put_frame)
        self.pending.append((self.pos, len(self.put_frame)))
        self.pos += len(self.put_frame)

    def qget(self) -> Any:
        offset, size = self.pending.popleft()
        item = os.pread(self.fd, size, offset)
        os.write(self.fd, self.take_frame)
        self.pos += len(self.take_frame)
        return item

    def qclose(self) -> None:
        self.close()


class PersistQueue(Store):
    name, label, requires = "persist-queue", "persist-queue Queue", "persistqueue"
    dict_ops = False
    queue_label = "persist-queue Queue (file)"
    queue_durability = (
        "no fsync/op; put = write + flush + info file rewritten (rename), fsync per 100-item chunk; "
        "get + task_done() rewrites the info file"
    )
    multiprocess = "position kept in each object's memory (thread-safe only)"

    def qopen(self, path: str, sync: bool = False) -> None:
        import persistqueue

        self.q: Any = persistqueue.Queue(path)

    def qput(self, item: Any) -> None:
        self.q.put(item)

    def qget(self) -> Any:
        item = self.q.get()
        self.q.task_done()  # what persists the take
        return item


class PersistSQLiteQueue(PersistQueue):
    name, label = "persist-queue-sqlite", "persist-queue SQLiteQueue"
    queue_label = "persist-queue SQLiteQueue"
    queue_durability = (
        "fsync/op (WAL, synchronous=FULL); auto_commit=True: a commit per op, SQLite's default synchronous=FULL"
    )
    multiprocess = "get is a SELECT then a separate DELETE: two processes can take the same item"
    sync_label = "persist-queue SQLiteQueue put"
    sync_durability = queue_durability

    def qopen(self, path: str, sync: bool = False) -> None:
        import persistqueue

        self.q = persistqueue.SQLiteQueue(path, auto_commit=True)

    def qget(self) -> Any:
        return self.q.get(block=False)

    def qclose(self) -> None:
        self.q.close()


STORES: dict[str, type[Store]] = {
    cls.name: cls
    for cls in (
        IODictLog,
        IODictLogPure,
        IODictLogBase,
        RocksDict,
        IODictOld,
        DiskCache,
        DiskCacheIndex,
        SqliteDictStore,
        Lmdb,
        LmdbNoSync,
        Shelve,
        PersistQueue,
        PersistSQLiteQueue,
        RawFloor,
        PickleReference,
    )
}


# --- workloads ------------------------------------------------------------------------
# Each takes (store, path, params) and returns [(row, result)]; a result holds "value",
# "unit" and optional "done"/"n" (when the time budget cut a loop short) and "extra".
# Timed spans are read on `clock`: wall time, or with bench.py --clock cpu the CPU time of
# the child (user + system, all its threads), which time spent descheduled on a busy
# machine does not inflate. Budgets are always wall time.

WALL_ONLY = ("sync", "queue_2x2")  # waiting on the disk or on other processes: CPU time would hide it
clock: Callable[[], float] = time.perf_counter


def _rate(done: int, seconds: float, n: int, **extra: Any) -> dict:
    return {"value": done / seconds, "unit": "ops/s", "done": done, "n": n, "extra": extra}


def _loop(fn: Callable[..., Any], args: list, budget: float, star: bool = False, mask: int = 63) -> tuple[int, float]:
    """Call fn on each of args until done or over budget (checked every mask + 1 calls): (calls, seconds)."""
    started, deadline = clock(), time.perf_counter() + budget
    done = 0
    for i, a in enumerate(args):
        fn(*a) if star else fn(a)
        if i & mask == mask and time.perf_counter() > deadline:
            done = i + 1
            break
    else:
        done = len(args)
    return done, clock() - started


def _writes(store: Store, pairs: list[tuple[str, bytes]], budget: float, batch: int = 0) -> tuple[int, float]:
    """Time the writes of pairs, one put() each or put_batch() of `batch` pairs, and the flush(): (pairs, seconds)."""
    groups = [pairs[i : i + batch] for i in range(0, len(pairs), batch)] if batch else []
    started = clock()
    if batch:
        calls, _ = _loop(store.put_batch, groups, budget, mask=0)
        done = min(calls * batch, len(pairs))
    else:
        done, _ = _loop(store.put, pairs, budget, star=True)
    store.flush()
    return done, clock() - started


def _drain(items: Callable[[], Iterable[Any]], budget: float) -> tuple[int, float, bool]:
    """Consume items() until it ends or the budget is over: (items, seconds, whether it ended)."""
    started, deadline = clock(), time.perf_counter() + budget
    done = 0
    for done, _ in enumerate(items(), 1):  # noqa: B007
        if done & 63 == 0 and time.perf_counter() > deadline:
            return done, clock() - started, False
    return done, clock() - started, True


def w_insert(store: Store, path: str, p: dict) -> list:
    pairs = [(k, p["value"]) for k in make_keys(p["n"])]
    store.open(path)
    store.prewrite(pairs)
    done, seconds = _writes(store, pairs, p["budget"])
    store.close()
    return [("", _rate(done, seconds, p["n"]))]


def w_insert_4k(store: Store, path: str, p: dict) -> list:
    values = compressible_values()
    pairs = [(k, values[i % len(values)]) for i, k in enumerate(make_keys(p["n"]))]
    store.open(path)
    store.prewrite(pairs)
    done, seconds = _writes(store, pairs, p["budget"])
    store.close()
    on_disk = disk_bytes(path)
    return [("", _rate(done, seconds, p["n"], disk_bytes=on_disk, disk_per_value=on_disk / done))]


def w_batch(store: Store, path: str, p: dict) -> list:
    """Sets in batches of BATCH: the store's batch (transaction) API, one call per batch."""
    pairs = [(k, p["value"]) for k in make_keys(p["n"])]
    store.open_batches(path)
    store.prewrite(pairs)
    done, seconds = _writes(store, pairs, p["budget"], batch=BATCH)
    store.close()
    return [("", _rate(done, seconds, p["n"], how=store.batch))]


def w_get(store: Store, path: str, p: dict) -> list:
    keys = make_keys(p["n"])
    store.load(path, [(k, p["value"]) for k in keys])
    random.Random(1).shuffle(keys)
    store.open(path)
    done, seconds = _loop(store.get, keys, p["budget"])
    store.close()
    return [("", _rate(done, seconds, p["n"]))]


def w_overwrite(store: Store, path: str, p: dict) -> list:
    """10 rounds over n/10 keys (n puts), then the store's own compaction."""
    keys = make_keys(max(1, p["n"] // 10))
    store.load(path, [(k, p["value"]) for k in keys])
    writes = [(k, small_value(r + 1)) for r in range(10) for k in keys]
    store.open(path)
    store.prewrite(writes)
    done, seconds = _writes(store, writes, p["budget"])
    store.close()
    before = disk_bytes(path)
    store.open(path)
    started = time.perf_counter()
    compacted = store.compact()
    compact_s = time.perf_counter() - started
    store.close()
    after = disk_bytes(path)
    extra = {"disk_before": before, "disk_after": after, "compaction": store.compaction}
    if compacted:
        extra["compact_s"] = compact_s
    return [("", _rate(done, seconds, len(writes), **extra))]


def prep_keys(store: Store, path: str, p: dict) -> list:
    """Setup phase of reopen and memory, in a child of its own: n keys with 100-byte values."""
    store.load(path, [(k, p["value"]) for k in make_keys(p["n"])])
    return []


def w_reopen(store: Store, path: str, p: dict) -> list:
    first = make_keys(1)[0]
    started = clock()
    store.open(path)
    store.get(first)
    seconds = clock() - started
    store.close()
    return [("", {"value": seconds, "unit": "s", "n": p["n"]})]


def w_iterate(store: Store, path: str, p: dict) -> list:
    store.load(path, [(k, p["value"]) for k in make_keys(p["n"])])
    store.open(path)
    done, seconds, _ = _drain(store.items, p["budget"])
    store.close()
    return [("", _rate(done, seconds, p["n"], order=store.order))]


def w_replay(store: Store, path: str, p: dict) -> list:
    """Every record of n sets, as replay() yields them (iodict_log: records(), a scan of the log)."""
    n = p["n"]
    store.load(path, [(k, p["value"]) for k in make_keys(n)])
    store.open(path)
    done, seconds, ended = _drain(store.replay, p["budget"])
    store.close()
    if ended and done != n:
        raise RuntimeError(f"replay yielded {done:,} records of {n:,}")
    return [("", _rate(done, seconds, n, how=store.replay_how))]


def w_memory(store: Store, path: str, p: dict) -> list:
    """Open a prepared store of n keys, get the first key, then PROBES random keys: peak RSS growth."""
    n = p["n"]
    probes = [KEY_FORMAT.format(i) for i in random.Random(2).sample(range(n), min(PROBES, n))]
    first = make_keys(1)[0]
    rss_before = proc_status("VmRSS")
    started = clock()
    store.open(path)
    store.get(first)
    seconds = clock() - started
    for k in probes:
        store.get(k)
    peak = proc_status("VmHWM") - rss_before
    rows = [
        ("open + first get", {"value": seconds, "unit": "s", "n": n, "extra": store.open_extra()}),
        ("peak RSS growth per key", {"value": peak / n, "unit": "B/key", "n": n, "extra": {"peak_bytes": peak}}),
    ]
    sizes = store.index_sizes()
    if sizes is not None:
        extra = {"key_bytes": sizes[1]}
        rows.append(("index bytes per key", {"value": sizes[0], "unit": "B/key", "n": n, "extra": extra}))
    store.close()
    return rows


def w_queue(store: Store, path: str, p: dict) -> list:
    n, value = p["n"], p["value"]
    store.qopen(path)
    done_put, put_s = _loop(store.qput, [value] * n, p["budget"])
    started, deadline = clock(), time.perf_counter() + p["budget"]
    done_get = 0
    for done_get in range(1, done_put + 1):  # noqa: B007
        store.qget()
        if done_get & 63 == 0 and time.perf_counter() > deadline:
            break
    get_s = clock() - started
    store.qclose()
    return [("put", _rate(done_put, put_s, n)), ("get", _rate(done_get, get_s, n))]


def _producer(name: str, path: str, count: int, budget: float, barrier: Any, results: Any) -> None:
    store = STORES[name]()
    store.qopen(path)
    value = b"p" * 100
    barrier.wait()
    deadline = time.monotonic() + budget
    put = 0
    while put < count:
        store.qput(value)
        put += 1
        if put & 63 == 0 and time.monotonic() > deadline:
            break
    store.qclose()
    results.put(("put", put))


def _consumer(name: str, path: str, barrier: Any, results: Any) -> None:
    store = STORES[name]()
    store.qopen(path)
    barrier.wait()
    got = 0
    while store.qget_wait() is not None:
        got += 1
    store.qclose()
    results.put(("got", got))


def w_queue_2x2(store: Store, path: str, p: dict) -> list:
    """2 producer + 2 consumer processes on one queue; end-to-end items/s (a None per consumer stops it)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    n = p["n"]
    store.qopen(path)
    barrier, results = ctx.Barrier(5), ctx.Queue()
    producer_args = (store.name, path, n // 2, p["budget"], barrier, results)
    producers = [ctx.Process(target=_producer, args=producer_args) for _ in range(2)]
    consumers = [ctx.Process(target=_consumer, args=(store.name, path, barrier, results)) for _ in range(2)]
    for proc in producers + consumers:
        proc.start()
    barrier.wait(timeout=120)
    started = time.perf_counter()
    for proc in producers:
        proc.join()
    store.qput(None)
    store.qput(None)
    for proc in consumers:
        proc.join()
    seconds = time.perf_counter() - started
    store.qclose()
    counts: collections.Counter[str] = collections.Counter()
    for _ in range(4):
        kind, count = results.get(timeout=10)
        counts[kind] += count
    if counts["put"] != counts["got"]:
        raise RuntimeError(f"consumers got {counts['got']} of {counts['put']} items")
    return [("", _rate(counts["got"], seconds, n))]


def w_sync(store: Store, path: str, p: dict) -> list:
    pairs = [(k, p["value"]) for k in make_keys(p["n"])]
    if store.dict_ops:
        store.open(path, sync=True)
        store.prewrite(pairs)
        done, seconds = _writes(store, pairs, p["budget"])
        store.close()
    else:
        store.qopen(path, sync=True)
        done, seconds = _loop(store.qput, [v for _, v in pairs], p["budget"])
        store.qclose()
    return [("", _rate(done, seconds, p["n"]))]


WORKLOADS: dict[str, Callable[[Store, str, dict], list]] = {
    "insert": w_insert,
    "batch": w_batch,
    "insert_4k": w_insert_4k,
    "get": w_get,
    "overwrite": w_overwrite,
    "reopen": w_reopen,
    "iterate": w_iterate,
    "replay": w_replay,
    "queue": w_queue,
    "queue_2x2": w_queue_2x2,
    "sync": w_sync,
    "memory": w_memory,
    "prep_keys": prep_keys,
}


def child(store_name: str, workload: str, path: str, params: dict, conn: Any, baseline: str = "") -> None:
    """Entry point of a child process: run one workload once.

    Sends back (status, rows or reason, build): ("ok", rows, build) or ("n/a" | "error", text, build),
    build saying which iodict_log ran (iodict_log_build) for the iodict_log stores, "" for the others.
    The environment (Store.environ) is set by the parent before the spawn; the baseline's directory
    goes first on sys.path here, before anything imports iodict_log.
    """
    global clock
    cls = STORES[store_name]
    build = ""
    if params.get("clock") == "cpu" and workload not in WALL_ONLY:
        clock = time.process_time
    try:
        if cls.baseline:
            sys.path.insert(0, baseline)
        try:
            store = cls()
        except ImportError as e:
            conn.send(("n/a", f"not installed: {e}", build))
            return
        try:
            if isinstance(store, IODictLog):
                build = iodict_log_build()
                if cls.baseline and not build.endswith(os.path.join(os.path.abspath(baseline), "iodict_log")):
                    raise RuntimeError(f"the baseline was not imported: {build}")
            rows = WORKLOADS[workload](store, path, params)
            conn.send(("ok", rows, build))
        except Exception as e:  # a failing store is reported, the run goes on
            conn.send(("error", f"{type(e).__name__}: {e}"[:200], build))
    finally:
        conn.close()


def fresh_dir(base: str, *parts: str) -> str:
    path = os.path.join(base, *parts)
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path
