"""One guest interface, and the boot wait every kind of guest shares.

A ``Guest`` is a running Linux guest the harness can observe, however it was
started: ``machine.Machine`` runs QEMU directly, ``libvirt.guest.LibvirtGuest`` has
libvirtd start it.  Both hand their boot to ``wait_ready`` below, so the readiness
line, panic detection, the init's own failure report and the boot deadline are
decided in this one place.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

from ..config import Start
from ..errors import (
    GuestBootTimeout,
    GuestInitFailed,
    GuestPanic,
    QemuExitedEarly,
    QemuFailed,
    SshUnavailable,
)
from ..proc import tail_file
from .bootlog import init_failure
from .end import QemuEnd
from .ssh import CommandResult, GuestSsh, connect_with_retry

# The guest init prints this once every step of its boot succeeded, or the other
# one, with the step and why, at the first step that failed.
READY_MARKER = "MDH-READY"
FAILED_MARKER = "MDH-FAILED"
_FAILED_GRACE_S = 1.0
# "end Kernel panic" lines contain it too.
PANIC_MARKERS = ("Kernel panic",)
_STAMP = re.compile(r"^\[\s*\d+\.\d+\]\s*")
_POLL_S = 0.01
# Console text held while waiting: enough for the init's steps and the kernel's
# complaints before them.
_CONSOLE_KEPT = 65536
# QEMU's stderr lines an exit before the guest is up quotes: its error, and a line of
# context before it where it gives one.
_LAST_WORDS = 3
# QEMU's words for a firmware file -L and its built-in directories do not hold
# (hw/i386/x86.c, hw/pci/pci.c, hw/core/loader.c), the file's name captured.
_FIRMWARE_MISSING = re.compile(r"could not load PC BIOS '([^']+)'"
                               r"|failed to find romfile \"([^\"]+)\""
                               r"|Could not open option rom '([^']+)'")
# QEMU's words for a build without user networking (net/net.c), which the guest's SSH
# needs: QEMU 7.2 stopped bundling libslirp, so a build without libslirp-dev lacks it.
_NO_SLIRP = "network backend 'user' is not compiled into this binary"
# Where Debian's QEMU finds its firmware (its --firmwarepath), for the hint.
HOST_FIRMWARE_DIRS = ("/usr/share/qemu", "/usr/share/seabios", "/usr/lib/ipxe/qemu")


class Booting(Protocol):
    """What the shared boot wait needs to know of a guest being started."""

    name: str
    console_path: Path
    log_dir: Path

    @property
    def argv(self) -> Sequence[str]:
        """The QEMU command line that runs this guest."""
        ...

    def stopped(self) -> str | None:
        """None while QEMU runs; else how it ended ("QEMU exited with status 1")."""
        ...

    def stderr_text(self) -> str:
        """Everything QEMU wrote to stderr so far."""
        ...


class Guest(Booting, Protocol):
    """A running guest: a shell over SSH, its console log and QEMU's stderr."""

    start: Start  # booted cold or restored from a saved state

    @property
    def boot_seconds(self) -> float | None:
        """Seconds from QEMU's start to an SSH session; None before one was opened."""
        ...

    def wait_ready(self) -> None:
        """Block until the guest accepts SSH; raise a HarnessError if it never will."""
        ...

    def run(
        self, command: str, stdin: bytes = b"", timeout: float | None = None
    ) -> CommandResult:
        """Run a shell command in the guest over SSH."""
        ...

    def kill(self) -> None:
        """Stop the guest at once (for Ctrl-C from another thread)."""
        ...


@runtime_checkable
class Ended(Protocol):
    """A guest whose QEMU is the harness's own child, so how it ended is known
    (``machine.Machine``; libvirt's QEMU is libvirtd's child, and is not)."""

    @property
    def end(self) -> QemuEnd | None:
        """How shutdown found and left QEMU; None before shutdown ran."""
        ...


def qemu_end(guest: Booting) -> QemuEnd | None:
    """How ``guest``'s QEMU ended, where its backend can tell; else None."""
    return guest.end if isinstance(guest, Ended) else None


