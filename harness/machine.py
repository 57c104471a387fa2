"""One QEMU process as a context manager, with a layered shutdown.

Modelled on QEMU's own ``QEMUMachine``: ``__exit__`` always shuts down, first softly
(QMP ``quit``), then by killing the process group; cleanup runs in ``finally``.  QEMU
gets the harness's end of a socketpair for QMP (no socket path to race on), runs in
its own process group, and receives SIGKILL through the parent-death signal if the
harness itself is killed, so no QEMU outlives the harness.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from . import qemu as qemu_cmd
from .config import MachineSpec
from .errors import GuestBootTimeout, GuestPanic, QemuFailed, QmpError, SshUnavailable
from .qemu import HELD_SIGNALS, spawn_tied
from .qmp import Qmp
from .ssh import CommandResult, GuestSsh, connect_with_retry

READY_MARKER = "MDH-READY"
# "end Kernel panic" lines contain it too.
PANIC_MARKERS = ("Kernel panic",)
_USERNET_PORT = re.compile(r"HOST_FORWARD\]\s+\d+\s+127\.0\.0\.1\s+(\d+)\s+10\.0\.2\.15\s+22")

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@dataclass
class BootTimes:
    """Seconds from QEMU's start to each milestone of a boot."""

    ready_line: float | None = None
    ssh: float | None = None


def tail(path: Path, lines: int = 30) -> str:
    """Last ``lines`` lines of a text file, '' if it does not exist."""
    try:
        data = path.read_bytes()[-65536:]
    except OSError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


class Machine:
    """A running guest: QEMU process, QMP, serial console log and SSH.

    Use as ``with Machine(spec) as m: m.wait_ready(); m.run("uname -r")``.  Logs
    (console.log, qemu-stderr.log, qmp.log, command.txt) stay in ``spec.log_dir``.
    """

    def __init__(
        self,
        spec: MachineSpec,
        *,
        sandbox_supported: bool = False,
        progress: Progress = _quiet,
        name: str = "guest",
    ) -> None:
        self.spec = spec
        self.name = name
        self.progress = progress
        self.log_dir = spec.log_dir
        self.console_path = spec.log_dir / "console.log"
        self.stderr_path = spec.log_dir / "qemu-stderr.log"
        self.qmp_log_path = spec.log_dir / "qmp.log"
        self.command_path = spec.log_dir / "command.txt"
        self._sandbox_supported = sandbox_supported
        self._proc: subprocess.Popen[bytes] | None = None
        self._qmp: Qmp | None = None
        self._ssh: GuestSsh | None = None
        self._stack = ExitStack()
        self._start = 0.0
        self.argv: list[str] = []
        self.append = ""
        self.host_port = 0
        self.times = BootTimes()
        self.exit_code: int | None = None

    # --- lifecycle -------------------------------------------------------------------

    def __enter__(self) -> Machine:
        try:
            self.launch()
        except BaseException:
            self.shutdown()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()

    def launch(self) -> None:
        """Start QEMU and open QMP; raises QemuFailed if QEMU exits at once."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._stack.callback(ours.close)
        self.append = qemu_cmd.kernel_append(self.spec.exports, self.spec.extra_append)
        self.argv = qemu_cmd.render_command(
            self.spec,
            console_path=self.console_path,
            qmp_fd=theirs.fileno(),
            host_port=0,
            append=self.append,
            sandbox=self._sandbox_supported,
        )
        self.command_path.write_text(qemu_cmd.shell_quote_command(self.argv) + "\n")
        stderr = open(self.stderr_path, "wb")  # noqa: SIM115 - closed by the ExitStack
        self._stack.callback(stderr.close)
        self._start = time.monotonic()
        # A Ctrl-C/SIGTERM arriving during fork() would be raised inside an at-fork
        # hook, where CPython ignores it, and the run would go on.  Hold both until
        # Popen returned and the pid is recorded, so shutdown() can kill this QEMU.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, HELD_SIGNALS)
        try:
            # spawn_tied gives QEMU its own process group and the parent-death
            # signal; the mask stays held here until the pid is recorded.
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
        except QmpError as exc:
            self.check_alive()
            raise exc

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

    def check_alive(self) -> None:
        """Raise GuestPanic / QemuFailed at once if the guest panicked or QEMU exited."""
        console = tail(self.console_path, 60)
        if any(marker in console for marker in PANIC_MARKERS):
            raise GuestPanic(
                f"{self.name}: the guest kernel panicked",
                hint=f"see {self.console_path}",
                exit_code_qemu=self._proc.poll() if self._proc else None,
                command=self.argv,
                stderr_tail=tail(self.stderr_path),
                console_tail=console,
            )
        if self._proc is not None and self._proc.poll() is not None:
            self.exit_code = self._proc.returncode
            raise QemuFailed(
                f"{self.name}: QEMU exited with status {self._proc.returncode}",
                hint=f"see {self.stderr_path} and {self.console_path}",
                exit_code_qemu=self._proc.returncode,
                command=self.argv,
                stderr_tail=tail(self.stderr_path),
                console_tail=tail(self.console_path),
            )

    def wait_ready(self) -> GuestSsh:
        """Wait for the readiness line and an SSH session, both before one deadline."""
        deadline = self._start + self.spec.timeouts.boot
        try:
            self._wait_console(deadline)
            self._ssh = connect_with_retry(
                "127.0.0.1",
                self.host_port,
                self.spec.image.client_key,
                self.spec.image.host_key_pub,
                deadline,
                self.check_alive,
            )
        except SshUnavailable as exc:
            if type(exc) is not SshUnavailable:
                raise
            raise self._boot_timeout(str(exc.message)) from exc
        self.times.ssh = time.monotonic() - self._start
        return self._ssh

    def _wait_console(self, deadline: float) -> None:
        offset = 0
        buffer = b""
        while True:
            self.check_alive()
            try:
                with open(self.console_path, "rb") as handle:
                    handle.seek(offset)
                    chunk = handle.read()
            except FileNotFoundError:
                chunk = b""
            offset += len(chunk)
            buffer = (buffer + chunk)[-4096:]
            if READY_MARKER.encode() in buffer:
                self.times.ready_line = time.monotonic() - self._start
                return
            if time.monotonic() > deadline:
                raise self._boot_timeout("no readiness line on the serial console")
            time.sleep(0.01)

    def _boot_timeout(self, what: str) -> GuestBootTimeout:
        return GuestBootTimeout(
            f"{self.name}: guest not ready within {self.spec.timeouts.boot:.0f} s ({what})",
            hint=f"logs in {self.log_dir}; under TCG a loaded machine boots slowly",
            command=self.argv,
            stderr_tail=tail(self.stderr_path),
            console_tail=tail(self.console_path),
        )

    @property
    def ssh(self) -> GuestSsh:
        if self._ssh is None:
            self.wait_ready()
        assert self._ssh is not None
        return self._ssh

    def run(self, command: str, stdin: bytes = b"", timeout: float | None = None) -> CommandResult:
        """Run a shell command in the guest over SSH."""
        return self.ssh.run(command, stdin=stdin, timeout=timeout or self.spec.timeouts.command)

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
                self._kill(proc)
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

    def _kill(self, proc: subprocess.Popen[bytes]) -> None:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            # Unkillable (D state): report it rather than hang forever.
            self.progress(f"warning: QEMU pid {proc.pid} did not die after SIGKILL")

    def kill(self) -> None:
        """Kill QEMU without a soft stop (for tests that simulate a crash)."""
        if self._proc is not None and self._proc.poll() is None:
            self._kill(self._proc)
