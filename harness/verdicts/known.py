"""Known QEMU and kernel bugs, by signature, and which failing rows they explain.

A nightly run on a QEMU that still has a bug should stay useful: the row that shows
the bug is reported as ``known`` (naming the issue) instead of ``fail``, and anything
else that fails is still a failure.  A signature says where the bug shows (transport,
check, modes, the expectation QEMU's version gives the mode, layouts, cache modes, QEMU and
kernel version ranges), which failure lines it explains (regular expressions; every
failure of the row must match one), and whether the remap model must agree with the
guest (a collision that the model does not predict is another bug).  A row inside an
issue's scope that passes means the bug did not reproduce: reported on the row and in
the summary, so a fixed QEMU is noticed (``--strict-known`` makes it exit 1).

The list is TOML (``harness/known_issues.toml``; ``--known-issues FILE`` replaces it).
Pure: text in, frozen issues out; facts of a row in, the issue or None out.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass

from ..config import VIRTIOFS_CACHE, VIRTIOFS_ROWS, Cache, Check, Layout, Mode, Transport
from ..errors import UsageError
from ..version import Version
from .common import Expectation

_FIELDS = {"id", "title", "component", "transport", "check", "modes", "expectation", "layouts",
           "caches", "qemu_min", "qemu_max", "kernel_min", "kernel_max", "failures",
           "remap_model", "reproducer", "reference"}
_REQUIRED = ("id", "title", "component", "modes", "failures", "reproducer")
_KERNEL_RE = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")
# Who has the bug.  Nothing decides by it (the file documents it for its readers), but
# a typo is still refused like any other value.
_COMPONENTS = ("qemu", "kernel", "virtiofsd")
# The values each key may take, from the enums the rows are built from: a typo would
# otherwise give an issue a scope no row is ever in, and the bug would show as a
# failure with no word on why.  ``modes`` and ``caches`` depend on the transport.
_CHOICES: dict[str, tuple[str, ...]] = {
    "component": _COMPONENTS,
    "transport": tuple(Transport),
    "check": tuple(Check),
    "expectation": tuple(Expectation),
    "layouts": tuple(Layout),
    "remap_model": ("agrees",),
}
_TRANSPORT_CHOICES: dict[str, dict[str, tuple[str, ...]]] = {
    Transport.NINEP: {"modes": tuple(Mode), "caches": tuple(Cache)},
    Transport.VIRTIOFS: {"modes": tuple(VIRTIOFS_ROWS.values()), "caches": (VIRTIOFS_CACHE,)},
}


@dataclass(frozen=True)
class KnownIssue:
    """One known bug: where it shows and which failures it explains."""

    id: str
    title: str
    modes: tuple[str, ...]
    failures: tuple[re.Pattern[str], ...]
    reproducer: str
    # "9p" (``modes`` are multidevs modes) or "virtiofs" (``modes`` are the settings'
    # row names: "virtiofs", "virtiofs-nosubmounts").
    transport: str = "9p"
    check: str = "ids"
    expectation: str | None = None  # verdicts.common.Expectation value, None: any
    layouts: tuple[str, ...] = ()  # empty: any
    caches: tuple[str, ...] = ()  # empty: any
    qemu_min: Version | None = None  # inclusive
    qemu_max: Version | None = None  # exclusive
    kernel_min: Version | None = None
    kernel_max: Version | None = None
    remap_model: str | None = None  # "agrees": the guest's ids must equal the model's
    reference: str = ""


@dataclass(frozen=True)
class RowFacts:
    """What a signature is matched against: one judged row."""

    check: str
    mode: str
    expectation: str | None
    layout: str
    cache: str
    qemu: Version
    kernel: str  # the guest's release, e.g. "6.1.0-57-amd64"
    failures: tuple[str, ...]
    remap_agrees: bool | None  # None: QEMU did not remap (no model)
    transport: str = "9p"


def kernel_version(release: str) -> Version | None:
    """The (major, minor, patch) of a kernel release string, None if it has none."""
    match = _KERNEL_RE.match(release)
    if match is None:
        return None
    major, minor, patch = match.groups()
    return Version(int(major), int(minor), int(patch or 0))


def _version(value: object, where: str) -> Version:
    if not isinstance(value, str) or (found := kernel_version(value)) is None:
        raise UsageError(f"{where}: expected a version string like \"7.2.0\", got {value!r}",
                         hint="fix the known-issues file")
    return found


def _strings(value: object, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UsageError(f"{where}: expected a string or a list of strings, got {value!r}",
                         hint="fix the known-issues file")
    return tuple(value)


def _issue(raw: dict[str, object], source: str, index: int) -> KnownIssue:
    named = raw.get("id")
    where = f"{source}: issue {index + 1}" + (f" ({named})" if isinstance(named, str) else "")
    unknown = sorted(set(raw) - _FIELDS)
    missing = [key for key in _REQUIRED if key not in raw]
    if unknown or missing:
        raise UsageError(f"{where}: " + "; ".join(
            ([f"unknown keys {', '.join(unknown)}"] if unknown else [])
            + ([f"missing {', '.join(missing)}"] if missing else [])),
            hint=f"a known issue has the keys {', '.join(sorted(_FIELDS))}")
    text: dict[str, str] = {
        key: _strings(raw[key], f"{where}: {key}")[0] for key in
        ("id", "title", "component", "reproducer", "transport", "check", "expectation",
         "remap_model", "reference") if key in raw}
    lists: dict[str, tuple[str, ...]] = {
        key: _strings(raw[key], f"{where}: {key}") for key in ("modes", "layouts", "caches")
        if key in raw}
    _check_choices({**text, **lists}, where)
    del text["component"]
    try:
        patterns = tuple(re.compile(p) for p in _strings(raw["failures"], f"{where}: failures"))
    except re.error as exc:
        raise UsageError(f"{where}: failures: bad regular expression: {exc}",
                         hint="fix the known-issues file") from exc
    versions = {key: _version(raw[key], f"{where}: {key}") for key in
                ("qemu_min", "qemu_max", "kernel_min", "kernel_max") if key in raw}
    return KnownIssue(failures=patterns, **text, **versions, **lists)  # type: ignore[arg-type]  # keys checked above


def _check_choices(given: dict[str, str | tuple[str, ...]], where: str) -> None:
    """Refuse (UsageError naming the file, the issue and the key) a value outside the
    vocabulary its key takes (``_CHOICES``; ``modes`` and ``caches`` by transport)."""
    transport = given.get("transport", Transport.NINEP)
    choices = {**_CHOICES, **_TRANSPORT_CHOICES.get(str(transport), {})}
    for key, value in given.items():
        allowed = choices.get(key)
        values = (value,) if isinstance(value, str) else value
        bad = [v for v in values if allowed is not None and v not in allowed]
        if bad:
            raise UsageError(
                f"{where}: {key}: unknown value {', '.join(map(repr, bad))}"
                + (f" for transport {transport}" if key in ("modes", "caches") else ""),
                hint=f"{key} takes {', '.join(allowed or ())}; fix the known-issues file")


def parse_known_issues(text: str, source: str) -> tuple[KnownIssue, ...]:
    """The issues of a known-issues file (``[[issue]]`` tables); ``source`` names it in
    errors.  An empty file knows nothing."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{source}: not valid TOML: {exc}",
                         hint="fix the file, or pass --known-issues with another") from exc
    except RecursionError as exc:
        # tomllib recurses once per nested array or table: thousands deep exhaust it.
        raise UsageError(f"{source}: not a known-issues file: nested too deeply to read",
                         hint="fix the file, or pass --known-issues with another") from exc
    raw = data.get("issue", [])
    if set(data) - {"issue"} or not isinstance(raw, list):
        raise UsageError(f"{source}: expected only [[issue]] tables",
                         hint="each known issue is one [[issue]] table")
    issues = tuple(_issue(item, source, i) for i, item in enumerate(raw))
    ids = [issue.id for issue in issues]
    if len(set(ids)) != len(ids):
        raise UsageError(f"{source}: an issue id appears twice", hint="ids must be unique")
    return issues


