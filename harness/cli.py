"""The ``multidevs-harness`` command: argument parsing and output, no logic of its own."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

from . import __version__
from .config import (
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
    Cache,
    Layout,
    Mode,
    Transport,
    Via,
    parse_enum_list,
)
from .errors import EXIT_ERROR, EXIT_FAIL, EXIT_OK, HarnessError, UsageError
from .host.layout import ExportLayout
from .machine_options import MachineOptions
from .plan import RunOptions, layout_shape

if TYPE_CHECKING:
    # Only named in annotations: the result schema brings the verdicts, which
    # exec and --help never load.
    from .results import EnvironmentRecord, ResultRow, RunResults

# The comma-separated options, each declared once (run, grid and predict share them):
# the values it takes, how an error names them, and the example a "no ... given" hint
# shows; ``parse_enum_list(text, *MODES_LIST)`` reads one.
MODES_LIST = (ALL_MODES, "multidevs mode", "--modes remap,warn,forbid,default")
CHECKS_LIST = (ALL_CHECKS, "check family", "--checks ids,operations")
CACHES_LIST = (ALL_CACHES, "9p cache mode", "--cache none,loose")
TRANSPORTS_LIST = (ALL_TRANSPORTS, "transport", "--transport 9p,virtiofs")
LAYOUTS_LIST = (ALL_LAYOUTS, "layout", "--layout standard,overlay")

# predict starts no guest, so it may walk far larger trees than a run can look at.
PREDICT_MAX_PATHS = 1_000_000

# exec's exit status, in its --help and docs/usage.md.  Passed through as ssh does, so a
# script can ask the guest a question (exec -- test -e /x); exec judges nothing, so
# there is no finding its 1 could be mistaken for.
EXEC_STATUS = ("exit status: the guest command's own (as ssh: 0-255, 255 if a signal ended "
               "it); exec judges nothing, so 1 is the command's, never a finding. When the "
               "guest cannot boot or be reached, 2 with one 'error:' line, which tells it "
               "from a command that exits 2 itself.")

# Each command imports what it needs inside its function: ``--help`` and ``exec`` should
# not wait for the verdicts, the report writers or the SSH client to load.


def say(text: str | bytes = "", *, err: bool = False) -> None:
    """Write ``text`` (a line; bytes as they are) to stdout, or stderr with ``err``.

    A reader that went away (``| head``, a CI log pipe closed early) ends the printing,
    never the run: the guests still finish, the JSON and JUnit reports are still
    written and the exit code still says what QEMU did.  Printing was the only thing
    the closed pipe could take, so its error is not a fault of the harness.
    """
    stream = sys.stderr if err else sys.stdout
    try:
        if isinstance(text, bytes):
            stream.flush()
            stream.buffer.write(text)
        else:
            stream.write(text + "\n")
        stream.flush()
    except BrokenPipeError:
        _discard(stream)


def _discard(stream: Any) -> None:
    # Later writes, and the interpreter's own flush at exit, go nowhere instead of
    # raising again (Python's recipe for a closed pipe).
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, stream.fileno())
    finally:
        os.close(devnull)


def progress(message: str) -> None:
    """Progress lines go to stderr so stdout stays clean for --json."""
    say(f"[multidevs-harness] {message}", err=True)



class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        say(self.format_usage().rstrip("\n"), err=True)
        say(f"error: {message}", err=True)
        raise SystemExit(EXIT_ERROR)


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None


def _path(text: str) -> Path:
    """A path argument; an empty one is refused: it is what an unset CI variable
    (``--kernel "$KERNEL"``) gives, and ``Path('')`` would quietly mean ``.``."""
    return Path(_given(text))


def _given(text: str) -> str:
    """A non-empty argument (``--qemu ''`` would otherwise test the default QEMU)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty value (an unset variable?); give a path "
                                         "or leave the option out for the default")
    return text


def _report_path(text: str) -> Path:
    """A report's file (``-``: stdout); a path ending in ``/`` names a directory
    (``--json out/``), which would otherwise become a file called ``out``."""
    if _given(text).endswith("/"):
        raise argparse.ArgumentTypeError(f"{text!r} names a directory; give the report's "
                                         "file name (e.g. out/run.json)")
    return Path(text)


# What a bare ``--json`` means: stdout, as it did before ``--json FILE`` was everywhere.
STDOUT = Path("-")


def _add_json_option(parser: argparse.ArgumentParser) -> None:
    """``--json FILE`` as every command that has JSON declares it: ``-`` (or the option
    alone) is stdout.  A listing command (predict, probe, image, qemu) then prints the
    JSON instead of its text; run and grid print their table, then the JSON."""
    parser.add_argument("--json", type=_report_path, nargs="?", const=STDOUT, metavar="FILE",
                        help="write the command's JSON to FILE ('-' or no FILE: stdout; a "
                        "device or pipe is written through)")


