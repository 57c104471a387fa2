"""The QEMU binary probe and the command line, rendered by small pure functions.

Rendering is pure: each ``*_args`` function turns one device group of a
``MachineSpec`` into a list of strings, with each option and its value on one
line.  Every QemuOpts value the harness did not write itself is escaped (a comma
becomes ``,,``) so a path containing a comma survives.

The probe runs the binary twice: ``--version`` (cheap, and it tells a non-QEMU
binary apart before anything else) and then a paused ``-machine none`` QEMU whose
QMP monitor says which ``-fsdev`` parameters it knows, which is how libvirt decides
whether ``multidevs`` may be used.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from qemu.qmp import ExecuteError

from .config import Accel, BootMethod, ExportSpec, MachineSpec
from .errors import QemuNotFound, QemuTooOld, QmpError, UsageError
from .qmp import Qmp

DEFAULT_QEMU = "qemu-system-x86_64"
MACHINE_TYPE = "q35"
KVM_DEVICE = Path("/dev/kvm")
INSTALL_HINT = "install qemu-system-x86 or pass --qemu PATH"

# -fsdev ...,multidevs= first shipped in QEMU 4.2.
MULTIDEVS_MIN = (4, 2, 0)

# The 9p wire size.  131072 is Linux's own default since 5.15; stating it keeps older
# guest kernels off their 8 KiB default, which QEMU warns is slow.
TCG_CPU = "qemu64,+rdrand"
MSIZE = 131072

# x86 COMMAND_LINE_SIZE is 2048 including the terminating NUL.
_CMDLINE_MAX = 2047

# Measured under TCG (QEMU 7.2, Debian's 6.1 kernel, PVH, boot to a trivial init):
# 'cryptomgr.notests' skips the crypto self-tests, by initcall_debug the largest
# initcall (crypto_algapi_init, ~0.17 s of a ~1.5 s boot), and cut guest uptime at
# init by 0.2-0.3 s.  tsc=reliable, no_timer_check, mitigations=off and nokaslr made
# no difference above run-to-run noise, so they are not here.  'quiet' matters:
# every console line is an emulated UART write.
BASE_APPEND: tuple[str, ...] = ("console=ttyS0", "panic=-1", "quiet", "cryptomgr.notests")

# Tags and mount points travel through the kernel command line and a shell `for`
# loop in the guest init: no spaces, no quotes, no ':' (the field separator).
_SAFE_NAME = re.compile(r"[A-Za-z0-9_./-]+")
_SAFE_WORD = re.compile(r"[A-Za-z0-9_]+")
_VERSION_RE = re.compile(r"version\s+(\d+)\.(\d+)(?:\.(\d+))?", re.IGNORECASE)
_TAIL_CHARS = 2000


# --- version ----------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class QemuVersion:
    """A QEMU release number; ordered, so ``v >= QemuVersion(4, 2, 0)`` works."""

    major: int
    minor: int
    micro: int = 0

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.micro}"

    def as_tuple(self) -> tuple[int, int, int]:
        """``(major, minor, micro)``, for comparing with literal version tuples."""
        return (self.major, self.minor, self.micro)

    @classmethod
    def parse(cls, source: str | Mapping[str, object]) -> QemuVersion:
        """Read a version from ``--version`` text or a QMP ``query-version`` answer.

        Text: the first ``version X.Y[.Z]`` (so "QEMU emulator version 7.2.22
        (Debian ...)" gives 7.2.22).  Mapping: either the whole query-version
        return value or its ``qemu`` member.  Raises ValueError when nothing fits.
        """
        if isinstance(source, str):
            match = _VERSION_RE.search(source)
            if match is None:
                snippet = source.strip().splitlines()[0][:80] if source.strip() else "nothing"
                raise ValueError(f"no 'version X.Y.Z' in {snippet!r}")
            major, minor, micro = match.groups()
            return cls(int(major), int(minor), int(micro or 0))
        inner = source.get("qemu", source)
        if not isinstance(inner, Mapping):
            raise ValueError(f"query-version answer has no 'qemu' object: {source!r}")
        numbers = [inner.get(key) for key in ("major", "minor", "micro")]
        if not all(isinstance(n, int) and not isinstance(n, bool) for n in numbers):
            raise ValueError(f"query-version answer has no integer major/minor/micro: {source!r}")
        major_n, minor_n, micro_n = (int(str(n)) for n in numbers)
        return cls(major_n, minor_n, micro_n)


@dataclass(frozen=True)
class QemuInfo:
    """What the probe learnt about one QEMU binary."""

    binary: Path
    version: QemuVersion
    multidevs_supported: bool
    sandbox_supported: bool
    kvm_device: bool
    # The distro build string from query-version, e.g. "Debian 1:7.2+dfsg-7+deb12u18".
    package: str = ""

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready view for ``probe --json`` and the report."""
        return {
            "binary": str(self.binary),
            "version": str(self.version),
            "package": self.package,
            "multidevs_supported": self.multidevs_supported,
            "sandbox_supported": self.sandbox_supported,
            "kvm_device": self.kvm_device,
        }


# --- probe ------------------------------------------------------------------------


def resolve_binary(binary: Path | str) -> Path:
    """Turn a name on PATH or a path into an absolute path of an executable file.

    Raises QemuNotFound naming what was looked for.
    """
    text = str(binary)
    if "/" not in text:
        found = shutil.which(text)
        if found is None:
            raise QemuNotFound(
                f"QEMU binary {text!r} is not on PATH ({os.environ.get('PATH', '')})",
                hint=INSTALL_HINT,
            )
        return Path(found).absolute()
    path = Path(text).absolute()
    if not path.is_file():
        raise QemuNotFound(f"QEMU binary {path} does not exist", hint=INSTALL_HINT)
    if not os.access(path, os.X_OK):
        raise QemuNotFound(f"QEMU binary {path} is not executable", hint=INSTALL_HINT)
    return path


def kvm_device_usable(device: Path = KVM_DEVICE) -> bool:
    """True when ``/dev/kvm`` opens read-write; says nothing about guests running."""
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


def probe_qemu(
    binary: Path | str = DEFAULT_QEMU, timeout: float = 15.0, *, qmp_log: Path | None = None
) -> QemuInfo:
    """Find out which QEMU ``binary`` is and whether it knows multidevs and -sandbox.

    Runs ``--version`` first: a binary that prints no "QEMU ... version" line is not
    QEMU (QemuNotFound, with its output).  A version older than 4.2 is returned at
    once with ``multidevs_supported=False`` (and ``sandbox_supported=False``, not
    asked) without starting QMP, since such a QEMU cannot know the option;
    ``require_multidevs`` then turns that into QemuTooOld while ``probe --json`` can
    still report it.  Otherwise a paused ``-machine none`` QEMU is
    asked over QMP.  The probe process is always killed and reaped, even on errors.
    """
    path = resolve_binary(binary)
    deadline = time.monotonic() + timeout
    rc, output = _run_capture([str(path), "--version"], timeout)
    version = _version_from_output(path, rc, output)
    kvm = kvm_device_usable()
    if version < QemuVersion(*MULTIDEVS_MIN):
        return QemuInfo(path, version, False, False, kvm)
    remaining = max(deadline - time.monotonic(), 1.0)
    answers = _query_over_qmp(path, remaining, qmp_log)
    try:
        qmp_version = QemuVersion.parse(_mapping(answers["version"]))
    except ValueError as err:
        raise QemuNotFound(f"{path}: {err}", hint=INSTALL_HINT) from err
    package = _mapping(answers["version"]).get("package", "")
    return QemuInfo(
        binary=path,
        version=qmp_version,
        multidevs_supported="multidevs" in _parameter_names(answers["fsdev"]),
        sandbox_supported=answers["sandbox"] is not None,
        kvm_device=kvm,
        package=package.strip() if isinstance(package, str) else "",
    )


def require_multidevs(info: QemuInfo) -> None:
    """Raise QemuTooOld unless ``info`` says multidevs can be used (QEMU >= 4.2)."""
    hint = "install qemu-system-x86 >= 4.2 (Debian 11, Ubuntu 20.04 or later) or pass --qemu PATH"
    if info.version < QemuVersion(*MULTIDEVS_MIN):
        raise QemuTooOld(
            f"{info.binary} is QEMU {info.version}; multidevs needs QEMU >= 4.2", hint=hint
        )
    if not info.multidevs_supported:
        raise QemuTooOld(
            f"{info.binary} is QEMU {info.version} but lists no 'multidevs' parameter for "
            "-fsdev (built without virtfs?); multidevs needs QEMU >= 4.2 with 9p support",
            hint=hint,
        )


_PR_SET_PDEATHSIG = 1
# Looked up now, not in the forked child, where dlopen() could wait on a loader lock
# some other thread held at fork time.
_prctl = ctypes.CDLL(None, use_errno=True).prctl
# Held back in the parent while a child is forked (see spawn_tied).
HELD_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})


