"""SSH round trip side of the families whose device set or mount changes while the guest
runs: ``runtime_mount``, ``remount`` and ``bind`` (rules in ``verdicts.live``).

The host side happens in the harness's private mount namespace, which QEMU shares,
so a tmpfs mounted or a bind made here is what QEMU's next path lookup meets; the
export is mounted cache=none, so the guest's next lstat asks QEMU.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace

from ..agent.collect import GuestView, parse_relook, relook_script
from ..agent.stat import GuestObservation, GuestStat, encode_paths
from ..config import Check, Transport
from ..guest.lifecycle import Guest
from ..host.export import bind_twice, extra_device
from ..host.populate import record_truth
from ..host.truth import SUBDIR, Export, HostTruth
from ..plan import FAMILY_LAYOUT, ExportPlan, FamilyRules, Placement
from ..qemu.cmdline import mount_options
from ..qemu.spec import ExportSpec
from ..verdicts.common import Expectation, expected_behaviour
from ..verdicts.ids import IdsVerdict, judge
from ..verdicts.live import RemountSeen, RuntimeSeen, judge_remount, judge_runtime
from ..verdicts.ops import OpsVerdict
from ..verdicts.virtiofs import judge_virtiofs
from .family import Judging
from .ids import IdsSeen, collect, finished, observe_ids, witnesses_of

LATE = "late"  # where the runtime device is mounted, a new directory on the root device
BINDS = ("bind-a", "bind-b")  # where the root device's SUBDIR is bind-mounted


def _look(guest: Guest, spec: ExportSpec, paths: tuple[str, ...]) -> GuestView:
    # One lstat pass plus readdir: the families compare looks with each other.
    return collect(guest, spec.mount_point, paths, passes=1)


class RuntimeMountCheck:
    """Look, mount a further tmpfs under the export, look, unmount it, look again."""

    # Its device is mounted after QEMU started (and after virtiofsd's sandbox was made,
    # which no later mount reaches: 9p only).
    rules = FamilyRules(Check.RUNTIME_MOUNT, Placement.TRAILING, mounts_after_start=True)

    def observe(self, guest: Guest, spec: ExportSpec, export: Export,
                plan: ExportPlan) -> RuntimeSeen:
        paths = export.truth.paths
        first = _look(guest, spec, paths)
        index = len(export.devices)
        with extra_device(export, LATE, index) as device:
            during = record_truth(export.root, (*export.devices, device))
            start = len(guest.stderr_text())
            second = _look(guest, spec, during.paths)
            stderr_during = guest.stderr_text()[start:]
        third = _look(guest, spec, (*paths, LATE))
        listing = None if LATE in third.observation.dirent_errors else tuple(
            name for name, _ in third.observation.dirents.get(LATE, ()))
        return RuntimeSeen(
            export.truth, during, LATE, index, first.observation.passes[0],
            second.observation.passes[0], third.observation.passes[0], listing,
            stderr_during, dmesg=first.dmesg + second.dmesg + third.dmesg)

    def judge(self, judging: Judging, seen: RuntimeSeen) -> OpsVerdict:
        return judge_runtime(judging.plan.mode, judging.qemu_version, seen, judging.stderr,
                             judging.stderr_outside, judging.command_failures)


def another_order(truth: HostTruth) -> tuple[str, ...]:
    """The export's paths with the devices in reverse order (each device's own paths
    in truth order), so a QEMU that rebuilt its remap tables on the remount would
    hand the prefixes out differently and show it; with one device, the reverse."""
    by_device: dict[int, list[str]] = {}
    for entry in truth.entries:
        by_device.setdefault(entry.device, []).append(entry.path)
    if len(by_device) <= 1:
        return tuple(reversed(truth.paths))
    return tuple(path for device in sorted(by_device, reverse=True)
                 for path in by_device[device])


class RemountCheck:
    """Look, let the guest unmount and remount the export, look again."""

    # It looks again with the devices in another order, which only shows a QEMU that
    # hands its remap prefixes out afresh with at least three devices to reorder; the
    # question is 9p's.
    rules = FamilyRules(Check.REMOUNT, Placement.TRAILING,
                        layout=replace(FAMILY_LAYOUT, devices=3))

    def observe(self, guest: Guest, spec: ExportSpec, export: Export,
                plan: ExportPlan) -> RemountSeen:
        # Nothing happens on the host between the looks: one round trip does it all.
        paths = export.truth.paths
        point = shlex.quote(spec.mount_point)
        remount = (f"umount {point} && mount -t 9p -o {mount_options(spec)} "
                   f"{shlex.quote(spec.tag)} {point}")
        order = another_order(export.truth)
        script = relook_script(spec.mount_point, remount, order)
        result = guest.run(f"sh -c {shlex.quote(script)}", stdin=encode_paths(paths))
        text = finished(guest, result, result.stdout.decode(errors="replace"), "remount")
        seen = parse_relook(text, paths, order)
        return RemountSeen(paths, seen.before.passes[0], seen.after.passes[0],
                           seen.command_rc, seen.command_output, export.truth.device_count,
                           order, seen.dmesg)

    def judge(self, judging: Judging, seen: RemountSeen) -> OpsVerdict:
        return judge_remount(judging.plan.mode, judging.qemu_version, seen, judging.stderr,
                             judging.stderr_outside, judging.command_failures)


@dataclass(frozen=True)
class BindSeen:
    """The export's truth with the binds in place, and what the guest saw of it."""

    truth: HostTruth
    seen: IdsSeen
    host_gap: Mapping[str, int]  # per bind mount point: host readdir d_ino - lstat ino


