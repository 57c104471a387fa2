"""What the commands print: lines to stdout and stderr that survive a closed pipe,
progress on stderr, a listing's text or JSON, and the one ``error:`` line of a run
that could not judge its rows."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import EXIT_ERROR

if TYPE_CHECKING:
    # Only named in annotations: the result schema brings the verdicts, which exec and
    # --help never load.
    from ..results import ResultRow

T = TypeVar("T")


def say(text: str | bytes = "", *, err: bool = False) -> None:
    """Write ``text`` (a line; bytes as they are) to stdout, or stderr with ``err``.

    A reader that went away (``| head``, a CI log pipe closed early) ends the printing,
    never the run: the guests still finish, the JSON and JUnit reports are still
    written and the exit code still says what QEMU did.  Printing was the only thing
    the closed pipe could take, so its error is not a fault of the harness.
    """
    stream = sys.stderr if err else sys.stdout
    try:
        if isinstance(text, bytes):
            stream.flush()
            stream.buffer.write(text)
        else:
            stream.write(text + "\n")
        stream.flush()
    except BrokenPipeError:
        discard(stream)


def discard(stream: Any) -> None:
    """Send later writes to ``stream``, and the interpreter's own flush at exit,
    nowhere instead of raising again (Python's recipe for a closed pipe)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, stream.fileno())
    finally:
        os.close(devnull)


def progress(message: str) -> None:
    """Progress lines go to stderr so stdout stays clean for --json."""
    say(f"[multidevs-harness] {message}", err=True)


def shown(path: Path) -> str:
    from ..report import is_stdout

    return "stdout" if is_stdout(path) else str(path)


def text_or_json(json_path: Path | None, find: Callable[[], T], text: Callable[[T], str],
                 data: Callable[[T], Any], what: str,
                 inputs: Sequence[tuple[str, Path]] = ()) -> T:
    """A listing command's output: ``text`` of what ``find`` returns, or its JSON
    (``--json``: stdout instead of the text, or a file beside it).  The file is checked
    before anything is looked for, and may not be one of ``inputs`` (option, path)."""
    from .. import report as rep

    if json_path is not None:
        rep.check_destinations([("--json", json_path)], inputs)
    found = find()
    if json_path is None or not rep.is_stdout(json_path):
        say(text(found))
    if json_path is not None:
        rep.write_json(data(found), json_path)
        if not rep.is_stdout(json_path):
            progress(f"{what}: {json_path}")
    return found


def say_why_unjudged(rows: Sequence[ResultRow], code: int) -> None:
    """A run (or reproduce) that exits 2 for its rows says so in one ``error:`` line,
    as every other exit 2 does: how many rows could not be judged, and the first one's
    reason (the table's failures list them all)."""
    from ..verdicts.common import Status

    if code != EXIT_ERROR:
        return
    unjudged = [row for row in rows if row.status in (Status.ERROR, Status.INCONCLUSIVE)]
    if not unjudged:
        say("error: the run judged no row", err=True)
        return
    first = unjudged[0]
    reason = first.failures[0] if first.failures else first.status.value
    say(f"error: {len(unjudged)} of {len(rows)} rows could not be judged; first "
        f"[{first.case}] {reason}", err=True)
    say("  hint: the failures above name each row's reason (a missing tool, a guest that "
        "could not boot, a premise that failed); fix it and run again", err=True)

