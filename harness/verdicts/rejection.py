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

    A call libvirt accepted is a failure that says so; a refusal for some other
    reason (its message lacks ``must_contain``) is a failure too, since it proves
    nothing about multidevs.
    """
    failures: list[str] = []
    observed: list[str] = []
    for attempt in attempts:
        if attempt.error is None:
            failures.append(f"libvirt accepted the domain in {attempt.api}; it must refuse it")
            observed.append(f"{attempt.api}: accepted")
            continue
        observed.append(f"{attempt.api}: refused")
        missing = [text for text in must_contain if text not in attempt.error]
        if missing:
            failures.append(
                f"{attempt.api} refused the domain, but not for multidevs: the error "
                f"{attempt.error!r} does not contain {', '.join(map(repr, missing))}"
            )
    if not attempts:
        failures.append("no libvirt call was made")
    first_error = next((a.error for a in attempts if a.error), None)
    return RejectionVerdict(
        attribute=attribute,
        driver=driver,
        expectation=expectation,
        observed=", ".join(observed) or "nothing",
        status=Status.FAIL if failures else Status.PASS,
        failures=tuple(failures),
        errors=tuple(attempts),
        notes=(f"libvirt: {first_error}",) if first_error else (),
    )
