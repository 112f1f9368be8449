"""The manifest, file CURRENT: which segments make up the store, in order.

Rolling to a new segment and finishing a compaction each replace CURRENT
atomically (fileops.replace_file), so a crash leaves either the old list or the
new one. Segment files not listed are leftovers of an interrupted step.
"""

from __future__ import annotations

import os

from .fileops import read_file, replace_file
from .format import Manifest, decode_manifest, encode_manifest

MANIFEST_NAME = "CURRENT"


def read_manifest(directory: str) -> Manifest | None:
    """The store's manifest, or None if it has none yet."""
    try:
        data = read_file(os.path.join(directory, MANIFEST_NAME))
    except FileNotFoundError:
        return None
    return decode_manifest(data)


def write_manifest(directory: str, manifest: Manifest) -> None:
    replace_file(os.path.join(directory, MANIFEST_NAME), encode_manifest(manifest))
