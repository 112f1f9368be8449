"""A hint file is used only if every byte it covers is as it was indexed, in every
covered segment, the last one included (written against behaviour, not the hint's
format: damage under a valid hint must make opening scan and report it)."""

from __future__ import annotations

import os

import pytest

import iodict_log
from iodict_log import CorruptionWarning, IODict

SMALL = 4096


def _segments(path) -> list[str]:
    return sorted(os.path.join(path, n) for n in os.listdir(path) if n.endswith(".seg"))


@pytest.mark.parametrize("which", ["first", "last"])
def test_damage_in_a_covered_segment_under_a_valid_hint_is_scanned_and_reported(tmp_path, monkeypatch, which):
    """Guards the hint's coverage check over all covered segments (a check that skips the
    last one, where every close's new records sit, would load the index over the damage)."""
    monkeypatch.setattr(iodict_log.log, "HINT_AFTER_RECORDS", 1)  # a hint at every close
    path = str(tmp_path / "s")
    with IODict(path, segment_bytes=SMALL, auto_compact=False) as d:
        for i in range(200):
            d[f"k{i:03d}"] = f"old-{i:03d}"
        d["victim"] = "old-victim"
    with IODict(path, segment_bytes=SMALL, auto_compact=False) as d:
        d["victim"] = "NEW-VICTIM-VALUE"  # in the last segment, the one the close's hint covers last
        d["after"] = "after"  # (damage to the very last record would pass for a torn tail)
    segments = _segments(path)
    assert len(segments) >= 3, "the hint must cover several segments"
    assert any(n.startswith("HINT") for n in os.listdir(path)), "the close left a hint"
    expected = {f"k{i:03d}": f"old-{i:03d}" for i in range(200)} | {"after": "after"}
    if which == "first":  # damage an older record instead: k000's only value
        seg, needle = segments[0], b"old-000"
        del expected["k000"]
    else:
        seg, needle = segments[-1], b"NEW-VICTIM-VALUE"
    with open(seg, "r+b") as f:
        data = f.read()
        at = data.rindex(needle)
        f.seek(at)
        f.write(b"X")  # same length: the record's header still holds, its data CRC does not
    with pytest.warns(CorruptionWarning), IODict(path, segment_bytes=SMALL, auto_compact=False) as d:
        assert d.stats()["corrupt_records"] >= 1  # opening scanned the damaged segment and counted it
        assert d.get("victim") == ("old-victim" if which == "last" else "NEW-VICTIM-VALUE")
        for key, value in expected.items():
            assert d[key] == value
        assert ("k000" in d) == (which == "last")
