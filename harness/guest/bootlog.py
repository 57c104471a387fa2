"""Read the guest's boot console: which init step failed, and why.

The guest's init (guests/common/init.sh) reports every step as
``mdh-init: step NAME ok|fail [DETAIL]`` and ends with either ``MDH-READY <release>``
or ``MDH-FAILED <step>: <detail>``.  These pure functions turn console text into that
verdict, so the machine's ready loop can stop at once with the reason instead of
waiting for an SSH timeout.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_STEP = re.compile(r"mdh-init: step (?P<name>\S+) (?P<state>ok|fail)(?: (?P<detail>.*))?$")
_FAILED = re.compile(r"MDH-FAILED (?P<name>[^:\s]+): ?(?P<detail>.*)$")
_STEP_OR_FAILED = re.compile(r"mdh-init: step |MDH-FAILED ")
# Kernel messages can share a line with init's output on the serial console, so the
# markers are searched anywhere in a line, not only at its start.
CONTEXT_LINES = 5


@dataclass(frozen=True)
class Step:
    """One step the guest's init reported."""

    name: str
    ok: bool
    detail: str


def complete_lines(console_text: str) -> list[str]:
    """The console's finished lines (a line still being written is left out), no CRs."""
    finished = console_text.rpartition("\n")[0] if "\n" in console_text else ""
    return [line.rstrip("\r") for line in finished.split("\n")] if finished else []


def parse_steps(console_text: str) -> list[Step]:
    """Every ``mdh-init: step`` report in the console, in order."""
    steps = []
    for line in complete_lines(console_text):
        match = _STEP.search(line)
        if match:
            steps.append(Step(match["name"], match["state"] == "ok", match["detail"] or ""))
    return steps


def init_failure(console_text: str) -> str | None:
    """The failed init step with a few lines of context, or None if no step failed.

    Returns the console lines from up to CONTEXT_LINES lines before the failing
    ``mdh-init: step NAME fail`` line (kernel messages such as the module loader's
    "section size must match the kernel's" land there) through the terminal
    ``MDH-FAILED NAME: DETAIL`` line.  A ``MDH-FAILED`` line without a step report,
    or a step failure whose MDH-FAILED line is not written yet, still counts.  Only
    finished lines are read, so a half-written line never yields a cut detail.
    """
    lines = complete_lines(console_text)
    fail_at = next((i for i, line in enumerate(lines)
                    if (m := _STEP.search(line)) and m["state"] == "fail"), None)
    terminal = next((i for i, line in enumerate(lines) if _FAILED.search(line)), None)
    found = [index for index in (fail_at, terminal) if index is not None]
    if not found:
        return None
    first, last = min(found), max(found)
    start = first
    while start > 0 and first - start < CONTEXT_LINES and not _STEP_OR_FAILED.search(
            lines[start - 1]):
        start -= 1
    return "\n".join(lines[start:last + 1])

