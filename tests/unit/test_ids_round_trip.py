"""An ids export with witnesses is observed in one SSH round trip: the witnesses read
back the paths the collection stats, or (a FIFO or socket among them) a list the script
spells out; only a list too long for that takes two.  Either way both parts are parsed
whole."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from harness.agent.witnesses import TOOL_NAMES
from harness.checks.ids import observe_ids
from harness.config import Mode
from harness.errors import GuestOutputError
from harness.guest.ssh import CommandResult
from harness.host.layout import ExportLayout
from harness.host.truth import EntryKind, HostEntry, HostTruth
from harness.plan import ExportPlan

from .truths import host_dir, host_file

TRUTH = HostTruth((host_dir(".", 1, 2, 0), host_file("a", 1, 3, 0)))
WITH_FIFO = HostTruth((*TRUTH.entries, HostEntry("p", 1, 4, 1, EntryKind.OTHER, 0)))
PLAN = ExportPlan(Mode.WARN, ExportLayout(devices=1, files_per_device=1),
                  passes=1)


def _stat(count: int) -> str:
    return "".join(f"S 1 {i} 1 {i + 2} 1 {0o40755 if i == 0 else 0o100644}\n"
                   for i in range(count)) + f"END {count}\n"


def _collection(count: int) -> str:
    return f"@@STAT\n{_stat(count)}@@DMESG\n[ 1.0] collect\n@@DONE\n"


def _witnesses(paths: int, specials: int = 0) -> str:
    read = "".join(f"R {i} 78\n" for i in range(paths)) + f"END {paths}\n"
    kinds = ("@@KINDS\n" + "".join(f"S 1 {i} 1 9 1 {0o10644}\n" for i in range(specials))
             + f"END {specials}\n") if specials else ""
    listing = {"du": b"1\t.\x00".hex(), "find": b".\x00".hex()}
    blocks = "".join(f"@@W {name}\n@@RC 0\n" + (f"@@LIST {listing[name]}\n" if name in listing
                                                 else f"@@READ\n{read}{kinds}")
                     for name in TOOL_NAMES)
    errs = "".join(f"R {i} \n" for i in range(len(TOOL_NAMES))) + f"END {len(TOOL_NAMES)}\n"
    return f"{blocks}@@ERRS\n{errs}@@DMESG\n[ 2.0] witness\n@@DONE\n"


@dataclass
class FakeGuest:
    """A Shell answering each command with the next canned output."""

    outputs: list[str]
    commands: list[str] = field(default_factory=list)
    console_path: Path = Path("/nonexistent/console.log")

    def run(self, command: str, stdin: bytes = b"", timeout: float | None = None
            ) -> CommandResult:
        self.commands.append(command)
        return CommandResult(command, 0, self.outputs.pop(0).encode(), b"", 0.0)


def test_one_round_trip_does_the_collection_and_the_witnesses() -> None:
    guest = FakeGuest([_collection(2) + _witnesses(2)])
    seen = observe_ids(guest, "/mnt/mdh0", TRUTH, PLAN)
    assert len(guest.commands) == 1
    assert "mdh-agent stat" in guest.commands[0] and "@@W busybox-tar" in guest.commands[0]
    # The witnesses read the collection's paths file, not stdin a second time.
    script = shlex.split(guest.commands[0])[2]
    assert "cat > /tmp/mdh-paths" in script and "cat > /tmp/mdh-wpaths" not in script
    assert "mdh-agent stat /mnt/mdh0 1 1 < /tmp/mdh-paths" in script
    assert seen.witnesses is not None and seen.witnesses.runs["cp"].copied == {
        ".": b"x", "a": b"x"}
    assert seen.dmesg == "[ 1.0] collect\n[ 2.0] witness\n"
    assert len(seen.view.observation.passes) == 1


def test_a_fifo_among_the_paths_is_spelled_out_in_the_same_round_trip() -> None:
    guest = FakeGuest([_collection(3) + _witnesses(2, specials=1)])
    seen = observe_ids(guest, "/mnt/mdh0", WITH_FIFO, PLAN)
    assert len(guest.commands) == 1
    # The read-back list leaves the FIFO out (a read of its copy would block) and is
    # written by the script itself: stdin carries the collection's paths alone.
    script = shlex.split(guest.commands[0])[2]
    assert "printf '.\\000a\\000' > /tmp/mdh-wpaths" in script
    # Nothing needs the collection's paths twice: the agent reads them from stdin.
    assert "cat >" not in script and "/tmp/mdh-paths" not in script
    assert seen.witnesses is not None and seen.witnesses.runs["cp"].copied == {
        ".": b"x", "a": b"x"}
    assert seen.dmesg == "[ 1.0] collect\n[ 2.0] witness\n"


def test_a_long_list_beside_a_fifo_takes_two_round_trips() -> None:
    # Too long to spell out in the one argument of sh -c: sent on stdin instead.
    files = tuple(host_file(f"{'f' * 200}{i}", 1, 10 + i, 0) for i in range(200))
    truth = HostTruth((*TRUTH.entries, *files, HostEntry("p", 1, 4, 1, EntryKind.OTHER, 0)))
    guest = FakeGuest([_collection(len(truth.paths)), _witnesses(len(truth.paths) - 1, 1)])
    seen = observe_ids(guest, "/mnt/mdh0", truth, PLAN)
    assert len(guest.commands) == 2 and "cat > /tmp/mdh-wpaths" in guest.commands[1]
    assert seen.witnesses is not None


def test_a_witness_part_that_never_ended_is_an_error() -> None:
    guest = FakeGuest([_collection(2) + _witnesses(2).replace("@@DONE", "")])
    with pytest.raises(GuestOutputError, match="guest witness script failed"):
        observe_ids(guest, "/mnt/mdh0", TRUTH, PLAN)


def test_without_witnesses_the_agent_reads_stdin_itself() -> None:
    guest = FakeGuest([_collection(2)])
    seen = observe_ids(guest, "/mnt/mdh0", TRUTH, replace(PLAN, witness=False))
    script = shlex.split(guest.commands[0])[2]
    # No process copies the paths to a file nothing reads again.
    assert "cat" not in script and "/tmp/mdh-paths" not in script
    assert "echo @@STAT\nmdh-agent stat /mnt/mdh0 1 1\n" in script
    assert seen.witnesses is None and len(seen.view.observation.passes) == 1
