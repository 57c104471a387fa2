"""Guest script side of the witnesses (the ids family): the tools people use (busybox
and GNU tar, ``cp -a``, ``rsync -aH``, ``du``, ``find``), run over the export in the
guest, and the parser of what they left.  Pure: the tool table, the script and the
parsers; ``verdicts.witnesses`` judges the result and ``checks.ids`` runs the script
over SSH."""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from ..config import GUEST_TOOLS_DIR
from ..errors import GuestOutputError
from .harm import printf_command
from .stat import (
    GuestResult,
    encode_paths,
    parse_read_output,
    parse_stat_output,
    read_command,
    stat_command,
)

TOOLS_DIR = GUEST_TOOLS_DIR


_WORK = "/tmp/mdh-witness"


_ERR_LIMIT = 600  # bytes of a tool's stderr kept (its first complaint is what matters)


class Kind(StrEnum):
    """How a witness's result is compared with the host."""

    COPY = "copy"  # a copy of the export in $W/out, read back file by file
    LIST = "list"  # NUL-separated paths in $W/list
    SIZES = "sizes"  # du -0ab: "SIZE<TAB>PATH" NUL-separated in $W/list


@dataclass(frozen=True)
class Tool:
    """One witness: its name (the JSON key), how it reads in a sentence, and the shell
    command run with the mount point as cwd ($T: TOOLS_DIR, $W: a fresh work dir)."""

    name: str
    label: str
    kind: Kind
    command: str
    binary: str | None  # under TOOLS_DIR; None: busybox, always there


TOOLS: tuple[Tool, ...] = (
    Tool("busybox-tar", "busybox tar", Kind.COPY,
         'tar -cf "$W/a.tar" . && tar -xf "$W/a.tar" -C "$W/out"', None),
    Tool("tar", "GNU tar", Kind.COPY,
         '"$T/tar" -cf "$W/a.tar" . && "$T/tar" -xf "$W/a.tar" -C "$W/out"',
         "tar"),
    Tool("cp", "cp -a", Kind.COPY, '"$T/cp" -a . "$W/out"', "cp"),
    Tool("rsync", "rsync -aH", Kind.COPY, '"$T/rsync" -aH ./ "$W/out/"', "rsync"),
    Tool("du", "du -ab", Kind.SIZES, '"$T/du" -0ab . > "$W/list"', "du"),
    Tool("find", "find", Kind.LIST, '"$T/find" . -print0 > "$W/list"', "find"),
)


TOOL_NAMES = tuple(tool.name for tool in TOOLS)


# Bytes as one line of hex: names may hold newlines, stderr may quote them.
_HEX_OF = "{0} 2>/dev/null | tr -d ' \\n'; echo"


# Every process costs the guest tens of milliseconds under TCG, six tools over every
# witnessed export: so the script starts none it can do without.  Each tool's stderr
# goes to a file of its own, all read back at the end by one agent call; a list is
# emptied by the shell (``:``), not by rm; a copy is removed once read, so at most
# one copy of the export is in the guest's RAM at a time.
def _tool_lines(tool: Tool, point: str, kinds: bool, wpaths: str) -> list[str]:
    run = f'(cd {point} && {tool.command}) 2> "$W/err/{tool.name}"'
    if tool.kind is Kind.COPY:
        # $W/out exists before the tool runs, so a tool that fails early leaves an
        # empty copy (every file missing), not a read-back of nothing.
        body = [f'mkdir "$W/out"; {run}', 'echo "@@RC $?"',
                "echo @@READ", f"{read_command(_WORK + '/out')} < {wpaths}"]
        if kinds:
            # The copies of the symlinks, FIFOs and sockets are lstat'ed, never opened:
            # a FIFO would block the read-back.
            body += ["echo @@KINDS", f"{stat_command(_WORK + '/out', 1, 1)} < /tmp/mdh-wspecial"]
        body.append('rm -rf "$W/out" "$W/a.tar"')
    else:
        # Emptied first: a tool that never gets to write it lists nothing, not the
        # previous tool's list.
        body = [f': > "$W/list"; {run}', 'echo "@@RC $?"',
                "printf '@@LIST '", _HEX_OF.format('od -An -v -tx1 "$W/list"')]
    lines = [f"echo '@@W {tool.name}'"]
    if tool.binary is None:
        return lines + body
    return [*lines, f'if [ -x "$T/{tool.binary}" ]; then', *body, "else echo @@ABSENT; fi"]


