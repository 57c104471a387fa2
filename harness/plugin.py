"""pytest plugin: options, fixtures and failure logs for tests that boot guests.

Registered through the ``pytest11`` entry point, so any project with
multidevs-harness installed gets ``--mdh-qemu``, ``--mdh-accel``, ``--mdh-devices`` (all
options ``--mdh-`` prefixed) and the
fixtures ``guest_image``, ``mdh_environment``, ``multidevs_export``, ``machine`` and
``machine_factory``.  When a test fails, the guest console tail and QEMU's stderr are
attached to its report and its log directory is kept and named.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from .config import Accel, Layout, Mode
from .environment import Environment, prepare
from .errors import HarnessError, MissingPackages, QemuNotFound, QemuTooOld
from .host.export import build_export
from .host.layout import ExportLayout
from .host.truth import Export
from .host.walk import resolve_tree
from .image.artefacts import GuestImage
from .machine_options import MachineOptions
from .proc import processes_with_env, tail_file
from .qemu.machine import Machine
from .qemu.spec import ExportSpec

MACHINES_KEY = pytest.StashKey[list[Machine]]()
LOGDIR_KEY = pytest.StashKey[Path]()
# The session's log roots made by mdh_log_root, removed at the session's end if empty
# (no test failed).
_LOG_ROOTS: list[Path] = []
SESSION_MARKER_ENV = "MDH_PYTEST_SESSION"
LEAK_GRACE_S = 10.0
FIXTURES_NEEDING_NAMESPACE = {"multidevs_export", "machine", "machine_factory"}


@dataclass(frozen=True)
class HarnessOptions:
    """The plugin's command-line options, frozen for the session."""

    machine: MachineOptions
    devices: int
    logs: Path | None
    # --mdh-export: the user's own tree, exported read-only (a marker's export= wins).
    export: Path | None = None


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("multidevs-harness", "multidevs-harness (QEMU 9p multidevs)")
    group.addoption("--mdh-qemu", default=None, help="QEMU binary under test")
    group.addoption(
        "--mdh-accel", default=Accel.AUTO.value, choices=[a.value for a in Accel],
        help="accelerator: auto (KVM only if a guest starts under it), kvm or tcg",
    )
    group.addoption("--mdh-devices", type=int, default=3, help="host devices per export")
    group.addoption("--mdh-export", default=None, metavar="PATH",
                    help="export this directory (read-only, with the mounts under it) "
                    "instead of building one; a test's multidevs(export=...) overrides it")
    group.addoption("--mdh-logs", default=None, help="keep every test's guest logs here")
    group.addoption("--mdh-cold", action="store_true",
                    help="boot every guest cold (default: restore saved guest states)")
    group.addoption("--mdh-guest", default=None,
                    help="guest recipe for the fixtures (default: the default recipe); a "
                    "test's multidevs(guest=...) marker overrides it")


def pytest_configure(config: pytest.Config) -> None:
    # Inherited by pytest-xdist workers and every QEMU they start: the leak check at
    # the end of the session finds all of them, whichever worker started them.
    os.environ.setdefault(SESSION_MARKER_ENV, uuid.uuid4().hex)
    config.addinivalue_line(
        "markers", "e2e: boots real QEMU guests (needs qemu-system-x86 and the guest image)"
    )
    config.addinivalue_line(
        "markers", "multidevs(mode='remap', devices=None, files=8, nested=False, "
        "guest=None): how the `machine` fixture's export is built and shared, and which "
        "guest recipe boots",
    )


def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    # Unsharing the mount namespace needs a single-threaded process: do it now,
    # after collection and before any test (or paramiko) starts a thread.
    if any(FIXTURES_NEEDING_NAMESPACE & set(getattr(i, "fixturenames", ())) for i in items):
        from .host.namespace import enter_private_namespace

        try:
            # A pytest-xdist worker already runs an I/O thread; it stays outside.
            enter_private_namespace(threads_stay_outside=_is_xdist_worker(config))
        except HarnessError as exc:
            config.stash[_NS_ERROR] = str(exc)


_NS_ERROR = pytest.StashKey[str]()


def _is_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


