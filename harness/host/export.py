"""The multi-device export on the host, and the host truth the oracle compares against.

The export root is a tmpfs; devices 1..N-1 are further tmpfs mounts at ``dev01``,
``dev02``, ... inside it (and, with ``layout.nested``, one more at ``dev01/nested``).
Every device is populated the same way and in the same order. A fresh tmpfs numbers
its inodes from 1 (its root) upwards, so equal paths on different devices get equal
inode numbers: exactly the situation in which ``multidevs=warn`` lets guest file ids
collide and ``remap`` must keep them apart.

All mounts happen in the harness's private mount namespace (see ``host.namespace``), so
even a SIGKILLed harness leaves no mount behind on the host.  The export directories
themselves are made on a scratch tmpfs that exists only in that namespace (see
``scratch_dir``), so a SIGKILL leaves no empty directory behind either.
"""

from __future__ import annotations

import os
import stat
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

from .. import paths
from ..config import ExportLayout
from ..errors import ExportError
from .namespace import bind_mount, mount_tmpfs, private_namespace, unmount
from .truth import (
    LINK_A,
    LINK_B,
    SUBDIR,
    SUBDIR_FILE,
    TWIN_DIR,
    TWIN_ENTRY,
    TWIN_EPOCH,
    TWIN_MTIME,
    TWIN_SAME,
    EntryKind,
    Export,
    ExportDevice,
    HostEntry,
    HostTruth,
    device_file_names,
    device_relpath,
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


def _label(relpath: str) -> str:
    # File contents name their device and path; the root device has no directory of
    # its own, so it is called dev00 there.
    return "dev00" if relpath == "." else relpath


def _write_file(name: str, content: bytes, dir_fd: int) -> None:
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=dir_fd)
    try:
        os.write(fd, content)
    finally:
        os.close(fd)


def _add_twins(dir_fd: int, label: str, index: int) -> None:
    """The aliasing fixtures of device ``index``: same names, sizes and creation order
    on every device (so the same inode numbers), times set so which qids collide is
    known in advance (see the TWIN_* constants)."""
    _write_file(TWIN_SAME, f"{label}/{TWIN_SAME}\n".encode(), dir_fd)
    _write_file(TWIN_MTIME, f"{label}/{TWIN_MTIME}\n".encode(), dir_fd)
    os.mkdir(TWIN_DIR, 0o755, dir_fd=dir_fd)
    # Same name length on every device: tmpfs counts a directory's size per entry.
    _write_file(f"{TWIN_DIR}/{TWIN_ENTRY}{index:03d}", f"{label}\n".encode(), dir_fd)
    for name, when in ((TWIN_SAME, TWIN_EPOCH), (TWIN_MTIME, TWIN_EPOCH + 4 * index),
                       (TWIN_DIR, TWIN_EPOCH)):
        os.utime(name, (when, when), dir_fd=dir_fd, follow_symlinks=False)


