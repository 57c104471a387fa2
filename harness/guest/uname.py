"""Which kernel a guest really runs, in its own words (``uname -r``, ``uname -v``).

Rows record what the guest reports, not what the harness meant to boot: a restore
from a state saved under another kernel, or a ``--kernel`` that is not the file it
seems, would otherwise be judged under the wrong name.  A guest whose release is
not the kernel file's is refused (an error row, exit 2), never judged.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import GuestInitFailed
from .shell import Shell


@dataclass(frozen=True)
class ReportedKernel:
    """The guest kernel's release (``uname -r``) and build stamp (``uname -v``)."""

    release: str
    build: str


def parse_uname(text: str) -> ReportedKernel | None:
    """The two lines of ``uname -r; uname -v``, or None when they are not that."""
    lines = text.strip("\n").split("\n")
    if len(lines) != 2 or not lines[0].strip() or " " in lines[0].strip():
        return None
    return ReportedKernel(lines[0].strip(), lines[1].strip())


def reported_kernel(guest: Shell, expected_release: str, where: str) -> ReportedKernel:
    """Ask the guest which kernel it runs; raise GuestInitFailed when it cannot say
    or says another release than ``expected_release`` (the file ``where`` names)."""
    result = guest.run("uname -r; uname -v")
    reported = parse_uname(result.stdout.decode(errors="replace")) if result.rc == 0 else None
    if reported is None:
        raise GuestInitFailed(
            f"the guest did not report its kernel (uname -r; uname -v: rc {result.rc})",
            hint="see the console log")
    if reported.release != expected_release:
        raise GuestInitFailed(
            f"the guest runs kernel {reported.release} ({reported.build}), but {where} "
            f"is {expected_release}: its rows would be judged under the wrong kernel",
            hint="a saved state of another kernel? run 'multidevs-harness image prune' "
                 "and boot with --cold")
    return reported
