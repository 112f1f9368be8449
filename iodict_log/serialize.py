"""Turning keys and values into bytes and back.

msgpack with two twists: tuples are an extension type so they come back as
tuples (lists stay lists), and ``strict_types`` so subclasses (IntEnum, str
subclasses, ...) are refused instead of silently losing their type. Values may
also be sets, frozensets, datetimes, dates, times, timedeltas, Decimals, UUIDs,
complex numbers, Fractions and ints beyond 64 bits, each an extension type of
its own (valuetypes.py) that decodes without running code. The one type msgpack
changes anyway: bytearray and memoryview are stored as binary and come back as
bytes. Keys are
restricted to str, bytes, int and tuples of these, and brought to one canonical
form (canonical_key), so keys equal in a dict always encode to equal bytes.

Nesting is bounded both ways (docs/DESIGN.md, "Keys and values"). Each tuple,
set or frozenset level is a nested pack or unpack with a large C stack frame, so
they nest at most MAX_TUPLE_DEPTH deep (tuples MAX_KEY_DEPTH in a key); lists,
dicts, tuples and sets together at most MAX_DEPTH deep, so any reader may walk a
value recursively.
Encoding refuses more with TypeError; decoding counts tuple levels as it goes
(it can never exhaust the C stack) and raises CorruptionError for anything the
encoder could not have produced from a storable key or value: decode_key
accepts only the canonical bytes of a storable key.
"""

from __future__ import annotations

import gc
import pickle
import threading
from itertools import compress
from typing import Any, Callable

import msgpack

from . import valuetypes
from .errors import CorruptionError, IODictLogError
from .format import COMPRESS_MIN, FLAG_LZ4, FLAG_PICKLE, compress_value, lz4_bound, stored_value
from .valuetypes import CONTAINER_CODES, CONTAINER_TYPES, ENCODERS, EXT_TUPLE

MAX_TUPLE_DEPTH = 32  # tuples and sets nested in a value, at most (each level costs ~40 kB of C stack to decode)
MAX_DEPTH = 100  # lists, dicts, tuples and sets nested in a value, at most
MAX_KEY_DEPTH = 16  # tuples nested in a key, at most


_OPTIONS = {"use_bin_type": True, "strict_types": True}
_local = threading.local()  # Packers per thread: a Packer is not thread-safe
_NESTED = frozenset({list, dict, tuple, set, frozenset})
# What a damaged or forged msgpack can raise: FormatError, StackError, ExtraData
# and UnicodeDecodeError are ValueErrors; TypeError is an unhashable map key or set member.
CONTAINER_BYTES = 4  # decoding a block beyond lz4_bound allows one container per this many bytes
_DECODE_ERRORS = (ValueError, TypeError, OverflowError, RecursionError, msgpack.UnpackException)
UNSUPPORTED = "serializer='pickle' stores any picklable object (only for files you trust)"


def _ext_default(depth: int) -> Callable[[Any], msgpack.ExtType]:
    """The Packer ``default`` at tuple nesting ``depth``: one function per depth, so no state.
    Tuples, sets and frozensets pack their members with the next depth's Packer; the
    other types msgpack lacks are valuetypes' leaves; anything else is a TypeError."""

    def default(obj: Any) -> msgpack.ExtType:
        kind = type(obj)
        code = CONTAINER_CODES.get(kind)
        if code is not None:
            if depth >= MAX_TUPLE_DEPTH:
                raise TypeError(f"tuples may nest at most {MAX_TUPLE_DEPTH} deep in a value (sets count as tuples)")
            # The ExtType is built as the tuple it is: its checking __new__ costs more than the pack.
            return tuple.__new__(msgpack.ExtType, (code, _packer(depth + 1).pack(list(obj))))
        leaf = ENCODERS.get(kind)
        if leaf is not None:
            return tuple.__new__(msgpack.ExtType, (leaf[0], leaf[1](obj)))
        raise TypeError(f"cannot serialize {kind.__name__!r} object with msgpack; {UNSUPPORTED}")

    return default


def _ext_hooks(containers: dict[int, type], leaves: bool, **options: Any) -> list[Callable[[int, bytes], Any]]:
    """The Unpacker ``ext_hook`` for each tuple nesting depth: each decodes a tuple's (or
    set's) members with the next depth's, so the C recursion of nested unpacks is bounded.
    ``containers``: the ext codes decoded as containers, of which type; ``leaves``: whether
    valuetypes' leaf codes are decoded too. Other codes come back as msgpack.ExtType.
    ``options`` go to every nested unpack too."""
    hooks: list[Callable[[int, bytes], Any]] = []
    decoders = valuetypes.DECODERS if leaves else {}

    def at(depth: int) -> Callable[[int, bytes], Any]:
        def ext_hook(code: int, data: bytes) -> Any:
            kind = containers.get(code)
            if kind is None:
                return valuetypes.decode(code, data) if code in decoders else msgpack.ExtType(code, data)
            if depth >= MAX_TUPLE_DEPTH:
                raise CorruptionError(f"tuples nest more than {MAX_TUPLE_DEPTH} deep")
            members = msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=hooks[depth + 1], **options)
            if type(members) is not list:
                raise CorruptionError(f"ext type {code} holds a {type(members).__name__}, not an array")
            return kind(members)

        return ext_hook

    hooks.extend(at(depth) for depth in range(MAX_TUPLE_DEPTH + 1))
    return hooks


