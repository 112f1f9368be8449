"""The hint file: opening from it gives exactly what a scan gives, and anything
wrong with it (missing, stale, damaged, foreign, crafted) costs a scan, never
wrong contents. (test_recovery.py also runs every damage test with hints.)"""

from __future__ import annotations

import os
import pickle
import shutil
import struct
import subprocess
import sys
import warnings
import zlib

import msgpack
import pytest
from helpers import flip

import iodict_log.hintfile
import iodict_log.log
from iodict_log import CorruptionWarning, IODict, format
from iodict_log.format import HEADER_SIZE, Hint, decode_hint, encode_hint
from iodict_log.hintfile import INDEX_HEAD, decode_index, encode_index, hint_bound
from iodict_log.index import KeyIndex, pack_location
from iodict_log.serialize import decode_key, encode_key

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


def test_a_hint_of_the_old_pickle_format_is_not_used_and_runs_no_code(tmp_path):
    # guards 21.3: no pickle is ever loaded from a hint, whatever its header says
    path = tmp_path / "s"
    fill(path)
    hint = decode_hint((path / "HINT").read_bytes())
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    expected = scanned(path)
    for n, magic in enumerate((format.HINT_MAGIC, b"\x89IODHNT\n")):  # the new header and the old one
        copy = tmp_path / f"copy{n}"
        shutil.copytree(path, copy)
        body = magic + encode_hint(hint._replace(payload=pickle.dumps(({"k": Evil()}, 0, 0))))[8:-4]
        (copy / "HINT").write_bytes(body + zlib.crc32(body).to_bytes(4, "little"))
        seen, from_hint = view(copy)
        assert not from_hint and seen == expected and not marker.exists()


def test_a_pickle_hint_with_a_million_deep_key_does_not_crash_opening(tmp_path):
    # guards 21.3 as reported: unpickling it built the dict, whose hashing of the key overflowed the C stack
    path = tmp_path / "s"
    fill(path)
    deep = b"\x80\x05}" + b")" + b"\x85" * 1_000_000 + b"K\x01sK\x00K\x00\x87."  # ({((((),),...): 1}, 0, 0)
    for magic in (format.HINT_MAGIC, b"\x89IODHNT\n"):
        body = magic + encode_hint(decode_hint((path / "HINT").read_bytes())._replace(payload=deep))[8:-4]
        (path / "HINT").write_bytes(body + zlib.crc32(body).to_bytes(4, "little"))
        code = "import sys, iodict_log; d = iodict_log.IODict(sys.argv[1]); print(len(d) > 0)"
        done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
        assert (done.returncode, done.stdout) == (0, "True\n"), done.stderr[-2000:]


def real_hint(path) -> tuple:
    """(the store's hint, its keys, their packed locations) as the last close wrote them."""
    hint = decode_hint((path / "HINT").read_bytes())
    keys, locations, *_ = decode_index(hint.payload, [size for size, _ in hint.coverage])
    return hint, keys, locations


def forge(path, hint, payload: bytes) -> None:
    """Replace the store's hint by one with ``payload``, with every checksum right."""
    (path / "HINT").write_bytes(encode_hint(hint._replace(payload=payload)))


def raw_payload(locations: list[bytes], keys: bytes, count: int | None = None) -> bytes:
    """A payload from raw parts: 18-byte locations and the keys' msgpack array."""
    return INDEX_HEAD.pack(len(locations) if count is None else count, 0) + b"".join(locations) + keys


def key_array(keys: list) -> bytes:
    """The keys section: a msgpack array of the keys' encode_key bytes."""
    return msgpack.Packer().pack_array_header(len(keys)) + b"".join(map(encode_key, keys))


def packed(length: int, offset: int, slot: int, birth: int) -> bytes:
    return struct.pack("<IIHQ", length, offset, slot, birth)


def forgeries(hint, keys, locations) -> dict:
    """Payloads that are valid but for one thing each (21.5 and its relatives)."""
    n = len(keys)
    size = hint.coverage[0][0]
    fields = [struct.unpack("<IIHQ", loc.to_bytes(18, "little")) for loc in locations]
    good_locs = [packed(*f) for f in fields]
    good_keys = key_array(keys)
    one_key = key_array(keys[:1])
    length, offset, _, birth = fields[0]
    out = {
        "slot with no segment": [packed(length, offset, len(hint.coverage), birth)],
        "slot 65535": [packed(length, offset, 2**16 - 1, birth)],
        "length 2**32-1": [packed(2**32 - 1, offset, 0, birth)],
        "past the covered size": [packed(length, size - length + 1, 0, birth)],
        "offset 2**32-1": [packed(length, 2**32 - 1, 0, birth)],
        "shorter than a frame header": [packed(HEADER_SIZE - 1, offset, 0, birth)],
        "zero length": [packed(0, offset, 0, birth)],
    }
    payloads = {name: raw_payload(locs, one_key) for name, locs in out.items()}
    payloads["births out of order"] = raw_payload(good_locs[1:2] + good_locs[:1] + good_locs[2:], good_keys)
    payloads["a birth repeated"] = raw_payload([good_locs[0], *good_locs[:-1]], good_keys)
    payloads["a key twice"] = raw_payload(good_locs[:2], key_array([keys[0], keys[0]]))
    payloads["fewer keys than locations"] = raw_payload(good_locs, key_array(keys[:-1]))
    payloads["more keys than locations"] = raw_payload(good_locs[:-1], good_keys)
    payloads["count past the end"] = raw_payload(good_locs, good_keys, count=n + 1000)
    payloads["count 2**64-1"] = raw_payload(good_locs, good_keys, count=2**64 - 1)
    payloads["trailing byte"] = raw_payload(good_locs, good_keys + b"\x00")
    payloads["cut short"] = raw_payload(good_locs, good_keys[:-1])
    payloads["no header"] = b"\x00" * 7
    for name, key in {
        "float key": 1.5,
        "bool key": True,
        "None key": None,
        "list key": [1],
        "map key": {1: 2},
        "unknown ext type": msgpack.ExtType(9, b"x"),
    }.items():
        packed_key = msgpack.packb([key], use_bin_type=True)
        payloads[name] = raw_payload(good_locs[:1], packed_key)
    payloads["bad UTF-8"] = raw_payload(good_locs[:1], b"\x91\xa2\xff\xfe")
    payloads["not an array"] = raw_payload(good_locs[:1], encode_key(keys[0]))
    payloads["deep list"] = raw_payload(good_locs[:1], b"\x91" * 100_000 + b"\x00")
    return payloads


