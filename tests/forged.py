"""Forging a store's files as FORMAT.md specifies them, the way anyone who can
write the directory could: the salt read from a segment header, frames built
with encode_frame (both CRCs hold), appended to or spliced into a segment, and
CURRENT rewritten. For tests of what a reader does with hostile but valid bytes.
"""

from __future__ import annotations

import os

from iodict_log.format import OP_SET, SEGMENT_HEADER_SIZE, Manifest, decode_segment_header, encode_frame
from iodict_log.manifest import MANIFEST_NAME, read_manifest, write_manifest
from iodict_log.segment import segment_name


def segment_paths(store: str) -> list[str]:
    """The live segments of ``store``, in CURRENT's order."""
    manifest = read_manifest(str(store))
    assert manifest is not None, f"{store} has no {MANIFEST_NAME}"
    return [os.path.join(store, segment_name(n)) for n in manifest.segments]


def salt_of(segment: str) -> int:
    """The salt in a segment's header: all a forger needs for frames that pass both CRCs."""
    with open(segment, "rb") as f:
        return decode_segment_header(f.read(SEGMENT_HEADER_SIZE))[1]


def frame(
    segment: str, key: bytes, value: bytes = b"", *, op: int = OP_SET, seq: int, birthtime: int = 1, flags: int = 0
) -> bytes:
    """A frame valid under ``segment``'s salt."""
    return encode_frame(op, flags, seq, birthtime, key, value, salt=salt_of(segment))


def append(segment: str, *frames: bytes) -> int:
    """Append ``frames`` to ``segment``; the offset the first one landed at."""
    with open(segment, "ab") as f:
        offset = f.tell()
        f.write(b"".join(frames))
    return offset


def splice(segment: str, offset: int, data: bytes, *, replacing: int = 0) -> None:
    """Put ``data`` at ``offset`` of ``segment`` in place of ``replacing`` bytes there."""
    with open(segment, "rb") as f:
        old = f.read()
    with open(segment, "wb") as f:
        f.write(old[:offset] + data + old[offset + replacing :])


def rewrite_current(store: str, **fields: object) -> Manifest:
    """Replace CURRENT with its manifest with ``fields`` changed (no limits checked)."""
    manifest = read_manifest(str(store))
    assert manifest is not None
    manifest = manifest._replace(**fields)
    write_manifest(str(store), manifest)
    return manifest


def forge(store, *records: tuple[int, bytes, bytes], first_seq: int = 10_000) -> None:
    """Append checksum-valid frames (op, key, value), seqs from ``first_seq``, made with the
    store's salt, to its last segment."""
    last = segment_paths(str(store))[-1]
    frames = [
        frame(last, key, value, op=op, seq=first_seq + n, birthtime=2**62 + n)
        for n, (op, key, value) in enumerate(records)
    ]
    append(last, *frames)