def witness_script(mount_point: str, specials: Sequence[str] = (),
                   paths_file: str | None = None) -> str:
    """The guest shell script: every tool in turn over ``mount_point`` (paths for the
    read-back on stdin, none of them a FIFO or a socket; ``specials``: the paths whose
    copies are lstat'ed instead), then every tool's stderr (``@@ERRS``: one agent read
    of a file per tool, in TOOLS order) and the kernel log the tools caused.

    ``paths_file``: the read-back's paths are already in this guest file (the
    collection's, when they are the same paths), and stdin is not read."""
    point = shlex.quote(mount_point)
    wpaths = paths_file or "/tmp/mdh-wpaths"
    lines = [*([] if paths_file else [f"cat > {wpaths}"]), f"T={TOOLS_DIR}; W={_WORK}",
             f"{printf_command(encode_paths(TOOL_NAMES))} > /tmp/mdh-wtools",
             'rm -rf "$W"; mkdir -p "$W/err"']
    if specials:
        lines.append(f"{printf_command(encode_paths(specials))} > /tmp/mdh-wspecial")
    for tool in TOOLS:
        lines += _tool_lines(tool, point, bool(specials), wpaths)
    lines += ["echo @@ERRS", f"{read_command(_WORK + '/err')} < /tmp/mdh-wtools",
              'rm -rf "$W" /tmp/mdh-wpaths /tmp/mdh-wspecial /tmp/mdh-wtools',
              "echo @@DMESG", "dmesg -c", "echo @@DONE"]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class ToolRun:
    """What one tool did: exit status, stderr, and the copy read back (COPY) or what
    it listed (LIST: paths; SIZES: (path, size)); ``rc`` None: not in the image."""

    tool: str
    rc: int | None
    stderr: str = ""
    copied: Mapping[str, bytes | int] | None = None
    listed: tuple[tuple[str, int | None], ...] | None = None
    # COPY: the lstat of each special path (symlink, FIFO, socket) in the copy.
    kinds: Mapping[str, GuestResult] | None = None


@dataclass(frozen=True)
class WitnessRuns:
    """Every tool's run and the kernel log written meanwhile."""

    runs: Mapping[str, ToolRun]
    dmesg: str


def _unhex(text: str, what: str) -> bytes:
    try:
        return bytes.fromhex(text.strip())
    except ValueError:
        raise GuestOutputError(f"witness output: {what} is not hex",
                               details=text[:400]) from None


def _relative(raw: bytes) -> str:
    path = raw.decode("utf-8", "surrogateescape")
    return "." if path == "." else path.removeprefix("./")


def parse_listing(data: bytes, sizes: bool) -> tuple[tuple[str, int | None], ...]:
    """``find -print0`` (paths) or ``du -0ab`` (``SIZE\\tPATH``) output, paths made
    relative like the host truth's ("." for the root)."""
    items: list[tuple[str, int | None]] = []
    records = data.split(b"\0") if data else []
    for record in records[:-1] if data.endswith(b"\0") else records:
        if not sizes:
            items.append((_relative(record), None))
            continue
        size, tab, path = record.partition(b"\t")
        if not tab or not size.isdigit():
            raise GuestOutputError(f"du output record is not SIZE<TAB>PATH: {record[:80]!r}")
        items.append((_relative(path), int(size)))
    return tuple(items)


def _parse_block(block: str, paths: Sequence[str], specials: Sequence[str],
                 errors: Mapping[str, bytes | int]) -> ToolRun:
    name, _, rest = block.partition("\n")
    tool = next((t for t in TOOLS if t.name == name.strip()), None)
    if tool is None:
        raise GuestOutputError(f"witness output names an unknown tool {name!r}")
    if rest.startswith("@@ABSENT"):
        return ToolRun(tool.name, None)
    head, _, body = rest.partition("\n")
    if not head.startswith("@@RC ") or not head[5:].strip().isdigit():
        raise GuestOutputError(f"witness {tool.name}: no exit status", details=block[:400])
    rc = int(head[5:])
    err = errors[tool.name]
    if not isinstance(err, bytes):
        raise GuestOutputError(f"witness {tool.name}: its stderr file could not be read "
                               f"(errno {err})", details=block[-400:])
    stderr = err[:_ERR_LIMIT].decode(errors="replace")
    if tool.kind is Kind.COPY:
        if not body.startswith("@@READ\n"):
            raise GuestOutputError(f"witness {tool.name}: output ends early",
                                   details=block[-400:])
        read, found, stats = body.removeprefix("@@READ\n").partition("@@KINDS\n")
        if bool(found) != bool(specials):
            raise GuestOutputError(f"witness {tool.name}: the special files' section is "
                                   f"{'unexpected' if found else 'missing'}",
                                   details=block[-400:])
        kinds = parse_stat_output(stats, specials, passes=1).passes[0] if specials else {}
        return ToolRun(tool.name, rc, stderr, copied=parse_read_output(read, paths),
                       kinds=kinds)
    if not body.startswith("@@LIST "):
        raise GuestOutputError(f"witness {tool.name}: output ends early", details=block[-400:])
    listing = _unhex(body.removeprefix("@@LIST "), f"{tool.name}'s listing")
    return ToolRun(tool.name, rc, stderr, listed=parse_listing(listing, tool.kind is Kind.SIZES))


def parse_witness_output(text: str, paths: Sequence[str],
                         specials: Sequence[str] = ()) -> WitnessRuns:
    """Split the script's output per tool; every tool of TOOLS must be there.  ``paths``
    and ``specials`` as given to ``witness_script``."""
    body, sep, tail = text.partition("@@DMESG\n")
    dmesg, done, _ = tail.partition("@@DONE")
    if not sep or not done:
        raise GuestOutputError("witness output has no @@DMESG ... @@DONE", details=text[-400:])
    body, sep, errs = body.partition("@@ERRS\n")
    if not sep:
        raise GuestOutputError("witness output has no @@ERRS section", details=text[-400:])
    errors = parse_read_output(errs, TOOL_NAMES)
    runs = {run.tool: run for run in (_parse_block(block, paths, specials, errors)
                                      for block in body.split("@@W ")[1:])}
    missing = [name for name in TOOL_NAMES if name not in runs]
    if missing:
        raise GuestOutputError(f"witness output lacks {', '.join(missing)}", details=text[-400:])
    return WitnessRuns(runs, dmesg)