def _tie_to_parent() -> None:  # pragma: no cover - runs in the child after fork
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD_SIGNALS)
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    # The parent may already be gone between fork and prctl.
    if os.getppid() == 1:
        os._exit(1)


def spawn_tied(
    argv: Sequence[str],
    *,
    stdout: int | IO[bytes],
    stderr: int | IO[bytes],
    pass_fds: Sequence[int] = (),
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a session of its own, killed by the kernel if we die first.

    For the short-lived probe and liveness QEMUs: a SIGKILLed harness runs no
    ``finally``, and a paused probe or a KVM guest hung in nested virtualisation
    would otherwise run on forever.  SIGINT/SIGTERM are held during the fork: raised
    inside an at-fork hook, CPython would ignore them and the Ctrl-C would be lost.
    """
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, HELD_SIGNALS)
    try:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            pass_fds=tuple(pass_fds),
            start_new_session=True,
            preexec_fn=_tie_to_parent,  # noqa: PLW1509 - only sigmask and prctl, no locks
        )
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def kill_process_group(proc: subprocess.Popen[bytes], wait: float = 5.0) -> int | None:
    """SIGKILL the process group led by ``proc`` and reap the leader; return its status.

    The process must have been started with ``start_new_session=True``.  Killing the
    group, not just the leader, also ends helpers a wrapper script may have forked.
    The group id stays reserved while any member lives, so this is safe even after
    the leader exited.
    """
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    try:
        return proc.wait(timeout=wait)
    except subprocess.TimeoutExpired:
        # Uninterruptible sleep (D state) in the kernel: nothing more we can do.
        return None


def tail(data: bytes | str, limit: int = _TAIL_CHARS) -> str:
    """The last ``limit`` characters of some process output, decoded leniently."""
    text = data.decode(errors="replace") if isinstance(data, bytes) else data
    text = text.strip()
    return text if len(text) <= limit else "..." + text[-limit:]


def _run_capture(argv: Sequence[str], timeout: float) -> tuple[int | None, str]:
    # Output goes to a file, not a pipe: a child that forks and keeps the pipe open
    # cannot make us block on EOF, and nothing can fill a pipe buffer.
    with tempfile.TemporaryFile() as out:
        try:
            proc = spawn_tied(argv, stdout=out, stderr=subprocess.STDOUT)
        except OSError as err:
            raise QemuNotFound(f"cannot run {argv[0]}: {err}", hint=INSTALL_HINT) from err
        try:
            rc: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            rc = None
        finally:
            kill_process_group(proc)
        out.seek(0)
        return rc, out.read().decode(errors="replace")


def _version_from_output(path: Path, rc: int | None, output: str) -> QemuVersion:
    line = next((ln for ln in output.splitlines() if "QEMU" in ln and "version" in ln), None)
    status = "timed out" if rc is None else f"exited {rc}"
    if line is None:
        raise QemuNotFound(
            f"{path} is not QEMU: '{path.name} --version' {status} without a "
            "'QEMU emulator version' line",
            hint=INSTALL_HINT,
            details="  output (tail):\n" + _indent(tail(output) or "(nothing)"),
        )
    try:
        return QemuVersion.parse(line)
    except ValueError as err:
        raise QemuNotFound(
            f"{path}: cannot read a version from {line.strip()!r}", hint=INSTALL_HINT
        ) from err


_PROBE_ARGS: tuple[str, ...] = (
    "-machine", "none",
    "-nodefaults",
    "-no-user-config",
    "-display", "none",
    "-S",
)  # fmt: skip


def _query_over_qmp(path: Path, timeout: float, log: Path | None) -> dict[str, object]:
    """Ask a paused, machine-less QEMU for its version and option parameters."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    argv = [str(path), *_PROBE_ARGS, *qmp_args(theirs.fileno())]
    deadline = time.monotonic() + timeout
    with tempfile.TemporaryFile() as stderr:
        proc: subprocess.Popen[bytes] | None = None
        try:
            try:
                proc = spawn_tied(argv, stdout=subprocess.DEVNULL, stderr=stderr,
                                  pass_fds=(theirs.fileno(),))
            finally:
                # Our copy of QEMU's end must go, or QEMU dying would never look like
                # EOF on ours and we would wait out the whole timeout.
                theirs.close()
            with Qmp(ours, log_path=log) as qmp:
                try:
                    return _ask(qmp, deadline)
                finally:
                    if qmp.connected:
                        with contextlib.suppress(QmpError):
                            qmp.quit(timeout=1.0)
        except QmpError as err:
            rc = _exit_status_soon(proc)
            raise QemuNotFound(
                f"{path} printed a QEMU version but did not answer QMP "
                f"({'still running' if rc is None else f'exit status {rc}'}): {err.message}",
                hint="is it a wrapper script that drops arguments? " + INSTALL_HINT,
                details="  command: "
                + shell_quote_command(argv)
                + "\n  stderr (tail):\n"
                + _indent(tail(_read_all(stderr)) or "(nothing)"),
            ) from err
        except OSError as err:
            raise QemuNotFound(f"cannot run {path}: {err}", hint=INSTALL_HINT) from err
        finally:
            ours.close()
            if proc is not None:
                # A clean quit has usually ended it already; the grace keeps a QEMU
                # that is still tearing down from being SIGKILLed mid-exit for nothing.
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=1.0)
                kill_process_group(proc)


