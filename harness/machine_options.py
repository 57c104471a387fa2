"""The machine a command runs its guests on, as the user names it (``MachineOptions``).

A pure module of its own: the plan (pure) carries one in its run options, and
``environment.prepare`` (which probes, builds and spawns) turns one into a prepared
environment.  In the plan it would make exec and reproduce, which plan nothing,
load the planner; in the environment it would make the plan impure.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .config import Accel


@dataclass(frozen=True)
class MachineOptions:
    """The machine a command runs its guests on, as a user names it: which QEMU, which
    guest recipe or kernel, which accelerator, cold or restored boots.  One type for
    run (once per ``--qemu`` and ``--guest``), exec, reproduce, the pytest plugin and
    the benchmark; ``environment.prepare`` turns it into a prepared Environment."""

    qemu: str | None = None
    accel: Accel = Accel.AUTO
    kernel: Path | None = None
    # A modules tree for a self-built --kernel.
    modules: Path | None = None
    # A guest recipe name (a folder of guests/); None: the default recipe.
    guest: str | None = None
    # Boot every guest cold instead of restoring a saved state.
    cold: bool = False
    # QEMU's firmware directories (-L, one each, in order); (): found beside the binary
    # or QEMU's own.
    qemu_datadirs: tuple[Path, ...] = ()
    # Whether guests serve virtiofs exports (a virtiofsd is then found once), and which
    # virtiofsd (--virtiofsd; None: the host's, else Debian trixie's, cached).
    virtiofs: bool = False
    virtiofsd: Path | None = None