# Every --qemu names a QEMU the same way (environment.resolve_qemu).
QEMU_HELP = ("the QEMU to test: a path, a name on PATH or debian:SUITE (see 'qemu list'); "
             "default: $MDH_QEMU, else qemu-system-x86_64")


# The options several commands share, each declared once with one help text (a command
# that means something else by a name declares its own, e.g. predict's --qemu).
def _add_accel_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--accel", choices=[a.value for a in Accel], default=Accel.AUTO.value,
                        help="auto: KVM only if a guest really starts under it, else TCG "
                        "(said so)")


def _add_cold_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cold", action="store_true",
                        help="boot every guest cold (default: restore a saved guest state "
                        "where one fits, ~0.4 s to SSH instead of ~2.5 s under TCG)")


def _add_modes_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--modes", default=",".join(m.value for m in ALL_MODES),
                        help="comma-separated multidevs modes: remap,warn,forbid,default "
                        "(default: all)")


def _add_shape_options(parser: argparse.ArgumentParser) -> None:
    """The standard export's shape (run and reproduce)."""
    parser.add_argument("--devices", type=_whole_number, default=3,
                        help="host devices in the export (1..128; 1 = control only)")
    parser.add_argument("--files", type=_whole_number, default=8, help="files per device")


def _write_json(data: Any, path: Path, what: str) -> None:
    """Write a listing command's JSON to ``path`` (stdout: printed, nothing else said)."""
    from . import report as rep

    rep.write_json(data, path)
    if not rep.is_stdout(path):
        progress(f"{what}: {path}")


def _add_machine_options(parser: argparse.ArgumentParser, several_qemus: bool = False) -> None:
    if several_qemus:
        parser.add_argument("--qemu", action="append", default=[], type=_given,
                            help=f"{QEMU_HELP}; repeat to run the whole matrix on each, in "
                            "order")
    else:
        parser.add_argument("--qemu", type=_given, help=QEMU_HELP)
    _add_accel_option(parser)
    parser.add_argument("--kernel", type=_path, help="boot this kernel instead of the image's")
    parser.add_argument("--modules", type=_path, default=None, metavar="DIR",
                        help="load this 'make modules_install' tree's modules (with --kernel)")
    if several_qemus:
        parser.add_argument("--guest", default="", metavar="NAME[,NAME...]",
                            help="guest recipes to run the whole matrix on (see 'image "
                            "list'; default: the default recipe)")
    else:
        parser.add_argument("--guest", default=None, metavar="NAME",
                            help="guest recipe (see 'image list'; default: the default)")
    parser.add_argument("--logs", type=_path, help="keep per-guest logs here (always kept)")
    _add_cold_option(parser)


def _add_image_commands(sub: argparse._SubParsersAction[_Parser]) -> None:
    """``image build`` and ``image list``."""
    image = sub.add_parser("image", help="build or inspect the guest image")
    image_sub = image.add_subparsers(dest="image_command", required=True, parser_class=_Parser)
    build = image_sub.add_parser("build", help="resolve package versions, build (cached)")
    _add_json_option(build)
    build.add_argument("--force", action="store_true", help="rebuild even on a cache hit")
    build.add_argument("--guest", "--recipe", dest="guest", default=None,
                       help="recipe name (a folder of guests/) or path; default: the default")
    build.add_argument("--modules", type=_path, default=None, metavar="DIR",
                       help="carry this 'make modules_install INSTALL_MOD_PATH=DIR' tree's "
                       "modules instead of the distro kernel's")
    listing = image_sub.add_parser("list", help="show the recipes, their cached images and "
                                   "the saved guest states")
    _add_json_option(listing)
    image_sub.add_parser("prune", help="remove every saved guest state (the next boot of "
                         "each kind saves a new one)")


def _add_qemu_commands(sub: argparse._SubParsersAction[_Parser]) -> None:
    """``qemu list``, ``qemu fetch`` and ``qemu pin``: Debian's QEMUs (--qemu debian:SUITE)."""
    from .qemu.debian import SUITES

    qemu = sub.add_parser("qemu", help="fetch, list and pin the QEMUs of Debian's suites "
                          "(--qemu debian:SUITE)")
    qemu_sub = qemu.add_subparsers(dest="qemu_command", required=True, parser_class=_Parser)
    listing = qemu_sub.add_parser("list", help="show the Debian QEMUs in the cache")
    _add_json_option(listing)
    fetch = qemu_sub.add_parser("fetch", help="fetch suites' QEMUs into the cache (once)")
    fetch.add_argument("suites", nargs="+", metavar="SUITE", choices=list(SUITES),
                       help=f"one or more of {', '.join(SUITES)}")
    fetch.add_argument("--refresh", action="store_true",
                       help="ask the archive for a newer build even when one is cached")
    pin = qemu_sub.add_parser("pin", help="compare the pinned versions (harness/qemu-pins."
                              "toml) with what the archive serves")
    pin.add_argument("--update", action="store_true",
                     help="rewrite the pins to what the archive serves now")


