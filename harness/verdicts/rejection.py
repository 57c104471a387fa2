"""libvirt's refusals: a domain libvirt must reject (a virtiofs filesystem with
``multidevs``, an invalid ``multidevs`` value) and how each attempt is judged.  Pure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from .common import Status, Verdict


@dataclass(frozen=True)
class Attempt:
    """One API call that should have failed: which call, and libvirt's error or None."""

    api: str
    error: str | None


class RejectionCheck(StrEnum):
    """The check of a libvirt refusal row: the backend's own check, no family's, so not
    a ``Check`` that --checks could ask for."""

    REJECTION = "rejection"


@dataclass(frozen=True, kw_only=True)
class RejectionVerdict(Verdict):
    """The judgement of one configuration libvirt must refuse (its own kind of row)."""

    attribute: str  # the multidevs attribute value that was tried
    driver: str  # the filesystem driver it was tried on (path, virtiofs)
    errors: tuple[Attempt, ...]

    def details(self) -> dict[str, Any]:
        return {
            "mode": self.attribute,
            "driver": self.driver,
            "libvirt_errors": {a.api: a.error for a in self.errors},
        }


def judge_rejection(
    attribute: str, driver: str, expectation: str, attempts: Sequence[Attempt],
    must_contain: Sequence[str],
) -> RejectionVerdict:
    """Pass only if every call was refused with an error naming the reason.

    A call libvirt accepted breaks the promise: fail.  A refusal for some other reason
    (its message lacks ``must_contain``: an emulator libvirt cannot use, a missing
    binary) proves nothing about multidevs either way: inconclusive, exit 2, never a
    finding.  No call at all is the harness's own fault: error.
    """
    accepted = [f"libvirt accepted the domain in {a.api}; it must refuse it"
                for a in attempts if a.error is None]
    unrelated = [
        f"{a.api} refused the domain, but not for multidevs: the error {a.error!r} does "
        f"not contain {', '.join(repr(t) for t in must_contain if t not in a.error)}"
        for a in attempts if a.error is not None and any(t not in a.error for t in must_contain)
    ]
    observed = [f"{a.api}: {'accepted' if a.error is None else 'refused'}" for a in attempts]
    failures = accepted + unrelated or (["no libvirt call was made"] if not attempts else [])
    status = (Status.FAIL if accepted else Status.INCONCLUSIVE if unrelated
              else Status.ERROR if not attempts else Status.PASS)
    first_error = next((a.error for a in attempts if a.error), None)
    return RejectionVerdict(
        attribute=attribute,
        driver=driver,
        expectation=expectation,
        observed=", ".join(observed) or "nothing",
        status=status,
        failures=tuple(failures),
        errors=tuple(attempts),
        notes=(f"libvirt: {first_error}",) if first_error else (),
    )
