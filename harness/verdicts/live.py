"""Pure judgement side of the families whose device set or mount changes while the guest
runs. Pure, like every module of ``verdicts``.

* ``runtime_mount``: a tmpfs mounted under the export after the guest looked at it
  (populated like the others, so its inode numbers repeat theirs) gets ids unique
  against everything seen, the ids from before included, under remap; collides
  under warn; is denied (ENODEV) under forbid; and in no mode does QEMU print a
  message for it (it prints each once per process, and under remap none at all).
  Once that device is unmounted again the guest sees the directory it covered (an
  empty directory on the root device), and no other path's id or errno changes.
* ``remount``: the guest unmounts and remounts the export, then looks again with the
  devices in the reverse order; QEMU's remap tables live as long as its 9p device, so
  no path's st_ino (or errno) changes, whatever order the paths are met in.  The new
  superblock may get another anonymous st_dev with nothing wrong, so st_dev is only
  held constant within each look.
* ``bind`` is judged by ``verdicts.ids.judge`` as the single-device export it is: paths
  that are one host file (here through two bind mounts) share one guest id in every
  mode, and no message.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ..agent.stat import GuestResult, GuestStat
from ..config import Mode
from ..host.truth import HostTruth
from ..version import Version
from .common import (
    MAX_LISTED,
    Expectation,
    Status,
    _capped,
    find_multidevs_messages,
)
from .ids import find_collisions
from .ops import OpsVerdict, behaviour_of, common_failures


def _text(result: GuestResult | None) -> str:
    if result is None:
        return "not observed"
    if isinstance(result, GuestStat):
        return f"(dev {result.dev}, ino {result.ino})"
    return f"errno {result} ({errno.errorcode.get(result, '?')})"


def _key(result: GuestResult | None) -> object:
    return result.guest_id if isinstance(result, GuestStat) else result


def _ino_key(result: GuestResult | None) -> object:
    return result.ino if isinstance(result, GuestStat) else result


def _changed(paths: Sequence[str], before: Mapping[str, GuestResult],
             after: Mapping[str, GuestResult], when: str,
             key: Callable[[GuestResult | None], object]) -> list[str]:
    """Every path whose ``key`` (id or inode, or the errno) differs between two looks."""
    return _capped([f"{path!r} changed {when}: {_text(before.get(path))} -> "
                    f"{_text(after.get(path))}" for path in paths
                    if key(before.get(path)) != key(after.get(path))], "paths")


def changed_results(paths: Sequence[str], before: Mapping[str, GuestResult],
                    after: Mapping[str, GuestResult], when: str) -> list[str]:
    """Every path whose guest id (or errno) differs between two looks, capped."""
    return _changed(paths, before, after, when, _key)


def changed_inodes(paths: Sequence[str], before: Mapping[str, GuestResult],
                   after: Mapping[str, GuestResult], when: str) -> list[str]:
    """Every path whose guest st_ino (or errno) differs between two looks, capped (a
    remount may give the superblock another st_dev with nothing wrong)."""
    return _changed(paths, before, after, when, _ino_key)


def split_devices(look: Mapping[str, GuestResult], which: str) -> list[str]:
    """One 9p mount is one guest device: every stat-able path of one look must share
    one st_dev (another would make tools see a mount where none is)."""
    devs: dict[int, str] = {}
    for path, result in look.items():
        if isinstance(result, GuestStat):
            devs.setdefault(result.dev, path)
    if len(devs) <= 1:
        return []
    shown = ", ".join(f"{dev} ({path!r})" for dev, path in sorted(devs.items()))
    return [f"the {which} look shows several guest st_dev values in one mount: {shown}"]


def _plain(mode: Mode, text: str, observed: str, failures: Sequence[str], stderr: str,
           devices: int, notes: Sequence[str] = (), figure: str = "") -> OpsVerdict:
    messages = find_multidevs_messages(stderr).all
    return OpsVerdict(mode=mode, expectation=text, observed=observed, figure=figure,
                      status=Status.FAIL if failures else Status.PASS,
                      failures=tuple(failures), outcomes=(),
                      qemu_message=messages[0] if messages else None, host_devices=devices,
                      notes=tuple(notes))


@dataclass(frozen=True)
class RuntimeSeen:
    """The three looks of ``runtime_mount``: before the extra device, with it, and after
    it was unmounted again (``before``'s paths plus the covered directory ``late``)."""

    before: HostTruth
    during: HostTruth
    late: str
    late_device: int  # the extra device's index in ``during``
    first: Mapping[str, GuestResult]
    second: Mapping[str, GuestResult]
    third: Mapping[str, GuestResult]
    late_listing: tuple[str, ...] | None  # readdir of the covered directory; None: failed
    stderr_during: str  # what QEMU wrote while the extra device was looked at
    dmesg: str = ""  # the guest kernel's log read by all three looks


def _late_device_failures(expectation: Expectation, seen: RuntimeSeen,
                          new: Sequence[str]) -> list[str]:
    results = {path: seen.second.get(path) for path in new}
    if expectation is Expectation.DENY_FOREIGN:
        return [f"{path!r} on the device mounted at runtime gave {_text(result)} under "
                "forbid, expected ENODEV" for path, result in results.items()
                if result != errno.ENODEV][:MAX_LISTED]
    failures = [f"{path!r} on the device mounted at runtime is not stat-able: {_text(result)}"
                for path, result in results.items()
                if not isinstance(result, GuestStat)][:MAX_LISTED]
    collisions = find_collisions(seen.during, seen.second)
    involving = [c for c in collisions if any(p in results for p, _, _ in c.host_files)]
    if expectation is Expectation.UNIQUE_IDS:
        failures += [f"collision after the runtime mount: {c.describe()}"
                     for c in collisions][:MAX_LISTED]
    elif not involving:
        failures.append("expected the device mounted at runtime to collide with an earlier "
                        "one (its inode numbers repeat theirs), found no collision")
    return failures


def _covered_failures(seen: RuntimeSeen) -> list[str]:
    result = seen.third.get(seen.late)
    if not isinstance(result, GuestStat) or not result.is_dir:
        return [f"after the unmount the covered directory {seen.late!r} gave {_text(result)}, "
                "expected the empty directory on the root device"]
    if seen.late_listing is None or seen.late_listing:
        return [f"after the unmount readdir of {seen.late!r} gave {seen.late_listing!r}, "
                "expected the empty covered directory"]
    return []


def judge_runtime(mode: Mode, version: Version, seen: RuntimeSeen, stderr: str,
                  stderr_outside: str, extra: Sequence[str] = ()) -> OpsVerdict:
    """The ``runtime_mount`` rules (module docstring), each failure exact."""
    behaviour = behaviour_of(mode, version, stderr,
                             bool(find_collisions(seen.during, seen.second)))
    expectation = behaviour.expectation
    old = seen.before.paths
    new = [e.path for e in seen.during.entries if e.device == seen.late_device]
    failures = [] if new else ["the device mounted at runtime holds no path (not mounted?)"]
    failures += changed_results(old, seen.first, seen.second, "when a device was mounted")
    failures += _late_device_failures(expectation, seen, new)
    failures += [f"QEMU printed a message for the device mounted at runtime: {line!r}"
                 for line in find_multidevs_messages(seen.stderr_during).all]
    failures += changed_results(old, seen.first, seen.third, "when a device was unmounted")
    failures += _covered_failures(seen)
    failures += common_failures(behaviour, stderr, stderr_outside, seen.dmesg, extra)
    stat_able = sum(isinstance(seen.second.get(p), GuestStat) for p in new)
    text = {Expectation.UNIQUE_IDS: "a device mounted at runtime gets unique ids",
            Expectation.COLLIDE_AND_WARN: "a device mounted at runtime collides, no new message",
            Expectation.DENY_FOREIGN: "a device mounted at runtime is denied, no new message",
            }[expectation] + "; unmounted, its directory shows, other ids stay"
    collisions = len(find_collisions(seen.during, seen.second))
    observed = f"{stat_able} of {len(new)} runtime paths stat-able, {collisions} collisions"
    return _plain(mode, behaviour.text(text), observed, failures, stderr,
                  seen.during.device_count, [behaviour.note] if behaviour.note else [],
                  figure=f"{stat_able}/{len(new)} stat-able, {collisions} collisions")


@dataclass(frozen=True)
class RemountSeen:
    """Every path's result before and after the guest remounted the export (the second
    look met the devices in another order: ``after_order``)."""

    paths: tuple[str, ...]
    before: Mapping[str, GuestResult]
    after: Mapping[str, GuestResult]
    remount_rc: int
    remount_output: str
    devices: int
    after_order: tuple[str, ...] = ()
    dmesg: str = ""  # the guest kernel's log read by both looks and the remount


def judge_remount(mode: Mode, version: Version, seen: RemountSeen, stderr: str,
                  stderr_outside: str, extra: Sequence[str] = ()) -> OpsVerdict:
    """The ``remount`` rule: the remount works, no path's st_ino (or errno) changes,
    and each look shows one st_dev."""
    behaviour = behaviour_of(mode, version, stderr)
    failures = [] if seen.remount_rc == 0 else [
        f"the guest could not remount the export (rc {seen.remount_rc}): "
        f"{seen.remount_output.strip()[:300]}"]
    failures += split_devices(seen.before, "first") + split_devices(seen.after, "second")
    failures += changed_inodes(seen.paths, seen.before, seen.after, "across the remount")
    failures += common_failures(behaviour, stderr, stderr_outside, seen.dmesg, extra)
    same = sum(_ino_key(seen.before.get(p)) == _ino_key(seen.after.get(p)) for p in seen.paths)
    return _plain(mode, behaviour.text("every guest st_ino unchanged across a guest remount, "
                                       "looked at in another order"),
                  f"{same} of {len(seen.paths)} paths unchanged", failures, stderr,
                  seen.devices, [behaviour.note] if behaviour.note else [])
