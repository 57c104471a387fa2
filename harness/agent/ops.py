"""Guest script side of the operation families: one filesystem call per request, by
errno.

``mdh-agent ops ROOT`` reads requests from stdin as triples of NUL-terminated
fields (operation, path, second path; the second is empty for one-path operations),
so no file name can break the input, and answers by request index::

    L i HEXNAME      one entry of the directory request i lists (readdir only; not . ..)
    O i errno        request i finished: 0 on success, else the errno it failed with
    END count        count == number of requests; last line

Pure like the rest of ``agent``: requests in, bytes out, text in, frozen data out; any
deviation from the protocol is a GuestOutputError naming the line.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..errors import GuestOutputError
from .stat import AGENT

# What the agent can do; "readdir" also lists the directory's names.  The agent
# answers an unknown operation with exit status 2 and no END, so the host checks
# names before sending anything.
OPERATIONS = (
    "stat", "lstat", "open", "opendir", "readdir", "readlink", "unlink", "mkdir", "rmdir",
    "creat", "rename", "link", "symlink", "chmod", "truncate", "getxattr", "setxattr",
)
TWO_PATHS = frozenset({"rename", "link", "symlink"})


@dataclass(frozen=True)
class OpRequest:
    """One operation on ``path`` (relative to the agent's root).

    ``path2`` is the destination of rename and link and the text of a symlink
    (``symlink`` makes ``path`` point at ``path2``); empty for the other operations.
    """

    op: str
    path: str
    path2: str = ""


@dataclass(frozen=True)
class OpsAnswer:
    """Parsed ``mdh-agent ops`` output: the errno of every request (0: success) and,
    for each readdir request that ran, the names it listed in readdir order."""

    errnos: tuple[int, ...]
    listings: Mapping[int, tuple[str, ...]]


def ops_command(root: str) -> str:
    """The guest shell command running operations below ``root`` (requests on stdin)."""
    return shlex.join((AGENT, "ops", root))


def _field(text: str, what: str, empty: bool) -> bytes:
    raw = os.fsencode(text)
    if b"\0" in raw or raw.startswith(b"/") or (not raw and not empty):
        raise ValueError(f"agent {what} must be relative, NUL-free"
                         f"{'' if empty else ', non-empty'}: {text!r}")
    return raw + b"\0"


def encode_requests(requests: Sequence[OpRequest]) -> bytes:
    """The agent's stdin for ``requests``.  Raises ValueError for an unknown
    operation, a path the agent could not resolve below its root (empty, absolute,
    NUL), or a second path where the operation takes none (or none where it needs one)."""
    chunks = []
    for request in requests:
        if request.op not in OPERATIONS:
            raise ValueError(f"unknown agent operation {request.op!r}")
        two = request.op in TWO_PATHS
        if two != bool(request.path2):
            raise ValueError(f"{request.op} takes {'two paths' if two else 'one path'}: "
                             f"{request!r}")
        chunks += [request.op.encode() + b"\0", _field(request.path, "path", False),
                   _field(request.path2, "second path", not two)]
    return b"".join(chunks)


def _fail(lines: Sequence[str], number: int, reason: str) -> GuestOutputError:
    return GuestOutputError(reason, line_number=number, line=lines[number - 1])


def _decimal(lines: Sequence[str], number: int, field: str, what: str) -> int:
    if not field.isascii() or not field.isdigit() or (len(field) > 1 and field[0] == "0"):
        raise _fail(lines, number, f"{what} is not a decimal number ({field!r})")
    return int(field)


def _name(lines: Sequence[str], number: int, field: str) -> str:
    try:
        if field != field.lower():
            raise ValueError(field)
        raw = bytes.fromhex(field)
    except ValueError:
        raise _fail(lines, number, "entry name is not lowercase hex of whole bytes") from None
    if not raw or b"/" in raw or b"\0" in raw or raw in (b".", b".."):
        raise _fail(lines, number, f"invalid directory entry name {raw!r}")
    return os.fsdecode(raw)


def _record(lines: Sequence[str], number: int, requests: Sequence[OpRequest],
            errnos: dict[int, int], listings: dict[int, list[str]]) -> None:
    fields = lines[number - 1].split(" ")
    if fields[0] not in ("L", "O") or len(fields) != 3:
        raise _fail(lines, number, f"expected 'L i HEX' or 'O i errno', got {fields[0]!r} "
                    f"with {len(fields) - 1} fields")
    index = _decimal(lines, number, fields[1], "index")
    if index >= len(requests):
        raise _fail(lines, number, f"index {index} out of range ({len(requests)} requests)")
    if index in errnos:
        raise _fail(lines, number, f"record for request {index} after its O record")
    if fields[0] == "O":
        # Requests run in order: an answer out of order is interleaved output.
        if index != len(errnos):
            raise _fail(lines, number, f"answer for request {index} but {len(errnos)} is next")
        errnos[index] = _decimal(lines, number, fields[2], "errno")
        return
    if requests[index].op != "readdir":
        raise _fail(lines, number, f"L record for request {index}, a {requests[index].op}")
    listings.setdefault(index, []).append(_name(lines, number, fields[2]))


def parse_ops_output(text: str, requests: Sequence[OpRequest]) -> OpsAnswer:
    """Parse ``mdh-agent ops`` output for ``requests``.

    Strict: one O record per request in request order, L records only for readdir
    requests and before their O record, and a final ``END count`` matching
    ``len(requests)``.  Anything else raises GuestOutputError naming the line.
    """
    body = text[:-1] if text.endswith("\n") else text
    lines = body.split("\n") if body else []
    errnos: dict[int, int] = {}
    listings: dict[int, list[str]] = {}
    for number, line in enumerate(lines, start=1):
        if line.startswith("END"):
            fields = line.split(" ")
            if len(fields) != 2 or _decimal(lines, number, fields[1], "END count") \
                    != len(requests):
                raise _fail(lines, number, f"END must carry the request count {len(requests)}")
            if number != len(lines):
                raise GuestOutputError("output continues after END", line_number=number + 1,
                                       line=lines[number])
            if len(errnos) != len(requests):
                raise _fail(lines, number, f"END after {len(errnos)} of {len(requests)} "
                            "answers")
            return OpsAnswer(tuple(errnos[i] for i in range(len(requests))),
                             {i: tuple(names) for i, names in listings.items()})
        _record(lines, number, requests, errnos, listings)
    if not lines:
        raise GuestOutputError("agent ops output is empty: no END record (did the agent run?)")
    raise GuestOutputError("ops output ends without an END record (cut off?); last line",
                           line_number=len(lines), line=lines[-1])
