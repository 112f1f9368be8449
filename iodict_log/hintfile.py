"""The hint file, HINT: a snapshot of the dict's index so opening need not scan.

It is only a cache. It is written without fsync and replaced by rename; a
reader checks its CRC and the CRC of every segment byte it covers, so a hint
that is missing, torn, damaged or stale only costs a scan, never wrong
contents. Writers hold the compaction lock (COMPACT.LOCK), so one fixed
temporary name serves.
"""

from __future__ import annotations

import os

from . import fileops
from .fileops import read_file, write_file
from .format import Hint, decode_hint, encode_hint

HINT_NAME = "HINT"
HINT_TMP_NAME = HINT_NAME + ".tmp"


def read_hint(directory: str) -> Hint | None:
    """The store's hint, or None if there is none or it is damaged."""
    try:
        return decode_hint(read_file(os.path.join(directory, HINT_NAME)))
    except FileNotFoundError:
        return None


def stage_hint(directory: str, hint: Hint) -> None:
    """Write ``hint`` under the temporary name (no fsync: readers verify it)."""
    write_file(os.path.join(directory, HINT_TMP_NAME), encode_hint(hint), sync=False)


def publish_hint(directory: str) -> None:
    """Make the staged hint the store's hint."""
    fileops.replace(os.path.join(directory, HINT_TMP_NAME), os.path.join(directory, HINT_NAME))
