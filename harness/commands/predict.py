"""``multidevs-harness predict PATH``: what each mode will do to a tree, no guest booted.

Walks the tree as the guest agent would (``host.walk``), takes the QEMU version from
``--qemu-version`` or the binary's ``--version``, and asks the pure prediction
(``verdicts.predict``).  Returns data; the text and JSON are rendered here, the CLI
prints them.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import DEFAULT_MAX_PATHS, Mode, Transport
from ..errors import UsageError
from ..host.walk import TreeWalk, walk_tree
from ..progress import Progress, quiet
from ..results import EXIT_FAIL, EXIT_OK
from ..verdicts.common import Expectation
from ..verdicts.predict import (
    GroupPrediction,
    ModePrediction,
    Prediction,
    VirtiofsPrediction,
    predict,
)
from ..version import Version

# Groups and files per group shown in the text; JSON lists up to JSON_GROUPS.
TEXT_GROUPS = 5
TEXT_FILES = 3
JSON_GROUPS = 50


@dataclass(frozen=True)
class PredictReport:
    """A tree's prediction, the walk behind it, and where the QEMU version came from."""

    prediction: Prediction
    walk: TreeWalk
    qemu_binary: Path | None  # None: --qemu-version given
    seconds: float

    @property
    def exit_code(self) -> int:
        """0 when nothing collides in the modes and settings asked, 1 when something
        does (a mount point's id before its submount is entered is reported apart)."""
        return EXIT_FAIL if self.prediction.collides else EXIT_OK


def resolve_version(version: str | None, qemu: str | None) -> tuple[Path | None, Version]:
    """``--qemu-version`` when given, else the version of ``--qemu`` (or the default
    QEMU) from its ``--version``."""
    if version is not None:
        try:
            return None, Version.parse(f"version {version}")
        except ValueError:
            raise UsageError(f"--qemu-version {version!r} is not X.Y[.Z]",
                             hint="for example --qemu-version 7.2.0") from None
    from ..qemu.probe import qemu_version  # only when probing: it loads QMP and more

    return qemu_version(qemu) if qemu else qemu_version()


def predict_tree(path: Path, modes: tuple[Mode, ...], *, version: str | None = None,
                 qemu: str | None = None, max_paths: int = DEFAULT_MAX_PATHS,
                 transports: tuple[Transport, ...] = (Transport.NINEP,),
                 progress: Progress = quiet) -> PredictReport:
    """Walk ``path`` and predict ``modes`` on the QEMU version asked (9p), and both
    virtiofsd settings (virtiofs), as ``transports`` asks."""
    started = time.monotonic()
    binary, qemu_at = resolve_version(version, qemu)
    walk = walk_tree(path, max_paths=max_paths, progress=progress)
    found = predict(walk.truth, walk.devices, walk.mounts, os.fspath(walk.root), qemu_at,
                    modes if Transport.NINEP in transports else (),
                    (True, False) if Transport.VIRTIOFS in transports else ())
    return PredictReport(found, walk, binary, time.monotonic() - started)


def _dev(dev: int) -> str:
    return f"{os.major(dev)}:{os.minor(dev)}"


def _group_text(group: GroupPrediction) -> str:
    files = [f"{path!r} (dev {_dev(dev)}, ino {ino})"
             for path, dev, ino in group.host_files[:TEXT_FILES]]
    more = len(group.host_files) - TEXT_FILES
    return (f"  guest ino {group.guest_ino} <- {', '.join(files)}"
            + (f" and {more} more" if more > 0 else "") + (f"\n    {group.why}" if group.why
                                                           else ""))


_BEHAVIOUR = {Expectation.UNIQUE_IDS: "remaps", Expectation.COLLIDE_AND_WARN: "passes "
              "st_ino through", Expectation.DENY_FOREIGN: "denies other devices"}


def _mode_text(found: ModePrediction, version: Version) -> list[str]:
    head = f"{found.mode.value:8} QEMU {version} {_BEHAVIOUR[found.expectation]}"
    if found.expectation is Expectation.DENY_FOREIGN:
        first = f", first {found.denied[0]!r}" if found.denied else ""
        said = f"{len(found.denied)} paths denied (ENODEV){first}"
    else:
        said = f"{len(found.collisions)} guest ids shared by distinct host files"
    lines = [f"{head}: {said}"]
    if found.remap is not None:
        table = "overflows into the full map" if found.remap.fullmap_reached else \
            "suffix map only"
        branches = ", ".join(f"{n} {b}" for b, n in sorted(found.remap.branches.items()))
        lines.append(f"         remap table: {table} ({branches} files)")
    lines += [f"         QEMU prints: {m}" for m in found.messages]
    lines += [f"         note: {found.note}"] if found.note else []
    lines += [_group_text(g) for g in found.collisions[:TEXT_GROUPS]]
    if len(found.collisions) > TEXT_GROUPS:
        lines.append(f"  ... and {len(found.collisions) - TEXT_GROUPS} more")
    return lines


