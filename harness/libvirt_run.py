"""The --via libvirt path: the same matrix, with every guest defined and started by libvirtd.

config -> export -> domain XML (``libvirt_domain``) -> a private libvirtd
(``libvirt_daemon``) -> transient domain -> the same SSH observations and oracle as
the direct path -> report, each result marked ``via="libvirt"`` and carrying the QEMU
command line libvirt generated, which must hold each export's ``multidevs``.  Then
the two refusals libvirt promises (multidevs on virtiofs, an invalid value).

Domains are transient (createXML) and destroyed when their case ends, on errors and
Ctrl-C too; every resource sits on an ExitStack, as on the direct path.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .config import BootMethod, GuestImage, Timeouts
from .errors import (
    GuestBootTimeout,
    GuestPanic,
    HarnessError,
    LibvirtError,
    QemuFailed,
    SshUnavailable,
)
from .guest import GuestView, collect
from .libvirt_daemon import (
    DOMAIN_LOG_DIR,
    DOMAIN_RUN_DIR,
    URI,
    Reaper,
    error_text,
    find_daemon,
    import_libvirt,
    libvirt_version,
    private_libvirt,
    require_root,
)
from .libvirt_domain import (
    Attempt,
    DomainSpec,
    Filesystem,
    forwarded_port,
    judge_rejection,
    multidevs_failures,
    qemu_output,
    rejection_specs,
    render_domain_xml,
)
from .machine import PANIC_MARKERS, READY_MARKER, tail
from .namespace import NamespaceKind, enter_private_namespace
from .oracle import judge, judge_witness
from .qemu import kernel_append, mount_options, shell_quote_command
from .report import CaseResult, RunReport
from .runner import (
    GuestCase,
    LiveGuests,
    build_report,
    default_jobs,
    enter_exports,
    error_results,
    plan_cases,
    run_cases,
)
from .session import Environment, log_root, prepare
from .ssh import CommandResult, GuestSsh, connect_with_retry

if TYPE_CHECKING:
    from .runner import RunOptions

Progress = Callable[[str], None]
VIA = "libvirt"

def _quiet(_: str) -> None:
    pass


# --- one guest ---------------------------------------------------------------------------


class LibvirtGuest:
    """A transient domain as a context manager: created on enter, destroyed on exit.

    Offers what ``guest.collect`` uses of a Machine (``run``, ``console_path``).
    libvirt's destroy is itself layered (SIGTERM, then SIGKILL after a grace
    period), so there is no separate soft stop; the guest holds no state to save.
    """

    def __init__(
        self,
        conn: Any,
        spec: DomainSpec,
        log_dir: Path,
        image: GuestImage,
        timeouts: Timeouts,
        progress: Progress = _quiet,
        reaper: Reaper | None = None,
    ) -> None:
        self.conn = conn
        self.reaper = reaper
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
        self.ssh_seconds: float | None = None
        self._ssh: GuestSsh | None = None
        self._start = 0.0
        self._lock = threading.Lock()

    def __enter__(self) -> LibvirtGuest:
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
                stderr_tail=tail(self.domain_log),
            ) from exc
        self.argv = self._qemu_argv()
        (self.log_dir / "command.txt").write_text(shell_quote_command(self.argv) + "\n")
        self.host_port = self._forwarded_port()

    def _qemu_argv(self) -> list[str]:
        # /proc has the exact argv; the domain log has it only shell-quoted.
        pid_file = DOMAIN_RUN_DIR / f"{self.name}.pid"
        try:
            pid = int(pid_file.read_text().strip())
            if self.reaper is not None:
                self.reaper.watch_guest(pid, self.name)
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
            self.pid = pid
        except (OSError, ValueError) as exc:
            self.check_alive()
            raise QemuFailed(f"{self.name}: cannot read QEMU's command line: {exc}",
                             hint=f"see {self.domain_log}") from exc
        return [arg.decode(errors="surrogateescape") for arg in raw.split(b"\0") if arg]

    def _forwarded_port(self) -> int:
        try:
            text = self.libvirt_qemu.qemuMonitorCommand(
                self.dom, "info usernet", self.libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP
            )
        except self.libvirt.libvirtError as exc:
            self.check_alive()
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

    def check_alive(self) -> None:
        """Raise GuestPanic / QemuFailed at once if the guest panicked or the domain ended."""
        console = tail(self.console_path, 60)
        if any(marker in console for marker in PANIC_MARKERS):
            raise GuestPanic(
                f"{self.name}: the guest kernel panicked", hint=f"see {self.console_path}",
                command=self.argv, stderr_tail=self.stderr_text()[-2000:],
                console_tail=console,
            )
        if not self.is_running():
            raise QemuFailed(
                f"{self.name}: the domain stopped (QEMU exited)",
                hint=f"see {self.domain_log} (copied to {self.saved_log})",
                command=self.argv, stderr_tail=self.stderr_text()[-2000:],
                console_tail=tail(self.console_path),
            )

    def wait_ready(self) -> GuestSsh:
        """Wait for the readiness line and an SSH session, both before one deadline."""
        deadline = self._start + self.timeouts.boot
        offset = 0
        buffer = b""
        while READY_MARKER.encode() not in buffer:
            self.check_alive()
            if time.monotonic() > deadline:
                raise self._boot_timeout("no readiness line on the serial console")
            try:
                with open(self.console_path, "rb") as handle:
                    handle.seek(offset)
                    chunk = handle.read()
            except FileNotFoundError:
                chunk = b""
            offset += len(chunk)
            buffer = (buffer + chunk)[-4096:]
            if READY_MARKER.encode() not in buffer:
                time.sleep(0.01)
        try:
            self._ssh = connect_with_retry(
                "127.0.0.1", self.host_port, self.image.client_key, self.image.host_key_pub,
                deadline, self.check_alive,
            )
        except SshUnavailable as exc:
            if type(exc) is not SshUnavailable:
                raise
            raise self._boot_timeout(exc.message) from exc
        self.ssh_seconds = time.monotonic() - self._start
        return self._ssh

    def _boot_timeout(self, what: str) -> GuestBootTimeout:
        return GuestBootTimeout(
            f"{self.name}: guest not ready within {self.timeouts.boot:.0f} s ({what})",
            hint=f"logs in {self.log_dir}; under TCG a loaded machine boots slowly",
            command=self.argv, stderr_tail=self.stderr_text()[-2000:],
            console_tail=tail(self.console_path),
        )

    def run(self, command: str, stdin: bytes = b"", timeout: float | None = None) -> CommandResult:
        """Run a shell command in the guest over SSH."""
        ssh = self._ssh if self._ssh is not None else self.wait_ready()
        return ssh.run(command, stdin=stdin, timeout=timeout or self.timeouts.command)

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


# --- cases -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Context:
    """What every case of one run shares."""

    conn: Any
    env: Environment
    prefix: str
    witness: bool
    passes: int
    cpus: int
    progress: Progress
    live: LiveGuests
    reaper: Reaper | None = None
    libvirt_version: str = ""


def run_case(ctx: _Context, case: GuestCase, log_dir: Path) -> list[CaseResult]:
    """Build the case's exports, start its domain, observe and judge every export."""
    env = ctx.env
    with ExitStack() as stack:
        exports = enter_exports(stack, case)
        specs = [spec for _, _, spec in exports]
        kernel = env.image.vmlinux if env.boot is BootMethod.PVH else env.image.vmlinuz
        domain = DomainSpec(
            name=f"{ctx.prefix}-{case.name.replace('+', '-')}",
            accel=env.accel.used,
            emulator=env.info.binary,
            kernel=kernel,
            initrd=env.image.initrd,
            cmdline=kernel_append(specs),
            console=log_dir / "console.log",
            filesystems=tuple(Filesystem.for_mode(s.tag, s.path, s.mode) for s in specs),
            vcpus=ctx.cpus,
        )
        ctx.progress(f"{case.name}: starting domain {domain.name} ({env.accel.used.value})")
        guest = stack.enter_context(
            LibvirtGuest(ctx.conn, domain, log_dir, env.image, env.timeouts, ctx.progress,
                         ctx.reaper)
        )
        ctx.live.add(guest)
        stack.callback(ctx.live.discard, guest)
        guest.wait_ready()
        ctx.progress(f"{case.name}: SSH up after {guest.ssh_seconds:.2f} s; observing")
        views: list[GuestView] = [
            collect(guest, spec.mount_point, export.truth, ctx.witness, ctx.passes)
            for _, export, spec in exports
        ]
        argv = guest.argv
        boot_seconds = guest.ssh_seconds
    # The domain is destroyed and its log complete: one QEMU per mode, so all of
    # its stderr belongs to this case.
    stderr = guest.stderr_text()
    command_problems = multidevs_failures(argv, [(s.path, s.mode.qemu_value) for s in specs])
    results = []
    for (item, export, spec), view in zip(exports, views, strict=True):
        tar = judge_witness(export.truth, view.extracted) if ctx.witness else None
        verdict = judge(item.mode, env.info.version.as_tuple(), export.truth,
                        view.observation, stderr, tar)
        problems = command_problems.get(spec.path, [])
        if problems:
            verdict = replace(verdict, passed=False, failures=verdict.failures + tuple(problems))
        results.append(CaseResult(
            case=item.label,
            verdict=verdict,
            boot_seconds=boot_seconds,
            log_dir=log_dir,
            via=VIA,
            qemu_command=shell_quote_command(argv),
            guest_command=f"mount -t 9p -o {mount_options(spec)} {spec.tag} {spec.mount_point}",
            extra={"tar_rc": view.tar_rc, "guest": case.name, "domain": domain.name,
                   "libvirt_version": ctx.libvirt_version},
        ))
    return results


