"""``qemu list``, ``qemu fetch`` and ``qemu pin``: their options and handlers (the work
is ``commands.qemu``: Debian's QEMUs, run as ``--qemu debian:SUITE``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import EXIT_OK
from .options import Entry, Parser, Subparsers, add_json, command
from .output import progress, say, text_or_json


@dataclass(frozen=True)
class FetchArgs:
    suites: tuple[str, ...]
    refresh: bool


def _list(json_path: Path | None) -> int:
    from ..commands.qemu import listing, listing_text

    text_or_json(json_path, listing, listing_text, lambda found: found, "JSON listing")
    return EXIT_OK


def _fetch(args: FetchArgs) -> int:
    from ..commands.qemu import fetch

    for build in fetch(args.suites, args.refresh, progress):
        say(f"{build.suite}: QEMU {build.version}: {build.wrapper}")
    return EXIT_OK


def _pin(update: bool) -> int:
    from ..commands.qemu import pin

    say(pin(update, progress))
    return EXIT_OK


def register(sub: Subparsers) -> None:
    from ..qemu.debian import SUITES

    qemu = sub.add_parser("qemu", help="fetch, list and pin the QEMUs of Debian's suites "
                          "(--qemu debian:SUITE)")
    qemu_sub = qemu.add_subparsers(dest="qemu_command", required=True, parser_class=Parser)
    listing = command(qemu_sub, "list", Entry(lambda ns, _: ns.json, _list),
                      help="show the Debian QEMUs in the cache")
    add_json(listing)
    fetch = command(qemu_sub, "fetch",
                    Entry(lambda ns, _: FetchArgs(tuple(ns.suites), ns.refresh), _fetch),
                    help="fetch suites' QEMUs into the cache (once)")
    fetch.add_argument("suites", nargs="+", metavar="SUITE", choices=list(SUITES),
                       help=f"one or more of {', '.join(SUITES)}")
    fetch.add_argument("--refresh", action="store_true",
                       help="ask the archive for a newer build even when one is cached")
    pin = command(qemu_sub, "pin", Entry(lambda ns, _: bool(ns.update), _pin),
                  help="compare the pinned versions (harness/qemu-pins.toml) with what the "
                  "archive serves")
    pin.add_argument("--update", action="store_true",
                     help="rewrite the pins to what the archive serves now")
