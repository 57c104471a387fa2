"""The --via libvirt backend: guests defined and started by a private libvirtd.

The matrix is the same as on the direct path (``pool.run_guest``); what differs
is here: a libvirtd and virtlogd of the harness's own inside its private mount
namespace (``libvirt.daemon``), a transient domain per guest (``libvirt.guest``),
the rule that the QEMU command line libvirt generated carries each export's
``multidevs`` (fed to the verdicts), and the two refusals libvirt promises, which
are rows of their own kind.
"""

from __future__ import annotations

import contextlib
import secrets
import shlex
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from functools import partial
from pathlib import Path
from typing import Any

from ..config import BootMethod, Transport, Via
from ..environment import Environment
from ..errors import LibvirtError
from ..guest.lifecycle import Guest
from ..host.namespace import NamespaceKind, enter_private_namespace
from ..plan import GuestPlan, RunOptions
from ..progress import Progress
from ..qemu.cmdline import kernel_append, uses_virtiofs
from ..qemu.guest_mounts import kernel_exports, mounted_over_ssh
from ..qemu.spec import ExportSpec
from ..results import ResultRow
from ..verdicts.rejection import Attempt, RejectionCheck, judge_rejection
from .daemon import (
    URI,
    Reaper,
    error_text,
    find_daemon,
    import_libvirt,
    libvirt_version,
    private_libvirt,
    require_emulator,
    require_root,
)
from .domain import (
    JSON_DEVICE_SINCE,
    DomainSpec,
    Filesystem,
    multidevs_failures,
    rejection_specs,
    render_domain_xml,
    virtiofs_failures,
)
from .guest import LibvirtGuest


def preflight() -> None:
    """Fail in a second, before any image build, when libvirt cannot be used here.

    Raises LibvirtError (exit 2) when not root, or the bindings or daemons are missing.
    """
    require_root()
    import_libvirt()
    for daemon in ("libvirtd", "virtlogd"):
        find_daemon(daemon)


class LibvirtBackend:
    """Guests started as transient domains of a private libvirtd (``matrix.Backend``)."""

    via = Via.LIBVIRT
    # virtlogd hands QEMU's stderr on later than QEMU wrote it, so one guest's
    # stderr cannot be sliced per export: every mode gets a guest of its own.
    live_stderr = False

    def __init__(self, conn: Any, env: Environment, options: RunOptions, prefix: str,
                 version: str, progress: Progress,
                 virtiofsd: Path | None = None) -> None:
        self.conn = conn
        # The one path libvirtd runs as virtiofsd (``virtiofsd_binary``).
        self.virtiofsd = virtiofsd
        self.env = env
        self.cpus = options.guest_cpus
        self.prefix = prefix
        self.version = version
        self.progress = progress

    def start(
        self, plan: GuestPlan, exports: Sequence[ExportSpec], log_dir: Path
    ) -> AbstractContextManager[Guest]:
        env = self.env
        domain = DomainSpec(
            name=f"{self.prefix}-{plan.name.replace('+', '-')}",
            accel=env.accel.used,
            emulator=env.info.binary,
            kernel=env.image.vmlinux if env.boot is BootMethod.PVH else env.image.vmlinuz,
            initrd=env.image.initrd,
            cmdline=kernel_append(kernel_exports(exports)),
            console=log_dir / "console.log",
            filesystems=tuple(self._filesystem(s) for s in exports),
            vcpus=self.cpus,
            datadirs=env.datadirs,
            shared_memory=uses_virtiofs(exports),
            device_json=env.info.version >= JSON_DEVICE_SINCE,
        )
        self.progress(f"{plan.name}: starting domain {domain.name}")
        # No registration with the reaper: it knows the run's guests by their prefix.
        return LibvirtGuest(self.conn, domain, log_dir, env.image, env.timeouts,
                            self.progress, ssh_mounts=mounted_over_ssh(exports))

    def _filesystem(self, spec: ExportSpec) -> Filesystem:
        if spec.transport is Transport.VIRTIOFS:
            return Filesystem(spec.tag, spec.path, None, driver="virtiofs",
                              binary=self.virtiofsd)
        return Filesystem.for_mode(spec.tag, spec.path, spec.mode)

    def command_failures(
        self, guest: Guest, exports: Sequence[ExportSpec]
    ) -> Mapping[Path, Sequence[str]]:
        ninep = [(s.path, s.mode.qemu_value) for s in exports if s.transport is Transport.NINEP]
        virtiofs = [(s.path, s.tag) for s in exports if s.transport is Transport.VIRTIOFS]
        return {**multidevs_failures(guest.argv, ninep),
                **virtiofs_failures(guest.argv, virtiofs)}

    def facts(self, guest: Guest) -> tuple[tuple[str, str], ...]:
        return (("libvirt_version", self.version), ("domain", guest.name))

    def extra_rows(self, log_root: Path) -> list[ResultRow]:
        return check_rejections(self, log_root)


