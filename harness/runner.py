"""The main job: one guest per multidevs mode plus a single-device control guest.

config -> export + image -> machine -> guest observations -> oracle verdict -> report.
Every resource is entered on an ExitStack, so mounts, guests and temporary
directories unwind in reverse order on success, failure, timeout and Ctrl-C.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Protocol

from . import byhand
from .byhand import EXPORT_VAR
from .config import Accel, ExportLayout, ExportSpec, Mode
from .errors import HarnessError, UsageError
from .export import Export, build_export
from .guest import AGENT_THREADS, STAT_PASSES, GuestView, collect
from .machine import Machine
from .namespace import enter_private_namespace, in_user_namespace
from .oracle import Verdict, error_verdict, judge, judge_witness
from .qemu import mount_options, shell_quote_command
from .report import CaseResult, RunReport, collision_table
from .session import Environment, log_root, prepare

Progress = Callable[[str], None]
MOUNT_BASE = "/mnt"


def _quiet(_: str) -> None:
    pass


@dataclass(frozen=True)
class RunOptions:
    """What ``multidevs-harness run`` was asked to do."""

    modes: tuple[Mode, ...]
    layout: ExportLayout
    qemu: str | None = None
    accel: Accel = Accel.AUTO
    kernel: Path | None = None
    logs: Path | None = None
    control: bool = True
    witness: bool = True
    jobs: int = 0
    via: str = "qemu"
    share: bool = True
    # 1 pass + readdir is the scale run's budget; the matrix looks twice with lstat.
    passes: int = STAT_PASSES
    # A second vCPU and agent threads only pay off for very large exports.
    guest_cpus: int = 1
    agent_threads: int = AGENT_THREADS


@dataclass(frozen=True)
class CaseExport:
    """One export of a guest: the result row it feeds, its mode and its shape."""

    label: str
    mode: Mode
    layout: ExportLayout


@dataclass(frozen=True)
class GuestCase:
    """One guest to boot: a name and its exports, in the order they are observed."""

    name: str
    exports: tuple[CaseExport, ...]


# Observation order inside a shared guest.  remap goes first so that a remap that
# wrongly prints a multi-device message is caught in remap's own stderr slice.
_SHARED_ORDER = (Mode.REMAP, Mode.FORBID, Mode.WARN)


def plan_cases(
    modes: Sequence[Mode], layout: ExportLayout, control: bool, share: bool = True
) -> list[GuestCase]:
    """Group the requested modes and the control into guests.

    QEMU prints each multi-device message at most once per process, and warn and
    the default (before QEMU 10) share one message, so they never share a guest.
    Inside a guest, exports are observed one after another and each is judged only
    on the stderr QEMU wrote while it was observed, so one mode's message cannot be
    taken for another's.  With ``share=False`` every mode gets a guest of its own.
    The control guest holds a single-device export per mode (it must stay silent)
    and, when sharing, the default mode's export last.
    """
    single = ExportLayout(devices=1, files_per_device=min(layout.files_per_device, 64))
    with_control = control and layout.devices > 1
    if not share:
        isolated = [GuestCase(m.value, (CaseExport(m.value, m, layout),)) for m in modes]
        if with_control:
            isolated.append(GuestCase("control", tuple(
                CaseExport(f"control-{m.value}", m, single) for m in modes)))
        return isolated
    shared = [m for m in _SHARED_ORDER if m in modes]
    cases: list[GuestCase] = []
    if shared:
        name = "+".join(m.value for m in shared)
        cases.append(GuestCase(name, tuple(CaseExport(m.value, m, layout) for m in shared)))
    default = Mode.DEFAULT in modes
    if with_control:
        exports = [CaseExport(f"control-{m.value}", m, single) for m in modes]
        if default:
            exports.append(CaseExport(Mode.DEFAULT.value, Mode.DEFAULT, layout))
        cases.append(GuestCase("control+default" if default else "control", tuple(exports)))
    elif default:
        cases.append(GuestCase(Mode.DEFAULT.value,
                               (CaseExport(Mode.DEFAULT.value, Mode.DEFAULT, layout),)))
    return cases


def _tag(index: int) -> str:
    return f"mdh{index}"


def order_results(results: Sequence[CaseResult], modes: Sequence[Mode]) -> list[CaseResult]:
    """Mode rows in the order asked for, then the control rows, then anything else."""
    rank = {m.value: i for i, m in enumerate(modes)}
    rank.update({f"control-{m.value}": len(modes) + i for i, m in enumerate(modes)})
    return sorted(results, key=lambda r: rank.get(r.case, 2 * len(modes) + 1))


class Killable(Protocol):
    """A running guest that can be stopped at once from another thread."""

    def kill(self) -> None: ...


class LiveGuests:
    """Guests currently running, so Ctrl-C in the main thread can stop them all."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._guests: set[Killable] = set()
        self._stopping = False

    def add(self, guest: Killable) -> None:
        """Track ``guest``; after ``kill_all`` it is killed at once instead.

        A worker may be starting its guest when Ctrl-C comes: that guest must not
        then run a whole case while the main thread waits for the worker to finish.
        """
        with self._lock:
            self._guests.add(guest)
            stopping = self._stopping
        if stopping:
            guest.kill()

    def discard(self, guest: Killable) -> None:
        with self._lock:
            self._guests.discard(guest)

    def kill_all(self) -> None:
        with self._lock:
            self._stopping = True
            guests = list(self._guests)
        for guest in guests:
            guest.kill()