@pytest.fixture(scope="session")
def mdh_options(pytestconfig: pytest.Config) -> HarnessOptions:
    """The session's harness options (from the command line)."""
    logs = pytestconfig.getoption("--mdh-logs")
    machine = MachineOptions(
        qemu=pytestconfig.getoption("--mdh-qemu"),
        accel=Accel(pytestconfig.getoption("--mdh-accel")),
        guest=pytestconfig.getoption("--mdh-guest"),
        cold=bool(pytestconfig.getoption("--mdh-cold")),
    )
    return HarnessOptions(
        machine=machine,
        devices=int(pytestconfig.getoption("--mdh-devices")),
        logs=Path(logs) if logs else None,
        export=Path(export) if (export := pytestconfig.getoption("--mdh-export")) else None,
    )


def skip_reason(exc: HarnessError) -> str | None:
    """The one place that decides whether an environment problem skips or fails.

    A missing or too-old QEMU, or missing guest packages, mean "cannot test here":
    skip with the reason.  Anything else is a real failure.
    """
    if isinstance(exc, QemuNotFound | QemuTooOld | MissingPackages):
        return f"{type(exc).__name__}: {exc.message} ({exc.hint})"
    return None


EnvironmentFor = Callable[[str | None], Environment]


@pytest.fixture(scope="session")
def mdh_environments(mdh_options: HarnessOptions) -> EnvironmentFor:
    """``mdh_environments(recipe)``: the prepared environment of a guest recipe (None:
    the session's ``--mdh-guest``), prepared once per recipe per session."""
    prepared: dict[str | None, Environment] = {}

    def environment_for(guest: str | None) -> Environment:
        guest = guest or mdh_options.machine.guest
        if guest not in prepared:
            try:
                prepared[guest] = prepare(replace(mdh_options.machine, guest=guest))
            except HarnessError as exc:
                reason = skip_reason(exc)
                if reason:
                    pytest.skip(reason)
                raise
        return prepared[guest]

    return environment_for


@pytest.fixture(scope="session")
def mdh_environment(mdh_environments: EnvironmentFor) -> Environment:
    """Probed QEMU + built image + accelerator decision for the session's guest."""
    return mdh_environments(None)


@pytest.fixture(scope="session")
def guest_image(mdh_environment: Environment) -> GuestImage:
    """The cached guest image (built on first use)."""
    return mdh_environment.image


@pytest.fixture(scope="session")
def mdh_log_root(mdh_options: HarnessOptions) -> Iterator[Path]:
    """Where each test's guest logs go; removed at the end unless a test failed."""
    if mdh_options.logs is not None:
        mdh_options.logs.mkdir(parents=True, exist_ok=True)
        yield mdh_options.logs
        return
    root = Path(tempfile.mkdtemp(prefix="mdh-pytest-"))
    _LOG_ROOTS.append(root)
    yield root
    # The last test's own directory is removed after this (its teardown report comes
    # after the session's fixtures end): pytest_sessionfinish removes the root then.


@pytest.fixture
def mdh_log_dir(request: pytest.FixtureRequest, mdh_log_root: Path) -> Iterator[Path]:
    """This test's log directory: kept (and named in the report) only if it fails."""
    name = request.node.nodeid.replace("/", "_").replace("::", "-").replace(" ", "_")
    directory = mdh_log_root / name[-120:]
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    request.node.stash[LOGDIR_KEY] = directory
    yield directory


def _marker_layout(request: pytest.FixtureRequest, options: HarnessOptions) -> tuple[
        Mode, ExportLayout]:
    marker = request.node.get_closest_marker("multidevs")
    kwargs = dict(marker.kwargs) if marker else {}
    mode = Mode(kwargs.get("mode", Mode.REMAP.value))
    tree = kwargs.get("export") or options.export
    if tree is not None:
        # The user's tree: read-only, its own devices (``host.walk.resolve_tree`` says
        # in one line what is wrong with a path that cannot be exported).
        return mode, ExportLayout(devices=2, files_per_device=1, kind=Layout.EXPORT,
                                  source=resolve_tree(Path(tree)))
    layout = ExportLayout(
        devices=int(kwargs.get("devices") or options.devices),
        files_per_device=int(kwargs.get("files", 8)),
        nested=bool(kwargs.get("nested", False)),
    )
    return mode, layout


