"""Shared fixtures for the iodict_log tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def store_path(tmp_path):
    """A fresh, not yet existing directory path for a store (IODict creates it)."""
    return str(tmp_path / "store")
