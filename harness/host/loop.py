"""Loop devices for the layouts that format a disk image (``host.blockfs``): an image
file attached with autoclear, detached when the build unwinds."""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from pathlib import Path

from ..errors import ExportError, LayoutRequirementMissing
from .build import BuildContext

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
