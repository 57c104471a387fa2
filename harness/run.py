"""The main job: plan the guests, run them through a backend, collect one report.

config -> plan -> export + image -> guest (QEMU or libvirt) -> observations ->
verdicts -> report.  This module only wires those together; each step lives in the
module its name says.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import replace
from functools import partial
from importlib import resources
from pathlib import Path

from .checks.registry import RULES
from .config import KNOWN_ISSUES_FILE, Transport, Via
from .direct.backend import qemu_backend
from .environment import Environment, prepare
from .inputs import read_input
from .libvirt import backend as libvirt_run
from .logs import log_root
from .plan import (
    RunOptions,
    default_jobs,
    plan_run,
    refuse_empty_selection,
    row_rank,
)
from .pool import (
    Backend,
    OwnOptionNotices,
    RunContext,
    run_guest,
)
from .progress import Progress, quiet
from .results import ResultRow, RunResults
from .row_rules import judge_power
from .verdicts.common import Status
from .verdicts.known import KnownIssue, parse_known_issues
from .workers import LiveGuests, run_guests

# How each --via starts guests: the one place a Via is matched to a backend.
BACKENDS: dict[Via, Callable[[Environment, RunOptions, Progress, Path],
                             AbstractContextManager[Backend]]] = {
    Via.QEMU: qemu_backend,
    Via.LIBVIRT: libvirt_run.libvirt_backend,
}
# Every Via has its backend: one without would be accepted by --via and fail later.
assert set(BACKENDS) == set(Via), "run: a Via without a backend"


def load_known_issues(path: Path | None) -> tuple[KnownIssue, ...]:
    """The known-issues list: ``path`` (``--known-issues``; an empty file knows
    nothing), else the one shipped with the harness."""
    if path is None:
        text = resources.files("harness").joinpath(KNOWN_ISSUES_FILE).read_text()
        return parse_known_issues(text, f"harness/{KNOWN_ISSUES_FILE}")
    data = read_input(path, "--known-issues",
                      "pass a readable TOML file (an empty one: nothing is known)")
    return parse_known_issues(data.decode(errors="replace"), str(path))


def _run_environment(
    env: Environment, options: RunOptions, progress: Progress, log_dir: Path,
    known: tuple[KnownIssue, ...], notices: OwnOptionNotices,
) -> list[ResultRow]:
    """The whole matrix on one QEMU: plan, run every guest, then the backend's checks."""
    with BACKENDS[options.via](env, options, progress, log_dir) as backend:
        if options.share and not backend.live_stderr:
            progress(f"--via {backend.via.value} boots one guest per mode (as with --isolate)")
        plan = plan_run(options, RULES, backend.live_stderr, env.info.version)
        if plan.skipped:
            progress(f"{','.join(plan.skipped)} skipped: {backend.via.value} starts QEMU in "
                     "a mount namespace of its own, which host mounts made later never reach")
        if plan.writing_skipped:
            progress(f"{','.join(plan.writing_skipped)} skipped: they create, rename, mount "
                     "or bind in the export, and --export is never written (ids runs)")
        run = RunContext(env, backend, log_dir, progress, LiveGuests(), known, notices)
        rows = run_guests(plan.guests, partial(run_guest, run), options.jobs or default_jobs(),
                          run.live)
        # A rule over several rows (the probe's power) needs all of this QEMU's rows.
        return judge_power(rows, env.info.version) + backend.extra_rows(log_dir)


def _virtiofs_scope(options: RunOptions, progress: Progress) -> None:
    """Say what the virtiofs rows cover; refuse what they cannot do yet."""
    if Transport.VIRTIOFS not in options.transports:
        return
    if options.via is Via.LIBVIRT:
        progress("virtiofs rows under libvirt: submounts announced only (libvirt starts "
                 "virtiofsd itself and cannot turn them off)")
    ninep_only = {f.name for f in RULES if not f.virtiofs}
    others = [c.value for c in options.checks if c in ninep_only]
    if others:
        progress(f"virtiofs rows: no {','.join(others)} (a host mount made after "
                 "virtiofsd started never reaches its sandbox, and remount and held_fd ask "
                 "9p's questions; docs/virtiofs.md)")


def run_checks(
    options: RunOptions, progress: Progress = quiet, env: Environment | None = None
) -> RunResults:
    """Run every planned guest of ``options`` on each QEMU and guest recipe; one report.

    ``env`` reuses an already prepared environment (the benchmark times the matrix
    alone that way); by default every (QEMU, recipe) pair is prepared here, all before
    the first guest boots, so a bad second ``--qemu`` or ``--guest`` fails at once.
    Pairs run one after another; inside each, guests boot ``jobs`` at a time.
    """
    started = time.monotonic()
    refuse_empty_selection(options, RULES)
    known = load_known_issues(options.known_issues)
    _virtiofs_scope(options, progress)
    if options.via is Via.LIBVIRT:
        libvirt_run.preflight()
    envs = [env] if env is not None else [
        prepare(replace(options.machine, qemu=qemu, guest=guest), progress)
        for qemu in (options.qemus or (None,)) for guest in (options.guests or (None,))
    ]
    notices = OwnOptionNotices()
    with log_root(options.logs, progress=progress) as logs:
        rank = row_rank(RULES, options.modes, options.caches, options.layouts)
        rows: list[ResultRow] = []
        for index, each in enumerate(envs):
            # One log folder per QEMU and guest when there are several: plan names recur.
            log_dir = logs.path / f"{index}-{each.image.recipe}-qemu-{each.info.version}" \
                if len(envs) > 1 else logs.path
            found = _run_environment(each, options, progress, log_dir, known, notices)
            rows += sorted(found, key=lambda r: rank.get(r.case, len(rank)))
        # Logs are kept when the run is news; a known bug reproduced is not (its
        # reproducer says how to look at it again).
        if any(row.status not in (Status.PASS, Status.KNOWN) for row in rows):
            logs.keep()
        return RunResults(
            environment=envs[0].record,
            rows=tuple(rows),
            wall_seconds=time.monotonic() - started,
            log_dir=str(logs.path),
            logs_kept=logs.kept,
            environments=tuple(e.record for e in envs),
            strict_known=options.strict_known,
            own_option_notices=notices.lines,
        )
