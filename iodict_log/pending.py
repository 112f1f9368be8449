"""The queue's index, rebuilt from the log: ready items and dead letters.

A log consumer like ``KeyIndex``: every process replays PUT, TAKE and DEAD
frames into ``PendingItems``, in log order, which is FIFO order. A TAKE names
the seq of the PUT it consumed and a DEAD the seq of the PUT it moved to the
dead letters, so each costs one dictionary lookup whatever it names.
``oldest()`` is the earliest PUT still needed, before which every segment holds
only consumed items (what ``DurableQueue`` reclaims).
"""

from __future__ import annotations

import collections
import warnings
from typing import Any

from .errors import CorruptionError, CorruptionWarning
from .format import OP_DEAD, OP_PUT, OP_TAKE, SEQ, Frame
from .index import LENGTH_MASK
from .serialize import Serializer


class PendingItems:
    """The queue's state as the log says: ready items and dead letters. A log consumer.

    Ready items are PUTs neither taken nor dead, oldest first; dead letters are
    PUTs a DEAD frame moved aside. Both map seq -> location, so a TAKE costs
    one lookup whatever it names (one naming a PUT long gone costs nothing).
    ``_order`` keeps the FIFO order of the ready seqs; a seq taken from the
    middle stays in it until it reaches the front and is dropped there.
    """

    __slots__ = ("_ready", "_order", "dead", "_oldest_dead", "live_bytes", "damaged", "other_frames", "where")

    def __init__(self, where: str = "") -> None:
        self.where = where  # the store's path, for warnings
        self._ready: dict[int, int] = {}
        self._order: collections.deque[int] = collections.deque()
        self.dead: dict[int, int] = {}  # seq -> location of the dead letters' PUTs
        self._oldest_dead: int | None = None  # min(dead), or None when not known yet
        self.live_bytes = 0  # bytes of the PUTs still needed: ready items and dead letters
        self.damaged = 0  # queue frames that make no sense (a key that is not a seq), since reset
        self.other_frames = 0  # data frames that are not the queue's (a dict's), since reset

    def __len__(self) -> int:
        return len(self._ready)

    def reset(self) -> None:
        self._ready.clear()
        self._order.clear()
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
                self.remove(SEQ.unpack(frame.key)[0])
            else:
                self.bury(SEQ.unpack(frame.key)[0])
        else:
            self.other_frames += 1

    def settle(self) -> None:
        pass  # (items are in seq order whatever was skipped)

    def add(self, seq: int, loc: int) -> None:
        if seq in self._ready or seq in self.dead:
            return  # (a duplicated frame: one item)
        self._ready[seq] = loc
        self._order.append(seq)
        self.live_bytes += loc & LENGTH_MASK

    def head(self) -> tuple[int, int] | None:
        """(seq, location) of the oldest ready item, or None."""
        order, ready = self._order, self._ready
        while order:
            seq = order[0]
            loc = ready.get(seq)
            if loc is not None:
                return seq, loc
            order.popleft()  # taken or dead since: forget it here too
        return None

    def remove(self, seq: int) -> None:
        """Forget the PUT with this seq, ready or dead (nothing if it is neither: a PUT
        in a segment deleted as consumed, or one that never was)."""
        loc = self._ready.pop(seq, None)
        if loc is not None:
            if self._order[0] == seq:
                self._order.popleft()  # (the common case: the head)
        else:
            loc = self.dead.pop(seq, None)
            if loc is None:
                return
            if seq == self._oldest_dead:
                self._oldest_dead = None
        self.live_bytes -= loc & LENGTH_MASK

    def bury(self, seq: int) -> None:
        """Move the ready item ``seq`` to the dead letters (nothing if it is not ready)."""
        loc = self._ready.pop(seq, None)
        if loc is None:
            return
        self.dead[seq] = loc
        if self._oldest_dead is not None and seq < self._oldest_dead:
            self._oldest_dead = seq

    def oldest(self) -> int | None:
        """Location of the oldest PUT still needed (a ready item or a dead letter), or None.

        Seqs grow along the log (a queue's segments are never compacted), so the
        smallest seq is the earliest place on disk."""
        head = self.head()
        if not self.dead:
            return None if head is None else head[1]
        seq = self._oldest_dead
        if seq is None:
            seq = self._oldest_dead = min(self.dead)
        return head[1] if head is not None and head[0] < seq else self.dead[seq]


class DeadLetter:
    """An item moved aside because it could not be decoded: ``id`` (its PUT's seq, the
    same in every process), ``item`` (decoded on access: raises the error for as long as
    it still cannot be decoded) and ``deliveries`` (how often it was handed out: 1)."""

    __slots__ = ("id", "deliveries", "_value", "_serializer")

    def __init__(self, seq: int, value: tuple[int, bytes] | CorruptionError, serializer: Serializer) -> None:
        self.id = seq
        self.deliveries = 1
        self._value = value
        self._serializer = serializer

    @property
    def item(self) -> Any:
        if isinstance(self._value, CorruptionError):
            raise self._value
        return self._serializer.decode(*self._value)

    def __repr__(self) -> str:
        return f"<DeadLetter id={self.id} deliveries={self.deliveries}>"
