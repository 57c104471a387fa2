"""The main job end to end through the CLI: table, JSON and JUnit as promised."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from typing import Any

import pytest

from .leaks import assert_no_qemu_left

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str],
                                                               dict[str, Any], ET.Element]:
    out = tmp_path_factory.mktemp("reports")
    result = subprocess.run(
        [sys.executable, "-m", "harness.cli", "run", "--accel", "tcg",
         "--json", str(out / "run.json"), "--junit", str(out / "run.xml")],
        capture_output=True, text=True, timeout=200, check=False,
    )
    data = json.loads((out / "run.json").read_text()) if (out / "run.json").exists() else {}
    junit = ET.parse(out / "run.xml").getroot() if (out / "run.xml").exists() else ET.Element("x")
    assert_no_qemu_left()
    return result, data, junit


def _result(data: dict[str, Any], case: str) -> dict[str, Any]:
    matches = [r for r in data["results"] if r["case"] == case]
    assert len(matches) == 1, f"{case} not exactly once in {[r['case'] for r in data['results']]}"
    found: dict[str, Any] = matches[0]
    return found


def test_run_exits_0_and_prints_the_table(reports: tuple[Any, Any, Any]) -> None:
    result, _, _ = reports
    assert result.returncode == 0, result.stderr
    header = result.stdout.splitlines()[0].split()
    assert header[:2] == ["case", "expectation"] and header[-1] == "verdict"
    for case in ("remap", "warn", "forbid", "default", "control-remap"):
        assert any(line.startswith(case + " ") and line.endswith("PASS")
                   for line in result.stdout.splitlines()), case
    assert "booting guest" in result.stderr, "progress must be shown while guests boot"


def test_json_has_the_promised_keys_and_values(reports: tuple[Any, Any, Any]) -> None:
    _, data, _ = reports
    assert data["qemu"]["binary"].endswith("qemu-system-x86_64")
    assert data["qemu"]["version"].count(".") == 2
    assert data["qemu"]["multidevs_supported"] is True
    assert data["accel"]["used"] == "tcg" and data["accel"]["reason"]
    assert data["guest"]["kernel"].endswith("-amd64")
    for result in data["results"]:
        for key in ("mode", "passed", "host_devices", "files_checked", "guest_collisions",
                    "denied", "qemu_message", "witness", "boot_seconds", "failures"):
            assert key in result, key
        assert "tar_intact" in result["witness"]
        assert result["passed"] is True and result["failures"] == []
        assert result["status"] == "pass" and result["check"] == "ids"
        assert result["guest"]["kernel"] == data["guest"]["kernel"]
        assert result["guest"]["boot"] in ("remap+forbid+warn", "control+default")
    assert data["exit_code"] == 0 and data["accel"]["fell_back"] in (True, False)
    warn, remap, forbid = (_result(data, m) for m in ("warn", "remap", "forbid"))
    assert warn["guest_collisions"] > 0 and warn["witness"]["tar_intact"] is False
    assert "file ID collisions" in warn["qemu_message"]
    assert remap["guest_collisions"] == 0 and remap["witness"]["tar_intact"] is True
    assert remap["qemu_message"] is None and remap["host_devices"] == 3
    assert forbid["denied"] > 0 and "multidevs=forbid" in forbid["qemu_message"]
    assert _result(data, "control-warn")["host_devices"] == 1


def test_junit_has_one_testcase_per_case(reports: tuple[Any, Any, Any]) -> None:
    _, data, junit = reports
    cases = [case.get("name") for case in junit.iter("testcase")]
    assert sorted(cases) == sorted(r["case"] for r in data["results"])
    assert junit.get("failures") == "0"
