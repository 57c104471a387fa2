"""The export layout of a user's own tree (``run --export PATH``): never built, never written.

The tree, with every mount under it, is bind-mounted recursively on the export root
inside the harness's private namespace, and each of those mounts is then made
read-only on its own (a recursive bind copies each mount's flags, so the read-only
remount has to be done per mount).  QEMU then exports it with ``readonly=on`` and the
guest mounts it ``ro``: three locks, of which the first is the host's own.  The
host truth is walked through the bind (what QEMU sees, the same st_dev and st_ino as
the tree), in the order the agent looks.

The bind lives in the private namespace: it vanishes with the harness, and the tree
itself is never unmounted, remounted or touched where the user sees it.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from ..agent.stat import READ_LIMIT
from ..errors import ExportError
from .build import BuildContext, release_mount
from .mounts import MountEntry, describe, mounts_under, parse_mountinfo
from .namespace import bind_tree, remount_read_only
from .truth import EntryKind, Export, HostEntry
from .walk import TreeWalk, Unseen, WalkProblem, walk_tree

# The witnesses copy the whole tree into the guest's RAM (256 MiB) six times over,
# ~1.3 s per tool for the standard export's 50 paths under TCG: beyond these the run
# would outgrow the guest's memory or the command deadline, so they are skipped.
WITNESS_MAX_PATHS = 5_000
WITNESS_MAX_BYTES = 32 << 20


def _mountinfo() -> str:
    return Path("/proc/self/mountinfo").read_text(errors="surrogateescape")


def _bound_mounts(root: Path) -> tuple[MountEntry, ...]:
    """The mounts at and under ``root`` (the bind and its copies), parents first."""
    top = os.fspath(root)
    return tuple(m for m in mounts_under(parse_mountinfo(_mountinfo()), top)
                 if m.mount_point == top or m.mount_point.startswith(top.rstrip("/") + "/"))


def _make_read_only(root: Path) -> int:
    """Remount every mount of the bind at ``root`` read-only, then check that each is;
    returns how many there are.  Raises ExportError rather than export a writable tree."""
    mounts = _bound_mounts(root)
    for mount in mounts:
        try:
            remount_read_only(mount.mount_point, mount.options)
        except OSError as exc:
            raise ExportError(f"cannot make {mount.mount_point} read-only: {exc.strerror}",
                              hint="the tree is not exported writable; report the mount "
                              "below", details=describe([mount])) from exc
    writable = [m for m in _bound_mounts(root) if not m.read_only]
    if writable or not mounts:
        raise ExportError(f"the bind of the tree at {root} is not read-only everywhere",
                          hint="the tree is not exported; report the mounts below",
                          details=describe(writable))
    return len(mounts)


def _with_contents(walk: TreeWalk) -> TreeWalk:
    """``walk`` with the first READ_LIMIT bytes of every regular file (what the
    witnesses compare each copy with); a file that cannot be read is recorded."""
    entries: list[HostEntry] = []
    problems = list(walk.problems)
    for entry in walk.truth.entries:
        if entry.kind is EntryKind.FILE:
            try:
                with open(walk.root / entry.path, "rb") as handle:
                    entry = replace(entry, content=handle.read(READ_LIMIT))
            except OSError as exc:
                problems.append(WalkProblem(entry.path, Unseen.UNREADABLE, str(exc.strerror)))
        entries.append(entry)
    truth = replace(walk.truth, entries=tuple(entries))
    return replace(walk, truth=truth, problems=tuple(problems))


def witness_skip(walk: TreeWalk) -> str | None:
    """Why the witnesses cannot judge this tree, or None: too large for them, or
    holding what every tool would complain about (which is no fault of QEMU's)."""
    if len(walk.truth.entries) > WITNESS_MAX_PATHS or walk.file_bytes > WITNESS_MAX_BYTES:
        return (f"witnesses skipped: {len(walk.truth.entries)} paths, {walk.file_bytes} "
                f"bytes (they run up to {WITNESS_MAX_PATHS} paths and "
                f"{WITNESS_MAX_BYTES >> 20} MiB, copied into the guest's RAM)")
    if walk.problems:
        return (f"witnesses skipped: the walk could not see {len(walk.problems)} paths whole "
                f"({walk.problems[0].describe()}), which every tool would report too")
    return None


def build_user_tree(ctx: BuildContext) -> Export:
    """Bind the user's tree (``ctx.layout.source``) read-only at ``ctx.root`` and walk it."""
    source = ctx.layout.source
    if source is None:
        raise ExportError("the export layout has no source tree", hint="pass --export PATH")
    try:
        bind_tree(source, ctx.root)
    except OSError as exc:
        raise ExportError(f"cannot bind-mount {source}: {exc.strerror}",
                          hint="the harness must be root in its namespace") from exc
    # One lazy unmount detaches the bind and every mount copied under it.
    ctx.stack.callback(release_mount, ctx.problems, ctx.root)
    mounts = _make_read_only(ctx.root)
    walk = walk_tree(ctx.root, max_paths=ctx.layout.max_paths, progress=ctx.progress)
    skip = witness_skip(walk)
    if skip is None:
        walk = _with_contents(walk)
        skip = witness_skip(walk)
    ctx.progress(f"export {source}: {len(walk.truth.entries)} paths on "
                 f"{walk.truth.device_count} devices ({mounts} mounts, read-only), walked "
                 f"in {walk.seconds:.2f} s" + (f"; {len(walk.problems)} not seen whole, "
                                               f"first {walk.problems[0].describe()}"
                                               if walk.problems else ""))
    if skip:
        ctx.progress(f"export {source}: {skip}")
    return Export(root=ctx.root, layout=ctx.layout, devices=walk.devices, truth=walk.truth,
                  witness_skip=skip, unseen=tuple(p.describe() for p in walk.problems))
