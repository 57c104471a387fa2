"""One guest from exports to result rows, whichever backend starts it; the worker
threads that run a run's guests, and Ctrl-C, are ``workers``'s.

The steps of one guest are the same whoever starts it: build its exports, start it
(a ``Backend`` does that: QEMU directly or libvirtd), wait for SSH, observe each
export in turn, shut down, then judge every export with its family's verdicts.  Everything sits
on an ExitStack, so mounts, guests and temporary directories unwind in reverse order
on success, failure, timeout and Ctrl-C.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Protocol, runtime_checkable

from .agent.mounts import MountedCache, mounted_cache, proc_mounts_options
from .checks.family import Judging
from .checks.live import binds_before_start, prebind
from .checks.registry import FAMILIES
from .config import Layout, Transport, Via
from .environment import Environment
from .errors import (
    ExportError,
    GuestCrashed,
    HarnessError,
    KernelModuleMissing,
    LayoutUnavailable,
    QemuExitedEarly,
    QemuFailed,
)
from .guest.lifecycle import Guest, check_alive, qemu_end
from .guest.uname import ReportedKernel, reported_kernel
from .host.export import build_export
from .host.truth import Export
from .logs import harness_fault
from .plan import ExportPlan, GuestPlan
from .progress import Progress, said_once
from .qemu.cmdline import guest_mount_command, shell_quote_command
from .qemu.spec import ExportSpec
from .results import GuestRecord, ResultRow
from .row_rules import known_issues_of, row_cache
from .verdicts.cache import cache_premise, with_premise
from .verdicts.common import Status, Verdict
from .verdicts.ids import unobserved
from .verdicts.known import KnownIssue
from .verdicts.qemu_end import end_failures, stderr_trouble, with_findings
from .verdicts.qemu_stderr import own_option_notices
from .workers import LiveGuests

MOUNT_BASE = "/mnt"
_CRASH_GRACE_S = 1.0


class Backend(Protocol):
    """How a run's guests are started: QEMU run directly, or a private libvirtd."""

    via: Via
    # True when QEMU's stderr can be read as it is written, so one guest may serve
    # several exports, each judged on its own slice of it.
    live_stderr: bool

    def start(
        self, plan: GuestPlan, exports: Sequence[ExportSpec], log_dir: Path
    ) -> AbstractContextManager[Guest]:
        """A guest serving ``exports``; entering it starts QEMU, leaving it stops QEMU."""
        ...

    def command_failures(
        self, guest: Guest, exports: Sequence[ExportSpec]
    ) -> Mapping[Path, Sequence[str]]:
        """Per export path, what is wrong with the QEMU command line (libvirt's rule)."""
        ...

    def facts(self, guest: Guest) -> tuple[tuple[str, str], ...]:
        """Backend facts for each row of ``guest`` (libvirt: its version, the domain)."""
        ...

    def extra_rows(self, log_root: Path) -> list[ResultRow]:
        """Checks of the backend itself, run after the guests (libvirt's refusals)."""
        ...


