"""What a check family implements, and what it is given (see ``checks``).

Kept apart from the registry in ``checks`` so that a family's own module can use
these types while ``checks`` imports that module to register it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ..config import ExportSpec
from ..guest.lifecycle import Guest
from ..host.truth import Export
from ..plan import ExportPlan, RunOptions
from ..verdicts.ids import Verdict
from ..verdicts.ops import OpsVerdict
from ..verdicts.rejection import RejectionVerdict

Version = tuple[int, int, int]


@dataclass(frozen=True)
class Observation:
    """What a family saw of one export; ``data`` is the family's own record."""

    data: object


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
    """One family of checks (see ``checks``)."""

    name: str

    def observe(self, guest: Guest, spec: ExportSpec, export: Export,
                options: RunOptions) -> Observation:
        """Ask the running guest (and, if the family needs, the host) about ``export``."""
        ...

    def judge(self, judging: Judging,
              observation: Observation) -> Verdict | RejectionVerdict | OpsVerdict:
        """The verdict of this export; pure."""
        ...
