"""Walking a real directory tree the way the guest agent will look at it.

``walk_tree`` records the host truth of a user's tree (``run --export``, ``predict``)
in the truth order (depth first, names sorted, "." first): the order the agent's stat
passes take and the order QEMU first sees each file in, which the remap model needs.
It only reads: lstat, readdir and (for the witnesses) the first bytes of each file.

What it cannot see is recorded, never raised: a directory it cannot list, a name it
cannot stat (a mount point another user's FUSE server guards), a special file, a file
it cannot read.  What makes the walk itself impossible (no such directory, a file, an
unreadable root, more paths than ``max_paths``) raises TreeError, one line.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from ..config import DEFAULT_MAX_PATHS
from ..errors import TreeError
from ..progress import Progress, quiet
from .mounts import MountEntry, mounts_under, parse_mountinfo
from .truth import EntryKind, ExportDevice, HostEntry, HostTruth

_KINDS = {stat.S_IFREG: EntryKind.FILE, stat.S_IFDIR: EntryKind.DIR,
          stat.S_IFLNK: EntryKind.SYMLINK}
# A progress line every this many paths: a 100,000-path tree says so a few times.
_PROGRESS_EVERY = 25_000


class Unseen(StrEnum):
    """Why part of a tree is missing from (or marked in) its host truth."""

    UNLISTABLE = "directory not listable"  # its entries are not in the truth
    UNSTATABLE = "cannot lstat"  # not in the truth at all
    UNREADABLE = "file not readable"  # in the truth, its content unknown
    SPECIAL = "special file"  # in the truth; a fifo, socket or device node


@dataclass(frozen=True)
class WalkProblem:
    """One path the walk could not see whole, and why (errno text where one)."""

    path: str
    why: Unseen
    detail: str = ""

    def describe(self) -> str:
        """``'path': why (detail)``."""
        return f"{self.path!r}: {self.why.value}" + (f" ({self.detail})" if self.detail else "")


@dataclass(frozen=True)
class TreeWalk:
    """A walked tree: its truth, its devices by first sight, the mounts it lies on and
    what the walk could not see."""

    root: Path  # resolved
    truth: HostTruth
    devices: tuple[ExportDevice, ...]
    mounts: tuple[MountEntry, ...]
    problems: tuple[WalkProblem, ...]
    seconds: float

    @property
    def file_bytes(self) -> int:
        """Bytes in the tree's regular files (one count per path)."""
        return sum(e.size for e in self.truth.entries if e.kind is EntryKind.FILE)


def _errno_text(exc: OSError) -> str:
    return f"{exc.strerror} ({errno.errorcode.get(exc.errno or 0, '?')})"


def resolve_tree(path: Path) -> Path:
    """``path`` resolved, when it is a directory this process can list; else TreeError
    saying what it is instead."""
    try:
        resolved = path.resolve(strict=True)
        st = os.stat(resolved)
    except OSError as exc:
        raise TreeError(f"{path}: {_errno_text(exc)}; pass an existing directory") from exc
    except RuntimeError as exc:
        # Python before 3.13 reports a loop of symbolic links so, not as ELOOP.
        raise TreeError(f"{path}: a loop of symbolic links; pass an existing "
                        "directory") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise TreeError(f"{path} is not a directory; pass the directory to export")
    try:
        with os.scandir(resolved):
            pass
    except OSError as exc:
        raise TreeError(f"{path} cannot be listed: {_errno_text(exc)}; pass a directory "
                        "you can read") from exc
    return resolved


def refuse_larger(root: Path, max_paths: int, option: str) -> None:
    """Raise TreeError naming ``option`` and ``root`` (the user's own path) when the tree
    holds more than ``max_paths`` paths, counted as the walk counts them (the root and
    everything below it, mounts included, symbolic links not followed).  Checked before
    anything boots, so the refusal is one line instead of an error row that names the
    harness's bind of the tree; it stops counting at ``max_paths``."""
    seen = 1
    pending = [os.fspath(root)]
    while pending:
        try:
            with os.scandir(pending.pop()) as listing:
                for entry in listing:
                    seen += 1
                    if seen > max_paths:
                        raise TreeError(f"{option} {root} holds more than {max_paths} paths",
                                        hint="pass --max-paths N to walk more (a run must "
                                        "stay within its deadlines), or a subdirectory")
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(entry.path)
        except OSError:
            continue  # the walk records what it cannot list; nothing to count there