_DEFAULTS = [_ext_default(depth) for depth in range(MAX_TUPLE_DEPTH + 1)]
_KEY_HOOKS = _ext_hooks({EXT_TUPLE: tuple}, leaves=False)  # (keys hold no other type)
_VALUE_HOOKS = _ext_hooks(CONTAINER_TYPES, leaves=True)


def _packer(depth: int) -> msgpack.Packer:
    """This thread's Packer for tuple nesting ``depth``.

    One per depth: while a tuple's members are packed, the Packers of the
    levels above are busy. (A fresh Packer per tuple would cost more than the
    packing, and nested packb is ~10x slower.)
    """
    try:
        return _local.packers[depth]
    except AttributeError:
        _local.packers = [msgpack.Packer(default=default, **_OPTIONS) for default in _DEFAULTS]
        return _local.packers[depth]


def _pack(obj: Any) -> bytes:
    try:
        packer = _local.packers[0]
    except AttributeError:
        packer = _packer(0)
    return packer.pack(obj)


def unpack(data: bytes) -> Any:
    """The one msgpack object in ``data`` with tuples (at most MAX_TUPLE_DEPTH deep) its only
    extension decoded, else CorruptionError: what keys hold (decode_key, hint files)."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=_KEY_HOOKS[0])
    except _DECODE_ERRORS as exc:
        raise CorruptionError(f"msgpack does not decode: {type(exc).__name__}: {exc}") from None


def unpack_value(data: bytes) -> Any:
    """The one msgpack value in ``data``, every extension type of valuetypes decoded, else CorruptionError."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=_VALUE_HOOKS[0])
    except _DECODE_ERRORS as exc:
        raise CorruptionError(f"msgpack does not decode: {type(exc).__name__}: {exc}") from None


