"""Cache rows prove their premise on real guests: a guest that mounted another cache
mode than asked makes the row inconclusive, and remap+loose is judged alongside
warn+loose (or says it cannot be)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from .helpers import HARNESS_TIMEOUT, needs_qemu, qemu_wrapper
from .leaks import Sandbox, kept_log_dirs

pytestmark = [needs_qemu, pytest.mark.timeout(300)]

GUESTS = ("debian-bookworm-x86_64", "debian-trixie-x86_64")
# What each kernel's /proc/mounts shows for a cache=mmap mount (measured).
MMAP_SPELLING = {"debian-bookworm-x86_64": "mmap", "debian-trixie-x86_64": "cache=0x5"}
LOOSE_SPELLING = {"debian-bookworm-x86_64": "loose", "debian-trixie-x86_64": "cache=0xf"}


def _run(tmp_path: Path, *args: str, qemu: Path | None = None
         ) -> tuple[int, dict[tuple[str, str], dict[str, Any]]]:
    sandbox = Sandbox(tmp_path / "sandbox")
    report = tmp_path / "run.json"
    extra = ["--qemu", str(qemu)] if qemu else []
    result = sandbox.run(["run", "--accel", "tcg", "--no-control", "--checks", "ids",
                          "--no-witness", "--layout", "standard", "--cache", "loose",
                          "--guest", ",".join(GUESTS), "--json", str(report), *extra, *args],
                         timeout=2 * HARNESS_TIMEOUT)
    sandbox.assert_clean(kept_log_dirs(result.stderr))
    data: dict[str, Any] = json.loads(report.read_text())
    return result.returncode, {(r["guest"]["name"], r["case"]): r for r in data["results"]}


def test_a_guest_that_mounted_another_cache_mode_is_inconclusive(tmp_path: Path) -> None:
    # Booted cold, the guest's init mounts with the options on the kernel command line,
    # which the wrapper rewrites: the harness asks for loose, the guest mounts mmap.
    wrapper = qemu_wrapper(tmp_path, old="cache=loose", new="cache=mmap")
    code, rows = _run(tmp_path, "--modes", "remap,warn", "--cold", qemu=wrapper)
    assert code == 2
    for guest in GUESTS:
        for case in ("remap+loose", "warn+loose"):
            row = rows[(guest, case)]
            assert row["status"] == "inconclusive", row
            assert row["mounted_cache"] == MMAP_SPELLING[guest]
            assert row["failures"] == [
                f"premise failed: cache=loose was asked but the guest's /proc/mounts shows "
                f"'{MMAP_SPELLING[guest]}' (mmap), so this row proves nothing (inconclusive)"]


def test_remap_loose_is_judged_beside_warn_loose(tmp_path: Path) -> None:
    code, rows = _run(tmp_path, "--modes", "remap,warn")
    assert code == 0
    for guest in GUESTS:
        remap, warn = rows[(guest, "remap+loose")], rows[(guest, "warn+loose")]
        assert remap["mounted_cache"] == warn["mounted_cache"] == LOOSE_SPELLING[guest]
        assert any(n.startswith("predicted harm: ") for n in warn["notes"]), warn["notes"]
        assert remap["status"] == "pass"
        assert "the probe's power is shown: warn+loose on this QEMU showed its predicted " \
            "harm" in remap["notes"], remap["notes"]


def test_remap_loose_alone_says_its_power_is_not_shown(tmp_path: Path) -> None:
    code, rows = _run(tmp_path, "--modes", "remap")
    assert code == 0
    for guest in GUESTS:
        remap = rows[(guest, "remap+loose")]
        assert remap["status"] == "pass"
        assert any(n.startswith("the probe's power is not shown: ") and "no such row in this "
                   "run" in n for n in remap["notes"]), remap["notes"]