def _add_grid_command(sub: argparse._SubParsersAction[_Parser]) -> None:
    """``grid``: the default matrix on every QEMU x guest cell, one table."""
    grid = sub.add_parser("grid", help="run the matrix on every QEMU x guest kernel cell; "
                          "one table (terminal, JSON, Markdown)")
    grid.add_argument("--qemu", action="append", default=[], type=_given, required=True,
                      help="QEMUs, comma-separated or repeated: paths, names on PATH or "
                      "debian:SUITE (e.g. debian:bullseye,debian:sid)")
    grid.add_argument("--guest", action="append", default=[], type=_given,
                      help="guest recipes, comma-separated or repeated (see 'image list'; "
                      "default: the default recipe)")
    _add_accel_option(grid)
    _add_cold_option(grid)
    _add_modes_option(grid)
    _add_check_option(grid)
    grid.add_argument("--cache", default=",".join(c.value for c in DEFAULT_CACHES),
                      help="the guest's 9p cache modes, comma-separated (default: none,loose)")
    _add_json_option(grid)
    grid.add_argument("--markdown", type=_path, metavar="FILE",
                      help="write the grid as a Markdown table (a CI step summary)")


def _add_datadir_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--qemu-datadir", type=_path, action="append", default=[],
                        help="a firmware directory of QEMU's (one -L each, searched in the "
                        "order given; repeat for several); default: a pc-bios/ beside a "
                        "binary outside the system prefix, or its prefix's share/qemu, "
                        "share/seabios and lib/ipxe/qemu")


def _add_run_command(sub: argparse._SubParsersAction[_Parser]) -> None:
    """``run``: the main job's options."""
    run = sub.add_parser("run", help="check every multidevs mode (the main job)")
    _add_machine_options(run, several_qemus=True)
    _add_datadir_option(run)
    _add_modes_option(run)
    run.add_argument(
        "--cache",
        default=",".join(c.value for c in DEFAULT_CACHES),
        help="the guest's 9p cache modes, comma-separated (" +
        ",".join(c.value for c in ALL_CACHES) + "); each mode gets one row per cache mode",
    )
    _add_check_option(run)
    run.add_argument(
        "--transport", default=",".join(DEFAULT_TRANSPORTS), metavar="T[,T...]",
        help=f"how exports reach the guest: {','.join(ALL_TRANSPORTS)} (default: "
        f"{','.join(DEFAULT_TRANSPORTS)}); virtiofs adds the rows virtiofs (submounts "
        "announced) and virtiofs-nosubmounts on every layout, in guests of their own")
    run.add_argument("--virtiofsd", type=_path, metavar="PATH",
                     help="the virtiofsd (1.x) for virtiofs rows; default: the host's, else "
                     "Debian trixie's, fetched once into the image cache")
    _add_shape_options(run)
    run.add_argument("--nested", action="store_true", help="add a tmpfs nested in another")
    run.add_argument(
        "--layout", default=",".join(DEFAULT_LAYOUTS), metavar="LAYOUT[,LAYOUT...]",
        help=f"host layouts, each its own exports: {','.join(ALL_LAYOUTS)} (default: "
        f"{','.join(DEFAULT_LAYOUTS)}); btrfs, xfs and ext4 need root (loop devices), "
        "scripted ones FUSE; see docs/checks.md for each")
    run.add_argument("--known-issues", type=_path, metavar="FILE",
                     help="known QEMU and kernel bugs (TOML) instead of the harness's own; "
                     "an empty file: nothing is known")
    run.add_argument("--strict-known", action="store_true",
                     help="exit 1 when a known issue does not reproduce (a fixed QEMU)")
    run.add_argument("--no-control", action="store_true",
                     help="skip the single-device control guest")
    run.add_argument("--no-witness", action="store_true",
                     help="skip the witnesses (tar, cp -a, rsync -aH, du, find)")
    run.add_argument("--isolate", action="store_true",
                     help="one guest per mode instead of sharing guests between modes")
    run.add_argument("--jobs", type=_whole_number, default=0,
                     help="guests booted at once (default: by CPU count)")
    _add_report_options(run)
    run.add_argument("--via", choices=[v.value for v in Via], default=Via.QEMU.value,
                     help="start guests with QEMU directly or through libvirtd")
    _add_export_options(run)
    run.add_argument("--bisect", action="store_true",
                     help="exit codes for 'git bisect run': pass 0, fail 1, error or "
                     "inconclusive 125 (skip the commit)")


def _add_report_options(run: argparse.ArgumentParser) -> None:
    """run's outputs: the table's shape and the report files."""
    _add_json_option(run)
    run.add_argument("--junit", type=_report_path, metavar="FILE",
                     help="write JUnit XML to FILE (as --json)")
    run.add_argument("--markdown", type=_report_path, metavar="FILE",
                     help="write the verdict table as Markdown to FILE (a CI step summary; "
                     "as --json)")
    run.add_argument("--wide", action="store_true",
                     help="print the full table, each row's expectation in it, as wide as "
                     "it needs (default: fitted to 100 columns, expectations in a legend)")


