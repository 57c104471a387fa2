"""QEMU's own end: a guest's QEMU must end as the harness ended it, and say nothing on
stderr that shows it in trouble.  Pure.

The harness stops a QEMU it runs directly with QMP ``quit`` and waits; only a QEMU
still running at the deadline is killed (``qemu.machine``).  So a QEMU that answered
quit must exit with status 0 by itself; one that had to be killed, or that had
already ended before the harness stopped it, or that died of a signal (an assertion's
SIGABRT, say) after the last observation, is a finding on every row of its guest.

On stderr, outside the multi-device messages (the message rules judge those), a line
that shows QEMU in trouble fails the row whose observation it was written during, or
every row when it was written outside all of them: an assertion, a sanitizer report,
or an ``error_report`` line (``qemu-system-x86_64: [location: ]<message>``, which is
how QEMU reports errors; its ``warning:`` and ``info:`` lines, located or not, are
not errors: ``qemu_stderr`` reads the grammar).  A normal run of
QEMU 7.2 prints nothing but the multi-device messages; libvirt's destroy makes it
print ``terminating on signal 15 from pid ...``, which is how libvirt ends it.
"""

from __future__ import annotations

import re
import signal
from dataclasses import replace

from ..guest.end import EndHow, QemuEnd
from .common import Status, Verdict, is_multidevs_line
from .qemu_stderr import ReportKind, parse_report

_TROUBLE = re.compile(
    r"Assertion .* failed|runtime error:|AddressSanitizer|LeakSanitizer|ThreadSanitizer"
    r"|MemorySanitizer|UndefinedBehaviorSanitizer|\*\*\* stack smashing detected"
    r"|double free or corruption|malloc\(\): |free\(\): "
)
# What QEMU prints when the harness (or libvirt on its behalf) ends it.
_HARMLESS = re.compile(r"terminating on signal \d+")
MAX_LINES = 5

__all__ = ["MAX_LINES", "EndHow", "QemuEnd", "end_failures", "stderr_trouble", "with_findings"]


def _status_text(status: int | None) -> str:
    if status is None:
        return "no exit status (it would not die)"
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        return f"death by {name} (status {status})"
    return f"exit status {status}"


def end_failures(end: QemuEnd | None) -> list[str]:
    """Each way QEMU did not end as the harness ended it (None: the backend cannot
    tell, e.g. libvirt, whose QEMU is not the harness's child)."""
    if end is None:
        return []
    if end.how is EndHow.GONE:
        return [f"QEMU had already ended before the harness stopped it: "
                f"{_status_text(end.status)}"]
    if end.how is EndHow.KILLED:
        return [f"QEMU did not exit within {end.quit_seconds:.0f} s of QMP quit and had to "
                f"be killed ({_status_text(end.status)})"]
    if end.status != 0:
        return [f"QEMU ended with {_status_text(end.status)} after QMP quit, expected exit "
                f"status 0"]
    return []


def stderr_trouble(stderr: str, where: str) -> list[str]:
    """Lines of ``stderr`` that show QEMU in trouble (module docstring), each named,
    ``where`` saying when they were written."""
    found = []
    for raw in stderr.splitlines():
        line = raw.strip()
        if not line or is_multidevs_line(line) or _HARMLESS.search(line):
            continue
        report = parse_report(line)
        if _TROUBLE.search(line) or (report is not None and report.kind is ReportKind.ERROR):
            found.append(line)
    failures = [f"QEMU stderr {where} shows trouble: {line!r}" for line in found[:MAX_LINES]]
    if len(found) > MAX_LINES:
        failures.append(f"... and {len(found) - MAX_LINES} more trouble lines on QEMU stderr")
    return failures


def with_findings(verdict: Verdict, failures: list[str]) -> Verdict:
    """``verdict`` with QEMU's own findings added: any of them fails the row (a QEMU
    that aborted is a bug even where the row's premise did not hold); an ERROR row
    stays an error, since it judged nothing."""
    if not failures or verdict.status is Status.ERROR:
        return verdict
    return replace(verdict, status=Status.FAIL, failures=(*verdict.failures, *failures))
