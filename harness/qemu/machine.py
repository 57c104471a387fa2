"""One QEMU process as a context manager, with a layered shutdown.

Modelled on QEMU's own ``QEMUMachine``: ``__exit__`` always shuts down, first softly
(QMP ``quit``), then by killing the process group; cleanup runs in ``finally``.  QEMU
gets the harness's end of a socketpair for QMP (no socket path to race on), runs in
its own process group, and receives SIGKILL through the parent-death signal if the
harness itself is killed, so no QEMU outlives the harness.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
from contextlib import ExitStack, suppress
from dataclasses import replace
from pathlib import Path

from ..config import Mode, Start, Transport
from ..errors import QemuFailed, QmpError, SshUnavailable
from ..guest.end import EndHow, QemuEnd
from ..guest.lifecycle import (
    BootDeadline,
    Launched,
    check_alive,
    connect,
    wait_console,
    wait_ready,
)
from ..guest.ssh import CommandResult, GuestSsh
from ..proc import HELD_SIGNALS, kill_process_group, spawn_tied
from ..progress import Progress, quiet
from .cmdline import (
    forwarded_port,
    kernel_append,
    render_command,
    shell_quote_command,
    slot_exports,
    uses_virtiofs,
)
from .guest_mounts import kernel_exports, mount_exports, mounted_over_ssh
from .qmp import Qmp
from .snapshot import (
    StateCache,
    binary_identity,
    file_identity,
    incoming_args,
    named_files,
    save_state,
    state_key,
    wait_restored,
)
from .spec import ExportSpec, MachineSpec
from .vhostfs import VirtiofsDaemon

# 9p device slots of a restorable guest: the most exports one guest of the default
# matrix holds (18: three modes, two cache modes each, and four families per mode),
# with room to spare; q35's root bus has 32 slots.  A state is made for this many; a
# guest with more exports boots cold.
SLOTS = 24
# Quiet on QEMU's stderr that closes the window of a failed action of the harness's.
_QUIET_S = 0.2
# Bumped when what a saved state assumes changes (the init, the mount protocol).
STATE_FORMAT = "mdh-state-1"
# How long a QEMU whose QMP socket closed is given to exit before it counts as alive.
_DYING_GRACE_S = 2.0



class Machine(Launched):
    """A guest run by QEMU directly: process, QMP, serial console log and SSH.

    Use as ``with Machine(spec) as m: m.wait_ready(); m.run("uname -r")``.  Logs
    (console.log, qemu-stderr.log, qmp.log, command.txt) stay in ``spec.log_dir``.
    Implements ``guest.Guest``.
    """

    def __init__(self, spec: MachineSpec, *, progress: Progress = quiet,
                 name: str = "guest") -> None:
        self.spec = spec
        self.name = name
        self.progress = progress
        self.log_dir = spec.log_dir
        self.console_path = spec.log_dir / "console.log"
        self.stderr_path = spec.log_dir / "qemu-stderr.log"
        # Apart from stderr: QEMU's messages are promised on stderr, and one printed on
        # stdout must not pass for them.
        self.stdout_path = spec.log_dir / "qemu-stdout.log"
        self.qmp_log_path = spec.log_dir / "qmp.log"
        self.command_path = spec.log_dir / "command.txt"
        self._proc: subprocess.Popen[bytes] | None = None
        self._qmp: Qmp | None = None
        self._ssh: GuestSsh | None = None
        self._stack = ExitStack()
        self._start = 0.0
        self._began = 0.0
        self.argv: list[str] = []
        self.append = ""
        self.host_port = 0
        self.boot_seconds: float | None = None
        self.exit_code: int | None = None
        # How shutdown found and left QEMU (None until it ran); ``verdicts.qemu_end``.
        self.end: QemuEnd | None = None
        # Where this QEMU's stderr begins in the log (after a rejected restore's).
        self._stderr_from = 0
        # The stderr QEMU wrote while failing an action of the harness's own (saving
        # the guest's state), quoted in that action's warning: not the exports' to judge.
        self.own_stderr: list[slice] = []
        self.start = Start.COLD
        self._cache = StateCache(spec.state_cache) if spec.state_cache else None
        self._key: str | None = None
        self._restore: Path | None = None

    # --- lifecycle -------------------------------------------------------------------

    # --- boot by restore ----------------------------------------------------------

    @property
    def restorable(self) -> bool:
        """Whether this guest boots by restore: a state cache, and exports that fit
        the fixed 9p slots (a state fixes the device set).  Never with virtiofs: QEMU's
        vhost-user-fs device is unmigratable (its vmstate says so up to 8.1; later
        ones migrate only with a backend's own state transfer), so no state can be
        saved and these guests boot cold."""
        return (self._cache is not None and len(self.spec.exports) <= SLOTS
                and not uses_virtiofs(self.spec.exports))

    def _devices(self) -> tuple[ExportSpec, ...]:
        if not self.restorable:
            return self.spec.exports
        filler = self.log_dir / "empty-slot"
        filler.mkdir(parents=True, exist_ok=True)
        return slot_exports(self.spec.exports, SLOTS, filler)

    def _append(self) -> str:
        # Restorable guests, and guests of more exports than the line holds, mount
        # their exports over SSH after the boot (see guest_mounts).
        return kernel_append(kernel_exports(self.spec.exports, self.spec.extra_append,
                                            restorable=self.restorable),
                             self.spec.extra_append)

    def state_key(self) -> str:
        """Everything a restore must match: the binary itself and the whole command
        line, with what may differ (export paths, multidevs, read-only or not, console,
        port) blanked (none of them is in the guest's saved state, which mounts no
        export), and the identity of every file it names (a kernel rebuilt in place is
        another kernel)."""
        blank = tuple(replace(e, path=Path("/slot"), mode=Mode.REMAP, readonly=False)
                      for e in self._devices())
        argv = render_command(replace(self.spec, exports=blank), console_path=Path("/console"),
                              qmp_fd=0, host_port=0, append=self._append())
        files = [file_identity(path) for path in named_files(argv)]
        return state_key([STATE_FORMAT, binary_identity(self.spec.qemu), *argv, *files])

    # --- lifecycle ----------------------------------------------------------------

    def launch(self) -> None:
        """Start QEMU (restoring a saved state where one fits) and open QMP; raises
        QemuFailed if QEMU exits at once."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._began = time.monotonic()
        if self._cache is not None and self.restorable:
            self._key = self.state_key()
            self._restore = self._cache.find(self._key)
        if self._restore is not None:
            try:
                self._launch()
                return
            except (QmpError, QemuFailed) as exc:
                # A state QEMU cannot load makes it exit before QMP is done.
                self._reject_state(exc)
        self._launch()

    def _reject_state(self, exc: QmpError | QemuFailed | SshUnavailable) -> None:
        """Forget a state QEMU could not use and stop that QEMU; the caller boots cold.

        Said once on the terminal.  A QEMU killed from outside is no state problem:
        that is raised as it is.
        """
        assert self._cache is not None and self._key is not None
        if self._killed_from_outside():
            check_alive(self)  # says how QEMU ended
            raise exc
        self.progress(f"{self.name}: the saved guest state was not usable "
                      f"({exc.message}); booting cold instead")
        self._cache.invalidate(self._key)
        self.shutdown()
        self._restore = None

    def _launch(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._stack.callback(ours.close)
        self.append = self._append()
        self.argv = render_command(
            replace(self.spec, exports=self._devices()), console_path=self.console_path,
            qmp_fd=theirs.fileno(), host_port=0, append=self.append,
            incoming=incoming_args(self._restore) if self._restore else (),
            sockets=self._start_daemons())
        self.command_path.write_text(shell_quote_command(self.argv) + "\n")
        # Appended: a failed restore's stderr stays next to the cold boot's.
        self._stderr_from = len(self.stderr_text())
        self.end = None
        stderr = open(self.stderr_path, "ab")  # noqa: SIM115 - closed by the ExitStack
        self._stack.callback(stderr.close)
        stdout = open(self.stdout_path, "ab")  # noqa: SIM115 - closed by the ExitStack
        self._stack.callback(stdout.close)
        self._start = time.monotonic()
        # A Ctrl-C/SIGTERM arriving during fork() would be raised inside an at-fork
        # hook, where CPython ignores it, and the run would go on.  Hold both until
        # Popen returned and the pid is recorded, so shutdown() can kill this QEMU.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, HELD_SIGNALS)
        try:
            self._proc = spawn_tied(self.argv, stdout=stdout, stderr=stderr,
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
            # QMP's socket closes a moment before QEMU is reaped: give a dying QEMU
            # that moment, so its exit (QemuFailed, with stderr) is what is reported.
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=_DYING_GRACE_S)
            check_alive(self)
            raise

    def _start_daemons(self) -> list[str]:
        """A virtiofsd per virtiofs export, on the stack (stopped after QEMU); their
        socket names in export order.  Each logs to virtiofsd-<tag>.log."""
        names = []
        for export in self.spec.exports:
            if export.transport is Transport.VIRTIOFS:
                daemon = VirtiofsDaemon(self.spec.virtiofsd, export,
                                        self.log_dir / f"virtiofsd-{export.tag}.log",
                                        self.progress)
                names.append(self._stack.enter_context(daemon).socket_name)
        return names

    def _read_forwarded_port(self) -> int:
        # QEMU bound port 0 itself, so no other process can hold it; ask which it got.
        text = self.qmp.human("info usernet", timeout=self.spec.timeouts.qmp)
        port = forwarded_port(text)
        if port is None:
            raise QemuFailed(
                "QEMU did not report the SSH port forward in 'info usernet'",
                hint="is this QEMU built with slirp (user networking)?",
                command=self.argv,
                stderr_tail=text,
            )
        return port

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

    def _deadline(self) -> BootDeadline:
        image = self.spec.image
        return BootDeadline(self._start, self.spec.timeouts.boot, self.host_port,
                            image.client_key, image.host_key_pub)

    def wait_ready(self) -> None:
        """Wait until the guest accepts SSH with every export mounted.

        Cold: the readiness line, then SSH (``guest.wait_ready``), then the exports
        the kernel command line had no room for are mounted over SSH.  Restorable: a
        restore where a state fits (falling back to a cold boot, said once, when
        QEMU rejects it), else a cold boot that saves its state; then the exports
        are mounted over SSH.
        """
        if not self.restorable:
            self._ssh = wait_ready(self, self._deadline())
            mount_exports(self._ssh, mounted_over_ssh(self.spec.exports, self.spec.extra_append),
                          restored=False, timeout=self.spec.timeouts.command)
        else:
            assert self._cache is not None
            ssh = self._restored() if self._restore is not None else None
            if ssh is None:
                ssh = self._cold_and_save()
            self._ssh = ssh
            mount_exports(ssh, self.spec.exports, restored=self.start is Start.RESTORED,
                          timeout=self.spec.timeouts.command)
        # From the first QEMU's start: a failed restore's time counts too.
        self.boot_seconds = time.monotonic() - self._began

    def _restored(self) -> GuestSsh | None:
        """SSH to the restored guest, or None after a failed restore was undone."""
        assert self._cache is not None and self._key is not None
        try:
            wait_restored(self.qmp, self._start + self.spec.timeouts.boot)
            self.qmp.execute("cont")
            ssh = connect(self, self._deadline())
        except (QmpError, QemuFailed, SshUnavailable) as exc:
            self._reject_state(exc)
            self._launch()
            return None
        self.start = Start.RESTORED
        return ssh

    def _killed_from_outside(self) -> bool:
        # QEMU rejecting a state exits with a status of its own; a signal means
        # someone stopped it (Ctrl-C, a test, the OOM killer): not the state's fault.
        proc = self._proc
        if proc is None:
            return False
        with suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=0.5)
        return proc.returncode is not None and proc.returncode < 0

    def _cold_and_save(self) -> GuestSsh:
        """Boot cold; once the init is ready, save the state (unless another run is
        saving the same key), then go on."""
        assert self._cache is not None and self._key is not None
        wait_console(self, self._deadline())
        with self._cache.saving(self._key) as partial:
            if partial is not None:
                before = len(self.stderr_text())
                try:
                    save_state(self.qmp, partial, self._start + self.spec.timeouts.boot)
                    self._cache.commit(self._key, partial, f"{self.spec.qemu} "
                                       f"{self.spec.image.directory.name}")
                except QmpError as exc:
                    self.qmp.execute("cont")
                    said = self._failed_action_stderr(before)
                    self.progress(f"warning: {self.name}: could not save the guest state "
                                  f"({exc.message}); the guest goes on unsaved"
                                  + (f"; QEMU said, of the save: {said}" if said else ""))
                else:
                    self.qmp.execute("cont")
        return connect(self, self._deadline())

    def _failed_action_stderr(self, before: int) -> str:
        """Attribute what QEMU (and the ``cat`` it ran) wrote on stderr since ``before``
        to a failed action of the harness's own: the window is kept in ``own_stderr``,
        which the exports' judgement leaves out, and its lines are returned for the
        action's warning.  QEMU reports a failed migration after its status says so
        (the cleanup's own line), so the window closes once stderr has been quiet for
        a moment, with no export mounted yet to write anything of its own."""
        length, quiet_since, until = before, time.monotonic(), time.monotonic() + 2.0
        while time.monotonic() < until and time.monotonic() - quiet_since < _QUIET_S:
            time.sleep(0.02)
            now = len(self.stderr_text())
            if now != length:
                length, quiet_since = now, time.monotonic()
        self.own_stderr.append(slice(before, length))
        return " | ".join(line.strip() for line in
                          self.stderr_text()[before:length].splitlines() if line.strip())

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
        """Stop QEMU: QMP quit, wait, then SIGKILL the group; ``end`` records how it
        went. Safe to call twice (the second call finds nothing to stop)."""
        try:
            if self._ssh is not None:
                self._ssh.close()
                self._ssh = None
            proc = self._proc
            if proc is not None and self.end is None:
                self.end = self._stop(proc)
                self.exit_code = proc.poll()
        finally:
            qmp, self._qmp = self._qmp, None
            try:
                if qmp is not None:
                    qmp.close()  # raises only a new Ctrl-C, after releasing the session
            finally:
                self._stack.close()

    def _stop(self, proc: subprocess.Popen[bytes]) -> QemuEnd:
        if proc.poll() is not None:
            return QemuEnd(EndHow.GONE, proc.returncode, self._stderr_from)
        self._soft_stop(proc)
        if proc.poll() is not None:
            return QemuEnd(EndHow.QUIT, proc.returncode, self._stderr_from)
        status = kill_process_group(proc, wait=10, progress=self.progress)
        return QemuEnd(EndHow.KILLED, status, self._stderr_from,
                       self.spec.timeouts.shutdown)

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
