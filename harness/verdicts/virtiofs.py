"""The virtiofs rules: the same export as 9p's, judged from host truth.

virtiofs has no multidevs option; what the guest sees of a multi-device export
depends on whether virtiofsd announces submounts:

* announced (``virtiofs``): each host mount is a submount in the guest, a superblock
  of its own, so every host device is its own guest st_dev and (st_dev, st_ino) is a
  bijection with the host's (hard links one id); every witness intact, nothing
  aliased.  A mount point's readdir d_ino is the covered directory's (as on the host).
* not announced (``virtiofs-nosubmounts``): the guest sees one superblock, one st_dev,
  and virtiofsd's raw st_ino, so guest ids collide exactly where host st_ino repeats
  across devices: no more, no fewer.  Broken witnesses and whatever the harm probe
  shows (aliased data, a moved cwd) are recorded as notes, not assumed either way:
  the FUSE client keys its inodes by virtiofsd's node ids, not by st_ino.

A single-device export (overlay) is the control in both settings: unique ids.  In
every row QEMU prints no multi-device message (those are 9p's), its stderr and end
hold no trouble, and the guest kernel's log holds no trouble line.  Pure.
"""

from __future__ import annotations

import errno
from collections.abc import Mapping, Sequence

from ..agent.stat import GuestObservation, GuestResult, GuestStat
from ..config import Cache, Mode
from ..host.truth import HostTruth
from .common import (
    Status,
    _capped,
    _errno_text,
    _join,
    find_multidevs_messages,
    message_failures,
    outside_failures,
)
from .harm import Harm, assess, harm_rules, predict
from .ids import (
    Collision,
    HarmInput,
    IdsVerdict,
    find_collisions,
    observation_failures,
    unique_id_failures,
    witness_notes,
)
from .kernel import kernel_failures, kernel_lines
from .predict import mount_points
from .witnesses import Witness

SUBMOUNTS_TEXT = ("each host device its own guest st_dev, (st_dev, st_ino) a bijection with "
                  "the host's, witnesses intact, nothing aliased")
NOSUBMOUNTS_TEXT = "one guest st_dev; ids collide exactly where host st_ino repeats across devices"
CONTROL_TEXT = "single device (control): unique ids, no message"

FileId = tuple[int, int]


def guest_devices(truth: HostTruth, first: Mapping[str, GuestResult]) -> dict[int, set[int]]:
    """Host st_dev -> the guest st_dev values its paths showed."""
    seen: dict[int, set[int]] = {}
    for entry in truth.entries:
        result = first.get(entry.path)
        if isinstance(result, GuestStat):
            seen.setdefault(entry.dev, set()).add(result.dev)
    return seen


def device_map_failures(truth: HostTruth, first: Mapping[str, GuestResult]) -> list[str]:
    """With submounts: each host device exactly one guest st_dev, none shared."""
    failures = []
    owners: dict[int, list[int]] = {}
    for host, guests in sorted(guest_devices(truth, first).items()):
        if len(guests) > 1:
            paths = [e.path for e in truth.entries if e.dev == host]
            failures.append(f"host device {host} ({paths[0]!r} and {len(paths) - 1} more paths) "
                            f"shows as {len(guests)} guest st_dev values: {sorted(guests)}")
        for guest in guests:
            owners.setdefault(guest, []).append(host)
    failures += [f"guest st_dev {guest} stands for {len(hosts)} host devices {hosts}"
                 for guest, hosts in sorted(owners.items()) if len(hosts) > 1]
    return _capped(failures, "device mapping problems")


def expected_collisions(truth: HostTruth) -> set[frozenset[FileId]]:
    """Without submounts: distinct host files (hard links one) sharing a raw st_ino."""
    by_ino: dict[int, set[FileId]] = {}
    for entry in truth.entries:
        by_ino.setdefault(entry.ino, set()).add(entry.file_id)
    return {frozenset(files) for files in by_ino.values() if len(files) > 1}


def _group_text(truth: HostTruth, group: frozenset[FileId]) -> str:
    return _join(f"{truth.by_file_id[fid][0]!r} (host dev {fid[0]}, ino {fid[1]})"
                 for fid in sorted(group))


def exact_collision_failures(truth: HostTruth, collisions: Sequence[Collision]) -> list[str]:
    """Without submounts: the guest's collisions are exactly the predicted ones."""
    expected = expected_collisions(truth)
    found = {frozenset((dev, ino) for _, dev, ino in c.host_files) for c in collisions}
    failures = [f"expected one guest id for {_group_text(truth, g)} (host st_ino repeats "
                f"across devices), found them apart" for g in expected - found]
    failures += [f"collision not explained by a repeated host st_ino: {_group_text(truth, g)}"
                 for g in found - expected]
    return _capped(failures, "collision differences")


