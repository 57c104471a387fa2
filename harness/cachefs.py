"""Files in the cache, made so that nobody else can steer them.

The cache (``paths.cache_root``) holds what the harness boots: kernels, initramfs,
SSH keys and saved guest RAM.  Whoever can write a directory of it can make a run
test something else, or plant a symbolic link at a fixed name (``.lock``,
``meta.json``, ``state.bin.partial``) and have the harness, often root, write through
it.  So: a cache directory must belong to the user running the harness and be
writable by nobody else (refused with the fix otherwise); the harness's own
directories are private (0700, files 0600); fixed names are opened with
``O_NOFOLLOW`` and created with ``O_EXCL``; metadata is written whole or not at all
(a temporary file, fsync, rename, fsync of the directory).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import CacheDirError

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
_OPEN = os.O_NOFOLLOW | os.O_CLOEXEC


def check_dir(path: Path, *, follow: bool = False) -> None:
    """Refuse a cache directory another user could write or replace.

    ``follow``: the cache root may itself be a symbolic link (a cache moved to a
    bigger disk); directories inside it may not.  Raises CacheDirError naming the
    fix (exit 2).
    """
    try:
        info = os.stat(path) if follow else os.lstat(path)
    except OSError as exc:
        raise CacheDirError(f"cannot read the cache directory {path}: {exc.strerror}",
                            hint="set MDH_CACHE_DIR to a directory of your own") from exc
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise CacheDirError(
            f"{path} in the cache is not a directory but a "
            f"{'symbolic link' if stat.S_ISLNK(info.st_mode) else 'file'}: refused",
            hint=f"remove it (rm {path}); the harness makes its directories itself")
    uid = os.geteuid()
    if info.st_uid != uid:
        raise CacheDirError(
            f"the cache directory {path} belongs to uid {info.st_uid}, not to you "
            f"(uid {uid}): what it holds could be swapped under the run",
            hint=f"use a cache of your own (MDH_CACHE_DIR), or chown {uid} {path}")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise CacheDirError(
            f"the cache directory {path} is writable by other users "
            f"(mode {stat.S_IMODE(info.st_mode):04o}): they could swap the kernel, the "
            "keys or a saved state under the run",
            hint=f"chmod go-w {path}")


def private_dir(path: Path, *, tighten: bool = True) -> Path:
    """Make ``path`` (mode 0700) or check the one there; return it.

    ``tighten`` makes an existing directory of ours 0700 too (saved states hold
    guest RAM, the guest's host key with it).  Refuses one that is not ours or that
    others can write (``check_dir``).
    """
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, PRIVATE_DIR)
    check_dir(path)
    if tighten and stat.S_IMODE(os.lstat(path).st_mode) != PRIVATE_DIR:
        os.chmod(path, PRIVATE_DIR, follow_symlinks=False)
    return path


def symlink_refused(path: Path) -> CacheDirError:
    """The error for a symbolic link found at a fixed name of the cache."""
    return CacheDirError(
        f"{path} in the cache is a symbolic link: refused (the harness never "
        "writes through one)", hint=f"remove it (rm {path}) and run again")


# What to do about a cache file another user made (a root-owned ``.lock``).
OWNER_HINT = "run as the user who owns the cache, or set MDH_CACHE_DIR to a cache of your own"


def owner_note(path: Path) -> str:
    """The words " (it belongs to uid N, this run is uid M)" when ``path`` is another
    user's, else nothing."""
    with contextlib.suppress(OSError):
        uid = os.lstat(path).st_uid
        if uid != os.geteuid():
            return f" (it belongs to uid {uid}, this run is uid {os.geteuid()})"
    return ""


def open_nofollow(path: Path, flags: int, mode: int = PRIVATE_FILE,
                  what: str | None = None) -> int:
    """``os.open`` that never follows a symbolic link at ``path``.

    A link there, or a file the user may not open (a root-owned ``.lock`` in a
    user's cache), raises CacheDirError naming the file (as ``what``, default
    "PATH in the cache"), its owner and the fix; anything else (the directory
    removed meanwhile) the OSError itself.
    """
    try:
        return os.open(path, flags | _OPEN, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise symlink_refused(path) from exc
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise CacheDirError(
                f"cannot open {what or f'{path} in the cache'}: {exc.strerror}"
                f"{owner_note(path)}", hint=OWNER_HINT) from exc
        raise


@contextlib.contextmanager
def lock_file(path: Path, operation: int = fcntl.LOCK_EX) -> Iterator[int | None]:
    """Open (creating, never through a symbolic link) and ``flock`` ``path``.

    Yields the descriptor, or None when ``operation`` has ``LOCK_NB`` and another
    holds the lock.  The lock goes with the descriptor, at the end of the block.
    """
    fd = open_nofollow(path, os.O_RDWR | os.O_CREAT)
    try:
        try:
            fcntl.flock(fd, operation)
        except BlockingIOError:
            yield None
            return
        yield fd
    finally:
        os.close(fd)


def create_exclusive(path: Path) -> Path:
    """A new empty file at ``path`` (mode 0600), whatever was there removed first:
    a link planted there is unlinked, never written through."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    os.close(open_nofollow(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
    return path


def write_atomic(path: Path, data: bytes, mode: int = PRIVATE_FILE) -> None:
    """Replace ``path`` with ``data`` so that a reader sees the old or the new file,
    never half of one, even after a crash: a temporary file of a fresh name
    (``O_EXCL``), fsync, rename over ``path`` (a link there is replaced, not
    followed), fsync of the directory."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    sync_dir(path.parent)


def sync_dir(directory: Path) -> None:
    """fsync a directory, so a rename in it survives a crash."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