def _exit_status_soon(proc: subprocess.Popen[bytes] | None, grace: float = 0.5) -> int | None:
    # The kernel closes a dying process's files (our EOF) a moment before its exit
    # status can be collected; wait briefly so "exit status 1" is not misreported
    # as "still running".
    if proc is None:
        return None
    try:
        return proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        return None


def _ask(qmp: Qmp, deadline: float) -> dict[str, object]:
    def left() -> float:
        return max(deadline - time.monotonic(), 0.1)

    qmp.connect(timeout=left())
    return {
        "version": qmp.execute("query-version", timeout=left()),
        "fsdev": _option_parameters(qmp, "fsdev", left()),
        "sandbox": _option_parameters(qmp, "sandbox", left()),
    }


def _option_parameters(qmp: Qmp, option: str, timeout: float) -> object:
    """The option's query-command-line-options entry, or None if QEMU lacks it."""
    try:
        return qmp.execute("query-command-line-options", {"option": option}, timeout=timeout)
    except QmpError as err:
        # An error reply ("invalid option name") means "not built in"; a dead or
        # silent QEMU must still fail the probe.
        if isinstance(err.__cause__, ExecuteError):
            return None
        raise


def _parameter_names(answer: object) -> set[str]:
    names: set[str] = set()
    if not isinstance(answer, list):
        return names
    for entry in answer:
        if isinstance(entry, Mapping):
            for parameter in entry.get("parameters", ()):
                if isinstance(parameter, Mapping) and isinstance(parameter.get("name"), str):
                    names.add(parameter["name"])
    return names


