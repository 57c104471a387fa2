"""``run``, the main job: its options, read once into ``RunOptions`` and the report
paths, and its handler: the table, the summary and the reports (the work is
``harness.run``)."""

from __future__ import annotations

import argparse
import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import Accel, Layout, Transport, Via
from ..errors import EXIT_FAIL, HarnessError, UsageError
from ..machine_options import MachineOptions
from ..plan import RunOptions
from .options import (
    CACHES,
    CHECKS,
    LAYOUTS,
    MODES,
    TRANSPORTS,
    Entry,
    Given,
    Subparsers,
    add_export,
    add_json,
    add_machine,
    add_markdown,
    add_shape,
    command,
    listed,
    path_value,
    read_shape,
    refuse_empty_guest,
    report_path,
    whole_number,
)
from .output import progress, say, say_why_unjudged, shown

if TYPE_CHECKING:
    from ..results import RunResults


@dataclass(frozen=True)
class RunArgs:
    """What run was asked: the run itself, and where its reports go."""

    options: RunOptions
    json: Path | None = None
    junit: Path | None = None
    markdown: Path | None = None
    wide: bool = False


def _read(namespace: argparse.Namespace, given: Given) -> RunArgs:
    if "jobs" in given and namespace.jobs < 0:
        raise UsageError(f"--jobs must be 0 or more, got {namespace.jobs}",
                         hint="0 (the default) boots one guest per CPU, at most 4")
    refuse_empty_guest(namespace.guest, given)
    shape = read_shape(namespace, given, lambda: LAYOUTS.read(namespace), namespace.nested)
    transports = TRANSPORTS.read(namespace)
    options = RunOptions(
        modes=MODES.read(namespace),
        caches=CACHES.read(namespace),
        layout=shape.base,
        # --export replaces the built layouts: the run is about the user's tree.
        layouts=(Layout.EXPORT,) if shape.export else shape.layouts,
        export=shape.export,
        machine=MachineOptions(accel=Accel(namespace.accel), kernel=namespace.kernel,
                               modules=namespace.modules, cold=namespace.cold,
                               qemu_datadirs=tuple(namespace.qemu_datadir),
                               virtiofs=Transport.VIRTIOFS in transports,
                               virtiofsd=namespace.virtiofsd),
        transports=transports,
        qemus=listed(namespace.qemu),
        guests=listed(namespace.guest),
        logs=namespace.logs,
        control=not namespace.no_control,
        witness=not namespace.no_witness,
        jobs=namespace.jobs,
        via=Via(namespace.via),
        share=not namespace.isolate,
        checks=CHECKS.read(namespace),
        known_issues=namespace.known_issues,
        strict_known=namespace.strict_known,
    )
    return RunArgs(options, namespace.json, namespace.junit, namespace.markdown,
                   namespace.wide)


def _run(args: RunArgs) -> int:
    from .. import report as rep

    result = checked_run(args)
    say(rep.table(result, wide=args.wide))
    if args.options.export is not None:
        say()
        say(rep.export_collisions(result))
    say()
    say(rep.summary_line(result))
    say_why_unjudged(result.rows, result.exit_code)
    return write_reports(result, args)


def write_reports(result: RunResults, args: RunArgs) -> int:
    """Write the reports asked for and return the exit status.  A report that cannot
    be written (a full disk, ``/dev/full``) is an ``error:`` line and exit 2, the other
    report still written; but a finding (exit 1) outranks it, as a fail row outranks
    error rows: the table above has already shown it."""
    from .. import report as rep

    def write_json(path: Path) -> None:
        rep.write_json(rep.to_json(result), path)

    def write_junit(path: Path) -> None:
        rep.write_junit(result, path)

    def write_markdown(path: Path) -> None:
        rep.write_text(rep.markdown(result), path)

    writers = ((args.json, "JSON", write_json), (args.junit, "JUnit", write_junit),
               (args.markdown, "Markdown", write_markdown))
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
        progress(f"{kind} report: {shown(path)}")
    return code


def checked_run(args: RunArgs) -> RunResults:
    """``run_checks`` with its report paths checked before anything boots; a run that
    ends without rows (bad input, a harness fault) still writes reports saying why."""
    from .. import report as rep
    from ..run import run_checks

    rep.check_destinations(
        [(option, path) for option, path in (("--json", args.json), ("--junit", args.junit),
                                             ("--markdown", args.markdown))
         if path is not None], _inputs(args.options))
    try:
        return run_checks(args.options, progress=progress)
    except Exception as exc:
        reason = exc.message if isinstance(exc, HarnessError) else f"{type(exc).__name__}: {exc}"
        with contextlib.suppress(OSError, HarnessError):
            rep.write_unrun(reason, args.json, args.junit, args.markdown)
        raise


def _inputs(options: RunOptions) -> list[tuple[str, Path]]:
    """The files and trees a run reads, by option, that no report may replace or
    write into: each QEMU (the default one too: $MDH_QEMU or the one on PATH), the
    kernel, its modules tree, the known-issues list, virtiofsd and the ``--export``
    tree."""
    import shutil

    from ..qemu.probe import DEFAULT_QEMU

    inputs: list[tuple[str, Path]] = []
    for qemu in options.qemus or (os.environ.get("MDH_QEMU") or DEFAULT_QEMU,):
        found = shutil.which(qemu)
        if found is not None:
            inputs.append(("--qemu", Path(found)))
    machine = options.machine
    export = options.export.source if options.export is not None else None
    for option, file in (("--kernel", machine.kernel), ("--modules", machine.modules),
                         ("--known-issues", options.known_issues),
                         ("--virtiofsd", machine.virtiofsd), ("--export", export)):
        if file is not None:
            inputs.append((option, file))
    return inputs


def register(sub: Subparsers) -> None:
    run = command(sub, "run", Entry(_read, _run),
                  help="check every multidevs mode (the main job)")
    add_machine(run, several=True)
    MODES.add(run)
    CACHES.add(run)
    CHECKS.add(run)
    TRANSPORTS.add(run)
    run.add_argument("--virtiofsd", type=path_value, metavar="PATH",
                     help="the virtiofsd (1.x) for virtiofs rows; default: the host's, else "
                     "Debian trixie's, fetched once into the image cache")
    add_shape(run)
    run.add_argument("--nested", action="store_true", help="add a tmpfs nested in another")
    LAYOUTS.add(run)
    run.add_argument("--known-issues", type=path_value, metavar="FILE",
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
    run.add_argument("--jobs", type=whole_number, default=0,
                     help="guests booted at once (default: by CPU count)")
    add_json(run)
    run.add_argument("--junit", type=report_path, metavar="FILE",
                     help="write JUnit XML to FILE (as --json)")
    add_markdown(run)
    run.add_argument("--wide", action="store_true",
                     help="print the full table, each row's expectation in it, as wide as "
                     "it needs (default: fitted to 100 columns, expectations in a legend)")
    run.add_argument("--via", choices=[v.value for v in Via], default=Via.QEMU.value,
                     help="start guests with QEMU directly or through libvirtd")
    add_export(run)
    run.add_argument("--bisect", action="store_true",
                     help="exit codes for 'git bisect run': pass 0, fail 1, error or "
                     "inconclusive 125 (skip the commit)")
