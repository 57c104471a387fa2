"""Pure judgement side of the ids family's harm: which files' qids collide, what the
guest showed of them, and its rules.

Colliding inode numbers harm a guest through its inode cache.  The Linux 9p client
(cache=loose or fscache) reuses a cached inode for a file whose qid matches one it
holds: same type, same path and same version.  Under multidevs=warn QEMU's qid path
is the host st_ino and its version is ``mtime seconds XOR size << 8``, so two files
on different devices with the same inode number, type, size and mtime second become
one guest inode: the second is read, mapped, locked and timed as the first, and a
directory's dentry (with any cwd inside it) moves to its twin.  Under remap the qid
paths differ and nothing may alias.

Everything here is pure: ``predict`` reads the host truth, ``assess`` compares the
guest's harm probe (``agent.harm.HarmObservation``) with the host, and ``harm_rules``
turns that into failures and notes for one (mode, cache) row.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..agent.harm import HarmObservation
from ..agent.stat import READ_LIMIT
from ..config import Cache
from ..host.truth import TWIN_DIR, TWIN_MTIME, TWIN_SAME, EntryKind, HostEntry, HostTruth

# 9P qid types (QTDIR, QTSYMLINK; everything else is QTFILE), as QEMU sets them.
_QID_TYPES = {EntryKind.DIR: 0x80, EntryKind.SYMLINK: 0x02}


def qid_version(mtime: int, size: int) -> int:
    """QEMU's qid.version of a file: ``st_mtime ^ (st_size << 8)``, cut to 32 bits."""
    return (mtime ^ (size << 8)) & 0xFFFFFFFF


def qid(entry: HostEntry, remapped: bool) -> tuple[int, int, int] | None:
    """(type, path, version) of ``entry``'s qid; None under remap, where QEMU gives
    every (st_dev, st_ino) a path of its own, so no two files' qids can match."""
    if remapped:
        return None
    return (_QID_TYPES.get(entry.kind, 0), entry.ino, qid_version(entry.mtime, entry.size))


@dataclass(frozen=True)
class Prediction:
    """Which paths may alias: ``colliding`` groups of distinct host files sharing a
    qid, and ``may_alias``, those paths and every path below a colliding directory
    (a lookup under it may go through its twin's inode)."""

    colliding: tuple[tuple[str, ...], ...]
    may_alias: frozenset[str]


def predict(truth: HostTruth, remapped: bool) -> Prediction:
    """The prediction for an export under remap (nothing) or warn (qid collisions)."""
    owners: dict[tuple[int, int, int], dict[tuple[int, int], str]] = {}
    for entry in truth.entries:
        key = qid(entry, remapped)
        if key is not None:
            owners.setdefault(key, {}).setdefault(entry.file_id, entry.path)
    groups = tuple(tuple(files.values()) for files in owners.values() if len(files) > 1)
    heads = {path for group in groups for path in group}
    may = {path for path in truth.paths
           if path in heads or any(path.startswith(f"{head}/") for head in heads)}
    return Prediction(groups, frozenset(may))


@dataclass(frozen=True)
class HarmProbe:
    """The twins probed, in the agent's order: pairs of files, then pairs of dirs.

    The first of each pair is held (open and locked, or the cwd) while the second
    is opened or listed.
    """

    files: tuple[tuple[str, str], ...]
    dirs: tuple[tuple[str, str], ...]

    @property
    def paths(self) -> tuple[str, ...]:
        """What the agent reads on stdin: every pair, flattened."""
        return tuple(path for pair in (*self.files, *self.dirs) for path in pair)


def _join(relpath: str, name: str) -> str:
    return name if relpath == "." else f"{relpath}/{name}"


def harm_probe(device_paths: Sequence[str], loop: bool = False) -> HarmProbe | None:
    """The probe of an export whose devices sit at ``device_paths`` ("." first).

    The twins of devices 1 and 2 are compared when there are three or more (two
    device roots alike in all but mtime), else those of devices 0 and 1; a single
    device has no twins (None).  The loop layout has no twins: its pair is the root
    (the cwd) and dev01, the mount point that shares the root's qid.
    """
    if len(device_paths) < 2:
        return None
    if loop:
        return HarmProbe(files=(), dirs=((".", device_paths[1]),))
    first, second = device_paths[1:3] if len(device_paths) >= 3 else device_paths[:2]

    def pair(name: str) -> tuple[str, str]:
        return (_join(first, name), _join(second, name))

    return HarmProbe(files=(pair(TWIN_SAME), pair(TWIN_MTIME)), dirs=(pair(TWIN_DIR),))


@dataclass(frozen=True)
class Aliased:
    """One path that showed another file's data: ``how`` (content, mapped, mtime,
    lock, listing, cwd listing) and ``source``, the file it came from if one matches."""

    path: str
    how: str
    source: str | None

    def describe(self) -> str:
        """One line: the path, what aliased, and from where."""
        origin = f" from {self.source!r}" if self.source else " from another file"
        return f"{self.path!r}: {self.how}{origin}"


@dataclass(frozen=True)
class Harm:
    """What the harm probe found, before any rule: aliased paths, the cwd, errors."""

    probed: tuple[str, ...]
    aliased: tuple[Aliased, ...]
    cwd_moved: bool | None  # None: the cwd test did not run
    cwd_detail: str
    errors: tuple[tuple[str, str, int], ...]  # (path, operation, errno)
    predicted: tuple[str, ...]  # probed paths the prediction allows to alias


def _names(truth: HostTruth, directory: str) -> tuple[str, ...]:
    prefix = "" if directory == "." else f"{directory}/"
    return tuple(sorted(path[len(prefix):] for path in truth.paths
                        if path.startswith(prefix) and path != directory
                        and "/" not in path[len(prefix):]))


