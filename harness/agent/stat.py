"""Guest script side of the ids family: what an observation feeds the guest, how it
answers.

``mdh-agent`` is a small static C program in the guest image. It reads relative paths
from stdin, NUL-terminated, and answers one record per line with space-separated
decimal fields; names are hex-encoded, so paths with spaces or newlines can neither
break the input nor the output. Everything here is pure: bytes and text in, frozen
data out, and any deviation from the protocol is a GuestOutputError naming the line.

Protocol of ``mdh-agent stat ROOT PASSES THREADS`` (i = index into the input paths)::

    S p i dev ino nlink mode     lstat(ROOT/path) in pass p succeeded
    E p i errno                  lstat failed
    D i d_ino HEXNAME            after pass 1, one per entry of directory i (not . ..)
    DE i errno                   opendir/readdir of directory i failed
    END count                    count == number of input paths; last line

Protocol of ``mdh-agent read ROOT``::

    R i HEX                      the file's content (at most READ_LIMIT bytes), hex
    RE i errno                   open/read failed
    END count
"""

from __future__ import annotations

import os
import re
import shlex
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..errors import GuestOutputError

AGENT = "mdh-agent"


# The agent reads at most this much of each file; the witnesses compare only this prefix.
READ_LIMIT = 4096


STAT_PASSES = 2


# Threads in the agent: several 9p requests in flight overlap QEMU's work with the
# guest's (10,000 lstats under TCG: 6.2 s with 1 thread, 3.3 s with 4; 2.8 s with 8
# threads on 2 vCPUs).  But concurrent lookups under cache=none occasionally made a
# first-pass lstat fail with ENOENT (seen in ~1 of 8 loaded runs), so verdicts use
# one thread and only the scale benchmark opts into more.
AGENT_THREADS = 1


SCALE_AGENT_THREADS = 8


_HEX = re.compile(r"(?:[0-9a-f]{2})*")


_DECIMAL = re.compile(r"0|[1-9][0-9]*")


@dataclass(frozen=True, slots=True)
class GuestStat:
    """One successful lstat in the guest."""

    dev: int
    ino: int
    nlink: int
    mode: int

    @property
    def guest_id(self) -> tuple[int, int]:
        """(st_dev, st_ino): how programs in the guest (tar, du, find) tell files apart."""
        return (self.dev, self.ino)

    @property
    def is_dir(self) -> bool:
        """True for a directory."""
        return stat.S_ISDIR(self.mode)


# An errno (int) where the lstat failed.
GuestResult = GuestStat | int


@dataclass(frozen=True)
class GuestObservation:
    """Parsed ``mdh-agent stat`` output.

    ``passes[0]`` is pass 1: path -> GuestStat, or the errno of a failed lstat.
    ``dirents`` lists, for each directory that could be read after pass 1, its entries
    as (name, d_ino) in readdir order; ``dirent_errors`` holds directories whose
    opendir/readdir failed (their entries read before the failure stay in ``dirents``).
    """

    passes: tuple[Mapping[str, GuestResult], ...]
    dirents: Mapping[str, tuple[tuple[str, int], ...]]
    dirent_errors: Mapping[str, int]


def stat_command(root: str, passes: int, threads: int) -> str:
    """The guest shell command of a stat observation of ``root`` (paths on stdin)."""
    return shlex.join((AGENT, "stat", root, str(int(passes)), str(int(threads))))


def read_command(root: str) -> str:
    """The guest shell command reading every input path below ``root``."""
    return shlex.join((AGENT, "read", root))


def encode_paths(paths: Sequence[str]) -> bytes:
    """The agent's stdin: each relative path followed by a NUL byte (like find -print0).

    NUL is the one byte no file name can contain, so names with spaces and newlines
    pass unharmed. Raises ValueError for a path the agent could not resolve below its
    root: empty, absolute, or containing NUL.
    """
    chunks: list[bytes] = []
    for path in paths:
        raw = os.fsencode(path)
        if not raw or raw.startswith(b"/") or b"\0" in raw:
            raise ValueError(f"agent input path must be relative, non-empty, NUL-free: {path!r}")
        chunks.append(raw + b"\0")
    return b"".join(chunks)


class _Lines:
    """Numbered protocol lines with one place that turns a complaint into an error."""

    def __init__(self, text: str) -> None:
        # A final newline ends the last record; any other empty line is an error.
        body = text[:-1] if text.endswith("\n") else text
        self.lines = body.split("\n") if body else []

    def error(self, number: int, reason: str) -> GuestOutputError:
        return GuestOutputError(reason, line_number=number, line=self.lines[number - 1])


