"""Shared fixtures for the iodict_log tests, and which build they run on.

The suite runs on whichever build this process uses (iodict_log.native: the C
core if pip built it, pure Python with IODICT_LOG_PURE=1). Files that hold the C
core to the Python code import the extension directly and are left out only
where it was not built at all. ``pytest -m pure`` picks the files that CI runs a
second time on the pure-Python build: format, recovery, power loss, processes
and queues. IODICT_LOG_EXPECT_BUILD=native|pure makes test_build fail unless
the build is that one (CI sets it, so a C core that silently failed to build
or load cannot pass for tested).
"""

from __future__ import annotations

import importlib.util
import os

import pytest

NATIVE_TESTS = ("test_native_format.py", "test_native_iodict.py", "test_native_queue.py")
PURE_TOO = (
    "test_build.py",
    "test_format.py",
    "test_recovery.py",
    "test_power_loss.py",
    "test_processes.py",
    "test_queue.py",
    "test_queue_processes.py",
    "test_queue_hardening.py",
    "test_streams.py",
    "test_native_lock.py",
    "test_backlog.py",
    "test_open_files.py",
    "test_leases.py",
    "test_lease_processes.py",
    "test_aio.py",
    "test_value_types.py",
    "test_iodict_script.py",
    "test_readonly.py",
)

collect_ignore = [] if importlib.util.find_spec("iodict_log._native") else list(NATIVE_TESTS)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "pure: run on the pure-Python build too (IODICT_LOG_PURE=1 pytest -m pure)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in PURE_TOO:
            item.add_marker(pytest.mark.pure)


@pytest.fixture(scope="session", autouse=True)
def outside_the_source_tree(tmp_path_factory):
    """Run from a directory with no copy of the package in it, so that child processes
    (``python -c``, ``-m``: the working directory comes first on their sys.path) import
    the package under test, as this process does, and not the source tree: CI installs
    the package, and a checkout has no C core built in place."""
    here = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    os.chdir(here)


@pytest.fixture
def store_path(tmp_path):
    """A fresh, not yet existing directory path for a store (IODict creates it)."""
    return str(tmp_path / "store")
