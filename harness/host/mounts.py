"""The mounts a tree lies on, as ``/proc/self/mountinfo`` lists them.

Pure: text in, frozen data out.  The walk of a user's tree (``host.walk``) reads the
file and the prediction (``verdicts.predict``) names each device of the tree by the
mount that holds it: its filesystem type and mount point.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# mountinfo escapes space, tab, newline and backslash in paths as three octal digits.
_OCTAL = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class MountEntry:
    """One line of mountinfo: where a filesystem is mounted and what it is."""

    mount_id: int
    parent_id: int
    # major:minor of the filesystem as the kernel lists it.  A btrfs subvolume's files
    # (and an overlay's without xino) report another st_dev than this.
    dev: int
    # The directory of the filesystem mounted here (a bind mount's source inside it).
    fs_root: str
    mount_point: str
    options: str
    fstype: str
    source: str

    @property
    def read_only(self) -> bool:
        """True when this mount (not just its filesystem) is read-only."""
        return "ro" in self.options.split(",")


def _unescape(field: str) -> str:
    return _OCTAL.sub(lambda match: chr(int(match.group(1), 8)), field)


def parse_mountinfo(text: str) -> tuple[MountEntry, ...]:
    """Every well-formed line of ``text`` (proc(5)'s mountinfo format), in order.

    Fields: id, parent id, major:minor, root, mount point, mount options, optional
    fields up to "-", then filesystem type, source and super options.  A malformed
    line is skipped: the kernel writes the file, and a caller that misses a mount
    names its device by st_dev alone.
    """
    found = []
    for line in text.splitlines():
        head, sep, tail = line.partition(" - ")
        fields, rest = head.split(), tail.split()
        if not sep or len(fields) < 6 or len(rest) < 2:
            continue
        major, _, minor = fields[2].partition(":")
        try:
            found.append(MountEntry(int(fields[0]), int(fields[1]),
                                    os.makedev(int(major), int(minor)), _unescape(fields[3]),
                                    _unescape(fields[4]), fields[5], rest[0],
                                    _unescape(rest[1])))
        except ValueError:
            continue
    return tuple(found)


def mount_points(text: str) -> frozenset[str]:
    """Every mount point ``text`` (mountinfo) lists, unescaped."""
    return frozenset(mount.mount_point for mount in parse_mountinfo(text))


def _inside(path: str, top: str) -> bool:
    return path == top or top == "/" or path.startswith(top.rstrip("/") + "/")


def mounts_under(mounts: Iterable[MountEntry], root: str) -> tuple[MountEntry, ...]:
    """The mounts a walk of ``root`` (an absolute, resolved path) meets: the one
    holding ``root`` and every one at or below it, the later of two at one point
    (the one on top) kept."""
    by_point: dict[str, MountEntry] = {}
    for mount in mounts:
        if _inside(mount.mount_point, root) or _inside(root, mount.mount_point):
            by_point[mount.mount_point] = mount
    holder = mount_holding(by_point.values(), root)
    return tuple(m for m in by_point.values()
                 if m is holder or (_inside(m.mount_point, root) and m.mount_point != root)
                 or m.mount_point == root)


def mount_holding(mounts: Iterable[MountEntry], path: str) -> MountEntry | None:
    """The mount ``path`` (absolute) lies on: the one with the longest mount point
    that contains it, the later listed on a tie (mounted on top)."""
    best: MountEntry | None = None
    for mount in mounts:
        if _inside(path, mount.mount_point) and (
                best is None or len(mount.mount_point) >= len(best.mount_point)):
            best = mount
    return best


def relative_point(mount: MountEntry, root: str) -> str:
    """``mount``'s mount point relative to ``root`` ("." for root itself, the
    absolute point for the mount holding root from above)."""
    if mount.mount_point == root:
        return "."
    if _inside(mount.mount_point, root):
        return mount.mount_point[len(root.rstrip("/")) + 1:]
    return mount.mount_point


def describe(mounts: Sequence[MountEntry]) -> str:
    """One line per mount: point, type, source, options (for error details)."""
    return "\n".join(f"{m.mount_point} {m.fstype} {m.source} {m.options}" for m in mounts)
