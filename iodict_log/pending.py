"""The queue's index, rebuilt from the log: its positions, and what is out of order.

Theory of operation
-------------------
A log consumer like ``KeyIndex``: every process replays PUT, TAKE and DEAD
frames into ``PendingItems``, in log order, which is FIFO order. Items leave
in that order, so the queue's state is mostly positions: how many items are
ready, and where the oldest is. Only a window of the oldest ready items
(WINDOW of them) is held in memory, seq -> location; the rest of the backlog
stays in the log, and when the window runs dry it is refilled by reading the
log forward from the first item beyond it (``_spill``), through
``Log.read_frames``. Memory therefore follows what is in flight, not the
length of the backlog: a window, the dead letters, and the seqs of items
beyond the window that were taken out of order (``_gone``, none in a FIFO
queue: a get always takes the head; a DEAD always names the head).

A TAKE or DEAD names the seq of its PUT, so each costs one dictionary lookup
whatever it names: in the window, a dead letter, beyond the window (the
window is refilled first when it is empty, so the FIFO case never adds to
``_gone``), or a PUT long consumed (nothing). The count of ready items is
kept as frames are applied, so ``len()`` is O(1); reading back the whole
backlog (the window refilled with nothing beyond it) makes it exact again, so
records lost to damage since a checkpoint cannot leave it wrong for long.

``oldest()`` is the earliest PUT still needed, before which every segment
holds only consumed items (what ``DurableQueue`` reclaims). ``state()`` and
``load()`` are the state in a checkpoint (checkpoint.py): the counts, the
first ready item, the dead letters and ``_gone``; a loaded window is empty
and fills from the log on first use. Items on lease are ``LeasedItems``'s
(leases.py), the consumer the log feeds, which hands this one the rest.
"""

from __future__ import annotations

import collections
import warnings
from typing import Any

from .checkpoint import QueueState
from .errors import CorruptionError, CorruptionWarning
from .format import OP_DEAD, OP_PUT, OP_TAKE, SEQ, Frame
from .index import LENGTH_MASK, SLOT_MASK, SLOT_SHIFT
from .serialize import Serializer

WINDOW = 4096  # ready items held in memory (about 150 bytes each); the rest are read back from the log
# What became of an item beyond the window, noted until the window reaches it (``_gone``):
TAKEN = 0  # taken (its bytes still counted in live_bytes)
BURIED = 1  # moved to the dead letters
PASSED = 2  # taken from the middle of the window before it was read back (its bytes no longer counted)


