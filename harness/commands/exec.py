"""``multidevs-harness exec``: boot a guest with no export, run one command, shut down."""

from __future__ import annotations

import shlex
from collections.abc import Callable, Sequence
from pathlib import Path

from ..environment import Setup
from ..guest.ssh import CommandResult
from ..logs import log_root
from ..qemu.machine import Machine

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def exec_in_guest(
    command: Sequence[str],
    setup: Setup,
    *,
    logs: Path | None = None,
    progress: Progress = _quiet,
) -> CommandResult:
    """Boot a guest with no export, run ``command`` over SSH, shut the guest down."""
    env = setup.prepare(progress)
    with log_root(logs, "exec", progress) as log_dir:
        spec = env.machine_spec((), log_dir.path)
        progress(f"booting guest ({env.accel.used.value}); logs in {log_dir.path}")
        with Machine(spec, progress=progress, name="exec") as machine:
            machine.wait_ready()
            progress(f"guest ready in {machine.boot_seconds:.2f} s ({machine.start.value})")
            return machine.run(shlex.join(command))
