"""iodict_log: a persistent, ordered, process-safe dict and durable queue on an append-only log."""

from .durablequeue import DurableQueue
from .errors import (
    CorruptionError,
    CorruptionWarning,
    FormatVersionError,
    IODictLogError,
    LockTimeoutError,
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
    "IODictLogError",
    "LockTimeoutError",
    "Record",
    "StoreClosedError",
]
__version__ = "0.3.0"
