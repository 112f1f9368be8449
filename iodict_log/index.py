"""The in-memory index: key -> where its live record is, in birthtime order.

A plain ``dict`` already has OrderedDict's order rules: overwriting a key keeps
its place, deleting and re-inserting moves it to the end. Replaying the log in
order therefore rebuilds the birthtime order exactly.

Memory is the limit users hit first (Bitcask: ~91 B per key plus the key), so
each entry's value is one int packing birthtime, segment slot, offset and
length, instead of a tuple of four ints (~2.5x the size).
"""

from __future__ import annotations

import io
import pickle
from typing import Any, Callable, Iterator

from .format import OP_DELETE, OP_SET, Frame

LENGTH_BITS = 32
OFFSET_BITS = 32
SLOT_BITS = 16
LENGTH_MASK = (1 << LENGTH_BITS) - 1
OFFSET_MASK = (1 << OFFSET_BITS) - 1
SLOT_MASK = (1 << SLOT_BITS) - 1
OFFSET_SHIFT = LENGTH_BITS
SLOT_SHIFT = OFFSET_SHIFT + OFFSET_BITS
BIRTH_SHIFT = SLOT_SHIFT + SLOT_BITS

MAX_SLOTS = 1 << SLOT_BITS
MAX_OFFSET = OFFSET_MASK


def pack_location(birthtime_ns: int, slot: int, offset: int, length: int) -> int:
    """One int for a record's place; ``slot`` numbers the segment in the open store."""
    return (((birthtime_ns << SLOT_BITS | slot) << OFFSET_BITS | offset) << LENGTH_BITS) | length


def location_birthtime(loc: int) -> int:
    return loc >> BIRTH_SHIFT


def unpack_location(loc: int) -> tuple[int, int, int]:
    """(slot, offset, length) of a packed location."""
    return (loc >> SLOT_SHIFT) & SLOT_MASK, (loc >> OFFSET_SHIFT) & OFFSET_MASK, loc & LENGTH_MASK


