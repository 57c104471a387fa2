"""What a cache-mode row rests on.  Pure, like every module of ``verdicts``.

* The premise: the guest mounted the export with the cache mode the row asked for
  (read back from its ``/proc/mounts``, ``agent.mounts``).  A row whose mount shows
  another mode, or none at all, judged some other question: it is inconclusive, its
  own findings kept as notes.
* The probe's power (``probe_power``): under remap with an inode cache (loose,
  fscache) the harm probe finding nothing only means something if the same probe,
  on the same QEMU and guest, finds the harm where it is predicted: under warn with
  the same cache mode on the same layout.  That is a rule over several rows, applied
  once every row of a QEMU and guest is judged; it never edits a verdict, it gives
  the row a finding of its own (``PowerFinding``).
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from dataclasses import dataclass, replace

from ..agent.mounts import MountedCache
from ..config import Cache, Check, Layout, Mode, RowKey
from ..host.truth import TWIN_DIR
from .common import Expectation, Status, Verdict
from .harm import Harm


def cache_premise(asked: Cache, mounted: MountedCache | None) -> str | None:
    """Why the row's premise failed (one line), or None when the guest mounted the
    export with the cache mode asked for."""
    if mounted is None:
        return (f"premise failed: the export is not in the guest's /proc/mounts, so its "
                f"cache mode (cache={asked.value} asked) is unknown and this row proves "
                f"nothing (inconclusive)")
    if mounted.cache is asked:
        return None
    shown = mounted.cache.value if mounted.cache else "a mode the harness does not ask for"
    return (f"premise failed: cache={asked.value} was asked but the guest's /proc/mounts "
            f"shows {mounted.spelling!r} ({shown}), so this row proves nothing "
            f"(inconclusive)")


def with_premise(verdict: Verdict, failure: str | None) -> Verdict:
    """``verdict`` made inconclusive by a failed premise, its own failures kept as notes
    ("not judged: ..."); an ERROR row stays an error (it judged nothing)."""
    if failure is None or verdict.status is Status.ERROR:
        return verdict
    notes = (*verdict.notes, *(f"not judged (premise failed): {f}" for f in verdict.failures))
    return replace(verdict, status=Status.INCONCLUSIVE, failures=(failure,), notes=notes)


@dataclass(frozen=True)
class PowerFacts:
    """What the power rule needs of one row: which QEMU and guest (``group``), the
    family, mode, behaviour, cache mode and layout, its status, and its harm probe's
    findings (None: no probe ran)."""

    group: str
    check: str  # a Check, or the check of a row no family made
    mode: Mode
    expectation: Expectation
    cache: Cache
    layout: Layout | None
    status: Status
    harm: Harm | None


@dataclass(frozen=True)
class PowerFinding:
    """The power rule's word on one row: a note, or (``inconclusive``) the reason the row
    proves nothing."""

    text: str
    inconclusive: bool = False


def predicted_harm_shown(harm: Harm) -> bool:
    """Whether the probe found harm where the prediction allows it: an aliased path, the
    cwd moving to a predicted twin directory, or ELOOP on a predicted path."""
    allowed = set(harm.predicted)
    if any(a.path in allowed for a in harm.aliased):
        return True
    if harm.cwd_moved and any(p in allowed for p in harm.probed if p.endswith(TWIN_DIR)):
        return True
    return any(path in allowed and code == errno.ELOOP for path, _, code in harm.errors)


def _subject(row: PowerFacts) -> bool:
    """A passing row whose clean probe needs proof of power: remap behaviour, an inode
    cache, a harm probe that ran."""
    return (row.check == Check.IDS and row.expectation is Expectation.UNIQUE_IDS
            and row.cache.reuses_inodes and row.harm is not None and row.status is Status.PASS)


def _finding(row: PowerFacts, partner: PowerFacts | None) -> PowerFinding:
    name = RowKey(Check.IDS, Mode.WARN, row.cache)
    where = "" if row.layout is Layout.STANDARD else f" on the {row.layout} layout"
    if partner is None or partner.harm is None:
        why = "no such row in this run" if partner is None else \
            f"that row was not probed ({partner.status.value})"
        return PowerFinding(
            f"the probe's power is not shown: nothing aliased here, which proves something "
            f"only next to a {name} row{where} on this QEMU that shows the predicted harm "
            f"({why}; run --modes remap,warn)")
    if predicted_harm_shown(partner.harm):
        return PowerFinding(f"the probe's power is shown: {name}{where} on this QEMU showed "
                            f"its predicted harm")
    return PowerFinding(
        f"the probe lost its power: {name}{where} on this QEMU did not show its predicted "
        f"harm, so finding nothing aliased here proves nothing (inconclusive)",
        inconclusive=True)


def probe_power(rows: Sequence[PowerFacts]) -> tuple[PowerFinding | None, ...]:
    """The power rule's finding for each row (None where the rule does not apply): a
    remap row with an inode cache is judged alongside the warn row of the same QEMU
    and guest, cache mode and layout."""
    partners = {(r.group, r.cache, r.layout): r for r in rows
                if r.check == Check.IDS and r.mode is Mode.WARN}
    return tuple(_finding(r, partners.get((r.group, r.cache, r.layout))) if _subject(r)
                 else None for r in rows)