def _mapping(value: object) -> Mapping[str, object]:
    if not isinstance(value, Mapping):
        raise QemuNotFound(f"query-version returned {value!r}, not an object", hint=INSTALL_HINT)
    return value


def _read_all(handle: IO[bytes]) -> bytes:
    handle.seek(0)
    return handle.read()


def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


# --- command-line rendering (pure) ------------------------------------------------


def escape_opt(value: str) -> str:
    """Escape a QemuOpts value: a comma would otherwise start the next option."""
    return value.replace(",", ",,")


def machine_args(spec: MachineSpec) -> list[str]:
    """Machine type, accelerator, CPU, memory and the "no defaults" switches.

    ``q35``, not ``pc``: measured under TCG (PVH, this image's init loading virtio
    modules, mounting two 9p exports, starting dropbear) q35 was ready in 1.81 s
    against 2.29 s (mean of 8 each; bzImage 4.41 s against 4.69 s).  On ``pc`` the
    guest routes each PCI INTx through an ACPI link device (LNKB..LNKD), whose AML
    costs 0.1-0.2 s apiece under TCG; q35 has fixed GSI links.  (With no PCI
    drivers loaded, pc booted about 0.1 s sooner, which is why the real init decided.)
    -nodefaults drops the default NIC, so no iPXE option ROM is loaded either.

    ``spec.tuned=False`` renders what a user would write by hand (default machine,
    CPU and devices): the benchmark's baseline.
    """
    if not spec.tuned:
        return [
            "-accel", spec.accel.value,
            "-m", str(spec.memory_mb),
            "-smp", str(spec.cpus),
            "-display", "none",
        ]  # fmt: skip
    args = [
        "-machine", MACHINE_TYPE,
        "-accel", spec.accel.value,
    ]  # fmt: skip
    if spec.accel is Accel.KVM:
        # The host CPU model avoids both feature warnings and slower emulated paths.
        args += ["-cpu", "host"]
    else:
        # RDRAND lets the guest kernel seed its CRNG at once (CONFIG_RANDOM_TRUST_CPU);
        # without it dropbear's getrandom() blocked ~1.4 s under TCG waiting for
        # jitter entropy, the largest single cost of boot-to-SSH.
        args += ["-cpu", TCG_CPU]
    args += [
        "-m", str(spec.memory_mb),
        "-smp", str(spec.cpus),
        "-nodefaults",
        "-no-user-config",
        "-display", "none",
        "-vga", "none",
    ]  # fmt: skip
    return args


