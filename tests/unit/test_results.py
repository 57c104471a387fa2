"""The one result schema: the environment block every output shares, statuses, exit codes,
and how each status is written to the table, JSON and JUnit."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from harness.agent.stat import GuestObservation
from harness.bench.figures import header
from harness.config import Accel, Cache, Check, Layout, Mode, Via
from harness.host.truth import HostTruth
from harness.qemu.accel import AccelDecision
from harness.qemu.probe import QemuInfo
from harness.report import (
    TABLE_WIDTH,
    environment_json,
    markdown,
    row_dict,
    summary_line,
    table,
    to_json,
    to_junit,
)
from harness.results import (
    ENVIRONMENT_KEYS,
    EXIT_ERROR,
    EnvironmentRecord,
    GuestRecord,
    ResultRow,
    RunResults,
    exit_code,
)
from harness.verdicts.cache import PowerFinding
from harness.verdicts.common import Status
from harness.verdicts.ids import judge, unobserved
from harness.verdicts.known import KnownIssue
from harness.verdicts.ops import OpCase, OperationsSeen, judge_operations
from harness.verdicts.rejection import Attempt, RejectionCheck, judge_rejection
from harness.verdicts.witnesses import Witness
from harness.version import Version

# The report schema's page: it must name every JSON key the harness writes.
SCHEMA_PAGE = Path(__file__).resolve().parents[2] / "docs" / "reports.md"
INFO = QemuInfo(Path("/usr/bin/qemu-system-x86_64"), Version(7, 2, 22), True, True, False,
                "Debian 1:7.2")
RECORD = EnvironmentRecord(
    INFO, AccelDecision(Accel.TCG, "KVM unusable, fell back to TCG: no /dev/kvm", True),
    "debian-bookworm-x86_64", "6.1.0-56-amd64",
)
GUEST = GuestRecord("debian-bookworm-x86_64", "6.1.0-56-amd64", "remap+forbid+warn")


def _flat(nested: dict[str, Any]) -> set[str]:
    return {f"{group}.{key}" for group in ("qemu", "accel", "guest", "virtiofsd")
            for key in nested[group]}


def _row(case: str, status: Status) -> ResultRow:
    verdict = unobserved(Mode.REMAP, 3, f"{case} went {status.value}", status)
    return ResultRow(case=case, check=Check.IDS, via=Via.QEMU, verdict=verdict, guest=GUEST,
                     log_dir=Path("/logs") / case)


def _rejection_row() -> ResultRow:
    verdict = judge_rejection("bogus", "path", "refuse bogus",
                              [Attempt("defineXML", "invalid multidevs 'bogus'")],
                              ("multidevs", "bogus"))
    return ResultRow(case="reject-invalid-multidevs", check=RejectionCheck.REJECTION,
                     via=Via.LIBVIRT, verdict=verdict, backend=(("libvirt_version", "9.0.0"),))


def _ops_row() -> ResultRow:
    case = OpCase("unlink", "file", 1, "dev01/ops/file-unlink")
    seen = OperationsSeen((case,), (19,), ("dev01",), 0, ("dev01",), (), 2)
    verdict = judge_operations(Mode.FORBID, Version(7, 2, 22), seen, "", "")
    return ResultRow(case="operations-forbid", check=Check.OPERATIONS, via=Via.QEMU,
                     verdict=verdict, guest=GUEST, cache=Cache.NONE)


def _report(*rows: ResultRow) -> RunResults:
    return RunResults(RECORD, rows, 1.0, "/logs", logs_kept=True)


# --- one environment block ---------------------------------------------------------


def test_every_output_carries_the_same_environment_keys() -> None:
    keys = set(ENVIRONMENT_KEYS)
    assert _flat(environment_json(RECORD)) == keys  # probe --json
    assert _flat(to_json(_report(_row("remap", Status.PASS)))) == keys  # run --json
    junit = to_junit(_report(_row("remap", Status.PASS)))
    assert [p.get("name") for p in junit.iter("property")] == list(ENVIRONMENT_KEYS)
    assert _flat(header(RECORD, 5)) == keys  # scripts/bench


def test_the_environment_block_is_the_same_in_probe_and_run() -> None:
    block = environment_json(RECORD)
    run = to_json(_report(_row("remap", Status.PASS)))
    assert {k: run[k] for k in ("qemu", "accel", "guest", "virtiofsd")} == block
    assert block["accel"] == {"used": "tcg", "fell_back": True,
                              "reason": "KVM unusable, fell back to TCG: no /dev/kvm"}


def test_probe_of_a_qemu_without_multidevs_has_nulls_not_missing_keys() -> None:
    record = EnvironmentRecord(INFO, None, None, None)
    block = environment_json(record)
    assert _flat(block) == set(ENVIRONMENT_KEYS)
    assert block["accel"]["used"] is None and block["guest"]["kernel"] is None
    assert dict(record.properties())["accel.fell_back"] == ""


def test_junit_properties_use_json_spellings() -> None:
    props = dict(RECORD.properties())
    assert props["accel.fell_back"] == "true" and props["qemu.kvm_device"] == "false"
    assert props["qemu.version"] == "7.2.22" and props["guest.kernel"] == "6.1.0-56-amd64"


# --- statuses and exit codes -------------------------------------------------------


@pytest.mark.parametrize(("statuses", "code"), [
    ([Status.PASS, Status.PASS], 0),
    ([Status.PASS, Status.FAIL], 1),
    ([Status.PASS, Status.ERROR], 2),
    ([Status.PASS, Status.INCONCLUSIVE], 2),
    ([Status.ERROR, Status.FAIL], 1),  # a definite regression outranks an error
    ([], 2),  # nothing was checked: that proves nothing
])
def test_exit_code(statuses: list[Status], code: int) -> None:
    assert exit_code(statuses) == code


def test_each_status_is_written_to_every_format() -> None:
    report = _report(_row("remap", Status.PASS), _row("warn", Status.FAIL),
                     _row("forbid", Status.ERROR), _row("default", Status.INCONCLUSIVE))
    text = table(report)
    for case, shown in (("remap", "PASS"), ("warn", "FAIL"), ("forbid", "ERROR"),
                        ("default", "INCONCLUSIVE")):
        assert re.search(rf"^{case}\s.*\s{shown}$", text, re.MULTILINE), text
    assert "[warn] warn went fail" in text and "[forbid] forbid went error" in text
    data = to_json(report)
    assert [r["status"] for r in data["results"]] == ["pass", "fail", "error", "inconclusive"]
    assert data["exit_code"] == 1 and data["passed"] is False
    junit = to_junit(report)
    assert (junit.get("tests"), junit.get("failures"), junit.get("errors")) == ("4", "1", "2")
    cases = {c.get("name"): c for c in junit.iter("testcase")}
    assert cases["remap"].find("failure") is None and cases["remap"].find("error") is None
    assert cases["warn"].find("failure") is not None
    assert cases["forbid"].find("error") is not None
    assert cases["default"].find("error").get("type") == "inconclusive"  # type: ignore[union-attr]
    assert cases["warn"].get("classname") == "multidevs.qemu.debian-bookworm-x86_64"


# --- rows ----------------------------------------------------------------------------


def test_ids_row_json() -> None:
    row = _row("remap", Status.PASS)
    data = row_dict(row)
    assert data["check"] == "ids" and data["mode"] == "remap"
    assert data["guest"] == {"name": "debian-bookworm-x86_64", "kernel": "6.1.0-56-amd64",
                             "build": None, "plan": "remap+forbid+warn"}
    assert data["witnesses"] == {}
    assert row_dict(row, logs_kept=False)["log_dir"] is None


def test_rejection_row_is_its_own_kind() -> None:
    data = row_dict(_rejection_row())
    assert (data["check"], data["mode"], data["driver"]) == ("rejection", "bogus", "path")
    assert data["libvirt_errors"] == {"defineXML": "invalid multidevs 'bogus'"}
    assert data["backend"] == {"libvirt_version": "9.0.0"}
    for ids_only in ("host_devices", "guest_collisions", "witnesses", "denied"):
        assert ids_only not in data
    assert data["notes"] == ["libvirt: invalid multidevs 'bogus'"]


def _witnessed_row() -> ResultRow:
    verdict = judge(Mode.REMAP, Version(7, 2, 0), HostTruth(()),
                    GuestObservation(({},), {}, {}), "",
                    (Witness("du", False, "du -ab: counted 0 B of 9 B of files", 1),
                     Witness.not_run("find", "find: not in the guest image")))
    return ResultRow(case="control-remap", check=Check.IDS, via=Via.QEMU, verdict=verdict)


def test_each_witness_is_written_out_under_its_tool() -> None:
    row = _witnessed_row()
    assert row_dict(row)["witnesses"] == {
        "du": {"intact": False, "detail": "du -ab: counted 0 B of 9 B of files", "rc": 1},
        "find": {"intact": None, "detail": "find: not in the guest image", "rc": None},
    }
    assert table(_report(row)).splitlines()[2].split()[-3:] == ["1/1", "broken", "FAIL"]


def test_the_schema_page_documents_every_json_key() -> None:
    documented = set(re.findall(r"`([a-z_.<>\[\]]+)`", SCHEMA_PAGE.read_text()))
    report = _report(_row("remap", Status.PASS), _rejection_row(), _ops_row(), _witnessed_row())
    data = to_json(report)
    keys = {k for k in data if k not in ("results", "qemu", "accel", "guest", "virtiofsd")}
    keys |= set(ENVIRONMENT_KEYS) | {"results[].backend.domain"}
    for row in data["results"]:
        keys |= {f"results[].{k}" for k in row}
        for nested in ("guest", "backend", "qemu"):
            if isinstance(row.get(nested), dict):
                keys |= {f"results[].{nested}.{k}" for k in row[nested]}
        for witness in (row.get("witnesses") or {}).values():
            keys |= {f"results[].witnesses.<tool>.{k}" for k in witness}
        for item in row.get("operations", []):
            keys |= {f"results[].operations[].{k}" for k in item}
    missing = sorted(k for k in keys if k not in documented)
    assert missing == []


def test_table_names_the_guest_kernel_only_when_rows_differ() -> None:
    one = table(_report(_row("remap", Status.PASS)))
    assert one.splitlines()[0].split() == ["case", "exp", "observed", "witnesses", "verdict"]
    wide = table(_report(_row("remap", Status.PASS)), wide=True)
    assert wide.splitlines()[0].split() == ["case", "expectation", "observed", "witnesses",
                                            "verdict"]
    other = ResultRow(case="warn", check=Check.IDS, via=Via.QEMU, guest=GuestRecord(
        "debian-trixie-x86_64", "6.12.57+deb13-amd64", "warn"),
        verdict=unobserved(Mode.WARN, 3, "x", Status.PASS))
    two = table(_report(_row("remap", Status.PASS), other))
    assert two.splitlines()[0].split()[:2] == ["case", "guest"]
    assert "6.12.57+deb13-amd64" in two and "6.1.0-56-amd64" in two


def test_ops_row_json_names_every_operation_and_its_result() -> None:
    data = row_dict(_ops_row())
    assert (data["check"], data["mode"], data["status"]) == ("operations", "forbid", "pass")
    assert data["operations"] == [{"op": "unlink", "target": "file", "device": 1,
                                   "path": "dev01/ops/file-unlink", "result": 19,
                                   "expected": 19, "ok": True}]
    assert "witnesses" not in data


def test_a_probe_that_lost_its_power_makes_a_passing_row_inconclusive() -> None:
    lost = PowerFinding("the probe lost its power: ...", inconclusive=True)
    row = replace(_row("remap+loose", Status.PASS), power=lost)
    assert row.status is Status.INCONCLUSIVE and not row.passed
    assert row.failures[-1] == lost.text and lost.text not in row.notes
    assert exit_code([row.status]) == EXIT_ERROR
    # A note leaves the status alone and shows among the notes; a failing row stays failed.
    noted = replace(_row("remap+loose", Status.PASS), power=PowerFinding("power is shown"))
    assert noted.status is Status.PASS and noted.notes[-1] == "power is shown"
    assert replace(_row("remap+loose", Status.FAIL), power=lost).status is Status.FAIL
    data = row_dict(row)
    assert data["status"] == "inconclusive" and data["failures"][-1] == lost.text


# --- the table a terminal shows --------------------------------------------------------

LONG_EXPECTATION = ("calls through a directory held open across a host mount are denied "
                    "(ENODEV) and the device mounted over it is unchanged, in every cache mode")
LONG_OBSERVED = ("14 of 14 runtime paths stat-able, 13 collisions, 2 denied, 1 warning, "
                 "3 unrecognised messages")


def _long_row(case: str, layout: str, status: Status, expectation: str) -> ResultRow:
    row = _row(case, status)
    verdict = replace(row.verdict, expectation=expectation, observed=LONG_OBSERVED)
    return replace(row, verdict=verdict, layout=Layout(layout))


def _table_part(text: str) -> list[str]:
    return text.split("\n\nexpectations:")[0].splitlines()


def test_the_table_fits_its_width_and_says_each_expectation_once() -> None:
    rows = [_long_row("cross_device-default+loose", "standard", Status.INCONCLUSIVE,
                      LONG_EXPECTATION),
            _long_row("remap+loose@overlay", "overlay", Status.PASS, LONG_EXPECTATION),
            _long_row("warn", "standard", Status.PASS, "id collisions, one warning")]
    text = table(_report(*rows))
    lines = _table_part(text)
    assert max(len(line) for line in lines) <= TABLE_WIDTH, text
    assert lines[0].split() == ["case", "layout", "exp", "observed", "witnesses", "verdict"]
    # The layout column says what the case's "@overlay" said: the case is the short one.
    starts = {line.split()[0]: line.split() for line in lines[2:] if line[0] != " "}
    assert starts["remap+loose"][1:3] == ["overlay", "E1"], text
    assert starts["warn"][1:3] == ["standard", "E2"], text
    # The observed text is whole: the first row's words, then its continuation lines.
    first = starts["cross_device-default+loose"]
    continued = lines[3:lines.index(next(row for row in lines[3:] if row[0] != " "))]
    words = first[3:-2] + [w for line in continued for w in line.split()]
    assert " ".join(words) == LONG_OBSERVED, text
    assert first[-2:] == ["n/a", "INCONCLUSIVE"] and continued, text
    legend = text.split("expectations:\n")[1].split("\n\n")[0]
    assert " ".join(legend.split()) == f"E1 {LONG_EXPECTATION} E2 id collisions, one warning"
    assert max(len(line) for line in legend.splitlines()) <= TABLE_WIDTH
    assert text.count("in every cache mode") == 1


def test_the_wide_table_keeps_each_expectation_in_its_row() -> None:
    rows = [_long_row("remap", "standard", Status.PASS, LONG_EXPECTATION),
            _long_row("warn", "standard", Status.PASS, LONG_EXPECTATION)]
    text = table(_report(*rows), wide=True)
    assert text.count(LONG_EXPECTATION) == 2 and text.count(LONG_OBSERVED) == 2
    assert "expectations:" not in text


def test_the_summary_line_does_not_repeat_the_fallback_reason() -> None:
    # The reason was said on the accelerator line at the start; the reports keep it.
    line = summary_line(_report(_row("remap", Status.PASS)))
    assert "no /dev/kvm" not in line and "fell back from KVM" in line, line
    reason = to_json(_report(_row("remap", Status.PASS)))["accel"]["reason"]
    assert reason == "KVM unusable, fell back to TCG: no /dev/kvm"


def test_markdown_has_every_row_and_failure_and_escapes_bars() -> None:
    rows = [_long_row("remap", "standard", Status.PASS, "a | b"),
            _long_row("warn", "standard", Status.FAIL, "a | b")]
    text = markdown(_report(*rows))
    lines = text.splitlines()
    assert lines[0] == "| case | expectation | observed | witnesses | verdict |"
    assert lines[2] == f"| `remap` | a \\| b | {LONG_OBSERVED} | n/a | **PASS** |"
    assert lines[3].startswith("| `warn` |") and lines[3].endswith("| **FAIL** |")
    assert "- `warn`: warn went fail" in lines
    assert lines[-1] == summary_line(_report(*rows))


def test_a_known_issue_is_named_once_above_the_rows_it_explains() -> None:
    issue = KnownIssue("qemu-remap-unkeyed-bits", "multidevs=remap gives distinct files one "
                       "qid when their inode numbers differ only in high bits the device's "
                       "remap key ignores (overlayfs xino layers)", ("remap",), (),
                       "multidevs-harness reproduce --layout overlay --mode remap")
    rows = [replace(_row(case, Status.FAIL), known_issue=issue)
            for case in ("remap@overlay", "remap+loose@overlay")]
    text = table(_report(*rows))
    section = text.split("not counted as news):\n")[1].splitlines()
    assert text.count("overlayfs xino layers") == 1 and text.count("reproduce:") == 1, text
    assert section[0].startswith("  qemu-remap-unkeyed-bits: multidevs=remap gives"), text
    assert max(len(line) for line in section[:2]) <= TABLE_WIDTH
    assert section[2:] == ["    reproduce: multidevs-harness reproduce --layout overlay "
                           "--mode remap", "    [remap@overlay]", "      remap@overlay went fail",
                           "    [remap+loose@overlay]", "      remap+loose@overlay went fail"]