class OwnOptionNotices:
    """QEMU's located warnings about options the harness passed that are not under
    test (``qemu_stderr.own_option_notices``), collected over a run's guests: each is
    said once on the terminal and kept for the report, and none fails a row.  They are
    the harness's to fix (QEMU 11.1 deprecating the ``-mon`` the harness passed was
    one), never a regression of QEMU's."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lines: dict[str, None] = {}

    def add(self, stderr: str, progress: Progress) -> None:
        """Say each new notice in ``stderr`` once."""
        for line in own_option_notices(stderr):
            with self._lock:
                new = line not in self._lines
                self._lines[line] = None
            if new:
                progress(f"QEMU warns about an option the harness passed, not one under "
                         f"test (the harness's to fix, not a finding): {line}")

    @property
    def lines(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(self._lines)


@runtime_checkable
class OwnStderr(Protocol):
    """A guest that knows which stretches of QEMU's stderr a failed action of the
    harness's own wrote (``qemu.machine.Machine``'s failed state save)."""

    @property
    def own_stderr(self) -> Sequence[slice]:
        ...


@dataclass(frozen=True)
class RunContext:
    """What every guest of one run shares: the prepared environment, the backend that
    starts guests, where logs go, progress, and the live guests (for Ctrl-C)."""

    env: Environment
    backend: Backend
    log_root: Path
    progress: Progress
    live: LiveGuests
    # Known QEMU and kernel bugs a failing row may match (``verdicts.known``).
    known_issues: tuple[KnownIssue, ...] = ()
    # QEMU's warnings about the harness's own options, said once per run.
    notices: OwnOptionNotices = field(default_factory=OwnOptionNotices)


@dataclass(frozen=True)
class Observed:
    """One export of a guest and what the guest saw of it."""

    plan: ExportPlan
    export: Export
    spec: ExportSpec
    # The family's judge with its own record of this export bound (typed per family).
    judge: Callable[[Judging], Verdict]
    stderr: slice  # the part of QEMU's stderr written while it alone was observed
    seconds: float = 0.0  # how long its observation took


def _build_exports(
    run: RunContext, stack: ExitStack, plan: GuestPlan
) -> tuple[list[tuple[ExportPlan, Export, ExportSpec]], list[tuple[ExportPlan, ExportError]]]:
    """Build every export of ``plan`` on ``stack``, shared as mdhN at /mnt/mdhN.

    An export whose layout cannot be built here (a missing mkfs or kernel filesystem)
    becomes that export's error row; the guest serves the others, so one missing
    tool does not take every row of a shared guest with it.  Built exports of one
    layout are alike, so one failure skips that layout's later exports too.
    """
    built: list[tuple[ExportPlan, Export, ExportSpec]] = []
    failed: list[tuple[ExportPlan, ExportError]] = []
    broken: dict[Layout, ExportError] = {}
    progress = said_once(run.progress)
    for item in plan.exports:
        kind = item.layout.kind
        if kind in broken:
            if not isinstance(broken[kind], LayoutUnavailable):
                failed.append((item, broken[kind]))
            continue
        try:
            export = stack.enter_context(build_export(item.layout, progress=progress))
            if binds_before_start(item):
                stack.enter_context(prebind(export))
        except LayoutUnavailable as exc:
            # Not a failure of anything: this harness cannot build it (rootless).
            if kind not in broken:
                run.progress(f"{plan.name}: {exc.message}")
            broken[kind] = exc
            continue
        except ExportError as exc:
            run.progress(f"{plan.name}: {kind.value} layout not built: {exc.message}")
            broken[kind] = exc
            failed.append((item, exc))
            continue
        index = len(built)
        # The user's tree is exported readonly=on (and mounted ro): never written.
        spec = ExportSpec(tag=f"mdh{index}", path=export.root, mode=item.mode,
                          mount_point=f"{MOUNT_BASE}/mdh{index}", cache=item.cache,
                          readonly=kind is Layout.EXPORT, transport=item.transport,
                          submounts=item.submounts)
        built.append((item, export, spec))
    return built, failed


def _observe(
    run: RunContext, guest: Guest, exports: Sequence[tuple[ExportPlan, Export, ExportSpec]]
) -> tuple[list[Observed], str]:
    """Observe each export in turn (its check family decides how), noting which stderr
    QEMU wrote meanwhile; then the guest's /proc/mounts, which says what cache mode
    each export really got (read once, last: the remount family remounts).

    A guest that dies here crashed under test (GuestCrashed: a failure, not an error),
    however the harness noticed.
    """
    observed = []
    try:
        for item, export, spec in exports:
            run.live.going()
            before, started = len(guest.stderr_text()), time.monotonic()
            family = FAMILIES[item.check]
            seen = family.observe(guest, spec, export, item)
            observed.append(Observed(item, export, spec, partial(family.judge, seen=seen),
                                     slice(before, len(guest.stderr_text())),
                                     time.monotonic() - started))
        mounts = guest.run("cat /proc/mounts")
    except Exception as exc:
        # Whatever broke the observation (an SSH error, a garbled answer, a fault of
        # the harness), a guest that died under test is the finding: QEMU's own exit
        # or the panic says so, not the exception.
        crash = _crash(guest)
        if crash is not None:
            after = exc.message if isinstance(exc, HarnessError) else \
                f"{type(exc).__name__}: {exc}"
            raise GuestCrashed(f"{crash.message} while observing (after: {after})",
                               hint=crash.hint, details=crash.details) from exc
        raise
    return observed, mounts.stdout.decode(errors="replace") if mounts.rc == 0 else ""


def _mounted(proc_mounts: str, spec: ExportSpec) -> MountedCache | None:
    """The cache mode ``spec``'s 9p mount shows in ``proc_mounts`` (None: not there)."""
    found = proc_mounts_options(proc_mounts).get(spec.mount_point)
    return mounted_cache(found[1]) if found is not None and found[0] == "9p" else None


