"""What each multidevs mode will do to a tree, from its host truth alone: no guest.

``predict`` answers, per mode, what a booted guest would show (``run --export`` checks
the same tree and must agree):

* warn (and the default before QEMU 10): QEMU passes st_ino through, so distinct
  host files whose raw st_ino repeats across st_dev share one guest id;
* forbid: every path off the export root's st_dev (and below one) gives ENODEV;
* remap (and the default from QEMU 10): the ids of QEMU's remap as ``remap_model``
  computes them in the guest's first-sight order (the truth order), its collisions
  explained bit by bit, and whether its table overflows into the full map (which
  makes QEMU warn "Potential degraded performance of inode remapping");
* virtiofs (``predict_virtiofs``): with submounts no shared id once each submount was
  entered (and, before that, each mount point's borrowed id); without, warn's.

Pure: the walk is ``host.walk``, the command ``commands.predict``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from ..config import Mode
from ..host.mounts import MountEntry, mount_holding, relative_point
from ..host.truth import ExportDevice, HostTruth
from ..version import Version
from .common import Expectation, default_undecided, expected_behaviour
from .remap import FULLMAP_WARNING, RemapCheck, check_remap, modelled
from .remap_model import RemapResult, guest_ino


@dataclass(frozen=True)
class DeviceSummary:
    """One st_dev of the tree: where it is first met, what holds it, how many paths."""

    index: int
    dev: int
    first_path: str
    paths: int
    fstype: str  # "?" when no mount in mountinfo holds it
    mount_point: str  # relative to the tree's root; absolute for the mount above it
    # The mount's own device differs (a btrfs subvolume, an overlay layer's file).
    own_dev: bool

    @property
    def dev_text(self) -> str:
        """st_dev as major:minor."""
        return f"{os.major(self.dev)}:{os.minor(self.dev)}"


@dataclass(frozen=True)
class GroupPrediction:
    """Distinct host files predicted to share one guest st_ino (and why, under remap).

    ``host_files``: (first path in truth order, st_dev, st_ino) per distinct file, as
    a row's ``Collision.host_files`` (plain tuples: a tree may collide 100,000 times).
    """

    guest_ino: int
    host_files: tuple[tuple[str, int, int], ...]
    why: str = ""

    @property
    def files(self) -> frozenset[tuple[int, int]]:
        """The host (st_dev, st_ino) of every file in the group."""
        return frozenset((dev, ino) for _, dev, ino in self.host_files)


@dataclass(frozen=True)
class ModePrediction:
    """What one mode will show on the tree."""

    mode: Mode
    expectation: Expectation
    collisions: tuple[GroupPrediction, ...]
    denied: tuple[str, ...]  # paths forbid denies, in truth order
    # The multi-device messages QEMU will print (once per process each).
    messages: tuple[str, ...]
    remap: RemapCheck | None = None
    note: str = ""

    @property
    def collides(self) -> bool:
        """True when distinct host files will share a guest id."""
        return bool(self.collisions)


@dataclass(frozen=True)
class VirtiofsPrediction:
    """What one virtiofsd setting will show on the tree (QEMU's version plays no part).

    ``collisions``: ids shared once every submount was entered (none with submounts;
    without, where raw st_ino repeats across devices).  ``before_entry`` (with
    submounts only): the ids each mount point shares while nothing has entered it,
    the known issue ``virtiofs-submount-stat-before-automount``; reported apart, since
    any walk into the device ends them.
    """

    submounts: bool
    collisions: tuple[GroupPrediction, ...]
    guest_devices: int
    before_entry: tuple[GroupPrediction, ...] = ()

    @property
    def setting(self) -> str:
        """The row name of this setting."""
        return "virtiofs" if self.submounts else "virtiofs-nosubmounts"

    @property
    def collides(self) -> bool:
        """True when distinct host files will share a guest id."""
        return bool(self.collisions)


@dataclass(frozen=True)
class Prediction:
    """Every mode asked, for one tree on one QEMU version, and every virtiofs setting
    asked."""

    root: str
    qemu_version: Version
    paths: int
    devices: tuple[DeviceSummary, ...]
    modes: tuple[ModePrediction, ...]
    virtiofs: tuple[VirtiofsPrediction, ...] = ()

    @property
    def collides(self) -> bool:
        """True when any mode or setting asked will make distinct files share a guest
        id (once every submount was entered)."""
        return any(m.collides for m in self.modes) or any(v.collides for v in self.virtiofs)


def device_summaries(truth: HostTruth, devices: Sequence[ExportDevice],
                     mounts: Sequence[MountEntry], root: str) -> tuple[DeviceSummary, ...]:
    """Each st_dev of ``truth`` with the mount holding its first path."""
    counts: dict[int, int] = {}
    for entry in truth.entries:
        counts[entry.dev] = counts.get(entry.dev, 0) + 1
    found = []
    for device in devices:
        absolute = root if device.relpath == "." else f"{root.rstrip('/')}/{device.relpath}"
        mount = mount_holding(mounts, absolute)
        found.append(DeviceSummary(
            device.index, device.st_dev, device.relpath, counts.get(device.st_dev, 0),
            mount.fstype if mount else "?", relative_point(mount, root) if mount else "?",
            mount is not None and mount.dev != device.st_dev))
    return tuple(found)


def raw_collisions(truth: HostTruth, shown: Callable[[int], int] = guest_ino
                   ) -> tuple[GroupPrediction, ...]:
    """Distinct host files whose raw st_ino repeats across st_dev: warn's collisions
    (QEMU passes st_ino through and the guest sees one st_dev); ``shown`` is the
    st_ino the guest shows for a host st_ino (9p's client adds 2; FUSE none)."""
    first = truth.first_paths
    devs_of: dict[int, list[int]] = {}
    for dev, ino in first:
        devs_of.setdefault(ino, []).append(dev)
    groups = [GroupPrediction(shown(ino), tuple((first[(dev, ino)], dev, ino)
                                                    for dev in devs))
              for ino, devs in devs_of.items() if len(devs) > 1]
    return _worst_first(groups)


def _worst_first(groups: Iterable[GroupPrediction]) -> tuple[GroupPrediction, ...]:
    """Largest groups first, then in truth order (``sorted`` is stable)."""
    return tuple(sorted(groups, key=lambda group: -len(group.host_files)))


def remap_collisions(truth: HostTruth, result: RemapResult,
                     remap: RemapCheck) -> tuple[GroupPrediction, ...]:
    """The remap model's collisions, with their guest st_ino and the model's
    explanation (``remap.predicted`` is ``result.collisions()`` explained, in order)."""
    first = truth.first_paths
    groups = [GroupPrediction(result.qids[group[0]].guest_ino,
                              tuple((first[(f.dev, f.ino)], f.dev, f.ino) for f in group),
                              predicted.why)
              for group, predicted in zip(result.collisions(), remap.predicted, strict=True)]
    return _worst_first(groups)


def denied_paths(truth: HostTruth) -> tuple[str, ...]:
    """forbid's denials: every path off the root's st_dev, and every path below one
    (a lookup through a denied directory fails there)."""
    root_dev = truth.entries[0].dev
    denied: list[str] = []
    # Denied ancestors of the current path; the truth order is depth first, so a
    # path's ancestors come before it and its siblings' subtrees are done.
    stack: list[str] = []
    for entry in truth.entries:
        while stack and not entry.path.startswith(stack[-1] + "/"):
            stack.pop()
        if entry.dev != root_dev or stack:
            denied.append(entry.path)
            stack.append(entry.path)
    return tuple(denied)


def mount_points(truth: HostTruth) -> frozenset[str]:
    """Paths whose host st_dev differs from their parent's: the device roots (virtiofs
    makes each a submount)."""
    return frozenset(
        e.path for e in truth.entries if e.path != "."
        and truth.by_path[e.path.rpartition("/")[0] or "."].dev != e.dev)


def before_entry(truth: HostTruth) -> tuple[GroupPrediction, ...]:
    """With submounts, before anything entered them: each mount point (a path whose
    st_dev is not its parent's) answers its parent's st_dev with its own root's st_ino,
    so it shares an id with any file of the parent's device of that inode number, and
    with any other mount point there of the same root inode number (btrfs
    subvolumes).  The guest's st_dev is named by the host device it borrows."""
    by_id: dict[tuple[int, int], list[tuple[str, int, int]]] = {}
    for (dev, ino), path in truth.first_paths.items():
        by_id.setdefault((dev, ino), []).append((path, dev, ino))
    points = mount_points(truth)
    for entry in (e for e in truth.entries if e.path in points):
        point = entry.path
        parent = truth.by_path[point.rpartition("/")[0] or "."].dev
        by_id.setdefault((parent, entry.ino), []).append((point, entry.dev, entry.ino))
    # virtiofs shows the host's st_ino as it is.
    groups = [GroupPrediction(ino, tuple(files))
              for (_, ino), files in by_id.items() if len(files) > 1]
    return _worst_first(groups)


def predict_virtiofs(truth: HostTruth, settings: Sequence[bool]
                     ) -> tuple[VirtiofsPrediction, ...]:
    """Each virtiofsd setting of ``settings`` (submounts announced or not): with
    submounts every host device its own guest st_dev, nothing shared once entered;
    without, one st_dev and raw st_ino: warn's collisions exactly."""
    found = []
    for submounts in settings:
        if submounts:
            found.append(VirtiofsPrediction(True, (), truth.device_count, before_entry(truth)))
        else:
            found.append(VirtiofsPrediction(False, raw_collisions(truth, int), 1))
    return tuple(found)


def _mode(mode: Mode, version: Version, truth: HostTruth, remap: RemapPrediction,
          raw: tuple[GroupPrediction, ...]) -> ModePrediction:
    expectation = expected_behaviour(mode, version)
    many = truth.device_count > 1
    note = ("QEMU between 9.2.50 and 10.0.0 may default to remap instead"
            if default_undecided(mode, version) else "")
    if expectation is Expectation.DENY_FOREIGN:
        return ModePrediction(mode, expectation, (), denied_paths(truth),
                              ("multidevs=forbid message",) if many else (), note=note)
    if expectation is Expectation.COLLIDE_AND_WARN:
        return ModePrediction(mode, expectation, raw, (),
                              ("multi-device warning",) if many else (), note=note)
    messages = (FULLMAP_WARNING,) if remap.check.fullmap_reached else ()
    return ModePrediction(mode, expectation, remap.groups, (), messages, remap.check, note)


@dataclass(frozen=True)
class RemapPrediction:
    """The remap model run once over the tree: its check and its groups."""

    check: RemapCheck
    groups: tuple[GroupPrediction, ...]


def predict(truth: HostTruth, devices: Sequence[ExportDevice], mounts: Sequence[MountEntry],
            root: str, version: Version, modes: Sequence[Mode],
            virtiofs: Sequence[bool] = ()) -> Prediction:
    """What each of ``modes`` will show on the tree ``truth`` on QEMU ``version``, and
    each virtiofsd setting of ``virtiofs`` (submounts announced or not).
    Each answer is computed once, however many modes share it (warn and the default
    before QEMU 10; remap and the default from 10)."""
    result = modelled(truth)
    check = check_remap(truth, {}, result=result)
    remap = RemapPrediction(check, remap_collisions(truth, result, check))
    raw = raw_collisions(truth) if any(
        expected_behaviour(m, version) is Expectation.COLLIDE_AND_WARN for m in modes) else ()
    return Prediction(root, version, len(truth.entries),
                      device_summaries(truth, devices, mounts, root),
                      tuple(_mode(mode, version, truth, remap, raw) for mode in modes),
                      predict_virtiofs(truth, virtiofs))
