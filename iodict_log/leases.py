"""Acknowledged delivery: the items out on lease, rebuilt from the log like the rest.

Theory of operation
-------------------
``q.lease()`` delivers an item without consuming it. Holding the store's write
lock, the consumer catches up with the log, picks the oldest item that may be
delivered and appends a LEASE frame naming its PUT's seq, with the holder's
token (holders.py), the lease's expiry (wall-clock ns, 0 for none) and the
delivery's number. ``ack()`` appends a TAKE of the seq (the item is gone, as
after a get), ``release(delay)`` a RELEASE with the time it may be delivered
again, ``extend()`` another LEASE of the same delivery with a later expiry, and
an item delivered ``max_deliveries`` times that would be delivered once more
gets a DEAD instead (a dead letter, as a poison item is). Each of these is
appended only after checking, under the same lock and on the caught-up state,
that the lease is still the item's current one, so an item is acked at most
once, and LeaseExpiredError changes nothing.

Every process replays those frames into ``LeasedItems``, the queue's log
consumer: a table of the items delivered and not yet acked or dead (seq ->
``Held``: location, deliveries, holder, until), in front of ``PendingItems``,
which keeps the items never delivered and gets every other frame. A first
LEASE takes the item out of the PendingItems (it was the oldest ready item) into
the table. The table holds what is in flight, never the backlog.

When a held item may be delivered again is each process's own judgment, made
when it looks for an item to deliver (``reclaim``): a released item once its
time has come, a leased one once its expiry has passed or its holder is dead
(holders.py: a lock the kernel drops when the holder's process dies, tried at
most every CHECK_EVERY seconds). Such an item is "back": ready again, in its
FIFO place (the smallest seqs, ahead of every item never delivered), counted
by ``qsize()``. Judgments need not agree between processes: the next LEASE,
TAKE or DEAD, written under the lock after catching up, settles the item for
all of them.

The table is in the queue's checkpoint (checkpoint.py), and ``oldest()``
includes its items, so a segment holding a PUT on lease is never reclaimed.
Frames about items no longer held (a LEASE of an item this process never saw
ready, in a log that lost records to damage) change nothing.
"""

from __future__ import annotations

import heapq
import time
import warnings
from typing import Any, Sequence

from .checkpoint import decode_state, encode_state
from .errors import CorruptionWarning
from .format import LEASE, OP_DEAD, OP_LEASE, OP_RELEASE, OP_TAKE, RELEASE, SEQ, Frame
from .holders import CHECK_EVERY, Holders
from .index import LENGTH_MASK, OFFSET_MASK, OFFSET_SHIFT, SLOT_MASK, SLOT_SHIFT
from .pending import PendingItems

_NEVER = 2**63  # a time (ns) later than any


class Held:
    """An item delivered and neither acked nor dead."""

    __slots__ = ("loc", "deliveries", "holder", "until", "back")

    def __init__(self, loc: int, deliveries: int, holder: int, until: int) -> None:
        self.loc = loc  # its PUT's location
        self.deliveries = deliveries  # times it was delivered
        self.holder = holder  # the token of the lease's holder; 0 once released
        self.until = until  # ns since the epoch: the lease's expiry (0: none), or when released, when due
        self.back = False  # this process judged it deliverable again (reclaim)


def _position(loc: int) -> tuple[int, int]:
    return (loc >> SLOT_SHIFT) & SLOT_MASK, (loc >> OFFSET_SHIFT) & OFFSET_MASK