def kernel_args(spec: MachineSpec, append: str) -> list[str]:
    """``-kernel`` (vmlinux for PVH, vmlinuz for bzImage), ``-initrd``, ``-append``.

    These three are taken verbatim by QEMU, not parsed as QemuOpts, so a comma in
    the path needs no escaping (checked on 7.2).
    """
    kernel = spec.image.vmlinux if spec.boot is BootMethod.PVH else spec.image.vmlinuz
    return [
        "-kernel", str(kernel),
        "-initrd", str(spec.image.initrd),
        "-append", append,
    ]  # fmt: skip


def fsdev_args(export: ExportSpec, index: int) -> list[str]:
    """One 9p export: ``-fsdev local,...`` and the ``virtio-9p-pci`` that carries it.

    ``multidevs=`` is left out for Mode.DEFAULT, which is what "not given" tests.
    """
    _check_name(export.tag, "9p mount tag")
    fsdev = [
        "local",
        f"id=fsdev{index}",
        f"path={escape_opt(str(export.path))}",
        f"security_model={escape_opt(export.security_model)}",
    ]
    if export.mode.qemu_value is not None:
        fsdev.append(f"multidevs={export.mode.qemu_value}")
    if export.readonly:
        fsdev.append("readonly=on")
    device = [
        "virtio-9p-pci",
        f"id=fs{index}",
        f"fsdev=fsdev{index}",
        f"mount_tag={escape_opt(export.tag)}",
    ]
    return [
        "-fsdev", ",".join(fsdev),
        "-device", ",".join(device),
    ]  # fmt: skip


def net_args(host_port: int, rom: bool = False) -> list[str]:
    """User-mode networking with the guest's SSH port on 127.0.0.1:``host_port`` only.

    ``host_port=0`` lets QEMU bind a free port itself, so no other process can take
    it between choosing and binding; ``info usernet`` then tells which (checked on
    7.2).  Binding to 127.0.0.1 keeps the guest's root login off the host's other
    networks.  ``romfile=`` (empty) skips loading the NIC's iPXE boot ROM.
    """
    if not 0 <= host_port <= 65535:
        raise UsageError(
            f"SSH forward port must be 0..65535 (0: QEMU picks), got {host_port}",
            hint="leave --ssh-port out to let QEMU pick a free one",
        )
    return [
        "-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{host_port}-:22",
        "-device", "virtio-net-pci,netdev=net0" + ("" if rom else ",romfile="),
    ]  # fmt: skip


def serial_args(console_path: Path) -> list[str]:
    """The guest's serial console (ttyS0) written to ``console_path``."""
    return [
        "-chardev", f"file,id=console,path={escape_opt(str(console_path))}",
        "-serial", "chardev:console",
    ]  # fmt: skip


def qmp_args(fd: int) -> list[str]:
    """A QMP monitor on an inherited, already connected socket ``fd`` (no path race).

    QEMU 7.2 accepts ``-chardev socket,fd=N`` for a connected socketpair end and
    greets on it at once (checked).
    """
    return [
        "-chardev", f"socket,id=qmp,fd={fd}",
        "-mon", "chardev=qmp,mode=control",
    ]  # fmt: skip