class KeyIndex:
    """Keys in birthtime order, each with its packed location, and live byte count."""

    __slots__ = ("_locations", "_decode_key", "live_bytes", "other_frames", "_newest", "_unordered")

    def __init__(self, decode_key: Callable[[bytes], Any]) -> None:
        self._locations: dict[Any, int] = {}
        self._decode_key = decode_key
        self.live_bytes = 0
        self.other_frames = 0  # data frames that are not the dict's (a queue's), seen since reset
        self._newest = 0  # the highest birthtime applied
        self._unordered = False  # whether apply() broke birthtime order since the last settle()

    # The log feeds every committed frame, in order, through these two.

    def apply(self, frame: Frame, loc: int) -> None:
        if frame.op == OP_SET:
            birth = loc >> BIRTH_SHIFT
            old = self.set(self._decode_key(frame.key), loc)
            # Replay keeps birthtime order only if no record was lost: a new key is
            # always the newest, and an overwrite keeps its key's birthtime. A lost
            # first SET (then an overwrite) or a lost DELETE (then the key set again)
            # breaks that; settle() puts the order right.
            if (birth < self._newest) if old is None else (old >> BIRTH_SHIFT != birth):
                self._unordered = True
            if birth > self._newest:
                self._newest = birth
        elif frame.op == OP_DELETE:
            self.delete(self._decode_key(frame.key))
        else:
            self.other_frames += 1

    def settle(self) -> None:
        """After a scan: if records it applied broke birthtime order, sort by birthtime."""
        if self._unordered:
            self._locations = dict(sorted(self._locations.items(), key=_birthtime_of))
            self._unordered = False

    def __len__(self) -> int:
        return len(self._locations)

    def __contains__(self, key: object) -> bool:
        return key in self._locations

    def __iter__(self) -> Iterator[Any]:
        return iter(self._locations)

    def __reversed__(self) -> Iterator[Any]:
        return reversed(self._locations)

    def get(self, key: Any) -> int | None:
        return self._locations.get(key)

    def set(self, key: Any, loc: int) -> int | None:
        """Point ``key`` at a new record (a new key goes to the end of the order); its old location."""
        old = self._locations.get(key)
        if old is not None:
            self.live_bytes -= old & LENGTH_MASK
        self._locations[key] = loc
        self.live_bytes += loc & LENGTH_MASK
        return old

    def delete(self, key: Any) -> None:
        old = self._locations.pop(key, None)
        if old is not None:
            self.live_bytes -= old & LENGTH_MASK

    def reset(self) -> None:
        """Forget everything: the log is about to replay from the start."""
        self._locations.clear()
        self.live_bytes = 0
        self.other_frames = 0
        self._newest = 0
        self._unordered = False

    # A hint file carries the index as a snapshot (see hintfile.py).

    def snapshot(self) -> bytes:
        return _dump(self._locations, self.live_bytes, self.other_frames)

    def restore(self, snapshot: bytes) -> None:
        """Replace the contents by a snapshot's; ValueError if it is not one."""
        locations, live_bytes, other_frames = _load(snapshot)
        self._locations = locations
        self._newest = next(reversed(locations.values()), 0) >> BIRTH_SHIFT  # (in birthtime order)
        self._unordered = False
        self.live_bytes = live_bytes
        self.other_frames = other_frames

    def rebase(self, snapshot: bytes, first_kept: int, shift: int) -> None:
        """Move onto a compaction's copies: a key whose record lies in a replaced
        segment (slot < ``first_kept``) takes its copy's location from ``snapshot``
        (the compaction's, in the order the keys had then); the others' slots move
        by ``shift``. Order is kept. ValueError, changing nothing, if the snapshot
        does not account for exactly the keys and bytes we have.

        Mostly C-speed dict and set work: since the snapshot, keys were only
        overwritten in place (same birthtime), deleted, or added at the end
        (new, or deleted and set again: a new birthtime).
        """
        copies = _load(snapshot)[0]
        old = self._locations
        moved = dict(copies)
        for key in copies.keys() - old.keys():
            del moved[key]  # deleted since the snapshot
        delta = shift << SLOT_SHIFT
        for key, loc in [(k, loc) for k, loc in old.items() if (loc >> SLOT_SHIFT) & SLOT_MASK >= first_kept]:
            copy = moved.get(key)
            if copy is not None and copy >> BIRTH_SHIFT != loc >> BIRTH_SHIFT:
                del moved[key]  # deleted and set again since: it goes to the end, as it did here
            moved[key] = loc + delta
        if len(moved) != len(old) or sum(loc & LENGTH_MASK for loc in moved.values()) != self.live_bytes:
            raise ValueError("the snapshot does not hold copies of exactly the records indexed here")
        self._locations = moved

    def first(self) -> Any:
        """The oldest key; KeyError when empty."""
        for key in self._locations:
            return key
        raise KeyError("index is empty")

    def items(self) -> Iterator[tuple[Any, int]]:
        return iter(self._locations.items())


def _birthtime_of(item: tuple[Any, int]) -> int:
    return item[1] >> BIRTH_SHIFT


def snapshot_of(locations: dict[Any, int]) -> bytes:
    """The snapshot of a KeyIndex holding ``locations`` (and no queue frames)."""
    return _dump(locations, sum(loc & LENGTH_MASK for loc in locations.values()), 0)


def _load(snapshot: bytes) -> tuple[dict[Any, int], int, int]:
    try:
        locations, live_bytes, other_frames = _DataOnlyUnpickler(io.BytesIO(snapshot)).load()
    except Exception as exc:  # whatever unpickling garbage raises
        raise ValueError(f"not an index snapshot: {exc}") from None
    if type(locations) is not dict or type(live_bytes) is not int or type(other_frames) is not int:
        raise ValueError("not an index snapshot")
    return locations, live_bytes, other_frames


def _dump(locations: dict[Any, int], live_bytes: int, other_frames: int) -> bytes:
    out = io.BytesIO()
    pickler = pickle.Pickler(out, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.fast = True  # no memo: nothing is shared, and dumping is 4x faster without it
    pickler.dump((locations, live_bytes, other_frames))
    return out.getvalue()


class _DataOnlyUnpickler(pickle.Unpickler):
    """Unpickles containers, str, bytes and ints, and refuses to look up any class
    or function: that is all a snapshot holds, and it keeps a crafted hint file
    from running code. (pickle loads a 1M-key dict ~2x faster than any other
    format tried, which is what makes opening from a hint fast.)"""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"an index snapshot holds no {module}.{name}")
