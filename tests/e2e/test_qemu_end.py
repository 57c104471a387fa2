"""QEMU's end and its messages, judged from what a real guest run shows: a QEMU that
asserts at exit, and one whose warning is reworded or printed on stdout, made by a
wrapper around the real QEMU (``helpers.qemu_child_wrapper``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from .helpers import (
    ABORT_AT_EXIT,
    HARNESS_TIMEOUT,
    needs_qemu,
    needs_root,
    qemu_child_wrapper,
    run_harness,
)

pytestmark = [needs_qemu, needs_root]

# One guest, one warn export, no witnesses: the cheapest row that shows a message.
RUN = ["run", "--accel", "tcg", "--no-control", "--cache", "none", "--checks", "ids",
       "--no-witness", "--layout", "standard", "--cold"]


def _run(tmp_path: Path, wrapper: Path, mode: str) -> tuple[int, dict[str, Any], str]:
    report = tmp_path / "report.json"
    result = run_harness([*RUN, "--modes", mode, "--qemu", str(wrapper), "--json", str(report),
                          "--logs", str(tmp_path / "logs")], timeout=HARNESS_TIMEOUT)
    return result.returncode, json.loads(report.read_text()), result.stdout + result.stderr


@pytest.mark.timeout(200)
def test_a_qemu_that_asserts_after_the_last_observation_fails_its_rows(tmp_path: Path) -> None:
    wrapper = qemu_child_wrapper(tmp_path, last=ABORT_AT_EXIT)
    rc, report, output = _run(tmp_path, wrapper, "remap")
    assert rc == 1, output
    (row,) = report["results"]
    assert row["status"] == "fail", row
    assert "QEMU ended with death by SIGABRT (status -6) after QMP quit, expected exit " \
        "status 0" in row["failures"]
    assert any(f.startswith("QEMU stderr outside every observation shows trouble: ")
               and "9p.c:1870: v9fs_walk: Assertion `fidp->fid_type == P9_FID_NONE' failed."
               in f for f in row["failures"]), row["failures"]


@pytest.mark.timeout(200)
def test_a_reworded_warning_still_counts(tmp_path: Path) -> None:
    wrapper = qemu_child_wrapper(tmp_path, old="detected in same VirtFS export",
                                 new="detected in the same VirtFS export")
    rc, report, output = _run(tmp_path, wrapper, "warn")
    assert rc == 0, output
    (row,) = report["results"]
    assert row["status"] == "pass", row["failures"]
    assert "in the same VirtFS export" in row["qemu_message"]


@pytest.mark.timeout(200)
def test_a_warning_on_stdout_is_not_the_promised_one(tmp_path: Path) -> None:
    wrapper = qemu_child_wrapper(tmp_path, to_stdout=True)
    rc, report, output = _run(tmp_path, wrapper, "warn")
    assert rc == 1, output
    (row,) = report["results"]
    assert row["failures"] == [
        "expected the multi-device warning exactly once on QEMU stderr, found it 0 times"]
