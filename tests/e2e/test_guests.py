"""Every recipe boots: the Debian 13 (Linux 6.12) guest runs a command and mounts 9p."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import pytest

from harness.checks.ids import collect
from harness.config import Mode, Start
from harness.environment import Environment, prepare
from harness.errors import ArchiveUnreachable
from harness.host.truth import Export
from harness.image.build import build_image
from harness.plugin import HarnessOptions
from harness.qemu.machine import Machine
from harness.qemu.spec import ExportSpec
from harness.verdicts.ids import find_collisions

from .leaks import Sandbox

pytestmark = pytest.mark.timeout(300)
TRIXIE = "debian-trixie-x86_64"


@pytest.fixture(scope="module")
def trixie(mdh_options: HarnessOptions) -> Environment:
    """The 6.12 guest's environment; built on first use (skipped if the archive is down)."""
    try:
        return prepare(replace(mdh_options.machine, guest=TRIXIE))
    except ArchiveUnreachable as exc:
        pytest.skip(f"Debian archive unreachable, cannot build {TRIXIE}: {exc.message}")


def test_exec_guest_trixie_prints_a_612_release(trixie: Environment, tmp_path: Path) -> None:
    sandbox = Sandbox(tmp_path / "sandbox")
    result = sandbox.run(["exec", "--accel", "tcg", "--guest", TRIXIE, "--", "uname", "-r"],
                         timeout=200)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == trixie.image.kernel_release
    assert result.stdout.startswith("6.12.") and result.stdout.strip().endswith("-amd64")
    assert "cache hit" in result.stderr
    sandbox.assert_clean()


@pytest.mark.multidevs(mode="remap", devices=3, files=4)
def test_trixie_mounts_9p_and_the_agent_sees_every_path(
    trixie: Environment, multidevs_export: Export, tmp_path: Path
) -> None:
    export = multidevs_export
    specs = [ExportSpec(tag="mdh0", path=export.root, mode=Mode.REMAP, mount_point="/mnt/mdh0")]
    with Machine(trixie.machine_spec(specs, tmp_path / "guest"), name="trixie") as guest:
        guest.wait_ready()
        mounts = guest.run("grep ' 9p ' /proc/mounts").text
        view = collect(guest, "/mnt/mdh0", export.truth.paths)
        console = guest.console_path.read_text(errors="replace")
    assert "mdh0 /mnt/mdh0 9p" in mounts
    if guest.start is Start.COLD:  # a restored guest mounts over SSH, after its init
        assert "mdh-init: step 9p ok 1 mounted" in console
    first = view.observation.passes[0]
    assert set(first) == set(export.truth.paths)
    assert all(not isinstance(result, int) for result in first.values()), "an lstat failed"
    assert find_collisions(export.truth, first) == ()


def test_612_kernel_with_61_modules_is_refused(trixie: Environment, tmp_path: Path) -> None:
    # Debian 13's real vmlinuz against the default (Debian 12, 6.1) image's modules:
    # refused before any guest boots, naming both releases.
    bookworm = build_image()
    assert bookworm.modules_release.startswith("6.1.")
    sandbox = Sandbox(tmp_path / "sandbox")
    result = sandbox.run(["exec", "--accel", "tcg", "--kernel", str(trixie.image.vmlinuz),
                          "--", "true"], timeout=60)
    assert result.returncode == 2, result.stderr
    assert (f"kernel release {trixie.image.kernel_release} does not match the modules' "
            f"release {bookworm.modules_release}") in result.stderr
    assert "modules_install" in result.stderr
    assert "booting guest" not in result.stderr
    sandbox.assert_clean()


def test_run_on_both_guests_reports_each_kernel(trixie: Environment, tmp_path: Path) -> None:
    report = tmp_path / "run.json"
    junit = tmp_path / "run.xml"
    sandbox = Sandbox(tmp_path / "sandbox")
    result = sandbox.run(["run", "--accel", "tcg", "--modes", "remap,warn", "--no-control",
                          "--layout", "standard", "--guest", f"debian-bookworm-x86_64,{TRIXIE}",
                          "--json", str(report), "--junit", str(junit)], timeout=200)
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(report.read_text())
    kernels = {(r["case"], r["guest"]["name"]): r["guest"]["kernel"] for r in data["results"]
               if r["check"] == "ids"}
    assert len(kernels) == 8  # remap and warn, each with cache none and loose
    assert kernels[("warn", TRIXIE)] == trixie.image.kernel_release
    assert kernels[("warn", "debian-bookworm-x86_64")].startswith("6.1.")
    assert all(r["status"] == "pass" for r in data["results"])
    trixie_warn = [r for r in data["results"] if r["case"] == "warn"
                   and r["guest"]["name"] == TRIXIE][0]
    assert trixie_warn["guest_collisions"] > 0
    classes = {c.get("classname") for c in ET.parse(junit).getroot().iter("testcase")}
    assert classes == {"multidevs.qemu.debian-bookworm-x86_64", f"multidevs.qemu.{TRIXIE}"}
    assert "6.12." in result.stdout and "6.1.0" in result.stdout  # the table's guest column
    sandbox.assert_clean()
