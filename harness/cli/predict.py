"""``predict``: its options and handler (the work is ``commands.predict``: each mode's
collisions on a tree, without booting anything)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from ..config import Mode, Transport
from .options import (
    MODES,
    TRANSPORTS,
    Entry,
    Given,
    Subparsers,
    add_json,
    command,
    given_text,
    path_value,
    refuse_few_paths,
    whole_number,
)
from .output import progress, text_or_json

# predict starts no guest, so it may walk far larger trees than a run can look at.
PREDICT_MAX_PATHS = 1_000_000


@dataclass(frozen=True)
class PredictArgs:
    path: Path
    modes: tuple[Mode, ...]
    version: str | None
    qemu: str | None
    max_paths: int
    transports: tuple[Transport, ...]
    json: Path | None


def _read(namespace: argparse.Namespace, given: Given) -> PredictArgs:
    refuse_few_paths(namespace.max_paths, given)
    return PredictArgs(namespace.path, MODES.read(namespace), namespace.qemu_version,
                       namespace.qemu, namespace.max_paths, TRANSPORTS.read(namespace),
                       namespace.json)


def _predict(args: PredictArgs) -> int:
    from ..commands.predict import predict_json, predict_text, predict_tree

    # A report inside the tree would change the tree it is about.
    found = text_or_json(
        args.json, lambda: predict_tree(args.path, args.modes, version=args.version,
                                        qemu=args.qemu, max_paths=args.max_paths,
                                        transports=args.transports, progress=progress),
        predict_text, predict_json, "JSON prediction", inputs=[("PATH", args.path)])
    return found.exit_code


def register(sub: Subparsers) -> None:
    predict = command(sub, "predict", Entry(_read, _predict),
                      help="predict each mode's collisions on a tree, without booting "
                      "anything")
    predict.add_argument("path", type=path_value, help="the directory you would export")
    MODES.add(predict)
    predict.add_argument("--qemu-version", metavar="X.Y.Z",
                         help="predict for this QEMU version (default: --qemu's)")
    predict.add_argument("--qemu", type=given_text,
                         help="take the version from this QEMU's --version "
                         "(default: qemu-system-x86_64)")
    predict.add_argument("--max-paths", type=whole_number, default=PREDICT_MAX_PATHS,
                         help=f"walk at most this many paths (default {PREDICT_MAX_PATHS})")
    TRANSPORTS.add(predict)
    add_json(predict)
