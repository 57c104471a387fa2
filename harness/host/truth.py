"""The host truth: what the export holds (path -> st_dev, st_ino, kind, size, mtime),
the names and fixtures every device gets, and the premise each layout's rows need
(``layout_premise``).  Pure data and rules; building and recording the export is
``host.export`` and ``host.populate``."""

from __future__ import annotations

import stat
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property
from pathlib import Path

from ..config import Layout
from .layout import ExportLayout

SUBDIR = "sub"


SUBDIR_FILE = "inner"


LINK_A = "link-a"


LINK_B = "link-b"


NESTED = "nested"


ODD_NAME = "odd\nname"


# Twins built to provoke aliasing under an inode cache (see ``_add_twins``).  QEMU's
# qid.version is mtime seconds XOR size<<8, and the Linux client reuses a cached inode
# when type, path (st_ino under warn) and version match, so:
TWIN_SAME = "twin-same"  # same size, same mtime on every device: qids collide


TWIN_MTIME = "twin-mtime"  # same size, mtimes 4 s apart per device: qids differ


TWIN_DIR = "twin-dir"  # a directory with a different entry per device, same mtime


TWIN_ENTRY = "only-d"  # + device index: the entry that tells twin-dir's devices apart


# The special files every device also holds, made last so the numbers of everything
# before them stay as they were: a symlink (to SUBDIR/SUBDIR_FILE), a FIFO and a
# socket.  Nothing ever opens them: the agent lstats, the witnesses copy or list them.
SPECIAL_LINK = "special-link"


SPECIAL_FIFO = "special-fifo"


SPECIAL_SOCKET = "special-socket"


# A fixed, whole-second time for the twins, so whether qids collide does not depend
# on when the export was built.
TWIN_EPOCH = 1_700_000_000


# Device roots get TWIN_EPOCH + ROOT_STEP * (index + 1): distinct mtimes keep their
# qids apart, so a collision stays on the twins and does not swallow a whole device.
ROOT_STEP = 64


class EntryKind(StrEnum):
    """The file type of one host path, from its lstat."""

    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class HostEntry:
    """One path under the export root as the host sees it (lstat, never following links)."""

    path: str  # relative to the export root; the root itself is "."
    dev: int
    ino: int
    nlink: int
    kind: EntryKind
    device: int  # index into Export.devices: 0 is the root tmpfs
    content: bytes | None = None  # regular files only
    # st_mtime in whole seconds and st_size: with ino and kind they make QEMU's qid.
    mtime: int = 0
    size: int = 0

    @property
    def file_id(self) -> tuple[int, int]:
        """(st_dev, st_ino): what makes a host file distinct; hard links share it."""
        return (self.dev, self.ino)


@dataclass(frozen=True)
class HostTruth:
    """Every path of the export with its host identity, in a fixed order.

    The order (depth first, names sorted, "." first) is the order in which paths are fed
    to the guest agent, so guest records can be matched back by index.
    """

    entries: tuple[HostEntry, ...]
    # Directories whose listing the host could not read whole (a user's tree: no read
    # permission, or names it could not stat): readdir in the guest is not held to
    # the host's listing of these.
    partial: frozenset[str] = frozenset()

    @cached_property
    def paths(self) -> tuple[str, ...]:
        """The relative paths in truth order."""
        return tuple(entry.path for entry in self.entries)

    @cached_property
    def by_path(self) -> dict[str, HostEntry]:
        """Entries keyed by relative path."""
        return {entry.path: entry for entry in self.entries}

    @cached_property
    def first_paths(self) -> dict[tuple[int, int], str]:
        """Each distinct host file (st_dev, st_ino) and its first path in truth order."""
        first: dict[tuple[int, int], str] = {}
        for entry in self.entries:
            first.setdefault((entry.dev, entry.ino), entry.path)
        return first

    @cached_property
    def device_count(self) -> int:
        """How many distinct host devices (st_dev values) the export spans."""
        return len({entry.dev for entry in self.entries})

    @cached_property
    def by_file_id(self) -> dict[tuple[int, int], tuple[str, ...]]:
        """Paths per distinct host file; a hard-link pair is one key with two paths."""
        groups: dict[tuple[int, int], list[str]] = {}
        for entry in self.entries:
            groups.setdefault(entry.file_id, []).append(entry.path)
        return {key: tuple(paths) for key, paths in groups.items()}

    def repeated_inodes(self) -> dict[int, tuple[int, ...]]:
        """Inode numbers found on more than one host device -> those st_dev values, sorted.

        These are the numbers that collide in the guest when QEMU passes st_ino through
        unchanged (multidevs=warn). Empty means the premise of the test does not hold.
        """
        devs_per_ino: dict[int, set[int]] = {}
        for entry in self.entries:
            devs_per_ino.setdefault(entry.ino, set()).add(entry.dev)
        return {ino: tuple(sorted(devs)) for ino, devs in devs_per_ino.items() if len(devs) > 1}

    @property
    def premise_holds(self) -> bool:
        """A single device needs no premise; several must share at least one inode number."""
        return self.device_count <= 1 or bool(self.repeated_inodes())