def _require_namespace(config: pytest.Config) -> None:
    error = config.stash.get(_NS_ERROR, None)
    if error:
        pytest.fail(f"no private mount namespace for the export: {error}", pytrace=False)


@pytest.fixture
def multidevs_export(
    request: pytest.FixtureRequest, mdh_options: HarnessOptions
) -> Iterator[Export]:
    """A multi-device tmpfs export (shape from the ``multidevs`` marker), torn down after."""
    _require_namespace(request.config)
    _, layout = _marker_layout(request, mdh_options)
    with build_export(layout) as export:
        yield export


MachineFactory = Callable[..., Machine]


@pytest.fixture
def machine_factory(
    request: pytest.FixtureRequest, mdh_environments: EnvironmentFor, mdh_log_dir: Path
) -> Iterator[MachineFactory]:
    """Boot guests on demand: ``machine_factory(exports=[(Export, Mode)], ready=True)``.

    The guest recipe is the ``multidevs(guest=...)`` marker's, else ``--mdh-guest``.
    Every guest is shut down at the end of the test, and its console and QEMU
    stderr are attached to the report if the test fails.
    """
    marker = request.node.get_closest_marker("multidevs")
    env = mdh_environments(marker.kwargs.get("guest") if marker else None)
    machines: list[Machine] = []
    request.node.stash[MACHINES_KEY] = machines
    with ExitStack() as stack:

        def factory(
            exports: Sequence[tuple[Export, Mode]] = (),
            ready: bool = True,
            extra_append: Sequence[str] = (),
            name: str | None = None,
        ) -> Machine:
            index = len(machines)
            specs = [
                ExportSpec(tag=f"mdh{i}", path=export.root, mode=mode,
                           mount_point=f"/mnt/mdh{i}",
                           readonly=export.layout.kind is Layout.EXPORT)
                for i, (export, mode) in enumerate(exports)
            ]
            log_dir = mdh_log_dir / f"guest{index}"
            spec = env.machine_spec(specs, log_dir, extra_append)
            machine = Machine(spec, name=name or f"guest{index}")
            machines.append(machine)
            stack.enter_context(machine)
            if ready:
                machine.wait_ready()
            return machine

        yield factory


@pytest.fixture
def machine(
    request: pytest.FixtureRequest,
    machine_factory: MachineFactory,
    multidevs_export: Export,
    mdh_options: HarnessOptions,
) -> Machine:
    """A ready guest mounting ``multidevs_export`` at /mnt/mdh0 in the marker's mode."""
    mode, _ = _marker_layout(request, mdh_options)
    return machine_factory(exports=[(multidevs_export, mode)])


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        if report.when == "teardown":
            directory = item.stash.get(LOGDIR_KEY, None)
            if directory is not None and not getattr(item, "_mdh_failed", False):
                shutil.rmtree(directory, ignore_errors=True)
        return
    item._mdh_failed = True  # type: ignore[attr-defined]  # marks the log dir as kept
    for machine in item.stash.get(MACHINES_KEY, []):
        report.sections.append(
            (f"{machine.name} console tail", tail_file(machine.console_path, 40) or "(empty)")
        )
        report.sections.append(
            (f"{machine.name} qemu stderr", tail_file(machine.stderr_path, 40) or "(empty)")
        )
    directory = item.stash.get(LOGDIR_KEY, None)
    if directory is not None:
        report.sections.append(("multidevs-harness logs", f"kept in {directory}"))


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Remove this process's empty log roots; then fail the session if a QEMU
    started by any of its workers is still running.

    The QEMU check runs once, in the process that started the session (the xdist
    controller, or plain pytest), after every worker finished.
    """
    for root in _LOG_ROOTS:  # in every process: each has its own log root
        with contextlib.suppress(OSError):
            if not any(root.iterdir()):
                root.rmdir()
    if hasattr(session.config, "workerinput"):
        return
    marker = os.environ.get(SESSION_MARKER_ENV, "")
    deadline = time.monotonic() + LEAK_GRACE_S
    while (leaked := processes_with_env(SESSION_MARKER_ENV, marker)) and \
            time.monotonic() < deadline:
        time.sleep(0.2)
    if leaked:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"multidevs-harness: QEMU outlived the session: pids "
                                f"{sorted(leaked)}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