class LeasedItems:
    """The queue's log consumer: items on lease here, every other item in ``pending``."""

    def __init__(self, pending: PendingItems, holders: Holders) -> None:
        self.pending = pending
        self.holders = holders
        self.held: dict[int, Held] = {}
        self.deliveries: dict[int, int] = {}  # seq -> deliveries, of dead letters delivered more than once
        self.live_bytes = 0  # bytes of the PUTs held
        self._back: list[int] = []  # heap of the seqs judged back (some may have been settled since)
        self._seqs: list[int] = []  # heap of the held seqs (some may have been settled since): oldest()
        self.back_count = 0
        self._next_due = _NEVER  # the earliest ``until`` of an item not back (ns)
        self._next_look = 0.0  # time.monotonic() the holders of held items are next tried

    # --- the log consumer ---------------------------------------------------------

    def attach(self, log: Any) -> None:
        self.pending.attach(log)

    def reset(self) -> None:
        self.pending.reset()
        self.held.clear()
        self.deliveries.clear()
        self.live_bytes = 0
        self._back.clear()
        self._seqs.clear()
        self.back_count = 0
        self._next_due = _NEVER

    def settle(self) -> None:
        self.pending.settle()

    def lost_place(self, first_slot: int) -> bool:
        return self.pending.lost_place(first_slot)

    def apply(self, frame: Frame, loc: int) -> None:
        op = frame.op
        if op in (OP_LEASE, OP_RELEASE):
            size = LEASE.size if op == OP_LEASE else RELEASE.size
            if len(frame.key) != SEQ.size or len(frame.value) != size:
                self._damaged(frame)
            elif op == OP_LEASE:
                holder, expiry, delivery = LEASE.unpack(frame.value)
                self.leased(SEQ.unpack(frame.key)[0], holder, expiry, delivery, loc)
            else:
                self.released(SEQ.unpack(frame.key)[0], RELEASE.unpack(frame.value)[0])
        elif op in (OP_TAKE, OP_DEAD) and len(frame.key) == SEQ.size:
            seq = SEQ.unpack(frame.key)[0]
            if seq in self.held:
                self.settle_held(seq, op == OP_DEAD)
            else:
                if op == OP_TAKE:
                    self.deliveries.pop(seq, None)  # (a dead letter retried)
                self.pending.apply(frame, loc)
        else:
            self.pending.apply(frame, loc)

    def _damaged(self, frame: Frame) -> None:
        self.pending.damaged += 1
        name = "LEASE" if frame.op == OP_LEASE else "RELEASE"
        warnings.warn(
            f"{self.pending.where}: skipped the {name} record of seq {frame.seq}: its key or value "
            f"is not the size {name} records have",
            CorruptionWarning,
            stacklevel=5,
        )

    def leased(self, seq: int, holder: int, expiry: int, delivery: int, stop: int | None = None) -> None:
        """A LEASE of ``seq``: its first delivery, a later one, or an extension."""
        entry = self.held.get(seq)
        if entry is None:
            loc = self.pending.remove(seq, stop)
            if loc is None:
                return  # (not an item this process has ready: see the module's last paragraph)
            entry = self.held[seq] = Held(loc, delivery, holder, expiry)
            self.live_bytes += loc & LENGTH_MASK
            heapq.heappush(self._seqs, seq)
        else:
            if entry.back:
                entry.back = False
                self.back_count -= 1
            entry.deliveries, entry.holder, entry.until = delivery, holder, expiry
        if expiry and expiry < self._next_due:
            self._next_due = expiry

    def released(self, seq: int, due: int) -> None:
        """A RELEASE of ``seq``: deliverable again from ``due`` (ns since the epoch)."""
        entry = self.held.get(seq)
        if entry is None:
            return
        if entry.back:
            entry.back = False
            self.back_count -= 1
        entry.holder, entry.until = 0, due
        if due < self._next_due:
            self._next_due = due

    def settle_held(self, seq: int, dead: bool) -> None:
        """The held item ``seq`` was acked (or taken by a get), or is dead."""
        entry = self.held.pop(seq)
        self.live_bytes -= entry.loc & LENGTH_MASK
        if entry.back:
            self.back_count -= 1
        if dead:
            self.pending.bury_taken(seq, entry.loc)
            if entry.deliveries > 1:
                self.deliveries[seq] = entry.deliveries

    # --- what is ready ------------------------------------------------------------

    def reclaim(self) -> None:
        """Judge which held items may be delivered again, now (the module docstring)."""
        if not self.held:
            return
        now, look = time.time_ns(), time.monotonic()
        if now < self._next_due and look < self._next_look:
            return
        trying = look >= self._next_look
        if trying:
            self._next_look = look + CHECK_EVERY
        due, alive = _NEVER, self.holders.alive
        for seq, entry in self.held.items():
            if entry.back:
                continue
            until, holder = entry.until, entry.holder
            if until <= now if not holder else (until and until <= now) or (trying and not alive(holder)):
                entry.back = True
                self.back_count += 1
                heapq.heappush(self._back, seq)
            elif until and until < due:
                due = until
        self._next_due = due

    def first_back(self) -> tuple[int, Held] | None:
        """The oldest held item judged back (reclaim), or None."""
        heap = self._back
        while heap:
            entry = self.held.get(heap[0])
            if entry is not None and entry.back:
                return heap[0], entry
            heapq.heappop(heap)  # (settled or leased again since)
        return None

    def is_current(self, seq: int, holder: int, delivery: int) -> bool:
        """Whether ``holder``'s lease of delivery ``delivery`` is still ``seq``'s: neither
        acked, released, delivered again, expired, nor judged back."""
        entry = self.held.get(seq)
        return (
            entry is not None
            and not entry.back
            and entry.holder == holder
            and entry.deliveries == delivery
            and not (entry.until and entry.until <= time.time_ns())
        )

    def __len__(self) -> int:
        """Items ready for delivery: never delivered, or back."""
        return len(self.pending) + self.back_count

    def counts(self) -> tuple[int, int]:
        """(on lease, released and not due yet), of the held items not back."""
        leased = sum(1 for entry in self.held.values() if not entry.back and entry.holder)
        return leased, len(self.held) - self.back_count - leased

    def oldest(self) -> int | None:
        """Location of the oldest PUT still needed: a ready item, a dead letter or a held item."""
        oldest = self.pending.oldest()
        seqs, held = self._seqs, self.held
        while seqs and seqs[0] not in held:
            heapq.heappop(seqs)  # (settled since)
        if seqs:
            loc = held[seqs[0]].loc
            if oldest is None or _position(loc) < _position(oldest):
                return loc
        return oldest

    # --- checkpoints (checkpoint.py) ----------------------------------------------

    def snapshot(self, first_slot: int) -> bytes | None:
        state = self.pending.state(first_slot)
        if state is None or any(_position(entry.loc)[0] < first_slot for entry in self.held.values()):
            return None
        shift = first_slot << SLOT_SHIFT
        held = [(seq, e.loc - shift, e.deliveries, e.holder, e.until) for seq, e in sorted(self.held.items())]
        return encode_state(state._replace(held=held, deliveries=sorted(self.deliveries.items())))

    def restore(self, payload: bytes, sizes: Sequence[int]) -> None:
        """Load a checkpoint's state; ValueError, changing nothing, if it is not a valid one."""
        state = decode_state(payload, sizes)
        self.reset()
        self.pending.load(state)
        for seq, loc, deliveries, holder, until in state.held:
            self.held[seq] = Held(loc, deliveries, holder, until)
            self._seqs.append(seq)  # (in order: a heap)
            self.live_bytes += loc & LENGTH_MASK
            if (until or not holder) and until < self._next_due:
                self._next_due = until
        self.deliveries.update(state.deliveries)
