"""The result schema: one environment record and one result-row type for every output.

``probe --json``, ``run --json``, the JUnit properties and ``scripts/bench`` all
describe the environment with ``EnvironmentRecord``; every check of a run, whatever
its kind, is a ``ResultRow`` with a ``Status``.  ``report`` renders these, one
function per format; nothing else builds output dictionaries.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import errors
from .config import Cache, Check, Layout, Start, Transport, Via, VirtiofsCache
from .qemu.accel import AccelDecision
from .qemu.probe import QemuInfo
from .qemu.virtiofsd import Virtiofsd
from .verdicts.cache import PowerFinding
from .verdicts.common import Status, Verdict
from .verdicts.known import KnownIssue
from .verdicts.rejection import RejectionCheck

# The exit statuses live with the errors; named here too for the result's readers.
EXIT_OK, EXIT_FAIL, EXIT_ERROR = errors.EXIT_OK, errors.EXIT_FAIL, errors.EXIT_ERROR

# Every key of the environment block, dotted as in the JUnit properties.  The JSON
# outputs nest them ({"qemu": {"binary": ...}}); a unit test holds all four
# outputs to this list.
ENVIRONMENT_KEYS = (
    "qemu.binary",
    "qemu.version",
    "qemu.package",
    "qemu.multidevs_supported",
    "qemu.sandbox_supported",
    "qemu.kvm_device",
    "accel.used",
    "accel.reason",
    "accel.fell_back",
    "guest.name",
    "guest.kernel",
    "virtiofsd.binary",
    "virtiofsd.version",
    "virtiofsd.source",
)


@dataclass(frozen=True)
class EnvironmentRecord:
    """What was tested with: the QEMU, the accelerator and the guest.

    ``accel`` and the guest are None where they were not decided (``probe`` of a
    QEMU without multidevs boots nothing).
    """

    qemu: QemuInfo
    accel: AccelDecision | None
    guest_name: str | None
    guest_kernel: str | None
    # The virtiofsd of the virtiofs rows; None when the run has none.
    virtiofsd: Virtiofsd | None = None

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """The nested JSON block: ``{"qemu": {...}, "accel": {...}, "guest": {...}}``."""
        accel = self.accel
        return {
            "qemu": {
                "binary": str(self.qemu.binary),
                "version": str(self.qemu.version),
                "package": self.qemu.package,
                "multidevs_supported": self.qemu.multidevs_supported,
                "sandbox_supported": self.qemu.sandbox_supported,
                "kvm_device": self.qemu.kvm_device,
            },
            "accel": {
                "used": accel.used.value if accel else None,
                # One line: QEMU's own multi-line complaints are folded.
                "reason": " ".join(accel.reason.split()) if accel else None,
                "fell_back": accel.fell_back if accel else None,
            },
            "guest": {"name": self.guest_name, "kernel": self.guest_kernel},
            "virtiofsd": {
                "binary": self.virtiofsd.binary if self.virtiofsd else None,
                "version": self.virtiofsd.version if self.virtiofsd else None,
                "source": self.virtiofsd.source if self.virtiofsd else None,
            },
        }

    def properties(self) -> list[tuple[str, str]]:
        """The same facts flattened to ``("qemu.binary", "...")`` pairs, in schema order."""
        nested = self.as_dict()
        pairs = []
        for key in ENVIRONMENT_KEYS:
            group, _, name = key.partition(".")
            pairs.append((key, _property_text(nested[group][name])))
        return pairs


def _property_text(value: object) -> str:
    # JSON spellings, so a JUnit property reads like the JSON value it mirrors.
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass(frozen=True)
class GuestRecord:
    """Which guest a row is about: its recipe, its kernel, and what it was booted for."""

    name: str
    # The release the guest itself reported (``uname -r``) once it was up; before
    # that (a guest that never came up) the kernel file's own release.
    kernel: str
    plan: str  # the guest plan's name: which exports shared this QEMU
    # The build stamp the guest reported (``uname -v``); None: it never reported.
    build: str | None = None


@dataclass(frozen=True)
class ResultRow:
    """One check's outcome: what was judged, the verdict, and where the evidence is.

    ``check`` is the family (``ids`` for the multi-device id checks of one export,
    ``operations``, ...), or ``rejection`` for a configuration libvirt must refuse.
    Typed with the enums; the JSON spells each as its value, as before.
    """

    case: str
    check: Check | RejectionCheck
    via: Via
    verdict: Verdict
    # The guest's 9p cache mode, or virtiofsd's policy (None: no export, a rejection).
    cache: Cache | VirtiofsCache | None = None
    guest: GuestRecord | None = None
    start: Start | None = None  # how the row's guest came up (None: no guest)
    boot_seconds: float | None = None
    # How long this row's own observation took in its guest (None: not observed).
    observe_seconds: float | None = None
    log_dir: Path | None = None
    qemu_command: str = ""
    guest_command: str = ""
    # The QEMU, accelerator and guest this row is about (runs may span several QEMUs).
    environment: EnvironmentRecord | None = None
    # Facts of the backend that started the guest (libvirt: its version, the domain).
    backend: tuple[tuple[str, str], ...] = ()
    # The host layout of the row's export (None: no export).
    layout: Layout | None = None
    # The known bug this failing row shows (``verdicts.known``), and the known bugs
    # expected on this passing row that did not show.
    known_issue: KnownIssue | None = None
    unreproduced: tuple[KnownIssue, ...] = ()
    # The cache mode the guest's /proc/mounts showed for the export, as spelt there
    # (``agent.mounts``; None: not read, e.g. no export or no guest).
    mounted_cache: str | None = None
    # The rule judged over several rows after all of a QEMU's rows (``verdicts.cache``
    # ``probe_power``): a note, or the reason a passing row proves nothing.
    power: PowerFinding | None = None
    # How the export reached the guest; None: no export.
    transport: Transport | None = Transport.NINEP

    @property
    def status(self) -> Status:
        """The verdict's status, but KNOWN where a known issue explains the failure and
        INCONCLUSIVE where a passing row's probe lost its power."""
        if self.verdict.status is Status.FAIL and self.known_issue is not None:
            return Status.KNOWN
        if self.verdict.status is Status.PASS and self.power is not None \
                and self.power.inconclusive:
            return Status.INCONCLUSIVE
        return self.verdict.status

    @property
    def passed(self) -> bool:
        return self.status is Status.PASS

    @property
    def failures(self) -> tuple[str, ...]:
        """The verdict's failures, and the power rule's reason when it made the row
        inconclusive."""
        power = self.power
        extra = (power.text,) if power is not None and power.inconclusive else ()
        return (*self.verdict.failures, *extra)

    @property
    def notes(self) -> tuple[str, ...]:
        """The verdict's notes, and the power rule's note."""
        power = self.power
        extra = (power.text,) if power is not None and not power.inconclusive else ()
        return (*self.verdict.notes, *extra)


