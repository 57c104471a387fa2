"""Check families: what is observed of one export while its guest runs, and how it is judged.

A family is one kind of question asked of an export: ``ids`` (guest ids, QEMU's
messages, the tar witness, and the harm colliding ids do through the guest's
inode cache: aliased twins, a moved cwd, the kernel's log) and, as they are added,
operations, cross-device moves, runtime mounts...  The run loop (``matrix``) is the same for
all of them: it builds the export, boots the guest, calls the family's ``observe``
while the guest runs (each export in turn, noting QEMU's stderr meanwhile), shuts
the guest down, then calls ``judge`` with everything QEMU printed.  A family adds a
module of its own and one entry in ``FAMILIES``; the matrix does not change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from .config import Cache, ExportSpec, Mode
from .export import Export
from .guest import Guest
from .harm import HarmProbe, harm_probe
from .observe import GuestView, collect
from .oracle import HarmInput, RejectionVerdict, Verdict, judge, judge_witness
from .plan import ExportPlan, RunOptions

Version = tuple[int, int, int]


@dataclass(frozen=True)
class Observation:
    """What a family saw of one export; ``data`` is the family's own record.

    ``tar_rc`` is kept here because rows report it whatever the family.
    """

    data: object
    tar_rc: int | None = None


@dataclass(frozen=True)
class Judging:
    """Everything a family's verdict may depend on, gathered once the guest is down."""

    plan: ExportPlan
    export: Export
    spec: ExportSpec
    qemu_version: Version
    stderr: str  # what QEMU wrote while this export alone was observed
    stderr_outside: str  # what it wrote outside every export's observation
    command_failures: Sequence[str]  # what is wrong with the generated command line


class CheckFamily(Protocol):
    """One family of checks (see the module docstring)."""

    name: str

    def observe(self, guest: Guest, spec: ExportSpec, export: Export,
                options: RunOptions) -> Observation:
        """Ask the running guest (and, if the family needs, the host) about ``export``."""
        ...

    def judge(self, judging: Judging, observation: Observation) -> Verdict | RejectionVerdict:
        """The verdict of this export; pure."""
        ...


class IdsCheck:
    """Guest ids against host ids, QEMU's messages and the tar witness (``oracle.judge``)."""

    name = "ids"

    def observe(self, guest: Guest, spec: ExportSpec, export: Export,
                options: RunOptions) -> Observation:
        probe = _probe(spec, export)
        view = collect(guest, spec.mount_point, export.truth.paths, options.witness,
                       options.passes, options.agent_threads,
                       harm=probe.paths if probe else ())
        return Observation(view, view.tar_rc)

    def judge(self, judging: Judging, observation: Observation) -> Verdict:
        view = observation.data
        assert isinstance(view, GuestView)
        truth = judging.export.truth
        probe = _probe(judging.spec, judging.export)
        harm = None
        if probe is not None and view.harm is not None:
            harm = HarmInput(probe, view.harm, judging.spec.mount_point, Cache(judging.spec.cache))
        return judge(
            judging.plan.mode, judging.qemu_version, truth, view.observation, judging.stderr,
            judge_witness(truth, view.extracted) if view.tar_ran else None,
            stderr_outside=judging.stderr_outside, command_failures=judging.command_failures,
            message_printed=judging.plan.message_printed, harm=harm, dmesg=view.dmesg,
        )


def _probe(spec: ExportSpec, export: Export) -> HarmProbe | None:
    """The twins to probe for aliasing: none under forbid (the twins on other devices
    are denied) or on a single device (no twins)."""
    if spec.mode is Mode.FORBID:
        return None
    return harm_probe([device.relpath for device in export.devices])


FAMILIES: dict[str, CheckFamily] = {IdsCheck.name: IdsCheck()}
