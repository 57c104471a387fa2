"""The verdict vocabulary every family shares: row status, what a mode must show on this
QEMU, QEMU's multi-device messages and the rules on them, and the text helpers that keep
failure lines short.  Pure: each family's rules (``ids``, ``ops``, ``live``, ...) build
on these and nothing here knows how an observation was made."""

from __future__ import annotations

import errno
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from ..config import MULTIDEVS_SINCE, REMAP_DEFAULT_SINCE, Mode, Version
from ..errors import QemuTooOld

MULTIDEVS_MARKER = "Multiple devices detected in same VirtFS export"


# Failures of one kind beyond this many are summarised in one line, so a 100,000-file
# export that collides everywhere still gives a readable report.
MAX_LISTED = 20


class Status(StrEnum):
    """The outcome of one result row.

    PASS: every promise held.  FAIL: QEMU or the guest kernel did the wrong thing
    (a crash under test included).  INCONCLUSIVE: the premise did not hold, so the
    row proves nothing.  ERROR: the harness, the host or the inputs could not run
    the check at all.  KNOWN: it failed exactly as a known QEMU or kernel bug does
    (``verdicts.known``; set on the result row, never by a judge).  CI retries ERROR
    and files FAIL as a bug.
    """

    PASS = "pass"
    FAIL = "fail"
    KNOWN = "known"
    INCONCLUSIVE = "inconclusive"
    ERROR = "error"


class Expectation(StrEnum):
    """What a mode must show on a multi-device export."""

    UNIQUE_IDS = "unique_ids"
    COLLIDE_AND_WARN = "collide_and_warn"
    DENY_FOREIGN = "deny_foreign"

    @property
    def text(self) -> str:
        """A short human description for reports."""
        return _EXPECTATION_TEXT[self]


_EXPECTATION_TEXT = {
    Expectation.UNIQUE_IDS: "unique ids, no message",
    Expectation.COLLIDE_AND_WARN: "id collisions, one warning",
    Expectation.DENY_FOREIGN: "foreign devices denied (ENODEV), one forbid message",
}



def expected_behaviour(mode: Mode, qemu_version: Version) -> Expectation:
    """The behaviour ``mode`` must show on this QEMU version.

    Without the option, QEMU 4.2 to 9.x behaves like warn and 10.0 on like remap.
    Raises QemuTooOld below 4.2, which has no multidevs option at all.
    """
    if qemu_version < MULTIDEVS_SINCE:
        raise QemuTooOld(
            f"QEMU {qemu_version} has no multidevs option "
            f"(added in {MULTIDEVS_SINCE})",
            hint="install qemu-system-x86 4.2 or newer, or point --qemu at one",
        )
    if mode is Mode.REMAP:
        return Expectation.UNIQUE_IDS
    if mode is Mode.WARN:
        return Expectation.COLLIDE_AND_WARN
    if mode is Mode.FORBID:
        return Expectation.DENY_FOREIGN
    if qemu_version >= REMAP_DEFAULT_SINCE:
        return Expectation.UNIQUE_IDS
    return Expectation.COLLIDE_AND_WARN


@dataclass(frozen=True, kw_only=True)
class Verdict:
    """The shape every row's judgement shares, whatever its family: what was expected,
    what was seen, the status, each failure and each recorded note.  Each family's
    verdict (``IdsVerdict``, ``OpsVerdict``, ``RejectionVerdict``) adds its typed
    details; a report reads these five fields alone except where it shows the
    details.  Made whole by its judge and never edited afterwards."""

    expectation: str
    observed: str
    status: Status
    failures: tuple[str, ...]
    # Recorded facts that are not failures (a broken witness under warn, say).
    notes: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        """True when every promise held."""
        return self.status is Status.PASS


@dataclass(frozen=True)
class QemuMessages:
    """QEMU stderr lines about multiple devices, sorted by which option produced them."""

    all: tuple[str, ...]  # every multi-device line, in the order QEMU printed them
    warn: tuple[str, ...]
    forbid: tuple[str, ...]
    unknown: tuple[str, ...]


def find_multidevs_messages(qemu_stderr: str) -> QemuMessages:
    """Pick QEMU's multi-device lines out of its stderr and classify each.

    Matched on the common sentence, not the whole line: the program-name prefix
    (qemu-system-x86_64, qemu-kvm, ...) differs between builds. A line that has the
    sentence but neither known ending is kept as "unknown" so a reworded message fails
    loudly instead of passing as "no message".
    """
    found: list[str] = []
    warn: list[str] = []
    forbid: list[str] = []
    unknown: list[str] = []
    for raw in qemu_stderr.splitlines():
        line = raw.strip()
        if MULTIDEVS_MARKER not in line:
            continue
        found.append(line)
        if "multidevs=forbid" in line:
            forbid.append(line)
        elif "might lead to file ID collisions" in line or "multidevs=remap" in line:
            warn.append(line)
        else:
            unknown.append(line)
    return QemuMessages(tuple(found), tuple(warn), tuple(forbid), tuple(unknown))


def _errno_text(code: int) -> str:
    return f"errno {code} ({errno.errorcode.get(code, '?')})"


def _join(items: Iterable[str]) -> str:
    parts = list(items)
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def _capped(items: Sequence[str], what: str) -> list[str]:
    if len(items) <= MAX_LISTED:
        return list(items)
    return [*items[:MAX_LISTED], f"... and {len(items) - MAX_LISTED} more {what}"]


def message_failures(expectation: Expectation | None, messages: QemuMessages,
                      printed_before: bool = False) -> list[str]:
    """Message rules; ``expectation`` None is the single-device control.

    ``printed_before``: this QEMU already printed the mode's message for an earlier
    export (once per process), so here it may appear once or not at all.
    """
    if expectation in (None, Expectation.UNIQUE_IDS):
        found = messages.all
        if not found:
            return []
        return [
            f"expected no multi-device message on QEMU stderr, found {len(found)}: {found[0]!r}"
        ]
    if expectation is Expectation.COLLIDE_AND_WARN:
        wanted, wanted_name = messages.warn, "the multi-device warning"
        other, other_name = messages.forbid, "multidevs=forbid message"
    else:
        wanted, wanted_name = messages.forbid, "the multidevs=forbid message"
        other, other_name = messages.warn, "multi-device warning"
    failures = []
    if printed_before and len(wanted) > 1:
        failures.append(f"expected {wanted_name} at most once on QEMU stderr (already printed "
                        f"for an earlier export), found it {len(wanted)} times")
    elif not printed_before and len(wanted) != 1:
        failures.append(
            f"expected {wanted_name} exactly once on QEMU stderr, found it {len(wanted)} times"
        )
    failures += [f"unexpected {other_name} on QEMU stderr: {line!r}" for line in other]
    failures += [
        f"unrecognised multi-device message on QEMU stderr: {line!r}" for line in messages.unknown
    ]
    return failures


def outside_failures(stderr_outside: str) -> list[str]:
    """QEMU stderr written outside every export's observation (boot, shutdown).

    Nothing there may be a multi-device message: it would belong to no export, so
    it would otherwise go unjudged.
    """
    found = find_multidevs_messages(stderr_outside).all
    return [f"multi-device message on QEMU stderr outside every observation: {line!r}"
            for line in found]


def later_message_failures(expectation: Expectation, stderr: str,
                           stderr_outside: str) -> list[str]:
    """The message rules of an export that may not be the first of its mode in its QEMU
    (the families after the ids row): no message under remap, the mode's own message
    at most once, never another's, and nothing outside every observation."""
    return (message_failures(expectation, find_multidevs_messages(stderr), printed_before=True)
            + outside_failures(stderr_outside))
