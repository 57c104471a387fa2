"""One virtiofsd serving one virtiofs export, as a context manager.

The harness makes the daemon's listening socket itself, in the abstract namespace (a
name, no file: nothing to remove, nothing left after a SIGKILL), and hands it over
with ``--fd``; QEMU connects to the same name.  The socket listens before virtiofsd
starts, so QEMU's connect cannot race the daemon's start.  virtiofsd runs in the
harness's private mount namespace (it inherits it, so it sees the export's mounts),
tied to the harness's life like QEMU (``proc.spawn_tied``), and writes its log next
to the guest's.  It exits by itself when QEMU closes the connection; one that does
not is killed with its process group.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
from contextlib import suppress
from pathlib import Path
from types import TracebackType

from ..config import VIRTIOFS_CACHE
from ..errors import VirtiofsdError
from ..proc import kill_process_group, spawn_tied, tail_file
from ..progress import Progress, quiet
from .spec import ExportSpec

# After QEMU quit, virtiofsd sees the vhost-user connection close and exits at once.
_EXIT_WAIT_S = 5.0


def daemon_args(export: ExportSpec, fd: int) -> list[str]:
    """virtiofsd's options for ``export`` on listening socket ``fd`` (pure).

    Submounts are stated either way: 1.13 announces them by default, so the row
    without them must say ``--no-announce-submounts``.
    """
    return [
        f"--fd={fd}",
        f"--shared-dir={export.path}",
        "--announce-submounts" if export.submounts else "--no-announce-submounts",
        f"--cache={VIRTIOFS_CACHE}",
        "--sandbox=namespace",
    ]


class VirtiofsDaemon:
    """``with VirtiofsDaemon(command, export, log) as d:`` starts virtiofsd for
    ``export``; ``d.socket_name`` is what QEMU connects to.  Leaving stops it."""

    def __init__(self, command: tuple[str, ...], export: ExportSpec, log_path: Path,
                 progress: Progress = quiet) -> None:
        if not command:
            raise VirtiofsdError("no virtiofsd was prepared for a virtiofs export",
                                 hint="run with --transport virtiofs (which finds one)")
        self.command = command
        self.export = export
        self.log_path = log_path
        self.progress = progress
        self.socket_name = f"mdh-vfs-{os.getpid()}-{secrets.token_hex(6)}"
        self.argv: list[str] = []
        self._proc: subprocess.Popen[bytes] | None = None
        self.exit_code: int | None = None

    def __enter__(self) -> VirtiofsDaemon:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind("\0" + self.socket_name)
            listener.listen(1)
            self.argv = [*self.command, *daemon_args(self.export, listener.fileno())]
            with open(self.log_path, "ab") as log:
                self._proc = spawn_tied(self.argv, stdout=log, stderr=log,
                                        pass_fds=(listener.fileno(),))
        except OSError as exc:
            raise VirtiofsdError(f"cannot start virtiofsd for {self.export.path}: {exc}",
                                 hint="check --virtiofsd; its log is " + str(self.log_path)
                                 ) from exc
        finally:
            # The daemon holds its own copy; ours would keep the name alive after it.
            listener.close()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def stop(self) -> None:
        """Wait briefly for the daemon to exit (QEMU gone), else kill its group."""
        proc = self._proc
        if proc is None:
            return
        with suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=_EXIT_WAIT_S)
        # Its sandbox's children share its process group: none may outlive it.
        self.exit_code = kill_process_group(proc, wait=10, progress=self.progress)

    def failure(self) -> str | None:
        """None while virtiofsd runs, else how it ended and its log's tail."""
        if self._proc is None or self._proc.poll() is None:
            return None
        return (f"virtiofsd for {self.export.tag} exited with status {self._proc.returncode}: "
                f"{tail_file(self.log_path, 5)}")
