"""Pure judgement side of the ``held_fd`` family: calls through a directory the guest
holds open while the host mounts a device over it.  Pure, like every module of
``verdicts``.

QEMU's fid names a path, not an inode: once the host mounts a tmpfs over a directory
the guest holds open, every call QEMU makes on that fid lands on the new tmpfs root,
a foreign device.  forbid promises that a foreign device is never reached: each
call through the held fd fails with ENODEV and the host's new device is unchanged
(its root's mode, its entries).  The other modes may reach any device, so there each
call gives its ordinary result and the host shows it.  Messages, kernel log and
command line as for every later family (``ops.common_failures``).
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from dataclasses import dataclass

from ..config import Mode
from ..version import Version
from .common import Expectation
from .ops import OpOutcome, OpsVerdict, behaviour_of, common_failures, ops_verdict

TARGET = "held-fd"  # the kind of path of every call: a name below the held directory
CHMOD_MODE = 0o640  # what the agent's chmod sets


@dataclass(frozen=True)
class HeldCall:
    """One call through the held fd: the agent operation, the name below the held
    directory ("." itself), the second path (a symlink's text), and what the call does
    to the host when it is not denied: the name appears ("add"), vanishes ("remove"),
    the directory's mode becomes CHMOD_MODE ("mode"), or nothing ("")."""

    op: str
    name: str
    path2: str = ""
    effect: str = ""


@dataclass(frozen=True)
class HostDir:
    """The covering device's root as the host sees it: permission bits and entries."""

    mode: int
    names: tuple[str, ...]


@dataclass(frozen=True)
class HeldSeen:
    """What the family saw: whether the guest held the directory, each call's errno (in
    ``calls`` order), the covering device's root before and after, and the kernel log."""

    held: str  # the held directory, relative to the export root
    device: int  # the covering device's index
    calls: tuple[HeldCall, ...]
    hold_error: str  # "" when the guest held the directory open
    answers: tuple[int, ...]
    before: HostDir
    after: HostDir
    dmesg: str = ""


def _path(seen: HeldSeen, call: HeldCall) -> str:
    return seen.held if call.name == "." else f"{seen.held}/{call.name}"


def _outcomes(seen: HeldSeen, deny: bool) -> list[OpOutcome]:
    return [OpOutcome(call.op, TARGET, seen.device, _path(seen, call), answer,
                      errno.ENODEV if deny else 0)
            for call, answer in zip(seen.calls, seen.answers, strict=True)]


def _host_failures(seen: HeldSeen, deny: bool) -> list[str]:
    """The covering device's root against what the calls may have done to it."""
    before, after = seen.before, seen.after
    where = f"on the foreign device (device {seen.device})"
    if deny:
        failures = [] if after.mode == before.mode else [
            f"the foreign device's root changed mode through the held fd: "
            f"{before.mode:04o} -> {after.mode:04o}"]
        failures += [f"{seen.held + '/' + name!r} appeared {where}"
                     for name in after.names if name not in before.names]
        return failures + [f"{seen.held + '/' + name!r} vanished {where}"
                           for name in before.names if name not in after.names]
    failures = [] if after.mode == CHMOD_MODE else [
        f"chmod through the held fd left the covering device's root at {after.mode:04o}, "
        f"expected {CHMOD_MODE:04o}"]
    for call in seen.calls:
        there = call.name in after.names
        if (call.effect == "add" and not there) or (call.effect == "remove" and there):
            failures.append(f"{call.op} of {_path(seen, call)!r} through the held fd "
                            f"answered success but the host shows it "
                            f"{'missing' if call.effect == 'add' else 'still there'}")
    return failures


def judge_held(mode: Mode, version: Version, seen: HeldSeen, stderr: str,
               stderr_outside: str, extra: Sequence[str] = ()) -> OpsVerdict:
    """The ``held_fd`` rules (module docstring), each failure exact."""
    behaviour = behaviour_of(mode, version, stderr)
    deny = behaviour.expectation is Expectation.DENY_FOREIGN
    if seen.hold_error:
        failures = [f"the guest could not hold {seen.held!r} open: {seen.hold_error}"]
        outcomes: list[OpOutcome] = []
    else:
        outcomes = _outcomes(seen, deny)
        failures = [o.describe() for o in outcomes if not o.ok]
        failures += _host_failures(seen, deny)
    failures += common_failures(behaviour, stderr, stderr_outside, seen.dmesg, extra)
    text = ("calls through a directory held open across a host mount are denied (ENODEV) "
            "and the device mounted over it is unchanged" if deny else
            "calls through a directory held open across a host mount reach the device "
            "mounted over it")
    return ops_verdict(mode, behaviour.text(text), outcomes, failures, stderr, 2,
                       [behaviour.note] if behaviour.note else [])