def _run_one(ctx: _Context, root: Path, case: GuestCase) -> list[CaseResult]:
    log_dir = root / case.name
    try:
        return run_case(ctx, case, log_dir)
    except HarnessError as exc:
        ctx.progress(f"{case.name}: {exc.message}")
        return error_results(case, exc, log_dir, via=VIA)


# --- what libvirt must refuse ------------------------------------------------------------


def check_rejections(ctx: _Context, root: Path) -> list[CaseResult]:
    """Both refusals libvirt promises, each tried with defineXML and with createXML.

    Whatever libvirt wrongly accepts is undone at once (undefine, destroy); the
    definition would land in the private /etc/libvirt anyway.
    """
    libvirt, _ = import_libvirt()
    env = ctx.env
    results: list[CaseResult] = []
    log_dir = root / "rejections"
    log_dir.mkdir(parents=True, exist_ok=True)
    specs = rejection_specs(
        ctx.prefix, env.info.binary, env.image.vmlinux, env.image.initrd,
        log_dir / "console.log", log_dir, env.accel.used,
    )
    for case, (spec, mode, expectation, must_contain) in specs.items():
        xml = render_domain_xml(spec)
        (log_dir / f"{case}.xml").write_text(xml)
        attempts = [
            _attempt(libvirt, "defineXML", partial(ctx.conn.defineXML, xml), undo="undefine"),
            _attempt(libvirt, "createXML",
                     partial(ctx.conn.createXML, xml, libvirt.VIR_DOMAIN_START_PAUSED),
                     undo="destroy"),
        ]
        verdict = judge_rejection(mode, expectation, attempts, must_contain)
        ctx.progress(f"{case}: {'refused as promised' if verdict.passed else 'NOT refused'}")
        results.append(CaseResult(
            case=case, verdict=verdict, boot_seconds=None, log_dir=log_dir, via=VIA,
            extra={"libvirt_errors": {a.api: a.error for a in attempts},
                   "multidevs_attribute": spec.filesystems[0].multidevs,
                   "libvirt_version": ctx.libvirt_version},
        ))
    return results


