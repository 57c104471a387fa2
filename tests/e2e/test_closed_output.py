"""A reader that goes away (``| head``, a CI log pipe closed early) takes the printing
and nothing else: the run finishes, writes its reports and keeps the exit code that
says what QEMU did; an input error is still exit 2, never 1.

Found by hand: ``run ... 2>&1 | ts`` (ts not installed) ended in "harness fault ...
BrokenPipeError", i.e. exit 2 and a traceback file blaming the harness; a worker
thread printing progress would have turned its guest's rows into errors.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from .helpers import harness_argv, needs_qemu
from .leaks import Sandbox


def _closed_pipe() -> int:
    """The write end of a pipe whose reader is already gone."""
    read, write = os.pipe()
    os.close(read)
    return write


def _run_into_closed_pipes(sandbox: Sandbox, args: list[str], timeout: float) -> int:
    out, err = _closed_pipe(), _closed_pipe()
    try:
        proc = subprocess.Popen(harness_argv(*args), env=sandbox.env,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=err)
    finally:
        os.close(out)
        os.close(err)
    return proc.wait(timeout=timeout)


def _faults(sandbox: Sandbox) -> list[Path]:
    return sorted(sandbox.log_base.glob("harness-fault-*.log"))


@pytest.mark.timeout(60)
def test_an_input_error_into_a_closed_pipe_is_still_exit_2(tmp_path: Path) -> None:
    sandbox = Sandbox(tmp_path)
    assert _run_into_closed_pipes(sandbox, ["run", "--devices", "0"], timeout=40) == 2
    assert _run_into_closed_pipes(sandbox, ["run", "--devices", "three"], timeout=40) == 2
    assert _run_into_closed_pipes(sandbox, ["--help"], timeout=40) == 0
    assert _faults(sandbox) == []


@needs_qemu
@pytest.mark.timeout(200)
def test_a_run_whose_reader_went_away_still_reports_and_keeps_its_exit_code(
    tmp_path: Path,
) -> None:
    sandbox = Sandbox(tmp_path)
    report = tmp_path / "report.json"
    rc = _run_into_closed_pipes(
        sandbox, ["run", "--accel", "tcg", "--modes", "remap", "--checks", "ids",
                  "--cache", "none", "--layout", "standard", "--no-control", "--no-witness",
                  "--json", str(report)],
        timeout=170)
    assert _faults(sandbox) == [], _faults(sandbox)[0].read_text()
    assert rc == 0
    data = json.loads(report.read_text())
    assert data["exit_code"] == 0
    assert [row["status"] for row in data["results"]] == ["pass"]
    assert sandbox.leftovers(allowed=[sandbox.log_base]) == []
