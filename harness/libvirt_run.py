"""The --via libvirt path (placeholder until the libvirt work lands)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .errors import UsageError

if TYPE_CHECKING:
    from .report import RunReport
    from .runner import RunOptions


def run_matrix_libvirt(options: RunOptions, progress: Callable[[str], None]) -> RunReport:
    """Run the matrix through libvirtd."""
    raise UsageError("--via libvirt is not implemented yet", hint="use --via qemu")
