"""The hint file, HINT: a snapshot of the dict's index so opening need not scan.

It is only a cache. It is written without fsync and replaced by rename; a
reader checks its CRC and the CRC of every segment byte it covers, so a hint
that is missing, torn, damaged or stale only costs a scan, never wrong
contents. Writers hold the compaction lock (COMPACT.LOCK), so one fixed
temporary name serves.

A hint is also untrusted input (whoever can write the directory can write it):
it is read only as a regular file no larger than the segments it covers could
justify (read_hint's ``max_bytes``), and its payload, the index (encode_index),
is plain fixed-width integers and keys in their stored encoding, each checked
before use: every location inside a covered segment, births in order, keys of
the storable types. Anything wrong means a scan, never an exception out of open.
The container (header, coverage, CRC) is format.py's; docs/FORMAT.md has both.
"""

from __future__ import annotations

import array
import os
import struct
import sys
from itertools import islice, repeat
from operator import add, itemgetter, le, lt
from typing import Any, Sequence

import msgpack

from . import fileops
from .errors import CorruptionError
from .fileops import read_file, write_file
from .format import COUNT, HEADER_SIZE, HINT_COVER, HINT_HEAD, Hint, decode_hint, encode_hint
from .serialize import EXT_TUPLE, MAX_KEY_DEPTH, canonical_key, encode_key

HINT_NAME = "HINT"
HINT_TMP_NAME = HINT_NAME + ".tmp"

INDEX_HEAD = struct.Struct("<QQ")  # count of keys, other (queue) frames
LOCATION_SIZE = 18  # length u32, offset u32, slot u16, birthtime u64: a packed location, little-endian
_KEY_TYPES = {str, bytes, int, tuple}


def hint_bound(segment_bytes: int, segments: int) -> int:
    """The most bytes a valid hint over ``segments`` segments of ``segment_bytes``
    bytes in all can take: per key, its location (18 bytes) and its key are
    fewer bytes than the frame (a header of 36 and the key) that it indexes."""
    return HINT_HEAD.size + segments * HINT_COVER.size + INDEX_HEAD.size + 9 + COUNT.size + segment_bytes


def read_hint(directory: str, max_bytes: int) -> Hint | None:
    """The store's hint, or None if there is none, it is damaged, or it is not a
    regular file of at most ``max_bytes`` (see hint_bound)."""
    try:
        return decode_hint(read_file(os.path.join(directory, HINT_NAME), max_bytes=max_bytes))
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
# is a few C-speed passes over columns, not a loop per key: opening 1M keys
# from a hint costs about what unpickling did.


def encode_index(keys: list[Any], locations: list[int], other_frames: int) -> bytes:
    """The payload for canonical ``keys`` (plain, in order) at packed ``locations``."""
    head = INDEX_HEAD.pack(len(keys), other_frames)
    locs = b"".join(map(int.to_bytes, locations, repeat(LOCATION_SIZE), repeat("little")))
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
        column = _columns(payload[start:keys_at], count)
        lengths, offsets, slots, births = column("I", 0), column("I", 4), column("H", 8), column("Q", 10)
        if count and (min(lengths) < HEADER_SIZE or max(slots) >= len(sizes)):
            raise ValueError("a location outside the covered segments")
        ends = map(add, offsets, lengths)
        if len(sizes) == 1 and count:  # (one pass fewer: the common case of a compacted store)
            if max(ends) > sizes[0]:
                raise ValueError("a location outside the covered segments")
        elif not all(map(le, ends, map(sizes.__getitem__, slots))):
            raise ValueError("a location outside the covered segments")
        if not all(map(lt, births, islice(births, 1, None))):
            raise ValueError("births out of order")
        keys = msgpack.unpackb(
            payload[keys_at:], raw=False, use_list=True, ext_hook=_tuple_key, max_map_len=0, strict_map_key=False
        )
        if type(keys) is not list or len(keys) != count:
            raise ValueError("not one key per location")
        kinds = set(map(type, keys))
        if not kinds <= _KEY_TYPES:
            raise ValueError("a key of a type no key has")
        if tuple in kinds:
            keys = [canonical_key(key) if type(key) is tuple else key for key in keys]
        locations = list(
            map(int.from_bytes, map(itemgetter(0), struct.iter_unpack("18s", payload[start:keys_at])), repeat("little"))
        )
    except Exception as exc:  # whatever a forged payload makes msgpack, struct or a check raise
        raise ValueError(f"not an index snapshot: {exc!r}") from None
    return keys, locations, sum(lengths), other_frames, tuple in kinds


def _columns(locations: bytes, count: int) -> Any:
    """A reader of one field of every location: the field's bytes gathered by
    strided slices (C speed), then read as an array of ints."""

    def column(code: str, at: int) -> list[int]:
        width = struct.calcsize(code)
        gathered = bytearray(width * count)
        for byte in range(width):
            gathered[byte::width] = locations[at + byte :: LOCATION_SIZE]
        ints = array.array(code, gathered)
        if sys.byteorder == "big":
            ints.byteswap()
        return ints.tolist()

    return column


def _tuple_key(code: int, data: bytes, depth: int = 1) -> tuple:
    """A tuple key met in the keys array (ext type 1 holding an array, as
    serialize writes it), decoded one level at a time, at most MAX_KEY_DEPTH
    deep: msgpack's C decoder takes ~32 KB of C stack per nested call, so a
    crafted million-deep key would overflow it long before Python's recursion
    limit (a segfault)."""
    if code != EXT_TUPLE or depth > MAX_KEY_DEPTH:
        raise ValueError("not a tuple key, or nested too deep")
    items = msgpack.unpackb(data, raw=False, ext_hook=msgpack.ExtType, max_map_len=0)
    if type(items) is not list:
        raise ValueError("not a tuple key")
    return tuple([_tuple_key(*item, depth + 1) if type(item) is msgpack.ExtType else item for item in items])
