"""QEMU's report grammar, on lines real QEMUs printed.

Captured on 2026-12-07 from Debian's builds (5.2 of bullseye, 7.2 of bookworm, 10.0 of
trixie, 11.1 of sid, each run through its own loader as ``--qemu debian:SUITE`` runs
it) with: ``-machine none ... -chardev socket,id=qmp,fd=N -mon chardev=qmp,mode=control``
(the monitor the harness passed before it asked for ``monitor-qmp``); ``-fsdev
local,id=f0,security_model=none`` (no path), also under ``-msg timestamp=on``; and
``-machine q35 -accel tcg -cpu qemu64,+avx512f``.  5.2, 7.2 and 10.0 print the same
lines but for the CPUID notation 11.1 changed and the -mon line, which only 11.1 prints.
"""

from __future__ import annotations

import pytest

from harness.verdicts.common import find_multidevs_messages
from harness.verdicts.qemu_end import stderr_trouble
from harness.verdicts.qemu_stderr import (
    QemuReport,
    ReportKind,
    own_option_notices,
    parse_report,
)

# 7.2's multi-device messages, as printed in a default matrix.
WARNING = ("qemu-system-x86_64: warning: 9p: Multiple devices detected in same VirtFS "
           "export, which might lead to file ID collisions and severe misbehaviours on guest! "
           "You should either use a separate export for each device shared from host or use "
           "virtfs option 'multidevs=remap'!")
FORBID = ("qemu-system-x86_64: 9p: Multiple devices detected in same VirtFS export. Access "
          "of guest to additional devices is (partly) denied due to virtfs option "
          "'multidevs=forbid' being effective.")

MON_11_1 = ("qemu-system-x86_64: -mon chardev=qmp,mode=control: warning: '-mon' is "
            "deprecated, use '-object' with 'monitor-hmp' or 'monitor-qmp' types instead")
NO_PATH = "qemu-system-x86_64: -fsdev local,id=f0,security_model=none: path property not set"
NO_PATH_STAMPED = f"2026-12-07T21:20:01.437282Z {NO_PATH}"
TCG_FEATURE = {
    "5.2": "qemu-system-x86_64: warning: TCG doesn't support requested feature: "
           "CPUID.07H:EBX.avx512f [bit 16]",
    "11.1": "qemu-system-x86_64: warning: TCG doesn't support requested feature: "
            "CPUID[eax=07h,ecx=00h].EBX.avx512f [bit 16]",
}
SIGNALLED = "qemu-system-x86_64: terminating on signal 15 from pid 22629 (timeout)"


@pytest.mark.parametrize(("line", "report"), [
    (MON_11_1, QemuReport("qemu-system-x86_64", ReportKind.WARNING,
                          "'-mon' is deprecated, use '-object' with 'monitor-hmp' or "
                          "'monitor-qmp' types instead", "-mon chardev=qmp,mode=control")),
    (NO_PATH, QemuReport("qemu-system-x86_64", ReportKind.ERROR, "path property not set",
                         "-fsdev local,id=f0,security_model=none")),
    (NO_PATH_STAMPED, QemuReport("qemu-system-x86_64", ReportKind.ERROR,
                                 "path property not set",
                                 "-fsdev local,id=f0,security_model=none",
                                 "2026-12-07T21:20:01.437282Z")),
    (TCG_FEATURE["11.1"], QemuReport("qemu-system-x86_64", ReportKind.WARNING,
                                     "TCG doesn't support requested feature: "
                                     "CPUID[eax=07h,ecx=00h].EBX.avx512f [bit 16]")),
    (SIGNALLED, QemuReport("qemu-system-x86_64", ReportKind.ERROR,
                           "terminating on signal 15 from pid 22629 (timeout)")),
    # A file location (QEMU's -readconfig) and a guest name before the program.
    ("qemu-kvm: /etc/qemu/x.cfg:3: warning: no such property",
     QemuReport("qemu-kvm", ReportKind.WARNING, "no such property", "/etc/qemu/x.cfg:3")),
    ("vm1 qemu-system-x86_64: info: 9p: ready",
     QemuReport("qemu-system-x86_64", ReportKind.INFO, "9p: ready")),
])
def test_each_real_line_is_taken_apart(line: str, report: QemuReport) -> None:
    assert parse_report(line) == report


def test_a_word_of_an_errors_message_is_not_taken_for_a_location() -> None:
    report = parse_report("qemu-system-x86_64: failed: warning: shown")
    assert report is not None and report.kind is ReportKind.ERROR and not report.location


@pytest.mark.parametrize("line", ["9p: Multiple devices", "", "Copyright (c) 2003-2026",
                                  "==4242==ERROR: AddressSanitizer: heap-use-after-free"])
def test_a_line_without_a_program_is_no_report(line: str) -> None:
    assert parse_report(line) is None


def test_a_located_warning_is_no_trouble_and_a_located_error_is() -> None:
    # QEMU 11.1 printed this on every start the harness made before: every row failed.
    assert stderr_trouble(f"{MON_11_1}\n{TCG_FEATURE['5.2']}\n{SIGNALLED}\n", "x") == []
    for line in (NO_PATH, NO_PATH_STAMPED):
        assert stderr_trouble(line, "x") == [f"QEMU stderr x shows trouble: {line!r}"]


def test_a_warning_about_the_harnesss_own_option_is_a_notice_once() -> None:
    stamped = f"2026-12-07T21:20:01.437282Z {MON_11_1}"
    assert own_option_notices(f"{MON_11_1}\n{stamped}\n{TCG_FEATURE['5.2']}\n{NO_PATH}\n") == [
        MON_11_1]


@pytest.mark.parametrize("location", [
    "-fsdev local,id=fsdev0,path=/srv/x,security_model=none,multidevs=forbid",
    "-device virtio-9p-pci,id=fs0,fsdev=fsdev0,mount_tag=mdh0",
    "-device vhost-user-fs-pci,id=fs1,chardev=vfs1,tag=mdh1,queue-size=1024",
    "-chardev socket,id=vfs1,path=mdh-vfs,abstract=on",
    "-virtfs local,path=/srv,mount_tag=t",
])
def test_a_warning_about_the_export_is_no_notice(location: str) -> None:
    assert own_option_notices(f"qemu-system-x86_64: {location}: warning: odd\n") == []


def test_a_located_multidevs_warning_counts_as_the_warning_not_as_forbids() -> None:
    # The location names the -fsdev, whose multidevs= value must not decide the kind.
    fsdev = "-fsdev local,id=fsdev0,path=/srv/x,security_model=none,multidevs=forbid"
    located = WARNING.replace("qemu-system-x86_64: ", f"qemu-system-x86_64: {fsdev}: ", 1)
    found = find_multidevs_messages(f"{located}\n")
    assert found.warn == (located,) and found.forbid == () and found.unknown == ()
    located_forbid = FORBID.replace("qemu-system-x86_64: ", f"qemu-system-x86_64: {fsdev}: ",
                                    1)
    assert find_multidevs_messages(located_forbid).forbid == (located_forbid,)
    assert stderr_trouble(f"{located}\n{located_forbid}\n", "x") == []
