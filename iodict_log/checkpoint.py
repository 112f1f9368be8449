"""The queue checkpoint, CHECKPOINT: the queue's positions, so opening need not replay its backlog.

Theory of operation
-------------------
A queue keeps in memory only its positions and what is out of order
(pending.py); the backlog itself stays in the log. The checkpoint is that
state as of a point in the log (the end of the last segment it covers), and a
process opening the queue loads it and scans only what was appended after
that point: opening costs O(segments), not O(items).

It is only a cache, like the dict's hint (hintfile.py): whatever is wrong with
it makes the reader scan instead. Its segments are named by number, each with
the size covered and the CRC-32 of the CHECKPOINT_TAIL bytes below that size
(format.py): a queue's segments are only ever appended to, so a segment that
still has its number, salt, covered size (exactly, for a sealed one) and tail
holds the bytes the checkpoint was made from. Nothing in the backlog is
trusted on the checkpoint's word: every frame read back later is checked
against its own CRCs, and damage found there is reported then (Log.read_frames).

Writers hold the store's write lock (the state must be the log's at one
point), so one fixed temporary name serves. The file is replaced by rename
without fsync: a torn or lost checkpoint only costs a scan, and an older one
that still matches the segments is a true state of a prefix of the log, from
which the scan goes on. A checkpoint is written when this process rolls to a
new segment or deletes consumed ones (both change CURRENT, and a reclaim makes
the old checkpoint unusable) and when the queue is closed, whenever the store
holds at least CHECKPOINT_MIN_BYTES (below that a scan is about as fast).

The payload (encode_state) is fixed-width integers: the counts, the first
ready item, the dead letters and the seqs taken out of order, the items on
lease (leases.py) and the dead letters' delivery counts, every location
checked against its covered segment before use (hintfile.decode_locations).
"""

from __future__ import annotations

import os
import struct
from typing import NamedTuple, Sequence

from . import fileops
from .errors import CorruptionError
from .fileops import read_file, write_file
from .format import (
    CHECKPOINT_COVER,
    COUNT,
    HEADER_SIZE,
    HINT_HEAD,
    MAX_SEQ,
    Checkpoint,
    decode_checkpoint,
    encode_checkpoint,
)
from .hintfile import LOCATION_SIZE, decode_locations

CHECKPOINT_NAME = "CHECKPOINT"
CHECKPOINT_TMP_NAME = CHECKPOINT_NAME + ".tmp"
CHECKPOINT_MIN_BYTES = 2**20  # a store smaller than this opens by a scan about as fast

# ready count, live bytes, damaged, other frames, highest PUT seq, first ready seq (0: none),
# dead letters, seqs taken out of order, items on lease, dead letters' delivery counts; then
# the first ready item's location (if any), the dead letters' seqs and locations, the seqs
# taken out of order each with a "dead" byte, the items on lease (HELD and a location each),
# the dead letters' delivery counts (seq, count).
STATE_HEAD = struct.Struct("<QQQQQQQQQQ")
SEQ_SIZE = 8
HELD = struct.Struct("<QIQQ")  # seq, deliveries, holder (0: released), until (expiry or due time, ns)
DELIVERIES = struct.Struct("<QI")  # seq of a dead letter, times it was delivered


class QueueState(NamedTuple):
    """What PendingItems keeps, in the form a checkpoint holds (locations by position in CURRENT)."""

    ready: int
    live_bytes: int
    damaged: int
    other_frames: int
    last_put: int
    first: tuple[int, int] | None  # (seq, location) of the oldest ready item
    dead: list[tuple[int, int]]  # (seq, location) of each dead letter, by seq
    gone: list[tuple[int, int]]  # (seq, fate: pending.TAKEN, BURIED or PASSED) of items beyond the window
    # What leases.py adds: (seq, location, deliveries, holder, until) of each item on lease or
    # released, by seq, and (seq, deliveries) of the dead letters delivered more than once.
    held: Sequence[tuple[int, int, int, int, int]] = ()
    deliveries: Sequence[tuple[int, int]] = ()


def encode_state(state: QueueState) -> bytes:
    first_seq, first_loc = state.first or (0, None)
    parts = [
        STATE_HEAD.pack(
            state.ready,
            state.live_bytes,
            state.damaged,
            state.other_frames,
            state.last_put,
            first_seq,
            len(state.dead),
            len(state.gone),
            len(state.held),
            len(state.deliveries),
        )
    ]
    if first_loc is not None:
        parts.append(first_loc.to_bytes(LOCATION_SIZE, "little"))
    parts += [seq.to_bytes(SEQ_SIZE, "little") for seq, _ in state.dead]
    parts += [loc.to_bytes(LOCATION_SIZE, "little") for _, loc in state.dead]
    parts += [seq.to_bytes(SEQ_SIZE, "little") + bytes([fate]) for seq, fate in state.gone]
    parts += [HELD.pack(seq, n, holder, until) for seq, _, n, holder, until in state.held]
    parts += [loc.to_bytes(LOCATION_SIZE, "little") for _, loc, _, _, _ in state.held]
    parts += [DELIVERIES.pack(*pair) for pair in state.deliveries]
    return b"".join(parts)


