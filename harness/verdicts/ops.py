"""Pure judgement side of the operation families: each filesystem call's errno and the
host state afterwards, against what the mode promises.  Pure, like every module of
``verdicts``.

* ``operations``: under forbid every operation on a foreign device (a file, a
  directory, a symlink, a name that does not exist under a foreign directory, and
  the mount point itself) fails with ENODEV and changes nothing on the host; every
  operation on the export root's own device gives what it gives on any filesystem
  (its *natural* result).  In the other modes every operation gives its natural
  result wherever it lands.  readdir of the root lists every mount point in every
  mode.
* ``cross_device``: rename and link from one device to another, and a directory
  rename, fail with EXDEV (ENODEV under forbid); the guest's ``mv`` of a file and of
  a directory succeeds by copy and unlink (fails under forbid); then the host state
  must be exactly what those outcomes imply: nothing lost, nothing duplicated,
  content intact.

Over virtiofs there is no mode: every call gives its natural result on every device
(the natural results are the transport's, ``checks.ops``), cross-device rename and
link EXDEV, and no multi-device message may appear (``VIRTIOFS_BEHAVIOUR``).

Messages: these families share a QEMU with an ``ids`` export of the same mode and
QEMU prints each multi-device message once per process, so their slice may hold the
mode's own message at most once (the ``ids`` row holds the exactly-once rule) and
never another mode's.
"""

from __future__ import annotations

import errno
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..config import Mode, Transport
from ..version import Version
from .common import (
    Behaviour,
    Expectation,
    Status,
    Verdict,
    decided_behaviour,
    find_multidevs_messages,
    later_message_failures,
)
from .kernel import kernel_failures

# Stands for "any non-zero exit status" (a failed mv) where an outcome expects one.
NONZERO = -1
# cross_device's rename of the root device's twin-same onto dev01's (same qid under warn).
TWIN_TARGET = "twin"


@dataclass(frozen=True)
class OpCase:
    """One operation asked of the guest and what it gives on an ordinary filesystem.

    ``target`` names the kind of path (file, dir, symlink, missing, mountpoint) and
    ``device`` the export device it lies on (0: the export root's own).
    """

    op: str
    target: str
    device: int
    path: str
    path2: str = ""
    natural: int = 0


@dataclass(frozen=True)
class OpOutcome:
    """What one operation answered (an errno, or the exit status of ``mv``) and what
    the mode expected of it (NONZERO: any failure)."""

    op: str
    target: str
    device: int
    path: str
    result: int
    expected: int

    @property
    def ok(self) -> bool:
        if self.expected == NONZERO:
            return self.result != 0
        return self.result == self.expected

    def describe(self) -> str:
        """One line naming the operation, its target and both results."""
        where = "the root device" if self.device == 0 else f"device {self.device}"
        return (f"{self.op} on {self.target} {self.path!r} ({where}) gave "
                f"{_code_text(self.op, self.result)}, expected "
                f"{_code_text(self.op, self.expected)}")


@dataclass(frozen=True, kw_only=True)
class OpsVerdict(Verdict):
    """The judgement of one export by an operation family: each operation's outcome."""

    mode: Mode
    outcomes: tuple[OpOutcome, ...]
    qemu_message: str | None
    host_devices: int

    def details(self) -> dict[str, Any]:
        return {
            "mode": self.mode.value,
            "host_devices": self.host_devices,
            "qemu_message": self.qemu_message,
            "operations": [
                {"op": o.op, "target": o.target, "device": o.device, "path": o.path,
                 "result": o.result, "expected": o.expected, "ok": o.ok}
                for o in self.outcomes
            ],
        }


def _code_text(op: str, code: int) -> str:
    if op == "mv":
        return "a non-zero exit status" if code == NONZERO else f"exit status {code}"
    if code == 0:
        return "success"
    return f"errno {code} ({errno.errorcode.get(code, '?')})"


def expected_result(case: OpCase, expectation: Expectation) -> int:
    """What ``case`` must answer: ENODEV on a foreign device under forbid, else its
    natural result."""
    if expectation is Expectation.DENY_FOREIGN and case.device != 0:
        return errno.ENODEV
    return case.natural


