"""``reproduce``: its options and handler (the work is ``commands.reproduce``: one guest,
one export, the collisions shown)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from ..config import ALL_CACHES, ALL_LAYOUTS, ALL_MODES, Cache, Layout, Mode
from ..host.layout import ExportLayout
from ..machine_options import MachineOptions
from .options import (
    Entry,
    Given,
    Subparsers,
    add_export,
    add_machine,
    add_shape,
    command,
    machine,
    read_shape,
)
from .output import progress, say, say_why_unjudged


@dataclass(frozen=True)
class ReproduceArgs:
    mode: Mode
    cache: Cache
    layout: ExportLayout
    machine: MachineOptions
    logs: Path | None


def _read(namespace: argparse.Namespace, given: Given) -> ReproduceArgs:
    from ..plan import layout_shape

    options = machine(namespace, given)
    shape = read_shape(namespace, given, lambda: (Layout(namespace.layout),))
    # Its one --layout (loop is two devices), or the user's tree (--export).
    layout = shape.export or layout_shape(Layout(namespace.layout), shape.base)
    return ReproduceArgs(Mode(namespace.mode), Cache(namespace.cache), layout, options,
                         namespace.logs)


def _reproduce(args: ReproduceArgs) -> int:
    from ..commands.reproduce import reproduce
    from ..results import exit_code

    found = reproduce(args.mode, args.layout, args.machine, cache=args.cache, logs=args.logs,
                      progress=progress)
    say(found.text())
    code = exit_code([found.row.status])
    say_why_unjudged([found.row], code)
    return code


def register(sub: Subparsers) -> None:
    repro = command(sub, "reproduce", Entry(_read, _reproduce),
                    help="boot one guest and show the collisions")
    add_machine(repro)
    repro.add_argument("--mode", default=Mode.WARN.value,
                       choices=[m.value for m in ALL_MODES])
    repro.add_argument("--cache", default=Cache.NONE.value, choices=[c.value for c in ALL_CACHES],
                       help="the guest's 9p cache mode (loose shows aliasing under warn)")
    add_shape(repro)
    repro.add_argument(
        "--layout", choices=[layout.value for layout in ALL_LAYOUTS],
        default=Layout.STANDARD.value,
        help="standard: devNN tmpfs mounts with files, hard links and twins; loop: the "
        "root holds only dev01 and shares its qid under warn (a client with an inode "
        "cache takes dev01 for its own parent: ELOOP on Linux 6.12); overlay: the root "
        "is an overlayfs (xino) over tmpfs layers; see docs/checks.md for the others",
    )
    add_export(repro)
