"""The exceptions and warnings of iodict_log, rooted at IODictLogError."""

from __future__ import annotations


class IODictLogError(Exception):
    """Base of every error iodict_log raises about a store's files or state."""


class CorruptionError(IODictLogError):
    """Bytes on disk fail their checksum or do not follow the format."""


class FormatVersionError(IODictLogError):
    """The store was written by a different on-disk format version; nothing was changed."""

    def __init__(self, version: int, path: str | None = None) -> None:
        from .format import FORMAT_VERSION

        self.version = version
        where = f"{path}: " if path else ""
        super().__init__(
            f"{where}on-disk format version {version} is not supported "
            f"(this iodict_log reads version {FORMAT_VERSION}); nothing was changed"
        )


class StoreClosedError(IODictLogError):
    """The store was used after close()."""


class LockTimeoutError(IODictLogError, TimeoutError):
    """The store's write lock was not free before the caller's deadline (another
    process holds it: stopped, slow, or in a long repair)."""


class ReadOnlyError(IODictLogError):
    """A write was asked of a store opened with ``readonly=True``; nothing was changed."""


class LeaseExpiredError(IODictLogError):
    """A lease was acked, released or extended after it came back (its lease_timeout passed,
    it was released or acked already, or its holder was judged dead); nothing was changed."""


class CorruptionWarning(UserWarning):
    """Damaged records were skipped while reading a store."""