def _crash(guest: Guest, grace: float = _CRASH_GRACE_S) -> QemuFailed | None:
    """Why the guest died, if it did.  The SSH session can break a moment before
    QEMU's exit can be seen, so a guest that looks alive is asked again briefly."""
    until = time.monotonic() + grace
    while True:
        try:
            check_alive(guest, up=True)
        except QemuFailed as crash:
            return crash
        if time.monotonic() > until:
            return None
        time.sleep(0.05)


def _outside(stderr: str, slices: Sequence[slice], start: int = 0) -> str:
    """What QEMU wrote outside every observation slice (boot, shutdown, in between),
    from ``start`` (where this guest's own QEMU began writing)."""
    parts, position = [], start
    for part in sorted(slices, key=lambda s: s.start):
        parts.append(stderr[position:part.start])
        position = part.stop
    parts.append(stderr[position:])
    return "\n".join(parts)


def _rows(run: RunContext, plan: GuestPlan, guest: Guest, observed: Sequence[Observed],
          log_dir: Path, proc_mounts: str, kernel: ReportedKernel) -> list[ResultRow]:
    """Judge every export of a guest that has been shut down (its stderr is complete);
    a row whose export did not get the cache mode asked for is inconclusive."""
    stderr = guest.stderr_text()
    run.notices.add(stderr, run.progress)
    live = run.backend.live_stderr
    end = qemu_end(guest)
    # What QEMU wrote while failing an action of the harness's own (a state save) was
    # quoted in that action's warning: a host fault, not the exports' to be judged on.
    own = list(guest.own_stderr) if isinstance(guest, OwnStderr) else []
    outside = _outside(stderr, [o.stderr for o in observed] + own,
                       end.stderr_from if end else 0) if live else ""
    # QEMU's own end and its trouble outside every observation concern every row.
    shared = end_failures(end) + stderr_trouble(outside, "outside every observation")
    problems = run.backend.command_failures(guest, [o.spec for o in observed])
    record = GuestRecord(run.env.image.recipe, kernel.release, plan.name, kernel.build)
    facts = run.backend.facts(guest)
    version = run.env.info.version
    rows = []
    for item in observed:
        # QEMU prints some warnings once per process: what it wrote before this
        # export was observed says whether an earlier export had them.
        before = stderr[end.stderr_from if end else 0:item.stderr.start] if live else ""
        judging = Judging(item.plan, item.export, item.spec, version,
                          stderr[item.stderr] if live else stderr, outside,
                          problems.get(item.spec.path, ()), before)
        mounted = _mounted(proc_mounts, item.spec)
        judged = item.judge(judging)
        if item.spec.transport is Transport.NINEP:  # virtiofs has no 9p cache= to prove
            judged = with_premise(judged, cache_premise(item.plan.cache, mounted))
        verdict = with_findings(judged, shared + stderr_trouble(
            judging.stderr, "while this export was observed" if live else "(libvirt's log)"))
        known, unreproduced = known_issues_of(run.known_issues, item.plan, verdict,
                                              version, run.env.image.kernel_release)
        rows.append(ResultRow(
            case=item.plan.row, check=item.plan.check, cache=row_cache(item.plan),
            via=run.backend.via, verdict=verdict,
            guest=record, start=guest.start, boot_seconds=guest.boot_seconds,
            observe_seconds=item.seconds, log_dir=log_dir,
            qemu_command=shell_quote_command(guest.argv),
            guest_command=guest_mount_command(item.spec),
            environment=run.env.record, backend=facts, layout=item.plan.layout.kind,
            known_issue=known, unreproduced=unreproduced,
            mounted_cache=mounted.spelling if mounted else None,
            transport=item.plan.transport,
        ))
    return rows


