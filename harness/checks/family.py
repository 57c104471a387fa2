"""What a check family implements, and what it is given (see ``checks.registry``).

Kept apart from ``registry`` so that a family's own module can use these types
while the registry imports that module to register it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from ..guest.lifecycle import Guest
from ..host.truth import Export
from ..plan import ExportPlan, FamilyRules
from ..qemu.spec import ExportSpec
from ..verdicts.common import Verdict
from ..version import Version

# What one family sees of an export: its own record type (IdsSeen, CrossSeen, ...).
SeenT = TypeVar("SeenT")


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
    stderr_before: str = ""  # what it wrote before this export's observation began


class CheckFamily(Protocol[SeenT]):
    """One family of checks (see ``checks.registry``), typed by what it observes: the
    record ``observe`` returns is the one ``judge`` is given."""

    # Where its exports go and what it asks of them (modes, caches, transports,
    # whether it writes): the planner reads these and keeps no table of its own.
    rules: FamilyRules

    def observe(self, guest: Guest, spec: ExportSpec, export: Export,
                plan: ExportPlan) -> SeenT:
        """Ask the running guest (and, if the family needs, the host) about ``export``."""
        ...

    def judge(self, judging: Judging, seen: SeenT) -> Verdict:
        """The verdict of this export; pure."""
        ...
