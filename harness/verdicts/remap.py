"""The remap model held against a guest: which ids QEMU's ``multidevs=remap`` should
have given, whether the guest shows exactly those, and why colliding files collide.

``remap_model`` computes QEMU's qid paths from host (st_dev, st_ino) in the order QEMU
first sees each file.  That order is the guest's: the mount looks at the export root,
the harm probe (run first) walks its paths, then the agent's first lstat pass walks
the host truth in order (parents before children), so every path is first seen by one
of those.  A guest whose ids equal the model's everywhere runs QEMU's algorithm as
modelled; a collision it shows is then the algorithm's, explained bit by bit.  A guest
that differs from the model runs another algorithm (a change or a regression), which
is a finding of its own.  Pure.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ..agent.stat import GuestResult, GuestStat
from ..host.truth import HostTruth
from .common import _capped
from .remap_model import RemapResult, SeenFile, model_remap

# Differences listed by path before the rest are counted.
MAX_DIFFERENCES = 5
# QEMU's warning when its remap table is full and it falls back to the full map
# (hw/9pfs/9p.c, printed once per process).
FULLMAP_WARNING = "Potential degraded performance of inode remapping"


@dataclass(frozen=True)
class PredictedCollision:
    """Distinct host files the model says share one qid path, and why."""

    files: frozenset[tuple[int, int]]  # host (st_dev, st_ino)
    paths: tuple[str, ...]  # one host path per file, in first-sight order
    why: str


@dataclass(frozen=True)
class RemapCheck:
    """The model's prediction for one export and how the guest compared.

    ``predicted``: groups of host paths (one per distinct host file) that the model
    says share a qid path, each with its explanation; ``branches``: how many files
    took each branch of QEMU's remap; ``differences``: paths whose guest st_ino is not
    the model's (the first MAX_DIFFERENCES, then a count); ``differing``: how many paths
    differ in all.
    """

    agrees: bool
    compared: int
    differences: tuple[str, ...]
    predicted: tuple[PredictedCollision, ...]
    branches: Mapping[str, int]
    fullmap_reached: bool
    differing: int = 0


def _components(path: str) -> list[str]:
    """Every path a lookup of ``path`` walks through, root side first."""
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]


def first_sight(truth: HostTruth, probe_paths: Sequence[str] = ()) -> list[str]:
    """Export paths in the order QEMU first stats them: the root at mount, the harm
    probe's paths (and the directories they pass through), then the truth order."""
    order = dict.fromkeys(["."])
    for path in probe_paths:
        order.update(dict.fromkeys(_components(path)))
    order.update(dict.fromkeys(truth.paths))
    return [path for path in order if path in truth.by_path]


def _seen(truth: HostTruth, order: Iterable[str]) -> list[SeenFile]:
    by_path = truth.by_path
    return [SeenFile(by_path[path].dev, by_path[path].ino) for path in order]


def _predicted(truth: HostTruth, result: RemapResult) -> tuple[PredictedCollision, ...]:
    first = truth.first_paths
    return tuple(
        PredictedCollision(frozenset((file.dev, file.ino) for file in group),
                           tuple(first[(file.dev, file.ino)] for file in group),
                           result.explain(group))
        for group in result.collisions())


def _differences(truth: HostTruth, first: Mapping[str, GuestResult],
                 result: RemapResult) -> tuple[int, list[str]]:
    compared, differences = 0, []
    for entry in truth.entries:
        got = first.get(entry.path)
        if not isinstance(got, GuestStat):
            continue
        compared += 1
        want = result.qids[SeenFile(entry.dev, entry.ino)].guest_ino
        if got.ino != want:
            differences.append(f"{entry.path!r}: guest ino {got.ino:#x}, model {want:#x}")
    return compared, differences


def modelled(truth: HostTruth, probe_paths: Sequence[str] = ()) -> RemapResult:
    """QEMU's remap of ``truth`` as the guest's order makes QEMU see it."""
    if not probe_paths:
        # The truth order begins with "." already: no reordering (``predict`` runs
        # this over 100,000 paths within its budget).
        return model_remap(SeenFile(entry.dev, entry.ino) for entry in truth.entries)
    return model_remap(_seen(truth, first_sight(truth, probe_paths)))


def check_remap(truth: HostTruth, first: Mapping[str, GuestResult],
                probe_paths: Sequence[str] = (), *,
                result: RemapResult | None = None) -> RemapCheck:
    """Model QEMU's remap for ``truth`` seen in the guest's order (or take ``result``,
    the model already run) and compare the guest's first stat pass (``first``) with
    it, path by path."""
    if result is None:
        result = modelled(truth, probe_paths)
    compared, differences = _differences(truth, first, result)
    shown = differences[:MAX_DIFFERENCES]
    if len(differences) > MAX_DIFFERENCES:
        shown.append(f"... and {len(differences) - MAX_DIFFERENCES} more")
    branches = Counter(qid.branch.value for qid in result.qids.values())
    return RemapCheck(agrees=not differences, compared=compared, differences=tuple(shown),
                      predicted=_predicted(truth, result), branches=dict(branches),
                      fullmap_reached=result.fullmap_reached, differing=len(differences))


def remap_failures(check: RemapCheck,
                   collided: Iterable[frozenset[tuple[int, int]]]) -> list[str]:
    """One line per collision the guest showed that the model predicts, naming the
    host paths and why; ``collided``: the host files behind each guest collision."""
    shown = set(collided)
    return _capped([f"remap model: {', '.join(map(repr, p.paths))} share one qid: {p.why}"
                    for p in check.predicted if p.files in shown],
                   "remap model explanations")


def remap_notes(check: RemapCheck) -> list[str]:
    """What the comparison with the model says beyond the promise."""
    if check.agrees:
        return [f"remap model: the guest's ids equal the model's at all {check.compared} "
                f"paths ({', '.join(f'{n} {b}' for b, n in sorted(check.branches.items()))})"]
    return [f"remap model: the guest's ids differ from the model's at "
            f"{check.differing} of {check.compared} paths ({'; '.join(check.differences)})"
            f": QEMU's remap is not the algorithm modelled (a change or a regression)"]


def fullmap_warning_failures(check: RemapCheck | None, stderr: str,
                             printed_before: bool = False) -> list[str]:
    """QEMU's full-map warning must appear where the model says the remap table
    overflows (once per process: not again when printed for an earlier export), and
    nowhere else."""
    count = sum(FULLMAP_WARNING in line for line in stderr.splitlines())
    expected = check is not None and check.fullmap_reached
    if printed_before and count:
        return [f"QEMU's {FULLMAP_WARNING!r} warning again, {count} times: it prints it "
                f"once per process, and did for an earlier export"]
    if expected and not printed_before and count != 1:
        return [f"expected QEMU's {FULLMAP_WARNING!r} warning once (the model's remap table "
                f"overflows into the full map), found it {count} times"]
    if not expected and count:
        return [f"unexpected {FULLMAP_WARNING!r} on QEMU stderr: the model's remap table "
                f"never overflows here"]
    return []
