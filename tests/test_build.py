"""Which build the suite runs on, and that the pure-Python one is always at hand."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

from iodict_log import native


def test_the_build_is_the_one_expected():
    # A C core that is there but fails to load must not pass for tested: native unless forced pure
    # or not built at all, or what IODICT_LOG_EXPECT_BUILD says (CI sets it).
    forced = os.environ.get(native.PURE_ENV, "") not in ("", "0")
    built = importlib.util.find_spec("iodict_log._native") is not None
    expected = os.environ.get("IODICT_LOG_EXPECT_BUILD") or ("native" if built and not forced else "pure")
    assert native.build() == expected


def test_iodict_log_pure_forces_the_python_code():
    # IODICT_LOG_PURE=1 runs pure Python even where the C core is built; the store works the same.
    code = (
        "import iodict_log.native as n, iodict_log, tempfile\n"
        "d = iodict_log.IODict(tempfile.mkdtemp())\n"
        "d['k'] = 1\n"
        "assert d['k'] == 1\n"
        "print(n.build())\n"
    )
    env = dict(os.environ, IODICT_LOG_PURE="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "pure"
