"""Guests of more exports than x86's 2,047-byte kernel command line can name.

A guest of more exports than a saved state has slots boots cold, and a cold guest is
told of its exports on the kernel command line.  With three 9p cache modes the default
run's two guests have 2,256 and 2,334 bytes of it: the harness used to refuse every
row (57 errors, exit 2).  Such a guest is now told of none and mounts its exports
over SSH once it answers, as a restored guest does.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .helpers import run_harness
from .leaks import assert_no_qemu_left

pytestmark = pytest.mark.timeout(400)


def test_three_cache_modes_in_one_run_are_judged(tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    result = run_harness(["run", "--accel", "tcg", "--cache", "none,loose,fscache",
                          "--no-witness", "--json", str(out)], timeout=360)
    assert_no_qemu_left()
    said = result.stdout[-3000:] + result.stderr[-2000:]
    rows = json.loads(out.read_text())["results"]
    unjudged = [(r["case"], r["failures"][:1]) for r in rows
                if r["status"] in ("error", "inconclusive")]
    assert unjudged == [], said
    assert result.returncode == 0, said
    assert {r["cache"] for r in rows} == {"none", "loose", "fscache"}
    # Too many exports for a saved state: every guest booted cold, from the command
    # line that had no room for them.
    assert {r["boot"] for r in rows} == {"cold"}
    assert len(rows) == 57
