"""Fixtures the host-side unit tests share."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def base() -> Iterator[Path]:
    """An empty base directory any user may write (the rootless cases run as nobody),
    which must be empty again afterwards: whatever an export or layout left in it fails
    the test."""
    path = Path(tempfile.mkdtemp(prefix="mdh-base-test-"))
    path.chmod(0o777)
    try:
        yield path
    finally:
        leftovers = sorted(p.name for p in path.iterdir())
        for child in path.iterdir():
            child.rmdir()
        path.rmdir()
        assert leftovers == [], f"directories left behind: {leftovers}"
