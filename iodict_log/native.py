"""Which build runs in this process: the C core, or pure Python.

The C core (iodict_log._native, built from iodict_log/_*.c) is optional: pip
compiles it where a compiler is present, and the pure-Python code is complete
without it. Each C file mirrors the Python module it speeds up, with the same
function names, and writes the same bytes (docs/DESIGN.md lists them).
``IODICT_LOG_PURE=1`` in the environment forces pure Python in a process.
"""

from __future__ import annotations

import os
from types import ModuleType

PURE_ENV = "IODICT_LOG_PURE"


def _load() -> ModuleType | None:
    if os.environ.get(PURE_ENV, "") not in ("", "0"):
        return None
    try:
        from . import _native  # type: ignore[attr-defined]
    except ImportError:
        return None
    return _native


core: ModuleType | None = _load()


def build() -> str:
    """ "native" or "pure": which code this process runs."""
    return "pure" if core is None else "native"