class PendingItems:
    """The queue's state as the log says: ready items and dead letters. A log consumer.

    The oldest ready items (up to WINDOW) map seq -> location in ``_ready``,
    with ``_order`` keeping their FIFO order (a seq taken from the middle
    stays in it until it reaches the front and is dropped there). Ready items
    beyond the window are only counted: ``_spill`` is the first of them.
    Dead letters map seq -> location. ``attach(log)`` gives the log to read
    the backlog back from.
    """

    __slots__ = (
        "_ready",
        "_order",
        "_count",
        "_spill",
        "_gone",
        "_last_put",
        "dead",
        "_oldest_dead",
        "live_bytes",
        "damaged",
        "other_frames",
        "where",
        "_log",
    )

    def __init__(self, where: str = "") -> None:
        self.where = where  # the store's path, for warnings
        self._log: Any = None  # what read_frames() reads the backlog back from (attach)
        self._ready: dict[int, int] = {}
        self._order: collections.deque[int] = collections.deque()
        self._count = 0  # ready items, in the window and beyond it
        self._spill: tuple[int, int] | None = None  # (seq, location) of the first ready item beyond the window
        self._gone: dict[int, int] = {}  # seq -> TAKEN, BURIED or PASSED, of items beyond the window
        self._last_put = 0  # the highest seq of a PUT applied: a TAKE naming a higher one names no item
        self.dead: dict[int, int] = {}  # seq -> location of the dead letters' PUTs
        self._oldest_dead: int | None = None  # min(dead), or None when not known yet
        self.live_bytes = 0  # bytes of the PUTs still needed: ready items and dead letters
        self.damaged = 0  # queue frames that make no sense (a key that is not a seq), since reset
        self.other_frames = 0  # data frames that are not the queue's (a dict's), since reset

    def attach(self, log: Any) -> None:
        """The log whose ``read_frames`` refills the window (Log calls it before replaying)."""
        self._log = log

    def __len__(self) -> int:
        return self._count

    def reset(self) -> None:
        self._ready.clear()
        self._order.clear()
        self._count = 0
        self._spill = None
        self._gone.clear()
        self._last_put = 0
        self.dead.clear()
        self._oldest_dead = None
        self.live_bytes = 0
        self.damaged = 0
        self.other_frames = 0

    def apply(self, frame: Frame, loc: int) -> None:
        op = frame.op
        if op == OP_PUT:
            self.add(frame.seq, loc)
        elif op in (OP_TAKE, OP_DEAD):
            if len(frame.key) != SEQ.size:
                self.damaged += 1
                name = "TAKE" if op == OP_TAKE else "DEAD"
                warnings.warn(
                    f"{self.where}: skipped the {name} record of seq {frame.seq}: its key is "
                    f"{len(frame.key)} bytes, not a {SEQ.size}-byte seq",
                    CorruptionWarning,
                    stacklevel=5,
                )
            elif op == OP_TAKE:
                self.remove(SEQ.unpack(frame.key)[0], loc)
            else:
                self.bury(SEQ.unpack(frame.key)[0], loc)
        else:
            self.other_frames += 1

    def settle(self) -> None:
        pass  # (items are in seq order whatever was skipped)

    def add(self, seq: int, loc: int) -> None:
        if seq in self._ready or seq in self.dead:
            return  # (a duplicated frame: one item)
        if self._spill is None and len(self._ready) < WINDOW:
            self._ready[seq] = loc
            self._order.append(seq)
        elif self._spill is None:
            self._spill = (seq, loc)
        self._count += 1
        if seq > self._last_put:
            self._last_put = seq
        self.live_bytes += loc & LENGTH_MASK

    def _first(self) -> tuple[int, int] | None:
        """(seq, location) of the oldest ready item in the window, or None."""
        order, ready = self._order, self._ready
        while order:
            seq = order[0]
            loc = ready.get(seq)
            if loc is not None:
                return seq, loc
            order.popleft()  # taken or dead since: forget it here too
        return None

    def head(self) -> tuple[int, int] | None:
        """(seq, location) of the oldest ready item, or None; refills the window if need be."""
        first = self._first()
        if first is None and self._spill is not None:
            self._refill(None)
            first = self._first()
        return first

    def remove(self, seq: int, stop: int | None = None) -> int | None:
        """Forget the PUT with this seq, ready or dead, and return its location (None if it
        is neither, or lies beyond the window: a PUT in a segment deleted as consumed, or
        one that never was). ``stop``: where in the log the TAKE is, when it is being
        replayed (what may be read back)."""
        loc = self._ready.pop(seq, None)
        if loc is not None:
            self._count -= 1
            if self._order[0] == seq:
                self._order.popleft()  # (the common case: the head)
        else:
            loc = self.dead.pop(seq, None)
            if loc is None:
                return self._leave_beyond(seq, False, stop)
            if seq == self._oldest_dead:
                self._oldest_dead = None
        self.live_bytes -= loc & LENGTH_MASK
        return loc

    def bury(self, seq: int, stop: int | None = None) -> None:
        """Move the ready item ``seq`` to the dead letters (nothing if it is not ready)."""
        loc = self._ready.pop(seq, None)
        if loc is None:
            self._leave_beyond(seq, True, stop)
            return
        self._count -= 1
        self.dead[seq] = loc
        if self._oldest_dead is not None and seq < self._oldest_dead:
            self._oldest_dead = seq

    def bury_taken(self, seq: int, loc: int) -> None:
        """Make the item ``seq`` at ``loc``, taken already (on lease), a dead letter."""
        self.dead[seq] = loc
        self.live_bytes += loc & LENGTH_MASK
        if self._oldest_dead is not None and seq < self._oldest_dead:
            self._oldest_dead = seq

    def _leave_beyond(self, seq: int, buried: bool, stop: int | None) -> int | None:
        """A TAKE (or DEAD) of ``seq``, not in the window: an item beyond it, or none.
        Its location if it was read back into the window for it (a TAKE)."""
        spill = self._spill
        if spill is None or not spill[0] <= seq <= self._last_put:
            return None  # (consumed long ago, or never put)
        known = self._gone.get(seq)
        if known is not None:
            if known == BURIED and not buried:
                self._gone[seq] = TAKEN  # (a dead letter beyond the window, retried elsewhere)
            return None
        if not self._ready or len(self._gone) >= WINDOW:
            # The FIFO case: the window ran dry, so read the next items back and take it
            # there. Or the window was left behind by the log (its head damaged since this
            # process read it, which other processes skip): read it back from the log too.
            self._reread(stop)
            if seq in self._ready:
                if buried:
                    self.bury(seq, stop)
                    return None
                return self.remove(seq, stop)
            if self._spill is None or seq < self._spill[0]:
                return None  # (read back, and not an item: damaged since, or never one)
        self._gone[seq] = BURIED if buried else TAKEN
        self._count -= 1
        return None

    def _reread(self, stop: int | None) -> None:
        """Refill the window from the log, from its first item if it has one."""
        first = self._first()
        if first is not None:
            self._gone.update(self._taken_in_window())
            self._ready.clear()
            self._order.clear()
            self._spill = first
        self._refill(stop)

    def _taken_in_window(self) -> dict[int, int]:
        """Items taken from the middle of the window: they lie beyond a window read back."""
        return {seq: PASSED for seq in self._order if seq not in self._ready and seq not in self.dead}

    def lost_place(self, first_slot: int) -> bool:
        """Whether the place to read the backlog back from lies in a segment before
        ``first_slot``: another process deleted it, having consumed every item in it,
        before this one replayed the TAKEs that say so (the log must then reload)."""
        return self._spill is not None and (self._spill[1] >> SLOT_SHIFT) & SLOT_MASK < first_slot

    def _refill(self, stop: int | None) -> None:
        """Read the ready items beyond the window back from the log, up to WINDOW of them,
        from ``_spill`` to ``stop`` (a location; None: all the log has applied)."""
        seq, loc = self._spill  # type: ignore[misc]
        self._spill = None
        ready, order, gone, dead = self._ready, self._order, self._gone, self.dead
        room = WINDOW - len(ready)
        for found in self._log.read_frames(loc, stop, room):
            # A chunk's items in a few C-speed passes: the window takes the first ``room``
            # of those neither dead nor taken out of order; those passed over up to there
            # have their fate settled, the rest stay noted for the next refill.
            puts = [put for put in found if put[0] >= seq and put[0] not in dead]
            keep = [put for put in puts if put[0] not in gone] if gone else puts
            if len(keep) > room:
                self._spill = keep[room]
                del keep[room:]
            if gone:
                until = self._spill[0] if self._spill is not None else None
                self._pass_over([put for put in puts if put[0] in gone and (until is None or put[0] < until)])
            ready.update(keep)
            order.extend([put[0] for put in keep])
            room -= len(keep)
            if self._spill is not None:
                return
        # The whole backlog is in the window now: what the counts say is exact again
        # (records lost to damage since a checkpoint, or seqs named twice, are gone).
        gone.clear()
        self._count = len(ready)
        self.live_bytes = sum(at & LENGTH_MASK for at in ready.values()) + sum(at & LENGTH_MASK for at in dead.values())

    def _pass_over(self, puts: list[tuple[int, int]]) -> None:
        """Settle the items beyond the window taken out of order, as the window reaches them."""
        for seq, loc in puts:
            fate = self._gone.pop(seq, None)  # (None: a duplicated frame, settled already)
            if fate == BURIED:
                self.dead[seq] = loc
                self._oldest_dead = None
            elif fate == TAKEN:
                self.live_bytes -= loc & LENGTH_MASK

    def oldest(self) -> int | None:
        """Location of the oldest PUT still needed (a ready item or a dead letter), or None.

        Seqs grow along the log (a queue's segments are never compacted), so the
        smallest seq is the earliest place on disk."""
        head = self._first() or self._spill
        if not self.dead:
            return None if head is None else head[1]
        seq = self._oldest_dead
        if seq is None:
            seq = self._oldest_dead = min(self.dead)
        return head[1] if head is not None and head[0] < seq else self.dead[seq]

    def dead_letters(self) -> list[tuple[int, int]]:
        """(seq, location) of every dead letter, by seq: those buried beyond the window
        are found in the log first."""
        if BURIED in self._gone.values():
            self._find_buried()
        return sorted(self.dead.items())

    def _find_buried(self) -> None:
        """Locate the PUTs that DEAD records named beyond the window (never in a FIFO queue)."""
        gone = self._gone
        for puts in self._log.read_frames(self._spill[1], None):  # type: ignore[index]
            for seq, loc in puts:
                if gone.get(seq) == BURIED:
                    del gone[seq]
                    self.dead[seq] = loc
                    self._oldest_dead = None

    # --- checkpoints (checkpoint.py) ----------------------------------------------

    def state(self, first_slot: int) -> QueueState | None:
        """The state for a checkpoint, its locations' slots counted from ``first_slot``
        (the first live segment: positions in CURRENT); None while this process has
        damage to report (a checkpoint would hide it from the next open)."""
        shift = first_slot << SLOT_SHIFT
        first = self._first() or self._spill
        places = ([first[1]] if first else []) + list(self.dead.values())
        if self.damaged or any((loc >> SLOT_SHIFT) & SLOT_MASK < first_slot for loc in places):
            return None  # (a place in a deleted segment: never, as the reclaim keeps the oldest)
        gone = {**self._gone, **self._taken_in_window()}  # (they lie beyond a restored window)
        state = QueueState(
            self._count,
            self.live_bytes,
            self.damaged,
            self.other_frames,
            self._last_put,
            None if first is None else (first[0], first[1] - shift),
            [(seq, loc - shift) for seq, loc in sorted(self.dead.items())],
            sorted(gone.items()) if first is not None else [],
        )
        return state

    def load(self, state: QueueState) -> None:
        """Take a checkpoint's state (decoded and checked: checkpoint.decode_state)."""
        self.reset()
        self._count = state.ready
        self.live_bytes = state.live_bytes
        self.damaged = state.damaged
        self.other_frames = state.other_frames
        self._last_put = state.last_put
        self._spill = state.first
        self.dead.update(state.dead)
        self._gone.update(state.gone)


class DeadLetter:
    """An item moved aside, because it could not be decoded or was delivered max_deliveries
    times: ``id`` (its PUT's seq, the same in every process), ``item`` (decoded on access:
    raises the error for as long as it still cannot be decoded) and ``deliveries`` (how
    often it was handed out)."""

    __slots__ = ("id", "deliveries", "_value", "_serializer")

    def __init__(
        self, seq: int, value: tuple[int, bytes] | CorruptionError, serializer: Serializer, deliveries: int = 1
    ) -> None:
        self.id = seq
        self.deliveries = deliveries
        self._value = value
        self._serializer = serializer

    @property
    def item(self) -> Any:
        if isinstance(self._value, CorruptionError):
            raise self._value
        return self._serializer.decode(*self._value)

    def __repr__(self) -> str:
        return f"<DeadLetter id={self.id} deliveries={self.deliveries}>"
