"""What observing an export needs of a guest: a shell over SSH and its console log.  A
Protocol, so the check families work with either kind of guest (QEMU run directly, or
libvirt)."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from .ssh import CommandResult


class Shell(Protocol):
    """What a collection needs of a guest: a shell over SSH and its console log."""

    console_path: Path

    def run(
        self, command: str, stdin: bytes = b"", timeout: float | None = None
    ) -> CommandResult: ...
