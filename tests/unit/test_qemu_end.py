"""QEMU's own end and its stderr: each rule with the input that must fail (and what a
normal QEMU 7.2 run prints, which must pass)."""

from __future__ import annotations

import signal

import pytest

from harness.verdicts.common import Status, Verdict
from harness.verdicts.qemu_end import (
    EndHow,
    QemuEnd,
    end_failures,
    stderr_trouble,
    with_findings,
)

from .test_qemu_stderr import FORBID, WARNING


def test_a_quit_that_ends_with_status_0_is_how_the_harness_ends_qemu() -> None:
    assert end_failures(QemuEnd(EndHow.QUIT, 0)) == []
    assert end_failures(None) == []  # libvirt: QEMU is not the harness's child


def test_sigabrt_after_quit_fails() -> None:
    assert end_failures(QemuEnd(EndHow.QUIT, -signal.SIGABRT)) == [
        "QEMU ended with death by SIGABRT (status -6) after QMP quit, expected exit status 0"]


def test_a_non_zero_exit_after_quit_fails() -> None:
    assert end_failures(QemuEnd(EndHow.QUIT, 1)) == [
        "QEMU ended with exit status 1 after QMP quit, expected exit status 0"]


def test_a_qemu_the_harness_had_to_kill_fails() -> None:
    assert end_failures(QemuEnd(EndHow.KILLED, -9, quit_seconds=10)) == [
        "QEMU did not exit within 10 s of QMP quit and had to be killed (death by SIGKILL "
        "(status -9))"]


def test_a_qemu_gone_before_the_harness_stopped_it_fails() -> None:
    assert end_failures(QemuEnd(EndHow.GONE, 0)) == [
        "QEMU had already ended before the harness stopped it: exit status 0"]


def test_a_normal_qemu_7_2_run_shows_no_trouble() -> None:
    # Exactly what QEMU 7.2 printed in a passing default matrix (qemu-stderr.log), and
    # libvirt's destroy.
    normal = "\n".join([FORBID, WARNING, "qemu-system-x86_64: warning: TCG doesn't support "
                        "requested feature: CPUID.01H:ECX.vmx [bit 5]",
                        "qemu-system-x86_64: terminating on signal 15 from pid 4242 (<unknown "
                        "process>)", ""])
    assert stderr_trouble(normal, "outside every observation") == []


@pytest.mark.parametrize("line", [
    "qemu-system-x86_64: ../hw/9pfs/9p.c:1234: v9fs_walk: Assertion `fidp' failed.",
    "../hw/9pfs/9p.c:812:19: runtime error: shift exponent 64 is too large",
    "==4242==ERROR: AddressSanitizer: heap-use-after-free on address 0x602000000010",
    "==4242==ERROR: LeakSanitizer: detected memory leaks",
    "qemu-system-x86_64: failed to set MSR 0x10a to 0x69",
    "qemu-kvm: 9p: error reading directory: Input/output error",
    "2025-01-01T10:00:00.000000Z qemu-system-x86_64: virtio: zero sized buffers are not allowed",
])
def test_each_trouble_line_fails_and_is_named(line: str) -> None:
    assert stderr_trouble(f"{WARNING}\n{line}\n", "while this export was observed") == [
        f"QEMU stderr while this export was observed shows trouble: {line!r}"]


def test_findings_fail_a_passing_or_inconclusive_row_but_leave_an_error() -> None:
    passing = Verdict(expectation="e", observed="o", status=Status.PASS, failures=())
    failed = with_findings(passing, ["QEMU ended badly"])
    assert failed.status is Status.FAIL and failed.failures == ("QEMU ended badly",)
    unsure = Verdict(expectation="e", observed="o", status=Status.INCONCLUSIVE,
                     failures=("premise",))
    assert with_findings(unsure, ["x"]).status is Status.FAIL
    error = Verdict(expectation="e", observed="o", status=Status.ERROR, failures=("boot",))
    assert with_findings(error, ["x"]) is error
    assert with_findings(passing, []) is passing