def _virtiofs_text(found: VirtiofsPrediction) -> list[str]:
    said = (f"{found.guest_devices} guest st_dev, {len(found.collisions)} guest ids shared "
            f"by distinct host files")
    lines = [f"{found.setting}: {said}" + (" once every submount was entered"
                                           if found.submounts else "")]
    lines += [_group_text(g) for g in found.collisions[:TEXT_GROUPS]]
    if len(found.collisions) > TEXT_GROUPS:
        lines.append(f"  ... and {len(found.collisions) - TEXT_GROUPS} more")
    if found.before_entry:
        lines.append(f"         before anything entered them, mount points share "
                     f"{len(found.before_entry)} ids (known issue "
                     f"virtiofs-submount-stat-before-automount):")
        lines += [_group_text(g) for g in found.before_entry[:TEXT_GROUPS]]
    return lines


def predict_text(report: PredictReport) -> str:
    """The devices, what the walk could not see, then each mode's prediction."""
    found, walk = report.prediction, report.walk
    source = f"probed from {report.qemu_binary}" if report.qemu_binary else "as given"
    lines = [f"tree {found.root}: {found.paths} paths on {len(found.devices)} devices "
             f"(walked in {walk.seconds:.2f} s); QEMU {found.qemu_version} ({source})",
             f"  {'st_dev':8} {'type':10} {'paths':>7}  mount point -> first path"]
    for d in found.devices:
        own = " (st_dev not the mount's)" if d.own_dev else ""
        lines.append(f"  {d.dev_text:8} {d.fstype:10} {d.paths:>7}  {d.mount_point} -> "
                     f"{d.first_path}{own}")
    if walk.problems:
        lines.append(f"not seen whole: {len(walk.problems)} paths")
        lines += [f"  {p.describe()}" for p in walk.problems[:TEXT_GROUPS]]
    lines.append("")
    for mode in found.modes:
        lines += _mode_text(mode, found.qemu_version)
    for setting in found.virtiofs:
        lines += _virtiofs_text(setting)
    verdict = "collisions predicted" if found.collides else "no collision predicted"
    asked = [m.mode.value for m in found.modes] + [v.setting for v in found.virtiofs]
    lines += ["", f"{verdict} for {','.join(asked)} ({report.seconds:.2f} s)"]
    return "\n".join(lines)


def _groups_json(groups: tuple[GroupPrediction, ...]) -> list[dict[str, Any]]:
    return [{"guest_ino": g.guest_ino, "why": g.why or None,
             "host_files": [{"path": p, "dev": d, "ino": i} for p, d, i in g.host_files]}
            for g in groups[:JSON_GROUPS]]


def _virtiofs_json(found: VirtiofsPrediction) -> dict[str, Any]:
    return {"transport": Transport.VIRTIOFS.value, "case": found.setting, "mode": None,
            "collides": found.collides, "guest_collisions": len(found.collisions),
            "collisions": _groups_json(found.collisions), "guest_devices": found.guest_devices,
            "before_entry": _groups_json(found.before_entry)}


def _mode_json(found: ModePrediction) -> dict[str, Any]:
    remap = found.remap
    return {
        "transport": Transport.NINEP.value,
        "mode": found.mode.value,
        "expectation": found.expectation.text,
        "collides": found.collides,
        "guest_collisions": len(found.collisions),
        "collisions": _groups_json(found.collisions),
        "denied": len(found.denied),
        "denied_paths": list(found.denied[:JSON_GROUPS]),
        "qemu_message": list(found.messages),
        "note": found.note or None,
        "remap_model": None if remap is None else {
            "predicted_collisions": [{"paths": list(p.paths), "why": p.why}
                                     for p in remap.predicted[:JSON_GROUPS]],
            "branches": dict(remap.branches),
            "fullmap_reached": remap.fullmap_reached,
        },
    }


def predict_json(report: PredictReport) -> dict[str, Any]:
    """The prediction in the run report's vocabulary (``results[]`` per mode)."""
    found, walk = report.prediction, report.walk
    return {
        "export": found.root,
        "qemu": {"binary": None if report.qemu_binary is None else str(report.qemu_binary),
                 "version": str(found.qemu_version)},
        "files_checked": found.paths,
        "host_devices": len(found.devices),
        "devices": [{"index": d.index, "dev": d.dev, "dev_text": d.dev_text,
                     "fstype": d.fstype, "mount_point": d.mount_point,
                     "first_path": d.first_path, "paths": d.paths, "own_dev": d.own_dev}
                    for d in found.devices],
        "unseen": [{"path": p.path, "why": p.why.value, "detail": p.detail}
                   for p in walk.problems],
        "walk_seconds": walk.seconds,
        "wall_seconds": report.seconds,
        "exit_code": report.exit_code,
        "results": [*(_mode_json(m) for m in found.modes),
                    *(_virtiofs_json(v) for v in found.virtiofs)],
    }
