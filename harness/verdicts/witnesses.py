"""Pure judgement side of the witnesses (the ids family): the tools people use, run over
the export in the guest and checked against the host.

Colliding guest ids matter because programs tell files apart by (st_dev, st_ino).
GNU tar and busybox tar store a second file with a known id as a hard link to the
first, ``cp -a`` and ``rsync -aH`` link the copies, ``du`` counts the second file as
already seen, and ``find``/``du`` take a directory whose id equals an ancestor's for
a file system loop and skip it.  Each witness runs one tool the way a user would,
over the whole export, and the result is compared with the host truth:

- copying tools (busybox tar, GNU tar, ``cp -a``, ``rsync -aH``): every file of the
  copy must have its host file's content; every symlink, FIFO and socket must be in
  the copy as the same kind of file (lstat'ed, never opened), or be skipped by a tool
  that still exits 0.  Measured on both guests: both tars store symlinks and FIFOs
  and skip sockets ("socket ignored", exit 0); ``cp -a`` and ``rsync -aH`` (``-a``
  holds ``-D``) copy all three as what they are;
- listing tools (``find``, ``du -a``): every path must be listed (``du``: one path
  per hard-linked host file) and ``du``'s total must be the host's.

A tool's non-zero exit status breaks the witness too.  GNU tools come from the guest
suite's own packages (see the recipe's ``[userland] witnesses``) at ``TOOLS_DIR``;
a guest image without one reports that witness as not run.

Script and parsing are pure; ``run_witnesses`` is one SSH round trip.
"""

from __future__ import annotations

import errno
import stat
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..agent.stat import (
    READ_LIMIT,
    GuestResult,
    GuestStat,
)
from ..agent.witnesses import TOOLS, TOOLS_DIR, Kind, Tool, ToolRun, WitnessRuns
from ..host.truth import EntryKind, HostTruth, kind_of_mode


@dataclass(frozen=True)
class Witness:
    """Whether one tool's result matched the host: ``intact`` None when it did not run;
    ``detail`` is one line saying what went wrong (or what was checked)."""

    tool: str
    intact: bool | None
    detail: str
    rc: int | None = None
    wrong: tuple[str, ...] = ()

    @property
    def ran(self) -> bool:
        return self.intact is not None

    @classmethod
    def not_run(cls, tool: str, reason: str) -> Witness:
        """A witness that was skipped, with why."""
        return cls(tool, None, reason)


def _dirs_above(path: str) -> list[str]:
    """The directories ``path`` lies in, nearest first, "." (the root) not included."""
    parts = path.split("/")
    return ["/".join(parts[:depth]) for depth in range(len(parts) - 1, 0, -1)]


def _fold(missing: Sequence[str], files: Sequence[str]) -> list[str]:
    """Missing files, a directory all of whose files are missing standing for them
    ("'dev01' (all 14 files)")."""
    total = Counter(d for f in files for d in _dirs_above(f))
    lost = Counter(d for f in missing for d in _dirs_above(f))
    whole = {d for d, count in lost.items() if count == total[d]}
    tops = sorted((d for d in whole if whole.isdisjoint(_dirs_above(d))),
                  key=lambda d: (d.count("/"), d))
    shown = [f"{d!r} (all {total[d]} files)" if total[d] > 1 else f"{d!r} (its one file)"
             for d in tops]
    return shown + [repr(p) for p in sorted(missing) if whole.isdisjoint(_dirs_above(p))]


def _first_line(text: str) -> str:
    line = next((line for line in text.splitlines() if line.strip()), "")
    return line.strip()[:200]


def _exit_text(run: ToolRun) -> str:
    if run.rc == 0:
        return ""
    complaint = _first_line(run.stderr)
    return f"; exit {run.rc}" + (f": {complaint}" if complaint else "")


def _shown(items: Sequence[str], limit: int = 3) -> str:
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _owners(truth: HostTruth) -> dict[bytes, str]:
    """Content (the prefix the agent reads) -> the first host file that has it."""
    owners: dict[bytes, str] = {}
    for entry in truth.entries:
        if entry.content is not None:
            owners.setdefault(entry.content[:READ_LIMIT], entry.path)
    return owners


_TYPE_NAMES = {stat.S_IFLNK: "symlink", stat.S_IFIFO: "FIFO", stat.S_IFSOCK: "socket",
               stat.S_IFREG: "regular file", stat.S_IFDIR: "directory",
               stat.S_IFCHR: "character device", stat.S_IFBLK: "block device"}


