"""``grid``: the default matrix on every QEMU x guest kernel cell, one table.

Each cell is a whole ``run`` (one QEMU, one guest recipe), prepared and run after the
one before, so a cell costs what the same run alone costs (``scripts/bench`` measures
it).  The table says per cell how many rows passed, were known, failed or were
errors, and which known issues reproduced: the compatibility grid of docs/grid.md,
for a terminal, as JSON, and as Markdown for a CI step summary.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..environment import resolve_qemu
from ..errors import EXIT_ERROR, EXIT_FAIL
from ..image.recipe import load_recipe
from ..plan import RunOptions
from ..progress import Progress
from ..qemu.debian import suite_of
from ..results import RunResults
from ..run import run_checks
from ..verdicts.common import Status

# The columns of a cell's counts, in the order shown.
_COUNTED = (Status.PASS, Status.KNOWN, Status.FAIL, Status.ERROR, Status.INCONCLUSIVE)


@dataclass(frozen=True)
class Cell:
    """One QEMU x guest cell: what ran and what its rows said."""

    qemu: str  # what --qemu named (a path, a name on PATH, debian:SUITE)
    qemu_version: str
    qemu_package: str
    guest: str  # the recipe
    kernel: str  # the release the guest reported
    counts: tuple[tuple[Status, int], ...]
    known: tuple[str, ...]  # known issues that reproduced
    unreproduced: tuple[str, ...]
    seconds: float
    exit_code: int
    # (row, known issue) of each row a known issue explained: an issue's scope over
    # modes, layouts and cache modes as this cell showed it.
    known_rows: tuple[tuple[str, str], ...] = ()
    # Where the cell's logs were kept (a cell with news), else None.
    log_dir: str | None = None

    @property
    def rows(self) -> int:
        return sum(n for _, n in self.counts)

    def count(self, status: Status) -> int:
        return dict(self.counts).get(status, 0)


def cell_of(qemu: str, guest: str, result: RunResults, seconds: float) -> Cell:
    """A cell from one run's results."""
    env = result.environment
    kernels = dict.fromkeys(r.guest.kernel for r in result.rows if r.guest is not None)
    return Cell(
        qemu=qemu, qemu_version=str(env.qemu.version), qemu_package=env.qemu.package,
        guest=guest, kernel=", ".join(k for k in kernels if k) or str(env.guest_kernel),
        counts=tuple((s, sum(r.status is s for r in result.rows)) for s in _COUNTED),
        known=tuple(dict.fromkeys(r.known_issue.id for r in result.rows
                                  if r.known_issue is not None)),
        unreproduced=result.unreproduced, seconds=seconds, exit_code=result.exit_code,
        known_rows=tuple((r.case, r.known_issue.id) for r in result.rows
                         if r.known_issue is not None),
        log_dir=result.log_dir if result.logs_kept else None)


def run_grid(options: RunOptions, qemus: Sequence[str], guests: Sequence[str],
             progress: Progress) -> list[Cell]:
    """Run ``options`` on every QEMU x guest cell, one after another.  Every QEMU is
    found (a Debian one fetched) and every guest recipe read before the first cell
    boots, so a bad last name fails at once, not after the cells before it."""
    # Names first (no archive, no process), then what takes time: a bad name anywhere
    # fails before anything is fetched or started.
    for qemu in qemus:
        suite_of(qemu)
    for guest in guests:
        load_recipe(guest)
    for qemu in qemus:
        resolve_qemu(qemu, progress)
    cells: list[Cell] = []
    total = len(qemus) * len(guests)
    for qemu in qemus:
        for guest in guests:
            progress(f"grid cell {len(cells) + 1}/{total}: QEMU {qemu} x guest {guest}")
            started = time.monotonic()
            result = run_checks(replace(options, qemus=(qemu,), guests=(guest,)), progress)
            cells.append(cell_of(qemu, guest, result, time.monotonic() - started))
    return cells


def grid_exit_code(cells: Sequence[Cell]) -> int:
    """The grid's exit code: 1 when a cell found QEMU or a kernel doing the wrong
    thing (that outranks a cell that could not run), else the worst of the cells."""
    codes = {c.exit_code for c in cells}
    if not codes:
        return EXIT_ERROR
    return EXIT_FAIL if EXIT_FAIL in codes else max(codes)


def _verdict(cell: Cell) -> str:
    return ", ".join(f"{cell.count(s)} {s.value}" for s in _COUNTED if cell.count(s))


def grid_rows(cells: Sequence[Cell]) -> list[list[str]]:
    """The table's header and one row per cell, as text."""
    rows = [["QEMU", "guest kernel", "rows", "known issues reproduced", "s"]]
    for cell in cells:
        rows.append([cell.qemu_version, cell.kernel, _verdict(cell),
                     ", ".join(cell.known) or "-", f"{cell.seconds:.0f}"])
    return rows


def grid_text(cells: Sequence[Cell]) -> str:
    """The grid for a terminal: aligned columns, then the total time."""
    rows = grid_rows(cells)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(text.ljust(w) for text, w in zip(row, widths, strict=True)).rstrip()
             for row in rows]
    lines.append(f"{len(cells)} cells in {sum(c.seconds for c in cells):.0f} s")
    return "\n".join(lines)


def grid_markdown(cells: Sequence[Cell]) -> str:
    """The grid as a Markdown table (a CI step summary)."""
    rows = grid_rows(cells)
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    lines.append("")
    lines.append(f"{len(cells)} cells in {sum(c.seconds for c in cells):.0f} s")
    return "\n".join(lines) + "\n"


def grid_json(cells: Sequence[Cell]) -> dict[str, Any]:
    """The grid as data: every cell with its counts."""
    return {
        "exit_code": grid_exit_code(cells),
        "wall_seconds": round(sum(c.seconds for c in cells), 3),
        "cells": [{
            "qemu": c.qemu, "qemu_version": c.qemu_version, "qemu_package": c.qemu_package,
            "guest": c.guest, "guest_kernel": c.kernel, "rows": c.rows,
            "counts": {s.value: n for s, n in c.counts},
            "known_issues": list(c.known), "known_unreproduced": list(c.unreproduced),
            "known_rows": dict(c.known_rows), "log_dir": c.log_dir,
            "seconds": round(c.seconds, 3), "exit_code": c.exit_code,
        } for c in cells],
    }
