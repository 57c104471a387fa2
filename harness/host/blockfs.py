"""The layouts on real disk filesystems: btrfs, XFS and ext4 images on loop devices.

Each image is a sparse file in a private tmpfs beside the export, attached to a loop
device (autoclear, so even a SIGKILLed harness leaks none), formatted and mounted at
``dev01`` under a tmpfs root.  Unlike a tmpfs, these number their inodes in schemes of
their own (measured on Linux 6.18):

* btrfs: every subvolume numbers from 256 (its root) and has an st_dev of its own; a
  snapshot keeps its origin's numbers on yet another st_dev.
* XFS: the root is 128 and files follow from 131 (the inode chunk's slots).
* ext4: the root is 2, lost+found 11, files from 12, directories spread over block
  groups (2049, ...).

So that raw numbers repeat across devices, the tmpfs devices of the xfs and ext4
layouts skip ahead to the formatted device's first file number before they are
populated (``align_inode_numbers``): equal paths then get equal numbers there too.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..proc import run_tied
from .build import BuildContext, mount_filesystem, tmpfs_device, work_dir
from .loop import attach_loop, make_image
from .populate import align_inode_numbers, populate, record_truth, set_root_times
from .tools import TOOL_TIMEOUT_S, find_tool, require_filesystem, require_real_root, run_tool
from .truth import (
    BTRFS_DEVICE,
    BTRFS_ORIGIN,
    BTRFS_SNAPSHOT,
    BTRFS_SUBVOLUMES,
    Export,
    ExportDevice,
    device_file_names,
    root_time,
)

_MIB = 1 << 20


@dataclass(frozen=True)
class Format:
    """How one filesystem is made: its mkfs, the package shipping it, its options, and
    the image size (at least ``min_bytes``; ``bytes_per_file`` per file it will hold)."""

    fstype: str
    mkfs: str
    package: str
    options: tuple[str, ...]
    min_bytes: int
    bytes_per_file: int

    def image_bytes(self, files: int) -> int:
        """The sparse image size for ``files`` files (plus the fixtures)."""
        return max(self.min_bytes, (files + 64) * self.bytes_per_file)


# Sizes: mkfs.btrfs refuses below about 114 MiB with its default DUP metadata;
# xfsprogs 5.19 and later refuse below 300 MiB (its log alone takes 64 MiB).
BTRFS = Format("btrfs", "mkfs.btrfs", "btrfs-progs", ("-q", "-f"), 128 * _MIB, 16 << 10)
XFS = Format("xfs", "mkfs.xfs", "xfsprogs", ("-q", "-f"), 300 * _MIB, 4 << 10)
EXT4 = Format("ext4", "mkfs.ext4", "e2fsprogs", ("-q", "-F"), 16 * _MIB, 8 << 10)
# The private tmpfs holding an image: the image's size plus room for nothing else.
_WORK_SLACK = 16 * _MIB


def _require(fmt: Format) -> str:
    """Check, before anything is mounted, that ``fmt`` can be made here: real root
    (LayoutUnavailable), its mkfs (LayoutRequirementMissing), the kernel filesystem."""
    require_real_root(fmt.fstype)
    mkfs = find_tool(fmt.mkfs, fmt.package)
    require_filesystem(fmt.fstype)
    return mkfs


def _formatted(ctx: BuildContext, fmt: Format, mkfs: str, target: Path) -> int:
    """Make, format and mount a ``fmt`` image on ``target``; return its st_dev."""
    files = ctx.layout.files_per_device
    size = fmt.image_bytes(files)
    base = work_dir(ctx, fmt.fstype, size + _WORK_SLACK)
    image = base / f"{fmt.fstype}.img"
    make_image(image, size)
    device = attach_loop(ctx, image)
    if fmt is BTRFS:
        # Unwound after the unmount and before the detach: mounting registered the
        # device with the kernel's btrfs, which would otherwise keep the stale entry.
        ctx.stack.callback(_forget_btrfs, find_tool("btrfs", BTRFS.package), device)
    ctx.progress(f"{fmt.fstype}: formatting a {size // _MIB} MiB image on {device}")
    options = fmt.options
    if fmt is EXT4:
        # ext4 fixes its inode count at mkfs time, by default too few for a big --files.
        options = (*options, "-N", str(2 * files + 1024))
    run_tool([mkfs, *options, device], f"formatting {device} as {fmt.fstype}")
    return mount_filesystem(ctx, device, target, fmt.fstype)


def _forget_btrfs(btrfs: str, device: str) -> None:
    # Best effort: a stale registration is harmless, so a failure is not a problem.
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        run_tied([btrfs, "device", "scan", "--forget", device], timeout=TOOL_TIMEOUT_S)


def _subvolume(ctx: BuildContext, btrfs: str, path: Path, index: int) -> ExportDevice:
    run_tool([btrfs, "subvolume", "create", os.fspath(path)],
             f"creating btrfs subvolume {path.name}")
    relpath = f"{BTRFS_DEVICE}/{path.name}"
    populate(path, relpath, ctx.layout.files_per_device, index)
    return ExportDevice(index, path, relpath, os.stat(path).st_dev)


def build_btrfs(ctx: BuildContext) -> Export:
    """The btrfs layout: a populated tmpfs root; at dev01 a btrfs holding subvolumes sv1
    and sv2, populated alike, and snap, a read-only snapshot of sv1."""
    mkfs = _require(BTRFS)
    btrfs = find_tool("btrfs", BTRFS.package)
    root, files = ctx.root, ctx.layout.files_per_device
    devices = [ExportDevice(0, root, ".", tmpfs_device(ctx.stack, ctx.problems, root, files))]
    populate(root, ".", files)
    target = root / BTRFS_DEVICE
    target.mkdir(mode=0o755)
    devices.append(ExportDevice(1, target, BTRFS_DEVICE, _formatted(ctx, BTRFS, mkfs, target)))
    for index, name in enumerate(BTRFS_SUBVOLUMES, start=2):
        devices.append(_subvolume(ctx, btrfs, target / name, index))
    # Before the snapshot, which is read-only and takes sv1's times as they are.
    set_root_times(devices)
    snapshot = target / BTRFS_SNAPSHOT
    run_tool([btrfs, "subvolume", "snapshot", "-r", os.fspath(target / BTRFS_ORIGIN),
              os.fspath(snapshot)], f"snapshotting {BTRFS_ORIGIN}")
    devices.append(ExportDevice(len(devices), snapshot, f"{BTRFS_DEVICE}/{BTRFS_SNAPSHOT}",
                                os.stat(snapshot).st_dev))
    os.utime(target, (root_time(1),) * 2)  # the snapshot moved it
    truth = record_truth(root, devices)
    return Export(root=root, layout=ctx.layout, devices=tuple(devices), truth=truth)


def _build_formatted(ctx: BuildContext, fmt: Format) -> Export:
    """A tmpfs root and dev02 beside a ``fmt`` filesystem at dev01, all populated like
    standard devices, the tmpfs ones from dev01's first file number on."""
    mkfs = _require(fmt)
    root, files = ctx.root, ctx.layout.files_per_device
    root_dev = tmpfs_device(ctx.stack, ctx.problems, root, files)
    for name in ("dev01", "dev02"):
        (root / name).mkdir(mode=0o755)
    devices = [ExportDevice(0, root, ".", root_dev),
               ExportDevice(1, root / "dev01", "dev01", _formatted(ctx, fmt, mkfs, root / "dev01"))]
    populate(root / "dev01", "dev01", files, 1)
    first = os.lstat(root / "dev01" / device_file_names(files)[0]).st_ino
    st_dev = tmpfs_device(ctx.stack, ctx.problems, root / "dev02", files)
    devices.append(ExportDevice(2, root / "dev02", "dev02", st_dev))
    for device in (devices[2], devices[0]):
        if not align_inode_numbers(device.path, first):
            ctx.progress(f"{fmt.fstype}: {device.relpath} cannot start at inode {first}")
        populate(device.path, device.relpath, files, device.index)
    set_root_times(devices)
    truth = record_truth(root, devices)
    return Export(root=root, layout=ctx.layout, devices=tuple(devices), truth=truth)


def build_xfs(ctx: BuildContext) -> Export:
    """The xfs layout: an XFS image at dev01 beside tmpfs devices (root, dev02)."""
    return _build_formatted(ctx, XFS)


def build_ext4(ctx: BuildContext) -> Export:
    """The ext4 layout: an ext4 image at dev01 beside tmpfs devices (root, dev02)."""
    return _build_formatted(ctx, EXT4)
