"""The hint file: opening from it gives exactly what a scan gives, and anything
wrong with it (missing, stale, damaged, foreign, crafted) costs a scan, never
wrong contents. (test_recovery.py also runs every damage test with hints.)"""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import warnings
import zlib

import pytest
from helpers import flip

import iodict_log.log
from iodict_log import CorruptionWarning, IODict
from iodict_log.format import Hint, decode_hint, encode_hint

SMALL = 4096


@pytest.fixture(autouse=True)
def hint_at_every_close(monkeypatch):
    monkeypatch.setattr(iodict_log.log, "HINT_AFTER_RECORDS", 1)


def fill(path, n=300, **kwargs) -> None:
    with IODict(path, segment_bytes=SMALL, auto_compact=False, **kwargs) as d:
        for i in range(n):
            d[f"k{i % 120}"] = ("v", i)
            if i % 7 == 0:
                d.pop(f"k{(i * 3) % 120}", None)
        d.update({(1, "t"): b"bytes", 2**63: None})


def view(path) -> tuple:
    """Everything a user can see of the store, and whether it came from a hint."""
    with IODict(path, segment_bytes=SMALL, auto_compact=False) as d:
        stats = d.stats()
        seen = (
            list(d.items()),
            [d.birthtime(k) for k in d],
            {k: stats[k] for k in ("keys", "live_bytes", "dead_bytes", "last_seq", "corrupt_records")},
        )
        d["next"] = 1  # a write after open gets the next seq and the newest birthtime
        seen += (d.stats()["last_seq"], d.birthtime("next") > max(seen[1]))
        del d["next"]
    return seen, stats["index_from_hint"]


def scanned(path) -> tuple:
    """The view of a copy of the store without its hint."""
    copy = str(path) + "-scan"
    shutil.copytree(path, copy)
    os.unlink(os.path.join(copy, "HINT"))
    seen, from_hint = view(copy)
    assert not from_hint
    return seen


def test_a_closed_store_opens_from_its_hint_with_exactly_what_a_scan_gives(tmp_path):
    path = tmp_path / "s"
    fill(path)
    assert (path / "HINT").exists()
    expected = scanned(path)
    seen, from_hint = view(path)
    assert from_hint and seen == expected


def test_records_appended_after_the_hint_by_another_writer_are_read_too(tmp_path):
    path = tmp_path / "s"
    fill(path)
    iodict_log.log.HINT_AFTER_RECORDS = 10**9  # this writer leaves the old hint in place
    with IODict(path, segment_bytes=SMALL, auto_compact=False) as d:
        for i in range(200):  # rolls over several new segments
            d[f"late{i}"] = i
        del d["k5"]
    expected = scanned(path)
    seen, from_hint = view(path)
    assert from_hint and seen == expected
    assert ("late199", 199) in seen[0] and "k5" not in dict(seen[0])


def test_a_compaction_in_another_process_leaves_a_hint_for_its_new_segments(tmp_path):
    path = tmp_path / "s"
    fill(path)
    code = "import sys; from iodict_log import IODict; IODict(sys.argv[1], segment_bytes=4096).compact()"
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, timeout=60)
    expected = scanned(path)
    seen, from_hint = view(path)
    assert from_hint and seen == expected


def test_an_old_hint_after_a_compaction_is_not_used(tmp_path):
    path = tmp_path / "s"
    fill(path)
    old_hint = (path / "HINT").read_bytes()
    with IODict(path, segment_bytes=SMALL) as d:
        d.compact()
    (path / "HINT").write_bytes(old_hint)
    expected = scanned(path)
    seen, from_hint = view(path)
    assert not from_hint and seen == expected


@pytest.mark.parametrize(
    "damage",
    [
        "empty",
        "cut-short",
        "flipped-bit",
        "random",
        "other-store",
        "other-version",
    ],
)
def test_a_broken_or_foreign_hint_falls_back_to_a_scan(tmp_path, damage):
    path = tmp_path / "s"
    fill(path)
    hint = (path / "HINT").read_bytes()
    if damage == "empty":
        hint = b""
    elif damage == "cut-short":
        hint = hint[: len(hint) // 2]
    elif damage == "flipped-bit":
        hint = flip(hint, len(hint) * 4)
    elif damage == "random":
        hint = os.urandom(len(hint))
    elif damage == "other-store":  # same keys and sizes, another salt
        fill(tmp_path / "other")
        hint = (tmp_path / "other" / "HINT").read_bytes()
    else:
        body = bytearray(hint[:-4])
        body[8] += 1  # the version field
        hint = bytes(body) + zlib.crc32(body).to_bytes(4, "little")
    (path / "HINT").write_bytes(hint)
    expected = scanned(path)
    seen, from_hint = view(path)
    assert not from_hint and seen == expected


def test_a_damaged_record_under_a_valid_hint_is_still_skipped_with_a_warning(tmp_path):
    path = tmp_path / "s"
    fill(path)
    first = sorted(p for p in os.listdir(path) if p.endswith(".seg"))[0]
    data = (path / first).read_bytes()
    (path / first).write_bytes(flip(data, 8 * 100))  # inside the first record
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with IODict(path, segment_bytes=SMALL) as d:
            assert d.stats()["corrupt_records"] == 1 and not d.stats()["index_from_hint"]
    assert any(issubclass(w.category, CorruptionWarning) for w in caught)
    # ...and no hint hides the damage at the next open either
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with IODict(path, segment_bytes=SMALL) as d:
            assert d.stats()["corrupt_records"] == 1
    assert any(issubclass(w.category, CorruptionWarning) for w in caught)


def test_a_crafted_hint_cannot_run_code(tmp_path):
    path = tmp_path / "s"
    fill(path)
    hint = decode_hint((path / "HINT").read_bytes())
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    crafted = hint._replace(payload=pickle.dumps(({"k": Evil()}, 0, 0)))
    (path / "HINT").write_bytes(encode_hint(crafted))  # with a valid checksum
    expected = scanned(path)
    seen, from_hint = view(path)
    assert not from_hint and seen == expected and not marker.exists()


def test_the_hint_format_round_trips_and_rejects_every_flipped_bit():
    hint = Hint(7, 100, 2000, ((4096, 123), (50, 9)), b"payload")
    data = encode_hint(hint)
    assert decode_hint(data) == hint
    assert all(decode_hint(flip(data, bit)) is None for bit in range(len(data) * 8))
    assert all(decode_hint(data[:n]) is None for n in range(len(data)))


def test_no_hint_is_written_for_a_queue_store(tmp_path):
    from iodict_log import DurableQueue

    with DurableQueue(tmp_path / "q") as q:
        for i in range(100):
            q.put(i)
    assert not (tmp_path / "q" / "HINT").exists()
