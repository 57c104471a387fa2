"""How a guest's QEMU ended (quit, killed, already gone) and where its stderr begins.

Here, stdlib only, and pure: the guest's lifecycle and QEMU's machine record it, and
the pure verdict on QEMU's end (``verdicts.qemu_end``) judges it, which must not load
anything that spawns or talks to a guest.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class EndHow(StrEnum):
    """How the harness's shutdown found and left QEMU."""

    QUIT = "quit"  # answered QMP quit (or was asked to) and exited by itself in time
    KILLED = "killed"  # still running at the quit's deadline: SIGKILLed by the harness
    GONE = "gone"  # had already exited when the harness came to stop it


@dataclass(frozen=True)
class QemuEnd:
    """How one guest's QEMU ended, and where its own stderr begins in the log (a
    rejected saved state's QEMU writes before it, and is not this guest's)."""

    how: EndHow
    status: int | None  # its exit status (negative: the signal); None: would not die
    stderr_from: int = 0
    quit_seconds: float = 0.0  # how long the harness waited after quit
