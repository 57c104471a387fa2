"""``grid`` on real QEMUs: every cell run, one table, the exit code over all cells.

Two cells of one guest: the system QEMU, and the same QEMU behind a wrapper that turns
``multidevs=remap`` into ``warn`` (a simulated regression of remap).  The grid must
say pass for the first, fail for the second, and exit 1.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .helpers import HARNESS_TIMEOUT, needs_qemu, qemu_wrapper, real_qemu
from .leaks import Sandbox, kept_log_dirs


@needs_qemu
@pytest.mark.timeout(300)
def test_a_grid_names_each_cell_and_fails_where_one_cell_fails(tmp_path: Path) -> None:
    broken = qemu_wrapper(tmp_path, old="multidevs=remap", new="multidevs=warn")
    report, markdown = tmp_path / "grid.json", tmp_path / "grid.md"
    sandbox = Sandbox(tmp_path / "sandbox")
    result = sandbox.run(["grid", "--accel", "tcg", "--qemu", f"{real_qemu()},{broken}",
                          "--modes", "remap", "--checks", "ids", "--cache", "none",
                          "--json", str(report), "--markdown", str(markdown)],
                         timeout=HARNESS_TIMEOUT * 2)
    assert result.returncode == 1, result.stdout + result.stderr
    data = json.loads(report.read_text())
    cells = {c["qemu"]: c for c in data["cells"]}
    assert data["exit_code"] == 1 and len(cells) == 2
    good, bad = cells[str(real_qemu())], cells[str(broken)]
    # The standard layout and the overlay (known there) under remap, plus the control.
    assert good["counts"]["fail"] == 0 and good["exit_code"] == 0, good
    assert bad["counts"]["fail"] >= 1 and bad["exit_code"] == 1, bad
    lines = markdown.read_text().splitlines()
    assert lines[0] == "| QEMU | guest kernel | rows | known issues reproduced | s |"
    assert len([line for line in lines if line.startswith("| ") and "pass" in line]) == 2
    table = result.stdout.splitlines()
    assert table[0].split()[:3] == ["QEMU", "guest", "kernel"] and len(table) == 4, table
    # The failing cell keeps its logs (said on the terminal and in the JSON); nothing else.
    assert bad["log_dir"] and good["log_dir"] is None
    assert kept_log_dirs(result.stderr) == [Path(bad["log_dir"])], result.stderr
    sandbox.assert_clean(allowed=[Path(bad["log_dir"])])
