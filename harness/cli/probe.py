"""``probe``: its options and handler (the work is ``environment.probe_record``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import Accel
from ..errors import EXIT_OK, HarnessError
from .options import Entry, Subparsers, add_accel, add_json, add_qemu, command
from .output import progress, say, text_or_json

if TYPE_CHECKING:
    from ..results import EnvironmentRecord


@dataclass(frozen=True)
class ProbeArgs:
    qemu: str | None
    accel: Accel
    json: Path | None


def _properties(record: EnvironmentRecord) -> str:
    return "\n".join(f"{key:26} {value}" for key, value in record.properties())


def _probe(args: ProbeArgs) -> int:
    from ..environment import probe_record
    from ..report import environment_json

    record = text_or_json(args.json, lambda: probe_record(args.qemu, args.accel,
                                                          progress=progress),
                          _properties, environment_json, "JSON environment")
    return _status(record)


def _status(record: EnvironmentRecord) -> int:
    """probe's exit status, the record printed: 0 when this QEMU can be tested, else 2
    with the one ``error:`` line saying why (it was 2 with no word but a ``false``)."""
    from ..qemu.probe import require_multidevs

    try:
        require_multidevs(record.qemu)
    except HarnessError as exc:
        say(f"error: {exc}", err=True)
        return exc.exit_code
    return EXIT_OK


def register(sub: Subparsers) -> None:
    probe = command(sub, "probe",
                    Entry(lambda ns, _: ProbeArgs(ns.qemu, Accel(ns.accel), ns.json), _probe),
                    help="report QEMU version, multidevs support, accel")
    add_qemu(probe)
    add_accel(probe)
    add_json(probe)
