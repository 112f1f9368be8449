"""Records of the log, and following them: ``records(start, follow=True)`` and ``aio.follow``.

Following protocol
------------------
A follower keeps one number, the next seq it wants. Each round it takes a
snapshot as ``records()`` does (Log.frames: the segments listed now and how far
the last one is committed, read without the write lock) and yields the records
in it from that seq on, in seq order; then it moves its next seq past the
snapshot's last seq, whatever the last frames were (a TAKE, a SEAL), and waits
until the store's last seq passes it. Waiting is polling: each look is a
catch-up of the process's own Log, which, when no process has released the
write lock since the last look, reads one counter in the mapped LOCK file and
touches no file; the pause between looks doubles from MIN_POLL up to
FOLLOW_POLL, and starts over once something arrives.

No gap, no duplicate: a snapshot yields every record with seq >= next that
is on disk (seeking past whole segments before it), and the next snapshot
starts just after the last seq the previous one covered. A segment rolled or
deleted meanwhile (a compaction, a queue's reclaim) is what Log.frames already
handles: it goes on from CURRENT at the first seq not yet yielded, so a
follower behind a compaction reads the records that survived it.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterator, NamedTuple, TypeVar

MIN_POLL = 0.001  # seconds: the first pause of a follower once it has caught up
FOLLOW_POLL = 0.01  # seconds: the longest pause between two looks at the log


class Record(NamedTuple):
    """One entry of the log, as replayed by ``records()``."""

    seq: int
    birthtime: float  # seconds since the epoch: the key's birthtime for a set, the put's for a queue
    op: str  # "set" or "delete" (a dict), "put" (a queue)
    key: Any  # None for a queue's put
    value: Any  # None for a delete


T = TypeVar("T")


def check_start(start: object) -> int:
    """Refuse a start that is not a seq before reading anything."""
    if isinstance(start, bool) or not isinstance(start, int):
        raise TypeError(f"start must be an int seq, not {type(start).__name__}")
    if start < 0:
        raise ValueError(f"start must be >= 0, not {start}")
    return start


def check_timeout(timeout: object) -> float | None:
    """Refuse a timeout that is not None or a number of seconds >= 0."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be None or seconds, not {type(timeout).__name__}")
    if not timeout >= 0:
        raise ValueError(f"timeout must be >= 0, not {timeout}")
    return float(timeout)


def follow(
    snapshot: Callable[[int], tuple[int, Iterator[T]]], last_seq: Callable[[], int], start: int, timeout: float | None
) -> Iterator[T]:
    """Every record from ``start`` on, then each new one as it lands (the protocol above);
    ends after ``timeout`` seconds (None: never) without a new record. ``snapshot(seq)``
    gives the log's last seq and the records up to it from ``seq`` (Records for a store,
    Frames for ``iodict-log tail``); ``last_seq()`` catches up and gives the last seq."""
    next_seq = start
    quiet_since = time.monotonic()
    while True:
        last, records = snapshot(next_seq)
        for record in records:
            yield record
            quiet_since = time.monotonic()
        next_seq = max(next_seq, last + 1)
        for pause in pauses(quiet_since, timeout):
            if last_seq() >= next_seq:
                break
            time.sleep(pause)
        else:
            return


def pauses(quiet_since: float, timeout: float | None) -> Iterator[float]:
    """A follower's waits between looks (MIN_POLL doubling up to FOLLOW_POLL), ending when
    ``timeout`` seconds have passed since ``quiet_since`` (time.monotonic())."""
    delay = MIN_POLL
    while True:
        pause = delay
        if timeout is not None:
            left = quiet_since + timeout - time.monotonic()
            if left <= 0:
                return
            pause = min(pause, left)
        yield pause
        delay = min(delay * 2, FOLLOW_POLL)