def _add_export_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--export", type=_path, metavar="PATH",
                        help="check your own tree instead of built layouts: bind-mounted "
                        "read-only with the mounts under it, exported with readonly=on; "
                        "only the ids family runs (the others write)")
    parser.add_argument("--max-paths", type=_whole_number, default=DEFAULT_MAX_PATHS,
                        help="walk at most this many paths of --export (default "
                        f"{DEFAULT_MAX_PATHS}: a run stays within its deadlines under TCG)")


def _export_layout(args: argparse.Namespace) -> ExportLayout | None:
    """The user's tree (``--export``), checked before anything boots: a missing path,
    a file or an unreadable directory exits 2 with one line."""
    if args.export is None:
        return None
    from .host.walk import refuse_larger, resolve_tree

    source = resolve_tree(args.export)
    if args.max_paths >= 1:  # below that, ExportLayout refuses the number itself
        refuse_larger(source, args.max_paths, "--export")
    return ExportLayout(devices=2, files_per_device=1, kind=Layout.EXPORT,
                        source=source, max_paths=args.max_paths)


def _add_predict_command(sub: argparse._SubParsersAction[_Parser]) -> None:
    predict = sub.add_parser("predict", help="predict each mode's collisions on a tree, "
                             "without booting anything")
    predict.add_argument("path", type=_path, help="the directory you would export")
    _add_modes_option(predict)
    predict.add_argument("--qemu-version", metavar="X.Y.Z",
                         help="predict for this QEMU version (default: --qemu's)")
    predict.add_argument("--qemu", type=_given,
                         help="take the version from this QEMU's --version "
                         "(default: qemu-system-x86_64)")
    predict.add_argument("--max-paths", type=_whole_number, default=PREDICT_MAX_PATHS,
                         help=f"walk at most this many paths (default {PREDICT_MAX_PATHS})")
    predict.add_argument("--transport", default=Transport.NINEP.value, metavar="T[,T...]",
                         help="9p (the modes), virtiofs (both virtiofsd settings), or "
                         "9p,virtiofs (default: 9p)")
    _add_json_option(predict)


def _add_layout_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--layout", choices=[layout.value for layout in ALL_LAYOUTS],
        default=Layout.STANDARD.value,
        help="standard: devNN tmpfs mounts with files, hard links and twins; loop: the "
        "root holds only dev01 and shares its qid under warn (a client with an inode "
        "cache takes dev01 for its own parent: ELOOP on Linux 6.12); overlay: the root "
        "is an overlayfs (xino) over tmpfs layers; see docs/checks.md for the others",
    )


def _base_layout(args: argparse.Namespace) -> ExportLayout:
    """The standard export's shape (``--devices``, ``--files``, ``--nested``)."""
    return ExportLayout(devices=args.devices, files_per_device=args.files,
                        nested=getattr(args, "nested", False))


def _layout(args: argparse.Namespace) -> ExportLayout:
    """reproduce's export shape: its one ``--layout`` (loop is two devices), or the
    user's tree (``--export``)."""
    return _export_layout(args) or layout_shape(Layout(args.layout), _base_layout(args))


