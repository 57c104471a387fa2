"""``multidevs-harness reproduce``: one guest in one mode, and the evidence a bug report needs.

Returns data; the CLI prints it (``Reproduction.text``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..agent.witnesses import TOOLS_DIR
from ..commands import byhand
from ..config import Cache, Layout, Mode
from ..direct.backend import QemuBackend
from ..environment import prepare
from ..host.layout import ExportLayout
from ..host.namespace import enter_private_namespace, in_user_namespace
from ..logs import log_root
from ..machine_options import MachineOptions
from ..plan import ExportPlan, GuestPlan
from ..pool import MOUNT_BASE, RunContext, run_guest
from ..progress import Progress, quiet
from ..qemu.spec import ExportSpec
from ..results import ResultRow
from ..run import load_known_issues
from ..verdicts.ids import Collision, IdsVerdict, collision_failure, ids_verdict
from ..verdicts.remap import remap_failures, remap_notes
from ..workers import LiveGuests
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
        # Each thing once: what the sections below say in full (each collision with the
        # model's explanation, the model's verdict) is left out of the list above them.
        below = said_below(ids) if ids is not None else frozenset()
        listed = [line for line in (*verdict.failures, *verdict.notes) if line not in below]
        lines = [f"mode {row.case}: {verdict.observed}",
                 f"expected: {verdict.expectation} -> {row.status.value.upper()}",
                 *(f"  - {line}" for line in listed),
                 *(["  - each collision, and the remap model's explanation of it: below"]
                   if any(line in below for line in verdict.failures) else []),
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
        plan = ExportPlan(mode, layout, cache=cache)
        rows = run_guest(run, GuestPlan(plan.row, (plan,)))
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


# --- the evidence as text (here, not in report: reproduce loads no report writers) ---


def witnesses_text(verdict: IdsVerdict) -> str:
    """Each witness's one line (for ``reproduce``)."""
    lines = ["witnesses (each tool run over the export in the guest, compared with the host):"]
    lines += [f"  {'intact' if w.intact else 'BROKEN' if w.ran else 'not run'}: {w.detail}"
              for w in verdict.witnesses] or ["  none run"]
    if verdict.witnesses:
        t = TOOLS_DIR
        lines.append(f"by hand, in the guest's mount: {t}/find . > /dev/null; {t}/du -ab . | "
                     f"tail -1; {t}/tar -cf - . | {t}/tar -tvf - | grep 'link to'; "
                     f"{t}/cp -a . /tmp/copy; {t}/rsync -aH ./ /tmp/rcopy/")
    return "\n".join(lines)


def said_below(verdict: IdsVerdict) -> frozenset[str]:
    """The failure and note lines that ``reproduce``'s sections say in full: each
    collision (the collision table), the model's explanation of each (beneath its
    collision) and the model's verdict (its own heading)."""
    remap = verdict.remap
    lines = {collision_failure(c) for c in verdict.collisions}
    if remap is not None:
        lines |= set(remap_failures(remap, (_files(c) for c in verdict.collisions)))
        lines |= set(remap_notes(remap))
    return frozenset(lines)


def _files(collision: Collision) -> frozenset[tuple[int, int]]:
    return frozenset((dev, ino) for _, dev, ino in collision.host_files)


def remap_text(verdict: IdsVerdict) -> list[str]:
    """What QEMU's remap should have given, as the model computes it (for
    ``reproduce``): whether the guest agrees, and why each predicted pair the guest
    did not show would collide (the ones it showed are explained in the collision
    table)."""
    remap = verdict.remap
    if remap is None:
        return []
    agree = ("the guest's ids equal the model's at all "
             f"{remap.compared} paths" if remap.agrees else
             "the guest's ids differ from the model's: " + "; ".join(remap.differences))
    shown = {_files(c) for c in verdict.collisions}
    unshown = [p for p in remap.predicted if p.files not in shown]
    lines = [f"remap model (QEMU's hw/9pfs/9p.c algorithm): {agree}"]
    if unshown:
        lines.append("  predicted, but not shown by the guest:")
    lines += [f"  {', '.join(map(repr, p.paths))}: {p.why}" for p in unshown]
    return [*lines, ""]


def harm_text(verdict: IdsVerdict) -> str:
    """What the harm probe found (for ``reproduce``): aliased paths, the cwd, the kernel
    log, and how to see it by hand in the guest."""
    harm = verdict.harm
    if harm is None:
        return "harm probe: not run (a single device, or forbid)"
    lines = ["aliased (path: what, from where):"]
    lines += [f"  {a.describe()}" for a in harm.aliased] or ["  nothing"]
    lines.append(f"cwd: {harm.cwd_detail}")
    lines += [f"access error: {path!r} {op} errno {code}" for path, op, code in harm.errors]
    lines.append("predicted to alias: " + (", ".join(map(repr, harm.predicted)) or "nothing"))
    lines += ["dmesg:", *(f"  {line}" for line in verdict.dmesg)] if verdict.dmesg else []
    if len(harm.probed) >= 4:
        # The agent's order: the held twin first; the directories are the last pair.
        held, other = harm.probed[-2], harm.probed[-1]
        up = "/".join([".."] * (held.count("/") + 1))
        lines.append(f"by hand, in the guest's mount: cat {harm.probed[0]} {harm.probed[1]}; "
                     f"cd {held}; ls {up}/{other}; readlink /proc/self/cwd; ls")
    return "\n".join(lines)


def collision_table(rows: Sequence[ResultRow]) -> str:
    """Guest id -> the distinct host files that share it, and beneath each the remap
    model's explanation where the model predicted it (for ``reproduce``)."""
    lines: list[str] = []
    for row in rows:
        ids = ids_verdict(row.verdict)
        why = {p.files: p.why for p in ids.remap.predicted} \
            if ids is not None and ids.remap is not None else {}
        for collision in ids.collisions if ids else ():
            dev, ino = collision.guest_id
            lines.append(f"guest (dev {dev}, ino {ino}) <- " + ", ".join(
                f"{path!r} (host dev {hdev}, ino {hino})"
                for path, hdev, hino in collision.host_files
            ))
            if _files(collision) in why:
                lines.append(f"    remap model: {why[_files(collision)]}")
    return "\n".join(lines) if lines else "no collisions"
