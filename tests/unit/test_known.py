"""Known issues (``verdicts.known``): parsing, scope, which failures an issue explains,
and what a row and a run report make of it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness.config import Check, Via
from harness.errors import UsageError
from harness.qemu.probe import QemuInfo
from harness.results import EXIT_FAIL, EXIT_OK, EnvironmentRecord, ResultRow, RunResults, exit_code
from harness.run import load_known_issues
from harness.verdicts.common import Status, Verdict
from harness.verdicts.known import RowFacts, kernel_version, match, parse_known_issues, unreproduced
from harness.version import Version

ISSUE = """
[[issue]]
id = "qemu-remap-unkeyed-bits"
title = "remap collides"
component = "qemu"
modes = ["remap", "default"]
expectation = "unique_ids"
layouts = ["overlay"]
qemu_min = "4.2.0"
failures = ['^collision: ', '^remap model: ']
remap_model = "agrees"
reproducer = "multidevs-harness reproduce --layout overlay --mode remap"
"""
COLLISION = "collision: guest id (dev 9, ino 20) is shared by 'l2/f0', 'l3/f0'"
EXPLAINED = "remap model: 'l2/f0', 'l3/f0' share one qid: bits 62-61 dropped"


def _facts(**changes: object) -> RowFacts:
    base: dict[str, object] = dict(
        check="ids", mode="remap", expectation="unique_ids", layout="overlay", cache="none",
        qemu=Version(7, 2, 22), kernel="6.1.0-57-amd64", failures=(COLLISION, EXPLAINED),
        remap_agrees=True)
    base.update(changes)
    return RowFacts(**base)  # type: ignore[arg-type]  # the test's own keyword bag


ISSUES = parse_known_issues(ISSUE, "test")


def test_a_failure_the_issue_explains_matches() -> None:
    assert match(ISSUES, _facts()) is ISSUES[0]


@pytest.mark.parametrize("changes", [
    {"failures": (COLLISION, "witness cp not intact: 3 files wrong")},  # one unexplained
    {"remap_agrees": False},  # a collision the model does not predict: another bug
    {"layout": "standard"},
    {"mode": "warn"},
    {"expectation": "collide_and_warn"},  # default on QEMU 9.x is warn: not this bug
    {"qemu": Version(4, 1, 0)},
])
def test_anything_the_issue_does_not_explain_stays_a_failure(changes: dict[str, object]
                                                             ) -> None:
    assert match(ISSUES, _facts(**changes)) is None


def test_a_passing_row_in_scope_says_the_issue_did_not_reproduce() -> None:
    # The guest's ids are not the model's: QEMU's remap changed (a fix) and collided
    # nowhere.
    assert unreproduced(ISSUES, _facts(failures=(), remap_agrees=False)) == ISSUES
    assert unreproduced(ISSUES, _facts(failures=(), remap_agrees=False, layout="standard")) == ()
    assert unreproduced(ISSUES, _facts()) == ()


def test_a_passing_row_equal_to_the_model_says_nothing_about_a_fix() -> None:
    # QEMU 7.2 on overlay-mixed: the algorithm with the bug, on a tree where the model
    # predicts no collision.  Counting it made --strict-known exit 1 on stock QEMU.
    assert unreproduced(ISSUES, _facts(failures=(), remap_agrees=True)) == ()


def test_kernel_ranges_read_the_release() -> None:
    assert kernel_version("6.12.118+deb13-amd64") == Version(6, 12, 118)
    assert kernel_version("6.1-rc1") == Version(6, 1, 0)
    assert kernel_version("custom") is None
    ranged = parse_known_issues(ISSUE.replace('qemu_min = "4.2.0"',
                                              'kernel_min = "6.9"\nkernel_max = "6.11.6"'), "t")
    assert match(ranged, _facts(kernel="6.10.3-amd64")) is ranged[0]
    assert match(ranged, _facts(kernel="6.11.6")) is None
    assert match(ranged, _facts(kernel="6.1.0-57-amd64")) is None


@pytest.mark.parametrize(("text", "message"), [
    ("[[issue]]\nid = 'x'\n", r"test: issue 1 \(x\): missing title, component, modes, failures, "
                              r"reproducer"),
    (ISSUE + "colour = 'red'\n", r"unknown keys colour"),
    (ISSUE.replace("'^collision: '", "'(('"), r"failures: bad regular expression"),
    (ISSUE.replace('"4.2.0"', '"new"'), r"qemu_min: expected a version string"),
    (ISSUE + ISSUE, r"an issue id appears twice"),
    # Every value is one the rows can have: a typo is named with its issue and key.
    (ISSUE.replace('["remap", "default"]', '["remapp"]'),
     r"^test: issue 1 \(qemu-remap-unkeyed-bits\): modes: unknown value 'remapp' for "
     r"transport 9p\n"),
    (ISSUE.replace('["overlay"]', '["overlay", "ovelray"]'),
     r"issue 1 \(qemu-remap-unkeyed-bits\): layouts: unknown value 'ovelray'\n"),
    (ISSUE.replace('"unique_ids"', '"unique"'), r"expectation: unknown value 'unique'\n"),
    (ISSUE.replace('"agrees"', '"agree"'), r"remap_model: unknown value 'agree'\n"),
    (ISSUE.replace('"qemu"', '"qmeu"'), r"component: unknown value 'qmeu'\n"),
    (ISSUE + 'check = "held-fd"\n', r"check: unknown value 'held-fd'\n"),
    (ISSUE + 'caches = ["lose"]\n', r"caches: unknown value 'lose' for transport 9p\n"),
    (ISSUE + 'transport = "virtio"\n', r"transport: unknown value 'virtio'\n"),
    # A 9p mode is not a virtiofs setting, nor a 9p cache mode virtiofsd's policy.
    (ISSUE + 'transport = "virtiofs"\n',
     r"modes: unknown value 'remap', 'default' for transport virtiofs\n"),
    (ISSUE + 'colour = "red"\n', r"^test: issue 1 \(qemu-remap-unkeyed-bits\): unknown keys "
                                  r"colour\n"),
    ("[issue]\nid = 1\n", r"expected only \[\[issue\]\] tables"),
    ("not toml =", r"not valid TOML"),
])
def test_a_bad_file_is_a_usage_error_naming_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_known_issues(text, "test")


def test_the_shipped_list_parses_and_an_empty_file_knows_nothing(tmp_path: Path) -> None:
    shipped = load_known_issues(None)
    assert "qemu-remap-unkeyed-bits" in {issue.id for issue in shipped}
    empty = tmp_path / "none.toml"
    empty.write_text("")
    assert load_known_issues(empty) == ()
    with pytest.raises(UsageError, match=r"^--known-issues .*missing\.toml: No such file"):
        load_known_issues(tmp_path / "missing.toml")
    # A FIFO would block a plain open() until some writer came: refused at once.
    fifo = tmp_path / "issues.fifo"
    os.mkfifo(fifo)
    with pytest.raises(UsageError, match=r"^--known-issues .*issues\.fifo is a FIFO, not a "
                       "regular file"):
        load_known_issues(fifo)


def _row(status: Status, known: bool = False, absent: bool = False) -> ResultRow:
    verdict = Verdict(expectation="e", observed="o", status=status,
                      failures=(COLLISION,) if status is Status.FAIL else ())
    return ResultRow("remap@overlay", Check.IDS, Via.QEMU, verdict,
                     known_issue=ISSUES[0] if known else None,
                     unreproduced=ISSUES if absent else ())


def test_a_known_failure_is_status_known_and_exits_0() -> None:
    row = _row(Status.FAIL, known=True)
    assert row.status is Status.KNOWN and not row.passed
    assert exit_code([row.status, Status.PASS]) == EXIT_OK
    assert exit_code([_row(Status.FAIL).status]) == EXIT_FAIL


def test_strict_known_fails_a_run_where_a_known_issue_did_not_reproduce() -> None:
    info = QemuInfo(Path("/usr/bin/qemu-system-x86_64"), Version(7, 2, 22), True, True, False)
    env = EnvironmentRecord(info, None, None, None)
    rows = (_row(Status.PASS, absent=True),)
    assert RunResults(env, rows).exit_code == EXIT_OK
    assert RunResults(env, rows, strict_known=True).exit_code == EXIT_FAIL
    assert RunResults(env, rows, strict_known=True).unreproduced == ("qemu-remap-unkeyed-bits",)


# --- a virtiofs issue: its transport, its setting in the mode's place -------------------

MOUNT_POINT = ("guest id of 'dev01' changed between pass 1 and pass 2: (dev 24, ino 128) "
               "-> (dev 28, ino 128)")
FIRST_PASS = ("collision: guest id (dev 24, ino 1) is shared by '.' (host dev 56, ino 1) "
              "and 'dev02' (host dev 67, ino 1)")


def _virtiofs(**changes: object) -> RowFacts:
    return _facts(**{"mode": "virtiofs", "expectation": None, "layout": "xfs",
                     "cache": "auto", "transport": "virtiofs",
                     "failures": (MOUNT_POINT, FIRST_PASS), "remap_agrees": None, **changes})


def test_the_shipped_virtiofs_issue_explains_a_mount_point_seen_before_its_automount(
        ) -> None:
    shipped = load_known_issues(None)
    (issue,) = [i for i in shipped if i.id == "virtiofs-submount-stat-before-automount"]
    assert match(shipped, _virtiofs()) is issue
    # A 9p row with the same lines, the row without submounts, a layout the harm probe
    # enters first, or an st_ino that changed: not this issue.
    assert match(shipped, _virtiofs(transport="9p", mode="remap")) is None
    assert match(shipped, _virtiofs(mode="virtiofs-nosubmounts")) is None
    assert match(shipped, _virtiofs(layout="standard")) is None
    moved = MOUNT_POINT.replace("(dev 28, ino 128)", "(dev 28, ino 7)")
    assert match(shipped, _virtiofs(failures=(moved, FIRST_PASS))) is None
    assert unreproduced(shipped, _virtiofs(failures=())) == (issue,)


SPLIT = ("hard links of one host file got different guest ids: 'bind-a/inner' (dev 24, ino 5), "
         "'bind-b/inner' (dev 25, ino 5) and 'sub/inner' (dev 23, ino 5)")
BIND_POINT = ("guest id of 'bind-a' changed between pass 1 and pass 2: (dev 23, ino 4) -> "
              "(dev 24, ino 4)")


def test_the_shipped_bind_split_issue_explains_a_bind_seen_as_submounts() -> None:
    shipped = load_known_issues(None)
    (issue,) = [i for i in shipped if i.id == "virtiofs-submount-bind-split"]
    facts = _virtiofs(check="bind", layout="standard", failures=(SPLIT, BIND_POINT))
    assert match(shipped, facts) is issue
    # A collision there, or the same lines without submounts or over 9p: not this issue.
    assert match(shipped, _virtiofs(check="bind", layout="standard",
                                    failures=(SPLIT, FIRST_PASS))) is None
    assert match(shipped, _virtiofs(check="bind", mode="virtiofs-nosubmounts",
                                    failures=(SPLIT,))) is None
    assert match(shipped, _virtiofs(check="bind", transport="9p", mode="warn",
                                    failures=(SPLIT,))) is None
