"""A toy check family, planted by ``test_toy_family``: all a new family brings is a
module like this one and one entry in the registry.  It counts the foreign devices it
was given and must see exactly two; it never runs in a guest."""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum
from typing import cast

from harness.checks.family import Judging
from harness.config import Check, Mode
from harness.guest.lifecycle import Guest
from harness.host.truth import Export
from harness.plan import FAMILY_LAYOUT, ExportPlan, FamilyRules, Placement
from harness.qemu.spec import ExportSpec
from harness.verdicts.common import Status, Verdict


class ToyName(StrEnum):
    TOY = "toy"


# ``Check`` is the command line's closed vocabulary (a real family adds its name there
# so that --checks accepts it); the planner, the registry and the report only use a
# family's name as a key and a string, which a name from outside it shows.
TOY = cast(Check, ToyName.TOY)


@dataclass(frozen=True)
class ToySeen:
    foreign: int


class ToyCheck:
    """Rules chosen to differ from every real family's: warn only, one export per
    inode-caching cache mode, over virtiofs too, mounting after start, three devices."""

    rules = FamilyRules(TOY, Placement.TRAILING, layout=replace(FAMILY_LAYOUT, devices=3),
                        only_mode=Mode.WARN, per_inode_cache=True, virtiofs=True,
                        mounts_after_start=True, witness=False)

    def observe(self, guest: Guest, spec: ExportSpec, export: Export,
                plan: ExportPlan) -> ToySeen:
        return ToySeen(len(export.devices) - 1)

    def judge(self, judging: Judging, seen: ToySeen) -> Verdict:
        held = seen.foreign == 2
        return Verdict(expectation="two foreign devices",
                       observed=f"{seen.foreign} foreign devices",
                       status=Status.PASS if held else Status.FAIL,
                       failures=() if held else (f"saw {seen.foreign} foreign devices, "
                                                 "expected 2",))
