"""A guest started by libvirtd: a transient domain as a context manager.

Created with createXML on enter, destroyed on exit (also on errors and Ctrl-C).
The QEMU command line libvirt generated is read back from /proc, and QEMU's
stderr from libvirt's domain log.  The boot wait is ``guest.wait_ready``, the same
as for a QEMU started directly.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..config import Start
from ..errors import QemuFailed
from ..guest.lifecycle import BootDeadline, Launched, check_alive, wait_ready
from ..guest.ssh import CommandResult, GuestSsh
from ..image.artefacts import GuestImage
from ..proc import tail_file
from ..progress import Progress, quiet
from ..qemu.cmdline import forwarded_port, shell_quote_command
from ..qemu.guest_mounts import mount_exports
from ..qemu.spec import ExportSpec
from ..timeouts import Timeouts
from .daemon import DOMAIN_LOG_DIR, DOMAIN_RUN_DIR, error_text, import_libvirt
from .domain import DomainSpec, qemu_output, render_domain_xml


class LibvirtGuest(Launched):
    """A transient domain as a context manager: created on enter, destroyed on exit.

    Implements ``guest.Guest``.  libvirt's destroy is itself layered (SIGTERM,
    then SIGKILL after a grace period), so there is no separate soft stop; the
    guest holds no state to save.
    """

    def __init__(
        self,
        conn: Any,
        spec: DomainSpec,
        log_dir: Path,
        image: GuestImage,
        timeouts: Timeouts,
        progress: Progress = quiet,
        ssh_mounts: Sequence[ExportSpec] = (),
    ) -> None:
        self.conn = conn
        # The exports its kernel command line had no room for (qemu.guest_mounts).
        self.ssh_mounts = tuple(ssh_mounts)
        self.spec = spec
        self.name = spec.name
        self.log_dir = log_dir
        self.image = image
        self.timeouts = timeouts
        self.progress = progress
        self.console_path = spec.console
        self.domain_log = DOMAIN_LOG_DIR / f"{spec.name}.log"
        self.saved_log = log_dir / "qemu-domain.log"
        self.libvirt, self.libvirt_qemu = import_libvirt()
        self.dom: Any = None
        self.pid: int | None = None
        self.argv: list[str] = []
        self.host_port = 0
        self.boot_seconds: float | None = None
        # libvirt's own save/restore is not used: every domain boots cold.
        self.start = Start.COLD
        self._ssh: GuestSsh | None = None
        self._start = 0.0
        self._lock = threading.Lock()

    def launch(self) -> None:
        """createXML, then read back QEMU's argv and the SSH port QEMU bound."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        xml = render_domain_xml(self.spec)
        (self.log_dir / "domain.xml").write_text(xml)
        self._start = time.monotonic()
        try:
            self.dom = self.conn.createXML(xml, 0)
        except self.libvirt.libvirtError as exc:
            raise QemuFailed(
                f"{self.name}: libvirt could not start the domain: {error_text(exc)}",
                hint=f"see {self.log_dir / 'domain.xml'} and the libvirtd log",
                stderr_tail=tail_file(self.domain_log),
            ) from exc
        self.argv = self._qemu_argv()
        (self.log_dir / "command.txt").write_text(shell_quote_command(self.argv) + "\n")
        self.host_port = self._forwarded_port()

    def _qemu_argv(self) -> list[str]:
        # /proc has the exact argv; the domain log has it only shell-quoted.
        pid_file = DOMAIN_RUN_DIR / f"{self.name}.pid"
        try:
            pid = int(pid_file.read_text().strip())
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
            self.pid = pid
        except (OSError, ValueError) as exc:
            check_alive(self)
            raise QemuFailed(f"{self.name}: cannot read QEMU's command line: {exc}",
                             hint=f"see {self.domain_log}") from exc
        return [arg.decode(errors="surrogateescape") for arg in raw.split(b"\0") if arg]

    def _forwarded_port(self) -> int:
        try:
            text = self.libvirt_qemu.qemuMonitorCommand(
                self.dom, "info usernet", self.libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP
            )
        except self.libvirt.libvirtError as exc:
            check_alive(self)
            raise QemuFailed(f"{self.name}: 'info usernet' failed: {error_text(exc)}",
                             command=self.argv) from exc
        port = forwarded_port(str(text))
        if port is None:
            raise QemuFailed(
                f"{self.name}: QEMU did not report the SSH port forward in 'info usernet'",
                hint="is this QEMU built with slirp (user networking)?",
                command=self.argv, stderr_tail=str(text),
            )
        return port

    def is_running(self) -> bool:
        """True while QEMU runs (a transient domain vanishes when it stops).

        Read from /proc rather than asked of libvirtd: the boot wait polls this every
        few milliseconds, and two cores are busy emulating guests.
        """
        if self.pid is None:
            if self.dom is None:
                return False
            try:
                return bool(self.dom.isActive())
            except self.libvirt.libvirtError:
                return False
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return False
        return stat.rsplit(") ", 1)[-1][:1] not in ("Z", "X")

    def stopped(self) -> str | None:
        """None while QEMU runs, else how the domain ended."""
        return None if self.is_running() else "the domain stopped (QEMU exited)"

    def wait_ready(self) -> None:
        """Wait for the readiness line and an SSH session (``guest.wait_ready``), then
        mount the exports the kernel command line had no room for."""
        deadline = BootDeadline(self._start, self.timeouts.boot, self.host_port,
                                self.image.client_key, self.image.host_key_pub)
        self._ssh = wait_ready(self, deadline)
        mount_exports(self._ssh, self.ssh_mounts, restored=False, timeout=self.timeouts.command)
        self.boot_seconds = time.monotonic() - self._start

    def run(self, command: str, stdin: bytes = b"", timeout: float | None = None) -> CommandResult:
        """Run a shell command in the guest over SSH."""
        if self._ssh is None:
            self.wait_ready()
        assert self._ssh is not None
        return self._ssh.run(command, stdin=stdin, timeout=timeout or self.timeouts.command)

    def stderr_text(self) -> str:
        """QEMU's stderr so far (from the domain log, or its saved copy once destroyed)."""
        for path in (self.domain_log, self.saved_log):
            try:
                return qemu_output(path.read_text(errors="replace"))
            except OSError:
                continue
        return ""

    def kill(self) -> None:
        """Stop QEMU now (for Ctrl-C from another thread); shutdown() still cleans up."""
        with self._lock:
            if self.dom is not None:
                with contextlib.suppress(self.libvirt.libvirtError):
                    self.dom.destroy()

    def shutdown(self) -> None:
        """Close SSH, destroy the domain, keep its log. Safe to call twice."""
        try:
            if self._ssh is not None:
                self._ssh.close()
                self._ssh = None
            self.kill()
            self._wait_stopped()
        finally:
            self._save_log()

    def _wait_stopped(self) -> None:
        # libvirt appends "shutting down" once QEMU is gone; wait for it so QEMU's
        # last stderr lines have passed through virtlogd before the log is read.
        deadline = time.monotonic() + self.timeouts.shutdown
        while time.monotonic() < deadline:
            try:
                text = self.domain_log.read_text(errors="replace")
            except OSError:
                return
            if "shutting down, reason=" in text.rsplit("starting up libvirt", 1)[-1]:
                return
            time.sleep(0.02)
        self.progress(f"warning: {self.name}: no 'shutting down' line in {self.domain_log}")

    def _save_log(self) -> None:
        with contextlib.suppress(OSError):
            self.log_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.domain_log, self.saved_log)
            self.domain_log.unlink()
        # libvirtd logs each virtiofsd it started (its command line first) beside the
        # domain's log, on the private tmpfs that vanishes with the run: keep them.
        for log in DOMAIN_LOG_DIR.glob(f"{self.name}-*-virtiofsd.log"):
            with contextlib.suppress(OSError):
                shutil.copyfile(log, self.log_dir / log.name.removeprefix(f"{self.name}-"))
                log.unlink()