def enter_exports(
    stack: ExitStack, case: GuestCase
) -> list[tuple[CaseExport, Export, ExportSpec]]:
    """Build every export of ``case`` on ``stack``, shared as mdhN at /mnt/mdhN."""
    exports = []
    for index, item in enumerate(case.exports):
        export = stack.enter_context(build_export(item.layout))
        spec = ExportSpec(
            tag=_tag(index), path=export.root, mode=item.mode,
            mount_point=f"{MOUNT_BASE}/{_tag(index)}",
        )
        exports.append((item, export, spec))
    return exports


def run_case(
    env: Environment,
    case: GuestCase,
    log_dir: Path,
    witness: bool,
    progress: Progress,
    live: LiveGuests | None = None,
    passes: int = STAT_PASSES,
    cpus: int = 1,
    threads: int = AGENT_THREADS,
) -> list[CaseResult]:
    """Build the case's exports, boot its guest, observe and judge each export in turn."""
    with ExitStack() as stack:
        exports = enter_exports(stack, case)
        machine_spec = env.machine_spec([spec for _, _, spec in exports], log_dir, cpus=cpus)
        machine = stack.enter_context(
            Machine(machine_spec, sandbox_supported=env.info.sandbox_supported,
                    progress=progress, name=case.name)
        )
        if live is not None:
            live.add(machine)
            stack.callback(live.discard, machine)
        progress(f"{case.name}: booting guest ({env.accel.used.value})")
        machine.wait_ready()
        progress(f"{case.name}: SSH up after {machine.times.ssh:.2f} s; observing")
        observed: list[tuple[GuestView, str]] = []
        for _, export, spec in exports:
            # Each export is judged on what QEMU printed while it alone was observed.
            before = len(machine.stderr_text())
            view = collect(machine, spec.mount_point, export.truth, witness, passes, threads)
            observed.append((view, machine.stderr_text()[before:]))
        qemu_command = shell_quote_command(machine.argv)
        boot_seconds = machine.times.ssh
    results = []
    for (item, export, spec), (view, stderr) in zip(exports, observed, strict=True):
        tar = judge_witness(export.truth, view.extracted) if witness else None
        verdict = judge(item.mode, env.info.version.as_tuple(), export.truth, view.observation,
                        stderr, tar)
        results.append(
            CaseResult(
                case=item.label,
                verdict=verdict,
                boot_seconds=boot_seconds,
                log_dir=log_dir,
                qemu_command=qemu_command,
                guest_command=f"mount -t 9p -o {mount_options(spec)} "
                f"{spec.tag} {spec.mount_point}",
                extra={"tar_rc": view.tar_rc, "guest": case.name},
            )
        )
    return results


def error_results(
    case: GuestCase, error: HarnessError, log_dir: Path, via: str = "qemu"
) -> list[CaseResult]:
    """One failed row per export of a guest that could not be observed."""
    return [
        CaseResult(
            case=item.label,
            verdict=error_verdict(item.mode, item.layout.devices,
                                  f"{type(error).__name__}: {error.message}"),
            boot_seconds=None,
            log_dir=log_dir,
            via=via,
        )
        for item in case.exports
    ]


def run_cases(
    cases: Sequence[GuestCase],
    run_one: Callable[[GuestCase], list[CaseResult]],
    jobs: int,
    live: LiveGuests,
) -> list[CaseResult]:
    """Run ``run_one`` for every case, ``jobs`` at a time; on any exception (Ctrl-C
    included) stop every live guest so blocked workers unwind, then re-raise.

    Each worker thread owns its guest from launch to shutdown: QEMU's parent-death
    signal follows the thread that forked it.
    """
    results: list[CaseResult] = []
    if jobs <= 1:
        try:
            for case in cases:
                results += run_one(case)
            return results
        except BaseException:
            live.kill_all()
            raise
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="guest") as pool:
        futures: list[Future[list[CaseResult]]] = [pool.submit(run_one, c) for c in cases]
        try:
            for future in futures:
                results += future.result()
            return results
        except BaseException:
            for future in futures:
                future.cancel()
            live.kill_all()
            raise


