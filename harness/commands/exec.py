"""``multidevs-harness exec``: boot a guest with no export, run one command, shut down."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path

from ..config import MachineOptions, Progress, quiet
from ..environment import prepare
from ..guest.ssh import CommandResult
from ..logs import log_root
from ..qemu.machine import Machine


def exec_in_guest(
    command: Sequence[str],
    machine: MachineOptions,
    *,
    logs: Path | None = None,
    progress: Progress = quiet,
) -> CommandResult:
    """Boot a guest with no export, run ``command`` over SSH, shut the guest down."""
    env = prepare(machine, progress)
    with log_root(logs, "exec", progress) as log_dir:
        spec = env.machine_spec((), log_dir.path)
        progress(f"booting guest ({env.accel.used.value}); logs in {log_dir.path}")
        with Machine(spec, progress=progress, name="exec") as guest:
            guest.wait_ready()
            progress(f"guest ready in {guest.boot_seconds:.2f} s ({guest.start.value})")
            return guest.run(shlex.join(command))
