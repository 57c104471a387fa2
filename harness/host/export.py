"""The multi-device export on the host, and the host truth the verdicts compare against.

``build_export`` builds the layout ``layout.kind`` names, one builder per layout:
standard and loop here, the others in ``host.overlay``, ``host.blockfs`` and
``host.scripted``; the blocks they share are ``host.build`` (mounts, directories) and
``host.populate`` (the files every device gets, the recorded truth).

In the standard layout the export root is a tmpfs; devices 1..N-1 are further tmpfs
mounts at ``dev01``, ``dev02``, ... inside it (and, with ``layout.nested``, one more
at ``dev01/nested``). Every device is populated the same way and in the same order. A
fresh tmpfs numbers its inodes from 1 (its root) upwards, so equal paths on different
devices get equal inode numbers: exactly the situation in which ``multidevs=warn``
lets guest file ids collide and ``remap`` must keep them apart.

All mounts happen in the harness's private mount namespace (see ``host.namespace``), so
even a SIGKILLed harness leaves no mount behind on the host.  The export directories
themselves are made on a scratch tmpfs that exists only in that namespace (see
``scratch_dir``), so a SIGKILL leaves no empty directory behind either.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

from ..config import Layout
from ..errors import ExportError
from ..progress import Progress, quiet
from .blockfs import build_btrfs, build_ext4, build_xfs
from .build import BuildContext, temp_dir, tmpfs_device
from .layout import ExportLayout
from .namespace import bind_mount, private_namespace, unmount
from .overlay import build_overlay, build_overlay_mixed
from .populate import populate, populate_files, record_truth, set_root_times
from .scripted import build_scripted, build_scripted_fullmap
from .truth import SUBDIR, TWIN_EPOCH, Export, ExportDevice, device_relpath
from .usertree import build_user_tree

Builder = Callable[[BuildContext], Export]
# Only the standard layout has a nested device (loop refuses it in ExportLayout).
_WITHOUT_NESTED = frozenset(Layout) - {Layout.STANDARD}


@contextmanager
def build_export(
    layout: ExportLayout, base_dir: Path | None = None, root: Path | None = None,
    *, progress: Progress = quiet,
) -> Iterator[Export]:
    """Build the multi-device export, yield it, and tear it down again.

    The root is mounted on ``root`` (an existing empty directory, left in place
    afterwards) or on a fresh directory made under ``base_dir`` (default:
    ``scratch_dir()``, else the temp dir) and removed afterwards.  What is mounted
    there is ``layout.kind``'s (see ``config.Layout``); in the standard layout device
    0 is a tmpfs, devices 1..N-1 are tmpfs mounts at ``devNN``, and ``layout.nested``
    adds one more at ``dev01/nested``.  Must run inside the harness's private mount
    namespace, else ExportError: a mount there cannot leak onto the host. On exit,
    also on exceptions and Ctrl-C, the mounts are unmounted in reverse order (lazily
    if a plain umount fails), loop devices detached, helper processes stopped and the
    directories removed.  ``progress`` hears about the slow steps (formatting images,
    serving large scripted trees).  A layout this host cannot build raises
    LayoutRequirementMissing (a tool or filesystem missing) or LayoutUnavailable (not
    possible rootless).
    """
    if private_namespace() is None:
        raise ExportError(
            "refusing to mount the export outside a private mount namespace",
            hint="call harness.host.namespace.enter_private_namespace() first (the CLI and "
            "the pytest plugin do), so no mount can leak onto the host",
        )
    _check_shape(layout)
    problems: list[str] = []
    try:
        with ExitStack() as stack:
            export_root = _make_root(stack, problems, base_dir, root)
            ctx = BuildContext(stack, problems, layout, export_root, progress)
            yield _build(ctx)
    except BaseException as exc:
        if problems:
            exc.add_note("export cleanup also failed: " + "; ".join(problems))
        raise
    if problems:
        raise ExportError(
            "could not clean up the export: " + "; ".join(problems),
            hint="the mounts vanish when the harness process exits (private namespace)",
        )


def _check_shape(layout: ExportLayout) -> None:
    if layout.nested and layout.devices < 2:
        raise ExportError(
            "a nested device needs at least 2 devices (it is mounted inside dev01)",
            hint="use --devices 2 or more with --nested",
        )
    if layout.nested and layout.kind in _WITHOUT_NESTED:
        raise ExportError(
            f"the {layout.kind} layout has no nested device",
            hint="--nested applies to the standard layout only",
        )


def _make_root(
    stack: ExitStack, problems: list[str], base_dir: Path | None, root: Path | None
) -> Path:
    if root is not None:
        _check_user_root(root)
        return root.absolute()
    return temp_dir(stack, problems, "mdh-export-", base_dir, "the export directory")


def _check_user_root(root: Path) -> None:
    try:
        empty = root.is_dir() and not any(root.iterdir())
    except OSError:
        empty = False
    if not empty:
        raise ExportError(
            f"export root {root} is not an empty directory",
            hint="pass build_export(root=...) an existing empty directory, or no root "
            "to use a fresh one",
        )


@contextmanager
def extra_device(export: Export, relpath: str, index: int,
                 existing: bool = False) -> Iterator[ExportDevice]:
    """Mount one more tmpfs at ``relpath`` (a new directory; ``existing``: a directory
    already there, which the guest may hold open) in a built export while it is in
    use, populated like the others so its inode numbers repeat theirs; unmount it on
    exit (lazily if busy), leaving the directory it covered.

    For checks of a device set that changes while the guest runs.  Raises
    ExportError when it cannot be mounted.
    """
    target = export.root / relpath
    problems: list[str] = []
    with ExitStack() as stack:
        if not existing:
            target.mkdir(mode=0o755)
        st_dev = tmpfs_device(stack, problems, target, export.layout.files_per_device)
        try:
            populate(target, relpath, export.layout.files_per_device)
        except OSError as exc:
            raise ExportError(f"populating the extra device {target} failed: {exc}",
                              hint="check free memory for tmpfs") from exc
        yield ExportDevice(index, target, relpath, st_dev)
    if problems:
        raise ExportError("could not unmount the extra device: " + "; ".join(problems),
                          hint="the mount vanishes when the harness process exits")


@contextmanager
def bind_twice(export: Export, source: str, targets: Sequence[str]) -> Iterator[None]:
    """Bind-mount the export's directory ``source`` at each of ``targets`` (new
    directories): one filesystem reachable by several paths, one device.  Unmounted
    in reverse order on exit."""
    with ExitStack() as stack:
        for relpath in targets:
            target = export.root / relpath
            target.mkdir(mode=0o755)
            try:
                bind_mount(export.root / source, target)
            except OSError as exc:
                raise ExportError(f"cannot bind-mount {source} on {target}: {exc.strerror}",
                                  hint="the harness must be root in its namespace") from exc
            stack.callback(unmount, target, lazy=True)
        yield


def _build_loop(ctx: BuildContext) -> Export:
    """The loop layout (``ExportLayout.loop``): the root holds only dev01, dev01 only
    ``sub`` with the files; both roots one entry each (same size), one mtime, and
    inode 1 of their tmpfs, so their qids match under warn."""
    root, layout = ctx.root, ctx.layout
    files = layout.files_per_device
    root_dev = tmpfs_device(ctx.stack, ctx.problems, root, files)
    target = root / device_relpath(1, False, 2)
    target.mkdir(mode=0o755)
    st_dev = tmpfs_device(ctx.stack, ctx.problems, target, files)
    sub = target / SUBDIR
    sub.mkdir(mode=0o755)
    populate_files(sub, f"dev01/{SUBDIR}", files)
    devices = (ExportDevice(0, root, ".", root_dev),
               ExportDevice(1, target, target.name, st_dev))
    for device in devices:
        os.utime(device.path, (TWIN_EPOCH,) * 2)
    truth = record_truth(root, devices)
    root_entry, mount_entry = truth.by_path["."], truth.by_path[target.name]
    if (root_entry.ino, root_entry.size, root_entry.mtime) != (
            mount_entry.ino, mount_entry.size, mount_entry.mtime):
        raise ExportError(
            f"the loop layout's roots differ: root ino/size/mtime {root_entry.ino}/"
            f"{root_entry.size}/{root_entry.mtime}, dev01 {mount_entry.ino}/"
            f"{mount_entry.size}/{mount_entry.mtime}",
            hint="this host's tmpfs numbers or sizes directories differently",
        )
    return Export(root=root, layout=layout, devices=devices, truth=truth)


def _build_standard(ctx: BuildContext) -> Export:
    """Device 0 at ``root``, devNN (and a nested one) inside it, every one populated."""
    root, layout = ctx.root, ctx.layout
    files = layout.files_per_device
    total = layout.devices + (1 if layout.nested else 0)
    devices: list[ExportDevice] = []
    st_dev = tmpfs_device(ctx.stack, ctx.problems, root, files)
    devices.append(ExportDevice(0, root, ".", st_dev))
    # Populate the root before creating the devNN mount points, which would
    # otherwise take its first inode numbers and shift it against the others.
    populate(root, ".", files)
    for index in range(1, total):
        relpath = device_relpath(index, layout.nested, layout.devices)
        target = root / relpath
        # The nested mount point is made after dev01 is populated (its loop turn
        # comes last), so dev01 lines up with the other devices as well.
        target.mkdir(mode=0o755)
        st_dev = tmpfs_device(ctx.stack, ctx.problems, target, files)
        devices.append(ExportDevice(index, target, relpath, st_dev))
        populate(target, relpath, files, index)
    set_root_times(devices)
    truth = record_truth(root, devices)
    return Export(root=root, layout=layout, devices=tuple(devices), truth=truth)


_BUILDERS: dict[Layout, Builder] = {
    Layout.STANDARD: _build_standard,
    Layout.LOOP: _build_loop,
    Layout.OVERLAY: build_overlay,
    Layout.OVERLAY_MIXED: build_overlay_mixed,
    Layout.BTRFS: build_btrfs,
    Layout.XFS: build_xfs,
    Layout.EXT4: build_ext4,
    Layout.SCRIPTED: build_scripted,
    Layout.SCRIPTED_FULLMAP: build_scripted_fullmap,
    Layout.EXPORT: build_user_tree,
}


def _build(ctx: BuildContext) -> Export:
    # Before the layout kinds existed everything but loop built the standard layout,
    # and a caller still passing a bool where the kind now stands gets that.
    build = _BUILDERS.get(ctx.layout.kind, _build_standard)
    try:
        return build(ctx)
    except OSError as exc:
        raise ExportError(
            f"building the export under {ctx.root} failed: {exc}",
            hint="check free memory for tmpfs, or lower --devices/--files",
        ) from exc
