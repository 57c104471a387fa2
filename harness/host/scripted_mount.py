"""The scripted filesystem's mount manager: ``scripted_mount`` starts the FUSE server
(``host.scripted_server``) on a mount point with a spec (``host.scripted_spec``), waits
until it is mounted, and unmounts and stops it when the ``with`` block ends.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ..errors import ScriptedFsError, indent
from ..proc import kill_process_group, run_tied, spawn_tied, tail_text
from . import scripted_server
from .mounts import mount_points
from .namespace import unmount
from .scripted_server import FS_NAME, READY_LINE
from .scripted_spec import ScriptedEntry, spec_to_json

# How long each step of the teardown may take: the server leaving by itself after the
# unmount, after SIGTERM, and dying after SIGKILL.  Well below the tests' 60 s.
STOP_STEP_S = 5.0


@dataclass(frozen=True)
class ScriptedMount:
    """A running scripted filesystem: where it is mounted and its server's pid."""

    mountpoint: Path
    pid: int


def is_mounted(path: Path) -> bool:
    """Whether ``path`` is a mount point in this process's mount namespace.

    Read from mountinfo, not by stat: a stat of a hung FUSE mount would block.
    """
    with open("/proc/self/mountinfo", "rb") as file:
        text = file.read().decode(errors="surrogateescape")  # as os.fsdecode decodes
    return os.path.realpath(path) in mount_points(text)


def _child_env() -> dict[str, str]:
    # The server imports this package: make it importable from where this copy lives,
    # whatever put it on our own sys.path.
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def _startup_error(what: str, errlog: IO[bytes]) -> ScriptedFsError:
    errlog.seek(0)
    tail = tail_text(errlog.read())
    return ScriptedFsError(
        f"the scripted FUSE filesystem {what}",
        hint="it needs /dev/fuse, the fuse kernel module, libfuse 3 and mfusepy "
        "(./scripts/setup installs fuse3 and the venv); the server's stderr says more",
        details="  server stderr (tail):\n" + indent(tail or "(empty)"),
    )


def _wait_ready(proc: subprocess.Popen[bytes], mountpoint: Path, errlog: IO[bytes],
                timeout: float) -> None:
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    deadline = time.monotonic() + timeout
    seen = b""
    while READY_LINE not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            raise _startup_error(f"was not mounted on {mountpoint} within {timeout:g} s",
                                 errlog)
        if not poller.poll(left * 1000):
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=STOP_STEP_S)
            raise _startup_error(
                f"exited (status {proc.returncode}) before it was mounted on {mountpoint}",
                errlog)
        seen += chunk


def _unmount_if_mounted(mountpoint: Path) -> tuple[bool, str | None]:
    """Unmount ``mountpoint`` lazily if it is mounted: (whether it was unmounted, problem)."""
    if not is_mounted(mountpoint):
        return False, None
    try:
        # Detached even while busy; the server then reads ENODEV and leaves its loop.
        unmount(mountpoint, lazy=True)
        return True, None
    except OSError as exc:
        lazy_error = exc
    result = run_tied(["fusermount3", "-u", "-z", os.fspath(mountpoint)], timeout=STOP_STEP_S)
    if result.returncode == 0:
        return True, None
    return False, f"umount2 said {lazy_error.strerror}, fusermount3 said " \
        f"{result.stderr.strip()}"


def _exited(proc: subprocess.Popen[bytes], within: float) -> bool:
    try:
        proc.wait(timeout=within)
    except subprocess.TimeoutExpired:
        return False
    return True


def _stop(proc: subprocess.Popen[bytes], mountpoint: Path) -> list[str]:
    problems = []
    # Unmount first: it works whatever state the server is in, and lets it exit cleanly.
    # A server not yet mounted (a missed deadline) is sent SIGTERM straight away.
    unmounted, problem = _unmount_if_mounted(mountpoint)
    if problem is not None:
        problems.append(f"unmounting {mountpoint}: {problem}")
    if not (unmounted and _exited(proc, STOP_STEP_S)):
        proc.send_signal(signal.SIGTERM)
        if not _exited(proc, STOP_STEP_S) and kill_process_group(proc, STOP_STEP_S) is None:
            problems.append(f"server pid {proc.pid} did not die after SIGKILL")
    # A server that mounted after the first look and then died leaves a dead mount.
    _, problem = _unmount_if_mounted(mountpoint)
    if problem is not None:
        problems.append(f"unmounting {mountpoint} after the server stopped: {problem}")
    if proc.stdout is not None:
        proc.stdout.close()
    return problems


def _spawn(spec_in: IO[bytes], mountpoint: Path, errlog: IO[bytes]) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", scripted_server.__name__, os.fspath(mountpoint)]
    # SIGTERM when the harness dies (even SIGKILLed): libfuse's handler then unmounts.
    # The kernel sends it when the forking *thread* exits, which cannot happen while
    # that thread is still inside scripted_mount.
    return spawn_tied(argv, stdin=spec_in, stdout=subprocess.PIPE, stderr=errlog,
                      death_signal=signal.SIGTERM, env=_child_env())


def _check_mountpoint(mountpoint: Path) -> None:
    if not mountpoint.is_dir():
        raise ScriptedFsError(f"scripted FUSE mount point {mountpoint} is not a directory",
                              hint="create the directory first")
    if is_mounted(mountpoint):
        raise ScriptedFsError(
            f"scripted FUSE mount point {mountpoint} is already a mount point",
            hint="pick an empty directory: the teardown unmounts whatever is mounted there")


@contextmanager
def scripted_mount(spec: Sequence[ScriptedEntry], mountpoint: Path, *,
                   timeout: float) -> Iterator[ScriptedMount]:
    """Serve ``spec`` read-only on ``mountpoint`` for the ``with`` block.

    Raises ValueError for an invalid spec, ScriptedFsError if the server is not
    mounted within ``timeout`` seconds (with its stderr tail) or if, afterwards, its
    mount or process would not go away.  On leaving, by any exception or
    KeyboardInterrupt too, the mount is lazily unmounted and the server stopped
    (exit, then SIGTERM, then SIGKILL) and reaped, at most about 3 * STOP_STEP_S.
    """
    spec_json = spec_to_json(spec)
    _check_mountpoint(mountpoint)
    # The spec reaches the server as its stdin, from a file without a name: a caller
    # killed outright (no ``finally`` runs) leaves no scratch directory behind.
    with tempfile.TemporaryFile() as spec_in, tempfile.TemporaryFile() as errlog:
        spec_in.write(spec_json.encode())
        spec_in.seek(0)
        proc = _spawn(spec_in, mountpoint, errlog)
        try:
            _wait_ready(proc, mountpoint, errlog, timeout)
            yield ScriptedMount(mountpoint=mountpoint, pid=proc.pid)
        finally:
            problems = _stop(proc, mountpoint)
        # Reached only when the block raised nothing: never hide the caller's exception.
        if problems:
            raise ScriptedFsError(
                "the scripted FUSE filesystem would not go away: " + "; ".join(problems),
                hint=f"check `grep fuse.{FS_NAME} /proc/self/mountinfo` and "
                f"`pgrep -af {scripted_server.__name__}`; umount -l the mount and kill the "
                "process")