def default_jobs() -> int:
    """Guests booted at once: one per CPU (TCG keeps one core busy per guest)."""
    return max(1, min(4, len(os.sched_getaffinity(0))))


def run_matrix(
    options: RunOptions, progress: Progress = _quiet, env: Environment | None = None
) -> RunReport:
    """Run every case of ``options`` and return the report (the CLI renders it).

    ``env`` reuses an already prepared environment (the benchmark times the matrix
    alone that way); by default the image, QEMU and accelerator are prepared here.
    """
    if options.via == "libvirt":
        from .libvirt_run import run_matrix_libvirt

        return run_matrix_libvirt(options, progress)
    if options.via != "qemu":
        raise UsageError(f"unknown --via {options.via}", hint="use qemu or libvirt")
    started = time.monotonic()
    if env is None:
        env = prepare(options.qemu, options.accel, options.kernel, progress)
    ns = enter_private_namespace()
    progress(f"mounts live in a private {ns.kind.value} namespace")
    cases = plan_cases(options.modes, options.layout, options.control, options.share)
    jobs = options.jobs or default_jobs()
    live = LiveGuests()
    with log_root(options.logs) as (root, failed):
        try:
            results = run_cases(
                cases, partial(_run_one, env, root, options, progress, live), jobs, live
            )
        except BaseException:
            failed[0] = True
            progress(f"logs kept in {root}")
            raise
        return build_report(env, results, options, started, root, failed, progress)


def build_report(
    env: Environment,
    results: Sequence[CaseResult],
    options: RunOptions,
    started: float,
    root: Path,
    failed: list[bool],
    progress: Progress,
) -> RunReport:
    """The run's report; marks the logs to be kept (and says where) if anything failed."""
    report = RunReport(
        qemu_binary=str(env.info.binary),
        qemu_version=str(env.info.version),
        multidevs_supported=env.info.multidevs_supported,
        accel=env.accel,
        guest_kernel=env.image.kernel_release,
        results=tuple(order_results(results, options.modes)),
        wall_seconds=time.monotonic() - started,
        log_dir=str(root),
    )
    if not report.passed:
        failed[0] = True
        progress(f"logs kept in {root}")
    return replace(report, logs_kept=failed[0] or options.logs is not None)


def _run_one(
    env: Environment, root: Path, options: RunOptions, progress: Progress, live: LiveGuests,
    case: GuestCase,
) -> list[CaseResult]:
    log_dir = root / case.name
    try:
        return run_case(env, case, log_dir, options.witness, progress, live, options.passes,
                        options.guest_cpus, options.agent_threads)
    except HarnessError as exc:
        progress(f"{case.name}: {exc.message}")
        return error_results(case, exc, log_dir)


def reproduce(
    mode: Mode,
    layout: ExportLayout,
    *,
    qemu: str | None = None,
    accel: Accel = Accel.AUTO,
    kernel: Path | None = None,
    logs: Path | None = None,
    progress: Progress = _quiet,
) -> int:
    """Boot one guest in ``mode`` and print the evidence a bug report needs."""
    env = prepare(qemu, accel, kernel, progress)
    enter_private_namespace()
    case = GuestCase(mode.value, (CaseExport(mode.value, mode, layout),))
    with log_root(logs, "reproduce") as (root, failed):
        failed[0] = True  # the point of reproduce is the evidence: keep it
        results = run_case(env, case, root / case.name, True, progress)
        result = results[0]
        v: Verdict = result.verdict
        print(f"mode {mode.value}: {v.observed}")
        print(f"expected: {v.expectation} -> {'PASS' if v.passed else 'FAIL'}")
        for failure in v.failures:
            print(f"  - {failure}")
        print("\ncollisions (guest id <- host files):")
        print(collision_table(results))
        witness = "n/a" if v.witness_intact is None else ("intact" if v.witness_intact
                                                         else "BROKEN")
        print(f"\ntar witness (tar -cf in the guest, extract, compare): {witness}")
        print(f"QEMU message: {v.qemu_message or '(none)'}")
        spec = ExportSpec(tag=_tag(0), path=Path(EXPORT_VAR), mode=mode,
                          mount_point=f"{MOUNT_BASE}/{_tag(0)}")
        by_hand = root / "reproduce.sh"
        by_hand.write_text(byhand.script(env.machine_spec([spec], root), spec, layout,
                                         root=os.geteuid() == 0 and not in_user_namespace()))
        by_hand.chmod(0o755)
        print("\nto reproduce by hand:")
        print(f"  host:  sh {by_hand}    (builds the export, then runs QEMU on this terminal)")
        print(f"  guest: {byhand.guest_hint(env.machine_spec([spec], root), spec)}")
        print(f"  the harness ran: {result.qemu_command}")
        print(f"\nlogs: {root}")
        return 0 if v.passed else 1
