#!/usr/bin/env python3
"""A coverage-guided fuzz target for iodict_log's decoders, for runs longer than the test suite.

    pip install ".[test]" atheris    # (the checks come from tests/test_fuzz.py)
    python tools/fuzz_atheris.py -max_total_time=600          # libFuzzer flags pass through
    python tools/fuzz_atheris.py -max_total_time=600 corpus/  # keep the inputs it finds
    python tools/fuzz_atheris.py crash-<sha1>                 # replay a crash file
    python tools/fuzz_atheris.py --random 20000               # no atheris: random inputs only
    FUZZ_MODE=4 python tools/fuzz_atheris.py -max_total_time=60  # one mode only (below)

It fuzzes what tests/test_fuzz.py fuzzes with hypothesis, with the same assertions:
``decode_frame``, ``Scan`` (``complete`` False and True), ``decode_segment_header``,
``decode_manifest`` and ``stored_value`` from iodict_log/format.py, ``decode_key`` and
the msgpack ``Serializer`` from serialize.py, and a real store holding forged frames.
The first byte of an input picks how the rest is read:

0. raw bytes, given to every decoder as they are;
1. a recipe for a buffer of frame-like pieces (frames of this store with any op and
   flags, frames of other stores, headers whose checksum holds but whose lengths lie,
   frames cut short or with a bit flipped, sync bytes, raw bytes), then scanned, also
   from a later start, after a clean prefix and cut short;
2. a recipe for whole units a writer appends (records, batches, orphan members, stray
   commits, records holding frames of this same store), damaged by inserted,
   overwritten and flipped bytes and a cut end, checked against a model: every intact
   frame is yielded except the members of a batch nothing valid follows;
3. a manifest or segment header built from the input, its checksum right or wrong,
   checked against the rules of docs/FORMAT.md;
4. a hostile msgpack payload (huge lengths, lists, maps and tuples nested deep, any ext
   code, lz4 blocks with lying size prefixes, bombs) decoded as a key and as a value;
5. one to three such payloads as the keys and values of frames forged with a store's
   salt (docs/FORMAT.md), appended to a real store, which is then opened and read;
6. a hint payload (the index snapshot of HINT), valid then damaged, or raw bytes,
   restored against covered segment sizes from the input: locations inside them, or
   ValueError (a scan);
7. such a payload as the HINT of a real store, under valid checksums and coverage,
   which is then opened and read;
8. differential: the C core's decoders (iodict_log/_format.c: decode_frame,
   header_length, frame_value, the Scan walk, decode_locations) against the Python
   ones, on a buffer of mode 1's pieces (or raw bytes) and on hint locations read
   from the input, with tests/test_native_format.py's comparisons. Needs the
   extension built; tools/fuzz_asan.py runs this mode under AddressSanitizer.

The process runs under an address-space cap (RLIMIT_AS, 1 GiB above its size at
start), so a decode bomb is a MemoryError, which is a crash like any other.

Any input gives frames or a documented outcome (None, a damage region, CorruptionError,
FormatVersionError, any IODictLogError from a store); anything else, or a failed assertion, is a crash that libFuzzer
saves as crash-<sha1>. The tests never import this file.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import resource
import shutil
import struct
import sys
import tempfile
import zlib

import lz4.block

try:
    import atheris
except ImportError:  # --random works without it
    atheris = None

# Only iodict_log is instrumented for coverage; the checks come from the test suite.
with atheris.instrument_imports(include=["iodict_log"]) if atheris else contextlib.nullcontext():
    from iodict_log.errors import CorruptionError, FormatVersionError
    from iodict_log.format import (
        COUNT,
        FIELDS,
        FLAG_BATCH,
        FLAG_LZ4,
        FORMAT_VERSION,
        HEADER_SIZE,
        KIND_COMPACTED,
        KIND_LOG,
        KNOWN_FLAGS,
        KNOWN_OPS,
        LZ4_FREE,
        MANIFEST_MAGIC,
        MAX_LZ4_RATIO,
        OP_BATCH_BEGIN,
        OP_BATCH_COMMIT,
        OP_DELETE,
        OP_SET,
        PREFIX,
        SEGMENT_HEADER_SIZE,
        SEGMENT_MAGIC,
        SYNC,
        Manifest,
        decode_frame,
        decode_manifest,
        decode_segment_header,
        encode_frame,
        encode_manifest,
        encode_segment_header,
        header_length,
        stored_value,
    )
    from iodict_log.serialize import encode_key

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
from helpers import SALT  # noqa: E402
from test_fuzz import (  # noqa: E402  (the same checks the tests make: one definition of each)
    check_both_scans,
    check_forged_hint_store,
    check_forged_store,
    check_frame,
    check_hint_payload,
    check_key_bytes,
    check_value_bytes,
    expected_scan,
    hint_payload_like,
    packed_header,
    scan,
    tuple_levels,
    valid_frames,
)

FOREIGN_SALTS = (0, SALT ^ 1, SALT ^ 0x80000000, 0xFFFFFFFF)
MAX_INPUT = 4096
HELD = encode_frame(1, 0, 0, 0, b"x", b"", salt=SALT)  # held in a value when no frame precedes it


class Input:
    """Reads numbers and bytes off the fuzzer's input; past its end, zeros."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def left(self) -> int:
        return len(self.data) - self.pos

    def bytes(self, n: int) -> bytes:
        out = self.data[self.pos : self.pos + n]
        self.pos += len(out)
        return out

    def int(self, size: int) -> int:
        return int.from_bytes(self.bytes(size).ljust(size, b"\0"), "little")

    def below(self, n: int) -> int:
        return self.int(1) % n

    def blob(self, most: int) -> bytes:
        return self.bytes(self.int(1) % (most + 1))


