"""The image cache's lock: one build at a time, the wait said out loud and bounded.

The holder writes ``pid N: building image NAME`` into the lock file, so a run that
finds the lock taken can say whom it waits for, and a person can tell a slow build
from a stuck one.  A wait longer than the deadline ends in a CacheDirError (exit 2)
naming the holder, instead of a silent hang.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from ..cachefs import OWNER_HINT, open_nofollow
from ..errors import CacheDirError
from ..progress import Progress, quiet

_POLL_S = 0.1
_HOLDER_BYTES = 200


def _open(path: Path) -> int:
    """The lock file's descriptor; never through a symlink planted at its name."""
    what = f"the image cache lock {path}"
    try:
        return open_nofollow(path, os.O_RDWR | os.O_CREAT, 0o644, what=what)
    except CacheDirError:
        raise
    except OSError as exc:  # the cache removed or read-only under the run: still exit 2
        raise CacheDirError(f"cannot open {what}: {exc.strerror}", hint=OWNER_HINT) from exc


def _holder(fd: int) -> str:
    """What the lock file says about its holder ("pid N: building image ...")."""
    try:
        text = os.pread(fd, _HOLDER_BYTES, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return text.splitlines()[0] if text else "another process"


def _seconds(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def _acquire(fd: int, path: Path, wait_s: float, progress: Progress) -> None:
    deadline = time.monotonic() + wait_s
    said = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        holder = _holder(fd)
        if not said:
            progress(f"waiting for {holder} (the image cache {path.parent} is locked; "
                     f"up to {_seconds(wait_s)} s)")
            said = True
        if time.monotonic() >= deadline:
            raise CacheDirError(
                f"the image cache lock {path} is still held after {_seconds(wait_s)} s, "
                f"by {holder}",
                hint="if that process is stuck, stop it; on a slow mirror "
                "MDH_TIMEOUT_SCALE=2 doubles the wait",
            )
        time.sleep(_POLL_S)


@contextlib.contextmanager
def cache_lock(path: Path, what: str, wait_s: float,
               progress: Progress = quiet) -> Iterator[None]:
    """Hold the cache lock at ``path`` while the block runs, saying ``what`` we do.

    Waits at most ``wait_s`` seconds for another holder (telling ``progress`` whom it
    waits for, once), then raises CacheDirError.  The lock file keeps its name; the
    flock goes with the descriptor, so a holder killed outright frees it at once.
    """
    fd = _open(path)
    try:
        _acquire(fd, path, wait_s, progress)
        try:
            # Written once the flock is ours; a holder killed outright leaves its
            # claim behind, and the next holder overwrites it here.
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()}: {what}\n".encode(), 0)
            yield
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
