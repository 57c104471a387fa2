"""Boot by restore: the same verdicts as a cold boot, and no bad state is ever used."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from harness.qemu.snapshot import STATE_FILE, StateCache

from .helpers import private_image_cache, run_harness
from .leaks import Sandbox, assert_no_qemu_left

pytestmark = pytest.mark.timeout(240)


def _run(*args: str, report: Path) -> dict[str, Any]:
    result = run_harness(["run", "--accel", "tcg", "--json", str(report), *args], timeout=200)
    assert result.returncode == 0, result.stdout + result.stderr
    data: dict[str, Any] = json.loads(report.read_text())
    return data


def _verdicts(data: dict[str, Any]) -> list[tuple[str, str, str, int | None]]:
    return [(r["case"], r["status"], r["observed"], r.get("guest_collisions"))
            for r in data["results"]]


def test_restored_guests_give_the_cold_verdicts(tmp_path: Path) -> None:
    cold = _run("--cold", report=tmp_path / "cold.json")
    assert {r["boot"] for r in cold["results"]} == {"cold"}
    _run(report=tmp_path / "warm-up.json")  # saves the state if none fits yet
    restored = _run(report=tmp_path / "restored.json")
    assert {r["boot"] for r in restored["results"]} == {"restored"}
    assert _verdicts(restored) == _verdicts(cold)
    warn = [r for r in restored["results"] if r["case"] == "warn"][0]
    assert warn["guest_collisions"] > 0 and "file ID collisions" in warn["qemu_message"]
    # Restored guests reach SSH far sooner: TCG kernel init is skipped.
    assert max(r["boot_seconds"] for r in restored["results"]) < \
        min(r["boot_seconds"] for r in cold["results"])
    assert_no_qemu_left()


def _exec(sandbox: Sandbox, cache: Path) -> subprocess.CompletedProcess[str]:
    result = sandbox.run(["exec", "--accel", "tcg", "--", "cat", "/proc/uptime"], timeout=120,
                         env={"MDH_CACHE_DIR": str(cache)})
    assert result.returncode == 0, result.stderr
    return result


def test_a_damaged_state_is_never_used_and_is_rebuilt(tmp_path: Path) -> None:
    # A cache of this test's own: on the shared one, another worker's exec may save a
    # fresh state between the damage and the next exec, which then restores that.
    cache = tmp_path / "cache"
    private_image_cache(cache)
    sandbox = Sandbox(tmp_path / "sandbox")
    _exec(sandbox, cache)  # makes the one state of this cache
    states = StateCache(cache / "states")
    (key,) = [d.name for d in states.root.iterdir() if (d / STATE_FILE).exists()]
    state = states.root / key / STATE_FILE
    for damage in ("truncated", "corrupt"):
        size = state.stat().st_size
        if damage == "truncated":
            state.write_bytes(state.read_bytes()[: size // 2])
        else:
            state.write_bytes(b"\0" * size)  # same size: only QEMU can tell
        result = _exec(sandbox, cache)
        assert "(cold)" in result.stderr, (damage, result.stderr)
        if damage == "corrupt":
            assert "the saved guest state was not usable" in result.stderr
        rebuilt = states.find(key)
        assert rebuilt is not None and rebuilt.stat().st_size > 0, damage
        assert rebuilt.read_bytes()[:4096] != b"\0" * 4096, damage
        assert "(restored)" in _exec(sandbox, cache).stderr, damage
    sandbox.assert_clean()


def test_cold_exec_makes_no_state_use(tmp_path: Path) -> None:
    sandbox = Sandbox(tmp_path / "sandbox")
    result = sandbox.run(["exec", "--accel", "tcg", "--cold", "--", "uname", "-r"], timeout=120)
    assert result.returncode == 0, result.stderr
    assert "(cold)" in result.stderr
    sandbox.assert_clean()


def test_a_guest_cannot_write_into_an_unused_slot(tmp_path: Path) -> None:
    # The slots a saved state fixes but no export fills are never mounted by the
    # harness; a guest that mounts one anyway must find it read-only, not a host dir.
    sandbox = Sandbox(tmp_path / "sandbox")
    script = ("mkdir -p /mnt/slot && mount -t 9p -o trans=virtio,version=9p2000.L mdh23 "
              "/mnt/slot && { echo planted > /mnt/slot/planted; } 2>&1; echo rc=$?")
    result = sandbox.run(["exec", "--accel", "tcg", "--", "sh", "-c", script], timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Read-only file system" in result.stdout and "rc=1" in result.stdout, result.stdout
    sandbox.assert_clean()