# virtiofs has no multidevs mode: no device is denied, and no multi-device message
# (those are 9p's) may appear anywhere; these are the rules of remap's behaviour.
VIRTIOFS_BEHAVIOUR = Behaviour(Expectation.UNIQUE_IDS)


def behaviour_of(mode: Mode, version: Version, stderr: str, collided: bool = False,
                 transport: Transport = Transport.NINEP) -> Behaviour:
    """The behaviour a later family's row is judged by: ``decided_behaviour``, where a
    warning in its slice (or ``collided``: a collision it saw) shows warn's; over
    virtiofs ``VIRTIOFS_BEHAVIOUR`` whatever ``mode`` says."""
    if transport is Transport.VIRTIOFS:
        return VIRTIOFS_BEHAVIOUR
    return decided_behaviour(mode, version,
                             collided or bool(find_multidevs_messages(stderr).warn))


def ops_verdict(mode: Mode, text: str, outcomes: Sequence[OpOutcome], failures: Sequence[str],
             stderr: str, devices: int, notes: Sequence[str] = ()) -> OpsVerdict:
    wrong = sum(not outcome.ok for outcome in outcomes)
    messages = find_multidevs_messages(stderr).all
    observed = (f"{len(outcomes) - wrong} of {len(outcomes)} operations as expected, "
                f"{len(messages)} message{'' if len(messages) == 1 else 's'}")
    said = f", {len(messages)} message{'' if len(messages) == 1 else 's'}" if messages else ""
    return OpsVerdict(
        mode=mode, expectation=text, observed=observed,
        figure=f"{len(outcomes) - wrong}/{len(outcomes)} operations as expected{said}",
        status=Status.FAIL if failures else Status.PASS, failures=tuple(failures),
        outcomes=tuple(outcomes), qemu_message=messages[0] if messages else None,
        host_devices=devices, notes=tuple(notes),
    )


def common_failures(behaviour: Behaviour, stderr: str, stderr_outside: str, dmesg: str,
                    extra: Sequence[str]) -> list[str]:
    """What every later family's row also judges: the message rules, the kernel log
    its observation read, and the command line's problems."""
    return (later_message_failures(behaviour.expectation, stderr, stderr_outside)
            + kernel_failures(dmesg) + list(extra))


@dataclass(frozen=True)
class OperationsSeen:
    """What the operations family saw: each case's answer, readdir of the export root,
    the mount points the root holds, and how each foreign device changed on the host."""

    cases: tuple[OpCase, ...]
    answers: tuple[int, ...]
    root_listing: tuple[str, ...] | None  # None: readdir of the root failed
    root_readdir_errno: int
    mount_points: tuple[str, ...]
    foreign_changes: tuple[str, ...]
    devices: int
    dmesg: str = ""  # the guest kernel's log read at the end of the operations


def judge_operations(mode: Mode, version: Version, seen: OperationsSeen, stderr: str,
                     stderr_outside: str, extra: Sequence[str] = (),
                     transport: Transport = Transport.NINEP) -> OpsVerdict:
    """The ``operations`` rules (module docstring); each wrong answer is named."""
    behaviour = behaviour_of(mode, version, stderr, transport=transport)
    expectation = behaviour.expectation
    outcomes = [OpOutcome(c.op, c.target, c.device, c.path, answer, expected_result(c, expectation))
                for c, answer in zip(seen.cases, seen.answers, strict=True)]
    failures = [o.describe() for o in outcomes if not o.ok]
    if seen.root_readdir_errno:
        failures.append(f"readdir of the export root failed: "
                        f"{_code_text('readdir', seen.root_readdir_errno)}")
    else:
        listed = set(seen.root_listing or ())
        failures += [f"readdir of the export root does not list the mount point {name!r}"
                     for name in seen.mount_points if name not in listed]
    if expectation is Expectation.DENY_FOREIGN:
        failures += [f"foreign device changed on the host although every operation on it "
                     f"was denied: {change}" for change in seen.foreign_changes]
    failures += common_failures(behaviour, stderr, stderr_outside, seen.dmesg, extra)
    text = ("foreign operations ENODEV, root-device operations work, root lists mount points"
            if expectation is Expectation.DENY_FOREIGN else
            "every operation gives its ordinary result on every device")
    return ops_verdict(mode, behaviour.text(text), outcomes, failures, stderr, seen.devices,
                    [behaviour.note] if behaviour.note else [])