class Launched:
    """The lifecycle both kinds of guest share: ``launch`` on enter, ``shutdown`` on
    exit, and ``shutdown`` too when ``launch`` itself fails half-way (Ctrl-C included),
    so nothing started is left behind."""

    def launch(self) -> None:
        raise NotImplementedError

    def shutdown(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
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


@dataclass(frozen=True)
class BootDeadline:
    """When the boot started, how long it may take, and how to reach the guest: its
    forwarded SSH port, the key the harness logs in with and the guest's pinned host
    key (both from the image: the paths alone, so a guest needs nothing of how images
    are built)."""

    started: float
    seconds: float
    host_port: int
    client_key: Path
    host_key_pub: Path


def check_alive(guest: Booting, *, up: bool = False) -> None:
    """Raise GuestPanic at once if the guest panicked; if QEMU ended, QemuExitedEarly
    (its last words on stderr and what to do about them) while the guest is coming
    up, QemuFailed once it is ``up`` (the caller says what it was doing)."""
    console = tail_file(guest.console_path, 60)
    if any(marker in console for marker in PANIC_MARKERS):
        # Name the panic (and, under oops=panic, the oops behind it) where the console
        # shows it: "panicked" alone sends the reader to the log.
        said = [_STAMP.sub("", line.strip()) for line in console.splitlines()
                if any(marker in line for marker in PANIC_MARKERS)
                and not line.lstrip().startswith("---[ end")]
        raise GuestPanic(
            f"{guest.name}: the guest kernel panicked"
            + (f" ({said[0][:200]!r})" if said else ""),
            hint=f"see {guest.console_path}",
            command=guest.argv,
            stderr_tail=guest.stderr_text()[-2000:],
            console_tail=console,
        )
    ended = guest.stopped()
    if ended is None:
        return
    stderr = guest.stderr_text()
    if up:
        raise QemuFailed(f"{guest.name}: {ended}", hint=f"see {guest.log_dir}",
                         command=guest.argv, stderr_tail=stderr[-2000:],
                         console_tail=tail_file(guest.console_path))
    said = last_words(stderr)
    raise QemuExitedEarly(
        f"{guest.name}: {ended}" + (f": {' / '.join(said)}" if said else " (nothing on stderr)"),
        hint=early_exit_hint(said, guest.argv, guest.log_dir),
        command=guest.argv,
        stderr_tail=stderr[-2000:],
        console_tail=tail_file(guest.console_path),
    )


def last_words(stderr: str, lines: int = _LAST_WORDS) -> list[str]:
    """The last ``lines`` non-blank lines QEMU wrote to stderr: QEMU says why it
    could not start in one line per error, as its last output."""
    return [line.strip() for line in stderr.splitlines() if line.strip()][-lines:]


def early_exit_hint(said: Sequence[str], argv: Sequence[str], log_dir: Path) -> str:
    """What to do about QEMU's last words: a firmware file it could not find names
    the option that gives QEMU its firmware directories, and where this run looked; a
    build without user networking names the configure option."""
    for line in said:
        found = _FIRMWARE_MISSING.search(line)
        if found is None:
            continue
        name = next(group for group in found.groups() if group)
        given = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "-L"]
        where = (f"-L {' -L '.join(given)} has no {name!r}" if given
                 else f"QEMU's own directories have no {name!r}")
        return (f"QEMU did not find its firmware: {where}; pass the directory that holds "
                f"it with --qemu-datadir DIR (repeatable; Debian's QEMU looks in "
                f"{', '.join(HOST_FIRMWARE_DIRS)}); logs in {log_dir}")
    if any(_NO_SLIRP in line for line in said):
        return (f"this QEMU has no user networking, which the guest's SSH needs: configure "
                f"it with --enable-slirp (libslirp-dev; scripts/build-qemu does); logs in "
                f"{log_dir}")
    return f"QEMU's own words are above; its stderr and command line are in {log_dir}"


def wait_ready(guest: Booting, deadline: BootDeadline) -> GuestSsh:
    """Wait for the readiness line, then an SSH session, both before one deadline.

    Returns the open session.  A panic or an exited QEMU ends the wait at once;
    a silent guest ends it at the deadline with the console tail in the error.
    """
    wait_console(guest, deadline)
    return connect(guest, deadline)


def wait_console(guest: Booting, deadline: BootDeadline) -> None:
    """Wait for the init's readiness line (or its report of a failed step)."""
    _wait_console(guest, deadline.started + deadline.seconds, deadline.seconds)


def connect(guest: Booting, deadline: BootDeadline) -> GuestSsh:
    """An SSH session to the guest before the deadline, its host key pinned."""
    until = deadline.started + deadline.seconds
    try:
        return connect_with_retry(
            "127.0.0.1", deadline.host_port, deadline.client_key,
            deadline.host_key_pub, until, lambda: check_alive(guest),
        )
    except SshUnavailable as exc:
        if type(exc) is not SshUnavailable:  # a wrong host key is no timeout
            raise
        raise boot_timeout(guest, deadline.seconds, exc.message) from exc


def _wait_console(guest: Booting, until: float, seconds: float) -> None:
    """Read the console as it grows until the init says ready, or says which step failed.

    A failed step ends the wait at once (GuestInitFailed with the init's own
    account), not at the deadline with an SSH error that hides the reason.
    """
    offset = 0
    text = ""
    failed_at: float | None = None
    while True:
        check_alive(guest)
        try:
            with open(guest.console_path, "rb") as handle:
                handle.seek(offset)
                chunk = handle.read()
        except FileNotFoundError:
            chunk = b""
        offset += len(chunk)
        text = (text + chunk.decode(errors="replace"))[-_CONSOLE_KEPT:]
        failure = init_failure(text) if chunk or failed_at is not None else None
        if failure is not None:
            # The step's report can be read a moment before the init's last line
            # (MDH-FAILED with the detail); wait briefly for it so the error is whole.
            failed_at = failed_at or time.monotonic()
            if FAILED_MARKER in failure or time.monotonic() - failed_at > _FAILED_GRACE_S:
                raise _init_failed(guest, failure)
        elif chunk and READY_MARKER in text:
            return
        if time.monotonic() > until:
            raise boot_timeout(guest, seconds, "no readiness line on the serial console")
        time.sleep(_POLL_S)


def _init_failed(guest: Booting, failure: str) -> GuestInitFailed:
    last = failure.strip().splitlines()[-1].strip()
    return GuestInitFailed(
        f"{guest.name}: the guest's init failed: {last}",
        hint=f"the guest image does not fit this kernel or QEMU; logs in {guest.log_dir}",
        command=guest.argv,
        stderr_tail=guest.stderr_text()[-2000:],
        console_tail=failure,
    )


def boot_timeout(guest: Booting, seconds: float, what: str) -> GuestBootTimeout:
    """The error of a guest that was not ready in time, with its console tail."""
    return GuestBootTimeout(
        f"{guest.name}: guest not ready within {seconds:.0f} s ({what})",
        hint=f"logs in {guest.log_dir}; under TCG a loaded machine boots slowly "
        "(MDH_TIMEOUT_SCALE=2 doubles every deadline)",
        command=guest.argv,
        stderr_tail=guest.stderr_text()[-2000:],
        console_tail=tail_file(guest.console_path),
    )
