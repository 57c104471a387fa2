"""Check families: what is observed of one export while its guest runs, and how it is judged.

A family is one kind of question asked of an export: ``ids`` (guest ids, QEMU's
messages, the harm of colliding ids, the witnesses), operations, cross-device moves,
runtime mounts, binds, remounts.  The run loop (``matrix``) is the same for
all of them: it builds the export, boots the guest, calls the family's ``observe``
while the guest runs (each export in turn, noting QEMU's stderr meanwhile), shuts
the guest down, then calls ``judge`` with everything QEMU printed.  A family adds a
module of its own and one entry in ``FAMILIES``; the matrix does not change.
The types a family implements live in ``family``, so a family module needs nothing
from here (no import cycle).
"""

from __future__ import annotations

from .config import Cache, ExportSpec, Mode
from .export import Export
from .family import CheckFamily, Judging, Observation
from .guest import Guest
from .harm import HarmProbe, harm_probe
from .ids_seen import IdsSeen, observe_ids, witnesses_of
from .live_checks import LIVE_FAMILIES
from .ops_checks import OPS_FAMILIES
from .oracle import HarmInput, Verdict, judge
from .plan import RunOptions

__all__ = ["FAMILIES", "CheckFamily", "IdsCheck", "Judging", "Observation"]


class IdsCheck:
    """Guest ids against host ids, QEMU's messages, the harm and the witnesses
    (``oracle.judge``)."""

    name = "ids"

    def observe(self, guest: Guest, spec: ExportSpec, export: Export,
                options: RunOptions) -> Observation:
        probe = _probe(spec, export)
        return Observation(observe_ids(guest, spec.mount_point, export.truth.paths, options,
                                       harm=probe.paths if probe else ()))

    def judge(self, judging: Judging, observation: Observation) -> Verdict:
        seen = observation.data
        assert isinstance(seen, IdsSeen)
        view = seen.view
        truth = judging.export.truth
        probe = _probe(judging.spec, judging.export)
        harm = None
        if probe is not None and view.harm is not None:
            harm = HarmInput(probe, view.harm, judging.spec.mount_point, Cache(judging.spec.cache))
        return judge(
            judging.plan.mode, judging.qemu_version, truth, view.observation, judging.stderr,
            witnesses_of(truth, seen),
            stderr_outside=judging.stderr_outside, command_failures=judging.command_failures,
            message_printed=judging.plan.message_printed, harm=harm,
            dmesg=seen.dmesg,
        )


def _probe(spec: ExportSpec, export: Export) -> HarmProbe | None:
    """The twins to probe for aliasing: none under forbid (the twins on other devices
    are denied) or on a single device (no twins)."""
    if spec.mode is Mode.FORBID:
        return None
    return harm_probe([device.relpath for device in export.devices], export.layout.loop)


FAMILIES: dict[str, CheckFamily] = {
    family.name: family for family in (IdsCheck(), *OPS_FAMILIES, *LIVE_FAMILIES)}
