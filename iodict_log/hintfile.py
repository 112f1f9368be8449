"""The hint file, HINT: a snapshot of the dict's index so opening need not scan.

It is only a cache. It is written without fsync and replaced by rename; a
reader checks its CRC and the CRC of every segment byte it covers, so a hint
that is missing, torn, damaged or stale only costs a scan, never wrong
contents. Writers hold the compaction lock (COMPACT.LOCK), so one fixed
temporary name serves.

A hint is also untrusted input (whoever can write the directory can write it):
it is read only as a regular file no larger than the segments it covers could
justify (hint_bound), and its payload, the index (encode_index),
is plain fixed-width integers and keys in their stored encoding, each checked
before use: every location inside a covered segment, births in order, keys of
the storable types. Anything wrong means a scan, never an exception out of open.
The container (header, coverage, CRC) is format.py's; docs/FORMAT.md has both.
"""

from __future__ import annotations

import os
import struct
from itertools import islice, repeat
from operator import itemgetter, le, lt, or_
from typing import Any, Literal, Sequence

import msgpack

from . import fileops
from .errors import CorruptionError
from .fileops import read_file, write_file
from .format import COUNT, HEADER_SIZE, HINT_COVER, HINT_HEAD, Hint, decode_hint, encode_hint
from .native import core
from .serialize import canonical_key, encode_key, unpack

HINT_NAME = "HINT"
HINT_TMP_NAME = HINT_NAME + ".tmp"

INDEX_HEAD = struct.Struct("<QQ")  # count of keys, other (queue) frames
LOCATION_SIZE = 18  # length u32, offset u32, slot u16, birthtime u64: a packed location, little-endian
_KEY_TYPES = {str, bytes, int, tuple}
_LITTLE: Literal["little"] = "little"
_BELOW_BIRTH = (1 << 80) - 1  # a packed location's bits under its birthtime (its bytes 0-9: index.BIRTH_SHIFT)


def hint_bound(segment_bytes: int, segments: int) -> int:
    """The most bytes a valid hint over ``segments`` segments of ``segment_bytes``
    bytes in all can take: per key, its location (18 bytes) and its key are
    fewer bytes than the frame (a header of 36 and the key) that it indexes."""
    return HINT_HEAD.size + segments * HINT_COVER.size + INDEX_HEAD.size + 9 + COUNT.size + segment_bytes


def read_hint(directory: str, segment_bytes: int, segments: int) -> Hint | None:
    """The store's hint, or None if there is none, it is damaged, or it is not a
    regular file that ``segments`` segments of ``segment_bytes`` bytes in all
    could justify (hint_bound)."""
    try:
        return decode_hint(read_file(os.path.join(directory, HINT_NAME), hint_bound(segment_bytes, segments)))
    except (OSError, CorruptionError):  # missing, a link, a FIFO, a directory, too big: scan
        return None


def stage_hint(directory: str, hint: Hint) -> None:
    """Write ``hint`` under the temporary name (no fsync: readers verify it)."""
    write_file(os.path.join(directory, HINT_TMP_NAME), encode_hint(hint), sync=False)


def publish_hint(directory: str) -> None:
    """Make the staged hint the store's hint."""
    fileops.replace(os.path.join(directory, HINT_TMP_NAME), os.path.join(directory, HINT_NAME))


# --- the index in a hint's payload ---------------------------------------------------
# INDEX_HEAD, then count locations of LOCATION_SIZE bytes, then the keys as one
# msgpack array whose elements are exactly the keys' encode_key bytes. Decoding
# is a few C-speed passes over columns, not a loop per key: opening 1M keys from
# a hint costs about 1.5 times what unpickling the index did, and runs no code;
# with the C core (decode_locations and index_dict in iodict_log/_format.c), about 1.0.


def encode_index(keys: list[Any], locations: list[int], other_frames: int) -> bytes:
    """The payload for canonical ``keys`` (plain, in order) at packed ``locations``."""
    head = INDEX_HEAD.pack(len(keys), other_frames)
    locs = b"".join(map(int.to_bytes, locations, repeat(LOCATION_SIZE), repeat(_LITTLE)))
    if tuple in set(map(type, keys)):
        encoded = b"".join([msgpack.Packer().pack_array_header(len(keys)), *map(encode_key, keys)])
    else:  # (str, bytes and int encode as plain msgpack: one C call for all)
        encoded = msgpack.packb(keys, use_bin_type=True, strict_types=True)
    return b"".join((head, locs, encoded))


