"""Process control: start a child tied to the harness, kill its group, read output tails.

Every process the harness starts (QEMU guests, the probe and liveness QEMUs, the
private libvirt daemons, the image build's apt, dpkg-deb and gcc, the host tools of
the layouts, virtiofsd's version, the benchmark's children) goes through
``spawn_tied`` (``run_tied`` for a helper run to completion) and is stopped with
``kill_process_group``, so "no process outlives the harness" is implemented once.

One child is started otherwise, on purpose: ``libvirt.daemon``'s reaper, whose whole
job is to outlive a SIGKILLed harness and destroy the QEMUs libvirtd started for it,
so it must not be tied to the harness's death.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

from .progress import Progress

_PR_SET_PDEATHSIG = 1
# Looked up now, not in the forked child, where dlopen() could wait on a loader lock
# some other thread held at fork time.
_prctl = ctypes.CDLL(None, use_errno=True).prctl
# Held back in the parent while a child is forked (see spawn_tied).
HELD_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})
_TAIL_CHARS = 2000
# Where a program is looked for after $PATH: a non-root or non-login shell on Debian
# has no sbin in $PATH, and mkfs.*, modprobe and friends live there.
_SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")



def _tie_to_parent(death_signal: int) -> Callable[[], None]:
    def tie() -> None:  # pragma: no cover - runs in the child after fork
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD_SIGNALS)
        _prctl(_PR_SET_PDEATHSIG, death_signal, 0, 0, 0)
        # The parent may already be gone between fork and prctl.
        if os.getppid() == 1:
            os._exit(1)

    return tie


def find_program(name: str) -> str | None:
    """The full path of program ``name``: in $PATH, else in the sbin directories such
    a $PATH lacks; None when neither has it.  The one lookup of every host tool a
    child of the harness runs."""
    search = os.pathsep.join([os.environ.get("PATH", os.defpath), *_SBIN_DIRS])
    return shutil.which(name, path=search)


def spawn_tied(
    argv: Sequence[str],
    *,
    stdout: int | IO[bytes],
    stderr: int | IO[bytes],
    stdin: int | IO[bytes] = subprocess.DEVNULL,
    pass_fds: Sequence[int] = (),
    death_signal: int = signal.SIGKILL,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a session of its own, signalled by the kernel if we die first.

    A SIGKILLed harness runs no ``finally``, and a paused probe or a guest hung in
    nested virtualisation would otherwise run on forever.  ``death_signal`` is
    SIGKILL for QEMU and SIGTERM for daemons that should exit cleanly.  SIGINT and
    SIGTERM are held during the fork: raised inside an at-fork hook, CPython would
    ignore them and the Ctrl-C would be lost.
    """
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, HELD_SIGNALS)
    try:
        return subprocess.Popen(
            list(argv),
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            pass_fds=tuple(pass_fds),
            start_new_session=True,
            env=None if env is None else dict(env),
            cwd=cwd,
            preexec_fn=_tie_to_parent(death_signal),  # noqa: PLW1509 - sigmask and prctl only
        )
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def run_tied(
    argv: Sequence[str],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[str]:
    """``subprocess.run`` for a helper (apt, dpkg-deb, gcc) tied to the harness's life.

    Output captured as text, stdin empty.  Started by ``spawn_tied``: a SIGKILLed
    harness takes the helper with it (PR_SET_PDEATHSIG), and a Ctrl-C, an error or
    ``timeout`` (subprocess.TimeoutExpired, raised after the kill) kills its whole
    process group, so no helper writes into the cache after the harness gave up.
    """
    proc = spawn_tied(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                      cwd=cwd)
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        kill_process_group(proc)
        raise
    return subprocess.CompletedProcess(list(argv), proc.returncode,
                                       out.decode(errors="replace"),
                                       err.decode(errors="replace"))


def kill_process_group(
    proc: subprocess.Popen[bytes], wait: float = 5.0, progress: Progress | None = None
) -> int | None:
    """SIGKILL the process group led by ``proc`` and reap the leader; return its status.

    The process must have been started with its own session (``spawn_tied``).
    Killing the group, not just the leader, also ends helpers a wrapper script may
    have forked.  The group id stays reserved while any member lives, so this is
    safe even after the leader exited.  None means the leader would not die (D state
    in the kernel); ``progress`` is told so.
    """
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + wait
    try:
        status = proc.wait(timeout=wait)
    except subprocess.TimeoutExpired:
        if progress is not None:
            progress(f"warning: pid {proc.pid} did not die after SIGKILL")
        return None
    # SIGKILL is delivered at once but a member dies when the kernel next runs it: wait
    # for the rest of the group too, so the caller never sees a helper still alive.
    while _group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    return status


def _group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` is still running (zombies are dead)."""
    for stat_path in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_path.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # it exited while we looked
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return False


def tail_text(data: bytes | str, limit: int = _TAIL_CHARS) -> str:
    """The last ``limit`` characters of some process output, decoded leniently."""
    text = data.decode(errors="replace") if isinstance(data, bytes) else data
    text = text.strip()
    return text if len(text) <= limit else "..." + text[-limit:]


def tail_file(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file, '' if it does not exist."""
    try:
        data = path.read_bytes()[-65536:]
    except OSError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


def processes_with_env(name: str, value: str, comm_prefix: str = "qemu-system") -> set[int]:
    """Live processes called ``comm_prefix*`` whose environment holds ``name=value``.

    Every process inherits its parent's environment, so a marker set once finds all
    the QEMUs a session started, directly or through CLI subprocesses, even after
    they were reparented.
    """
    wanted = f"{name}={value}".encode()
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if not (entry / "comm").read_text().startswith(comm_prefix):
                continue
            if (entry / "stat").read_text().rsplit(") ", 1)[1][:1] in ("Z", "X"):
                continue
            if wanted in (entry / "environ").read_bytes().split(b"\0"):
                found.add(int(entry.name))
        except OSError:
            continue
    return found