def test_every_forged_payload_means_a_scan_never_an_error(tmp_path):
    # guards 21.5: a str or None location (TypeError), a slot with no segment
    # (IndexError on get), a length of 2**32-1 (4 GiB per get) and their relatives
    path = tmp_path / "s"
    fill(path, n=60)  # one segment: every location in slot 0
    hint, keys, locations = real_hint(path)
    assert len(hint.coverage) == 1 and len(keys) > 3
    expected = scanned(path)
    for n, (name, payload) in enumerate([*forgeries(hint, keys, locations).items(), ("none", hint.payload)]):
        if name != "none":
            with pytest.raises(ValueError):
                KeyIndex(decode_key).restore(payload, [size for size, _ in hint.coverage])
        copy = tmp_path / f"copy{n}"
        shutil.copytree(path, copy)
        forge(copy, hint, payload)
        seen, from_hint = view(copy)
        assert seen == expected and from_hint == (name == "none"), name  # (the untouched payload is used)


def test_a_hint_with_a_key_nested_a_million_deep_means_a_scan_not_a_crash(tmp_path):
    # guards 21.3: a 1,000,000-deep nested tuple key segfaulted opening
    path = tmp_path / "s"
    with IODict(path, auto_compact=False) as d:
        d["big"] = os.urandom(8 * 2**20)  # room for the hint's 7 MB key under the size bound
    hint, keys, locations = real_hint(path)
    level = b"\xc9\x00\x00\x00\x01\x01\x90"  # (): ext 1 (a tuple) of an empty array, as serialize writes it
    parts, size = [], len(level)
    for _ in range(1_000_000):  # each level: ext 1 holding a 1-array of the level inside
        parts.append(b"\xc9" + struct.pack(">I", 1 + size) + b"\x01\x91")
        size += 7
    deep = b"\x91" + b"".join(reversed(parts)) + level  # the keys array: that one key
    forge(path, hint, raw_payload([locations[0].to_bytes(18, "little")], deep))
    code = "import sys, iodict_log; d = iodict_log.IODict(sys.argv[1]); print(len(d), d.stats()['index_from_hint'])"
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["1", "False"]


@pytest.mark.parametrize("kind", ["symlink", "dev-zero", "directory", "fifo", "sparse-16GiB", "oversized"])
def test_a_hint_that_is_not_a_small_regular_file_means_a_scan(tmp_path, monkeypatch, kind):
    # guards 21.10: a sparse 16 GiB HINT or one linked to /dev/zero (MemoryError), a directory (IsADirectoryError)
    path = tmp_path / "s"
    fill(path)
    hint = path / "HINT"
    good = hint.read_bytes()
    expected = scanned(path)
    hint.unlink()
    if kind == "symlink":  # even to a valid hint
        (tmp_path / "elsewhere").write_bytes(good)
        hint.symlink_to(tmp_path / "elsewhere")
    elif kind == "dev-zero":
        hint.symlink_to("/dev/zero")
    elif kind == "directory":
        hint.mkdir()
    elif kind == "fifo":
        os.mkfifo(hint)
    elif kind == "sparse-16GiB":
        with open(hint, "wb") as f:
            f.truncate(16 * 2**30)
    else:  # padded past what the segments could justify: not even read
        segments = [p.stat().st_size for p in path.iterdir() if p.name.endswith(".seg")]
        padded = decode_hint(good)._replace(payload=decode_hint(good).payload + bytes(sum(segments)))
        hint.write_bytes(encode_hint(padded))
        reads = []
        read_file = iodict_log.hintfile.read_file

        def recording(name, max_bytes=None):
            reads.append((os.path.basename(name), max_bytes))
            return read_file(name, max_bytes)

        monkeypatch.setattr(iodict_log.hintfile, "read_file", recording)
    seen, from_hint = view(path)
    assert not from_hint and seen == expected
    if kind == "oversized":
        bound = hint_bound(sum(segments), len(segments))
        assert reads[0] == ("HINT", bound) and bound < len(encode_hint(padded))  # (refused by read_file, unread)


def test_the_index_payload_round_trips_every_kind_of_key():
    keys = ["s", b"b", 0, -(2**63), 2**64 - 1, (), (1, ("a", b"b", (2**64 - 1,)))]
    locations = [pack_location(10 + i, i % 2, 20 + 100 * i, 36 + i) for i in range(len(keys))]
    payload = encode_index(keys, locations, 3)
    assert decode_index(payload, [10**6, 10**6]) == (keys, locations, sum(36 + i for i in range(len(keys))), 3, True)
    with pytest.raises(ValueError):
        decode_index(payload, [10**6])  # a location in slot 1, which is not covered


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