def _number(lines: _Lines, number: int, field: str, what: str) -> int:
    if not _DECIMAL.fullmatch(field):
        raise lines.error(number, f"{what} is not a decimal number ({field!r})")
    return int(field)


def _index(lines: _Lines, number: int, field: str, count: int) -> int:
    index = _number(lines, number, field, "index")
    if index >= count:
        raise lines.error(number, f"index {index} out of range (there are {count} paths)")
    return index


def _errno(lines: _Lines, number: int, field: str) -> int:
    code = _number(lines, number, field, "errno")
    if code == 0:
        raise lines.error(number, "errno 0 in an error record")
    return code


def _hex(lines: _Lines, number: int, field: str, what: str) -> bytes:
    # fromhex alone would accept upper case and embedded blanks; the protocol does not.
    if not _HEX.fullmatch(field):
        raise lines.error(number, f"{what} is not lowercase hex of whole bytes")
    return bytes.fromhex(field)


def _check_end(lines: _Lines, number: int, fields: list[str], count: int) -> None:
    if len(fields) != 2:
        raise lines.error(number, "END takes 1 field")
    got = _number(lines, number, fields[1], "END count")
    if got != count:
        raise lines.error(number, f"END count {got} but {count} paths were sent")
    if number != len(lines.lines):
        raise GuestOutputError(
            "output continues after END", line_number=number + 1, line=lines.lines[number]
        )


def _no_end(lines: _Lines) -> GuestOutputError:
    if not lines.lines:
        return GuestOutputError("agent output is empty: no END record (did the agent run?)")
    last = len(lines.lines)
    return GuestOutputError(
        "output ends without an END record (cut off?); last line",
        line_number=last,
        line=lines.lines[-1],
    )


def _check_paths(paths: Sequence[str]) -> None:
    if len(set(paths)) != len(paths):
        raise ValueError("agent input paths must be unique")


class _StatParser:
    """State of one ``mdh-agent stat`` parse; one method per record family."""

    def __init__(self, text: str, count: int, passes: int | None) -> None:
        self.lines = _Lines(text)
        self.count = count
        self.passes = passes
        self.results: dict[int, dict[int, GuestResult]] = {}
        self.dirents: dict[int, list[tuple[str, int]]] = {}
        self.dirent_errors: dict[int, int] = {}
        self.current_pass = 0

    def stat_record(self, number: int, fields: list[str]) -> None:
        lines, kind = self.lines, fields[0]
        want = 7 if kind == "S" else 4
        if len(fields) != want:
            raise lines.error(number, f"{kind} record needs {want - 1} fields")
        pass_no = _number(lines, number, fields[1], "pass")
        if pass_no < 1 or (self.passes is not None and pass_no > self.passes):
            raise lines.error(number, f"pass {pass_no} out of range")
        if pass_no != self.current_pass:
            self._begin_pass(number, pass_no)
        index = _index(lines, number, fields[2], self.count)
        answered = self.results[pass_no]
        if index in answered:
            raise lines.error(number, f"second record for pass {pass_no} index {index}")
        if kind == "S":
            dev, ino, nlink, mode = (
                _number(lines, number, field, what)
                for field, what in zip(fields[3:], ("dev", "ino", "nlink", "mode"), strict=True)
            )
            answered[index] = GuestStat(dev, ino, nlink, mode)
        else:
            answered[index] = _errno(lines, number, fields[3])

    def _begin_pass(self, number: int, pass_no: int) -> None:
        # The agent runs its passes one after another; records of an earlier pass
        # turning up later mean interleaved or corrupted output.
        lines, current = self.lines, self.current_pass
        if pass_no < current:
            raise lines.error(number, f"pass {pass_no} record after pass {current} began")
        if pass_no > current + 1:
            raise lines.error(number, f"pass {pass_no} began before pass {current + 1}")
        if current and len(self.results[current]) != self.count:
            raise lines.error(
                number,
                f"pass {pass_no} began with pass {current} incomplete "
                f"({len(self.results[current])} of {self.count} paths)",
            )
        self.current_pass = pass_no
        self.results[pass_no] = {}

    def dir_record(self, number: int, fields: list[str]) -> None:
        lines, kind = self.lines, fields[0]
        want = 4 if kind == "D" else 3
        if len(fields) != want:
            raise lines.error(number, f"{kind} record needs {want - 1} fields")
        index = _index(lines, number, fields[1], self.count)
        first = self.results.get(1, {}).get(index)
        if first is None:
            raise lines.error(number, f"{kind} record for index {index} before its pass-1 stat")
        if not isinstance(first, GuestStat) or not first.is_dir:
            raise lines.error(number, f"{kind} record for index {index}, not a directory")
        if index in self.dirent_errors:
            raise lines.error(number, f"{kind} record for index {index} after its DE record")
        if kind == "DE":
            self.dirent_errors[index] = _errno(lines, number, fields[2])
            return
        d_ino = _number(lines, number, fields[2], "d_ino")
        raw = _hex(lines, number, fields[3], "entry name")
        if not raw or b"/" in raw or b"\0" in raw or raw in (b".", b".."):
            raise lines.error(number, f"invalid directory entry name {raw!r}")
        self.dirents.setdefault(index, []).append((os.fsdecode(raw), d_ino))

    def run(self) -> None:
        lines = self.lines
        for number, line in enumerate(lines.lines, start=1):
            fields = line.split(" ")
            if fields[0] in ("S", "E"):
                self.stat_record(number, fields)
            elif fields[0] in ("D", "DE"):
                self.dir_record(number, fields)
            elif fields[0] == "END":
                _check_end(lines, number, fields, self.count)
                break
            else:
                raise lines.error(number, f"unknown record type {fields[0]!r}")
        else:
            raise _no_end(lines)
        total = self.passes if self.passes is not None else self.current_pass
        for pass_no in range(1, total + 1):
            got = len(self.results.get(pass_no, {}))
            if got != self.count:
                raise GuestOutputError(
                    f"pass {pass_no} answered {got} of {self.count} paths",
                    line_number=len(lines.lines),
                    line=lines.lines[-1],
                )