def _type_name(mode: int) -> str:
    return _TYPE_NAMES.get(stat.S_IFMT(mode), f"file of type {stat.S_IFMT(mode):o}")


def _special_problems(truth: HostTruth, run: ToolRun, ids: Mapping[str, GuestResult]
                      ) -> tuple[dict[str, str], int, int]:
    """(path -> problem, copied, skipped) of the copy's symlinks, FIFOs and sockets: each must
    be the kind of file the original is (the guest's own lstat of it, else the host's
    kind) or absent (skipped: allowed when the tool exits 0, which ``intact`` demands)."""
    problems: dict[str, str] = {}
    copied = skipped = 0
    for entry in truth.entries:
        if entry.kind not in (EntryKind.SYMLINK, EntryKind.OTHER):
            continue
        got = (run.kinds or {}).get(entry.path)
        if got is None or got == errno.ENOENT:
            skipped += 1
        elif isinstance(got, int):
            problems[entry.path] = f"{entry.path!r} in the copy: lstat failed (errno {got})"
        else:
            original = ids.get(entry.path)
            same = (stat.S_IFMT(got.mode) == stat.S_IFMT(original.mode)
                    if isinstance(original, GuestStat) else kind_of_mode(got.mode) is entry.kind)
            if same:
                copied += 1
            else:
                was = _type_name(original.mode) if isinstance(original, GuestStat) \
                    else entry.kind.value
                problems[entry.path] = (f"{entry.path!r} copied as a {_type_name(got.mode)}, "
                                        f"the original is a {was}")
    return problems, copied, skipped


def _copy_witness(tool: Tool, truth: HostTruth, run: ToolRun,
                  owners: Mapping[bytes, str], ids: Mapping[str, GuestResult]) -> Witness:
    copied = run.copied or {}
    files = [e for e in truth.entries if e.kind is EntryKind.FILE and e.content is not None]
    missing: list[str] = []
    wrong: dict[str, str] = {}
    for entry in files:
        got = copied.get(entry.path)
        if got == (entry.content or b"")[:READ_LIMIT]:
            continue
        if got is None or got == errno.ENOENT:
            missing.append(entry.path)
        elif isinstance(got, int):
            wrong[entry.path] = f"{entry.path!r} unreadable (errno {got})"
        else:
            owner = owners.get(got)
            wrong[entry.path] = (f"{entry.path!r} has the content of {owner!r}" if owner
                                 else f"{entry.path!r} has {got[:40]!r}")
    bad = len(missing) + len(wrong)
    parts = [_shown(list(wrong.values()))] if wrong else []
    if missing:
        parts.append(f"missing {_shown(_fold(missing, [e.path for e in files]))}")
    special, kept, skipped = _special_problems(truth, run, ids)
    intact = bad == 0 and not special and run.rc == 0
    summary = (f"all {len(files)} files intact" if bad == 0 else
               f"{bad} of {len(files)} files wrong or missing: {'; '.join(parts)}")
    if kept + skipped + len(special):
        summary += (f"; {kept} of {kept + skipped + len(special)} special files copied "
                    f"as their kind" + (f", {skipped} skipped" if skipped else "")
                    + (f": {_shown(list(special.values()))}" if special else ""))
    return Witness(tool.name, intact, f"{tool.label}: {summary}{_exit_text(run)}", run.rc,
                   tuple(sorted({*missing, *wrong, *special})))


def _expected_groups(truth: HostTruth) -> list[tuple[str, ...]]:
    """What ``du`` counts once: the paths of each hard-linked host file together, every
    other path alone (du, like tar, only looks for hard links among files whose
    st_nlink is above 1: a file reached twice through a bind mount counts twice)."""
    groups: list[tuple[str, ...]] = []
    for paths in truth.by_file_id.values():
        if truth.by_path[paths[0]].nlink > 1 and truth.by_path[paths[0]].kind is not EntryKind.DIR:
            groups.append(paths)
        else:
            groups += [(path,) for path in paths]
    return groups


def _listed_ids(truth: HostTruth, listed: set[str], ids: Mapping[str, GuestResult]
                ) -> dict[tuple[int, int], list[str]]:
    """Guest id -> the listed paths that had it, in host truth order."""
    index: dict[tuple[int, int], list[str]] = {}
    for path in truth.paths:
        if path in listed and isinstance(seen := ids.get(path), GuestStat):
            index.setdefault(seen.guest_id, []).append(path)
    return index


