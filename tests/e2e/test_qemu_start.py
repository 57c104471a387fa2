"""A QEMU that exits before its guest is up: every error row and the terminal line
carry QEMU's own last words and what to do about them.

Debian's QEMU finds its firmware through a built-in path (its ``--firmwarepath``)
whatever ``-L`` says, so an empty ``--qemu-datadir`` alone does not break it.  A copy
of the same binary outside its prefix does: QEMU relocates its built-in directories
relative to where the binary is, as it does for a build run from its build tree, and
then has only ``-L``.  (Its modules are found through ``QEMU_MODULE_DIR``.)
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from .helpers import HARNESS_TIMEOUT, needs_qemu, needs_root, real_qemu, run_harness

pytestmark = [needs_qemu, needs_root]

# Where Debian keeps the modules of its QEMU (the TCG accelerator is one).
DEBIAN_MODULES = Path("/usr/lib/x86_64-linux-gnu/qemu")


@pytest.mark.timeout(200)
def test_a_qemu_without_its_bios_names_the_file_and_the_option(tmp_path: Path) -> None:
    copy = tmp_path / "prefix" / "bin" / "qemu-system-x86_64"
    copy.parent.mkdir(parents=True)
    shutil.copy2(real_qemu(), copy)
    empty = tmp_path / "firmware"
    empty.mkdir()
    env = dict(os.environ)
    if DEBIAN_MODULES.is_dir():
        env["QEMU_MODULE_DIR"] = str(DEBIAN_MODULES)
    report = tmp_path / "report.json"
    result = run_harness(
        ["run", "--accel", "tcg", "--no-control", "--cache", "none,loose", "--checks", "ids",
         "--no-witness", "--layout", "standard", "--cold", "--modes", "warn",
         "--qemu", str(copy), "--qemu-datadir", str(empty),
         "--json", str(report), "--logs", str(tmp_path / "logs")],
        timeout=HARNESS_TIMEOUT, env=env)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    data = json.loads(report.read_text())
    rows = data["results"]
    assert len(rows) == 2, rows  # one guest, a row per cache mode
    guest = "warn"
    said = (f"{guest}: QEMU exited with status 1: qemu: could not load PC BIOS "
            f"'bios-256k.bin' (QEMU did not find its firmware: -L {empty} has no "
            f"'bios-256k.bin'; pass the directory that holds it with --qemu-datadir DIR "
            f"(repeatable; Debian's QEMU looks in /usr/share/qemu, /usr/share/seabios, "
            f"/usr/lib/ipxe/qemu); logs in {data['log_dir']}/{guest})")
    for row in rows:
        assert row["status"] == "error", row
        assert row["failures"] == [f"QemuExitedEarly: {said}"], row["failures"]
    assert f"[multidevs-harness] {guest}: {said}\n" in output, output
