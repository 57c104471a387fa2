"""``multidevs-harness exec``: boot a guest with no export, run one command, shut down."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path

from ..config import Accel
from ..environment import Environment, prepare
from ..errors import QemuFailed, SshUnavailable
from ..guest.ssh import CommandResult
from ..logs import log_root
from ..machine_options import MachineOptions
from ..progress import Progress, quiet
from ..qemu.machine import Machine


def exec_in_guest(
    command: Sequence[str],
    machine: MachineOptions,
    *,
    logs: Path | None = None,
    progress: Progress = quiet,
) -> CommandResult:
    """Boot a guest with no export, run ``command`` over SSH, shut the guest down.

    The accelerator may rest on a remembered "KVM works" (no liveness boot, the
    point of a one-second exec); should the guest then fail to come up under KVM,
    that answer is dropped, KVM is checked again and the guest booted once more on
    whatever that check decides, all said on the terminal.
    """
    env = prepare(machine, progress, trust_cached_kvm=True)
    try:
        return _boot_and_run(env, command, logs, progress)
    except (QemuFailed, SshUnavailable) as err:
        if env.accel.used is not Accel.KVM or not env.forget_kvm():
            raise
        progress(f"the guest failed under KVM, which was remembered as working "
                 f"({err.message}); forgot that, checking KVM again")
    return _boot_and_run(prepare(machine, progress), command, logs, progress)


def _boot_and_run(env: Environment, command: Sequence[str], logs: Path | None,
                  progress: Progress) -> CommandResult:
    with log_root(logs, "exec", progress) as log_dir:
        spec = env.machine_spec((), log_dir.path)
        progress(f"booting guest ({env.accel.used.value}); logs in {log_dir.path}")
        with Machine(spec, progress=progress, name="exec") as guest:
            guest.wait_ready()
            progress(f"guest ready in {guest.boot_seconds:.2f} s ({guest.start.value})")
            return guest.run(shlex.join(command))