@dataclass(frozen=True)
class ExportDevice:
    """One tmpfs of the export."""

    index: int
    path: Path  # absolute mount point
    relpath: str  # mount point relative to the export root ("." for device 0)
    st_dev: int


@dataclass(frozen=True)
class Export:
    """A built export: where it is, its devices, and the host truth recorded after building."""

    root: Path
    layout: ExportLayout
    devices: tuple[ExportDevice, ...]
    truth: HostTruth
    # Why the witnesses cannot run on this export (a user's tree too large for them,
    # or holding what every tool would complain about), None when they can.
    witness_skip: str | None = None
    # What the walk of a user's tree could not see whole, one line each.
    unseen: tuple[str, ...] = ()


def device_file_names(count: int) -> tuple[str, ...]:
    """The regular-file names every device gets, in creation order.

    All contain a space ("file 0000", ...); with two or more files the last one is
    "odd\\nname" instead, so a path with a newline is in every device too. The agent's
    NUL-separated input and hex output must carry both unharmed.
    """
    names = [f"file {i:04d}" for i in range(count)]
    if count >= 2:
        names[-1] = ODD_NAME
    return tuple(names)


def device_relpath(index: int, nested: bool, devices: int) -> str:
    """Where device ``index`` is mounted, relative to the export root."""
    if index == 0:
        return "."
    if nested and index == devices:
        return f"dev01/{NESTED}"
    return f"dev{index:02d}"


def root_time(index: int) -> int:
    """The mtime device ``index``'s root directory is given once the export is built."""
    return TWIN_EPOCH + ROOT_STEP * (index + 1)


def kind_of_mode(mode: int) -> EntryKind:
    """The EntryKind of an st_mode (host or guest: 9p passes the host mode through)."""
    if stat.S_ISREG(mode):
        return EntryKind.FILE
    if stat.S_ISDIR(mode):
        return EntryKind.DIR
    if stat.S_ISLNK(mode):
        return EntryKind.SYMLINK
    return EntryKind.OTHER


# --- what each layout's rows rest on ------------------------------------------------

# overlayfs with xino puts the number of the layer a file comes from in the inode's top
# bits (measured on Linux 6.18 with an upper and three lowers: lower 1 adds 2**62,
# lower 2 2**63, lower 3 both); no tmpfs, XFS or ext4 number comes near.
XINO_LOW_BIT = 62
# The btrfs layout's names: subvolumes sv1 and sv2 in the btrfs at dev01, and snap, a
# read-only snapshot of sv1 (same inode numbers, an st_dev of its own).
BTRFS_DEVICE = "dev01"
BTRFS_SUBVOLUMES = ("sv1", "sv2")
BTRFS_ORIGIN = "sv1"
BTRFS_SNAPSHOT = "snap"
# The device the xfs and ext4 layouts format (the others are tmpfs).
FORMATTED_DEVICE = 1
# A scripted file says which inode number its spec gave it: "<path> ino=0x...\n".
_SCRIPTED_INO_TAG = b" ino=0x"


def scripted_content(path: str, ino: int) -> bytes:
    """The content of a scripted file at ``path`` whose spec chose inode ``ino``."""
    return path.encode() + _SCRIPTED_INO_TAG + f"{ino:x}\n".encode()


def declared_ino(content: bytes | None) -> int | None:
    """The inode number a scripted file's content says its spec chose, else None."""
    if content is None or not content.endswith(b"\n") or _SCRIPTED_INO_TAG not in content:
        return None
    digits = content[:-1].rpartition(_SCRIPTED_INO_TAG)[2]
    try:
        return int(digits, 16)
    except ValueError:
        return None


