"""Choosing the accelerator: KVM when it really runs a guest here, TCG otherwise.

An openable ``/dev/kvm`` is not enough: under nested virtualisation KVM guests can
hang before the kernel prints a single line.  So KVM is only used after a short
liveness boot showed the kernel's banner on the serial console.  Whenever AUTO
ends on TCG the decision says so (``fell_back``), for the terminal and the report.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ..config import Accel
from ..errors import KvmUnavailable
from ..proc import kill_process_group, spawn_tied, tail_text
from .cmdline import MACHINE_TYPE, datadir_args, escape_opt
from .probe import QemuInfo

Liveness = Callable[[], tuple[bool, str]]

# Under working KVM a PVH vmlinux prints its banner within a fraction of a second;
# 4 s leaves a wide margin on a loaded runner without taxing every TCG run much.
DEFAULT_LIVENESS_TIMEOUT = 4.0
# The first line start_kernel() prints.  Anything before it (a bzImage's real-mode
# "Probing EDD" line, the decompressor) runs before KVM's trouble spots, so it is
# no proof that the kernel itself runs.
BANNER = b"Linux version"
_POLL_S = 0.05

_memo: dict[tuple[Path, Path], tuple[bool, str]] = {}

_NO_DEVICE = "/dev/kvm is missing or cannot be opened read-write"


@dataclass(frozen=True)
class AccelDecision:
    """The accelerator actually used and why (recorded in every report)."""

    used: Accel
    reason: str
    fell_back: bool = False


def decide_accel(requested: Accel, info: QemuInfo, liveness: Liveness) -> AccelDecision:
    """Resolve ``requested`` to KVM or TCG; ``liveness`` is called only when needed.

    TCG stays TCG.  KVM needs a usable /dev/kvm and a passing liveness check, else
    KvmUnavailable.  AUTO takes KVM when both hold and otherwise TCG with
    ``fell_back=True`` and the reason.
    """
    if requested is Accel.TCG:
        return AccelDecision(Accel.TCG, "TCG requested (--accel tcg)")
    if info.kvm_device:
        alive, detail = liveness()
    else:
        alive, detail = False, _NO_DEVICE
    if alive:
        return AccelDecision(Accel.KVM, f"KVM works: {detail}")
    if requested is Accel.KVM:
        raise KvmUnavailable(
            f"--accel kvm was requested but KVM cannot run a guest here: {detail}",
            hint="use --accel tcg or auto",
        )
    return AccelDecision(Accel.TCG, f"KVM unusable, fell back to TCG: {detail}", fell_back=True)


def kvm_liveness_probe(
    qemu: Path, kernel: Path, timeout: float = DEFAULT_LIVENESS_TIMEOUT,
    datadirs: Sequence[Path] = (),
) -> tuple[bool, str]:
    """Boot ``kernel`` under KVM and report whether its banner appears within ``timeout``.

    Returns ``(ok, detail)``; ``detail`` explains a failure in words fit for the
    report.  The result is remembered per (qemu, kernel) for the life of the
    process, since every machine of a run would otherwise pay the timeout again.
    """
    key = (Path(qemu).absolute(), Path(kernel).absolute())
    if key not in _memo:
        _memo[key] = boot_liveness(key[0], key[1], Accel.KVM, timeout, datadirs)
    return _memo[key]


def clear_liveness_memo() -> None:
    """Forget remembered liveness results (for tests)."""
    _memo.clear()


def boot_liveness(
    qemu: Path, kernel: Path, accel: Accel, timeout: float, datadirs: Sequence[Path] = ()
) -> tuple[bool, str]:
    """Start ``kernel`` with no initrd under ``accel``; watch the console for the banner.

    Not memoised; ``kvm_liveness_probe`` is the cached KVM form.  QEMU is killed
    (its whole process group) and reaped as soon as the answer is known.
    """
    # Unnamed temporary files: QEMU opens the console as /proc/self/fd/N (pass_fds
    # keeps the number), so nothing is left in TMPDIR even if the harness is
    # SIGKILLed mid-probe; spawn_tied makes sure QEMU dies with it then.
    with tempfile.TemporaryFile() as console_file, tempfile.TemporaryFile() as stderr:
        console = Path(f"/proc/self/fd/{console_file.fileno()}")
        argv = [str(qemu), *_liveness_args(kernel, accel, console, datadirs)]
        try:
            proc = spawn_tied(argv, stdout=subprocess.DEVNULL, stderr=stderr,
                              pass_fds=(console_file.fileno(),))
        except OSError as err:
            return False, f"cannot start {qemu}: {err}"
        try:
            return _watch(proc, console, stderr, timeout, accel)
        finally:
            kill_process_group(proc)


def _liveness_args(
    kernel: Path, accel: Accel, console: Path, datadirs: Sequence[Path]
) -> list[str]:
    # The same machine and CPU the real guest gets, so the check means something.
    args = datadir_args(datadirs)
    args += [
        "-machine", MACHINE_TYPE,
        "-accel", accel.value,
    ]  # fmt: skip
    if accel is Accel.KVM:
        args += ["-cpu", "host"]
    args += [
        "-m", "256",
        "-nodefaults",
        "-no-user-config",
        "-display", "none",
        "-vga", "none",
        "-kernel", str(kernel),
        # earlyprintk: the banner is printed before the real console is set up.
        "-append", "console=ttyS0 earlyprintk=ttyS0 panic=-1",
        "-chardev", f"file,id=console,path={escape_opt(str(console))}",
        "-serial", "chardev:console",
        "-no-reboot",
    ]  # fmt: skip
    return args


def _watch(
    proc: subprocess.Popen[bytes], console: Path, stderr: IO[bytes], timeout: float, accel: Accel
) -> tuple[bool, str]:
    started = time.monotonic()
    while True:
        # Poll before reading: a banner written just before QEMU exited is still seen.
        status = proc.poll()
        output = console.read_bytes()
        if BANNER in output:
            elapsed = time.monotonic() - started
            return True, f"a guest kernel printed its banner after {elapsed:.1f} s"
        if status is not None:
            stderr.seek(0)
            # One line: QEMU's assertion spans two, and the reason is printed in a
            # progress line, the summary and every report.
            why = " ".join(tail_text(stderr.read(), 300).split()) or "(no stderr)"
            return False, f"QEMU exited with status {status} under {accel.value.upper()}: {why}"
        if time.monotonic() - started >= timeout:
            return False, _silence_reason(output, timeout, accel)
        time.sleep(_POLL_S)


def _silence_reason(output: bytes, timeout: float, accel: Accel) -> str:
    name = accel.value.upper()
    if accel is Accel.KVM:
        prefix, suffix = "/dev/kvm opens but ", " (nested virtualisation?)"
    else:
        prefix, suffix = "", ""
    if output.strip():
        return (
            f"{prefix}the guest kernel did not print its banner within {timeout:g} s under "
            f"{name}, only boot-loader output {tail_text(output, 60)!r}{suffix}"
        )
    return f"{prefix}a guest kernel printed nothing within {timeout:g} s under {name}{suffix}"
