"""A private mount namespace for the whole harness process.

The export is a stack of tmpfs mounts. Made in the host's mount namespace they would
outlive a crashed or SIGKILLed harness and pile up; made in a namespace of our own they
vanish with the last process in it (the harness and its QEMU children, which die with
it through their parent-death signal). So the harness enters such a namespace once,
early, and everything that mounts checks that it did (see ``private_namespace``).

As root a mount namespace is enough. Without root we first make a user namespace in
which we are root (uid 0 mapped to our own uid), so a developer needs no sudo; QEMU is
then started inside it as well.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import os
import threading
from dataclasses import dataclass
from enum import StrEnum
from typing import NoReturn

from ..errors import NamespaceError
from .mounts import mount_points

# From <linux/sched.h> and <linux/mount.h>; Python 3.11 has no os.unshare.
CLONE_NEWNS = 0x0002_0000
CLONE_NEWUSER = 0x1000_0000
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
# A read-only bind remount must repeat the mount's own flags: in a user namespace the
# kernel locks them (EPERM if one is dropped), and anywhere it would clear them.
_KEPT_FLAGS = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC,
               "noatime": MS_NOATIME, "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME}
MNT_DETACH = 2

# The identity map of the initial user namespace, as /proc/self/uid_map shows it.
_INITIAL_UID_MAP = ("0", "0", "4294967295")

_HINT = (
    "run as root, or enable unprivileged user namespaces: "
    "sysctl kernel.unprivileged_userns_clone=1 (Debian) and "
    "sysctl user.max_user_namespaces=15000; on Ubuntu 24.04 also "
    "sysctl kernel.apparmor_restrict_unprivileged_userns=0"
)

# make_rprivate("/") fails with EINVAL when "/" is no mount point: in a plain chroot the
# root is a directory of a mount outside it, which no path inside can name.
_CHROOT_HINT = (
    "/ is not a mount point here (a chroot?), so the mount holding it cannot be made "
    "private from inside: make the chroot directory a mount of its own before entering "
    "it (mount --bind DIR DIR; mount --make-private DIR), then mount /proc, /sys and /dev "
    "in it"
)


class NamespaceKind(StrEnum):
    """Which namespaces the harness made for itself."""

    MOUNT = "mount"
    USER_MOUNT = "user+mount"


@dataclass(frozen=True)
class NamespaceInfo:
    """What ``enter_private_namespace`` did, recorded in reports."""

    kind: NamespaceKind
    # The uid/gid the harness was started with: inside a user namespace getuid() says 0.
    real_uid: int
    real_gid: int
    # The /proc/self/ns/mnt link of the new namespace ("mnt:[4026532...]"), so a later
    # check can tell this namespace from the host's.
    mnt_ns: str


_entered: NamespaceInfo | None = None


@functools.cache
def _libc() -> ctypes.CDLL:
    # use_errno: the syscall wrappers report failures through errno, which ctypes only
    # preserves for us when asked to. Loaded once; prototypes set here so every caller
    # passes the same C types.
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.unshare.argtypes = [ctypes.c_int]
    libc.mount.argtypes = [
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_ulong,
        ctypes.c_char_p,
    ]
    libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    return libc


def _raise_errno(target: str | os.PathLike[str] | None = None) -> NoReturn:
    code = ctypes.get_errno()
    if target is None:
        raise OSError(code, os.strerror(code))
    raise OSError(code, os.strerror(code), os.fspath(target))


def _unshare(flags: int) -> None:
    if _libc().unshare(flags) != 0:
        _raise_errno()


def make_rprivate(path: str = "/") -> None:
    """Mark every mount under ``path`` private, so no mount event propagates out.

    A new mount namespace starts as a copy whose mounts still share propagation peers
    with the host (systemd makes "/" shared); without this, a tmpfs mounted below a
    shared mount would appear on the host too.
    """
    if _libc().mount(None, os.fsencode(path), None, MS_REC | MS_PRIVATE, None) != 0:
        _raise_errno(path)


def mount(source: str, target: str | os.PathLike[str], fstype: str,
          options: str = "") -> None:
    """Mount ``source`` (a device, or a name for tmpfs and overlay) on ``target`` as
    ``fstype`` with the comma-separated ``options``: the one mount(2) binding of the
    harness.

    Raises OSError (errno set) on failure, and NamespaceError outside the private
    namespace: checked here too, so no caller can leave a mount behind on the host.
    """
    if private_namespace() is None:
        raise NamespaceError(
            f"refusing to mount a{'n' if fstype[:1] in 'aeiou' else ''} {fstype} on "
            f"{os.fspath(target)} outside a private namespace",
            hint="call enter_private_namespace() first",
        )
    data = options.encode() if options else None
    if _libc().mount(source.encode(), os.fsencode(target), fstype.encode(), 0, data) != 0:
        _raise_errno(target)


def mount_tmpfs(target: str | os.PathLike[str], options: str) -> None:
    """Mount a fresh tmpfs on ``target`` with the comma-separated ``options``
    (``mount``'s refusals and errors)."""
    mount("tmpfs", target, "tmpfs", options)


def bind_mount(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Bind-mount ``source`` on ``target`` (mount --bind): the same filesystem, so the
    same st_dev, at a second place.  Refused outside the private namespace like
    ``mount_tmpfs``."""
    if private_namespace() is None:
        raise NamespaceError(
            f"refusing to bind-mount on {os.fspath(target)} outside a private namespace",
            hint="call enter_private_namespace() first",
        )
    if _libc().mount(os.fsencode(source), os.fsencode(target), None, MS_BIND, None) != 0:
        _raise_errno(target)


def bind_tree(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Bind-mount ``source`` with every mount under it on ``target`` (mount --rbind).
    Refused outside the private namespace like ``mount_tmpfs``."""
    if private_namespace() is None:
        raise NamespaceError(
            f"refusing to bind-mount on {os.fspath(target)} outside a private namespace",
            hint="call enter_private_namespace() first",
        )
    flags = MS_BIND | MS_REC
    if _libc().mount(os.fsencode(source), os.fsencode(target), None, flags, None) != 0:
        _raise_errno(target)


def kept_flags(options: str) -> int:
    """The mount flags of a mountinfo per-mount ``options`` field that a remount must
    repeat (nosuid, nodev, noexec and the atime mode; strictatime when none is named)."""
    names = options.split(",")
    flags = 0
    for name, flag in _KEPT_FLAGS.items():
        if name in names:
            flags |= flag
    if not flags & (MS_NOATIME | MS_RELATIME):
        flags |= MS_STRICTATIME
    return flags


def remount_read_only(target: str | os.PathLike[str], options: str) -> None:
    """Make the bind mount at ``target`` read-only (this mount only, not its
    filesystem elsewhere), keeping the flags its mountinfo ``options`` show."""
    if private_namespace() is None:
        raise NamespaceError(
            f"refusing to remount {os.fspath(target)} outside a private namespace",
            hint="call enter_private_namespace() first",
        )
    flags = MS_REMOUNT | MS_BIND | MS_RDONLY | kept_flags(options)
    if _libc().mount(None, os.fsencode(target), None, flags, None) != 0:
        _raise_errno(target)


def unmount(target: str | os.PathLike[str], *, lazy: bool = False) -> None:
    """umount2(target); with ``lazy`` detach it even while busy (umount -l)."""
    if _libc().umount2(os.fsencode(target), MNT_DETACH if lazy else 0) != 0:
        _raise_errno(target)


def _thread_count() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 1


def _write_proc(name: str, text: str) -> None:
    # The kernel wants each map in one write(2); a buffered file object might split it.
    fd = os.open(f"/proc/self/{name}", os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _describe(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or 0, "?")
    return f"{exc.strerror} ({name})"


def _enter_user_and_mount(uid: int, gid: int) -> None:
    _unshare(CLONE_NEWUSER | CLONE_NEWNS)
    # setgroups must be denied before an unprivileged process may write gid_map.
    _write_proc("setgroups", "deny")
    _write_proc("uid_map", f"0 {uid} 1")
    _write_proc("gid_map", f"0 {gid} 1")


def enter_private_namespace(*, threads_stay_outside: bool = False) -> NamespaceInfo:
    """Move this process into a private mount namespace (plus a user namespace if not root).

    Call it once, early, before any thread is started: unshare(2) only moves the
    calling thread, and a user namespace cannot be entered by a threaded process at
    all.  ``threads_stay_outside`` accepts, for root in the main thread only, that
    threads already running stay in the old namespace: a pytest-xdist worker has an
    I/O thread before any hook runs, and it neither mounts nor starts processes
    (threads and processes started later inherit the main thread's namespace).

    Afterwards "/" is recursively private, so every mount the harness makes is
    invisible on the host and is torn down by the kernel when the last process in the
    namespace exits, even after SIGKILL. A second call is a no-op returning the same
    info. Raises NamespaceError saying why (errno text) and what to do.
    """
    global _entered
    if _entered is not None:
        return _entered
    threads = _thread_count()
    if threads > 1 and not _may_leave_threads(threads_stay_outside):
        raise NamespaceError(
            f"cannot enter a private mount namespace: this process already runs {threads} threads",
            hint="call enter_private_namespace() before starting any thread "
            "(unshare(2) would move only the calling thread)",
        )
    uid, gid = os.getuid(), os.getgid()
    attempts: list[str] = []
    kind: NamespaceKind | None = None
    if os.geteuid() == 0:
        try:
            _unshare(CLONE_NEWNS)
            kind = NamespaceKind.MOUNT
        except OSError as exc:
            # Root without CAP_SYS_ADMIN (some containers): a user namespace may
            # still give us one, so fall through and try that.
            attempts.append(f"unshare(CLONE_NEWNS) as root: {_describe(exc)}")
    if kind is None:
        try:
            _enter_user_and_mount(uid, gid)
            kind = NamespaceKind.USER_MOUNT
        except OSError as exc:
            attempts.append(f"unshare(CLONE_NEWUSER|CLONE_NEWNS) as uid {uid}: {_describe(exc)}")
    if kind is None:
        raise NamespaceError(
            "cannot create a private mount namespace for the export mounts: " + "; ".join(attempts),
            hint=_HINT,
        )
    try:
        make_rprivate("/")
    except OSError as exc:
        # We are in a new namespace whose mounts may still propagate to the host:
        # refuse to go on rather than risk leaking mounts there.
        raise NamespaceError(
            f"entered a {kind} namespace but could not make / private: {_describe(exc)}",
            hint=_shared_root_hint(),
        ) from exc
    _entered = NamespaceInfo(
        kind=kind, real_uid=uid, real_gid=gid, mnt_ns=os.readlink("/proc/self/ns/mnt")
    )
    return _entered


def root_is_mount_point(mountinfo: str) -> bool:
    """Whether ``/proc/self/mountinfo`` text lists a mount on "/" (field 5).

    Not so in a plain chroot: the kernel lists only mounts reachable from the
    process's root, and the one holding the chroot directory is outside it.
    """
    return "/" in mount_points(mountinfo)


def _shared_root_hint() -> str:
    why = _HINT if root_is_mount_point(_mountinfo()) else _CHROOT_HINT
    return "mounts could propagate to the host; not continuing. " + why


def _mountinfo() -> str:
    try:
        with open("/proc/self/mountinfo") as file:
            return file.read()
    except OSError:
        return "0 0 0:0 / / rw - unknown unknown rw"  # unreadable: assume the usual case


def _may_leave_threads(threads_stay_outside: bool) -> bool:
    # Only a plain mount namespace can be entered by one thread of many (a user
    # namespace needs a single-threaded process), and /proc/self shows the main
    # thread's namespace, which private_namespace() relies on.
    return (threads_stay_outside and os.geteuid() == 0
            and threading.current_thread() is threading.main_thread())


def private_namespace() -> NamespaceInfo | None:
    """The namespace this process entered, or None if it is still in the one it started in.

    Also None if the process has since moved to another mount namespace (setns), so a
    stale flag cannot let mounts land on the host.
    """
    if _entered is None:
        return None
    try:
        current = os.readlink("/proc/self/ns/mnt")
    except OSError:
        return None
    return _entered if current == _entered.mnt_ns else None


def in_user_namespace() -> bool:
    """True if this process runs in a user namespace other than the initial one.

    Reads /proc/self/uid_map: only the initial namespace maps all 2**32-1 ids onto
    themselves. True for a rootless harness, and also inside most containers.
    """
    try:
        with open("/proc/self/uid_map", encoding="ascii") as handle:
            lines = [line.split() for line in handle if line.strip()]
    except OSError:
        return False
    return lines != [list(_INITIAL_UID_MAP)]