def _unpack_budgeted(data: bytes) -> Any:
    """unpack for a block that unpacked beyond lz4_bound: at most one list, dict or
    tuple per CONTAINER_BYTES of ``data``. Containers are what make a decode bomb (an
    empty list is one byte and ~60 of memory); values written before the bound, such
    as a megabyte of zeros, a long list of numbers or of small records, hold fewer."""
    left = [len(data) // CONTAINER_BYTES + 1]  # (+1: the value itself)

    def count(obj: Any) -> Any:
        left[0] -= 1
        if left[0] < 0:
            raise CorruptionError(f"a highly compressed value holds over one container per {CONTAINER_BYTES} bytes")
        return obj

    hooks = _ext_hooks(CONTAINER_TYPES, leaves=True, list_hook=count, object_hook=count)
    try:
        return msgpack.unpackb(
            data, raw=False, strict_map_key=False, ext_hook=hooks[0], list_hook=count, object_hook=count
        )
    except _DECODE_ERRORS as exc:
        raise CorruptionError(f"msgpack does not decode: {type(exc).__name__}: {exc}") from None


def _nests_deeper(value: Any, limit: int) -> bool:
    """Whether lists, dicts and tuples nest more than ``limit`` deep in the container ``value``.

    Level by level, without recursion and with no Python code per element or
    per container: gc.get_referents gives the elements (a dict's keys and
    values) of a whole level at once, and map and compress sort them in C.
    The cost is about that of packing the value.
    """
    level = [value]
    for _ in range(limit):
        children = gc.get_referents(*level)
        if _NESTED.isdisjoint(map(type, children)):
            return False
        if len(children) <= 64:  # (for a few, one comprehension costs less than the C calls)
            level = [child for child in children if type(child) in _NESTED]
        else:
            level = list(compress(children, map(_NESTED.__contains__, map(type, children))))
    return True


def canonical_key(key: Any, _depth: int = 0) -> Any:
    """The one stored form of ``key``, or TypeError if no such key can be stored.

    Keys equal in a dict are one key here too: ``True``, ``1.0`` and ``1`` are
    the key ``1``, and subclasses of str, bytes and int (an IntEnum, a str
    subclass) are their plain value. Tuples are canonical element by element.
    """
    kind = type(key)
    if kind is str or kind is bytes:
        return key
    if kind is tuple:
        if _depth >= MAX_KEY_DEPTH:
            raise TypeError(f"tuple keys may nest at most {MAX_KEY_DEPTH} deep")
        return tuple([canonical_key(part, _depth + 1) for part in key])
    if kind is float:
        if not key.is_integer():
            raise TypeError(f"float key {key!r} is not equal to any int; keys must be str, bytes, int or tuples")
        key = int(key)
    elif isinstance(key, int):  # int, bool, IntEnum, other int subclasses
        key = int(key)
    elif isinstance(key, str):
        return key[:]  # (slicing gives the plain str)
    elif isinstance(key, bytes):
        return bytes(key)
    else:
        raise TypeError(f"keys must be str, bytes, int or tuples of these, not {kind.__name__!r}")
    if -(2**63) <= key < 2**64:
        return key
    raise TypeError(f"int key {key} is out of range (-2**63 .. 2**64-1)")


def encode_key(key: Any) -> bytes:
    """The bytes of the canonical form of ``key`` (TypeError for a key that cannot be stored)."""
    return encode_canonical_key(canonical_key(key))


def encode_canonical_key(key: Any) -> bytes:
    """encode_key for a key already in canonical form (canonical_key's result)."""
    try:
        return _pack(key)
    except UnicodeEncodeError as exc:  # a lone surrogate, e.g. from os.listdir()
        raise TypeError(f"str key is not valid Unicode: {exc}") from None


_KEY_PARTS = frozenset({str, bytes, int, tuple})


def _plain_tuple(key: tuple, depth: int) -> bool:
    """Whether a decoded tuple holds only str, bytes, int and such tuples, at most MAX_KEY_DEPTH deep.

    (What canonical_key checks, for what msgpack can decode: its types in C, one
    call per tuple, and nothing built.)
    """
    kinds = set(map(type, key))
    if not kinds <= _KEY_PARTS:
        return False
    if tuple not in kinds:
        return True
    return depth < MAX_KEY_DEPTH and all(_plain_tuple(part, depth + 1) for part in key if type(part) is tuple)


def decode_key(data: bytes) -> Any:
    """The key whose encode_key is ``data``; CorruptionError for any other bytes.

    Only key types, and the bytes they re-encode to: no float, bool, nil, list
    or map, no longer form of a shorter string or int, no tuple nested too
    deep. A str up to 255 bytes or a one-byte int, the common keys, are
    canonical as soon as they decode.
    """
    key = unpack(data)
    kind = type(key)
    if kind is str or kind is bytes or kind is int:  # (msgpack ints are all in range)
        head = data[0]
        if kind is str and (0xA0 <= head <= 0xBF or (head == 0xD9 and len(data) >= 34)):  # fixstr; str8 of 32+
            return key
        if len(data) == 1 or _pack(key) == data:  # (a one-byte int is a fixint)
            return key
    elif kind is tuple and _plain_tuple(key, 1) and _pack(key) == data:
        return key
    raise CorruptionError(f"key bytes {data[:40].hex()} are not the encoding of a storable key")


class Serializer:
    """Values to bytes and back, plus the record flag that names the format."""

    def __init__(self, name: str) -> None:
        if name not in ("msgpack", "pickle"):
            raise ValueError(f"serializer must be 'msgpack' or 'pickle', not {name!r}")
        self.name = name
        self.flag = FLAG_PICKLE if name == "pickle" else 0
        self._dumps: Callable[[Any], bytes] = _pickle_dumps if self.flag else _msgpack_dumps

    def dumps(self, value: Any) -> bytes:
        return self._dumps(value)

    def encode(self, value: Any, compress: bool = True) -> tuple[int, bytes]:
        """(record flags, stored bytes) for a value: serialized, lz4-compressed if that pays."""
        data = self._dumps(value)
        if compress and len(data) >= COMPRESS_MIN:  # (checked here too: most values are small)
            flags, data = compress_value(data)
            return flags | self.flag, data
        return self.flag, data

    def decode(self, flags: int, stored: bytes) -> Any:
        """Undo encode()."""
        if flags & FLAG_LZ4:
            data = stored_value(flags, stored)
            if len(data) > lz4_bound(len(stored)) and not flags & FLAG_PICKLE:
                return _unpack_budgeted(data)  # (only older stores, or forged bytes, hold such a block)
            stored = data
        if flags & FLAG_PICKLE:
            return self.loads(flags, stored)
        return unpack_value(stored)

    def loads(self, flags: int, data: bytes) -> Any:
        if flags & FLAG_PICKLE:
            if not self.flag:
                raise IODictLogError(
                    "this value was written with serializer='pickle'; open the store with "
                    "serializer='pickle' to read it (only for files you trust)"
                )
            return pickle.loads(data)
        return unpack_value(data)


def _msgpack_dumps(value: Any) -> bytes:
    try:
        data = _pack(value)
    except (OverflowError, ValueError, RecursionError) as exc:
        raise TypeError(f"cannot serialize value with msgpack: {exc}; {UNSUPPORTED}") from None
    # Every level of nesting takes at least one byte, so only longer values need the walk.
    if len(data) > MAX_DEPTH and type(value) in _NESTED and _nests_deeper(value, MAX_DEPTH):
        raise TypeError(f"lists, dicts and tuples may nest at most {MAX_DEPTH} deep in a value")
    return data


def _pickle_dumps(value: Any) -> bytes:
    try:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, AttributeError, TypeError) as exc:
        raise TypeError(f"cannot pickle value: {exc}") from None
