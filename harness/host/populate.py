"""Filling the devices and reading them back: every device gets the same files in the
same order (``populate``), and the host truth is recorded from the built tree
(``record_truth``), for ``host.export`` and the layout modules.

Filling runs in a directory ``host.build`` has mounted; nothing here mounts.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from pathlib import Path

from ..errors import ExportError
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
