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
from pathlib import Path

from .config import Accel, ExportLayout, ExportSpec, Mode
from .errors import HarnessError, UsageError
from .export import Export, build_export
from .guest import GuestView, collect
from .machine import Machine
from .namespace import enter_private_namespace
from .oracle import Verdict, judge, judge_witness
from .qemu import shell_quote_command
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


@dataclass(frozen=True)
class GuestCase:
    """One guest to boot: a name and the (mode, export layout) pairs it mounts."""

    name: str
    exports: tuple[tuple[Mode, ExportLayout], ...]


def plan_cases(modes: Sequence[Mode], layout: ExportLayout, control: bool) -> list[GuestCase]:
    """One guest per mode; plus one guest holding a single-device export per mode.

    QEMU prints each multi-device message once per process, so modes whose messages
    must be counted never share a QEMU.  The control guest may hold every mode at
    once: it must print no message at all.
    """
    cases = [GuestCase(mode.value, ((mode, layout),)) for mode in modes]
    if control and layout.devices > 1:
        single = ExportLayout(devices=1, files_per_device=min(layout.files_per_device, 64))
        cases.append(GuestCase("control", tuple((mode, single) for mode in modes)))
    return cases


def _tag(index: int) -> str:
    return f"mdh{index}"


def _case_label(case: GuestCase, mode: Mode) -> str:
    return f"control-{mode.value}" if case.name == "control" else mode.value


class _Live:
    """Machines currently running, so Ctrl-C in the main thread can stop them all."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._machines: set[Machine] = set()

    def add(self, machine: Machine) -> None:
        with self._lock:
            self._machines.add(machine)

    def discard(self, machine: Machine) -> None:
        with self._lock:
            self._machines.discard(machine)

    def kill_all(self) -> None:
        with self._lock:
            machines = list(self._machines)
        for machine in machines:
            machine.kill()


def run_case(
    env: Environment,
    case: GuestCase,
    log_dir: Path,
    witness: bool,
    progress: Progress,
    live: _Live | None = None,
) -> list[CaseResult]:
    """Build the case's exports, boot its guest, observe, and judge every export."""
    with ExitStack() as stack:
        exports: list[tuple[Mode, Export, ExportSpec]] = []
        for index, (mode, layout) in enumerate(case.exports):
            export = stack.enter_context(build_export(layout))
            spec = ExportSpec(
                tag=_tag(index), path=export.root, mode=mode,
                mount_point=f"{MOUNT_BASE}/{_tag(index)}",
            )
            exports.append((mode, export, spec))
        machine_spec = env.machine_spec([spec for _, _, spec in exports], log_dir)
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
        views: list[GuestView] = [
            collect(machine, spec.mount_point, export.truth, witness)
            for _, export, spec in exports
        ]
        stderr = machine.stderr_text()
        qemu_command = shell_quote_command(machine.argv)
        boot_seconds = machine.times.ssh
    results = []
    for (mode, export, spec), view in zip(exports, views, strict=True):
        tar = judge_witness(export.truth, view.extracted) if witness else None
        verdict = judge(mode, env.info.version.as_tuple(), export.truth, view.observation,
                        stderr, tar)
        results.append(
            CaseResult(
                case=_case_label(case, mode),
                verdict=verdict,
                boot_seconds=boot_seconds,
                log_dir=log_dir,
                qemu_command=qemu_command,
                guest_command=f"mount -t 9p -o {','.join(_mount_opts(spec))} "
                f"{spec.tag} {spec.mount_point}",
                extra={"tar_rc": view.tar_rc},
            )
        )
    return results


def _mount_opts(spec: ExportSpec) -> list[str]:
    return ["trans=virtio", "version=9p2000.L", f"cache={spec.cache}"]


def _error_results(case: GuestCase, error: HarnessError, log_dir: Path) -> list[CaseResult]:
    from .oracle import error_verdict

    return [
        CaseResult(
            case=_case_label(case, mode),
            verdict=error_verdict(mode, layout.devices, f"{type(error).__name__}: {error.message}"),
            boot_seconds=None,
            log_dir=log_dir,
        )
        for mode, layout in case.exports
    ]


def default_jobs() -> int:
    """Guests booted at once: one per CPU (TCG keeps one core busy per guest)."""
    return max(1, min(4, os.cpu_count() or 1))


def run_matrix(options: RunOptions, progress: Progress = _quiet) -> RunReport:
    """Run every case of ``options`` and return the report (the CLI renders it)."""
    if options.via == "libvirt":
        from .libvirt_run import run_matrix_libvirt

        return run_matrix_libvirt(options, progress)
    if options.via != "qemu":
        raise UsageError(f"unknown --via {options.via}", hint="use qemu or libvirt")
    started = time.monotonic()
    env = prepare(options.qemu, options.accel, options.kernel, progress)
    ns = enter_private_namespace()
    progress(f"mounts live in a private {ns.kind.value} namespace")
    cases = plan_cases(options.modes, options.layout, options.control)
    jobs = options.jobs or default_jobs()
    live = _Live()
    with log_root(options.logs) as (root, failed):
        results: list[CaseResult] = []
        try:
            if jobs <= 1:
                for case in cases:
                    results += _run_one(env, case, root, options.witness, progress, live)
            else:
                results = _run_parallel(env, cases, root, options.witness, progress, live, jobs)
        except BaseException:
            failed[0] = True
            live.kill_all()
            progress(f"logs kept in {root}")
            raise
        report = RunReport(
            qemu_binary=str(env.info.binary),
            qemu_version=str(env.info.version),
            multidevs_supported=env.info.multidevs_supported,
            accel=env.accel,
            guest_kernel=env.image.kernel_release,
            results=tuple(results),
            wall_seconds=time.monotonic() - started,
            log_dir=str(root),
        )
        if not report.passed:
            failed[0] = True
            progress(f"logs kept in {root}")
        kept = failed[0] or options.logs is not None
    return replace(report, logs_kept=kept)


def _run_one(
    env: Environment, case: GuestCase, root: Path, witness: bool, progress: Progress,
    live: _Live,
) -> list[CaseResult]:
    log_dir = root / case.name
    try:
        return run_case(env, case, log_dir, witness, progress, live)
    except HarnessError as exc:
        progress(f"{case.name}: {exc.message}")
        return _error_results(case, exc, log_dir)


def _run_parallel(
    env: Environment, cases: Sequence[GuestCase], root: Path, witness: bool,
    progress: Progress, live: _Live, jobs: int,
) -> list[CaseResult]:
    # Each worker thread owns its machine from launch to shutdown: QEMU's
    # parent-death signal follows the thread that forked it.
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="guest") as pool:
        futures: list[Future[list[CaseResult]]] = [
            pool.submit(_run_one, env, case, root, witness, progress, live) for case in cases
        ]
        try:
            results: list[CaseResult] = []
            for future in futures:
                results += future.result()
            return results
        except BaseException:
            for future in futures:
                future.cancel()
            live.kill_all()
            raise


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
    case = GuestCase(mode.value, ((mode, layout),))
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
        print("\nto reproduce by hand (export populated as in the logs):")
        print(f"  host:  {result.qemu_command}")
        print(f"  guest: {result.guest_command}")
        print(f"\nlogs: {root}")
        return 0 if v.passed else 1
