"""``multidevs-harness reproduce``: one guest in one mode, and the evidence a bug report needs.

Returns data; the CLI prints it (``report.reproduction_text``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..commands import byhand
from ..config import Cache, ExportLayout, ExportSpec, Mode
from ..environment import Setup
from ..host.namespace import enter_private_namespace, in_user_namespace
from ..logs import log_root
from ..plan import IDS, ExportPlan, GuestPlan, RunOptions, row_name
from ..pool import MOUNT_BASE, LiveGuests, MatrixRun, run_guest
from ..results import ResultRow
from ..run import QemuBackend
from .byhand import EXPORT_VAR

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@dataclass(frozen=True)
class Reproduction:
    """One mode's result row, and how to do the same by hand."""

    row: ResultRow
    script: Path  # builds the export and runs QEMU on the user's terminal
    guest_hint: str  # how to look at the ids from inside that guest
    log_dir: Path


def reproduce(
    mode: Mode,
    layout: ExportLayout,
    setup: Setup,
    *,
    cache: Cache = Cache.NONE,
    logs: Path | None = None,
    progress: Progress = _quiet,
) -> Reproduction:
    """Boot one guest in ``mode`` with the export mounted ``cache``, judge it, and write
    a by-hand reproduction script."""
    env = setup.prepare(progress)
    enter_private_namespace()
    with log_root(logs, "reproduce", progress) as log_dir:
        log_dir.keep()  # the point of reproduce is the evidence
        options = RunOptions(modes=(mode,), layout=layout, caches=(cache,), checks=(IDS,))
        run = MatrixRun(env, QemuBackend(env, 1, progress), options, log_dir.path, progress,
                        LiveGuests())
        name = row_name(mode, cache)
        plan = ExportPlan(name, mode, layout, cache=cache.value)
        rows = run_guest(run, GuestPlan(name, (plan,)))
        spec = ExportSpec(tag="mdh0", path=Path(EXPORT_VAR), mode=mode,
                          mount_point=f"{MOUNT_BASE}/mdh0", cache=cache.value)
        machine_spec = env.machine_spec([spec], log_dir.path)
        script = log_dir.path / "reproduce.sh"
        script.write_text(byhand.script(machine_spec, spec, layout,
                                        root=os.geteuid() == 0 and not in_user_namespace()))
        script.chmod(0o755)
        return Reproduction(rows[0], script, byhand.guest_hint(machine_spec, spec),
                            log_dir.path)
