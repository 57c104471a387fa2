"""The overlay layouts: an overlayfs with ``xino=on`` over tmpfs layers.

With xino, overlayfs gives every file one st_dev (its own) and keeps st_ino unique by
writing the number of the layer the file comes from into the inode's top bits: here
the upper layer keeps its raw numbers and lowers 1, 2 and 3 add 2**62, 2**63 and both
(measured on Linux 6.18).  Every layer is a tmpfs of its own populated in the same
order, so the raw numbers repeat across layers and the files of different layers differ
only in those top bits: exactly the bits QEMU's ``multidevs=remap`` shifts out of the
qid path when the key it files them under is too narrow.

The layers live in a private work directory beside the export, never inside it: the
guest sees only the merged tree.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ExportError
from .build import BuildContext, mount_filesystem, tmpfs_device, work_dir
from .namespace import in_user_namespace
from .populate import populate, record_truth, set_root_times, write_file
from .tools import require_filesystem
from .truth import LINK_A, LINK_B, TWIN_EPOCH, XINO_LOW_BIT, Export, ExportDevice

UPPER = "up"
LOWERS = ("l1", "l2", "l3")
# index/redirect_dir/metacopy off: the features that need more of the layers' filesystem
# (file handles, xattrs) than every kernel's tmpfs has, and that a kernel's defaults
# (module parameters) might switch on; the layout needs none of them.
OVERLAY_OPTIONS = "xino=on,index=off,redirect_dir=off,metacopy=off"
# In a user namespace (a rootless run) overlayfs refuses redirect_dir=off (EPERM) and
# wants its own metadata in user.* xattrs, the kernel log says ("try mounting with
# 'userxattr' option"); redirect_dir is then nofollow, which makes no redirect either.
# Measured on Linux 6.18 in unshare -Urm: these options mount, with the same layer bits.
USER_NAMESPACE_OVERLAY_OPTIONS = "xino=on,index=off,metacopy=off,userxattr"
# On every layer: the layer's tree and the workdir overlayfs needs beside the upper.
# The lowers get an unused work dir too, so every layer numbers its inodes alike.
_DATA = "data"
_WORK = "work"
# Every layer file has this many bytes, so the files of different layers agree in size
# (and, with one mtime, in QEMU's qid.version) as well as in their raw inode numbers.
_FILE_BYTES = 32
_WORK_BYTES = 1 << 20
# mount(2) options are comma-separated and lowerdir colon-separated.
_UNSAFE = frozenset(",:\\")


def _layer_content(dirname: str, name: str) -> bytes:
    text = f"{dirname}/{name}"
    return text.encode().ljust(max(_FILE_BYTES, len(text) + 1) - 1) + b"\n"


def _fill_layer(ctx: BuildContext, base: Path, dirname: str, links: bool) -> Path:
    """Mount a tmpfs at ``base/dirname`` holding data/ and work/; put
    ``files_per_device`` files in data/``dirname`` (and the hard-link pair when
    ``links``); return the layer's data directory."""
    files = ctx.layout.files_per_device
    layer = base / dirname
    layer.mkdir(mode=0o700)
    tmpfs_device(ctx.stack, ctx.problems, layer, files)
    data = layer / _DATA
    data.mkdir(mode=0o755)
    (layer / _WORK).mkdir(mode=0o700)
    (data / dirname).mkdir(mode=0o755)
    dir_fd = os.open(data / dirname, os.O_RDONLY | os.O_DIRECTORY)
    try:
        names = [f"f{i}" for i in range(files)]
        for name in names:
            write_file(name, _layer_content(dirname, name), dir_fd)
        if links:
            # Last, so the f files keep the numbers they have on the other layers.
            write_file(LINK_A, _layer_content(dirname, LINK_A), dir_fd)
            os.link(LINK_A, LINK_B, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            names.append(LINK_A)
        for name in names:
            os.utime(name, (TWIN_EPOCH,) * 2, dir_fd=dir_fd, follow_symlinks=False)
    finally:
        os.close(dir_fd)
    os.utime(data / dirname, (TWIN_EPOCH,) * 2)
    return data


def overlay_options(user_namespace: bool) -> str:
    """The overlay's own mount options: a user namespace (rootless) takes other ones."""
    return USER_NAMESPACE_OVERLAY_OPTIONS if user_namespace else OVERLAY_OPTIONS


def _options(upper: Path, lowers: list[Path], own: str) -> str:
    paths = [upper, upper.parent / _WORK, *lowers]
    unsafe = [p for p in paths if _UNSAFE & set(os.fspath(p))]
    if unsafe:
        raise ExportError(f"overlay layer path {unsafe[0]} has a ',', ':' or '\\'",
                          hint="set MDH_CACHE_DIR (or TMPDIR) to a plainer directory")
    lowerdir = ":".join(os.fspath(p) for p in lowers)
    return f"lowerdir={lowerdir},upperdir={upper},workdir={upper.parent / _WORK},{own}"


def _check_xino(target: Path, lowers: list[Path], st_dev: int) -> list[int]:
    """The layer bits overlayfs added to each lower's first file, after checking that
    every merged path has the overlay's st_dev and each lower's bits sit above the raw
    number; ExportError otherwise."""
    for directory, dirs, files in os.walk(target):
        for name in (*dirs, *files):
            path = os.path.join(directory, name)
            if os.lstat(path).st_dev != st_dev:
                raise ExportError(
                    f"{path} has st_dev {os.lstat(path).st_dev}, not the overlay's {st_dev}",
                    hint="this kernel's overlayfs did not take xino=on (dmesg says why)")
    added = []
    low = (1 << XINO_LOW_BIT) - 1
    for data, dirname in zip(lowers, LOWERS, strict=True):
        raw = os.lstat(data / dirname / "f0").st_ino
        merged = os.lstat(target / dirname / "f0").st_ino
        if merged == raw or merged & low != raw:
            raise ExportError(
                f"overlayfs shows {dirname}/f0 (raw inode {raw}) as inode {merged}: no "
                f"layer number at bit {XINO_LOW_BIT} and above",
                hint="this kernel's overlayfs numbers xino layers differently")
        added.append(merged ^ raw)
    if len(set(added)) != len(added):
        raise ExportError(f"overlayfs gave two lower layers the same top bits: {added}",
                          hint="xino does not tell the layers apart on this kernel")
    return added


def mount_overlay(ctx: BuildContext, target: Path) -> int:
    """Mount an overlayfs (xino) on ``target`` over a tmpfs upper and three tmpfs lowers
    made in a private work directory; check one st_dev and the layer bits; return the
    overlay's st_dev.  Everything is undone when the build unwinds."""
    require_filesystem("overlay")
    base = work_dir(ctx, "overlay", _WORK_BYTES)
    upper = _fill_layer(ctx, base, UPPER, links=False)
    lowers = [_fill_layer(ctx, base, name, links=index == 0)
              for index, name in enumerate(LOWERS)]
    user_namespace = in_user_namespace()
    if user_namespace:
        ctx.progress(f"overlay: in a user namespace, mounted with "
                     f"{USER_NAMESPACE_OVERLAY_OPTIONS} (redirect_dir=off is refused there)")
    st_dev = mount_filesystem(ctx, "overlay", target, "overlay",
                              _options(upper, lowers, overlay_options(user_namespace)))
    added = _check_xino(target, lowers, st_dev)
    ctx.progress("overlay: lower layers' inode numbers carry "
                 + ", ".join(f"{name} +{bits:#x}" for name, bits in zip(LOWERS, added,
                                                                       strict=True)))
    return st_dev


def build_overlay(ctx: BuildContext) -> Export:
    """The overlay layout: the export root itself is the overlay; one device."""
    st_dev = mount_overlay(ctx, ctx.root)
    devices = (ExportDevice(0, ctx.root, ".", st_dev),)
    set_root_times(devices)
    truth = record_truth(ctx.root, devices)
    return Export(root=ctx.root, layout=ctx.layout, devices=devices, truth=truth)


def build_overlay_mixed(ctx: BuildContext) -> Export:
    """The overlay-mixed layout: a tmpfs root populated like the standard layout's, the
    overlay at dev01 and a standard tmpfs device at dev02."""
    root, files = ctx.root, ctx.layout.files_per_device
    devices = [ExportDevice(0, root, ".", tmpfs_device(ctx.stack, ctx.problems, root, files))]
    populate(root, ".", files)
    (root / "dev01").mkdir(mode=0o755)
    devices.append(ExportDevice(1, root / "dev01", "dev01", mount_overlay(ctx, root / "dev01")))
    (root / "dev02").mkdir(mode=0o755)
    st_dev = tmpfs_device(ctx.stack, ctx.problems, root / "dev02", files)
    devices.append(ExportDevice(2, root / "dev02", "dev02", st_dev))
    populate(root / "dev02", "dev02", files, 2)
    set_root_times(devices)
    truth = record_truth(root, devices)
    return Export(root=root, layout=ctx.layout, devices=tuple(devices), truth=truth)