def _add_check_option(run: argparse.ArgumentParser) -> None:
    run.add_argument(
        "--checks", default=",".join(ALL_CHECKS),
        help=f"comma-separated check families: {','.join(ALL_CHECKS)} (default: all)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The whole command-line interface."""
    parser = _Parser(
        prog="multidevs-harness",
        description="Boot real guests over a multi-device 9p export and check QEMU's "
        "multidevs option end to end.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    _add_image_commands(sub)
    _add_qemu_commands(sub)

    probe = sub.add_parser("probe", help="report QEMU version, multidevs support, accel")
    probe.add_argument("--qemu", type=_given, help=QEMU_HELP)
    _add_accel_option(probe)
    _add_json_option(probe)

    exec_ = sub.add_parser("exec", help="boot a guest, run a command over SSH, shut down",
                           epilog=EXEC_STATUS)
    _add_machine_options(exec_)
    exec_.add_argument("cmd", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")

    _add_run_command(sub)
    _add_grid_command(sub)

    repro = sub.add_parser("reproduce", help="boot one guest and show the collisions")
    _add_machine_options(repro)
    repro.add_argument("--mode", default=Mode.WARN.value,
                       choices=[m.value for m in ALL_MODES])
    repro.add_argument("--cache", default=Cache.NONE.value, choices=[c.value for c in ALL_CACHES],
                       help="the guest's 9p cache mode (loose shows aliasing under warn)")
    _add_shape_options(repro)
    _add_layout_option(repro)
    _add_export_options(repro)
    _add_predict_command(sub)
    return parser


def cmd_image_build(args: argparse.Namespace) -> int:
    from . import report as rep
    from .commands.image import build, image_json, image_text

    if args.json is not None:
        rep.check_destination(args.json, "--json")
    image = build(args.guest, args.modules, args.force, progress)
    if args.json is None or not rep.is_stdout(args.json):
        say(image_text(image))
    if args.json is not None:
        _write_json(image_json(image), args.json, "JSON paths")
    return EXIT_OK


def cmd_image_prune(args: argparse.Namespace) -> int:
    from .commands.image import prune

    say(prune())
    return EXIT_OK


def cmd_image_list(args: argparse.Namespace) -> int:
    from .commands.image import listing, listing_text

    return _listing(args, listing, listing_text)


def cmd_qemu_list(args: argparse.Namespace) -> int:
    from .commands.qemu import listing, listing_text

    return _listing(args, listing, listing_text)


def _listing(args: argparse.Namespace, listing: Callable[[], Any],
             text: Callable[[Any], str]) -> int:
    """A listing command: its text, or its JSON (``--json``) to stdout or a file."""
    from . import report as rep

    if args.json is not None:
        rep.check_destination(args.json, "--json")
    found = listing()
    if args.json is None or not rep.is_stdout(args.json):
        say(text(found))
    if args.json is not None:
        _write_json(found, args.json, "JSON listing")
    return EXIT_OK


def cmd_qemu_fetch(args: argparse.Namespace) -> int:
    from .commands.qemu import fetch

    for build in fetch(args.suites, args.refresh, progress):
        say(f"{build.suite}: QEMU {build.version}: {build.wrapper}")
    return EXIT_OK


def cmd_qemu_pin(args: argparse.Namespace) -> int:
    from .commands.qemu import pin

    say(pin(args.update, progress))
    return EXIT_OK


def cmd_probe(args: argparse.Namespace) -> int:
    from .environment import probe_record
    from .report import check_destination, environment_json, is_stdout

    if args.json is not None:
        check_destination(args.json, "--json")
    record = probe_record(args.qemu, Accel(args.accel), progress=progress)
    if args.json is None or not is_stdout(args.json):
        for key, value in record.properties():
            say(f"{key:26} {value}")
    if args.json is not None:
        _write_json(environment_json(record), args.json, "JSON environment")
    return _probe_status(record)


def _probe_status(record: EnvironmentRecord) -> int:
    """probe's exit status, the record printed: 0 when this QEMU can be tested, else 2
    with the one ``error:`` line saying why (it was 2 with no word but a ``false``)."""
    from .qemu.probe import require_multidevs

    try:
        require_multidevs(record.qemu)
    except HarnessError as exc:
        say(f"error: {exc}", err=True)
        return exc.exit_code
    return EXIT_OK


def _machine(args: argparse.Namespace) -> MachineOptions:
    """The machine options (see ``_add_machine_options``); run's several ``--qemu`` and
    ``--guest`` values stay in RunOptions."""
    several = isinstance(args.qemu, list)
    return MachineOptions(qemu=None if several else args.qemu, accel=Accel(args.accel),
                          kernel=args.kernel, modules=args.modules,
                          guest=None if several else args.guest, cold=args.cold,
                          qemu_datadirs=tuple(getattr(args, "qemu_datadir", ())))


def cmd_exec(args: argparse.Namespace) -> int:
    from .commands.exec import exec_in_guest

    command = list(args.cmd)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise UsageError("no command given", hint="multidevs-harness exec -- uname -r")
    result = exec_in_guest(command, _machine(args), logs=args.logs, progress=progress)
    say(result.stdout)
    say(result.stderr, err=True)
    return result.rc


def cmd_run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from . import report as rep

    export = _export_layout(args)
    transports = parse_enum_list(args.transport, *TRANSPORTS_LIST)
    options = RunOptions(
        modes=parse_enum_list(args.modes, *MODES_LIST),
        caches=parse_enum_list(args.cache, *CACHES_LIST),
        layout=_base_layout(args),
        # --export replaces the built layouts: the run is about the user's tree.
        layouts=(Layout.EXPORT,) if export else parse_enum_list(args.layout, *LAYOUTS_LIST),
        export=export,
        machine=replace(_machine(args), virtiofs=Transport.VIRTIOFS in transports,
                        virtiofsd=args.virtiofsd),
        transports=transports,
        qemus=tuple(args.qemu),
        guests=tuple(name.strip() for name in args.guest.split(",") if name.strip()),
        logs=args.logs,
        control=not args.no_control,
        witness=not args.no_witness,
        jobs=args.jobs,
        via=Via(args.via),
        share=not args.isolate,
        checks=parse_enum_list(args.checks, *CHECKS_LIST),
        known_issues=args.known_issues,
        strict_known=args.strict_known,
    )
    result = _checked_run(options, args.json, args.junit, args.markdown)
    say(rep.table(result, wide=args.wide))
    if export is not None:
        say()
        say(rep.export_collisions(result))
    say()
    say(rep.summary_line(result))
    _say_why_unjudged(result.rows, result.exit_code)
    return _write_reports(result, args.json, args.junit, args.markdown)


def _say_why_unjudged(rows: Sequence[ResultRow], code: int) -> None:
    """A run (or reproduce) that exits 2 for its rows says so in one ``error:`` line,
    as every other exit 2 does: how many rows could not be judged, and the first one's
    reason (the table's failures list them all)."""
    from .verdicts.common import Status

    if code != EXIT_ERROR:
        return
    unjudged = [row for row in rows if row.status in (Status.ERROR, Status.INCONCLUSIVE)]
    if not unjudged:
        say("error: the run judged no row", err=True)
        return
    first = unjudged[0]
    reason = first.failures[0] if first.failures else first.status.value
    say(f"error: {len(unjudged)} of {len(rows)} rows could not be judged; first "
        f"[{first.case}] {reason}", err=True)
    say("  hint: the failures above name each row's reason (a missing tool, a guest that "
        "could not boot, a premise that failed); fix it and run again", err=True)


def _write_reports(result: RunResults, json_path: Path | None, junit_path: Path | None,
                   markdown_path: Path | None = None) -> int:
    """Write the reports asked for and return the exit status.  A report that cannot
    be written (a full disk, ``/dev/full``) is an ``error:`` line and exit 2, the other
    report still written; but a finding (exit 1) outranks it, as a fail row outranks
    error rows: the table above has already shown it."""
    from . import report as rep

    def write_json(path: Path) -> None:
        rep.write_json(rep.to_json(result), path)

    def write_junit(path: Path) -> None:
        rep.write_junit(result, path)

    def write_markdown(path: Path) -> None:
        rep.write_text(rep.markdown(result), path)

    writers = ((json_path, "JSON", write_json), (junit_path, "JUnit", write_junit),
               (markdown_path, "Markdown", write_markdown))
    code = result.exit_code
    for path, kind, write in writers:
        if path is None:
            continue
        try:
            write(path)
        except HarnessError as exc:
            say(f"error: {exc}", err=True)
            code = code if code == EXIT_FAIL else exc.exit_code
            continue
        progress(f"{kind} report: {_shown(path)}")
    return code


def _split(values: Sequence[str]) -> tuple[str, ...]:
    """Repeated, comma-separated values as one list, in order, without repeats."""
    return tuple(dict.fromkeys(v.strip() for value in values for v in value.split(",")
                               if v.strip()))


def cmd_grid(args: argparse.Namespace) -> int:
    from . import report as rep
    from .commands.grid import grid_exit_code, grid_json, grid_markdown, grid_text, run_grid

    for path, option in ((args.json, "--json"), (args.markdown, "--markdown")):
        if path is not None:
            rep.check_destination(path, option)
    options = RunOptions(modes=parse_enum_list(args.modes, *MODES_LIST), layout=ExportLayout(),
                         checks=parse_enum_list(args.checks, *CHECKS_LIST),
                         caches=parse_enum_list(args.cache, *CACHES_LIST),
                         machine=MachineOptions(accel=Accel(args.accel), cold=args.cold))
    from .image.recipe import DEFAULT_RECIPE

    cells = run_grid(options, _split(args.qemu), _split(args.guest) or (DEFAULT_RECIPE,),
                     progress)
    say(grid_text(cells))
    if args.json:
        rep.write_json(grid_json(cells), args.json)
        progress(f"JSON grid: {args.json}")
    if args.markdown:
        rep.write_text(grid_markdown(cells), args.markdown)
        progress(f"Markdown grid: {args.markdown}")
    return grid_exit_code(cells)


def _shown(path: Path) -> str:
    from .report import is_stdout

    return "stdout" if is_stdout(path) else str(path)


def _checked_run(options: RunOptions, json_path: Path | None, junit_path: Path | None,
                 markdown_path: Path | None = None) -> RunResults:
    """``run_checks`` with its report paths checked before anything boots; a run that
    ends without rows (bad input, a harness fault) still writes reports saying why."""
    from . import report as rep
    from .run import run_checks

    rep.check_destinations(
        [(option, path) for option, path in (("--json", json_path), ("--junit", junit_path),
                                             ("--markdown", markdown_path))
         if path is not None], _run_inputs(options))
    try:
        return run_checks(options, progress=progress)
    except Exception as exc:
        reason = exc.message if isinstance(exc, HarnessError) else f"{type(exc).__name__}: {exc}"
        with contextlib.suppress(OSError, HarnessError):
            rep.write_unrun(reason, json_path, junit_path, markdown_path)
        raise


def _run_inputs(options: RunOptions) -> list[tuple[str, Path]]:
    """The files and trees a run reads, by option, that no report may replace or
    write into: each QEMU (the default one too: $MDH_QEMU or the one on PATH), the
    kernel, its modules tree, the known-issues list, virtiofsd and the ``--export``
    tree."""
    import shutil

    from .qemu.probe import DEFAULT_QEMU

    inputs: list[tuple[str, Path]] = []
    for qemu in options.qemus or (os.environ.get("MDH_QEMU") or DEFAULT_QEMU,):
        found = shutil.which(qemu)
        if found is not None:
            inputs.append(("--qemu", Path(found)))
    machine = options.machine
    export = options.export.source if options.export is not None else None
    for option, path in (("--kernel", machine.kernel), ("--modules", machine.modules),
                         ("--known-issues", options.known_issues),
                         ("--virtiofsd", machine.virtiofsd), ("--export", export)):
        if path is not None:
            inputs.append((option, path))
    return inputs


def cmd_reproduce(args: argparse.Namespace) -> int:
    from .commands.reproduce import reproduce
    from .results import exit_code

    found = reproduce(Mode(args.mode), _layout(args), _machine(args), cache=Cache(args.cache),
                      logs=args.logs, progress=progress)
    say(found.text())
    code = exit_code([found.row.status])
    _say_why_unjudged([found.row], code)
    return code


def cmd_predict(args: argparse.Namespace) -> int:
    from .commands.predict import predict_json, predict_text, predict_tree
    from .report import check_destinations, is_stdout

    if args.json is not None:
        # A report inside the tree would change the tree it is about.
        check_destinations([("--json", args.json)], [("PATH", args.path)])
    found = predict_tree(args.path, parse_enum_list(args.modes, *MODES_LIST),
                         version=args.qemu_version,
                         qemu=args.qemu, max_paths=args.max_paths,
                         transports=parse_enum_list(args.transport, *TRANSPORTS_LIST),
                         progress=progress)
    if args.json is None or not is_stdout(args.json):
        say(predict_text(found))
    if args.json is not None:
        _write_json(predict_json(found), args.json, "JSON prediction")
    return found.exit_code


IMAGE_COMMANDS = {
    "build": cmd_image_build,
    "list": cmd_image_list,
    "prune": cmd_image_prune,
}
QEMU_COMMANDS = {
    "list": cmd_qemu_list,
    "fetch": cmd_qemu_fetch,
    "pin": cmd_qemu_pin,
}
COMMANDS = {
    "probe": cmd_probe,
    "exec": cmd_exec,
    "run": cmd_run,
    "reproduce": cmd_reproduce,
    "predict": cmd_predict,
    "grid": cmd_grid,
}


class Interrupted(KeyboardInterrupt):
    """A signal (SIGINT or SIGTERM) stopping the command: it unwinds like Ctrl-C, so
    every context manager cleans up, and the exit status is 128 + ``signum``."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signum}")
        self.signum = signum


class _Stopper:
    """The handler of SIGINT and SIGTERM: the first raises Interrupted in the main
    thread; later ones only say that the stop is under way.  A second exception would
    land in the cleanup itself (between cancelling the workers and killing the
    guests), leaving guests to run on while the main thread waits for them."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            # os.write: the print machinery may be mid-write in the main thread, and a
            # buffered write from a handler would raise there ("reentrant call").
            with contextlib.suppress(OSError):
                os.write(2, f"[multidevs-harness] signal {signum} again: already "
                         "stopping\n".encode())
            return
        self.signum = signum
        raise Interrupted(signum)


def _on_signals() -> None:
    stopper = _Stopper()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stopper)


def bisect_code(code: int) -> int:
    """``git bisect run``'s reading of an exit status: 2 (could not run, inconclusive)
    becomes 125, "skip this commit", so an unbuildable or unbootable commit is not
    blamed.  0 and 1 stay; anything above 127 (Ctrl-C) stops the bisection."""
    return 125 if code == EXIT_ERROR else code


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status: 0 everything held, 1 QEMU or the
    guest kernel did the wrong thing, 2 the check could not run or was inconclusive,
    including a fault of the harness itself (125 for that with ``run --bisect``)."""
    try:
        args = build_parser().parse_args(argv)
    except BrokenPipeError:
        # --help or --version into a reader that went away: nothing was asked of QEMU.
        _discard(sys.stdout)
        return EXIT_OK
    except SystemExit as exc:
        # A bad command line under --bisect is no verdict on the commit either: exit 2
        # would make ``git bisect run`` call every commit bad.
        given = sys.argv[1:] if argv is None else list(argv)
        if exc.code == EXIT_ERROR and "--bisect" in given:
            return bisect_code(EXIT_ERROR)
        raise
    args.given = _given_options(sys.argv[1:] if argv is None else list(argv))
    code = _dispatch(args)
    return bisect_code(code) if getattr(args, "bisect", False) else code


def _given_options(argv: Sequence[str]) -> frozenset[str]:
    """The options the command line gave (their dests), told apart from defaults: the
    same parser again with every option's default suppressed, so only what was given
    lands in the namespace (abbreviations such as ``--dev`` included)."""
    parser = build_parser()
    _suppress_defaults(parser)
    return frozenset(vars(parser.parse_args(argv)))


def _suppress_defaults(parser: argparse.ArgumentParser) -> None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _suppress_defaults(sub)
        elif action.option_strings:
            action.default = argparse.SUPPRESS


def _own_devices(kind: Layout) -> int | None:
    """The devices layout ``kind`` has whatever ``--devices`` says, as its shape
    (``plan.layout_shape``) decides; None when ``--devices`` shapes it."""
    few, many = (layout_shape(kind, ExportLayout(devices=n, files_per_device=1)).devices
                 for n in (3, 4))
    return few if few == many else None


def _refuse_unused(args: argparse.Namespace) -> None:
    """Refuse options out of range or unused by the mode of operation chosen, which
    would otherwise be ignored without a word: ``--jobs`` below 0, an empty
    ``--guest``, ``--max-paths`` without ``--export``, the built layouts' shape
    (``--layout``, ``--devices``, ``--files``, ``--nested``) with ``--export``, and
    ``--devices`` when every layout chosen fixes its own devices."""
    given: frozenset[str] = getattr(args, "given", frozenset())
    if "max_paths" in given and args.max_paths < 1:
        raise UsageError(f"--max-paths must be at least 1, got {args.max_paths}",
                         hint="a walk counts the tree's root as its first path")
    if "jobs" in given and args.jobs < 0:
        raise UsageError(f"--jobs must be 0 or more, got {args.jobs}",
                         hint="0 (the default) boots one guest per CPU, at most 4")
    # One value (run, exec, reproduce) or several (grid's repeatable --guest).
    guest = getattr(args, "guest", None)
    guests: list[str] = guest if isinstance(guest, list) else \
        [guest] if isinstance(guest, str) and "guest" in given else []
    if any(not all(name.strip() for name in value.split(",")) for value in guests):
        raise UsageError(f"--guest {','.join(guests)!r} names an empty recipe (an unset "
                         "variable?)",
                         hint="name recipes (see 'image list'), or leave --guest out for "
                         "the default")
    if args.command not in ("run", "reproduce"):
        return
    if args.export is not None:
        shaped = [f"--{name}" for name in ("layout", "devices", "files", "nested")
                  if name in given]
        if shaped:
            several = len(shaped) > 1
            raise UsageError(f"{', '.join(shaped)} shape{'' if several else 's'} the built "
                             f"layouts, and --export {args.export} checks your own tree "
                             f"instead: {'they' if several else 'it'} would be ignored",
                             hint=f"drop {' '.join(shaped)}, or drop --export")
    elif "max_paths" in given:
        raise UsageError("--max-paths limits the walk of --export, and no --export was given",
                         hint="drop --max-paths, or add --export PATH")
    if "devices" in given and args.export is None:
        layouts = (parse_enum_list(args.layout, *LAYOUTS_LIST) if args.command == "run"
                   else (Layout(args.layout),))
        own = {kind: _own_devices(kind) for kind in layouts}
        if None not in own.values():
            fixed = ", ".join(f"{kind.value} has {count}" for kind, count in own.items())
            raise UsageError(f"--devices {args.devices} is ignored by --layout "
                             f"{','.join(k.value for k in layouts)} ({fixed} device(s) of "
                             "its own)", hint="drop --devices, or choose the standard layout")


def _dispatch(args: argparse.Namespace) -> int:
    _on_signals()
    try:
        _refuse_unused(args)
        if args.command == "image":
            return IMAGE_COMMANDS[args.image_command](args)
        if args.command == "qemu":
            return QEMU_COMMANDS[args.qemu_command](args)
        return COMMANDS[args.command](args)
    except HarnessError as exc:
        say(f"error: {exc}", err=True)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        # 128 + the signal, as a shell reports a command a signal ended: 130 for
        # SIGINT (Ctrl-C), 143 for SIGTERM.
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        # The stop is done: a later signal must not end the exit itself.  Python puts
        # its own handlers back to the default at shutdown, and a second SIGINT 50 ms
        # after the first then ended the process by the signal (status -2, not 130);
        # an ignored signal stays ignored through shutdown.
        for each in (signal.SIGINT, signal.SIGTERM):
            signal.signal(each, signal.SIG_IGN)
        say(f"interrupted ({signal.Signals(signum).name}): guests stopped, mounts and "
            "temporary files removed", err=True)
        return 128 + signum
    except Exception as exc:
        # Not an error the harness raised on purpose: a bug of its own, or the host
        # failing under it.  Either way the check could not run: exit 2 (125 under
        # --bisect), never 1, which CI files as a QEMU regression.
        from .logs import harness_fault

        say(f"error: {harness_fault(exc)}", err=True)
        return EXIT_ERROR


if __name__ == "__main__":
    raise SystemExit(main())