def layout_premise(kind: Layout, truth: HostTruth) -> str | None:
    """Whether what layout ``kind`` is built to show is in ``truth``: None when it is,
    else the one-line reason a row on this export proves nothing.

    standard, loop: an inode number repeats across host devices.  overlay: xino put
    the layer in the top bits (and one st_dev serves every layer); overlay-mixed: that
    and a repeat across devices.  btrfs: the snapshot has its origin's inode numbers
    on another st_dev.  xfs, ext4: a number of the formatted device repeats on
    another device.  scripted, scripted-fullmap: lstat shows the numbers the spec
    chose.
    """
    return _PREMISES.get(kind, _repeats)(truth)


def _repeats(truth: HostTruth) -> str | None:
    if truth.premise_holds:
        return None
    return (f"the export spans {truth.device_count} host devices but no inode number "
            "repeats across them")


def _top_bits(truth: HostTruth) -> str | None:
    if any(entry.ino >> XINO_LOW_BIT for entry in truth.entries):
        return None
    return (f"no inode number has bit {XINO_LOW_BIT} or above set: overlayfs's xino did "
            "not put the layer in the top bits")


def _overlay(truth: HostTruth) -> str | None:
    if truth.device_count != 1:
        return (f"the overlay export spans {truth.device_count} st_dev values, not one: "
                "xino is not in effect")
    return _top_bits(truth)


def _overlay_mixed(truth: HostTruth) -> str | None:
    return _top_bits(truth) or _repeats(truth)


def _snapshot(truth: HostTruth) -> str | None:
    snap = f"{BTRFS_DEVICE}/{BTRFS_SNAPSHOT}"
    origin = f"{BTRFS_DEVICE}/{BTRFS_ORIGIN}"
    pairs = [(entry, truth.by_path.get(origin + entry.path[len(snap):]))
             for entry in truth.entries
             if entry.path == snap or entry.path.startswith(snap + "/")]
    if not pairs:
        return f"the export has no btrfs snapshot {snap}"
    for copy, first in pairs:
        if first is None:
            return f"{copy.path} has no counterpart in its origin {origin}"
        if copy.ino != first.ino:
            return (f"{copy.path} is inode {copy.ino}, its origin {first.path} {first.ino}: "
                    "the snapshot does not share its origin's inode numbers")
        if copy.dev == first.dev:
            return f"{copy.path} is on its origin's st_dev {copy.dev}: no device of its own"
    return None


def _formatted_repeats(truth: HostTruth) -> str | None:
    formatted = {entry.ino for entry in truth.entries if entry.device == FORMATTED_DEVICE}
    if not formatted:
        return f"the export has no device {FORMATTED_DEVICE} (the formatted filesystem)"
    others = {entry.ino for entry in truth.entries if entry.device != FORMATTED_DEVICE}
    if formatted & others:
        return None
    return (f"no inode number of the formatted device (dev{FORMATTED_DEVICE:02d}, "
            f"{min(formatted)}..{max(formatted)}) appears on another device")


def _scripted(truth: HostTruth) -> str | None:
    checked = 0
    for entry in truth.entries:
        chosen = declared_ino(entry.content)
        if chosen is None:
            continue
        if chosen != entry.ino:
            return (f"{entry.path}: the spec chose inode {chosen:#x}, lstat shows "
                    f"{entry.ino:#x}: the FUSE server's numbers did not reach the kernel")
        checked += 1
    if checked == 0:
        return "no scripted file in the export says which inode number its spec chose"
    return None


_PREMISES = {
    Layout.STANDARD: _repeats,
    Layout.LOOP: _repeats,
    Layout.OVERLAY: _overlay,
    Layout.OVERLAY_MIXED: _overlay_mixed,
    Layout.BTRFS: _snapshot,
    Layout.XFS: _formatted_repeats,
    Layout.EXT4: _formatted_repeats,
    Layout.SCRIPTED: _scripted,
    Layout.SCRIPTED_FULLMAP: _scripted,
    # The user's tree: warn's promise needs a number repeated across devices (the
    # judge applies it to warn alone, see ``verdicts.ids.judge``).
    Layout.EXPORT: _repeats,
}
