"""Files the user names (``--kernel``, ``--known-issues``), read without ever blocking.

``open()`` of a FIFO waits for a writer, forever; a character device may never give
an end of file.  Each input is opened with O_NONBLOCK (which changes nothing for a
regular file) and read only once fstat says it is a regular file: anything else
is a usage error naming the path and what it is, before any guest boots.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import UsageError

_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device",
          stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket",
          stat.S_IFDIR: "a directory"}


def read_input(path: Path, option: str, hint: str, limit: int = -1) -> bytes:
    """The bytes of the regular file ``path`` (at most ``limit``; -1: all).

    Raises UsageError naming ``option`` when the file is missing, unreadable or not a
    regular file (a FIFO, a device, a directory), with ``hint`` saying what to pass.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise UsageError(f"{option} {path}: {exc.strerror}", hint=hint) from exc
    # fstat before fdopen: Python refuses to wrap a directory (IsADirectoryError),
    # which would reach the user as a fault of the harness instead of this line.
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = _KINDS.get(stat.S_IFMT(mode), "not a regular file")
        raise UsageError(f"{option} {path} is {kind}, not a regular file", hint=hint)
    with os.fdopen(fd, "rb") as handle:
        try:
            return handle.read(limit)
        except OSError as exc:
            raise UsageError(f"{option} {path}: {exc.strerror}", hint=hint) from exc