def decode_index(payload: bytes, sizes: Sequence[int]) -> tuple[list[Any], list[int], int, int, bool]:
    """(keys, packed locations, their total length, other frames, whether any key
    is a tuple) of a payload whose locations must lie in segments of the covered
    ``sizes``; ValueError for anything else."""
    try:
        count, other_frames = INDEX_HEAD.unpack_from(payload)
        start = INDEX_HEAD.size
        keys_at = start + count * LOCATION_SIZE
        if keys_at > len(payload):
            raise ValueError("cut short")
        locations, live_bytes = decode_locations(payload[start:keys_at], sizes)
        keys = unpack(payload[keys_at:])  # (tuples decoded with bounded depth; canonical_key bounds them more)
        if type(keys) is not list or len(keys) != count:
            raise ValueError("not one key per location")
        kinds = set(map(type, keys))
        if not kinds <= _KEY_TYPES:
            raise ValueError("a key of a type no key has")
        if tuple in kinds:
            keys = [canonical_key(key) if type(key) is tuple else key for key in keys]
    except Exception as exc:  # whatever a forged payload makes msgpack, struct or a check raise
        raise ValueError(f"not an index snapshot: {exc!r}") from None
    return keys, locations, live_bytes, other_frames, tuple in kinds


def decode_locations(raw: bytes, sizes: Sequence[int]) -> tuple[list[int], int]:
    """The packed locations in ``raw`` (LOCATION_SIZE bytes each) and their total length;
    ValueError unless every one is at least a frame header long and lies in a covered
    segment, within its covered size, and births strictly increase."""
    count, rest = divmod(len(raw), LOCATION_SIZE)
    if rest:
        raise ValueError("not a whole number of locations")
    live_bytes = _check_locations(raw, count, sizes)
    locations = list(map(int.from_bytes, map(itemgetter(0), struct.iter_unpack("18s", raw)), repeat(_LITTLE)))
    # Births strictly increase: each location with all its bits below the birth set
    # is below the next one exactly when its birth is.
    if not all(map(lt, map(or_, locations, repeat(_BELOW_BIRTH)), islice(locations, 1, None))):
        raise ValueError("births out of order")
    return locations, live_bytes


def index_dict(keys: list[Any], locations: list[int]) -> dict[Any, int]:
    """dict(zip(keys, locations)): the index of a snapshot (the C twin builds it presized)."""
    return dict(zip(keys, locations))


# The checks run on all locations at once, not in a loop per key: a field's bytes
# are gathered by strided slices (C speed), then read by struct in one call; the
# bound check of each location's end against its slot's covered size runs on
# lanes of big ints, where "a <= b in every lane" is one subtraction, with a guard
# bit per lane that survives exactly where it holds.

_LANE = 8  # bytes per lane for ends and limits (all below 2**35)
_GUARD = 40  # the guard bit of such a lane


def _check_locations(raw: bytes, count: int, sizes: Sequence[int]) -> int:
    """ValueError unless every location is at least a frame header long, lies in
    a covered segment and within its covered size; the locations' total length."""
    if not count:
        return 0
    length_of = struct.unpack(f"<{count}I", _gather(raw, 0, 4, 4, count))
    if min(length_of) < HEADER_SIZE:
        raise ValueError("a location shorter than a frame header")
    ends = int.from_bytes(_gather(raw, 0, 4, _LANE, count), "little")
    ends += int.from_bytes(_gather(raw, 4, 4, _LANE, count), "little")  # (lanes never carry: each < 2**33)
    if len(sizes) <= 256:
        # Each lane's limit is its slot's covered size (0 for a slot not covered, which
        # no location of a header's length fits in), looked up byte by byte with translate().
        if raw[9::LOCATION_SIZE].count(0) != count:
            raise ValueError("a location outside the covered segments")  # (a slot over 255)
        limit_of = [min(size, 2**34) for size in sizes] + [0] * (256 - len(sizes))
        limits = bytearray(_LANE * count)
        slots = raw[8::LOCATION_SIZE]
        for byte in range(_LANE):
            limits[byte::_LANE] = slots.translate(bytes(limit >> (8 * byte) & 0xFF for limit in limit_of))
        guards = int.from_bytes((b"\x01" + bytes(_LANE - 1)) * count, "little") << _GUARD
        if (int.from_bytes(limits, "little") + guards - ends) & guards != guards:
            raise ValueError("a location outside the covered segments")
    else:  # (over 256 segments: one limit per key, looked up by map)
        end_of = struct.unpack(f"<{count}Q", ends.to_bytes(_LANE * count, "little"))
        slot_of = struct.unpack(f"<{count}H", _gather(raw, 8, 2, 2, count))
        if max(slot_of) >= len(sizes) or not all(map(le, end_of, map(sizes.__getitem__, slot_of))):
            raise ValueError("a location outside the covered segments")
    return sum(length_of)


def _gather(raw: bytes, at: int, width: int, lane: int, count: int) -> bytearray:
    """Bytes ``at`` to ``at + width`` of every location, each in a zeroed lane of ``lane`` bytes."""
    lanes = bytearray(lane * count)
    for byte in range(width):
        lanes[byte::lane] = raw[at + byte :: LOCATION_SIZE]
    return lanes


# The C core's twins (iodict_log/_format.c) replace these where it is built.
py_decode_locations, py_index_dict = decode_locations, index_dict
if core is not None:
    decode_locations, index_dict = core.decode_locations, core.index_dict
