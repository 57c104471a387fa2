"""``grid``: its options and handler (the work is ``commands.grid``: the default matrix
on every QEMU x guest kernel cell, one table)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from ..config import Accel
from ..host.layout import ExportLayout
from ..machine_options import MachineOptions
from ..plan import RunOptions
from .options import (
    CACHES,
    CHECKS,
    MODES,
    Entry,
    Given,
    Subparsers,
    add_accel,
    add_cold,
    add_guests,
    add_json,
    add_markdown,
    add_qemus,
    command,
    listed,
    refuse_empty_guest,
)
from .output import progress, say


@dataclass(frozen=True)
class GridArgs:
    options: RunOptions
    qemus: tuple[str, ...]
    guests: tuple[str, ...]
    json: Path | None = None
    markdown: Path | None = None


def _read(namespace: argparse.Namespace, given: Given) -> GridArgs:
    from ..image.recipe import DEFAULT_RECIPE

    refuse_empty_guest(namespace.guest, given)
    options = RunOptions(modes=MODES.read(namespace), layout=ExportLayout(),
                         checks=CHECKS.read(namespace), caches=CACHES.read(namespace),
                         machine=MachineOptions(accel=Accel(namespace.accel),
                                                cold=namespace.cold))
    return GridArgs(options, listed(namespace.qemu), listed(namespace.guest) or
                    (DEFAULT_RECIPE,), namespace.json, namespace.markdown)


def _grid(args: GridArgs) -> int:
    from .. import report as rep
    from ..commands.grid import grid_exit_code, grid_json, grid_markdown, grid_text, run_grid

    for file, option in ((args.json, "--json"), (args.markdown, "--markdown")):
        if file is not None:
            rep.check_destination(file, option)
    cells = run_grid(args.options, args.qemus, args.guests, progress)
    say(grid_text(cells))
    if args.json:
        rep.write_json(grid_json(cells), args.json)
        progress(f"JSON grid: {args.json}")
    if args.markdown:
        rep.write_text(grid_markdown(cells), args.markdown)
        progress(f"Markdown grid: {args.markdown}")
    return grid_exit_code(cells)


def register(sub: Subparsers) -> None:
    grid = command(sub, "grid", Entry(_read, _grid),
                   help="run the matrix on every QEMU x guest kernel cell; one table "
                   "(terminal, JSON, Markdown)")
    add_qemus(grid, required=True)
    add_guests(grid)
    add_accel(grid)
    add_cold(grid)
    MODES.add(grid)
    CHECKS.add(grid)
    CACHES.add(grid)
    add_json(grid)
    add_markdown(grid)
