"""The verdict vocabulary every family shares: row status, what a mode must show on this
QEMU, QEMU's multi-device messages and the rules on them, and the text helpers that keep
failure lines short.  Pure: each family's rules (``ids``, ``ops``, ``live``, ...) build
on these and nothing here knows how an observation was made."""

from __future__ import annotations

import errno
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from ..config import MULTIDEVS_SINCE, REMAP_DEFAULT_FROM_DEV, REMAP_DEFAULT_SINCE, Mode
from ..errors import QemuTooOld
from ..version import Version
from .qemu_stderr import parse_report

# QEMU's multi-device messages (hw/9pfs/9p.c) are matched by their stable parts, not
# by one sentence: a reworded message must still count as one (and fail where none may
# appear), never slip through as "no message".  A line is one when it speaks of
# multiple devices and of 9p, its export or the option; which message it is comes
# from the mode it names (or, for the warning, the collisions it warns of).
_MANY_DEVICES = re.compile(r"multiple\s+devices", re.IGNORECASE)
_NINEP = re.compile(r"\b9p|virtfs|\bexport|multidevs", re.IGNORECASE)
_FORBID_WORDS = re.compile(r"multidevs\s*=\s*'?forbid|\bdenied\b", re.IGNORECASE)
_WARN_WORDS = re.compile(r"multidevs\s*=\s*'?remap|collision", re.IGNORECASE)


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

    Without the option, QEMU 4.2 to 9.x behaves like warn and 10.0 on like remap;
    between 9.2.50 and 10.0.0 this says warn, and ``decided_behaviour`` lets the guest
    decide (the rows judge by that).  Raises QemuTooOld below 4.2, which has no
    multidevs option at all.
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


def default_undecided(mode: Mode, qemu_version: Version) -> bool:
    """True for the default mode of a QEMU between the commit that made remap the
    default (VERSION 9.2.50) and 10.0.0: such a build may behave either way."""
    return mode is Mode.DEFAULT and REMAP_DEFAULT_FROM_DEV <= qemu_version < REMAP_DEFAULT_SINCE


@dataclass(frozen=True)
class Behaviour:
    """The behaviour a row is judged by, and (in the undecided window) the note saying
    which one the guest showed."""

    expectation: Expectation
    note: str | None = None

    def text(self, base: str) -> str:
        """``base`` (the row's expectation text), marked when the guest decided it."""
        if self.note is None:
            return base
        seen = "remap" if self.expectation is Expectation.UNIQUE_IDS else "warn"
        return f"{base} (undecided default: the guest showed {seen}'s behaviour)"


def decided_behaviour(mode: Mode, qemu_version: Version, shows_warn: bool) -> Behaviour:
    """``expected_behaviour``, except in the undecided window (``default_undecided``),
    where what the guest shows decides: ``shows_warn`` (a warning, or a collision)
    picks warn, else remap.  Either way the row is then held to every rule of the
    behaviour chosen, so a guest showing half of each still fails."""
    expectation = expected_behaviour(mode, qemu_version)
    if not default_undecided(mode, qemu_version):
        return Behaviour(expectation)
    chosen = Expectation.COLLIDE_AND_WARN if shows_warn else Expectation.UNIQUE_IDS
    seen = "warn" if shows_warn else "remap"
    return Behaviour(chosen, (
        f"QEMU {qemu_version} lies between {REMAP_DEFAULT_FROM_DEV} (the commit making "
        f"multidevs=remap the default) and {REMAP_DEFAULT_SINCE}: its default may be either; "
        f"the guest showed {seen}'s behaviour, so the row is held to all of {seen}'s rules"))


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
    # ``observed`` in short, for the narrow table (the counts a reader scans for; the
    # rest is in the notes and the reports); empty when ``observed`` is short already.
    figure: str = ""

    @property
    def passed(self) -> bool:
        """True when every promise held."""
        return self.status is Status.PASS

    def details(self) -> dict[str, Any]:
        """The JSON keys of this verdict's own kind, beside the shared ones a row
        writes itself: each kind renders its own details, so the report tells no kind
        apart (a verdict of the shared shape alone has none)."""
        return {}


@dataclass(frozen=True)
class QemuMessages:
    """QEMU stderr lines about multiple devices, sorted by which option produced them."""

    all: tuple[str, ...]  # every multi-device line, in the order QEMU printed them
    warn: tuple[str, ...]
    forbid: tuple[str, ...]
    unknown: tuple[str, ...]


def is_multidevs_line(line: str) -> bool:
    """Whether ``line`` is one of QEMU's multi-device messages, however worded."""
    return bool(_MANY_DEVICES.search(line) and _NINEP.search(line))


def find_multidevs_messages(qemu_stderr: str) -> QemuMessages:
    """Pick QEMU's multi-device lines out of its stderr and classify each.

    Matched on stable parts (``is_multidevs_line``), not the whole line: the program
    name prefix (qemu-system-x86_64, qemu-kvm, ...) differs between builds and the
    sentence has been edited before.  forbid's names multidevs=forbid (or a denial),
    the warning names multidevs=remap (its advice) or the collisions; a line with
    neither is kept as "unknown" so it fails loudly instead of passing as "no message".
    Only stderr is given here: a message on QEMU's stdout is not the promised one.
    """
    found: list[str] = []
    warn: list[str] = []
    forbid: list[str] = []
    unknown: list[str] = []
    for raw in qemu_stderr.splitlines():
        line = raw.strip()
        if not is_multidevs_line(line):
            continue
        found.append(line)
        # Sorted by the message alone: a located line's location is the -fsdev that
        # names its own multidevs= value, which says nothing about the message.
        report = parse_report(line)
        text = report.message if report is not None else line
        if _FORBID_WORDS.search(text):
            forbid.append(line)
        elif _WARN_WORDS.search(text):
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