def _in_range(value: Version | None, low: Version | None, high: Version | None) -> bool:
    if low is None and high is None:
        return True
    if value is None:
        return False
    return (low is None or value >= low) and (high is None or value < high)


def in_scope(issue: KnownIssue, facts: RowFacts) -> bool:
    """Whether ``facts`` describe a row where ``issue`` is expected to show."""
    return (facts.transport == issue.transport and facts.check == issue.check
            and facts.mode in issue.modes
            and (issue.expectation is None or facts.expectation == issue.expectation)
            and (not issue.layouts or facts.layout in issue.layouts)
            and (not issue.caches or facts.cache in issue.caches)
            and _in_range(facts.qemu, issue.qemu_min, issue.qemu_max)
            and _in_range(kernel_version(facts.kernel), issue.kernel_min, issue.kernel_max))


def explains(issue: KnownIssue, facts: RowFacts) -> bool:
    """Whether ``issue`` explains every failure of a failing row in its scope."""
    if not facts.failures or not in_scope(issue, facts):
        return False
    if issue.remap_model == "agrees" and facts.remap_agrees is not True:
        return False
    return all(any(p.search(line) for p in issue.failures) for line in facts.failures)


def match(issues: Sequence[KnownIssue], facts: RowFacts) -> KnownIssue | None:
    """The first issue that explains the failing row ``facts``, or None."""
    return next((issue for issue in issues if explains(issue, facts)), None)


def unreproduced(issues: Sequence[KnownIssue], facts: RowFacts) -> tuple[KnownIssue, ...]:
    """Issues expected to show on a passing row ``facts`` that did not.

    An issue the remap model explains (``remap_model = "agrees"``) shows wherever the
    model predicts a collision; a passing row whose guest equals the model ran the
    algorithm with the bug on a tree where it collides nowhere (QEMU 7.2 on the
    overlay-mixed layout), so it says nothing about a fix.  Only a guest that
    differs from the model (another algorithm) or has no model counts."""
    if facts.failures:
        return ()
    return tuple(issue for issue in issues if in_scope(issue, facts)
                 and not (issue.remap_model == "agrees" and facts.remap_agrees is True))
