"""The everyday value types msgpack lacks, as msgpack extension types.

Each type has its own ext code and a payload of fixed-size fields, digits or
raw bytes (docs/FORMAT.md, "Value extension types"), so decoding one builds the
value with its type's own constructor from plain numbers: no code named by the
file runs, and a hostile payload can only give one of these types or
CorruptionError. Types are matched exactly (a datetime subclass such as a
pandas Timestamp is refused like any other unknown type), and an aware
datetime or time keeps its tzinfo as a fixed UTC offset.

Tuples, sets and frozensets hold other values, so serialize.py packs and
unpacks their members itself (their codes are here, their payload is a msgpack
array); this module holds the leaf types.
"""

from __future__ import annotations

import datetime as dt
import struct
import uuid
from decimal import Context, Decimal, localcontext
from fractions import Fraction
from typing import Any, Callable

from .errors import CorruptionError

EXT_TUPLE = 1
EXT_SET = 16
EXT_FROZENSET = 17
EXT_DATETIME = 18
EXT_DATE = 19
EXT_TIME = 20
EXT_TIMEDELTA = 21
EXT_DECIMAL = 22
EXT_UUID = 23
EXT_COMPLEX = 24
EXT_FRACTION = 25
EXT_BIGINT = 26

# Containers: their payload is the msgpack array of their members.
CONTAINER_CODES: dict[type, int] = {tuple: EXT_TUPLE, set: EXT_SET, frozenset: EXT_FROZENSET}
CONTAINER_TYPES: dict[int, type] = {code: kind for kind, code in CONTAINER_CODES.items()}

_DATE = struct.Struct("<HBB")  # year, month, day
_TIME = struct.Struct("<BBBIB")  # hour, minute, second, microsecond, fold
_DATETIME = struct.Struct("<HBBBBBIB")  # the two above
_OFFSET = struct.Struct("<q")  # an aware value's UTC offset in microseconds, after the fields
_TIMEDELTA = struct.Struct("<iii")  # days, seconds, microseconds (as timedelta normalises them)
_COMPLEX = struct.Struct("<dd")  # real, imaginary
_LENGTH = struct.Struct("<I")  # a Fraction's numerator length
# Decoding a Fraction normalises it (a gcd, quadratic in the digits: 0.02 s at 10 kB, 20 s
# at 400 kB), so its terms are bounded to keep the work of decoding near linear in the bytes.
MAX_FRACTION_BYTES = 4096

_MICROSECOND = dt.timedelta(microseconds=1)


def _int_bytes(value: int) -> bytes:
    """Two's complement, little-endian, in (bit_length + 8) // 8 bytes: always room for the sign."""
    return value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)


