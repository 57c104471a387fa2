"""What the ids check sees of one export, shared by the families judged like it
(``ids`` and ``bind``): one collection (harm probe, stat passes, kernel log), then
the witnesses."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .export import HostTruth
from .observe import GuestView, Shell, collect
from .plan import RunOptions
from .witnesses import Witness, WitnessRuns, judge_witnesses, run_witnesses


@dataclass(frozen=True)
class IdsSeen:
    """The collection (harm probe, stat passes, kernel log) and the witnesses run after
    it (None: not asked)."""

    view: GuestView
    witnesses: WitnessRuns | None

    @property
    def dmesg(self) -> str:
        """The guest kernel's log over the whole observation, witnesses included."""
        return self.view.dmesg + (self.witnesses.dmesg if self.witnesses else "")


def observe_ids(guest: Shell, mount_point: str, paths: Sequence[str], options: RunOptions,
                harm: Sequence[str] = ()) -> IdsSeen:
    """One export's ids (and ``harm`` pairs), then the witnesses if asked."""
    view = collect(guest, mount_point, paths, options.passes, options.agent_threads, harm=harm)
    return IdsSeen(view, run_witnesses(guest, mount_point, paths) if options.witness else None)


def witnesses_of(truth: HostTruth, seen: IdsSeen) -> tuple[Witness, ...]:
    """The witnesses judged against ``truth`` (the first stat pass says why a listing
    tool skipped a path)."""
    passes = seen.view.observation.passes
    return judge_witnesses(truth, seen.witnesses, passes[0] if passes else {})
