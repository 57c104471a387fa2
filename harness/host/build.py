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
* other filesystems (``mount_filesystem``), loop devices (``attach_loop``) and the
  host tools that format them (``find_tool``, ``run_tool``), with errors that say
  what is missing and how to get it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import stat
import struct
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from .. import paths
from ..config import ExportLayout, Progress
from ..errors import ExportError, LayoutRequirementMissing, LayoutUnavailable
from ..proc import find_program, run_tied
from .namespace import in_user_namespace, mount_tmpfs, private_namespace, unmount
from .namespace import mount as mount_any
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

# Formatting a small image takes well under a second; this only stops a hung tool.
TOOL_TIMEOUT_S = 60.0


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


def kernel_filesystems(text: str) -> frozenset[str]:
    """The filesystem names of /proc/filesystems ``text`` ("nodev\\ttmpfs", "\\text4")."""
    return frozenset(line.split()[-1] for line in text.splitlines() if line.split())


def require_filesystem(fstype: str, module: str | None = None) -> None:
    """Raise LayoutRequirementMissing when the kernel lists no ``fstype`` and loading
    ``module`` (default: the same name) does not add it.  A filesystem built as a
    module is listed only once loaded, which a mount would do by itself; so modprobe
    is tried before saying no."""
    try:
        listed = kernel_filesystems(Path("/proc/filesystems").read_text())
    except OSError:
        return  # no /proc: let the mount itself tell
    if fstype in listed:
        return
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        run_tied([find_program("modprobe") or "modprobe", "-q", module or fstype],
                 timeout=TOOL_TIMEOUT_S)
    if fstype not in kernel_filesystems(Path("/proc/filesystems").read_text()):
        raise LayoutRequirementMissing(
            f"this kernel has no {fstype} filesystem (not in /proc/filesystems, and "
            f"modprobe {module or fstype} did not add it)",
            hint=f"boot a kernel with {fstype} built in or as a module",
        )


# --- host tools ---------------------------------------------------------------------


def find_tool(name: str, package: str) -> str:
    """The full path of host tool ``name``, looked for in $PATH and sbin; raises
    LayoutRequirementMissing naming the Debian ``package`` that ships it."""
    found = find_program(name)
    if found is None:
        raise LayoutRequirementMissing(
            f"{name} is not installed (it formats or manages the layout's filesystem)",
            hint=f"install {package} (scripts/setup does): apt-get install -y {package}",
        )
    return found


def run_tool(argv: Sequence[str], what: str, timeout: float = TOOL_TIMEOUT_S) -> str:
    """Run a host tool to completion and return its stdout; ExportError with its
    stderr tail when it fails or outlives ``timeout`` seconds."""
    try:
        result = run_tied(argv, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise ExportError(f"{what}: {argv[0]} did not finish within {timeout:g} s",
                          hint="the host is overloaded or the tool hangs") from exc
    except OSError as exc:
        raise ExportError(f"{what}: cannot run {argv[0]}: {exc.strerror}",
                          hint="check that the tool is installed and executable") from exc
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise ExportError(f"{what} failed: {' '.join(argv)} exited {result.returncode}",
                          hint="; ".join(tail) or "the tool printed nothing")
    return result.stdout


def require_real_root(what: str) -> None:
    """Raise LayoutUnavailable (one line) when this process cannot attach loop devices:
    inside a user namespace, root is root of that namespace only."""
    if in_user_namespace() or os.geteuid() != 0:
        raise LayoutUnavailable(
            f"{what} layout skipped: loop devices need real root, and this harness runs "
            "in a user namespace (rootless)")


# --- loop devices -------------------------------------------------------------------

# <linux/loop.h>
_LOOP_CTL_GET_FREE = 0x4C82
_LOOP_SET_FD = 0x4C00
_LOOP_CLR_FD = 0x4C01
_LOOP_SET_STATUS64 = 0x4C04
_LOOP_CONFIGURE = 0x4C0A
_LO_FLAGS_AUTOCLEAR = 4
_LO_NAME_SIZE = 64
# struct loop_info64: 5 u64, 4 u32 (lo_flags last), file and crypt names, key, lo_init.
_LOOP_INFO64 = "5Q4I64s64s32s2Q"
_ATTACH_TRIES = 8


def _loop_info(image: Path) -> bytes:
    name = os.fsencode(image)[-(_LO_NAME_SIZE - 1):]
    return struct.pack("=" + _LOOP_INFO64, 0, 0, 0, 0, 0, 0, 0, 0, _LO_FLAGS_AUTOCLEAR,
                       name, b"", b"", 0, 0)


def _configure_loop(loop_fd: int, backing_fd: int, image: Path) -> None:
    # Autoclear: the kernel detaches the device once nobody holds it, so a harness
    # SIGKILLed mid-run (its fd closed, its namespace's mounts gone) leaks no device.
    info = _loop_info(image)
    try:
        config = struct.pack("=II", backing_fd, 0) + info + bytes(64)
        fcntl.ioctl(loop_fd, _LOOP_CONFIGURE, config)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTTY):
            raise
        # A kernel before 5.8: no LOOP_CONFIGURE, two steps instead.
        fcntl.ioctl(loop_fd, _LOOP_SET_FD, backing_fd)
        fcntl.ioctl(loop_fd, _LOOP_SET_STATUS64, info)


def _detach_loop(problems: list[str], loop_fd: int, device: str) -> None:
    try:
        # With other openers left (a lazily unmounted filesystem) the kernel only
        # marks it autoclear and detaches once they are gone.
        fcntl.ioctl(loop_fd, _LOOP_CLR_FD)
    except OSError as exc:
        if exc.errno != errno.ENXIO:  # ENXIO: already detached
            problems.append(f"detach {device}: {exc.strerror}")
    finally:
        os.close(loop_fd)


def _free_loop() -> str:
    try:
        control = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise LayoutRequirementMissing(
            f"cannot open /dev/loop-control: {exc.strerror}",
            hint="load the loop module (modprobe loop); in a container, pass the loop "
            "devices through") from exc
    try:
        return f"/dev/loop{fcntl.ioctl(control, _LOOP_CTL_GET_FREE)}"
    finally:
        os.close(control)


def attach_loop(ctx: BuildContext, image: Path) -> str:
    """Attach ``image`` to a free loop device and return its path (/dev/loopN); it is
    detached when the build unwinds, and by the kernel if the harness dies first."""
    backing = os.open(image, os.O_RDWR | os.O_CLOEXEC)
    try:
        for _ in range(_ATTACH_TRIES):
            device = _free_loop()
            try:
                loop_fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
            except OSError as exc:
                raise ExportError(f"cannot open {device}: {exc.strerror}",
                                  hint="the kernel made the device but /dev has no node "
                                  "for it (no devtmpfs?)") from exc
            try:
                _configure_loop(loop_fd, backing, image)
            except OSError as exc:
                os.close(loop_fd)
                if exc.errno == errno.EBUSY:  # another process took it meanwhile
                    continue
                raise ExportError(f"cannot attach {image} to {device}: {exc.strerror}",
                                  hint="check `losetup -a` and the kernel log") from exc
            ctx.stack.callback(_detach_loop, ctx.problems, loop_fd, device)
            return device
    finally:
        os.close(backing)  # the loop device holds its own reference
    raise ExportError(f"no free loop device after {_ATTACH_TRIES} tries",
                      hint="other processes keep taking them; check `losetup -a`")


def make_image(path: Path, size: int) -> None:
    """Create ``path`` as a sparse file of ``size`` bytes (a disk image to format)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)