def _nosubmount_failures(truth: HostTruth, first: Mapping[str, GuestResult],
                         collisions: Sequence[Collision]) -> list[str]:
    devices = {r.dev for r in first.values() if isinstance(r, GuestStat)}
    failures = [] if len(devices) <= 1 else [
        f"expected one guest st_dev without submounts, found {len(devices)}: {sorted(devices)}"]
    failures += _capped([f"{path!r} is not stat-able in the guest: {_errno_text(result)}"
                         for path in truth.paths if isinstance(result := first.get(path), int)],
                        "unstat-able paths")
    return failures + exact_collision_failures(truth, collisions)


def _harm(truth: HostTruth, harm: HarmInput | None, strict: bool) -> tuple[
        Harm | None, list[str], list[str]]:
    """The harm probe against the host: with submounts nothing may alias (failures);
    without, what it shows is recorded (notes), as measured."""
    if harm is None:
        return None, [], []
    found = assess(truth, harm.probe, harm.seen, harm.mount_point, predict(truth, True))
    failures, _ = harm_rules(found, True, Cache.NONE)
    if strict:
        return found, failures, []
    notes = [f"measured without submounts: {line}" for line in failures]
    return found, [], notes or ["measured without submounts: nothing aliased, cwd stayed"]


def _observed(truth: HostTruth, first: Mapping[str, GuestResult], collisions: int,
              found: Harm | None) -> str:
    devices = len({r.dev for r in first.values() if isinstance(r, GuestStat)})
    text = (f"{collisions} collision{'s' * (collisions != 1)}, {devices} guest st_dev for "
            f"{truth.device_count} host device{'s' * (truth.device_count != 1)}")
    if found is not None:
        text += f"; {len({a.path for a in found.aliased})} aliased"
        text += {None: "", True: ", cwd moved", False: ", cwd stayed"}[found.cwd_moved]
    return text


def _premise(truth: HostTruth, layout_failure: str | None) -> str | None:
    if not truth.premise_holds:
        return (f"premise failed: the export spans {truth.device_count} host devices but no "
                f"inode number repeats across them, so this row proves nothing (inconclusive)")
    if layout_failure:
        return f"premise failed: {layout_failure}, so this row proves nothing (inconclusive)"
    return None


def judge_virtiofs(
    submounts: bool, truth: HostTruth, observation: GuestObservation, qemu_stderr: str,
    witnesses: Sequence[Witness] = (), *, stderr_outside: str = "",
    harm: HarmInput | None = None, dmesg: str = "", premise_failure: str | None = None,
) -> IdsVerdict:
    """One virtiofs export's verdict by the rules of the module docstring (the ids
    row's schema: collisions, witnesses, harm, kernel log)."""
    control = truth.device_count <= 1
    first = observation.passes[0] if observation.passes else {}
    collisions = find_collisions(truth, first)
    strict = submounts or control
    found, harm_failures, notes = _harm(truth, harm if not control else None, strict)
    notes += witness_notes(witnesses, strict)
    failures = observation_failures(truth, observation)
    if first and strict:
        failures += unique_id_failures(truth, observation, witnesses, mount_points(truth))
        failures += [] if control else device_map_failures(truth, first)
    elif first:
        failures += _nosubmount_failures(truth, first, collisions)
    failures += harm_failures + message_failures(None, find_multidevs_messages(qemu_stderr))
    failures += outside_failures(stderr_outside) + kernel_failures(dmesg)
    premise = None if control else _premise(truth, premise_failure)
    status = Status.INCONCLUSIVE if premise else Status.FAIL if failures else Status.PASS
    return IdsVerdict(
        mode=Mode.DEFAULT,
        expectation=CONTROL_TEXT if control else SUBMOUNTS_TEXT if submounts
        else NOSUBMOUNTS_TEXT,
        observed=_observed(truth, first, len(collisions), found),
        status=status, failures=(premise,) if premise else tuple(failures),
        collisions=collisions, denied=sum(1 for r in first.values() if r == errno.ENODEV),
        files_checked=len(truth.entries), qemu_message=None, witnesses=tuple(witnesses),
        host_devices=truth.device_count, notes=tuple(notes), harm=found,
        dmesg=kernel_lines(dmesg)[0],
    )