def _offset(value: dt.datetime | dt.time) -> bytes:
    """b"" for a naive value, else its UTC offset; TypeError for a tzinfo that gives none."""
    if value.tzinfo is None:
        return b""
    offset = value.utcoffset()
    if offset is None:  # (a zoneinfo zone on a time: no date, so no offset)
        raise TypeError(
            f"cannot serialize a {type(value).__name__} whose tzinfo {value.tzinfo!r} gives no UTC offset; "
            "use a fixed offset (datetime.timezone) or serializer='pickle'"
        )
    return _OFFSET.pack(offset // _MICROSECOND)


def _encode_datetime(v: dt.datetime) -> bytes:
    fields = _DATETIME.pack(v.year, v.month, v.day, v.hour, v.minute, v.second, v.microsecond, v.fold)
    return fields + _offset(v)


def _encode_time(v: dt.time) -> bytes:
    return _TIME.pack(v.hour, v.minute, v.second, v.microsecond, v.fold) + _offset(v)


def _encode_fraction(v: Fraction) -> bytes:
    numerator, denominator = _int_bytes(v.numerator), _int_bytes(v.denominator)
    if max(len(numerator), len(denominator)) > MAX_FRACTION_BYTES:
        raise TypeError(
            f"cannot serialize a Fraction whose terms take over {MAX_FRACTION_BYTES} bytes "
            "(about 9,800 digits) with msgpack; use serializer='pickle' (only for files you trust)"
        )
    return _LENGTH.pack(len(numerator)) + numerator + denominator


# type -> (ext code, payload of a value of exactly that type)
ENCODERS: dict[type, tuple[int, Callable[[Any], bytes]]] = {
    int: (EXT_BIGINT, _int_bytes),  # (only ints beyond msgpack's 64 bits reach the Packer's default)
    dt.datetime: (EXT_DATETIME, _encode_datetime),
    dt.date: (EXT_DATE, lambda v: _DATE.pack(v.year, v.month, v.day)),
    dt.time: (EXT_TIME, _encode_time),
    dt.timedelta: (EXT_TIMEDELTA, lambda v: _TIMEDELTA.pack(v.days, v.seconds, v.microseconds)),
    Decimal: (EXT_DECIMAL, lambda v: _decimal_text(v).encode("ascii")),
    uuid.UUID: (EXT_UUID, lambda v: v.bytes),
    complex: (EXT_COMPLEX, lambda v: _COMPLEX.pack(v.real, v.imag)),
    Fraction: (EXT_FRACTION, _encode_fraction),
}


_DECIMAL_CONTEXT = Context(capitals=1)  # (how a Decimal is written: 1E+2, whatever the thread's context)


def _decimal_text(value: Decimal) -> str:
    """str(value) as written in a store: str() follows the thread's decimal context
    (``capitals=0`` writes 1e+2), the stored text must not."""
    with localcontext(_DECIMAL_CONTEXT):
        return str(value)


def _zone(data: bytes, at: int) -> dt.timezone | None:
    """The fixed-offset tzinfo after the fields, or None for a naive value (no bytes left)."""
    if len(data) == at:
        return None
    (micros,) = _OFFSET.unpack(data[at:])  # (struct.error unless exactly 8 bytes are left)
    return dt.timezone(micros * _MICROSECOND)


def _decode_datetime(data: bytes) -> dt.datetime:
    year, month, day, hour, minute, second, microsecond, fold = _DATETIME.unpack_from(data)
    zone = _zone(data, _DATETIME.size)
    return dt.datetime(year, month, day, hour, minute, second, microsecond, zone, fold=fold)


def _decode_time(data: bytes) -> dt.time:
    hour, minute, second, microsecond, fold = _TIME.unpack_from(data)
    return dt.time(hour, minute, second, microsecond, _zone(data, _TIME.size), fold=fold)


def _decode_timedelta(data: bytes) -> dt.timedelta:
    days, seconds, microseconds = _TIMEDELTA.unpack(data)
    return dt.timedelta(days=days, seconds=seconds, microseconds=microseconds)


def _decode_decimal(data: bytes) -> Decimal:
    text = data.decode("ascii")
    value = Decimal(text)  # (exact whatever the context; a context not trapping bad input gives NaN ...)
    if _decimal_text(value) != text:  # (... which this refuses, as it does spaces, '_' and other spellings)
        raise ValueError(f"{text[:40]!r} is not how a Decimal is written")
    return value


def _decode_fraction(data: bytes) -> Fraction:
    (length,) = _LENGTH.unpack_from(data)
    if _LENGTH.size + length >= len(data):
        raise ValueError("no denominator")
    if max(length, len(data) - _LENGTH.size - length) > MAX_FRACTION_BYTES:
        raise ValueError(f"a term takes over {MAX_FRACTION_BYTES} bytes")
    numerator = int.from_bytes(data[_LENGTH.size : _LENGTH.size + length], "little", signed=True)
    denominator = int.from_bytes(data[_LENGTH.size + length :], "little", signed=True)
    if denominator <= 0:
        raise ValueError("denominator is not positive")
    return Fraction(numerator, denominator)


DECODERS: dict[int, Callable[[bytes], Any]] = {
    EXT_BIGINT: lambda data: int.from_bytes(data, "little", signed=True),
    EXT_DATETIME: _decode_datetime,
    EXT_DATE: lambda data: dt.date(*_DATE.unpack(data)),
    EXT_TIME: _decode_time,
    EXT_TIMEDELTA: _decode_timedelta,
    EXT_DECIMAL: _decode_decimal,
    EXT_UUID: lambda data: uuid.UUID(bytes=data),
    EXT_COMPLEX: lambda data: complex(*_COMPLEX.unpack(data)),
    EXT_FRACTION: _decode_fraction,
}
# What a payload that is not one these decoders wrote makes them raise (a bad field, a
# length, a zero denominator, an offset of a day or more, text that is no Decimal).
_PAYLOAD_ERRORS = (ValueError, TypeError, OverflowError, ArithmeticError, struct.error)


def decode(code: int, data: bytes) -> Any:
    """The value of leaf ext ``code`` with payload ``data``; CorruptionError if no encoder wrote it."""
    try:
        return DECODERS[code](data)
    except _PAYLOAD_ERRORS as exc:
        raise CorruptionError(f"ext type {code} payload {data[:24].hex()} does not decode: {exc}") from None
