"""Shared test wiring: every test gets a timeout; e2e tests are marked by folder."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

E2E = Path(__file__).parent / "e2e"
# Read by tests/e2e/leaks.py (WORKER_MARKER_ENV there).
WORKER_MARKER_ENV = "MDH_TEST_WORKER"


def pytest_configure(config: pytest.Config) -> None:
    # Per test process (each xdist worker its own): leak checks judge only the QEMUs
    # this process started, not another worker's running guests.
    os.environ[WORKER_MARKER_ENV] = uuid.uuid4().hex


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if E2E in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.e2e)