def _run_guest(run: RunContext, plan: GuestPlan, log_dir: Path) -> list[ResultRow]:
    run.live.going()
    with ExitStack() as stack:
        exports, failed = _build_exports(run, stack, plan)
        rows = [row for item, exc in failed for row in unobserved_rows(
            run, GuestPlan(plan.name, (item,)), log_dir,
            f"{type(exc).__name__}: {exc.message} ({exc.hint})" if exc.hint
            else f"{type(exc).__name__}: {exc.message}", Status.ERROR)]
        if not exports:
            return rows
        _require_modules(run, plan)
        run.live.going()
        guest = stack.enter_context(
            run.backend.start(plan, [spec for _, _, spec in exports], log_dir))
        run.live.add(guest)
        stack.callback(run.live.discard, guest)
        run.progress(f"{plan.name}: booting guest ({run.env.accel.used.value})")
        guest.wait_ready()
        # Part of bringing the guest up, not of the test: a guest that dies here has
        # not been shown an export yet (an error row, like a failed boot).
        kernel = reported_kernel(guest, run.env.image.kernel_release, run.env.kernel_file)
        run.live.going()
        run.progress(f"{plan.name}: SSH up after {guest.boot_seconds:.2f} s "
                     f"({guest.start.value}); observing")
        started = time.monotonic()
        observed, proc_mounts = _observe(run, guest, exports)
        run.progress(f"{plan.name}: {len(observed)} exports observed in "
                     f"{time.monotonic() - started:.1f} s")
    return _rows(run, plan, guest, observed, log_dir, proc_mounts, kernel) + rows


def _require_modules(run: RunContext, plan: GuestPlan) -> None:
    """A virtiofs guest needs the kernel's fuse and virtiofs modules; without them its
    rows are errors naming what is missing (the 9p guests of the run still run)."""
    missing = run.env.image.missing_modules
    if missing and any(e.transport is Transport.VIRTIOFS for e in plan.exports):
        raise KernelModuleMissing(
            f"guest kernel {run.env.image.kernel_release} has no module "
            f"{', '.join(missing)} (neither in its modules tree nor built in)",
            hint="boot a kernel with CONFIG_FUSE_FS and CONFIG_VIRTIO_FS (=m or =y)")


def run_guest(run: RunContext, plan: GuestPlan) -> list[ResultRow]:
    """Boot one planned guest, observe and judge each of its exports.

    A guest that crashes under test gives FAIL rows; one that cannot be booted or
    observed at all gives ERROR rows, each naming why; so does one whose work raised
    an exception the harness did not expect (its traceback goes to the guest's log
    directory), while the run's other guests go on.
    """
    log_dir = run.log_root / plan.name
    try:
        return _run_guest(run, plan, log_dir)
    except GuestCrashed as exc:
        run.progress(f"{plan.name}: {exc.message}")
        return unobserved_rows(run, plan, log_dir, exc.message, Status.FAIL)
    except QemuExitedEarly as exc:
        # QEMU's own words and what to do about them, on the terminal and in every row
        # of the guest: the logs are not where a reader of the table looks first.
        line = f"{exc.message} ({exc.hint})"
        run.progress(f"{plan.name}: {line}")
        return unobserved_rows(run, plan, log_dir, f"{type(exc).__name__}: {line}",
                               Status.ERROR)
    except HarnessError as exc:
        run.progress(f"{plan.name}: {exc.message}")
        return unobserved_rows(run, plan, log_dir, f"{type(exc).__name__}: {exc.message}",
                               Status.ERROR)
    except Exception as exc:
        # A fault of the harness (or of the host under it) in this guest's work: its
        # rows say so as errors, never failures, and the other guests go on.  The
        # ExitStack has already stopped this guest and removed its exports.
        line = harness_fault(exc, log_dir)
        run.progress(f"{plan.name}: {line}")
        return unobserved_rows(run, plan, log_dir, line, Status.ERROR)


def unobserved_rows(run: RunContext, plan: GuestPlan, log_dir: Path, reason: str,
                    status: Status) -> list[ResultRow]:
    """One row per export of a guest that was never observed (or died under test)."""
    record = GuestRecord(run.env.image.recipe, run.env.image.kernel_release, plan.name)
    return [
        ResultRow(case=item.row, check=item.check, cache=row_cache(item), via=run.backend.via,
                  guest=record, layout=item.layout.kind, transport=item.transport,
                  verdict=unobserved(item.mode, item.layout.devices, reason, status),
                  log_dir=log_dir, environment=run.env.record)
        for item in plan.exports
    ]
