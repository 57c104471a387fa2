"""The rules a judged row needs more than its own export for: which known issue it
shows (or, passing, did not show), and the probe-power rule, judged across all of a
QEMU's rows once they are in.  Kept apart from ``pool``, which runs the guests: these
only read rows and verdicts, and run after the guest is gone."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from .config import VIRTIOFS_CACHE, VIRTIOFS_ROWS, Cache, Transport, VirtiofsCache
from .plan import ExportPlan
from .results import ResultRow
from .verdicts.cache import PowerFacts, probe_power
from .verdicts.common import Status, Verdict, expected_behaviour
from .verdicts.ids import ids_verdict
from .verdicts.known import KnownIssue, RowFacts, match, unreproduced
from .version import Version


def row_cache(plan: ExportPlan) -> Cache | VirtiofsCache:
    """The row's cache: 9p's cache= mode, or virtiofsd's --cache policy."""
    return VIRTIOFS_CACHE if plan.transport is Transport.VIRTIOFS else plan.cache


def known_issues_of(issues: Sequence[KnownIssue], plan: ExportPlan, verdict: Verdict,
                    qemu: Version, kernel: str
                    ) -> tuple[KnownIssue | None, tuple[KnownIssue, ...]]:
    """The known issue a failing row shows, and those a passing row did not show, on
    QEMU ``qemu`` and guest kernel release ``kernel``.  A virtiofs row has no multidevs
    mode: its setting (``virtiofs``, ``virtiofs-nosubmounts``) stands in the mode's
    place, with no expectation."""
    if not issues or verdict.status not in (Status.FAIL, Status.PASS):
        return None, ()
    ids = ids_verdict(verdict)
    remap = ids.remap if ids is not None else None
    virtiofs = plan.transport is Transport.VIRTIOFS
    facts = RowFacts(
        check=plan.check.value,
        mode=VIRTIOFS_ROWS[plan.submounts] if virtiofs else plan.mode.value,
        expectation=None if virtiofs else expected_behaviour(plan.mode, qemu).value,
        layout=plan.layout.kind.value, cache=row_cache(plan), qemu=qemu,
        kernel=kernel, failures=verdict.failures,
        remap_agrees=None if remap is None else remap.agrees,
        transport=plan.transport.value)
    if verdict.status is Status.FAIL:
        return match(issues, facts), ()
    return None, unreproduced(issues, facts)


def _power_facts(row: ResultRow, version: Version) -> PowerFacts | None:
    verdict = ids_verdict(row.verdict)
    # The rule pairs 9p rows by multidevs mode: virtiofs rows have neither.
    if (verdict is None or row.transport is not Transport.NINEP
            or not isinstance(row.cache, Cache) or row.guest is None):
        return None
    return PowerFacts(
        group=row.guest.name, check=row.check, mode=verdict.mode,
        expectation=expected_behaviour(verdict.mode, version), cache=row.cache,
        layout=row.layout, status=verdict.status, harm=verdict.harm)


def judge_power(rows: Sequence[ResultRow], version: Version) -> list[ResultRow]:
    """``rows`` (every row of one QEMU) with the probe-power rule's finding on each row
    it concerns (``verdicts.cache.probe_power``): it needs the other rows, so it runs
    once all of them are judged, and gives a row a finding instead of editing its
    verdict."""
    facts = [(row, _power_facts(row, version)) for row in rows]
    judged = [f for _, f in facts if f is not None]
    findings = iter(probe_power(judged))
    return [replace(row, power=next(findings)) if fact is not None else row
            for row, fact in facts]
