"""Small helpers shared by the test modules (import with ``from helpers import ...``)."""

from __future__ import annotations

import math
import struct

SALT = 0x5EED5A17  # any per-store salt: the codec takes it as given


def same(a, b) -> bool:
    """Equal *and* of the same type, recursively (dict keys included, in order): a tuple
    never passes for a list, and floats compare bit for bit (NaN equals NaN)."""
    if type(a) is not type(b):
        return False
    if type(a) is float:
        return struct.pack("<d", a) == struct.pack("<d", b) or (math.isnan(a) and math.isnan(b))
    if type(a) in (list, tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if type(a) is dict:
        return len(a) == len(b) and all(
            same(ka, kb) and same(va, vb) for (ka, va), (kb, vb) in zip(a.items(), b.items())
        )
    return a == b


def flip(buf: bytes, bit: int) -> bytes:
    """``buf`` with bit number ``bit`` (0 = lowest bit of byte 0) inverted."""
    out = bytearray(buf)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)
