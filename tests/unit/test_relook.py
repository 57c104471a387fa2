"""The remount family looks, remounts and looks again in one SSH round trip; both looks,
the remount's exit status and output, and the kernel log are parsed whole."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import pytest

from harness.agent.stat import GuestStat
from harness.checks.live import RemountCheck, another_order
from harness.config import Check, Mode
from harness.errors import GuestOutputError
from harness.guest.lifecycle import Guest
from harness.guest.ssh import CommandResult
from harness.host.layout import ExportLayout
from harness.host.truth import Export, HostTruth
from harness.plan import ExportPlan
from harness.qemu.spec import ExportSpec
from harness.verdicts.live import RemountSeen

from .truths import host_dir, host_file

TRUTH = HostTruth((host_dir(".", 10, 1, 0), host_file("a", 10, 2, 0),
                   host_dir("dev01", 11, 1, 1), host_file("dev01/a", 11, 2, 1)))
EXPORT = Export(Path("/nonexistent"), ExportLayout(devices=2, files_per_device=1), (), TRUTH)
SPEC = ExportSpec(tag="mdh3", path=Path("/nonexistent"), mode=Mode.REMAP,
                  mount_point="/mnt/mdh3")
PLAN = ExportPlan(Mode.REMAP, EXPORT.layout, Check.REMOUNT)


@dataclass
class FakeGuest:
    """A guest answering each command with the next canned output."""

    outputs: list[str]
    commands: list[str] = field(default_factory=list)
    stdins: list[bytes] = field(default_factory=list)
    console_path: Path = Path("/nonexistent/console.log")

    def run(self, command: str, stdin: bytes = b"", timeout: float | None = None
            ) -> CommandResult:
        self.commands.append(command)
        self.stdins.append(stdin)
        return CommandResult(command, 0, self.outputs.pop(0).encode(), b"", 0.0)


def _observe(guest: FakeGuest) -> RemountSeen:
    # The family only runs commands and names the console: the fake is Guest enough.
    return RemountCheck().observe(cast(Guest, guest), SPEC, EXPORT, PLAN)


def _look(inos: list[int]) -> str:
    return "".join(f"S 1 {i} 40 {ino} 1 {0o40755 if ino % 2 else 0o100644}\n"
                   for i, ino in enumerate(inos)) + f"END {len(inos)}\n"


def _output(rc: str = "@@RC 0\n") -> str:
    return (f"@@STAT\n{_look([1, 2, 3, 4])}@@COMMAND\n{rc}@@AFTER\n{_look([3, 4, 1, 2])}"
            "@@DMESG\n[ 1.0] 9p: remounted\n@@DONE\n")


def test_look_remount_look_in_one_round_trip() -> None:
    guest = FakeGuest([_output()])
    seen = _observe(guest)
    assert len(guest.commands) == 1
    script = shlex.split(guest.commands[0])[2]
    # The look, then the remount, then the second look at the reordered paths.
    assert script.index("mdh-agent stat") < script.index("umount /mnt/mdh3 && mount -t 9p") \
        < script.rindex("mdh-agent stat")
    # The first look's agent reads stdin itself; the second's list is spelled out.
    assert guest.stdins[0] == b"".join(p.encode() + b"\0" for p in TRUTH.paths)
    assert "cat" not in script and script.count("mdh-agent stat /mnt/mdh3 1 1\n") == 1
    assert "printf 'dev01\\000dev01/a\\000.\\000a\\000' > /tmp/mdh-paths" in script
    order = another_order(TRUTH)
    assert seen.after_order == order == ("dev01", "dev01/a", ".", "a")
    # Each look is keyed by its own path list: the second in the other order.
    assert seen.before["."] == GuestStat(40, 1, 1, 0o40755)
    assert seen.after["."] == GuestStat(40, 1, 1, 0o40755)
    assert seen.after["dev01"] == GuestStat(40, 3, 1, 0o40755)
    assert (seen.remount_rc, seen.remount_output) == (0, "")
    assert seen.dmesg == "[ 1.0] 9p: remounted\n"


def test_a_failed_remount_keeps_its_status_and_output() -> None:
    guest = FakeGuest([_output("umount: can't unmount /mnt/mdh3: Device busy\n@@RC 1\n")])
    seen = _observe(guest)
    assert seen.remount_rc == 1
    assert seen.remount_output == "umount: can't unmount /mnt/mdh3: Device busy\n"


@pytest.mark.parametrize("broken", [
    _output().replace("@@RC 0\n", ""),  # no exit status of the remount
    _output().replace("@@DONE\n", ""),  # the script never ended
    _output().replace("END 4\n@@DMESG", "@@DMESG"),  # the second look cut short
])
def test_a_broken_answer_is_an_error(broken: str) -> None:
    with pytest.raises(GuestOutputError):
        _observe(FakeGuest([broken]))