def decode_state(payload: bytes, sizes: Sequence[int]) -> QueueState:
    """The state in ``payload``, every location inside the covered ``sizes``; ValueError otherwise."""
    try:
        ready, live_bytes, damaged, other, last_put, first_seq, dead, gone, held, counted = STATE_HEAD.unpack_from(
            payload
        )
        at = STATE_HEAD.size
        firsts = 1 if first_seq else 0
        size = at + firsts * LOCATION_SIZE + dead * (SEQ_SIZE + LOCATION_SIZE) + gone * (SEQ_SIZE + 1)
        size += held * (HELD.size + LOCATION_SIZE) + counted * DELIVERIES.size
        if size != len(payload):
            raise ValueError("not the size its counts say")
        first_locs, _ = decode_locations(payload[at : at + firsts * LOCATION_SIZE], sizes)
        at += firsts * LOCATION_SIZE
        dead_seqs = list(struct.unpack_from(f"<{dead}Q", payload, at))
        at += dead * SEQ_SIZE
        dead_locs, _ = decode_locations(payload[at : at + dead * LOCATION_SIZE], sizes)
        at += dead * LOCATION_SIZE
        gone_seqs = list(struct.iter_unpack("<QB", payload[at : at + gone * (SEQ_SIZE + 1)]))
        at += gone * (SEQ_SIZE + 1)
        leases = list(struct.iter_unpack(HELD.format, payload[at : at + held * HELD.size]))
        at += held * HELD.size
        held_locs, _ = decode_locations(payload[at : at + held * LOCATION_SIZE], sizes)
        at += held * LOCATION_SIZE
        deliveries = tuple(struct.iter_unpack(DELIVERIES.format, payload[at:]))
        _check_consistent(ready, live_bytes, last_put, first_seq, dead_seqs, gone_seqs, sum(sizes))
        _check_leases([seq for seq, *_ in leases], [seq for seq, _ in deliveries], dead_seqs, last_put)
    except Exception as exc:  # whatever a forged payload makes struct or a check raise
        raise ValueError(f"not a queue checkpoint: {exc!r}") from None
    first = (first_seq, first_locs[0]) if first_seq else None
    return QueueState(
        ready,
        live_bytes,
        damaged,
        other,
        last_put,
        first,
        list(zip(dead_seqs, dead_locs)),
        gone_seqs,
        tuple((seq, loc, n, holder, until) for (seq, n, holder, until), loc in zip(leases, held_locs)),
        deliveries,
    )


def _check_consistent(
    ready: int,
    live_bytes: int,
    last_put: int,
    first_seq: int,
    dead: list[int],
    gone: list[tuple[int, int]],
    covered: int,
) -> None:
    """ValueError unless the fields of a state agree with each other and with the bytes
    covered: what a forged checkpoint with a good CRC could otherwise break."""
    if last_put > MAX_SEQ or live_bytes > covered or ready * HEADER_SIZE > covered:
        raise ValueError("counts beyond what the segments hold")
    if (ready == 0) != (first_seq == 0) or (gone and not first_seq):
        raise ValueError("a first item exactly when items are ready")
    if first_seq > last_put or (dead and (dead != sorted(set(dead)) or dead[0] == 0 or dead[-1] > last_put)):
        raise ValueError("seqs out of order, or beyond the last put")
    if any(not first_seq < seq <= last_put or fate > 2 for seq, fate in gone):
        raise ValueError("an item taken out of order outside the backlog")


def _check_leases(held: list[int], counted: list[int], dead: list[int], last_put: int) -> None:
    """ValueError unless the items on lease and the counted dead letters are in order, put,
    and the counted ones dead letters."""
    for seqs in (held, counted):
        if seqs and (seqs != sorted(set(seqs)) or seqs[0] == 0 or seqs[-1] > last_put):
            raise ValueError("leased seqs out of order, or beyond the last put")
    if not set(counted) <= set(dead):
        raise ValueError("a delivery count for an item that is not a dead letter")


def checkpoint_bound(disk_bytes: int, segments: int) -> int:
    """The most bytes a valid checkpoint over ``segments`` segments of ``disk_bytes`` bytes in
    all can take: each dead letter or item taken out of order costs fewer bytes than a frame."""
    return HINT_HEAD.size + segments * CHECKPOINT_COVER.size + STATE_HEAD.size + LOCATION_SIZE + disk_bytes + COUNT.size


def read_checkpoint(directory: str, disk_bytes: int, segments: int) -> Checkpoint | None:
    """The store's checkpoint, or None if there is none, it is damaged, or it is not a regular
    file that the segments could justify (checkpoint_bound)."""
    try:
        data = read_file(os.path.join(directory, CHECKPOINT_NAME), checkpoint_bound(disk_bytes, segments))
    except (OSError, CorruptionError):  # missing, a link, a FIFO, a directory, too big: scan
        return None
    return decode_checkpoint(data)


def write_checkpoint(directory: str, checkpoint: Checkpoint) -> None:
    """Make ``checkpoint`` the store's, by rename (no fsync: readers verify it)."""
    tmp = os.path.join(directory, CHECKPOINT_TMP_NAME)
    write_file(tmp, encode_checkpoint(checkpoint), sync=False)
    fileops.replace(tmp, os.path.join(directory, CHECKPOINT_NAME))
