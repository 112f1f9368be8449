"""The in-memory index: key -> where its live record is, in birthtime order.

A plain ``dict`` already has OrderedDict's order rules: overwriting a key keeps
its place, deleting and re-inserting moves it to the end. Replaying the log in
order therefore rebuilds the birthtime order exactly.

Memory is the limit users hit first (Bitcask: ~91 B per key plus the key), so
each entry's value is one int packing birthtime, segment slot, offset and
length, instead of a tuple of four ints (~2.5x the size).

Tuple keys are held behind a wrapper (``HashedKey``) hashed with SipHash over
their repr: CPython does not randomise the hashes of ints or tuples of ints,
so crafted (int, int) keys with equal hashes would make every dict operation
on them linear (opening and ``update()`` quadratic). str and bytes hashes are
randomised per process already, and an int key's hash class holds at most 9
keys of the storable range, so those stay as they are (no cost on the hot
path). The index's own methods take and return plain keys; ``items()`` and
snapshots carry the index keys (wrappers included) to hand back to it.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, Sequence

from .format import OP_DELETE, OP_SET, Frame
from .hintfile import decode_index, encode_index, index_dict

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


class HashedKey:
    """A tuple key as the index holds it: hashed by the (randomised) SipHash of
    its repr, equal to the wrapper of an equal tuple. The key must be canonical
    (serialize.canonical_key), so equal keys have equal reprs."""

    __slots__ = ("key", "_hash")

    def __init__(self, key: tuple) -> None:
        self.key = key
        self._hash = hash(repr(key))

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return type(other) is HashedKey and self.key == other.key

    def __repr__(self) -> str:
        return f"HashedKey({self.key!r})"


def index_key(key: Any) -> Any:
    """How the index holds the canonical key ``key``."""
    return HashedKey(key) if type(key) is tuple else key


def plain_key(key: Any) -> Any:
    """The user's key for an index key."""
    return key.key if type(key) is HashedKey else key


class KeyIndex:
    """Keys in birthtime order, each with its packed location, and live byte count.

    Methods taking a key accept a plain (canonical) key or an index key."""

    __slots__ = ("_locations", "_decode_key", "live_bytes", "other_frames", "_newest", "_unordered", "_wrapped")

    def __init__(self, decode_key: Callable[[bytes], Any]) -> None:
        self._locations: dict[Any, int] = {}
        self._decode_key = decode_key
        self.live_bytes = 0
        self.other_frames = 0  # data frames that are not the dict's (a queue's), seen since reset
        self._newest = 0  # the highest birthtime applied
        self._unordered = False  # whether apply() broke birthtime order since the last settle()
        self._wrapped = False  # whether any key is a HashedKey (iteration then unwraps)

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
        return (HashedKey(key) if type(key) is tuple else key) in self._locations

    def __iter__(self) -> Iterator[Any]:
        if self._wrapped:
            return map(plain_key, self._locations)
        return iter(self._locations)

    def __reversed__(self) -> Iterator[Any]:
        if self._wrapped:
            return map(plain_key, reversed(self._locations))
        return reversed(self._locations)

    def get(self, key: Any) -> int | None:
        return self._locations.get(HashedKey(key) if type(key) is tuple else key)

    def set(self, key: Any, loc: int) -> int | None:
        """Point ``key`` at a new record (a new key goes to the end of the order); its old location."""
        kind = type(key)
        if kind is tuple:
            key = HashedKey(key)
            self._wrapped = True
        elif kind is HashedKey:
            self._wrapped = True
        old = self._locations.get(key)
        if old is not None:
            self.live_bytes -= old & LENGTH_MASK
        self._locations[key] = loc
        self.live_bytes += loc & LENGTH_MASK
        return old

    def delete(self, key: Any) -> None:
        old = self._locations.pop(HashedKey(key) if type(key) is tuple else key, None)
        if old is not None:
            self.live_bytes -= old & LENGTH_MASK

    def reset(self) -> None:
        """Forget everything: the log is about to replay from the start."""
        self._locations.clear()
        self.live_bytes = 0
        self.other_frames = 0
        self._newest = 0
        self._unordered = False
        self._wrapped = False

    # A hint file carries the index as a snapshot (see hintfile.py).

    def snapshot(self) -> bytes:
        keys = list(map(plain_key, self._locations) if self._wrapped else self._locations)
        return encode_index(keys, list(self._locations.values()), self.other_frames)

    def restore(self, snapshot: bytes, sizes: Sequence[int]) -> None:
        """Replace the contents by a snapshot's, whose locations lie in segments
        of the covered ``sizes``; ValueError, changing nothing, if it is not one."""
        locations, self.live_bytes, self._wrapped, self.other_frames = _load(snapshot, sizes)
        self._locations = locations
        self._newest = next(reversed(locations.values()), 0) >> BIRTH_SHIFT  # (in birthtime order)
        self._unordered = False

    def rebase(self, snapshot: bytes, sizes: Sequence[int], first_kept: int, shift: int) -> None:
        """Move onto a compaction's copies: a key whose record lies in a replaced
        segment (slot < ``first_kept``) takes its copy's location from ``snapshot``
        (the compaction's, in the order the keys had then, its locations in
        segments of the covered ``sizes``); the others' slots move by ``shift``.
        Order is kept. ValueError, changing nothing, if the snapshot does not
        account for exactly the keys and bytes we have.

        Mostly C-speed dict and set work: since the snapshot, keys were only
        overwritten in place (same birthtime), deleted, or added at the end
        (new, or deleted and set again: a new birthtime).
        """
        copies, _, wrapped, _ = _load(snapshot, sizes)
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
        self._wrapped = self._wrapped or wrapped

    def first(self) -> Any:
        """The oldest key; KeyError when empty."""
        for key in self._locations:
            return plain_key(key)
        raise KeyError("index is empty")

    def items(self) -> Iterator[tuple[Any, int]]:
        """(index key, location) pairs in order: the keys to hand back to snapshot_of()."""
        return iter(self._locations.items())


def _birthtime_of(item: tuple[Any, int]) -> int:
    return item[1] >> BIRTH_SHIFT


def snapshot_of(pairs: Iterable[tuple[Any, int]]) -> bytes:
    """The snapshot of a KeyIndex holding the (index key, location)s ``pairs``
    (as items() gives them), in order, and no queue frames."""
    pairs = list(pairs)
    return encode_index([plain_key(key) for key, _ in pairs], [loc for _, loc in pairs], 0)


def _load(snapshot: bytes, sizes: Sequence[int]) -> tuple[dict[Any, int], int, bool, int]:
    """(locations by index key, live bytes, whether any key is wrapped, other frames) of a snapshot."""
    keys, locations, live_bytes, other_frames, wrapped = decode_index(snapshot, sizes)  # (ValueError if unusable)
    if wrapped:
        keys = list(map(index_key, keys))
    index = index_dict(keys, locations)
    if len(index) != len(keys):
        raise ValueError("not an index snapshot: a key appears twice")
    return index, live_bytes, wrapped, other_frames
