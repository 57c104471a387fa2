"""Guest script side of the ids family's harm probe: the command that holds one twin and
reads the other under an inode cache, and the parser of its records
(``mdh-agent harm``).  Pure: text in, frozen data out; any deviation is a
GuestOutputError naming the line."""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .stat import (
    AGENT,
    _check_end,
    _check_paths,
    _errno,
    _hex,
    _index,
    _Lines,
    _no_end,
    _number,
)

_SHELL_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._/-")


_HARM_FIELDS = {"C": 3, "M": 3, "T": 3, "L": 3, "N": 3, "W": 3, "P": 3, "X": 4}


_HARM_OPS = frozenset(("open", "read", "mmap", "fstat", "lstat", "chdir", "opendir",
                       "readdir", "readlink"))


@dataclass(frozen=True)
class FileSeen:
    """What one file showed while its twin was held open (None: that access failed).

    ``lock`` is flock(LOCK_EX|LOCK_NB)'s result: 0 granted, else its errno.
    """

    content: bytes | None = None
    mapped: bytes | None = None
    mtime: int | None = None
    lock: int | None = None


@dataclass(frozen=True)
class HarmObservation:
    """Parsed ``mdh-agent harm`` output, by path.

    ``files``: each file of a file pair.  ``listed``: the names opendir listed for the
    second directory of a pair; ``cwd``: where /proc/self/cwd pointed afterwards, per
    first directory (held as the cwd); ``cwd_listed``: what "." listed then.
    ``errors``: every failed access as (path, operation, errno).
    """

    files: Mapping[str, FileSeen]
    listed: Mapping[str, tuple[str, ...]]
    cwd: Mapping[str, str]
    cwd_listed: Mapping[str, tuple[str, ...]]
    errors: tuple[tuple[str, str, int], ...]


def harm_command(root: str) -> str:
    """The guest shell command of the harm probe of ``root`` (pairs of paths on stdin)."""
    return shlex.join((AGENT, "harm", root))


def printf_command(data: bytes) -> str:
    """A ``printf`` command writing exactly ``data`` (NULs included).

    The collection script already takes the stat paths on stdin, so further binary
    input is spelled out: every byte that is not plainly safe becomes a \\ooo octal
    escape inside single quotes, which neither the shell nor printf can misread.
    """
    body = "".join(chr(b) if b in _SHELL_SAFE else f"\\{b:03o}" for b in data)
    return f"printf '{body}'"


def _harm_field(lines: _Lines, number: int, kind: str, field: str) -> bytes | int:
    if kind in ("C", "M", "W", "N", "P"):
        raw = _hex(lines, number, field, "payload")
        if kind in ("N", "P") and (not raw or b"/" in raw or raw in (b".", b"..")):
            raise lines.error(number, f"invalid directory entry name {raw!r}")
        return raw
    if kind == "T":
        return _number(lines, number, field, "mtime")
    return _number(lines, number, field, "flock result")


def _harm_records(text: str, count: int) -> list[tuple[int, str, int, bytes | int | str]]:
    """(line number, kind, index, value) of every record before END, checked."""
    lines = _Lines(text)
    records: list[tuple[int, str, int, bytes | int | str]] = []
    for number, line in enumerate(lines.lines, start=1):
        fields = line.split(" ")
        kind = fields[0]
        if kind == "END":
            _check_end(lines, number, fields, count)
            return records
        if kind not in _HARM_FIELDS:
            raise lines.error(number, f"unknown record type {kind!r}")
        if kind in ("C", "M") and len(fields) == 2:  # an empty file, blank dropped
            fields.append("")
        if len(fields) != _HARM_FIELDS[kind]:
            raise lines.error(number, f"{kind} record needs {_HARM_FIELDS[kind] - 1} fields")
        index = _index(lines, number, fields[1], count)
        if kind == "X":
            if fields[2] not in _HARM_OPS:
                raise lines.error(number, f"unknown operation {fields[2]!r}")
            records.append((number, kind, index, f"{fields[2]} {_errno(lines, number, fields[3])}"))
        else:
            records.append((number, kind, index, _harm_field(lines, number, kind, fields[2])))
    raise _no_end(lines)


def parse_harm_output(text: str, paths: Sequence[str]) -> HarmObservation:
    """Parse ``mdh-agent harm`` output for the ``paths`` (pairs) that were fed to it.

    Strict: known records only, one C/M/T/L/W per index, indexes in range, a final
    ``END count``; anything else raises GuestOutputError naming the line.
    """
    _check_paths(paths)
    lines = _Lines(text)
    single: dict[tuple[str, int], bytes | int] = {}
    names: dict[tuple[str, int], list[str]] = {}
    errors: list[tuple[str, str, int]] = []
    for number, kind, index, value in _harm_records(text, len(paths)):
        if isinstance(value, str):
            op, _, code = value.partition(" ")
            errors.append((paths[index], op, int(code)))
        elif kind in ("N", "P"):
            assert isinstance(value, bytes)
            names.setdefault((kind, index), []).append(os.fsdecode(value))
        elif (kind, index) in single:
            raise lines.error(number, f"second {kind} record for index {index}")
        else:
            single[(kind, index)] = value
    files: dict[str, FileSeen] = {}
    for index, path in enumerate(paths):
        got = {kind: single.get((kind, index)) for kind in "CMTL"}
        if any(value is not None for value in got.values()):
            content, mapped, mtime, lock = got["C"], got["M"], got["T"], got["L"]
            files[path] = FileSeen(content if isinstance(content, bytes) else None,
                                   mapped if isinstance(mapped, bytes) else None,
                                   mtime if isinstance(mtime, int) else None,
                                   lock if isinstance(lock, int) else None)
    return HarmObservation(
        files=files,
        listed={paths[i]: tuple(v) for (kind, i), v in names.items() if kind == "N"},
        cwd={paths[i]: os.fsdecode(v) for (kind, i), v in single.items()
             if kind == "W" and isinstance(v, bytes)},
        cwd_listed={paths[i]: tuple(v) for (kind, i), v in names.items() if kind == "P"},
        errors=tuple(errors),
    )
