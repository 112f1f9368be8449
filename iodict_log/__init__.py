"""iodict_log: a persistent, ordered, process-safe dict and durable queue on an append-only log."""

from .durablequeue import DurableQueue, Lease
from .errors import (
    CorruptionError,
    CorruptionWarning,
    FormatVersionError,
    IODictLogError,
    LeaseExpiredError,
    LockTimeoutError,
    ReadOnlyError,
    StoreClosedError,
)
from .flushqueue import FlushQueue
from .iodict import IODict, Record

__all__ = [
    "CorruptionError",
    "CorruptionWarning",
    "DurableQueue",
    "FlushQueue",
    "FormatVersionError",
    "IODict",
    "Lease",
    "IODictLogError",
    "LeaseExpiredError",
    "LockTimeoutError",
    "ReadOnlyError",
    "Record",
    "StoreClosedError",
]
__version__ = "0.4.0"
