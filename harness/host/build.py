"""The building blocks every export layout is made of, shared by ``host.export`` and the
layout modules (``host.overlay``, ``host.blockfs``, ``host.scripted``).

Each step that mounts or attaches something registers its undoing on the build's
ExitStack at once, so an export unwinds in reverse order on success, failure and
Ctrl-C; a cleanup that fails is appended to the build's ``problems`` instead of
hiding the exception that is already on its way.

* tmpfs devices, populated the same way on every device (``populate``), and the
  host truth recorded from the built tree (``record_truth``);
* the scratch tmpfs export roots are made on, and private work directories beside
  it for what must not be inside the export (overlay layers, disk images);
* other filesystems (``mount_filesystem``).

Loop devices are ``host.loop``'s, and the host tools and kernel filesystems a layout
needs are ``host.tools``'s.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import tempfile
import threading
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from .. import paths
from ..errors import ExportError, LayoutRequirementMissing
from ..progress import Progress
from .layout import ExportLayout
from .namespace import mount as mount_any
from .namespace import mount_tmpfs, private_namespace, unmount
from .truth import (
    LINK_A,
    LINK_B,
    SPECIAL_FIFO,
    SPECIAL_LINK,
    SPECIAL_SOCKET,
    SUBDIR,
    SUBDIR_FILE,
    TWIN_DIR,
    TWIN_ENTRY,
    TWIN_EPOCH,
    TWIN_MTIME,
    TWIN_SAME,
    EntryKind,
    ExportDevice,
    HostEntry,
    HostTruth,
    device_file_names,
    kind_of_mode,
    root_time,
)

# The scratch tmpfs holds only empty mount-point directories.
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


# --- files --------------------------------------------------------------------------


def label(relpath: str) -> str:
    """What file contents call device ``relpath``: the root device has no directory of
    its own, so it is called dev00 there."""
    return "dev00" if relpath == "." else relpath


def write_file(name: str, content: bytes, dir_fd: int) -> None:
    """Create ``name`` (relative to ``dir_fd``; it must not exist) holding ``content``."""
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=dir_fd)
    try:
        os.write(fd, content)
    finally:
        os.close(fd)


def _add_twins(dir_fd: int, label: str, index: int) -> None:
    """The aliasing fixtures of device ``index``: same names, sizes and creation order
    on every device (so the same inode numbers), times set so which qids collide is
    known in advance (see the TWIN_* constants)."""
    write_file(TWIN_SAME, f"{label}/{TWIN_SAME}\n".encode(), dir_fd)
    write_file(TWIN_MTIME, f"{label}/{TWIN_MTIME}\n".encode(), dir_fd)
    os.mkdir(TWIN_DIR, 0o755, dir_fd=dir_fd)
    # Same name length on every device: tmpfs counts a directory's size per entry.
    write_file(f"{TWIN_DIR}/{TWIN_ENTRY}{index:03d}", f"{label}\n".encode(), dir_fd)
    for name, when in ((TWIN_SAME, TWIN_EPOCH), (TWIN_MTIME, TWIN_EPOCH + 4 * index),
                       (TWIN_DIR, TWIN_EPOCH)):
        os.utime(name, (when, when), dir_fd=dir_fd, follow_symlinks=False)


def _add_specials(dir_fd: int) -> None:
    """A symlink, a FIFO and a socket (``truth.SPECIAL_*``); the socket is bound through
    /proc/self/fd so the path stays short whatever the export root's (AF_UNIX paths
    are limited to 107 bytes), then closed: the file stays, nobody listens."""
    os.symlink(f"{SUBDIR}/{SUBDIR_FILE}", SPECIAL_LINK, dir_fd=dir_fd)
    os.mkfifo(SPECIAL_FIFO, 0o644, dir_fd=dir_fd)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(f"/proc/self/fd/{dir_fd}/{SPECIAL_SOCKET}")


def populate(directory: Path, relpath: str, files: int, index: int = 0) -> None:
    """Fill one device; the same calls in the same order on every device, so inode
    numbers line up across devices.  The special files come last, so the numbers of
    everything else are what they were before they existed."""
    name = label(relpath)
    populate_files(directory, name, files)
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.mkdir(SUBDIR, 0o755, dir_fd=dir_fd)
        inner = f"{SUBDIR}/{SUBDIR_FILE}"
        write_file(inner, f"{name}/{inner}\n".encode(), dir_fd)
        write_file(LINK_A, f"{name}/{LINK_A}\n".encode(), dir_fd)
        os.link(LINK_A, LINK_B, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        _add_twins(dir_fd, name, index)
        _add_specials(dir_fd)
    finally:
        os.close(dir_fd)


def populate_files(directory: Path, label: str, files: int) -> None:
    """The regular files of one device (``device_file_names``), each naming itself."""
    # dir_fd-relative calls: no path lookup per file, which matters at 100,000 files.
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in device_file_names(files):
            write_file(name, f"{label}/{name}\n".encode(), dir_fd)
    finally:
        os.close(dir_fd)


def set_root_times(devices: Sequence[ExportDevice]) -> None:
    """Give each device root its ``root_time``; last, since every entry made in a
    directory moves its mtime."""
    for device in devices:
        os.utime(device.path, (root_time(device.index),) * 2)


def align_inode_numbers(directory: Path, target: int, limit: int = 1 << 16) -> bool:
    """Advance the inode counter of the filesystem holding ``directory`` so the next
    inode made there is numbered ``target``, by making and removing files.

    For a tmpfs, which numbers its inodes from a per-mount counter, so that a tmpfs
    beside an XFS or ext4 device repeats that device's numbers.  Returns False (and
    leaves the directory as it was) when the counter is already past ``target`` or
    more than ``limit`` numbers below it.
    """
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    name = ".mdh-align"
    try:
        for _ in range(limit):
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=dir_fd)
            ino = os.fstat(fd).st_ino
            os.close(fd)
            os.unlink(name, dir_fd=dir_fd)
            if ino >= target - 1:
                return ino == target - 1
        return False
    finally:
        os.close(dir_fd)


# --- the host truth -----------------------------------------------------------------


def _read(path: str, size: int) -> bytes:
    # O_NOFOLLOW: the truth describes the tree itself, never where a link points.
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        # Read the st_size bytes lstat reported and stop: nothing writes to the export
        # while it is recorded, and skipping the final 0-byte read(2) saves one syscall
        # per file (there can be millions).
        chunks = []
        remaining = size
        while remaining > 0 and (chunk := os.read(fd, remaining)):
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def record_truth(root: Path, devices: Sequence[ExportDevice]) -> HostTruth:
    """Walk the export and record each path's (st_dev, st_ino, nlink, kind, device).

    Measured after building, not derived from the plan: the verdicts must compare the
    guest with what the host really holds. Raises ExportError if a path lies on a
    device that is not one of ``devices`` (something else got mounted inside).
    """
    device_of = {device.st_dev: device.index for device in devices}
    entries: list[HostEntry] = []

    def add(relpath: str, abspath: str, st: os.stat_result) -> EntryKind:
        try:
            device = device_of[st.st_dev]
        except KeyError:
            raise ExportError(
                f"export path {relpath!r} is on an unexpected device {st.st_dev}",
                hint=f"something else is mounted inside the export root {root}",
            ) from None
        kind = kind_of_mode(st.st_mode)
        content = _read(abspath, st.st_size) if kind is EntryKind.FILE else None
        entries.append(HostEntry(relpath, st.st_dev, st.st_ino, st.st_nlink, kind, device,
                                 content, st.st_mtime_ns // 1_000_000_000, st.st_size))
        return kind

    def walk(relpath: str, abspath: str) -> None:
        with os.scandir(abspath) as iterator:
            children = sorted(iterator, key=lambda child: child.name)
        for child in children:
            child_rel = child.name if relpath == "." else f"{relpath}/{child.name}"
            if add(child_rel, child.path, child.stat(follow_symlinks=False)) is EntryKind.DIR:
                walk(child_rel, child.path)

    add(".", os.fspath(root), os.lstat(root))
    walk(".", os.fspath(root))
    return HostTruth(tuple(entries))


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
