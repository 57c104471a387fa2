"""The command line's edge: the parser, the argument types, and every option two
commands share, each declared once with one help text.

A command module (``cli/run.py``, ``cli/exec.py``, ...) declares its parser with these
and reads argparse's Namespace once, in its ``read`` function, into a frozen value of
its own; its handler and everything below it take that value and never see argparse.
An option that means something else to one command (predict's ``--qemu`` and
``--max-paths``, reproduce's single ``--layout``) is declared by that command alone.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Generic, NoReturn, TypeAlias, TypeVar

from ..config import (
    ALL_CACHES,
    ALL_CHECKS,
    ALL_LAYOUTS,
    ALL_MODES,
    ALL_TRANSPORTS,
    DEFAULT_CACHES,
    DEFAULT_LAYOUTS,
    DEFAULT_MAX_PATHS,
    DEFAULT_TRANSPORTS,
    Accel,
    Check,
    Layout,
    parse_enum_list,
)
from ..errors import EXIT_ERROR, UsageError
from ..host.layout import ExportLayout
from ..machine_options import MachineOptions
from .output import say

T = TypeVar("T")
EnumT = TypeVar("EnumT", bound=StrEnum)

# The dests the command line gave, told apart from defaults (``cli.given_options``).
Given = frozenset[str]


class Parser(argparse.ArgumentParser):
    """argparse with the harness's error shape: the usage, one ``error:`` line, exit 2."""

    def error(self, message: str) -> NoReturn:
        say(self.format_usage().rstrip("\n"), err=True)
        say(f"error: {message}", err=True)
        raise SystemExit(EXIT_ERROR)


Subparsers: TypeAlias = "argparse._SubParsersAction[Parser]"


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One command at the edge: ``read`` turns the Namespace (and the options given)
    into the command's typed value, refusing bad or unused input; ``run`` is the
    handler of that value and returns the exit status."""

    read: Callable[[argparse.Namespace, Given], T]
    run: Callable[[T], int]

    def __call__(self, namespace: argparse.Namespace, given: Given) -> int:
        return self.run(self.read(namespace, given))


def command(sub: Subparsers, name: str, entry: Entry[Any], **settings: Any) -> Parser:
    """Add subcommand ``name`` whose Namespace ``entry`` reads and runs."""
    parser: Parser = sub.add_parser(name, **settings)
    parser.set_defaults(entry=entry)
    return parser


# --- argument types -----------------------------------------------------------------

def whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None


def given_text(text: str) -> str:
    """A non-empty argument (``--qemu ''`` would otherwise test the default QEMU)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty value (an unset variable?); give a path "
                                         "or leave the option out for the default")
    return text


def path_value(text: str) -> Path:
    """A path argument; an empty one is refused: it is what an unset CI variable
    (``--kernel "$KERNEL"``) gives, and ``Path('')`` would quietly mean ``.``."""
    return Path(given_text(text))


def report_path(text: str) -> Path:
    """A report's file (``-``: stdout); a path ending in ``/`` names a directory
    (``--json out/``), which would otherwise become a file called ``out``."""
    if given_text(text).endswith("/"):
        raise argparse.ArgumentTypeError(f"{text!r} names a directory; give the report's "
                                         "file name (e.g. out/run.json)")
    return Path(text)


# What a bare ``--json`` means: stdout, as it did before ``--json FILE`` was everywhere.
STDOUT = Path("-")


# --- comma-separated vocabulary lists -----------------------------------------------

