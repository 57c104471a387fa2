"""QEMU's stderr read as QEMU writes it: the grammar of an ``error_report`` line.  Pure.

QEMU reports through one function (util/qemu-error.c: ``vreport``), which writes, in
order: an ISO 8601 time stamp and a space (``-msg timestamp=on``, which libvirt
sets), the guest's name and a space (``-msg guest-name=on``), the program name and a
colon, then the location being parsed when the line was written: a command-line
option with its value (`` -mon chardev=qmp,mode=control: ``) or a file and line
(`` FILE:N: ``), else a space; then ``warning: `` or ``info: `` for those kinds (an
error has no word), then the message.  Real lines of QEMU 5.2, 7.2, 10.0 and 11.1
are in the unit tests.

Before 11.1 the harness read any ``program: X`` line whose X was not ``warning:``
or ``info:`` as an error, so QEMU 11.1's located deprecation warning about the
harness's own ``-mon`` failed every row.  A located warning names the option it is
about, which tells the harness's own options (the monitor, the machine, the
accelerator, a chardev: not under test) from the export under test (``-fsdev``,
``-virtfs``, the 9p and vhost-user-fs devices and virtiofs's chardevs).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum


class ReportKind(StrEnum):
    """What ``vreport`` was asked to write."""

    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


@dataclass(frozen=True)
class QemuReport:
    """One ``error_report``/``warn_report``/``info_report`` line, taken apart."""

    program: str
    kind: ReportKind
    message: str
    # The option and its value (``-mon chardev=qmp,mode=control``) or ``FILE:N`` QEMU
    # was parsing; "" when the line was written outside any.
    location: str = ""
    timestamp: str = ""

    @property
    def option(self) -> str:
        """The command-line option of the location (``-mon``), "" for none."""
        return self.location.split(" ", 1)[0] if self.location.startswith("-") else ""


_STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)?")
# The program name as QEMU builds print it: qemu-system-x86_64, qemu-kvm, a path.
_PROGRAM = re.compile(r"\S*qemu\S*")
_KIND = re.compile(r"(?P<kind>warning|info): (?P<message>.*)")
# A location that is a file being read: "FILE:N" (or "FILE" when no line is known);
# a file's name has a dot or a slash, which a word of an error's message seldom has.
_FILE_LOCATION = re.compile(r"[^\s:]*[./][^\s:]*(?::\d+)?")


def parse_report(line: str) -> QemuReport | None:
    """``line`` taken apart by QEMU's report grammar (module docstring), or None when
    it is not a report line (no program name where one must stand)."""
    words = line.strip().split(" ")
    timestamp = ""
    if words and _STAMP.fullmatch(words[0]):
        timestamp, words = words[0], words[1:]
    # An optional guest name before the program (-msg guest-name=on).
    for skip in (0, 1):
        head = words[skip] if len(words) > skip else ""
        if head.endswith(":") and _PROGRAM.fullmatch(head[:-1]):
            program, rest = head[:-1], " ".join(words[skip + 1:])
            return _after_program(program, rest, timestamp)
    return None


def _after_program(program: str, rest: str, timestamp: str) -> QemuReport:
    kind = _KIND.fullmatch(rest)
    if kind:
        return QemuReport(program, ReportKind(kind["kind"]), kind["message"], "", timestamp)
    # A located line: "LOCATION: [warning: |info: ]MESSAGE".  A command-line location
    # starts with its option's dash; a file location is one word with a line number.
    # The first ": " followed by a kind word ends a location; else, for an option, the
    # first ": " (an error's message follows it directly).
    for match in re.finditer(r": ", rest):
        location, tail = rest[:match.start()], rest[match.end():]
        kind = _KIND.fullmatch(tail)
        if kind and (location.startswith("-") or _FILE_LOCATION.fullmatch(location)):
            return QemuReport(program, ReportKind(kind["kind"]), kind["message"], location,
                              timestamp)
    if rest.startswith("-") and ": " in rest:
        location, message = rest.split(": ", 1)
        return QemuReport(program, ReportKind.ERROR, message, location, timestamp)
    return QemuReport(program, ReportKind.ERROR, rest, "", timestamp)


# The options that carry the export under test: its backend, its device and, for
# virtiofs, the chardev to virtiofsd (ids vfsN, ``cmdline.vhost_user_fs_args``).
_UNDER_TEST = re.compile(
    r"-fsdev |-virtfs |-device (virtio-9p|vhost-user-fs)|-chardev socket,id=vfs\d")


def about_export(report: QemuReport) -> bool:
    """Whether a located line is about an option under test (the export itself)."""
    return bool(_UNDER_TEST.match(report.location + " "))


def own_option_notices(stderr: str) -> list[str]:
    """Each distinct located warning or info line about an option the harness passed
    that is not under test (a deprecation, an ignored property): the harness's to fix,
    never QEMU's regression.  Returned as QEMU wrote them, minus time stamps."""
    found: dict[str, None] = {}
    for line in stderr.splitlines():
        report = parse_report(line)
        if report is None or report.kind is ReportKind.ERROR or not report.location \
                or about_export(report):
            continue
        found[f"{report.program}: {report.location}: {report.kind.value}: "
              f"{report.message}"] = None
    return list(found)
