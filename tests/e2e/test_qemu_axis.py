"""Several QEMUs in one run: Debian 12's QEMU 7.2 and Debian's QEMU 10 build, live.

The default rule is checked against both: warn behaviour up to 9.x, remap from 10.0.
QEMU 10 comes from bookworm-backports through the harness's private apt (skipped,
never failed, when the archive cannot be reached).
"""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path
from typing import Any

import pytest

from harness.errors import ArchiveUnreachable
from harness.qemu.debian import SUITES, fetch_debian_qemu

from .leaks import Sandbox

pytestmark = pytest.mark.timeout(240)
SYSTEM_QEMU = shutil.which("qemu-system-x86_64")


@pytest.fixture(scope="module")
def qemu10() -> Path:
    try:
        return fetch_debian_qemu(SUITES["bookworm-backports"]).wrapper
    except ArchiveUnreachable as exc:
        pytest.skip(f"Debian archive unreachable, no QEMU 10 to test: {exc.message}")


def _row(data: dict[str, Any], version_major: int) -> dict[str, Any]:
    rows: list[dict[str, Any]] = [
        r for r in data["results"] if r["case"] == "default"
        and int(r["qemu"]["version"].split(".")[0]) == version_major]
    assert len(rows) == 1, rows
    return rows[0]


@pytest.mark.skipif(SYSTEM_QEMU is None, reason="qemu-system-x86_64 not on PATH")
def test_default_is_warn_on_72_and_remap_on_10_in_one_report(
    qemu10: Path, tmp_path: Path
) -> None:
    assert SYSTEM_QEMU is not None
    report = tmp_path / "run.json"
    sandbox = Sandbox(tmp_path / "sandbox")
    result = sandbox.run(["run", "--accel", "tcg", "--modes", "default", "--no-control",
                          "--qemu", SYSTEM_QEMU, "--qemu", str(qemu10), "--json", str(report)],
                         timeout=200)
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(report.read_text())
    versions = [e["qemu"]["version"] for e in data["environments"]]
    assert len(versions) == 2 and versions[1].startswith("10.")
    old, new = _row(data, int(versions[0].split(".")[0])), _row(data, 10)
    assert old["expectation"].startswith("id collisions, one warning (default of QEMU")
    assert old["guest_collisions"] > 0 and "file ID collisions" in old["qemu_message"]
    assert new["expectation"] == f"unique ids, no message (default of QEMU {versions[1]})"
    assert new["guest_collisions"] == 0 and new["qemu_message"] is None
    assert new["qemu"]["binary"] == str(qemu10)
    # An unpacked QEMU finds its own firmware: -L points into the unpacked tree.
    assert f"-L {shlex.quote(str(qemu10.parent.parent / 'share' / 'qemu'))}" in \
        new["qemu_command"]
    sandbox.assert_clean()