def _why_missing(truth: HostTruth, path: str, ids: Mapping[str, GuestResult],
                 listed_ids: Mapping[tuple[int, int], list[str]]) -> str:
    """Why a listing tool left ``path`` out, from the guest ids it saw."""
    mine = ids.get(path)
    if not isinstance(mine, GuestStat):
        return "not listed"
    if mine.is_dir:
        loop = next((a for a in (*_dirs_above(path), ".")
                     if isinstance(seen := ids.get(a), GuestStat)
                     and seen.guest_id == mine.guest_id), None)
        return f"taken for a loop with {loop!r}" if loop else "not listed"
    host = truth.by_path[path].file_id
    twin = next((p for p in listed_ids.get(mine.guest_id, ())
                 if truth.by_path[p].file_id != host), None)
    return f"taken for a hard link of {twin!r}" if twin else "not listed"


def _listing_problems(truth: HostTruth, listed: Sequence[str],
                      groups: Sequence[tuple[str, ...]] | None,
                      ids: Mapping[str, GuestResult]) -> tuple[list[str], list[str]]:
    """(problems, missing paths) of a listing: ``find`` (``groups`` None) must print
    every path, ``du`` one path of each of ``groups`` (``_expected_groups``)."""
    got = set(listed)
    if groups is not None:
        missing = [path for group in groups if got.isdisjoint(group) for path in group]
    else:
        missing = [path for path in truth.paths if path not in got]
    gone = set(missing)
    tops = [p for p in missing if gone.isdisjoint(_dirs_above(p))]
    below = Counter(top for p in missing for top in _dirs_above(p) if top in gone)
    listed_ids = _listed_ids(truth, got, ids)
    problems = []
    for top in tops:
        extra = f" (and the {below[top]} paths below)" if below[top] else ""
        problems.append(f"{top!r} {_why_missing(truth, top, ids, listed_ids)}{extra}")
    problems += [f"hard links {_shown([repr(p) for p in group])} all counted"
                 for group in groups or () if len(got.intersection(group)) > 1]
    problems += [f"{p!r} listed twice" for p, n in sorted(Counter(listed).items()) if n > 1]
    problems += [f"{p!r} listed, which the host does not have"
                 for p in sorted(got - set(truth.paths))]
    return problems, missing


def _listing_witness(tool: Tool, truth: HostTruth, run: ToolRun,
                     ids: Mapping[str, GuestResult]) -> Witness:
    groups = _expected_groups(truth) if tool.kind is Kind.SIZES else None
    listed = [path for path, _ in run.listed or ()]
    problems, missing = _listing_problems(truth, listed, groups, ids)
    if groups is not None:
        # Files only: what du makes of a directory's own size differs between coreutils
        # versions (9.1 adds st_size, 9.7 does not), a file's size does not.
        files = {p: e.size for p, e in truth.by_path.items() if e.kind is EntryKind.FILE}
        want = sum(truth.by_path[group[0]].size for group in groups if group[0] in files)
        counted_sizes = [(path, size) for path, size in run.listed or () if path in files]
        counted = f"counted {sum(size or 0 for _, size in counted_sizes)} B of {want} B of files"
        problems += [f"{path!r} counted as {size} B, the host has {files[path]} B"
                     for path, size in counted_sizes if size != files[path]]
    else:
        counted = f"listed {len(set(listed) & set(truth.paths))} of {len(truth.paths)} paths"
    intact = not problems and run.rc == 0
    summary = "; ".join([counted, _shown(problems)] if problems else [counted])
    return Witness(tool.name, intact, f"{tool.label}: {summary}{_exit_text(run)}", run.rc,
                   tuple(sorted(missing)))


def judge_witnesses(truth: HostTruth, runs: WitnessRuns | None,
                    ids: Mapping[str, GuestResult]) -> tuple[Witness, ...]:
    """Every tool's witness, in TOOLS order; ``ids``: the guest's first stat pass
    (which says why a listing tool skipped a path)."""
    if runs is None:
        return ()
    owners = _owners(truth)
    witnesses = []
    for tool in TOOLS:
        run = runs.runs[tool.name]
        if run.rc is None:
            witnesses.append(Witness.not_run(
                tool.name, f"{tool.label}: not in the guest image ({TOOLS_DIR}/{tool.binary})"))
        elif tool.kind is Kind.COPY:
            witnesses.append(_copy_witness(tool, truth, run, owners, ids))
        else:
            witnesses.append(_listing_witness(tool, truth, run, ids))
    return tuple(witnesses)
