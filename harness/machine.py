"""One QEMU process as a context manager, with a layered shutdown.

Modelled on QEMU's own ``QEMUMachine``: ``__exit__`` always shuts down, first softly
(QMP ``quit``), then by killing the process group; cleanup runs in ``finally``.  QEMU
gets the harness's end of a socketpair for QMP (no socket path to race on), runs in
its own process group, and receives SIGKILL through the parent-death signal if the
harness itself is killed, so no QEMU outlives the harness.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from contextlib import ExitStack, suppress

from .cmdline import kernel_append, render_command, shell_quote_command
from .config import MachineSpec
from .errors import QemuFailed, QmpError
from .guest import BootDeadline, Launched, check_alive, wait_ready
from .proc import HELD_SIGNALS, kill_process_group, spawn_tied
from .qmp import Qmp
from .ssh import CommandResult, GuestSsh

_USERNET_PORT = re.compile(r"HOST_FORWARD\]\s+\d+\s+127\.0\.0\.1\s+(\d+)\s+10\.0\.2\.15\s+22")

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


class Machine(Launched):
    """A guest run by QEMU directly: process, QMP, serial console log and SSH.

    Use as ``with Machine(spec) as m: m.wait_ready(); m.run("uname -r")``.  Logs
    (console.log, qemu-stderr.log, qmp.log, command.txt) stay in ``spec.log_dir``.
    Implements ``guest.Guest``.
    """

    def __init__(self, spec: MachineSpec, *, progress: Progress = _quiet,
                 name: str = "guest") -> None:
        self.spec = spec
        self.name = name
        self.progress = progress
        self.log_dir = spec.log_dir
        self.console_path = spec.log_dir / "console.log"
        self.stderr_path = spec.log_dir / "qemu-stderr.log"
        self.qmp_log_path = spec.log_dir / "qmp.log"
        self.command_path = spec.log_dir / "command.txt"
        self._proc: subprocess.Popen[bytes] | None = None
        self._qmp: Qmp | None = None
        self._ssh: GuestSsh | None = None
        self._stack = ExitStack()
        self._start = 0.0
        self.argv: list[str] = []
        self.append = ""
        self.host_port = 0
        self.boot_seconds: float | None = None
        self.exit_code: int | None = None

    # --- lifecycle -------------------------------------------------------------------

    def launch(self) -> None:
        """Start QEMU and open QMP; raises QemuFailed if QEMU exits at once."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._stack.callback(ours.close)
        self.append = kernel_append(self.spec.exports, self.spec.extra_append)
        self.argv = render_command(self.spec, console_path=self.console_path,
                                   qmp_fd=theirs.fileno(), host_port=0, append=self.append)
        self.command_path.write_text(shell_quote_command(self.argv) + "\n")
        stderr = open(self.stderr_path, "wb")  # noqa: SIM115 - closed by the ExitStack
        self._stack.callback(stderr.close)
        self._start = time.monotonic()
        # A Ctrl-C/SIGTERM arriving during fork() would be raised inside an at-fork
        # hook, where CPython ignores it, and the run would go on.  Hold both until
        # Popen returned and the pid is recorded, so shutdown() can kill this QEMU.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, HELD_SIGNALS)
        try:
            self._proc = spawn_tied(self.argv, stdout=stderr, stderr=stderr,
                                    pass_fds=(theirs.fileno(),))
        except OSError as exc:
            raise QemuFailed(
                f"cannot start {self.spec.qemu}: {exc.strerror}",
                hint="check --qemu; run 'multidevs-harness probe' for details",
                command=self.argv,
            ) from exc
        finally:
            theirs.close()
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        self._qmp = Qmp(ours, log_path=self.qmp_log_path)
        try:
            self._qmp.connect(timeout=self.spec.timeouts.qmp)
            self.host_port = self._read_forwarded_port()
        except QmpError:
            check_alive(self)
            raise

    def _read_forwarded_port(self) -> int:
        # QEMU bound port 0 itself, so no other process can hold it; ask which it got.
        text = self.qmp.human("info usernet", timeout=self.spec.timeouts.qmp)
        match = _USERNET_PORT.search(text)
        if not match:
            raise QemuFailed(
                "QEMU did not report the SSH port forward in 'info usernet'",
                hint="is this QEMU built with slirp (user networking)?",
                command=self.argv,
                stderr_tail=text,
            )
        return int(match.group(1))

    @property
    def qmp(self) -> Qmp:
        if self._qmp is None:
            raise QmpError("QMP is not connected", hint="launch the machine first")
        return self._qmp

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stopped(self) -> str | None:
        """None while QEMU runs, else its exit status in words."""
        if self._proc is None or self._proc.poll() is None:
            return None
        self.exit_code = self._proc.returncode
        return f"QEMU exited with status {self._proc.returncode}"

    def wait_ready(self) -> None:
        """Wait for the readiness line and an SSH session (``guest.wait_ready``)."""
        self._ssh = wait_ready(self, BootDeadline(self._start, self.spec.timeouts.boot,
                                                  self.host_port, self.spec.image))
        self.boot_seconds = time.monotonic() - self._start

    def run(self, command: str, stdin: bytes = b"", timeout: float | None = None) -> CommandResult:
        """Run a shell command in the guest over SSH."""
        if self._ssh is None:
            self.wait_ready()
        assert self._ssh is not None
        return self._ssh.run(command, stdin=stdin, timeout=timeout or self.spec.timeouts.command)

    def stderr_text(self) -> str:
        """Everything QEMU wrote to stderr so far."""
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def shutdown(self) -> None:
        """Stop QEMU: QMP quit, wait, then SIGKILL the group. Safe to call twice."""
        try:
            if self._ssh is not None:
                self._ssh.close()
                self._ssh = None
            proc = self._proc
            if proc is not None and proc.poll() is None:
                self._soft_stop(proc)
            if proc is not None and proc.poll() is None:
                kill_process_group(proc, wait=10, progress=self.progress)
            if proc is not None:
                self.exit_code = proc.poll()
        finally:
            if self._qmp is not None:
                self._qmp.close()
                self._qmp = None
            self._stack.close()

    def _soft_stop(self, proc: subprocess.Popen[bytes]) -> None:
        # Without a QMP session (interrupted during launch) nothing asks QEMU to quit,
        # and waiting would only delay the kill by the whole shutdown timeout.
        if self._qmp is None or not self._qmp.connected:
            return
        with suppress(QmpError):
            self._qmp.execute("quit", timeout=self.spec.timeouts.qmp)
        with suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=self.spec.timeouts.shutdown)

    def kill(self) -> None:
        """Kill QEMU without a soft stop (Ctrl-C from another thread, simulated crashes)."""
        if self._proc is not None and self._proc.poll() is None:
            kill_process_group(self._proc, wait=10, progress=self.progress)