def _file_aliasing(truth: HostTruth, seen: HarmObservation, held: str,
                   other: str) -> list[Aliased]:
    found: list[Aliased] = []
    for path, twin in ((held, other), (other, held)):
        host, twin_host, got = truth.by_path[path], truth.by_path[twin], seen.files.get(path)
        if got is None:
            continue
        want = (host.content or b"")[:READ_LIMIT]
        twin_data = (twin_host.content or b"")[:READ_LIMIT]
        for how, value in (("content", got.content), ("mapped bytes", got.mapped)):
            if value is not None and value != want:
                found.append(Aliased(path, how, twin if value == twin_data else None))
        if got.mtime is not None and got.mtime != host.mtime:
            found.append(Aliased(path, "mtime", twin if got.mtime == twin_host.mtime else None))
    first, second = seen.files.get(held), seen.files.get(other)
    if first and second and first.lock == 0 and second.lock == errno.EWOULDBLOCK:
        found.append(Aliased(other, "lock identity", held))
    return found


def _listing(truth: HostTruth, path: str, twin: str, got: Iterable[str] | None,
             how: str) -> list[Aliased]:
    if got is None:
        return []
    names = tuple(sorted(got))
    if names == _names(truth, path):
        return []
    return [Aliased(path, how, twin if names == _names(truth, twin) else None)]


def _dir_aliasing(truth: HostTruth, seen: HarmObservation, held: str, other: str,
                  mount_point: str) -> tuple[list[Aliased], bool | None, str]:
    found = _listing(truth, other, held, seen.listed.get(other), "listing")
    found += _listing(truth, held, other, seen.cwd_listed.get(held), "cwd listing")
    cwd = seen.cwd.get(held)
    if cwd is None:
        return found, None, f"cwd test in {held!r} did not run"
    if cwd == (mount_point if held == "." else f"{mount_point}/{held}"):
        return found, False, f"cwd stayed in {held!r} after listing {other!r}"
    return found, True, f"cwd moved from {held!r} to {cwd!r} after listing {other!r}"


def _lock_errors(seen: HarmObservation) -> list[tuple[str, str, int]]:
    # A refused lock on the second twin is aliasing evidence, not an access error.
    return [(path, "flock", got.lock) for path, got in seen.files.items()
            if got.lock not in (None, 0, errno.EWOULDBLOCK)]


def assess(truth: HostTruth, probe: HarmProbe, seen: HarmObservation, mount_point: str,
           prediction: Prediction) -> Harm:
    """Compare what the guest showed of every probed twin with the host."""
    aliased: list[Aliased] = []
    for held, other in probe.files:
        aliased += _file_aliasing(truth, seen, held, other)
    moved: bool | None = None
    details = []
    for held, other in probe.dirs:
        found, went, detail = _dir_aliasing(truth, seen, held, other, mount_point)
        aliased += found
        details.append(detail)
        moved = went if moved is None else (moved or bool(went))
    errors = (*seen.errors, *_lock_errors(seen))
    missing = [(path, "probe", 0) for path in (p for pair in probe.files for p in pair)
               if path not in seen.files and not any(e[0] == path for e in errors)]
    return Harm(
        probed=probe.paths, aliased=tuple(aliased), cwd_moved=moved, cwd_detail="; ".join(details),
        errors=(*errors, *missing),
        predicted=tuple(p for p in probe.paths if p in prediction.may_alias),
    )


def _error_text(path: str, op: str, code: int) -> str:
    if code == 0:
        return f"{path!r} was not probed (no record from the agent)"
    return f"{op} of {path!r} failed: errno {code} ({errno.errorcode.get(code, '?')})"


def harm_rules(harm: Harm, unique_ids: bool, cache: Cache) -> tuple[list[str], list[str]]:
    """(failures, notes) of one row's harm, per the rules of the module docstring.

    ``unique_ids``: remap (or the default from QEMU 10): nothing may alias in any cache
    mode.  Otherwise (warn): with cache none or mmap nothing may alias either (the
    client keeps no inode to share: a guest that aliases there has the Linux 6.9 to
    6.11.5 class of bug); with loose or fscache, aliasing outside the prediction fails
    and the predicted harm is recorded.
    """
    if unique_ids or not cache.reuses_inodes:
        why = ("under remap every file keeps its own qid" if unique_ids else
               f"cache={cache.value} keeps no inode to share (the Linux 6.9-6.11.5 class "
               f"of bug reuses one anyway)")
        failures = [f"aliased ({why}): {a.describe()}" for a in harm.aliased]
        if harm.cwd_moved:
            failures.append(f"cwd moved ({why}): {harm.cwd_detail}")
        failures += [_error_text(*e) for e in harm.errors]
        return failures, []
    allowed = set(harm.predicted)
    failures = [f"aliased outside the prediction: {a.describe()}"
                for a in harm.aliased if a.path not in allowed]
    notes = [f"predicted harm: {a.describe()}" for a in harm.aliased if a.path in allowed]
    dirs_predicted = any(p in allowed for p in harm.probed if p.endswith(TWIN_DIR))
    if harm.cwd_moved:
        (notes if dirs_predicted else failures).append(
            f"{'predicted harm' if dirs_predicted else 'cwd moved outside the prediction'}: "
            f"{harm.cwd_detail}")
    for error in harm.errors:
        # ELOOP on a predicted path is the inode cache's known harm (6.12); any other
        # errno, or any errno elsewhere, is not explained by the collision.
        predicted = error[0] in allowed and error[2] == errno.ELOOP
        (notes if predicted else failures).append(_error_text(*error))
    if allowed and not harm.aliased and not harm.cwd_moved and not harm.errors:
        notes.append(f"predicted aliasing of {len(allowed)} probed paths did not show")
    return failures, notes