def _populate(directory: Path, relpath: str, files: int, index: int = 0) -> None:
    """Fill one device; the same calls in the same order on every device, so inode
    numbers line up across devices."""
    label = _label(relpath)
    _populate_files(directory, label, files)
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.mkdir(SUBDIR, 0o755, dir_fd=dir_fd)
        inner = f"{SUBDIR}/{SUBDIR_FILE}"
        _write_file(inner, f"{label}/{inner}\n".encode(), dir_fd)
        _write_file(LINK_A, f"{label}/{LINK_A}\n".encode(), dir_fd)
        os.link(LINK_A, LINK_B, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        _add_twins(dir_fd, label, index)
    finally:
        os.close(dir_fd)


def _tmpfs_options(files: int) -> str:
    size = max(_MIN_TMPFS_BYTES, (files + 64) * _PAGE * 2)
    return f"size={size},mode=0755"


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

    Measured after building, not derived from the plan: the oracle must compare the
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


@contextmanager
def build_export(
    layout: ExportLayout, base_dir: Path | None = None, root: Path | None = None
) -> Iterator[Export]:
    """Build the multi-device export, yield it, and tear it down again.

    The root is a tmpfs mounted on ``root`` (an existing empty directory, left in place
    afterwards) or on a fresh directory made under ``base_dir`` (default:
    ``scratch_dir()``, else the temp dir) and removed afterwards. Device 0 is that
    tmpfs, devices 1..N-1 are tmpfs mounts at ``devNN``, and ``layout.nested`` adds
    one more at ``dev01/nested``. Must run inside the harness's private mount
    namespace, else ExportError: a mount there cannot leak onto the host. On exit,
    also on exceptions and Ctrl-C, the mounts are unmounted in reverse order (lazily
    if a plain umount fails) and the directory is removed.
    """
    if private_namespace() is None:
        raise ExportError(
            "refusing to mount the export outside a private mount namespace",
            hint="call harness.namespace.enter_private_namespace() first (the CLI and "
            "the pytest plugin do), so no mount can leak onto the host",
        )
    if layout.nested and layout.devices < 2:
        raise ExportError(
            "a nested device needs at least 2 devices (it is mounted inside dev01)",
            hint="use --devices 2 or more with --nested",
        )
    problems: list[str] = []
    try:
        with ExitStack() as stack:
            export_root = _make_root(stack, problems, base_dir, root)
            yield _build(stack, problems, layout, export_root)
    except BaseException as exc:
        if problems:
            exc.add_note("export cleanup also failed: " + "; ".join(problems))
        raise
    if problems:
        raise ExportError(
            "could not clean up the export: " + "; ".join(problems),
            hint="the mounts vanish when the harness process exits (private namespace)",
        )


def _make_root(
    stack: ExitStack, problems: list[str], base_dir: Path | None, root: Path | None
) -> Path:
    if root is not None:
        _check_user_root(root)
        return root.absolute()
    if base_dir is None:
        base_dir = scratch_dir()
    try:
        made = Path(tempfile.mkdtemp(prefix="mdh-export-", dir=base_dir)).absolute()
    except OSError as exc:
        raise ExportError(
            f"cannot create the export directory under {base_dir or tempfile.gettempdir()}: "
            f"{exc.strerror}",
            hint="pass build_export(base_dir=...) a writable directory, or set MDH_CACHE_DIR "
            "(the default scratch directory lives under the image cache)",
        ) from exc

    def remove() -> None:
        # rmdir, never rmtree: once unmounted the directory is empty, and if an unmount
        # failed we must not delete through a still-mounted tmpfs.
        try:
            made.rmdir()
        except OSError as exc:
            problems.append(f"rmdir {made}: {exc.strerror}")

    stack.callback(remove)
    return made


def _mount(stack: ExitStack, problems: list[str], target: Path, files: int) -> int:
    try:
        mount_tmpfs(target, _tmpfs_options(files))
    except OSError as exc:
        raise ExportError(
            f"cannot mount a tmpfs on {target}: {exc.strerror}",
            hint="the harness must be root in its namespace (enter_private_namespace)",
        ) from exc

    def release() -> None:
        try:
            unmount(target)
        except OSError as first:
            # Busy (a process still has its cwd there): detach it; the kernel frees it
            # once unused, and our namespace makes it invisible to the host meanwhile.
            try:
                unmount(target, lazy=True)
            except OSError as second:
                problems.append(f"umount {target}: {first.strerror}; umount -l: {second.strerror}")

    stack.callback(release)
    return os.stat(target).st_dev


@contextmanager
def extra_device(export: Export, relpath: str, index: int) -> Iterator[ExportDevice]:
    """Mount one more tmpfs at ``relpath`` (a new directory) in a built export while it
    is in use, populated like the others so its inode numbers repeat theirs; unmount
    it on exit (lazily if busy), leaving the directory it covered.

    For checks of a device set that changes while the guest runs.  Raises
    ExportError when it cannot be mounted.
    """
    target = export.root / relpath
    problems: list[str] = []
    with ExitStack() as stack:
        target.mkdir(mode=0o755)
        st_dev = _mount(stack, problems, target, export.layout.files_per_device)
        try:
            _populate(target, relpath, export.layout.files_per_device)
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


def _build_loop(stack: ExitStack, problems: list[str], layout: ExportLayout,
                root: Path) -> Export:
    """The loop layout (``ExportLayout.loop``): the root holds only dev01, dev01 only
    ``sub`` with the files; both roots one entry each (same size), one mtime, and
    inode 1 of their tmpfs, so their qids match under warn."""
    files = layout.files_per_device
    root_dev = _mount(stack, problems, root, files)
    target = root / device_relpath(1, False, 2)
    target.mkdir(mode=0o755)
    st_dev = _mount(stack, problems, target, files)
    sub = target / SUBDIR
    sub.mkdir(mode=0o755)
    _populate_files(sub, f"dev01/{SUBDIR}", files)
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


def _populate_files(directory: Path, label: str, files: int) -> None:
    """The regular files of one device (``device_file_names``), each naming itself."""
    # dir_fd-relative calls: no path lookup per file, which matters at 100,000 files.
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in device_file_names(files):
            _write_file(name, f"{label}/{name}\n".encode(), dir_fd)
    finally:
        os.close(dir_fd)


def _build(stack: ExitStack, problems: list[str], layout: ExportLayout, root: Path) -> Export:
    try:
        build = _build_loop if layout.loop else _build_standard
        return build(stack, problems, layout, root)
    except OSError as exc:
        raise ExportError(
            f"building the export under {root} failed: {exc}",
            hint="check free memory for tmpfs, or lower --devices/--files",
        ) from exc


def _build_standard(stack: ExitStack, problems: list[str], layout: ExportLayout,
                    root: Path) -> Export:
    """Device 0 at ``root``, devNN (and a nested one) inside it, every one populated."""
    files = layout.files_per_device
    total = layout.devices + (1 if layout.nested else 0)
    devices: list[ExportDevice] = []
    st_dev = _mount(stack, problems, root, files)
    devices.append(ExportDevice(0, root, ".", st_dev))
    # Populate the root before creating the devNN mount points, which would
    # otherwise take its first inode numbers and shift it against the others.
    _populate(root, ".", files)
    for index in range(1, total):
        relpath = device_relpath(index, layout.nested, layout.devices)
        target = root / relpath
        # The nested mount point is made after dev01 is populated (its loop turn
        # comes last), so dev01 lines up with the other devices as well.
        target.mkdir(mode=0o755)
        st_dev = _mount(stack, problems, target, files)
        devices.append(ExportDevice(index, target, relpath, st_dev))
        _populate(target, relpath, files, index)
    # Last, since every entry made in a directory moves its mtime.
    for device in devices:
        os.utime(device.path, (root_time(device.index),) * 2)
    truth = record_truth(root, devices)
    return Export(root=root, layout=layout, devices=tuple(devices), truth=truth)