@dataclass(frozen=True)
class CrossSeen:
    """What the cross-device family saw: the operations' answers, then the host's
    export subtree before and after (relative path -> content, None for a directory)."""

    outcomes_raw: tuple[tuple[OpCase, int], ...]
    before: Mapping[str, bytes | None]
    after: Mapping[str, bytes | None]
    moves: Mapping[str, str]  # source -> destination of each move that must happen
    devices: int
    # The twin rename (target "twin"): both names share a qid under warn, and the
    # export was mounted with a cache mode that reuses inodes, so the guest may take
    # them for one inode and rename(2) returns 0 having done nothing.
    twins_may_alias: bool = False
    dmesg: str = ""  # the guest kernel's log read at the end of the operations


def expected_host_state(before: Mapping[str, bytes | None],
                        moves: Mapping[str, str]) -> dict[str, bytes | None]:
    """The host tree once each ``moves`` source (with everything below it) sits at its
    destination and nothing else changed."""
    state: dict[str, bytes | None] = {}
    for path, content in before.items():
        for source, destination in moves.items():
            if path == source or path.startswith(source + "/"):
                path = destination + path[len(source):]
                break
        state[path] = content
    return state


def host_state_failures(expected: Mapping[str, bytes | None],
                        actual: Mapping[str, bytes | None]) -> list[str]:
    """Every difference between the host tree that must be and the one that is."""
    failures = [f"host lost {path!r}" for path in sorted(expected) if path not in actual]
    failures += [f"host has {path!r}, which should not exist (duplicated or left behind)"
                 for path in sorted(actual) if path not in expected]
    failures += [f"host content of {path!r} is {actual[path]!r}, expected {expected[path]!r}"
                 for path in sorted(expected) if path in actual and expected[path] != actual[path]]
    return failures


def judge_cross_device(mode: Mode, version: Version, seen: CrossSeen, stderr: str,
                       stderr_outside: str, extra: Sequence[str] = (),
                       transport: Transport = Transport.NINEP) -> OpsVerdict:
    """The ``cross_device`` rules (module docstring): the errno or exit status of each
    step, then the host state they imply, compared path by path."""
    behaviour = behaviour_of(mode, version, stderr, transport=transport)
    expectation = behaviour.expectation
    forbid = expectation is Expectation.DENY_FOREIGN
    aliasable = seen.twins_may_alias and expectation is Expectation.COLLIDE_AND_WARN
    outcomes, notes = [], [behaviour.note] if behaviour.note else []
    for case, result in seen.outcomes_raw:
        if case.op == "mv":
            expected = NONZERO if forbid else 0
        else:
            expected = errno.ENODEV if forbid else errno.EXDEV
        if case.target == TWIN_TARGET and aliasable and result in (0, errno.EXDEV):
            # Predicted harm (or its absence), noted; the host must be unchanged either way.
            expected = result
            notes.append(f"predicted harm: rename({case.path!r}, {case.path2!r}) returned 0 "
                         f"and moved nothing: the guest took both names for one inode"
                         if result == 0 else "predicted no-op rename between twins did "
                         "not show (EXDEV)")
        outcomes.append(OpOutcome(case.op, case.target, case.device, case.path, result,
                                  expected))
    failures = [o.describe() for o in outcomes if not o.ok]
    moved = {source: dest for source, dest in seen.moves.items() if not forbid}
    failures += host_state_failures(expected_host_state(seen.before, moved), seen.after)
    failures += common_failures(behaviour, stderr, stderr_outside, seen.dmesg, extra)
    text = ("cross-device operations ENODEV, mv fails, host unchanged" if forbid else
            "cross-device rename/link EXDEV, mv copies: nothing lost or duplicated")
    return ops_verdict(mode, behaviour.text(text), outcomes, failures, stderr, seen.devices,
                    notes)