# --- what holds for any buffer --------------------------------------------------------------


def check_any_bytes(buf: bytes, start: int) -> None:
    for salt in (SALT, FOREIGN_SALTS[1]):
        for pos in range(len(buf) + 1):
            frame = decode_frame(buf, pos, salt)
            if frame is not None:
                assert frame.offset == pos and header_length(buf, pos, salt) == frame.length
                check_frame(buf, frame, salt)
    check_both_scans(buf, min(start, len(buf)))
    for data in (buf, SEGMENT_MAGIC + buf, MANIFEST_MAGIC + buf):
        try:
            decode_segment_header(data)
        except (CorruptionError, FormatVersionError):
            pass
        try:
            decode_manifest(data)
        except (CorruptionError, FormatVersionError):
            pass
    for flags in (0, FLAG_LZ4):
        try:
            value = stored_value(flags, buf)
        except CorruptionError:
            assert flags
            continue
        assert type(value) is bytes and len(value) <= max(MAX_LZ4_RATIO * len(buf), LZ4_FREE)


# --- mode 1: frame-like pieces --------------------------------------------------------------


def any_frame(inp: Input, salt: int) -> bytes:
    op = inp.int(1) if inp.below(4) == 0 else sorted(KNOWN_OPS)[inp.below(len(KNOWN_OPS))]
    flags = inp.int(1) if inp.below(4) == 0 else inp.below(KNOWN_FLAGS + 1)
    value = COUNT.pack(inp.int(4)) if op == OP_BATCH_BEGIN and inp.below(2) else inp.blob(24)
    return encode_frame(op, flags, inp.int(8), inp.int(8), inp.blob(12), value, salt=salt)


