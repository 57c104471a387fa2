"""The mounts and directories every export layout is built on, shared by ``host.export``
and the layout modules (``host.overlay``, ``host.blockfs``, ``host.scripted``).

Each step that mounts or attaches something registers its undoing on the build's
ExitStack at once, so an export unwinds in reverse order on success, failure and
Ctrl-C; a cleanup that fails is appended to the build's ``problems`` instead of
hiding the exception that is already on its way.

* tmpfs devices (filled by ``host.populate``, which also records the host truth);
* the scratch tmpfs export roots are made on, and private work directories beside
  it for what must not be inside the export (overlay layers, disk images);
* other filesystems (``mount_filesystem``).

Loop devices are ``host.loop``'s, and the host tools and kernel filesystems a layout
needs are ``host.tools``'s.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
import threading
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from .. import paths
from ..errors import ExportError, LayoutRequirementMissing
from ..progress import Progress
from .layout import ExportLayout
from .namespace import mount as mount_any
from .namespace import mount_tmpfs, private_namespace, unmount

_SCRATCH_OPTIONS = "mode=0700,size=1m"
_scratch_lock = threading.Lock()
_scratch: dict[str, Path] = {}  # mount namespace ("mnt:[...]") -> its scratch dir

# A page per small file plus headroom for directories; a cap, not a reservation.
_PAGE = 4096
_MIN_TMPFS_BYTES = 1 << 20

@dataclass(frozen=True)
class BuildContext:
    """What every layout builder gets: where undo steps go (``stack``), where cleanup
    failures are collected (``problems``), the layout, the export root (an existing
    empty directory) and where long steps say what they do."""

    stack: ExitStack
    problems: list[str]
    layout: ExportLayout
    root: Path
    progress: Progress


# --- tmpfs mounts and directories ---------------------------------------------------


def tmpfs_options(files: int) -> str:
    """Mount options of a device tmpfs sized for ``files`` small files."""
    size = max(_MIN_TMPFS_BYTES, (files + 64) * _PAGE * 2)
    return f"size={size},mode=0755"


def release_mount(problems: list[str], target: Path) -> None:
    """Unmount ``target``; lazily if busy; a failure of both goes to ``problems``."""
    try:
        unmount(target)
    except OSError as first:
        # Busy (a process still has its cwd there): detach it; the kernel frees it
        # once unused, and our namespace makes it invisible to the host meanwhile.
        try:
            unmount(target, lazy=True)
        except OSError as second:
            problems.append(f"umount {target}: {first.strerror}; umount -l: {second.strerror}")


def tmpfs_device(stack: ExitStack, problems: list[str], target: Path, files: int,
                 options: str | None = None) -> int:
    """Mount a tmpfs sized for ``files`` on ``target``, unmounted when ``stack``
    unwinds; return its st_dev."""
    try:
        mount_tmpfs(target, options or tmpfs_options(files))
    except OSError as exc:
        raise ExportError(
            f"cannot mount a tmpfs on {target}: {exc.strerror}",
            hint="the harness must be root in its namespace (enter_private_namespace)",
        ) from exc
    stack.callback(release_mount, problems, target)
    return os.stat(target).st_dev


def scratch_dir() -> Path | None:
    """A directory on a tmpfs that only this process's private namespace sees.

    The tmpfs is mounted once per namespace on ``paths.scratch_anchor()``, a directory
    that persists and always looks empty from the host.  A directory made with
    mkdtemp in the shared temp dir instead stays behind, empty, when the harness is
    SIGKILLed (its mounts vanish with the namespace, but nobody runs the rmdir);
    here it vanishes with the namespace too.  Concurrent runs each mount their own
    tmpfs on the same directory and never see each other's.  Returns None (callers
    then use the temp dir) when the directory cannot be made or mounted on.
    """
    info = private_namespace()
    if info is None:
        return None
    with _scratch_lock:
        if info.mnt_ns in _scratch:
            return _scratch[info.mnt_ns]
        anchor = paths.scratch_anchor()
        try:
            anchor.mkdir(mode=0o700, parents=True, exist_ok=True)
            # Never mount through a symlink someone planted in place of the directory.
            if not stat.S_ISDIR(os.lstat(anchor).st_mode):
                return None
            mount_tmpfs(anchor, _SCRATCH_OPTIONS)
        except OSError:
            return None
        _scratch[info.mnt_ns] = anchor
        return anchor


def temp_dir(stack: ExitStack, problems: list[str], prefix: str,
             base_dir: Path | None = None, what: str = "a directory") -> Path:
    """A fresh empty directory under ``base_dir`` (default: ``scratch_dir()``, else
    the temp dir), removed with rmdir when ``stack`` unwinds; ``what`` names it in
    the error when it cannot be made."""
    if base_dir is None:
        base_dir = scratch_dir()
    try:
        made = Path(tempfile.mkdtemp(prefix=prefix, dir=base_dir)).absolute()
    except OSError as exc:
        raise ExportError(
            f"cannot create {what} under {base_dir or tempfile.gettempdir()}: "
            f"{exc.strerror}",
            hint="pass build_export(base_dir=...) a writable directory, or set MDH_CACHE_DIR "
            "(the default scratch directory lives under the image cache)",
        ) from exc

    def remove() -> None:
        # rmdir, never rmtree: once unmounted the directory is empty, and if an unmount
        # failed we must not delete through a still-mounted filesystem.
        try:
            made.rmdir()
        except OSError as exc:
            problems.append(f"rmdir {made}: {exc.strerror}")

    stack.callback(remove)
    return made


def work_dir(ctx: BuildContext, what: str, size: int) -> Path:
    """A private tmpfs of at most ``size`` bytes outside the export, for what a layout
    needs but must not export (overlay layers, disk images); unmounted and removed
    when the build unwinds.  Made beside the export roots on the scratch tmpfs, so a
    SIGKILLed harness leaves not even the directory behind."""
    made = temp_dir(ctx.stack, ctx.problems, f"mdh-{what}-")
    tmpfs_device(ctx.stack, ctx.problems, made, 0, f"size={size},mode=0700")
    return made


# --- other filesystems --------------------------------------------------------------


def mount_filesystem(ctx: BuildContext, source: str, target: Path, fstype: str,
                     options: str = "") -> int:
    """Mount ``source`` (a device, or a name for overlay) on ``target`` as ``fstype``,
    unmounted when the build unwinds; return the st_dev of its root.

    A kernel without the filesystem (ENODEV) raises LayoutRequirementMissing naming
    it; any other refusal an ExportError with the errno text.
    """
    try:
        mount_any(source, target, fstype, options)
    except OSError as exc:
        if exc.errno == errno.ENODEV:
            raise LayoutRequirementMissing(
                f"this kernel has no {fstype} filesystem (mount said: {exc.strerror})",
                hint=f"load its module (modprobe {fstype}) or boot a kernel built with it",
            ) from exc
        raise ExportError(
            f"cannot mount {fstype} {source} on {target}: {exc.strerror}",
            hint="the kernel log (dmesg) says why; the harness must be root in its namespace",
        ) from exc
    ctx.stack.callback(release_mount, ctx.problems, target)
    return os.stat(target).st_dev
