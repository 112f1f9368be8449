"""Writing new segments out of existing frames: the output of compaction and repair.

Both replace segments by new ones that hold chosen frames, each frame standing
alone (outside any batch: the batches they came from are settled) and under
the store's salt. The files are written, fsynced and closed, and left out of
CURRENT: the caller makes them part of the store by replacing CURRENT, its
single commit point. A crash before that leaves them as leftovers that the next
open deletes; a crash after it leaves the new store.
"""

from __future__ import annotations

from typing import Iterable

from .format import FLAG_BATCH, SEGMENT_HEADER_SIZE, Frame, encode_frame
from .segment import Segment

_WRITE_BATCH = 4096  # frames per write() while copying


def standalone(frame: Frame, salt: int) -> bytes:
    """The frame re-encoded outside any batch, with checksums under ``salt``."""
    flags = frame.flags & ~FLAG_BATCH
    return encode_frame(frame.op, flags, frame.seq, frame.birthtime_ns, frame.key, frame.value, salt=salt)


def write_segments(
    directory: str, first_number: int, kind: int, salt: int, frames: Iterable[bytes], segment_bytes: int
) -> list[int]:
    """Write ``frames`` (in order) into new segments numbered from ``first_number``,
    starting a new one past ``segment_bytes``; their numbers (none if no frames)."""
    numbers: list[int] = []
    out: Segment | None = None
    pending: list[bytes] = []
    size = 0
    try:
        for frame in frames:
            if out is None or (size + len(frame) > segment_bytes and size > SEGMENT_HEADER_SIZE):
                if out is not None:
                    _finish(out, pending)
                out = Segment.create(directory, first_number + len(numbers), kind, salt)
                numbers.append(out.number)
                size = SEGMENT_HEADER_SIZE
            pending.append(frame)
            size += len(frame)
            if len(pending) >= _WRITE_BATCH:
                out.append(b"".join(pending), out.size())
                pending.clear()
        if out is not None:
            _finish(out, pending)
            out = None
    finally:
        if out is not None:
            out.close()
    return numbers


def _finish(out: Segment, pending: list[bytes]) -> None:
    try:
        if pending:
            out.append(b"".join(pending), out.size())
            pending.clear()
        out.sync()
    finally:
        out.close()
