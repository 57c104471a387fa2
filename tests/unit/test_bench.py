"""The benchmark's exec lines: the ratios to --accel tcg and to virtme-ng, and why
virtme-ng was not measured when it was not."""

from __future__ import annotations

from typing import Any

from harness.bench.figures import _exec_lines

BASE: dict[str, Any] = {"exec_s": {"median": 1.2}, "exec_tcg_s": {"median": 1.1},
                        "exec_over_tcg": 1.09}


def test_exec_is_given_against_tcg_and_vng() -> None:
    lines = _exec_lines({**BASE, "vng": {"version": "virtme-ng 1.42",
                                         "seconds": {"median": 8.0}},
                         "exec_over_vng": 0.15})
    assert lines[0] == ("exec -- uname -r, warm state cache: median 1.20 s = 1.09x the same "
                        "with --accel tcg (1.10 s; target <= 1.3x)")
    assert lines[1].startswith("virtme-ng 1.42: vng --exec 'uname -r' --verbose")
    assert lines[1].endswith("median 8.00 s; exec = 0.15x vng (target <= 0.15x)")


def test_vng_that_could_not_run_says_why() -> None:
    lines = _exec_lines({**BASE, "vng": {"skipped": "unshare (util-linux) is missing"}})
    assert lines[1] == "virtme-ng: not measured: unshare (util-linux) is missing"
    assert len(_exec_lines(BASE)) == 1  # --skip-vng: no line at all
