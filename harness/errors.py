"""One hierarchy of errors, each carrying what a user needs to act on it.

Every error has a ``message`` (what failed) and a ``hint`` (what to do about it).
The CLI prints both and exits with ``exit_code``: 2 for environment and usage
problems (the check could not run), 1 only for GuestCrashed, so CI can tell "the
harness could not run" from "a regression was found".
"""

from __future__ import annotations

from collections.abc import Sequence

# The process exit statuses (README, docs/usage.md): every held; QEMU or the guest kernel did the
# wrong thing; the check could not run or was inconclusive.  Here, not in results,
# so the CLI's start-up path needs no result schema (and no verdict vocabulary).
EXIT_OK = 0
EXIT_FAIL = 1
EXIT_ERROR = 2


class HarnessError(Exception):
    """Base of every error the harness raises on purpose."""

    exit_code = 2

    def __init__(self, message: str, hint: str = "", details: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.details = details

    def __str__(self) -> str:
        text = self.message
        if self.hint:
            text += f"\n  hint: {self.hint}"
        if self.details:
            text += "\n" + self.details.rstrip()
        return text


class UsageError(HarnessError):
    """A command-line argument or configuration value is out of range."""


class MissingPackages(HarnessError):
    """Host packages the guest recipe needs are not installed."""

    def __init__(self, packages: Sequence[str]) -> None:
        names = " ".join(sorted(packages))
        super().__init__(
            f"missing host packages: {names}",
            hint=f"run as root: apt-get install -y {names}   (or ./scripts/setup)",
        )
        self.packages = tuple(sorted(packages))


class ImageBuildError(HarnessError):
    """The guest image could not be built from its recipe."""


class ArchiveUnreachable(ImageBuildError):
    """The Debian archive (or mirror) the recipe's packages come from did not answer."""


class KernelReleaseError(HarnessError):
    """A kernel file's release string cannot be read."""


class KernelModulesMismatch(HarnessError):
    """The kernel and the modules meant to be loaded into it are different releases."""

    def __init__(self, kernel: str, modules: str, where: str) -> None:
        super().__init__(
            f"kernel release {kernel} does not match the modules' release {modules} "
            f"({where})",
            hint="the kernel refuses modules of another build; pass the modules tree of "
            "this kernel (image build --modules DIR, from make modules_install "
            "INSTALL_MOD_PATH=DIR) or build 9p and virtio into the kernel",
        )
        self.kernel = kernel
        self.modules = modules


class ReportWriteError(HarnessError):
    """A report (``--json``, ``--junit``) could not be written where it was asked for."""


class CacheDirError(HarnessError):
    """The image cache or log directory cannot be written."""


class QemuNotFound(HarnessError):
    """The QEMU binary does not exist or is not QEMU."""


class QemuTooOld(HarnessError):
    """The QEMU binary predates multidevs (4.2) or does not list it."""


class KvmUnavailable(HarnessError):
    """KVM was required (--accel kvm) but does not start a guest here."""


class NamespaceError(HarnessError):
    """Neither a private mount namespace nor a user namespace could be made."""


class ExportError(HarnessError):
    """The multi-device export could not be built on the host."""


class TreeError(ExportError):
    """A user's tree (``run --export``, ``predict``) cannot be walked: missing, not a
    directory, unreadable or larger than ``--max-paths``.  One line, saying what to do."""


class LayoutRequirementMissing(ExportError):
    """A host tool (mkfs.btrfs, mkfs.xfs, ...), /dev/fuse or a kernel filesystem that an
    export layout needs is missing; the message names it, the hint how to get it."""


class LayoutUnavailable(ExportError):
    """The layout cannot be built the way this harness runs at all, whatever is
    installed (loop devices from inside a user namespace): its rows are skipped, not
    failed.  The message is one line saying why."""


class ScriptedFsError(HarnessError):
    """The scripted FUSE filesystem did not come up, or its mount would not go away."""


class KernelModuleMissing(HarnessError):
    """The guest kernel lacks a module a transport needs (fuse, virtiofs)."""


class VirtiofsdError(HarnessError):
    """virtiofsd cannot be found, fetched, run or asked its version."""


class QemuFailed(HarnessError):
    """QEMU exited on its own (crash, bad option) while the harness needed it."""

    def __init__(
        self,
        message: str,
        *,
        hint: str = "",
        exit_code_qemu: int | None = None,
        command: Sequence[str] = (),
        stderr_tail: str = "",
        console_tail: str = "",
    ) -> None:
        parts = []
        if command:
            parts.append("  command: " + " ".join(command))
        if stderr_tail:
            parts.append("  qemu stderr (tail):\n" + indent(stderr_tail))
        if console_tail:
            parts.append("  guest console (tail):\n" + indent(console_tail))
        super().__init__(message, hint=hint, details="\n".join(parts))
        self.exit_code_qemu = exit_code_qemu
        self.command = tuple(command)
        self.stderr_tail = stderr_tail
        self.console_tail = console_tail


class QemuExitedEarly(QemuFailed):
    """QEMU exited before the guest was up (a missing firmware file, a bad option, a
    device it cannot make): the message carries QEMU's last words on stderr, the hint
    what to do about them."""


class GuestBootTimeout(QemuFailed):
    """The guest did not become reachable over SSH before the deadline."""


class GuestInitFailed(QemuFailed):
    """The guest's init reported a failed boot step (a module, 9p, the network, sshd)."""


class GuestPanic(QemuFailed):
    """The guest kernel panicked (QEMU powers off on panic with -no-reboot)."""


class GuestCrashed(HarnessError):
    """QEMU exited or the guest kernel panicked while an export was being observed.

    Unlike a guest that never booted (the check could not run), this is QEMU or the
    guest kernel doing the wrong thing under test: a failure, exit status 1.
    """

    exit_code = 1


class QmpError(HarnessError):
    """A QMP command failed or did not answer in time."""


class SshUnavailable(HarnessError):
    """The SSH session to the guest could not be opened or broke."""


class HostKeyMismatch(SshUnavailable):
    """The guest presented a host key other than the one pinned at build time."""


class GuestCommandTimeout(HarnessError):
    """A command in the guest did not finish before its deadline."""


class GuestOutputTooLarge(HarnessError):
    """A command in the guest printed more than the harness keeps (its output cap)."""


class GuestOutputError(HarnessError):
    """The guest agent's output broke its line protocol (truncated, garbled, miscounted)."""

    def __init__(
        self,
        message: str,
        hint: str = "",
        details: str = "",
        *,
        line_number: int | None = None,
        line: str = "",
    ) -> None:
        if line_number is not None:
            shown = line if len(line) <= 200 else line[:200] + "..."
            message = f"agent output line {line_number}: {message}: {shown!r}"
        super().__init__(
            message,
            hint=hint
            or "a bug in mdh-agent or a cut-off transfer; the raw output is in the test log",
            details=details,
        )
        self.line_number = line_number
        self.line = line


class LibvirtError(HarnessError):
    """libvirtd could not be reached or refused what the harness asked."""


def indent(text: str, prefix: str = "    ") -> str:
    """Every line of ``text`` behind ``prefix`` (for error details)."""
    return "\n".join(prefix + line for line in text.rstrip().splitlines())