class _Walker:
    """One walk's state: the entries so far, devices by first sight, what went unseen."""

    def __init__(self, root: Path, max_paths: int, read_prefix: int,
                 progress: Progress) -> None:
        self.root = os.fspath(root)
        self.max_paths = max_paths
        self.read_prefix = read_prefix
        self.progress = progress
        self.entries: list[HostEntry] = []
        self.devices: dict[int, ExportDevice] = {}
        self.problems: list[WalkProblem] = []
        self.partial: set[str] = set()
        self.started = time.monotonic()

    def add(self, relpath: str, abspath: str, st: os.stat_result) -> EntryKind:
        # The hot path of a 100,000-path walk: one dict lookup per question, no calls.
        entries = self.entries
        if len(entries) >= self.max_paths:
            raise TreeError(f"{self.root} holds more than {self.max_paths} paths; pass "
                            "--max-paths N to walk more, or a subdirectory")
        device = self.devices.get(st.st_dev)
        if device is None:
            device = ExportDevice(len(self.devices), Path(abspath), relpath, st.st_dev)
            self.devices[st.st_dev] = device
        kind = _KINDS.get(stat.S_IFMT(st.st_mode), EntryKind.OTHER)
        content = None
        if kind is EntryKind.FILE and self.read_prefix:
            content = self._content(relpath, abspath, st)
        elif kind is EntryKind.OTHER:
            self.problems.append(WalkProblem(relpath, Unseen.SPECIAL,
                                             stat.filemode(st.st_mode)[0]))
        entries.append(HostEntry(relpath, st.st_dev, st.st_ino, st.st_nlink, kind,
                                 device.index, content, st.st_mtime_ns // 1_000_000_000,
                                 st.st_size))
        if not len(entries) % _PROGRESS_EVERY:
            self.progress(f"walked {len(entries)} paths of {self.root} "
                          f"({time.monotonic() - self.started:.1f} s)")
        return kind

    def _content(self, relpath: str, abspath: str, st: os.stat_result) -> bytes | None:
        try:
            # O_NOFOLLOW: the truth describes the tree itself; O_NONBLOCK: a file
            # swapped for a fifo since the lstat cannot hang the walk.
            fd = os.open(abspath, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as exc:
            self.problems.append(WalkProblem(relpath, Unseen.UNREADABLE, _errno_text(exc)))
            return None
        try:
            return os.read(fd, min(st.st_size, self.read_prefix)) if st.st_size else b""
        except OSError as exc:
            self.problems.append(WalkProblem(relpath, Unseen.UNREADABLE, _errno_text(exc)))
            return None
        finally:
            os.close(fd)

    def children(self, relpath: str, abspath: str) -> list[tuple[str, str, os.stat_result]]:
        """The entries of one directory, sorted by name, each lstat'ed; what cannot be
        listed or stat'ed is recorded and the directory marked partial."""
        try:
            with os.scandir(abspath) as iterator:
                found = sorted(iterator, key=lambda child: child.name)
        except OSError as exc:
            self.problems.append(WalkProblem(relpath, Unseen.UNLISTABLE, _errno_text(exc)))
            self.partial.add(relpath)
            return []
        listed = []
        for child in found:
            child_rel = child.name if relpath == "." else f"{relpath}/{child.name}"
            try:
                listed.append((child_rel, child.path, child.stat(follow_symlinks=False)))
            except OSError as exc:
                self.problems.append(WalkProblem(child_rel, Unseen.UNSTATABLE,
                                                 _errno_text(exc)))
                self.partial.add(relpath)
        return listed


def walk_tree(root: Path, *, max_paths: int = DEFAULT_MAX_PATHS, read_prefix: int = 0,
              progress: Progress = quiet, mountinfo: str | None = None) -> TreeWalk:
    """Walk ``root`` in the truth order and record what the host holds.

    ``read_prefix``: bytes of each regular file to keep as its content (the witnesses
    compare that much of each copy; 0 reads nothing).  ``mountinfo``: the text of
    /proc/self/mountinfo (read here when None).  Raises TreeError when the walk is
    impossible or the tree holds more than ``max_paths`` paths.
    """
    top = resolve_tree(root)
    walker = _Walker(top, max_paths, read_prefix, progress)
    # Pre-order, siblings by name: pop a path, record it, push its children reversed.
    pending: list[tuple[str, str, os.stat_result]] = [(".", os.fspath(top), os.lstat(top))]
    while pending:
        relpath, abspath, st = pending.pop()
        if walker.add(relpath, abspath, st) is EntryKind.DIR:
            pending.extend(reversed(walker.children(relpath, abspath)))
    if mountinfo is None:
        mountinfo = Path("/proc/self/mountinfo").read_text(errors="surrogateescape")
    return TreeWalk(top, HostTruth(tuple(walker.entries), frozenset(walker.partial)),
                    tuple(walker.devices.values()),
                    mounts_under(parse_mountinfo(mountinfo), os.fspath(top)),
                    tuple(walker.problems), time.monotonic() - walker.started)