def _forgive_host_gaps(observation: GuestObservation, host_gap: Mapping[str, int]
                        ) -> GuestObservation:
    """``observation`` with the root's entries for the bind mount points taken at their
    lstat ino where their readdir d_ino differs from it exactly as on the host.

    Linux's readdir gives a mount point the inode of the directory it covers, while
    lstat gives the mounted root's; QEMU passes that d_ino through unless remap makes
    it stat every entry.  Outside remap the guest then repeats the host's own answer
    (shifted by whatever its 9p client adds to every qid), which is no fault of 9p,
    so those entries are not held to "d_ino equals lstat".
    """
    first = observation.passes[0] if observation.passes else {}
    kept = []
    for name, d_ino in observation.dirents.get(".", ()):
        result = first.get(name)
        if name in host_gap and isinstance(result, GuestStat) \
                and d_ino - result.ino == host_gap[name]:
            d_ino = result.ino  # the host's own gap: judged as if it agreed with lstat
        kept.append((name, d_ino))
    return replace(observation, dirents={**observation.dirents, ".": tuple(kept)})


def binds_before_start(plan: ExportPlan) -> bool:
    """Whether ``plan``'s binds must be made before the guest's server starts: over
    virtiofs, whose sandbox is a copy of the mounts at its start that no later mount
    reaches, the bind family asks its question of binds the export had from the
    start (the run makes them with ``prebind`` right after building the export)."""
    return plan.check is Check.BIND and plan.transport is Transport.VIRTIOFS


def prebind(export: Export) -> AbstractContextManager[None]:
    """The bind family's binds, made now (``binds_before_start``)."""
    return bind_twice(export, SUBDIR, BINDS)


class BindCheck:
    """The root device's subdirectory bind-mounted twice: one device, three paths to
    each of its files; judged as the single-device export it is (``verdicts.ids.judge``;
    over virtiofs ``verdicts.virtiofs.judge_virtiofs``)."""

    # Its export is one device whatever the mode, so it must say nothing: judgeable only
    # while no export of its QEMU has printed a message yet, hence beside the controls.
    # No witnesses: every path of a bind is one host file with one id (st_nlink 1, no
    # ancestor shared), so the tools have nothing to get wrong that the ids rules do
    # not already judge.  Over virtiofs the binds are made before virtiofsd starts
    # (``binds_before_start``); over 9p they are made after QEMU started.
    rules = FamilyRules(Check.BIND, Placement.CONTROL,
                        layout=replace(FAMILY_LAYOUT, devices=1), mounts_after_start=True,
                        witness=False, virtiofs=True)

    def observe(self, guest: Guest, spec: ExportSpec, export: Export,
                plan: ExportPlan) -> BindSeen:
        made = nullcontext() if binds_before_start(plan) else prebind(export)
        with made:
            truth = record_truth(export.root, export.devices)
            with os.scandir(export.root) as entries:
                host_gap = {e.name: e.inode() - e.stat(follow_symlinks=False).st_ino
                            for e in entries if e.name in BINDS}
            # Witnesses only if the plan asks (it does not for bind: ``apply_checks``).
            seen = observe_ids(guest, spec.mount_point, truth, plan)
        return BindSeen(truth, seen, host_gap)

    def judge(self, judging: Judging, seen: BindSeen) -> IdsVerdict:
        truth = seen.truth
        looked = seen.seen.view.observation
        if judging.spec.transport is Transport.VIRTIOFS:
            # virtiofs passes the host's readdir d_ino through, as 9p does outside remap.
            return judge_virtiofs(
                judging.spec.submounts, truth, _forgive_host_gaps(looked, seen.host_gap),
                judging.stderr, witnesses_of(truth, seen.seen),
                stderr_outside=judging.stderr_outside, dmesg=seen.seen.dmesg)
        if expected_behaviour(judging.plan.mode, judging.qemu_version) \
                is not Expectation.UNIQUE_IDS:
            looked = _forgive_host_gaps(looked, seen.host_gap)
        return judge(judging.plan.mode, judging.qemu_version, truth, looked,
                     judging.stderr,
                     witnesses_of(truth, seen.seen),
                     stderr_outside=judging.stderr_outside,
                     command_failures=judging.command_failures, dmesg=seen.seen.dmesg)

