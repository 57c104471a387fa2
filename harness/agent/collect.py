"""Guest script side of the ids family's collection round trip: the guest script that
runs the harm probe, the stat passes and reads the kernel log, and the split of its
output into sections.  Pure; the SSH round trip itself is ``checks.ids.collect``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import GuestOutputError
from .harm import HarmObservation, harm_command, parse_harm_output, printf_command
from .stat import (
    AGENT_THREADS,
    STAT_PASSES,
    GuestObservation,
    encode_paths,
    parse_stat_output,
    stat_command,
)

# Where the collection script keeps its input paths (the witnesses may read them too).
PATHS_FILE = "/tmp/mdh-paths"


@dataclass(frozen=True)
class GuestView:
    """What the guest reported: stat passes, the harm probe and the kernel log."""

    observation: GuestObservation
    # The harm probe (None when no pairs were probed) and the kernel log written since
    # the previous collection in this guest (``dmesg -c``: each line is read once).
    harm: HarmObservation | None = None
    dmesg: str = ""


def collection_script(
    mount_point: str, passes: int = STAT_PASSES, threads: int = AGENT_THREADS,
    harm: Sequence[str] = (), keep_paths: bool = False,
) -> str:
    """The guest shell script; only constants and the harm pairs (octal-escaped) go
    into it.

    The harm probe runs first, before any stat has filled the client's caches, so it
    meets the twins in the order it chooses (one held, then the other).  The agent
    reads the paths from stdin (nothing before it reads stdin); ``keep_paths`` first
    copies them to ``PATHS_FILE`` for a later part of the script (the witnesses' read-
    back), a process that a script without one does without.
    """
    lines = [f"cat > {PATHS_FILE}"] if keep_paths else []
    if harm:
        lines += [
            f"{printf_command(encode_paths(harm))} > /tmp/mdh-harm",
            "echo @@HARM",
            f"{harm_command(mount_point)} < /tmp/mdh-harm",
        ]
    lines += [
        "echo @@STAT",
        stat_command(mount_point, passes, threads) + (f" < {PATHS_FILE}" if keep_paths else ""),
    ]
    lines += ["echo @@DMESG", "dmesg -c", "echo @@DONE"]
    return "\n".join(lines) + "\n"


def _section(text: str, start: str, end: str) -> str:
    _, sep, rest = text.partition(start + "\n")
    if not sep:
        raise GuestOutputError(f"guest output has no {start} section", details=text[-2000:])
    body, sep, _ = rest.partition(end)
    if not sep:
        raise GuestOutputError(f"guest output ends inside the {start} section",
                               details=text[-2000:])
    return body


def parse_collection(
    text: str, paths: Sequence[str], passes: int = STAT_PASSES, harm: Sequence[str] = (),
) -> GuestView:
    """Split the collection script's output into its sections and parse each.

    Exactly ``passes`` stat passes must be there: a lost pass would otherwise let
    "stable on a second look" pass on one look.
    """
    observation = parse_stat_output(_section(text, "@@STAT", "@@DMESG"), paths, passes=passes)
    seen = parse_harm_output(_section(text, "@@HARM", "@@STAT"), harm) if harm else None
    return GuestView(observation, seen, _section(text, "@@DMESG", "@@DONE"))


@dataclass(frozen=True)
class Relook:
    """Two looks at one export around a guest command (``relook_script``)."""

    before: GuestObservation
    command_rc: int
    command_output: str  # its stdout and stderr together
    after: GuestObservation
    dmesg: str  # the kernel log over both looks and the command


def relook_script(mount_point: str, command: str, after: Sequence[str],
                  passes: int = 1, threads: int = AGENT_THREADS) -> str:
    """A look (the agent reads the paths from stdin), ``command`` (a guest shell
    command built from constants and quoted values), a second look at ``after``
    (spelled out in the script: stdin was the first look's), then the kernel log:
    what three round trips did, in one.  The command runs in a brace group, not a
    subshell, so it costs no extra fork."""
    stat = stat_command(mount_point, passes, threads)
    lines = ["echo @@STAT", stat,
             "echo @@COMMAND", f"{{ {command}; }} 2>&1", 'echo "@@RC $?"',
             f"{printf_command(encode_paths(after))} > {PATHS_FILE}",
             "echo @@AFTER", f"{stat} < {PATHS_FILE}",
             "echo @@DMESG", "dmesg -c", "echo @@DONE"]
    return "\n".join(lines) + "\n"


def parse_relook(text: str, before: Sequence[str], after: Sequence[str],
                 passes: int = 1) -> Relook:
    """Split ``relook_script``'s output; each look must answer all its paths."""
    first = parse_stat_output(_section(text, "@@STAT", "@@COMMAND"), before, passes=passes)
    output, sep, rc = _section(text, "@@COMMAND", "@@AFTER").rpartition("@@RC ")
    if not sep or not rc.strip().isdigit():
        raise GuestOutputError("guest output has no exit status of the command between "
                               "the looks", details=text[-2000:])
    second = parse_stat_output(_section(text, "@@AFTER", "@@DMESG"), after, passes=passes)
    return Relook(first, int(rc), output, second, _section(text, "@@DMESG", "@@DONE"))
