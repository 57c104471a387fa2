"""The benchmark's exec lines: the ratios to --accel tcg and to virtme-ng, and why
virtme-ng was not measured when it was not; the matrix's guest time by family."""

from __future__ import annotations

from typing import Any

from harness.bench.figures import _exec_lines, _matrix_lines, family_seconds
from harness.config import Check, Mode, Via
from harness.results import ResultRow
from harness.verdicts.common import Status
from harness.verdicts.ids import unobserved

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


def _row(check: str, seconds: float | None) -> ResultRow:
    verdict = unobserved(Mode.REMAP, 2, "not observed", Status.ERROR)
    return ResultRow(case=f"{check}-remap", check=Check(check), via=Via.QEMU, verdict=verdict,
                     observe_seconds=seconds)


def test_the_matrix_time_is_split_by_family_costliest_first() -> None:
    rows = [_row("remount", 0.5), _row("ids", 3.0), _row("remount", 0.25),
            _row("ids", 1.5), _row("bind", None)]
    families = family_seconds(rows)
    assert list(families) == ["ids", "remount", "bind"]
    assert families["ids"] == {"seconds": 4.5, "rows": 2}
    assert families["remount"] == {"seconds": 0.75, "rows": 2}
    assert families["bind"] == {"seconds": 0.0, "rows": 1}  # a row never observed


def test_the_family_line_follows_the_matrix_lines() -> None:
    result = {"matrix_s": 20.0, "matrix_over_boot": 4.0, "restored_matrix_s": 18.0,
              "restored_matrix_over_boot": 3.6, "restored_matrix_ids_only_s": 12.0,
              "matrix_passed": True, "restored_matrix_passed": True,
              "restored_matrix_ids_cache_none_s": 8.0, "restored_matrix_ids_no_witness_s": 4.0,
              "matrix_families": family_seconds([_row("ids", 3.0), _row("remount", 0.5)])}
    assert _matrix_lines(result)[1] == ("default matrix, cold, guest seconds by family: "
                                        "ids 3.00 s (1 rows), remount 0.50 s (1 rows)")