@dataclass(frozen=True)
class RunResults:
    """Everything a run found, plus the facts needed to reproduce it."""

    environment: EnvironmentRecord  # the first QEMU's (the top-level JSON block)
    rows: tuple[ResultRow, ...]
    wall_seconds: float = 0.0
    log_dir: str = ""
    logs_kept: bool = True
    # Every QEMU of the run, in the order given (--qemu A --qemu B).
    environments: tuple[EnvironmentRecord, ...] = ()
    # --strict-known: a known issue that did not reproduce fails the run.
    strict_known: bool = False
    # QEMU's warnings about options the harness passed that are not under test, as
    # QEMU wrote them (``verdicts.qemu_stderr``): the harness's to fix, no row's.
    own_option_notices: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rows)

    @property
    def unreproduced(self) -> tuple[str, ...]:
        """Ids of the known issues that did not reproduce on some row in their scope."""
        return tuple(dict.fromkeys(i.id for r in self.rows for i in r.unreproduced))

    @property
    def exit_code(self) -> int:
        code = exit_code(r.status for r in self.rows)
        if code == EXIT_OK and self.strict_known and self.unreproduced:
            return EXIT_FAIL
        return code


def exit_code(statuses: Iterable[Status]) -> int:
    """0 when everything passed; 1 when QEMU or the guest kernel did the wrong thing;
    2 when a check could not run or proved nothing (error, inconclusive, no rows).

    A definite failure outranks an error: it is a bug report whatever else happened.
    A known failure (a known bug, reproduced) is news nobody has to act on: 0.
    """
    seen = set(statuses)
    if not seen:
        return EXIT_ERROR
    if Status.FAIL in seen:
        return EXIT_FAIL
    if seen & {Status.ERROR, Status.INCONCLUSIVE}:
        return EXIT_ERROR
    return EXIT_OK
