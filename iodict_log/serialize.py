"""Turning keys and values into bytes and back.

msgpack with two twists: tuples are an extension type so they come back as
tuples (lists stay lists), and ``strict_types`` so subclasses (IntEnum, str
subclasses, ...) are refused instead of silently losing their type. The one
type msgpack changes anyway: bytearray and memoryview are stored as binary
and come back as bytes. Keys are
restricted to str, bytes, int and tuples of these, and brought to one canonical
form (canonical_key), so keys equal in a dict always encode to equal bytes.
"""

from __future__ import annotations

import pickle
import threading
from typing import Any, Callable

import msgpack

from .errors import IODictLogError
from .format import COMPRESS_MIN, FLAG_LZ4, FLAG_PICKLE, compress_value, stored_value

EXT_TUPLE = 1


_OPTIONS = {"use_bin_type": True, "strict_types": True}
_local = threading.local()  # one Packer per thread: a Packer is not thread-safe


def _default(obj: Any) -> msgpack.ExtType:
    if type(obj) is tuple:
        # A fresh Packer: the calling one is busy (nested packb is ~10x slower).
        return msgpack.ExtType(EXT_TUPLE, msgpack.Packer(default=_default, **_OPTIONS).pack(list(obj)))
    raise TypeError(f"cannot serialize {type(obj).__name__!r} object with msgpack")


def _ext_hook(code: int, data: bytes) -> Any:
    if code == EXT_TUPLE:
        return tuple(_unpack(data))
    return msgpack.ExtType(code, data)


def _pack(obj: Any) -> bytes:
    try:
        packer = _local.packer
    except AttributeError:
        packer = _local.packer = msgpack.Packer(default=_default, **_OPTIONS)
    return packer.pack(obj)


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=_ext_hook)


MAX_KEY_DEPTH = 16  # tuples nested in a key, at most


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
    try:
        return _pack(canonical_key(key))
    except UnicodeEncodeError as exc:  # a lone surrogate, e.g. from os.listdir()
        raise TypeError(f"str key is not valid Unicode: {exc}") from None


def decode_key(data: bytes) -> Any:
    return _unpack(data)


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
            stored = stored_value(flags, stored)
        if flags & FLAG_PICKLE:
            return self.loads(flags, stored)
        return _unpack(stored)

    def loads(self, flags: int, data: bytes) -> Any:
        if flags & FLAG_PICKLE:
            if not self.flag:
                raise IODictLogError(
                    "this value was written with serializer='pickle'; open the store with "
                    "serializer='pickle' to read it (only for files you trust)"
                )
            return pickle.loads(data)
        return _unpack(data)


def _msgpack_dumps(value: Any) -> bytes:
    try:
        return _pack(value)
    except (OverflowError, ValueError, RecursionError) as exc:
        raise TypeError(f"cannot serialize value with msgpack: {exc}") from None


def _pickle_dumps(value: Any) -> bytes:
    try:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, AttributeError, TypeError) as exc:
        raise TypeError(f"cannot pickle value: {exc}") from None
