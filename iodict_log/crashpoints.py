"""Named crash points, so tests can kill a process at exactly the step they mean.

``IODICT_LOG_CRASH_AT=name:n`` in the environment makes the process leave with
``os._exit(CRASH_EXIT)`` (no cleanup, nothing flushed: as abrupt as ``kill -9``
for the files) the n-th time it passes the point ``name`` (n defaults to 1).
Unset, each point costs one global lookup: callers test ``ARMED`` first.
"""

from __future__ import annotations

import os

CRASH_EXIT = 86  # the exit status of a crash point, so tests can tell it from a failure

# Every point, in the order a write goes through them (tests sweep this list).
POINTS = (
    "append.written",  # a record is in the file, the index does not have it yet
    "batch.half",  # half of a batch's bytes are in the file
    "roll.sealed",  # the last segment has its SEAL, the next one does not exist yet
    "roll.created",  # the next segment exists, CURRENT does not list it yet
    "compaction.copied",  # the copies are fsynced under temporary names
    "compaction.installed",  # the copies have segment names, CURRENT does not list them
    "compaction.sealed",  # the old last segment has its SEAL, CURRENT is still the old one
    "compaction.committed",  # CURRENT lists the copies, the old segments still exist
    "compaction.unlinked",  # the old segments are gone, the process has not reloaded
    "hint.staged",  # a hint file is written under its temporary name
    "queue.released",  # CURRENT no longer lists consumed segments, their files still exist
)

_spec = os.environ.get("IODICT_LOG_CRASH_AT", "")
ARMED = bool(_spec)
_name, _, _count = _spec.partition(":")
if ARMED and (_name not in POINTS or not (_count or "1").isdigit()):
    raise ValueError(f"IODICT_LOG_CRASH_AT={_spec!r}: expected NAME[:N] with NAME one of {', '.join(POINTS)}")
_left = int(_count or 1)


def reached(name: str) -> None:
    """Crash here if this is the armed point's n-th pass."""
    global _left
    if name == _name:
        _left -= 1
        if _left <= 0:
            os._exit(CRASH_EXIT)


def tear(name: str, fd: int, data: bytes) -> None:
    """At the armed pass, write the first half of ``data`` to ``fd``, then crash."""
    if name == _name and _left == 1:
        os.write(fd, data[: len(data) // 2])
    reached(name)
