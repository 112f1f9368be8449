"""Build the optional C core, iodict_log._native, where a compiler is present.

Everything else is in pyproject.toml. The extension is optional: if it does not
compile (no compiler, no headers), pip still installs the package and the pure-
Python code runs (iodict_log/native.py). IODICT_LOG_BUILD_NATIVE=0 skips it.
"""

import glob
import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """build_ext that warns instead of failing: the C core only speeds things up."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # no compiler at all (DistutilsPlatformError and kin)
            self._skip(exc)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # the compiler failed (CompileError, LinkError)
            self._skip(exc)

    @staticmethod
    def _skip(exc: Exception) -> None:
        print(f"iodict_log: the C core was not built ({exc}); the pure-Python code will run")


SOURCES = sorted(glob.glob(os.path.join("iodict_log", "_*.c")))
EXTENSIONS = (
    []
    if os.environ.get("IODICT_LOG_BUILD_NATIVE", "1") == "0" or not SOURCES
    else [
        Extension(
            "iodict_log._native",
            sources=SOURCES,
            depends=glob.glob(os.path.join("iodict_log", "*.h")),
            libraries=["z"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"],
        )
    ]
)

setup(ext_modules=EXTENSIONS, cmdclass={"build_ext": OptionalBuildExt})
