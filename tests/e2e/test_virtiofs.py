"""The virtiofs transport on a real guest: the real virtiofsd holds both settings'
promises, and one that never announces submounts (a wrapper around the real one)
turns the ``virtiofs`` row red.  Nothing the run started may outlive it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.errors import ArchiveUnreachable
from harness.qemu.virtiofsd import find_virtiofsd

from .helpers import HARNESS_TIMEOUT, needs_qemu, needs_root, virtiofsd_wrapper
from .leaks import Sandbox, kept_log_dirs

pytestmark = [needs_qemu, needs_root]

# The standard layout alone, virtiofs rows only: two cold guests, one export each.
RUN = ["run", "--accel", "tcg", "--transport", "virtiofs", "--checks", "ids",
       "--layout", "standard"]


def _run(tmp_path: Path, *extra: str) -> tuple[int, dict[str, dict[str, Any]], str]:
    sandbox = Sandbox(tmp_path / "sandbox")
    report = tmp_path / "report.json"
    result = sandbox.run([*RUN, *extra, "--json", str(report)], timeout=HARNESS_TIMEOUT)
    output = result.stdout + result.stderr
    sandbox.assert_clean(kept_log_dirs(result.stderr))
    rows = {row["case"]: row for row in json.loads(report.read_text())["results"]}
    return result.returncode, rows, output


@pytest.mark.timeout(200)
def test_the_real_virtiofsd_holds_both_settings(tmp_path: Path) -> None:
    rc, rows, output = _run(tmp_path)
    assert rc == 0, output
    assert sorted(rows) == ["virtiofs", "virtiofs-nosubmounts"]
    announced, plain = rows["virtiofs"], rows["virtiofs-nosubmounts"]
    assert announced["transport"] == "virtiofs" and announced["mode"] is None
    assert announced["observed"].startswith("0 collisions, 3 guest st_dev for 3 host devices")
    assert all(w["intact"] for w in announced["witnesses"].values()), announced["witnesses"]
    assert announced["aliased"] == [] and announced["cwd_moved"] is False
    assert plain["status"] == "pass", plain["failures"]
    assert plain["guest_collisions"] > 0
    assert "1 guest st_dev for 3 host devices" in plain["observed"]
    assert any(n.startswith("measured without submounts") for n in plain["notes"])
    assert announced["boot"] == plain["boot"] == "cold"


@pytest.mark.timeout(200)
def test_a_virtiofsd_without_submounts_turns_the_virtiofs_row_red(tmp_path: Path) -> None:
    try:
        real = find_virtiofsd(None)
    except ArchiveUnreachable as exc:
        pytest.skip(f"no virtiofsd to wrap: {exc.message}")
    wrapper = virtiofsd_wrapper(tmp_path, real.command)
    rc, rows, output = _run(tmp_path, "--virtiofsd", str(wrapper), "--no-witness")
    assert rc == 1, output
    assert rows["virtiofs"]["status"] == "fail"
    assert any("stands for 3 host devices" in f for f in rows["virtiofs"]["failures"]), \
        rows["virtiofs"]["failures"]
    assert any(f.startswith("collision: ") for f in rows["virtiofs"]["failures"])
    assert rows["virtiofs-nosubmounts"]["status"] == "pass"