@dataclass(frozen=True)
class EnumList(Generic[EnumT]):
    """A comma-separated option naming members of one vocabulary enum: declared and
    read in one place, so its help, its default and its error say the same names."""

    flag: str
    allowed: tuple[EnumT, ...]
    what: str  # "unknown {what} 'x'" / "no {what} given"
    example: str
    default: tuple[EnumT, ...]
    help: str
    metavar: str | None = None

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")

    def add(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(self.flag, default=",".join(self.default), metavar=self.metavar,
                            help=self.help)

    def read(self, namespace: argparse.Namespace) -> tuple[EnumT, ...]:
        return self.parse(getattr(namespace, self.dest))

    def parse(self, text: str) -> tuple[EnumT, ...]:
        return parse_enum_list(text, self.allowed, self.what, self.example)


def _names(values: Sequence[StrEnum]) -> str:
    return ",".join(v.value for v in values)


MODES = EnumList("--modes", ALL_MODES, "multidevs mode", "--modes remap,warn,forbid,default",
                 ALL_MODES, "comma-separated multidevs modes: remap,warn,forbid,default "
                 "(default: all)")
CHECKS = EnumList("--checks", ALL_CHECKS, "check family",
                  f"--checks {Check.IDS},{Check.OPERATIONS}", ALL_CHECKS,
                  f"comma-separated check families: {_names(ALL_CHECKS)} (default: all)")
CACHES = EnumList("--cache", ALL_CACHES, "9p cache mode", "--cache none,loose", DEFAULT_CACHES,
                  f"the guest's 9p cache modes, comma-separated ({_names(ALL_CACHES)}; "
                  f"default: {_names(DEFAULT_CACHES)}); each mode gets one row per cache mode")
TRANSPORTS = EnumList(
    "--transport", ALL_TRANSPORTS, "transport", "--transport 9p,virtiofs", DEFAULT_TRANSPORTS,
    f"how exports reach the guest, comma-separated: {_names(ALL_TRANSPORTS)} (default: "
    f"{_names(DEFAULT_TRANSPORTS)}); 9p gives a row per multidevs mode, virtiofs the rows "
    "virtiofs (submounts announced) and virtiofs-nosubmounts", metavar="T[,T...]")
LAYOUTS = EnumList(
    "--layout", ALL_LAYOUTS, "layout", "--layout standard,overlay", DEFAULT_LAYOUTS,
    f"host layouts, each its own exports: {_names(ALL_LAYOUTS)} (default: "
    f"{_names(DEFAULT_LAYOUTS)}); btrfs, xfs and ext4 need root (loop devices), scripted "
    "ones FUSE; see docs/checks.md for each", metavar="LAYOUT[,LAYOUT...]")


# --- options several commands share ----------------------------------------------------

QEMU_HELP = ("the QEMU to test: a path, a name on PATH or debian:SUITE (see 'qemu list'); "
             "default: $MDH_QEMU, else qemu-system-x86_64")
GUEST_HELP = ("guest recipe: a folder name of guests/ (see 'image list') or a path; "
              "default: the default recipe")


def add_qemu(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--qemu", type=given_text, help=QEMU_HELP)


def add_qemus(parser: argparse.ArgumentParser, *, required: bool = False) -> None:
    """run's and grid's ``--qemu``: several QEMUs, each running the whole matrix."""
    parser.add_argument("--qemu", action="append", default=[], type=given_text,
                        required=required, metavar="QEMU[,QEMU...]",
                        help="the QEMUs to test, comma-separated or repeated, each running "
                        "the whole matrix in order: paths, names on PATH or debian:SUITE "
                        "(see 'qemu list'); default: $MDH_QEMU, else qemu-system-x86_64")


def add_guest(parser: argparse.ArgumentParser, *flags: str) -> None:
    parser.add_argument(*(flags or ("--guest",)), dest="guest", default=None,
                        metavar="NAME", help=GUEST_HELP)


def add_guests(parser: argparse.ArgumentParser) -> None:
    """run's and grid's ``--guest``: several recipes, each running the whole matrix."""
    # No given_text type: refuse_empty_guest says an empty name is an empty recipe.
    parser.add_argument("--guest", action="append", default=[], metavar="NAME[,NAME...]",
                        help="guest recipes, comma-separated or repeated, each running the "
                        "whole matrix in order (see 'image list'; default: the default "
                        "recipe)")


def add_accel(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--accel", choices=[a.value for a in Accel], default=Accel.AUTO.value,
                        help="auto: KVM only if a guest really starts under it, else TCG "
                        "(said so)")


def add_cold(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cold", action="store_true",
                        help="boot every guest cold (default: restore a saved guest state "
                        "where one fits, ~0.4 s to SSH instead of ~2.5 s under TCG)")


def add_modules(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--modules", type=path_value, default=None, metavar="DIR",
                        help="a 'make modules_install INSTALL_MOD_PATH=DIR' tree: the guest "
                        "loads its modules instead of the distro kernel's (with --kernel)")


def add_json(parser: argparse.ArgumentParser) -> None:
    """``--json FILE``: ``-`` (or the option alone) is stdout.  A listing command
    (predict, probe, image, qemu) then prints the JSON instead of its text; run and
    grid print their table, then the JSON."""
    parser.add_argument("--json", type=report_path, nargs="?", const=STDOUT, metavar="FILE",
                        help="write the command's JSON to FILE ('-' or no FILE: stdout; a "
                        "device or pipe is written through)")


def add_markdown(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--markdown", type=report_path, metavar="FILE",
                        help="write the verdicts as a Markdown table to FILE (a CI step "
                        "summary; as --json)")


def add_shape(parser: argparse.ArgumentParser) -> None:
    """The standard export's shape (run and reproduce)."""
    parser.add_argument("--devices", type=whole_number, default=3,
                        help="host devices in the export (1..128; 1 = control only)")
    parser.add_argument("--files", type=whole_number, default=8, help="files per device")


def add_machine(parser: argparse.ArgumentParser, *, several: bool = False) -> None:
    """The machine a command boots its guests on (``MachineOptions``): exec and
    reproduce name one QEMU and one guest, run names several of each."""
    if several:
        add_qemus(parser)
    else:
        add_qemu(parser)
    parser.add_argument("--qemu-datadir", type=path_value, action="append", default=[],
                        help="a firmware directory of QEMU's (one -L each, searched in the "
                        "order given; repeat for several); default: a pc-bios/ beside a "
                        "binary outside the system prefix, or its prefix's share/qemu, "
                        "share/seabios and lib/ipxe/qemu")
    add_accel(parser)
    parser.add_argument("--kernel", type=path_value, help="boot this kernel instead of the image's")
    add_modules(parser)
    if several:
        add_guests(parser)
    else:
        add_guest(parser)
    parser.add_argument("--logs", type=path_value, help="keep per-guest logs here (always kept)")
    add_cold(parser)


def add_export(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--export", type=path_value, metavar="PATH",
                        help="check your own tree instead of built layouts: bind-mounted "
                        "read-only with the mounts under it, exported with readonly=on; "
                        "only the ids family runs (the others write)")
    parser.add_argument("--max-paths", type=whole_number, default=DEFAULT_MAX_PATHS,
                        help="walk at most this many paths of --export (default "
                        f"{DEFAULT_MAX_PATHS}: a run stays within its deadlines under TCG)")


# --- reading what they give -------------------------------------------------------------

def listed(values: Sequence[str]) -> tuple[str, ...]:
    """Repeated, comma-separated values as one list, in order, without repeats."""
    return tuple(dict.fromkeys(v.strip() for value in values for v in value.split(",")
                               if v.strip()))


def refuse_empty_guest(values: Sequence[str], given: Given) -> None:
    """``--guest ''``-like values (``--guest ,``, ``--guest a,``) name an empty recipe."""
    if "guest" not in given:
        return
    if any(not all(name.strip() for name in value.split(",")) for value in values):
        raise UsageError(f"--guest {','.join(values)!r} names an empty recipe (an unset "
                         "variable?)",
                         hint="name recipes (see 'image list'), or leave --guest out for "
                         "the default")


def refuse_few_paths(max_paths: int, given: Given) -> None:
    if "max_paths" in given and max_paths < 1:
        raise UsageError(f"--max-paths must be at least 1, got {max_paths}",
                         hint="a walk counts the tree's root as its first path")


def machine(namespace: argparse.Namespace, given: Given) -> MachineOptions:
    """The machine options of exec and reproduce (run's several ``--qemu`` and
    ``--guest`` values are its own)."""
    refuse_empty_guest([namespace.guest] if namespace.guest is not None else [], given)
    return MachineOptions(qemu=namespace.qemu, accel=Accel(namespace.accel),
                          kernel=namespace.kernel, modules=namespace.modules,
                          guest=namespace.guest, cold=namespace.cold,
                          qemu_datadirs=tuple(namespace.qemu_datadir))


@dataclass(frozen=True)
class Shape:
    """What run and reproduce were told about the export's shape: the standard
    layout's numbers, the layouts chosen, and the user's tree instead of them."""

    base: ExportLayout
    layouts: tuple[Layout, ...]
    export: ExportLayout | None = None


def read_shape(namespace: argparse.Namespace, given: Given,
               layouts: Callable[[], tuple[Layout, ...]], nested: bool = False) -> Shape:
    """Refuse the shape options the mode of operation would ignore without a word
    (the built layouts' shape with ``--export``, ``--max-paths`` without it,
    ``--devices`` when every layout chosen fixes its own devices), then check the
    user's tree before anything boots: a missing path, a file or an unreadable
    directory exits 2 with one line."""
    refuse_few_paths(namespace.max_paths, given)
    if namespace.export is not None:
        shaped = [f"--{name}" for name in ("layout", "devices", "files", "nested")
                  if name in given]
        if shaped:
            several = len(shaped) > 1
            raise UsageError(f"{', '.join(shaped)} shape{'' if several else 's'} the built "
                             f"layouts, and --export {namespace.export} checks your own "
                             f"tree instead: {'they' if several else 'it'} would be ignored",
                             hint=f"drop {' '.join(shaped)}, or drop --export")
    elif "max_paths" in given:
        raise UsageError("--max-paths limits the walk of --export, and no --export was given",
                         hint="drop --max-paths, or add --export PATH")
    chosen = layouts() if namespace.export is None else ()
    if "devices" in given and chosen:
        _refuse_ignored_devices(namespace.devices, chosen)
    base = ExportLayout(devices=namespace.devices, files_per_device=namespace.files,
                        nested=nested)
    return Shape(base, chosen, _export_layout(namespace.export, namespace.max_paths))


def _refuse_ignored_devices(devices: int, layouts: tuple[Layout, ...]) -> None:
    from ..plan import layout_shape

    def own(kind: Layout) -> int | None:
        # The devices ``kind`` has whatever --devices says; None when --devices shapes it.
        few, many = (layout_shape(kind, ExportLayout(devices=n, files_per_device=1)).devices
                     for n in (3, 4))
        return few if few == many else None

    fixed = {kind: own(kind) for kind in layouts}
    if None not in fixed.values():
        said = ", ".join(f"{kind.value} has {count}" for kind, count in fixed.items())
        raise UsageError(f"--devices {devices} is ignored by --layout "
                         f"{','.join(k.value for k in layouts)} ({said} device(s) of "
                         "its own)", hint="drop --devices, or choose the standard layout")


def _export_layout(tree: Path | None, max_paths: int) -> ExportLayout | None:
    if tree is None:
        return None
    from ..host.walk import refuse_larger, resolve_tree

    source = resolve_tree(tree)
    if max_paths >= 1:  # below that, ExportLayout refuses the number itself
        refuse_larger(source, max_paths, "--export")
    return ExportLayout(devices=2, files_per_device=1, kind=Layout.EXPORT,
                        source=source, max_paths=max_paths)