def _attempt(libvirt: Any, api: str, call: Callable[[], Any], undo: str) -> Attempt:
    try:
        dom = call()
    except libvirt.libvirtError as exc:
        return Attempt(api, error_text(exc))
    with contextlib.suppress(libvirt.libvirtError):
        getattr(dom, undo)()
    return Attempt(api, None)


# --- the matrix --------------------------------------------------------------------------


def run_matrix_libvirt(options: RunOptions, progress: Progress) -> RunReport:
    """Run the matrix with every guest started through a private libvirtd.

    One guest per mode, plus the single-device control guest (the plan of ``plan_cases``
    with sharing off): QEMU's stderr reaches the harness through virtlogd, later than
    QEMU wrote it, so slicing one guest's stderr per export, as the direct path does,
    would not be exact.  Then the two refusals libvirt promises.  Raises LibvirtError
    (exit 2) when not root or when libvirt is missing.
    """
    require_root()
    import_libvirt()
    for daemon in ("libvirtd", "virtlogd"):
        find_daemon(daemon)
    started = time.monotonic()
    env = prepare(options.qemu, options.accel, options.kernel, progress)
    prefix = f"mdh-lv-{secrets.token_hex(3)}"
    reaper = Reaper(prefix)
    try:
        return _run_in_namespace(options, env, prefix, reaper, started, progress)
    finally:
        reaper.close()


def _run_in_namespace(
    options: RunOptions, env: Environment, prefix: str, reaper: Reaper, started: float,
    progress: Progress,
) -> RunReport:
    ns = enter_private_namespace()
    if ns.kind is not NamespaceKind.MOUNT:
        raise LibvirtError(
            f"--via libvirt needs a plain mount namespace, got {ns.kind.value}",
            hint="run as real root (not in a user namespace)",
        )
    progress(f"mounts and libvirt's state live in a private {ns.kind.value} namespace")
    if options.share:
        progress("--via libvirt boots one guest per mode (as with --isolate)")
    cases = plan_cases(options.modes, options.layout, options.control, share=False)
    jobs = options.jobs or default_jobs()
    with log_root(options.logs) as (root, failed):
        try:
            with private_libvirt(root / "libvirt", progress, prefix) as conn:
                version = libvirt_version(conn)
                progress(f"libvirt {version} at {URI}; domains {prefix}-*")
                ctx = _Context(conn, env, prefix, options.witness, options.passes,
                               options.guest_cpus, progress, LiveGuests(), reaper, version)
                results = run_cases(cases, partial(_run_one, ctx, root), jobs, ctx.live)
                results += check_rejections(ctx, root)
        except BaseException:
            failed[0] = True
            progress(f"logs kept in {root}")
            raise
        return build_report(env, results, options, started, root, failed, progress)