def sandbox_args(info: QemuInfo) -> list[str]:
    """``-sandbox on`` (seccomp: obsolete syscalls denied) when the binary has it."""
    return list(_SANDBOX_ON) if info.sandbox_supported else []


# Plain "on", as on 7.2 it boots the guest and serves 9p (checked).  libvirt's
# stricter elevateprivileges/spawn/resourcecontrol=deny set is not used: a denied
# syscall kills QEMU mid-test, and 9p's worker paths were not audited for it.
_SANDBOX_ON = ("-sandbox", "on")


def no_reboot_args() -> list[str]:
    """``-no-reboot``: with the guest's ``panic=-1`` a kernel panic ends QEMU at once."""
    return ["-no-reboot"]


def render_command(
    spec: MachineSpec,
    *,
    console_path: Path,
    qmp_fd: int | None,
    host_port: int,
    append: str,
    sandbox: bool = False,
) -> list[str]:
    """The whole QEMU argv for ``spec``, binary first.

    ``sandbox`` says whether this binary supports ``-sandbox``
    (``QemuInfo.sandbox_supported``); the option is rendered only when that holds
    and ``spec.sandbox`` asks for it.  ``qmp_fd=None`` leaves the monitor out (for a
    by-hand reproduction, where no inherited fd exists).
    """
    argv = [str(spec.qemu)]
    argv += machine_args(spec)
    argv += kernel_args(spec, append)
    for index, export in enumerate(spec.exports):
        argv += fsdev_args(export, index)
    argv += net_args(host_port, rom=not spec.tuned)
    argv += serial_args(console_path)
    if qmp_fd is not None:
        argv += qmp_args(qmp_fd)
    if spec.sandbox and sandbox:
        argv += _SANDBOX_ON
    argv += no_reboot_args()
    return argv


def mount_options(export: ExportSpec) -> str:
    """The guest's ``mount -t 9p -o`` options for ``export``, comma-joined."""
    if not _SAFE_WORD.fullmatch(export.cache):
        raise UsageError(
            f"9p cache mode {export.cache!r} is not a plain word",
            hint="use one of none, loose, fscache, mmap",
        )
    options = ["trans=virtio", "version=9p2000.L", f"cache={export.cache}", f"msize={MSIZE}"]
    if export.readonly:
        options.append("ro")
    return ",".join(options)


def kernel_append(exports: Iterable[ExportSpec], extra: Iterable[str] = ()) -> str:
    """The guest kernel command line: console, panic, speed-ups, one mdh_9p per export.

    Each export becomes ``mdh_9p=TAG:MOUNTPOINT:OPTS``, which the guest init parses
    from /proc/cmdline.  Tags and mount points may only use [A-Za-z0-9_./-] and mount
    points must be absolute; anything else raises UsageError.
    """
    items = list(BASE_APPEND)
    for export in exports:
        _check_name(export.tag, "9p mount tag")
        _check_name(export.mount_point, "guest mount point")
        if not export.mount_point.startswith("/"):
            raise UsageError(
                f"guest mount point {export.mount_point!r} is not absolute",
                hint="use a path such as /mnt/export",
            )
        items.append(f"mdh_9p={export.tag}:{export.mount_point}:{mount_options(export)}")
    for item in extra:
        if not item or any(ch.isspace() for ch in item) or '"' in item:
            raise UsageError(
                f"extra kernel argument {item!r} is empty or contains spaces or quotes",
                hint="pass one word per argument, e.g. --append loglevel=7",
            )
        items.append(item)
    line = " ".join(items)
    if len(line) > _CMDLINE_MAX:
        raise UsageError(
            f"the guest kernel command line would be {len(line)} bytes; x86 allows {_CMDLINE_MAX}",
            hint="use fewer exports or shorter tags and mount points",
        )
    return line


def shell_quote_command(argv: Sequence[str]) -> str:
    """One copy-pasteable shell line that runs ``argv`` exactly."""
    return shlex.join(argv)


def _check_name(value: str, what: str) -> None:
    if not _SAFE_NAME.fullmatch(value):
        raise UsageError(
            f"{what} {value!r} may only contain letters, digits and _ . / -",
            hint="it is passed on the kernel command line and parsed by the guest's shell",
        )
