"""A symlink, a FIFO and a socket on every device of the standard layout, on real
guests: judged like every other path, and each witness tool's handling of them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from .helpers import HARNESS_TIMEOUT, needs_qemu
from .leaks import Sandbox, kept_log_dirs

pytestmark = [needs_qemu, pytest.mark.timeout(300)]

GUESTS = ("debian-bookworm-x86_64", "debian-trixie-x86_64")
SPECIALS = ("special-link", "special-fifo", "special-socket")
DEVICES = ("", "dev01/", "dev02/")


def test_special_files_on_every_device(tmp_path: Path) -> None:
    sandbox = Sandbox(tmp_path / "sandbox")
    report = tmp_path / "run.json"
    result = sandbox.run(["run", "--accel", "tcg", "--no-control", "--checks", "ids",
                          "--layout", "standard", "--cache", "none", "--modes",
                          "remap,forbid,warn", "--guest", ",".join(GUESTS), "--json",
                          str(report)], timeout=2 * HARNESS_TIMEOUT)
    sandbox.assert_clean(kept_log_dirs(result.stderr))
    assert result.returncode == 0, result.stderr[-2000:]
    rows: dict[tuple[str, str], dict[str, Any]] = {
        (r["guest"]["name"], r["case"]): r for r in json.loads(report.read_text())["results"]}
    for guest in GUESTS:
        remap, forbid, warn = (rows[(guest, m)] for m in ("remap", "forbid", "warn"))
        # 3 devices of 20 paths each (17 before the special files).
        assert remap["files_checked"] == forbid["files_checked"] == 60
        # Every path off the root device is denied, the special files included.
        assert forbid["status"] == "pass" and forbid["denied"] == 40
        # Under warn the special files collide across devices like the rest.
        shared = {f["path"] for c in warn["collisions"] for f in c["host_files"]}
        assert {f"{d}{s}" for d in DEVICES for s in SPECIALS} <= shared, shared
        # remap: ids unique, and what each tool did with them (measured):
        assert remap["status"] == "pass" and remap["guest_collisions"] == 0
        details = {tool: w["detail"] for tool, w in remap["witnesses"].items()}
        for tool, label in (("busybox-tar", "busybox tar"), ("tar", "GNU tar")):
            # Both tars store symlinks and FIFOs and skip sockets ("socket ignored").
            assert details[tool] == f"{label}: all 42 files intact; 6 of 9 special files " \
                "copied as their kind, 3 skipped"
            assert remap["witnesses"][tool]["rc"] == 0
        assert details["cp"] == "cp -a: all 42 files intact; 9 of 9 special files copied " \
            "as their kind"
        assert details["rsync"] == "rsync -aH: all 42 files intact; 9 of 9 special files " \
            "copied as their kind"
        assert details["find"] == "find: listed 60 of 60 paths"
        assert details["du"] == "du -ab: counted 585 B of 585 B of files"
