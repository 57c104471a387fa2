"""The held_fd rules: under forbid every call through a directory held open across a
host mount is denied and the covering device unchanged; elsewhere the calls land."""

from __future__ import annotations

import errno

from harness.checks.held import CALLS
from harness.config import Mode
from harness.verdicts.common import Status
from harness.verdicts.held import HeldSeen, HostDir, judge_held
from harness.version import Version

QEMU = Version(7, 2, 22)
FORBID_MESSAGE = ("qemu-system-x86_64: 9p: Multiple devices detected in same VirtFS export. "
                  "Access of guest to additional devices is (partly) denied due to virtfs "
                  "option 'multidevs=forbid' being effective.\n")
BEFORE = HostDir(0o755, ("file 0000", "link-a", "sub"))
DENIED = (errno.ENODEV,) * len(CALLS)


def _seen(answers: tuple[int, ...], after: HostDir, hold_error: str = "") -> HeldSeen:
    return HeldSeen("held", 2, CALLS, hold_error, answers, BEFORE, after)


def test_forbid_passes_when_everything_is_denied_and_nothing_changed() -> None:
    verdict = judge_held(Mode.FORBID, QEMU, _seen(DENIED, BEFORE), FORBID_MESSAGE, "")
    assert verdict.status is Status.PASS, verdict.failures
    assert [o.expected for o in verdict.outcomes] == [errno.ENODEV] * len(CALLS)


def test_forbid_fails_on_what_qemu_7_2_did() -> None:
    # Measured on QEMU 7.2 (both guests): chmod succeeded, mkdir and symlink made
    # their entry and then answered ENODEV.
    answers = tuple(0 if c.op == "chmod" else errno.ENODEV for c in CALLS)
    after = HostDir(0o640, ("file 0000", "held-dir", "held-link", "link-a", "sub"))
    verdict = judge_held(Mode.FORBID, QEMU, _seen(answers, after), FORBID_MESSAGE, "")
    assert verdict.status is Status.FAIL
    assert verdict.failures == (
        "chmod on held-fd 'held' (device 2) gave success, expected errno 19 (ENODEV)",
        "the foreign device's root changed mode through the held fd: 0755 -> 0640",
        "'held/held-dir' appeared on the foreign device (device 2)",
        "'held/held-link' appeared on the foreign device (device 2)",
    )


def test_forbid_fails_on_an_entry_that_vanished() -> None:
    after = HostDir(0o755, ("file 0000", "sub"))
    verdict = judge_held(Mode.FORBID, QEMU, _seen(DENIED, after), FORBID_MESSAGE, "")
    assert verdict.failures == ("'held/link-a' vanished on the foreign device (device 2)",)


def test_a_guest_that_could_not_hold_the_directory_fails() -> None:
    verdict = judge_held(Mode.FORBID, QEMU, _seen((), BEFORE, "rc 1: no"), FORBID_MESSAGE, "")
    assert verdict.status is Status.FAIL
    assert verdict.failures == ("the guest could not hold 'held' open: rc 1: no",)


def test_forbid_fails_on_another_modes_message() -> None:
    warning = ("qemu-system-x86_64: warning: 9p: Multiple devices detected in same VirtFS "
               "export, which might lead to file ID collisions and severe misbehaviours on "
               "guest! You should either use a separate export for each device shared from "
               "host or use virtfs option 'multidevs=remap'!\n")
    verdict = judge_held(Mode.FORBID, QEMU, _seen(DENIED, BEFORE), warning, "")
    assert any(f.startswith("unexpected multi-device warning") for f in verdict.failures)


def test_other_modes_reach_the_device_and_the_host_shows_it() -> None:
    after = HostDir(0o640, ("file 0000", "held-dir", "held-file", "held-link", "sub"))
    ok = judge_held(Mode.REMAP, QEMU, _seen((0,) * len(CALLS), after), "", "")
    assert ok.status is Status.PASS, ok.failures
    # A call that answered success but left no trace on the host fails.
    lost = HostDir(0o755, ("file 0000", "link-a", "sub"))
    verdict = judge_held(Mode.REMAP, QEMU, _seen((0,) * len(CALLS), lost), "", "")
    assert "chmod through the held fd left the covering device's root at 0755, expected " \
        "0640" in verdict.failures
    assert "unlink of 'held/link-a' through the held fd answered success but the host " \
        "shows it still there" in verdict.failures
    assert "mkdir of 'held/held-dir' through the held fd answered success but the host " \
        "shows it missing" in verdict.failures


def test_the_known_issue_explains_exactly_the_measured_failures() -> None:
    from harness.run import load_known_issues
    from harness.verdicts.known import RowFacts, match

    answers = tuple(0 if c.op == "chmod" else errno.ENODEV for c in CALLS)
    after = HostDir(0o640, ("file 0000", "held-dir", "held-link", "link-a", "sub"))
    measured = judge_held(Mode.FORBID, QEMU, _seen(answers, after), FORBID_MESSAGE, "")

    def facts(failures: tuple[str, ...]) -> RowFacts:
        return RowFacts(check="held_fd", mode="forbid", expectation="deny_foreign",
                        layout="standard", cache="none", qemu=QEMU, kernel="6.1.0-57-amd64",
                        failures=failures, remap_agrees=None)

    issues = load_known_issues(None)
    found = match(issues, facts(measured.failures))
    assert found is not None and found.id == "qemu-forbid-held-fid"
    # A create that is not denied, or a vanished entry, is another bug.
    for extra in ("creat on held-fd 'held/held-file' (device 2) gave success, expected "
                  "errno 19 (ENODEV)", "'held/link-a' vanished on the foreign device (device 2)"):
        assert match(issues, facts((*measured.failures, extra))) is None
