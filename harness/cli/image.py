"""``image build``, ``image list`` and ``image prune``: their options and handlers (the
work is ``commands.image``)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from ..errors import EXIT_OK
from .options import (
    Entry,
    Given,
    Parser,
    Subparsers,
    add_guest,
    add_json,
    add_modules,
    command,
    refuse_empty_guest,
)
from .output import progress, say, text_or_json


@dataclass(frozen=True)
class BuildArgs:
    guest: str | None
    modules: Path | None
    force: bool
    json: Path | None


@dataclass(frozen=True)
class ListArgs:
    json: Path | None


def _read_build(namespace: argparse.Namespace, given: Given) -> BuildArgs:
    refuse_empty_guest([namespace.guest] if namespace.guest is not None else [], given)
    return BuildArgs(namespace.guest, namespace.modules, namespace.force, namespace.json)


def _build(args: BuildArgs) -> int:
    from ..commands.image import build, image_json, image_text

    text_or_json(args.json, lambda: build(args.guest, args.modules, args.force, progress),
                 image_text, image_json, "JSON paths")
    return EXIT_OK


def _list(args: ListArgs) -> int:
    from ..commands.image import listing, listing_text

    text_or_json(args.json, listing, listing_text, lambda found: found, "JSON listing")
    return EXIT_OK


def _prune(_: None) -> int:
    from ..commands.image import prune

    say(prune())
    return EXIT_OK


def register(sub: Subparsers) -> None:
    image = sub.add_parser("image", help="build or inspect the guest image")
    image_sub = image.add_subparsers(dest="image_command", required=True, parser_class=Parser)
    build = command(image_sub, "build", Entry(_read_build, _build),
                    help="resolve package versions, build (cached)")
    add_json(build)
    build.add_argument("--force", action="store_true", help="rebuild even on a cache hit")
    add_guest(build, "--guest", "--recipe")
    add_modules(build)
    listing = command(image_sub, "list", Entry(lambda ns, _: ListArgs(ns.json), _list),
                      help="show the recipes, their cached images and the saved guest "
                      "states")
    add_json(listing)
    command(image_sub, "prune", Entry(lambda ns, _: None, _prune),
            help="remove every saved guest state (the next boot of each kind saves a new "
            "one)")
