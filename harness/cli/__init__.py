"""The ``multidevs-harness`` command: the parser assembled from one module per command,
signals, and the exit status.  No logic of its own.

Each command module (``cli/run.py``, ``cli/exec.py``, ...) declares its options and
reads argparse's Namespace once into a typed value; its work lives in ``commands/`` or
``run`` and is imported only when the command runs: ``--help`` and ``exec`` should not
wait for the verdicts, the report writers or the SSH client to load.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from collections.abc import Sequence
from types import FrameType

from .. import __version__
from ..errors import EXIT_ERROR, EXIT_OK, HarnessError
from . import exec as exec_command
from . import grid, image, predict, probe, qemu, reproduce, run
from .options import Given, Parser
from .output import discard, say

# In the order ``--help`` lists them.
COMMANDS = (image, qemu, probe, exec_command, run, grid, reproduce, predict)


def build_parser() -> argparse.ArgumentParser:
    """The whole command-line interface."""
    parser = Parser(
        prog="multidevs-harness",
        description="Boot real guests over a multi-device 9p export and check QEMU's "
        "multidevs option end to end.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for module in COMMANDS:
        module.register(sub)
    return parser


class Interrupted(KeyboardInterrupt):
    """A signal (SIGINT or SIGTERM) stopping the command: it unwinds like Ctrl-C, so
    every context manager cleans up, and the exit status is 128 + ``signum``."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signum}")
        self.signum = signum


class _Stopper:
    """The handler of SIGINT and SIGTERM: the first raises Interrupted in the main
    thread; later ones only say that the stop is under way.  A second exception would
    land in the cleanup itself (between cancelling the workers and killing the
    guests), leaving guests to run on while the main thread waits for them."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            # os.write: the print machinery may be mid-write in the main thread, and a
            # buffered write from a handler would raise there ("reentrant call").
            with contextlib.suppress(OSError):
                os.write(2, f"[multidevs-harness] signal {signum} again: already "
                         "stopping\n".encode())
            return
        self.signum = signum
        raise Interrupted(signum)


def _on_signals() -> None:
    stopper = _Stopper()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stopper)


def bisect_code(code: int) -> int:
    """``git bisect run``'s reading of an exit status: 2 (could not run, inconclusive)
    becomes 125, "skip this commit", so an unbuildable or unbootable commit is not
    blamed.  0 and 1 stay; anything above 127 (Ctrl-C) stops the bisection."""
    return 125 if code == EXIT_ERROR else code


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status: 0 everything held, 1 QEMU or the
    guest kernel did the wrong thing, 2 the check could not run or was inconclusive,
    including a fault of the harness itself (125 for that with ``run --bisect``)."""
    given_argv = sys.argv[1:] if argv is None else list(argv)
    try:
        namespace = build_parser().parse_args(argv)
    except BrokenPipeError:
        # --help or --version into a reader that went away: nothing was asked of QEMU.
        discard(sys.stdout)
        return EXIT_OK
    except SystemExit as exc:
        # A bad command line under --bisect is no verdict on the commit either: exit 2
        # would make ``git bisect run`` call every commit bad.
        if exc.code == EXIT_ERROR and "--bisect" in given_argv:
            return bisect_code(EXIT_ERROR)
        raise
    given = given_options(given_argv)
    code = _dispatch(namespace, given)
    return bisect_code(code) if "bisect" in given else code


def given_options(argv: Sequence[str]) -> Given:
    """The options the command line gave (their dests), told apart from defaults: the
    same parser again with every option's default suppressed, so only what was given
    lands in the namespace (abbreviations such as ``--dev`` included)."""
    parser = build_parser()
    _suppress_defaults(parser)
    return frozenset(vars(parser.parse_args(argv)))


def _suppress_defaults(parser: argparse.ArgumentParser) -> None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _suppress_defaults(sub)
        elif action.option_strings:
            action.default = argparse.SUPPRESS


def _dispatch(namespace: argparse.Namespace, given: Given) -> int:
    _on_signals()
    try:
        return int(namespace.entry(namespace, given))
    except HarnessError as exc:
        say(f"error: {exc}", err=True)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        # 128 + the signal, as a shell reports a command a signal ended: 130 for
        # SIGINT (Ctrl-C), 143 for SIGTERM.
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        # The stop is done: a later signal must not end the exit itself.  Python puts
        # its own handlers back to the default at shutdown, and a second SIGINT 50 ms
        # after the first then ended the process by the signal (status -2, not 130);
        # an ignored signal stays ignored through shutdown.
        for each in (signal.SIGINT, signal.SIGTERM):
            signal.signal(each, signal.SIG_IGN)
        say(f"interrupted ({signal.Signals(signum).name}): guests stopped, mounts and "
            "temporary files removed", err=True)
        return 128 + signum
    except Exception as exc:
        # Not an error the harness raised on purpose: a bug of its own, or the host
        # failing under it.  Either way the check could not run: exit 2 (125 under
        # --bisect), never 1, which CI files as a QEMU regression.
        from ..logs import harness_fault

        say(f"error: {harness_fault(exc)}", err=True)
        return EXIT_ERROR
