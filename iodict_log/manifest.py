"""The manifest, file CURRENT: which segments make up the store, in order.

Rolling to a new segment and finishing a compaction each replace CURRENT
atomically (fileops.replace_file), so a crash leaves either the old list or the
new one. Segment files not listed are leftovers of an interrupted step.

Reading checks every field against the limits of FORMAT.md before anything
uses it: a CURRENT outside them is damage (CorruptionError naming the file),
never a wrapped slot number or a file name outside the ten-digit pattern.
"""

from __future__ import annotations

import os

from .errors import CorruptionError, FormatVersionError
from .fileops import read_file, replace_file
from .format import (
    FORMAT_VERSION,
    MANIFEST_HEAD,
    MAX_SEQ,
    STORE_DICT,
    STORE_QUEUE,
    Manifest,
    decode_manifest,
    encode_manifest,
)
from .index import MAX_SLOTS
from .segment import MAX_NUMBER

MANIFEST_NAME = "CURRENT"
# At most this many live segments: every one needs a slot in a packed location.
MAX_SEGMENTS = MAX_SLOTS - 1
_MAX_BYTES = 2**20  # (a CURRENT of MAX_SEGMENTS is ~512 KiB: anything far larger is not read at all)


def read_manifest(directory: str) -> Manifest | None:
    """The store's manifest, or None if it has none yet."""
    path = os.path.join(directory, MANIFEST_NAME)
    try:
        data = read_file(path, max_bytes=_MAX_BYTES)
    except FileNotFoundError:
        return None
    try:
        manifest = decode_manifest(data)
    except FormatVersionError as exc:
        raise FormatVersionError(exc.version, path) from None
    except CorruptionError as exc:
        raise CorruptionError(f"{path}: {exc}") from None
    problem = _beyond_limits(manifest)
    if problem:
        raise CorruptionError(f"{path}: {problem}; see `iodict-log repair`")
    return manifest


def _beyond_limits(m: Manifest) -> str | None:
    if m.kind not in (0, STORE_DICT, STORE_QUEUE):
        return f"unknown store kind {m.kind}"
    if not m.segments:
        return "lists no segment"
    if len(m.segments) > MAX_SEGMENTS:
        return f"lists {len(m.segments)} segments, more than the {MAX_SEGMENTS} a store may have"
    if max(m.segments) > MAX_NUMBER:
        return f"lists segment number {max(m.segments)}, beyond the ten-digit names"
    if len(set(m.segments)) != len(m.segments):
        return "lists a segment twice"
    if max(m.seq_floor, m.birthtime_floor) > MAX_SEQ:
        return "holds a sequence number or birthtime floor of 2**63 or more"
    return None


def write_manifest(directory: str, manifest: Manifest) -> None:
    replace_file(os.path.join(directory, MANIFEST_NAME), encode_manifest(manifest))


def upgrade_manifest(directory: str) -> bool:
    """Rewrite CURRENT in this version's format if an older one wrote it; whether it did.

    For a writer, with the store's file lock held, before its first append: once
    it holds values only this version writes (valuetypes.py), an older reader
    refuses the store (FormatVersionError) instead of misreading them. The
    contents stay as they are, so other processes see no change of CURRENT.
    """
    manifest = read_manifest(directory)
    path = os.path.join(directory, MANIFEST_NAME)
    if manifest is None or MANIFEST_HEAD.unpack_from(read_file(path, max_bytes=_MAX_BYTES))[1] == FORMAT_VERSION:
        return False
    write_manifest(directory, manifest)
    return True