def virtiofsd_binary(command: Sequence[str], directory: Path) -> Path:
    """A script in ``directory`` that libvirt runs as virtiofsd: it writes the options
    libvirtd gave to the daemon's log (libvirt 9.0 does not) and execs ``command``
    with them.  A script, not the daemon, since trixie's virtiofsd runs through its
    own loader (``ld-linux ... --library-path ... virtiofsd``) and ``<binary>`` holds
    one path; exec keeps the daemon the process libvirtd started and stops."""
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / "virtiofsd"
    script.write_text(f'#!/bin/sh\necho "virtiofsd options from libvirtd: $*" >&2\n'
                      f'exec {shlex.join(command)} "$@"\n')
    script.chmod(0o755)
    return script


def check_rejections(backend: LibvirtBackend, log_root: Path) -> list[ResultRow]:
    """Both refusals libvirt promises, each tried with defineXML and with createXML.

    Whatever libvirt wrongly accepts is undone at once (undefine, destroy); the
    definition would land in the private /etc/libvirt anyway.
    """
    libvirt, _ = import_libvirt()
    env, conn = backend.env, backend.conn
    log_dir = log_root / "rejections"
    log_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for rejection in rejection_specs(backend.prefix, env.info.binary, env.image.vmlinux,
                                     env.image.initrd, log_dir / "console.log", log_dir,
                                     env.accel.used):
        xml = render_domain_xml(rejection.spec)
        (log_dir / f"{rejection.case}.xml").write_text(xml)
        attempts = [
            _attempt(libvirt, "defineXML", partial(conn.defineXML, xml), undo="undefine"),
            _attempt(libvirt, "createXML",
                     partial(conn.createXML, xml, libvirt.VIR_DOMAIN_START_PAUSED),
                     undo="destroy"),
        ]
        verdict = judge_rejection(rejection.attribute, rejection.driver,
                                  rejection.expectation, attempts, rejection.must_contain)
        backend.progress(f"{rejection.case}: "
                         f"{'refused as promised' if verdict.passed else 'NOT refused'}")
        rows.append(ResultRow(case=rejection.case, check=RejectionCheck.REJECTION,
                              via=Via.LIBVIRT, verdict=verdict, log_dir=log_dir,
                              environment=env.record,
                              backend=(("libvirt_version", backend.version),)))
    return rows


def _attempt(libvirt: Any, api: str, call: Callable[[], Any], undo: str) -> Attempt:
    try:
        dom = call()
    except libvirt.libvirtError as exc:
        return Attempt(api, error_text(exc))
    try:
        return Attempt(api, None)
    finally:
        # Undone whatever comes next (a Ctrl-C included); a SIGKILL leaves the paused
        # QEMU to the reaper, which knows it by the run's prefix.
        with contextlib.suppress(libvirt.libvirtError):
            getattr(dom, undo)()


@contextlib.contextmanager
def libvirt_backend(env: Environment, options: RunOptions, progress: Progress,
                    log_dir: Path) -> Iterator[LibvirtBackend]:
    """A private libvirtd (and virtlogd) for one run, stopped when the block ends.

    Needs real root in a plain mount namespace: libvirtd must see the export's
    mounts, which only exist in the harness's namespace.
    """
    prefix = f"mdh-lv-{secrets.token_hex(3)}"
    # Before any daemon or domain: from here on a SIGKILL leaves no QEMU of this run.
    reaper = Reaper(prefix)
    try:
        ns = enter_private_namespace()
        if ns.kind is not NamespaceKind.MOUNT:
            raise LibvirtError(
                f"--via libvirt needs a plain mount namespace, got {ns.kind.value}",
                hint="run as real root (not in a user namespace)",
            )
        progress(f"mounts and libvirt's state live in a private {ns.kind.value} namespace")
        with private_libvirt(log_dir / "libvirt", progress, prefix) as conn:
            version = libvirt_version(conn)
            progress(f"libvirt {version} at {URI}; domains {prefix}-*")
            require_emulator(conn, env.info.binary, version, log_dir / "libvirt" / "libvirtd.log")
            binary = virtiofsd_binary(env.virtiofsd.command, log_dir / "libvirt") \
                if env.virtiofsd is not None else None
            yield LibvirtBackend(conn, env, options, prefix, version, progress, binary)
    finally:
        reaper.close()
