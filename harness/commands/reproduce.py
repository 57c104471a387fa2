"""``multidevs-harness reproduce``: one guest in one mode, and the evidence a bug report needs.

Returns data; the CLI prints it (``report.reproduction_text``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..commands import byhand
from ..config import (
    Cache,
    ExportLayout,
    ExportSpec,
    Layout,
    MachineOptions,
    Mode,
    Progress,
    quiet,
)
from ..environment import prepare
from ..host.namespace import enter_private_namespace, in_user_namespace
from ..logs import log_root
from ..plan import ExportPlan, GuestPlan, row_name
from ..pool import MOUNT_BASE, LiveGuests, RunContext, run_guest
from ..report import collision_table, harm_text, remap_text, witnesses_text
from ..results import ResultRow
from ..run import QemuBackend, load_known_issues
from ..verdicts.ids import ids_verdict
from .byhand import EXPORT_VAR


@dataclass(frozen=True)
class Reproduction:
    """One mode's result row, and how to do the same by hand."""

    row: ResultRow
    script: Path  # builds the export and runs QEMU on the user's terminal
    guest_hint: str  # how to look at the ids from inside that guest
    log_dir: Path

    def text(self) -> str:
        """What ``reproduce`` prints: the verdict, the collisions, the witnesses, the
        harm, QEMU's message and how to do it all again by hand."""
        row, verdict = self.row, self.row.verdict
        ids = ids_verdict(verdict)
        lines = [f"mode {row.case}: {verdict.observed}",
                 f"expected: {verdict.expectation} -> {row.status.value.upper()}",
                 *(f"  - {line}" for line in (*verdict.failures, *verdict.notes)),
                 "", "collisions (guest id <- host files):", collision_table([row])]
        if ids is not None:  # None: the guest never got as far as the ids rules
            lines += ["", *remap_text(ids), witnesses_text(ids), "", harm_text(ids),
                      f"QEMU message: {ids.qemu_message or '(none)'}"]
        if row.environment is not None:
            qemu = row.environment.qemu
            lines.append(f"QEMU {qemu.version} ({qemu.binary}); guest kernel "
                         f"{row.guest.kernel if row.guest else '-'}")
        lines += ["", "to reproduce by hand:",
                  f"  host:  sh {self.script}    (builds the export, then runs QEMU on "
                  "this terminal)",
                  f"  guest: {self.guest_hint}",
                  f"  the harness ran: {row.qemu_command}",
                  "", f"logs: {self.log_dir}"]
        return "\n".join(lines)


def reproduce(
    mode: Mode,
    layout: ExportLayout,
    machine: MachineOptions,
    *,
    cache: Cache = Cache.NONE,
    logs: Path | None = None,
    progress: Progress = quiet,
) -> Reproduction:
    """Boot one guest in ``mode`` with the export mounted ``cache``, judge it, and write
    a by-hand reproduction script."""
    env = prepare(machine, progress)
    enter_private_namespace()
    with log_root(logs, "reproduce", progress) as log_dir:
        log_dir.keep()  # the point of reproduce is the evidence
        run = RunContext(env, QemuBackend(env, 1, progress), log_dir.path, progress,
                         LiveGuests(), load_known_issues(None))
        name = row_name(mode, cache, layout.kind)
        plan = ExportPlan(name, mode, layout, cache=cache)
        rows = run_guest(run, GuestPlan(name, (plan,)))
        spec = ExportSpec(tag="mdh0", path=Path(EXPORT_VAR), mode=mode,
                          mount_point=f"{MOUNT_BASE}/mdh0", cache=cache,
                          readonly=layout.kind is Layout.EXPORT)
        machine_spec = env.machine_spec([spec], log_dir.path)
        script = log_dir.path / "reproduce.sh"
        script.write_text(byhand.script(machine_spec, spec, layout,
                                        root=os.geteuid() == 0 and not in_user_namespace()))
        script.chmod(0o755)
        return Reproduction(rows[0], script, byhand.guest_hint(machine_spec, spec),
                            log_dir.path)