def parse_stat_output(
    text: str, paths: Sequence[str], *, passes: int | None = None
) -> GuestObservation:
    """Parse ``mdh-agent stat`` output for the ``paths`` that were fed to it.

    Strict: every (pass, index) must be answered exactly once, passes numbered 1..P in
    order (P = ``passes`` if given, else the highest seen), D/DE records only for
    directories that pass 1 found, and a final ``END count`` matching ``len(paths)``.
    Anything else raises GuestOutputError naming the offending line.
    """
    _check_paths(paths)
    parser = _StatParser(text, len(paths), passes)
    parser.run()
    total = passes if passes is not None else parser.current_pass
    return GuestObservation(
        passes=tuple(
            {path: parser.results[p][i] for i, path in enumerate(paths)}
            for p in range(1, total + 1)
        ),
        dirents={paths[i]: tuple(entries) for i, entries in parser.dirents.items()},
        dirent_errors={paths[i]: code for i, code in parser.dirent_errors.items()},
    )


def parse_read_output(text: str, paths: Sequence[str]) -> dict[str, bytes | int]:
    """Parse ``mdh-agent read`` output: path -> content bytes, or the errno of the read.

    Strict like ``parse_stat_output``: one R/RE record per index, content no longer
    than READ_LIMIT, and a final ``END count``. An empty file is ``R i`` with an empty
    (or absent) HEX field.
    """
    _check_paths(paths)
    count = len(paths)
    lines = _Lines(text)
    results: dict[int, bytes | int] = {}
    ended = False
    for number, line in enumerate(lines.lines, start=1):
        fields = line.split(" ")
        kind = fields[0]
        if kind == "R":
            if len(fields) == 2:  # "R i" for an empty file, if the agent drops the blank
                fields.append("")
            if len(fields) != 3:
                raise lines.error(number, "R record needs 2 fields")
        elif kind == "RE":
            if len(fields) != 3:
                raise lines.error(number, "RE record needs 2 fields")
        elif kind == "END":
            _check_end(lines, number, fields, count)
            ended = True
            break
        else:
            raise lines.error(number, f"unknown record type {kind!r}")
        index = _index(lines, number, fields[1], count)
        if index in results:
            raise lines.error(number, f"second record for index {index}")
        if kind == "R":
            content = _hex(lines, number, fields[2], "content")
            if len(content) > READ_LIMIT:
                raise lines.error(number, f"content of {len(content)} bytes exceeds {READ_LIMIT}")
            results[index] = content
        else:
            results[index] = _errno(lines, number, fields[2])
    if not ended:
        raise _no_end(lines)
    if len(results) != count:
        missing = next(i for i in range(count) if i not in results)
        raise GuestOutputError(
            f"answered {len(results)} of {count} paths (first missing: index {missing})",
            line_number=len(lines.lines),
            line=lines.lines[-1],
        )
    return {paths[i]: results[i] for i in range(count)}
