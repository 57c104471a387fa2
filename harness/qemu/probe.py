"""The QEMU binary probe: which QEMU a binary is and what it supports.

The probe runs the binary twice: ``--version`` (cheap, and it tells a non-QEMU
binary apart before anything else) and then a paused ``-machine none`` QEMU whose
QMP monitor says which ``-fsdev`` parameters it knows, which is how libvirt decides
whether ``multidevs`` may be used.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from qemu.qmp import ExecuteError

from ..config import MULTIDEVS_SINCE, SANDBOX_DENY
from ..errors import QemuNotFound, QemuTooOld, QmpError, indent
from ..proc import kill_process_group, spawn_tied, tail_text
from ..version import Version
from .cmdline import qmp_args, shell_quote_command
from .qmp import Qmp

DEFAULT_QEMU = "qemu-system-x86_64"
KVM_DEVICE = Path("/dev/kvm")
INSTALL_HINT = "install qemu-system-x86 or pass --qemu PATH"



# --- version ----------------------------------------------------------------------


@dataclass(frozen=True)
class QemuInfo:
    """What the probe learnt about one QEMU binary."""

    binary: Path
    version: Version
    multidevs_supported: bool
    sandbox_supported: bool
    kvm_device: bool
    # The distro build string from query-version, e.g. "Debian 1:7.2+dfsg-7+deb12u18".
    package: str = ""
    # Which of config.SANDBOX_DENY this binary's -sandbox can deny.
    sandbox_deny: tuple[str, ...] = ()
    # Whether ``-object help`` lists monitor-qmp (then -mon is not the current way:
    # QEMU 11.1 deprecates it; ``cmdline.qmp_args``).
    monitor_object: bool = False


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
    try:
        kind = path.stat().st_mode
    except FileNotFoundError:
        raise QemuNotFound(f"QEMU binary {path} does not exist", hint=INSTALL_HINT) from None
    except OSError as exc:  # a symbolic link loop, a path through a file
        raise QemuNotFound(f"QEMU binary {path} cannot be reached: {exc.strerror}",
                           hint=INSTALL_HINT) from exc
    if stat.S_ISDIR(kind):
        raise QemuNotFound(f"QEMU binary {path} is a directory",
                           hint="pass the qemu-system-x86_64 inside it (a build tree's "
                           "binary sits in its build/ folder)")
    if not stat.S_ISREG(kind):
        raise QemuNotFound(f"QEMU binary {path} is not a regular file", hint=INSTALL_HINT)
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
    if version < MULTIDEVS_SINCE:
        return QemuInfo(path, version, False, False, kvm)
    monitor_object = _has_monitor_object(path, max(deadline - time.monotonic(), 1.0))
    remaining = max(deadline - time.monotonic(), 1.0)
    answers = _query_over_qmp(path, remaining, qmp_log, monitor_object)
    try:
        qmp_version = Version.parse(_mapping(answers["version"]))
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
        sandbox_deny=tuple(n for n in SANDBOX_DENY if n in _parameter_names(answers["sandbox"])),
        monitor_object=monitor_object,
    )


def _has_monitor_object(path: Path, timeout: float) -> bool:
    """Whether the binary can make its QMP monitor an ``-object monitor-qmp``.

    Asked with ``-object help`` before any monitor exists, so the probe's own QEMU
    already starts with the monitor option the binary documents as current.  Object
    names are listed one per line, indented.
    """
    rc, output = _run_capture([str(path), "-object", "help"], timeout)
    return rc == 0 and any(line.strip() == "monitor-qmp" for line in output.splitlines())


def qemu_version(binary: Path | str = DEFAULT_QEMU, timeout: float = 15.0) -> tuple[
        Path, Version]:
    """``binary`` resolved and its version from ``--version`` alone (no QMP): enough
    for ``predict``, which starts no guest."""
    path = resolve_binary(binary)
    rc, output = _run_capture([str(path), "--version"], timeout)
    return path, _version_from_output(path, rc, output)


def require_multidevs(info: QemuInfo) -> None:
    """Raise QemuTooOld unless ``info`` says multidevs can be used (QEMU >= 4.2)."""
    hint = "install qemu-system-x86 >= 4.2 (Debian 11, Ubuntu 20.04 or later) or pass --qemu PATH"
    if info.version < MULTIDEVS_SINCE:
        raise QemuTooOld(
            f"{info.binary} is QEMU {info.version}; multidevs needs QEMU >= 4.2", hint=hint
        )
    if not info.multidevs_supported:
        raise QemuTooOld(
            f"{info.binary} is QEMU {info.version} but lists no 'multidevs' parameter for "
            "-fsdev (built without virtfs?); multidevs needs QEMU >= 4.2 with 9p support",
            hint=hint,
        )

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


def _version_from_output(path: Path, rc: int | None, output: str) -> Version:
    line = next((ln for ln in output.splitlines() if "QEMU" in ln and "version" in ln), None)
    status = "timed out" if rc is None else f"exited {rc}"
    if line is None:
        raise QemuNotFound(
            f"{path} is not QEMU: '{path.name} --version' {status} without a "
            "'QEMU emulator version' line",
            hint=INSTALL_HINT,
            details="  output (tail):\n" + indent(tail_text(output) or "(nothing)"),
        )
    try:
        return Version.parse(line)
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


def _query_over_qmp(path: Path, timeout: float, log: Path | None,
                    monitor_object: bool) -> dict[str, object]:
    """Ask a paused, machine-less QEMU for its version and option parameters."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    argv = [str(path), *_PROBE_ARGS, *qmp_args(theirs.fileno(), monitor_object)]
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
                + indent(tail_text(_read_all(stderr)) or "(nothing)"),
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


