"""The scripted layouts: a tmpfs root plus scripted FUSE filesystems (``scripted_mount``)
whose inode numbers are chosen to drive QEMU's ``multidevs=remap`` into each of its
corners (hw/9pfs/9p.c, modelled in ``verdicts.remap_model``).

What QEMU does, in short: a device gets a key width when first seen, the width of the
next Exp-Golomb affix (affix n is ``2 * bit_length(n) - 1`` bits); a file's key is
(device, the top ``width`` bits of st_ino, kept in 16 bits); each new key takes the
next affix; the qid path is ``st_ino << affix bits | affix``.  Walked in truth order
(the export root first, then depth first with names sorted), the devices below are
first seen in this order and so:

* the root tmpfs: 1-bit key, affix 1 (every tmpfs number has bit 63 clear).
* dev01, seen second: a 3-bit key.  Eight groups of files, one per 3-bit prefix; the
  groups' affixes grow (3, 3, 5, 5, 5, 5, 7, 7 bits), and the files of a group differ
  only in bits 60..58, which the key ignores: under the 5- and 7-bit affixes the
  shift drops them and the files collide.
* dev02, seen at affix 10: a 7-bit key, 128 prefixes (affixes 10..137).
* dev03, seen at affix 138: a 15-bit key, 118 prefixes (affixes 138..255).
* dev04, seen at affix 256: a 17-bit key, which QEMU's uint16_t keeps only the low 16
  bits of: pairs of files differing only in bit 63 share key and affix and collide.
* dev05 (scripted-fullmap only), seen at affix 261: 65,536 symlinks with distinct
  16-bit prefixes, more than the affix counter's 65,535, so QEMU falls back to its
  full map and warns "9p: Potential degraded performance of inode remapping".

Every scripted file's content names its path and the inode number the spec gave it
(``truth.scripted_content``), so the layout's premise can check that lstat shows it.
"""

from __future__ import annotations

import ctypes.util
import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import LayoutRequirementMissing
from .build import BuildContext, tmpfs_device
from .populate import populate, record_truth
from .scripted_mount import scripted_mount
from .scripted_spec import Kind, ScriptedEntry
from .tools import find_tool, require_filesystem
from .truth import TWIN_EPOCH, Export, ExportDevice, root_time, scripted_content

# How long one scripted server may take to come up; the 66,000-entry tree of
# scripted-fullmap is parsed and indexed in about a second.
SCRIPTED_START_S = 30.0
# The bits of dev01's 3-bit key, and the ones its files differ in (ignored by the key).
NARROW_SHIFT = 61
VARIANT_SHIFT = 58
NARROW_GROUPS = 8
# dev02 and dev03 take the affixes up to KEYS_BEFORE_WIDE; the next device is the first
# with a key wider than 16 bits (affix 256 is 17 bits wide).
KEYS_BEFORE_WIDE = 255
WIDE_SHIFT = 47  # a 17-bit key is bits 63..47; QEMU keeps 62..47
TRUNCATED_PREFIXES = (1, 2, 0x7FFF, 0xFFFF)
FULLMAP_PREFIXES = 1 << 16
FULLMAP_DIRS = 256
# dev02's 7-bit key has 128 prefixes: it takes them all.
DEV02_KEYS = 1 << 7
# dev05's entries are symlinks, which recording the truth only lstats: a regular file
# is also opened and read, two more round trips each to the single-threaded FUSE
# server, and with 65,536 of them the layout took about 20 s to build instead of 6-12
# (measured).  Nothing is meant to follow them: the target names nothing.
FULLMAP_TARGET = "nowhere"
_FILE: Kind = "file"
_DIR: Kind = "dir"
_SYMLINK: Kind = "symlink"


@dataclass(frozen=True)
class ScriptedDevice:
    """One scripted FUSE filesystem of the layout: where it is mounted and its tree."""

    relpath: str
    spec: tuple[ScriptedEntry, ...]


def _device(index: int, root_ino: int, entries: Sequence[tuple[str, Kind, int]]
            ) -> ScriptedDevice:
    relpath = f"dev{index:02d}"
    spec = [ScriptedEntry("", "dir", root_ino, mtime=root_time(index))]
    for path, kind, ino in entries:
        content = scripted_content(f"{relpath}/{path}", ino) if kind == _FILE else b""
        target = FULLMAP_TARGET if kind == _SYMLINK else ""
        spec.append(ScriptedEntry(path, kind, ino, content, mtime=TWIN_EPOCH, target=target))
    return ScriptedDevice(relpath, tuple(spec))


def narrow_device() -> ScriptedDevice:
    """dev01: eight groups of eight files, group g under 3-bit prefix g, its files
    differing only in bits 60..58.  The root takes group 0's prefix, so the groups get
    the affixes in name order."""
    entries: list[tuple[str, Kind, int]] = []
    for group in range(NARROW_GROUPS):
        for variant in range(8):
            ino = group << NARROW_SHIFT | variant << VARIANT_SHIFT | 0x110 | group
            entries.append((f"g{group}v{variant}", _FILE, ino))
    return _device(1, 0x100, entries)