def piece(inp: Input) -> bytes:
    kind = inp.below(8)
    if kind <= 1:
        return any_frame(inp, SALT)
    if kind == 2:
        return any_frame(inp, FOREIGN_SALTS[inp.below(len(FOREIGN_SALTS))])
    if kind == 3:  # a header whose checksum holds, with made-up lengths
        lengths = (inp.int(4), inp.int(4)) if inp.below(2) else (inp.below(80), inp.below(80))
        fields = FIELDS.pack(inp.int(4), inp.int(1), inp.int(1), *lengths, 0, 0)
        return PREFIX.pack(SYNC, zlib.crc32(fields, SALT)) + fields
    if kind == 4:  # a frame of this store cut short or with a bit flipped
        raw = any_frame(inp, SALT)
        if inp.below(2):
            return raw[: inp.int(2) % len(raw)]
        out = bytearray(raw)
        bit = inp.int(2) % (len(raw) * 8)
        out[bit // 8] ^= 1 << (bit % 8)
        return bytes(out)
    if kind == 5:
        return (SYNC, SYNC * 3, b"\xd1", b"\x0c", SYNC + bytes(HEADER_SIZE - 2), bytes(HEADER_SIZE))[inp.below(6)]
    return inp.blob(40)


def check_pieces(inp: Input) -> None:
    parts = []
    while inp.left() and len(parts) < 24:
        parts.append(piece(inp))
    buf = b"".join(parts)
    start = inp.int(2) % (len(buf) + 1)
    check_any_bytes(buf, start)
    frames, s = check_both_scans(buf, 0)
    # Where the scan starts, and a cleanly read prefix, change nothing but the offsets.
    junk = buf[: inp.int(2) % (len(buf) + 1)]
    clean = encode_frame(1, 0, 1, 1, b"k", b"v", salt=SALT)
    for head, start, first in ((junk, len(junk), []), (clean, 0, [decode_frame(clean, 0, SALT)])):
        moved, m = scan(head + buf, start)
        assert moved == first + [f._replace(offset=f.offset + len(head)) for f in frames]
        assert m.end == s.end + len(head)
        assert m.damage == [d._replace(offset=d.offset + len(head)) for d in s.damage]
    # A growing buffer never takes back a frame (no piece holds a frame of this store).
    cut = inp.int(2) % (len(buf) + 1)
    early, e = scan(buf[:cut])
    assert frames[: len(early)] == early and e.end <= s.end and s.damage[: len(e.damage)] == e.damage


# --- mode 2: written units under damage, against a model ---------------------------------------


def written_units(inp: Input) -> list[tuple[bytes, bool]]:
    frames: list[tuple[bytes, bool]] = []
    record_ops = (1, 2, 5, 16, 17)
    member_ops = (1, 2, 16, 17)

    def add(op: int, flags: int, key: bytes, value: bytes, holder: bool = False) -> None:
        seq = len(frames) + 1
        frames.append((encode_frame(op, flags, seq, 10**18 + seq, key, value, salt=SALT), holder))

    def value() -> bytes:
        v = inp.blob(24)
        if inp.below(5) == 0:
            v += encode_frame(1, 0, 7, 7, b"phantom", b"", salt=FOREIGN_SALTS[inp.below(len(FOREIGN_SALTS))])
        return v

    for _ in range(inp.below(10)):
        kind = inp.below(5)
        if kind == 0:
            add(record_ops[inp.below(5)], 0, b"k", value())
        elif kind == 1:
            members = [member_ops[inp.below(4)] for _ in range(inp.below(4))]
            add(OP_BATCH_BEGIN, 0, b"", COUNT.pack(len(members)))
            for op in members:
                add(op, FLAG_BATCH, b"m", value())
            add(OP_BATCH_COMMIT, 0, b"", b"")
        elif kind == 2:
            add(member_ops[inp.below(4)], FLAG_BATCH, b"o", value())
        elif kind == 3:
            add(OP_BATCH_COMMIT, 0, b"", b"")
        else:
            inner = b"".join(raw for raw, _ in frames[-3:]) or HELD
            add(1, 0, b"h", b"<" + inner + b">", holder=True)
    return frames


def garbage(inp: Input) -> bytes:
    """Bytes that hold no header of this store whose checksum holds."""
    kind = inp.below(4)
    if kind == 0:
        return inp.blob(40) or b"\0"
    if kind == 1:
        return (SYNC, SYNC * 3, b"\xd1", b"\x0c", SYNC + bytes(HEADER_SIZE - 2), bytes(HEADER_SIZE))[inp.below(6)]
    if kind == 2:
        return any_frame(inp, FOREIGN_SALTS[inp.below(len(FOREIGN_SALTS))])
    raw = bytearray(any_frame(inp, SALT))
    raw[6] ^= 1  # dcrc damaged: the header checksum fails
    return bytes(raw)


def check_model(inp: Input) -> None:
    frames = written_units(inp)
    buf = bytearray(b"".join(raw for raw, _ in frames))
    offsets, pos = [], 0
    for raw, _ in frames:
        offsets.append(pos)
        pos += len(raw)
    for _ in range(inp.below(6)):
        kind = inp.below(3)
        if kind == 0:
            at = inp.int(2) % (len(buf) + 1)
            what = garbage(inp)
            buf[at:at] = what
            offsets = [p + len(what) if p >= at else p for p in offsets]
        elif buf and kind == 1:
            at = inp.int(2) % len(buf)
            what = garbage(inp)[: len(buf) - at]
            buf[at : at + len(what)] = what
        elif buf:
            at = inp.int(2) % len(buf)
            buf[at] ^= 1 << inp.below(8)
    if inp.below(2):
        del buf[inp.int(2) % (len(buf) + 1) :]
    buf = bytes(buf)
    survivors, exact = valid_frames(buf)
    written = {raw for raw, _ in frames} | {HELD}
    assert all(buf[f.offset : f.offset + f.length] in written for f in survivors)
    starts = {f.offset for f in survivors}
    assert all(at in starts for at, (raw, _) in zip(offsets, frames) if buf[at : at + len(raw)] == raw)
    frames_seen, s = check_both_scans(buf, 0)
    if exact:
        yielded, end, regions = expected_scan(survivors)
        assert frames_seen == yielded, (buf, frames_seen, yielded)
        assert s.end == end, (buf, s.end, end)
        assert [d for d in s.damage if d.offset < s.end] == regions, (buf, s.damage, regions)


# --- mode 3: manifests and segment headers ------------------------------------------------------


def check_headers(inp: Input) -> None:
    fix = inp.below(4)
    version = FORMAT_VERSION if inp.below(3) else inp.int(2)
    body = SEGMENT_MAGIC + struct.pack("<HBBI", version, inp.below(4), inp.below(2) * inp.int(1), inp.int(4))
    header = body + struct.pack("<I", zlib.crc32(body) if fix else inp.int(4)) + inp.blob(4)
    header = header[: inp.int(1) % (len(header) + 1)] if inp.below(6) == 0 else header
    ok = len(header) >= SEGMENT_HEADER_SIZE
    try:
        kind, salt = decode_segment_header(header)
    except FormatVersionError as exc:
        assert ok and exc.version == struct.unpack_from("<H", header, 8)[0] != FORMAT_VERSION
    except CorruptionError:
        if ok:
            version, kind, _, _, crc = struct.unpack_from("<HBBII", header, 8)
            assert version == FORMAT_VERSION
            assert kind not in (KIND_LOG, KIND_COMPACTED) or crc != zlib.crc32(header[:16])
    else:
        assert ok and kind in (KIND_LOG, KIND_COMPACTED)
        if header[11] == 0:
            assert encode_segment_header(kind, salt) == header[:SEGMENT_HEADER_SIZE]

    numbers = [inp.int(8) for _ in range(inp.below(8))]
    count = len(numbers) if inp.below(3) else inp.int(4)
    version = FORMAT_VERSION if inp.below(3) else inp.int(2)
    reserved = 0 if inp.below(3) else inp.int(2)
    head = struct.pack("<8sHHQQQI", MANIFEST_MAGIC, version, reserved, inp.int(8), inp.int(8), inp.int(8), count)
    body = head + b"".join(struct.pack("<Q", n) for n in numbers)
    data = body + struct.pack("<I", zlib.crc32(body) if inp.below(4) else inp.int(4))
    choice = inp.below(6)
    if choice == 0:
        data = data[: inp.int(2) % (len(data) + 1)]
    elif choice == 1:
        data += inp.blob(12) or b"\0"
    ok = len(data) >= 44
    try:
        m = decode_manifest(data)
    except FormatVersionError as exc:
        assert ok and exc.version == struct.unpack_from("<H", data, 8)[0] != FORMAT_VERSION
    except CorruptionError:
        if ok:
            assert struct.unpack_from("<H", data, 8)[0] == FORMAT_VERSION
            size = 40 + 8 * struct.unpack_from("<I", data, 36)[0]
            assert len(data) != size + 4 or zlib.crc32(data[:size]) != struct.unpack_from("<I", data, size)[0]
    else:
        _, _, kind, generation, seq_floor, bt_floor, count = struct.unpack_from("<8sHHQQQI", data)
        assert len(data) == 44 + 8 * count
        assert m == Manifest(generation, struct.unpack_from(f"<{count}Q", data, 40), seq_floor, bt_floor, kind)
        assert encode_manifest(m) == data


# --- modes 4 and 5: hostile keys and values, alone and in a store -----------------------------


def hostile_payload(inp: Input, nested: int = 0) -> bytes:
    """msgpack that lies, built from the input (the kinds of tests/test_fuzz.py's hostile_msgpack)."""
    kind = inp.below(8 if nested < 2 else 5)
    if kind == 0:
        return inp.blob(60)
    if kind == 1:  # a length far beyond the bytes that follow
        huge = (2**16 - 1, 2**31, 2**32 - 1, inp.int(4))[inp.below(4)]
        return packed_header(("array", "map", "str", "bin", "ext")[inp.below(5)], huge) + inp.blob(8)
    if kind == 2:  # lists or maps nested around a leaf
        opener = (b"\x91", b"\x81\x01", b"\x92\x90")[inp.below(3)]
        return opener * (50, 101, 600, 1100, 5000, inp.int(2))[inp.below(6)] + inp.blob(2)
    if kind == 3:  # tuples nested around a leaf
        return tuple_levels((1, 16, 17, 32, 33, 200, 3000, inp.int(2) % 4000)[inp.below(8)], inp.blob(2) or b"\x90")
    if kind == 4:  # an ext of any code with any data
        data = inp.blob(12)
        return b"\xc7" + bytes([len(data), inp.int(1)]) + data
    if kind == 5:  # an lz4 block of a payload, its size prefix kept or made up
        block = lz4.block.compress(hostile_payload(inp, nested + 1), store_size=True)
        return COUNT.pack(inp.int(4)) + block[4:] if inp.below(2) else block
    if kind == 6:  # a bomb: many empty arrays or maps, compressed
        count = (2**20, 2**24 - 10, inp.int(3))[inp.below(3)]
        inner = packed_header("array", count) + (b"\x90", b"\x80")[inp.below(2)] * count
        return lz4.block.compress(inner, store_size=True)
    return hostile_payload(inp, nested + 1) + hostile_payload(inp, nested + 1)


def check_payloads(inp: Input) -> None:
    payload = hostile_payload(inp)
    check_key_bytes(payload)
    for flags in (0, FLAG_LZ4):
        check_value_bytes(flags, payload)


STORE_DIR = tempfile.mkdtemp(prefix="fuzz_atheris-")
atexit.register(shutil.rmtree, STORE_DIR, True)


def check_store(inp: Input) -> None:
    frames = []
    for _ in range(1 + inp.below(3)):
        key = hostile_payload(inp) if inp.below(2) else encode_key(inp.blob(8).decode("latin-1"))
        frames.append(
            ((OP_SET, OP_SET, OP_DELETE)[inp.below(3)], (0, FLAG_LZ4)[inp.below(2)], key, hostile_payload(inp))
        )
    path = os.path.join(STORE_DIR, "s")
    shutil.rmtree(path, ignore_errors=True)
    check_forged_store(path, frames)


def hint_payload(inp: Input, sizes: list[int]) -> bytes:
    if inp.below(4) == 0:
        return inp.blob(255)
    keys = [inp.blob(6).decode("latin-1") for _ in range(inp.below(5))]
    lengths = [inp.int(2) % 400 for _ in keys]
    return hint_payload_like(list(dict.fromkeys(keys)), lengths, sizes, [inp.int(3) for _ in range(inp.below(4))])


def check_hint(inp: Input) -> None:
    sizes = [inp.int(2) for _ in range(1 + inp.below(3))]
    check_hint_payload(hint_payload(inp, sizes), sizes)


def check_hint_store(inp: Input) -> None:
    path = os.path.join(STORE_DIR, "h")
    shutil.rmtree(path, ignore_errors=True)
    check_forged_hint_store(path, hint_payload(inp, [2000]))


# --- mode 8: the C decoders against the Python ones ----------------------------------------------


def check_native(inp: Input) -> None:
    from test_native_format import same_decoders, same_locations, same_scans  # (imports the C module)

    if inp.below(4):
        parts = []
        while inp.left() and len(parts) < 24 and inp.below(8):
            parts.append(piece(inp))
        buf = b"".join(parts)
    else:
        buf = inp.blob(255)
    same_decoders(buf, SALT if inp.below(4) else inp.int(4))
    same_scans(buf, inp.int(2) % (len(buf) + 1))
    same_scans(buf)
    sizes = [inp.int(2) for _ in range(inp.below(4))] if inp.below(8) else [4000] * 300
    same_locations(inp.bytes(18 * inp.below(12)), sizes)


# Modes 1 to 8 (the docstring's list), each read from the input as a recipe; mode 0 takes raw bytes.
RECIPES = (
    check_pieces,
    check_model,
    check_headers,
    check_payloads,
    check_store,
    check_hint,
    check_hint_store,
    check_native,
)
ONLY_MODE = int(os.environ["FUZZ_MODE"]) if os.environ.get("FUZZ_MODE") else None


def test_one_input(data: bytes) -> None:
    if not data:
        return
    inp = Input(data[1:MAX_INPUT])
    mode = ONLY_MODE if ONLY_MODE is not None else data[0] % (len(RECIPES) + 1)
    if mode == 0:
        check_any_bytes(inp.data, data[0] // 4)
    else:
        RECIPES[min(mode, len(RECIPES)) - 1](inp)


def cap_memory(extra: int = 2**30) -> None:
    """Cap the address space at its size now plus ``extra``: a bomb is then a MemoryError."""
    with open("/proc/self/status") as f:
        size = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (size + extra, resource.RLIM_INFINITY))


def main() -> None:
    cap_memory()
    if len(sys.argv) == 3 and sys.argv[1] == "--random":
        rng = random.Random(0)
        for _ in range(int(sys.argv[2])):
            test_one_input(rng.randbytes(rng.randrange(1, 600)))
        print(f"{sys.argv[2]} random inputs: no failure")
        return
    if atheris is None:
        sys.exit("atheris is not installed: pip install atheris (or use --random N)")
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
