"""``exec``: its options and handler (the work is ``commands.exec``)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from ..machine_options import MachineOptions
from .options import Entry, Given, Subparsers, add_machine, command, machine
from .output import progress, say

# exec's exit status, in its --help and docs/usage.md.  Passed through as ssh does, so a
# script can ask the guest a question (exec -- test -e /x); exec judges nothing, so
# there is no finding its 1 could be mistaken for.
EXEC_STATUS = ("exit status: the guest command's own (as ssh: 0-255, 255 if a signal ended "
               "it); exec judges nothing, so 1 is the command's, never a finding. When the "
               "guest cannot boot or be reached, 2 with one 'error:' line, which tells it "
               "from a command that exits 2 itself.")


@dataclass(frozen=True)
class ExecArgs:
    command: tuple[str, ...]
    machine: MachineOptions
    logs: Path | None


def _read(namespace: argparse.Namespace, given: Given) -> ExecArgs:
    options = machine(namespace, given)
    command = list(namespace.cmd)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise UsageError("no command given", hint="multidevs-harness exec -- uname -r")
    return ExecArgs(tuple(command), options, namespace.logs)


def _exec(args: ExecArgs) -> int:
    from ..commands.exec import exec_in_guest

    result = exec_in_guest(args.command, args.machine, logs=args.logs, progress=progress)
    say(result.stdout)
    say(result.stderr, err=True)
    return result.rc


def register(sub: Subparsers) -> None:
    exec_ = command(sub, "exec", Entry(_read, _exec),
                    help="boot a guest, run a command over SSH, shut down", epilog=EXEC_STATUS)
    add_machine(exec_)
    exec_.add_argument("cmd", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