def _prefix_device(index: int, width: int, count: int, low: int) -> ScriptedDevice:
    """A device whose root and ``count - 1`` files carry ``count`` distinct ``width``-bit
    prefixes (the root prefix 0): ``count`` new keys."""
    shift = 64 - width
    entries: list[tuple[str, Kind, int]] = [
        (f"k{prefix:03d}", _FILE, prefix << shift | low | prefix) for prefix in range(1, count)]
    return _device(index, low, entries)


def truncated_device(index: int = 4) -> ScriptedDevice:
    """dev04: pairs of files whose numbers differ only in bit 63, the bit a 17-bit key
    loses to QEMU's 16-bit store."""
    entries: list[tuple[str, Kind, int]] = []
    for prefix in TRUNCATED_PREFIXES:
        ino = prefix << WIDE_SHIFT | 0x400
        entries.append((f"t{prefix:04x}a", _FILE, ino))
        entries.append((f"t{prefix:04x}b", _FILE, ino | 1 << 63))
    return _device(index, 0x400, entries)


def fullmap_device(index: int = 5) -> ScriptedDevice:
    """dev05: 65,536 symlinks with distinct 16-bit prefixes (bits 62..47), 256 per
    directory; each directory shares its first symlink's prefix."""
    entries: list[tuple[str, Kind, int]] = []
    per_dir = FULLMAP_PREFIXES // FULLMAP_DIRS
    for directory in range(FULLMAP_DIRS):
        first = directory * per_dir
        entries.append((f"d{directory:03d}", _DIR, first << WIDE_SHIFT | 0x5FF))
        entries += [(f"d{directory:03d}/r{prefix:05d}", _SYMLINK, prefix << WIDE_SHIFT | 0x500)
                    for prefix in range(first, first + per_dir)]
    return _device(index, 0x5FE, entries)


def scripted_devices(fullmap: bool = False) -> tuple[ScriptedDevice, ...]:
    """The scripted layout's FUSE devices, dev01 first (scripted-fullmap: plus dev05).

    Affix indices: the root tmpfs takes 1, dev01 2..9, dev02 (7-bit key, seen at 10)
    128 more, dev03 (15-bit key, seen at 138) the rest up to KEYS_BEFORE_WIDE."""
    dev02 = _prefix_device(2, 7, DEV02_KEYS, 0x200)
    dev03 = _prefix_device(3, 15, KEYS_BEFORE_WIDE - 1 - NARROW_GROUPS - DEV02_KEYS, 0x300)
    devices = (narrow_device(), dev02, dev03, truncated_device())
    return (*devices, fullmap_device()) if fullmap else devices


def _require_fuse() -> None:
    if not os.path.exists("/dev/fuse"):
        raise LayoutRequirementMissing(
            "/dev/fuse is missing (the scripted layouts serve FUSE filesystems)",
            hint="load the fuse module (modprobe fuse) and install fuse3 (scripts/setup does)")
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        raise LayoutRequirementMissing(
            "/dev/fuse cannot be opened by this user",
            hint="run as root, or make /dev/fuse mode 0666 as distributions usually do")
    find_tool("fusermount3", "fuse3")
    if ctypes.util.find_library("fuse3") is None:
        raise LayoutRequirementMissing("libfuse 3 is not installed",
                                       hint="install fuse3 (scripts/setup does)")
    if importlib.util.find_spec("mfusepy") is None:
        raise LayoutRequirementMissing(
            "mfusepy is not installed in this Python",
            hint="run scripts/setup (it installs the harness's venv with mfusepy)")
    require_filesystem("fuse")


def _build(ctx: BuildContext, fullmap: bool) -> Export:
    _require_fuse()
    root, files = ctx.root, ctx.layout.files_per_device
    devices = [ExportDevice(0, root, ".", tmpfs_device(ctx.stack, ctx.problems, root, files))]
    populate(root, ".", files)
    for index, device in enumerate(scripted_devices(fullmap), start=1):
        target = root / device.relpath
        target.mkdir(mode=0o755)
        if len(device.spec) > 10_000:
            ctx.progress(f"{ctx.layout.kind}: serving {len(device.spec):,} scripted "
                         f"entries on {device.relpath}")
        ctx.stack.enter_context(scripted_mount(device.spec, target, timeout=SCRIPTED_START_S))
        devices.append(ExportDevice(index, target, device.relpath, os.stat(target).st_dev))
    # The scripted roots carry their times in the spec and are read-only.
    os.utime(root, (root_time(0),) * 2)
    if fullmap:
        ctx.progress(f"{ctx.layout.kind}: recording the host truth")
    truth = record_truth(root, devices)
    return Export(root=root, layout=ctx.layout, devices=tuple(devices), truth=truth)


def build_scripted(ctx: BuildContext) -> Export:
    """The scripted layout: a populated tmpfs root and FUSE devices dev01..dev04."""
    return _build(ctx, fullmap=False)


def build_scripted_fullmap(ctx: BuildContext) -> Export:
    """The scripted-fullmap layout: scripted plus dev05's 65,536 prefixes (~66,000 files)."""
    return _build(ctx, fullmap=True)
