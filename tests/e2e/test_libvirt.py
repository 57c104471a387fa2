"""``run --via libvirt`` end to end: every mode, the two refusals, and nothing left behind.

The CLI runs in a subprocess (it enters a mount namespace of its own and starts its
own libvirtd there), with a private TMPDIR and XDG_STATE_HOME.  Afterwards no
process of the run may live (its guests' QEMUs, its daemons, its reaper, told apart
from other runs by the run's prefix) and the host's tmpfs mounts and libvirt
config, runtime, state and log directories must be as before.  One full run feeds
most tests.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from harness.config import ALL_MODES, DEFAULT_CACHES, Accel, Check, Mode, RowKey
from harness.environment import prepare
from harness.errors import HarnessError, LibvirtError
from harness.host.layout import ExportLayout
from harness.libvirt.daemon import RUN_MARKER_ENV
from harness.machine_options import MachineOptions
from harness.plugin import skip_reason as plugin_skip_reason

from .helpers import harness_argv, libvirt_missing, real_qemu, run_harness

pytestmark = pytest.mark.timeout(300)

# The harness's own deadlines (90 s boot under TCG) sit below these.
RUN_TIMEOUT = 240.0
LIBVIRT_DIRS = (Path("/etc/libvirt"), Path("/run/libvirt"), Path("/var/lib/libvirt"),
                Path("/var/log/libvirt"))
GUEST_MARK = "guest=mdh-lv-"
VIRTIOFS_TEXT = "virtiofs does not support multidevs"




@pytest.fixture(scope="module")
def libvirt_ready() -> None:
    """Skip (with the reason) where --via libvirt cannot run: not root, no libvirt,
    no usable QEMU or guest image (decided as the plugin does for the direct path)."""
    reason = libvirt_missing()
    if reason:
        pytest.skip(reason)
    try:
        prepare(MachineOptions(accel=Accel.TCG))
    except HarnessError as exc:
        plugin_reason = plugin_skip_reason(exc)
        if plugin_reason:
            pytest.skip(plugin_reason)
        raise


def run_id(stderr: str) -> str | None:
    """The run's domain-name prefix, from its progress line "domains mdh-lv-XXXXXX-*"."""
    match = re.search(r"domains (mdh-lv-[0-9a-f]+)-\*", stderr)
    return match.group(1) if match else None


def run_processes(run: str) -> dict[int, str]:
    """Live processes of one run: its guests' QEMUs, its daemons and its reaper.

    Found by the run's prefix (in QEMU's guest name, and in the environment the
    harness gives its helpers), so other harness runs on the machine do not count.
    """
    marker = f"{RUN_MARKER_ENV}={run}".encode()
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(") ", 1)[1][0]
        except OSError:
            continue
        if state != "Z" and (f"guest={run}-".encode() in cmdline or marker in environ):
            found[int(entry.name)] = cmdline.replace(b"\0", b" ").decode(errors="replace")
    return found


def _tree(root: Path) -> set[str]:
    found = {str(root)} if root.exists() else set()
    for directory, dirs, files in os.walk(root):
        found.update(str(Path(directory) / name) for name in (*dirs, *files))
    return found


def _host_tmpfs() -> set[str]:
    lines = Path("/proc/1/mounts").read_text().splitlines()
    return {f[1] for f in (line.split() for line in lines) if len(f) > 2 and f[2] == "tmpfs"}


@dataclass(frozen=True)
class HostState:
    """What a --via libvirt run could leave behind on the host, besides processes."""

    tmpfs: set[str]
    libvirt_files: set[str]

    @classmethod
    def capture(cls) -> HostState:
        files: set[str] = set()
        for directory in LIBVIRT_DIRS:
            files |= _tree(directory)
        return cls(_host_tmpfs(), files)

    def leftovers(self, before: HostState) -> list[str]:
        """Differences from ``before``, as readable lines (empty: nothing left)."""
        problems = [f"tmpfs still mounted on the host: {m}"
                    for m in sorted(self.tmpfs - before.tmpfs)]
        problems += [f"left behind: {p}"
                     for p in sorted(self.libvirt_files - before.libvirt_files)]
        return problems


def _wait_for_leftovers(before: HostState, stderr: str, within: float = 10.0) -> list[str]:
    """What the run that printed ``stderr`` left: processes, host mounts, libvirt files."""
    run = run_id(stderr)
    deadline = time.monotonic() + within
    while True:
        problems = [f"still running: pid {pid}: {cmd[:160]}"
                    for pid, cmd in sorted((run_processes(run) if run else {}).items())]
        problems += HostState.capture().leftovers(before)
        if not problems or time.monotonic() > deadline:
            return problems
        time.sleep(0.2)


def _sandbox_leftovers(root: Path, kept: list[Path]) -> list[str]:
    """Files the run left in its private TMPDIR and XDG_STATE_HOME, except kept logs."""
    problems = [f"left in TMPDIR: {path}"
                for path in sorted(_tree(root / "tmp") - {str(root / "tmp")})]
    logs = root / "state" / "multidevs-harness" / "logs"
    runs = sorted(logs.iterdir()) if logs.is_dir() else []
    problems += [f"log directory neither kept nor removed: {run}" for run in runs
                 if run not in kept]
    return problems


def _sandbox_env(root: Path) -> dict[str, str]:
    (root / "tmp").mkdir(parents=True, exist_ok=True)
    (root / "state").mkdir(parents=True, exist_ok=True)
    return {**os.environ, "TMPDIR": str(root / "tmp"), "XDG_STATE_HOME": str(root / "state")}


def _virsh_domains() -> list[str] | None:
    """Domains of a host libvirtd, if one answers on the host's socket (else None)."""
    if not Path("/run/libvirt/libvirt-sock").exists() or shutil.which("virsh") is None:
        return None
    out = subprocess.run(["virsh", "-c", "qemu:///system", "list", "--all", "--name"],
                         capture_output=True, text=True, timeout=30, check=False)
    return [line for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 \
        else None


@dataclass(frozen=True)
class LibvirtRun:
    rc: int
    stdout: str
    stderr: str
    report: dict[str, Any]
    seconds: float
    leftovers: list[str]

    def result(self, case: str) -> dict[str, Any]:
        for result in self.report["results"]:
            if result["case"] == case:
                return dict(result)
        raise AssertionError(f"no case {case!r} in the report:\n{self.stdout}\n{self.stderr}")


@pytest.fixture(scope="module")
def libvirt_run(
    libvirt_ready: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LibvirtRun]:
    """One full ``run --via libvirt`` (all modes, control, refusals) under TCG."""
    root = tmp_path_factory.mktemp("libvirt-run")
    json_path = root / "report.json"
    before = HostState.capture()
    started = time.monotonic()
    proc = run_harness(["run", "--via", "libvirt", "--accel", "tcg", "--json", str(json_path)],
                       timeout=RUN_TIMEOUT, env=_sandbox_env(root))
    seconds = time.monotonic() - started
    if proc.returncode == 2 and not json_path.exists():
        pytest.fail(f"the harness could not run (exit 2):\n{proc.stderr}")
    report = json.loads(json_path.read_text()) if json_path.exists() else {"results": []}
    kept = [Path(report["log_dir"])] if report.get("log_dir") else []
    if run_id(proc.stderr) is None:
        pytest.fail(f"no 'domains mdh-lv-...' line on stderr:\n{proc.stderr}")
    leftovers = _wait_for_leftovers(before, proc.stderr) + _sandbox_leftovers(root, kept)
    yield LibvirtRun(proc.returncode, proc.stdout, proc.stderr, report, seconds, leftovers)


def test_every_mode_passes_via_libvirt(libvirt_run: LibvirtRun) -> None:
    run = libvirt_run
    assert run.rc == 0, f"{run.stdout}\n{run.stderr}"
    cases = {r["case"] for r in run.report["results"]}
    modes = {m.value for m in ALL_MODES}
    rows = {str(RowKey(Check.IDS, m, c)) for m in ALL_MODES for c in DEFAULT_CACHES}
    # runtime_mount and bind need host mounts QEMU's own namespace would never see.
    families = {f"{c}-{m}" for c in ("operations", "cross_device", "remount") for m in modes}
    families |= {f"cross_device-{m}+loose" for m in modes}  # one per inode-caching cache
    overlay = {f"{r}@overlay" for r in rows}
    assert cases == rows | overlay | {f"control-{m}" for m in modes} | families | {
        "reject-virtiofs-multidevs", "reject-invalid-multidevs"}
    # The overlay's remap collision is QEMU 7.2's known issue; everything else passes.
    known = {r["case"] for r in run.report["results"] if r["status"] == "known"}
    assert known == {"remap@overlay", "remap+loose@overlay"}, run.stdout
    assert all(r["passed"] for r in run.report["results"] if r["case"] not in known), run.stdout
    assert {r["via"] for r in run.report["results"]} == {"libvirt"}
    assert run.report["accel"]["used"] == "tcg"
    # The modes really did what they do (the verdicts judged real guests).
    assert run.result("remap")["guest_collisions"] == 0
    assert run.result("warn")["guest_collisions"] > 0
    assert run.result("forbid")["denied"] > 0
    assert "multidevs=forbid" in (run.result("forbid")["qemu_message"] or "")


def test_generated_command_line_carries_the_mode(libvirt_run: LibvirtRun) -> None:
    for mode in ALL_MODES:
        command = libvirt_run.result(mode.value)["qemu_command"]
        fsdevs = [arg for arg in command.split() if arg.startswith("local,")]
        # One ids device per cache mode, and the mode's operations, cross_device (one
        # per cache mode: none, loose) and remount exports.
        assert len(fsdevs) == len(DEFAULT_CACHES) + 4, command
        for fsdev in fsdevs:
            if mode is Mode.DEFAULT:
                assert "multidevs=" not in fsdev
            else:
                assert f"multidevs={mode.value}" in fsdev.split(",")
        # libvirt built it: its guest name and monitor, and our localhost-only forward.
        assert f"{GUEST_MARK}" in command and "charmonitor" in command
        assert "hostfwd=tcp:127.0.0.1:0-:22" in command


def test_libvirt_refuses_multidevs_on_virtiofs(libvirt_run: LibvirtRun) -> None:
    result = libvirt_run.result("reject-virtiofs-multidevs")
    assert result["passed"], result["failures"]
    errors = result["libvirt_errors"]
    assert set(errors) == {"defineXML", "createXML"}
    assert all(VIRTIOFS_TEXT in (error or "") for error in errors.values()), errors


def test_libvirt_refuses_an_invalid_multidevs_value(libvirt_run: LibvirtRun) -> None:
    result = libvirt_run.result("reject-invalid-multidevs")
    assert result["passed"], result["failures"]
    assert result["check"] == "rejection" and result["mode"] == "bogus"
    assert result["status"] == "pass"
    for error in result["libvirt_errors"].values():
        assert "multidevs" in (error or "") and "bogus" in (error or ""), error


def test_libvirt_run_leaves_nothing_behind(libvirt_run: LibvirtRun) -> None:
    assert libvirt_run.leftovers == []
    domains = _virsh_domains()
    if domains is not None:  # a host libvirtd runs: ours never used it
        assert not [d for d in domains if d.startswith("mdh-lv-")], domains


def test_libvirt_run_is_quick_enough(libvirt_run: LibvirtRun) -> None:
    # 5 guests on 2 TCG cores plus libvirtd: about 15-20 s here; CI's budget is minutes.
    assert libvirt_run.seconds < 120, libvirt_run.stderr


def _interrupted_run(tmp_path: Path, signum: signal.Signals, after: str) -> tuple[int, str]:
    """Start a one-guest run, send ``signum`` once ``after`` shows on stderr, wait for it."""
    stderr_path = tmp_path / "stderr.txt"
    with open(stderr_path, "w") as stderr:
        proc = subprocess.Popen(
            harness_argv("run", "--via", "libvirt", "--accel", "tcg", "--modes", "remap",
                         "--no-control"),
            env=_sandbox_env(tmp_path), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        deadline = time.monotonic() + 120
        while after not in stderr_path.read_text():
            assert proc.poll() is None, stderr_path.read_text()
            assert time.monotonic() < deadline, stderr_path.read_text()
            time.sleep(0.05)
        proc.send_signal(signum)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return rc, stderr_path.read_text()


def test_sigterm_during_a_libvirt_run_cleans_up(libvirt_ready: None, tmp_path: Path) -> None:
    before = HostState.capture()
    # The guest is starting or booting: the worst moment to be interrupted.
    rc, text = _interrupted_run(tmp_path, signal.SIGTERM, "remap: starting domain")
    assert rc == 128 + signal.SIGTERM, text  # 143: exit 128 + the signal
    assert "interrupted" in text
    kept = [Path(line.split("logs kept in ", 1)[1].strip())
            for line in text.splitlines() if "logs kept in " in line]
    assert _wait_for_leftovers(before, text) == [], text
    assert _sandbox_leftovers(tmp_path, kept) == [], text


def test_sigkill_of_the_harness_leaves_no_guest_daemon_or_mount(
    libvirt_ready: None, tmp_path: Path
) -> None:
    """No cleanup code runs: the daemons' parent-death signal and the reaper must do it."""
    before = HostState.capture()
    rc, text = _interrupted_run(tmp_path, signal.SIGKILL, "remap: SSH up")
    assert rc == -signal.SIGKILL, text
    # Only the run's log directory may stay: nobody was left to remove it.
    assert _wait_for_leftovers(before, text, within=30.0) == [], text


# A QEMU libvirt cannot probe: its capability probe (the one start with -daemonize)
# exits at once; the harness's own probe and every guest start run the real binary.
UNPROBEABLE = """#!/bin/sh
case " $* " in *" -daemonize "*) echo "no probe here" >&2; exit 1;; esac
exec {real} "$@"
"""


def test_a_qemu_libvirt_cannot_probe_ends_the_run_before_any_domain(
    libvirt_ready: None, tmp_path: Path
) -> None:
    """Exit 2 with libvirt's own reason, not a row of "cause unknown" errors and a
    rejection row failed as a finding (exit 1), as Debian 12's libvirt 9.0 gave with
    Debian's QEMU 10.0 and 11.1."""
    qemu = tmp_path / "unprobeable-qemu"
    qemu.write_text(UNPROBEABLE.format(real=real_qemu()))
    qemu.chmod(0o755)
    result = run_harness(["run", "--accel", "tcg", "--via", "libvirt", "--qemu", str(qemu),
                          "--modes", "remap", "--checks", "ids", "--layout", "standard",
                          "--json", str(tmp_path / "run.json")], timeout=RUN_TIMEOUT)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2, result.stderr
    assert len(errors) == 1 and errors[0].startswith(
        "error: libvirt "), result.stderr
    assert f"cannot use the QEMU {qemu}: " in errors[0], result.stderr
    assert "starting domain" not in result.stderr
    assert json.loads((tmp_path / "run.json").read_text())["results"] == []


def test_non_root_is_refused_before_anything_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.config import Via
    from harness.plan import RunOptions
    from harness.run import run_checks

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    messages: list[str] = []
    options = RunOptions(modes=(Mode.REMAP,), layout=ExportLayout(), via=Via.LIBVIRT)
    with pytest.raises(LibvirtError, match=r"^--via libvirt needs root: ") as info:
        run_checks(options, messages.append)
    assert "needs root" in info.value.message and info.value.exit_code == 2
    assert messages == []  # refused before probing, building or mounting anything


# A harness that starts the reaper of run argv[1], says so and waits to be SIGKILLed.
REAPER_CHILD = r"""
import sys, time
from harness.libvirt.daemon import Reaper
reaper = Reaper(sys.argv[1])
print("READY", flush=True)
time.sleep(120)
"""
# A QEMU as libvirt starts it: no marker in its environment, the guest's name on its
# command line (after -name); it writes its pid to its last argument.
FAKE_QEMU = ("import os, sys, time; open(sys.argv[-1], 'w').write(str(os.getpid())); "
             "time.sleep(60)")


def _fake_guest(run: str, name: str, pid_file: Path) -> list[str]:
    return ["python3", "-c", FAKE_QEMU, "-name", f"guest={run}-{name},debug-threads=on",
            str(pid_file)]


def _pid_alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][:1] not in "ZX"
    except OSError:
        return False


@pytest.mark.timeout(60)
def test_reaper_kills_guests_it_was_never_told_of(tmp_path: Path) -> None:
    """A SIGKILL between createXML and any registration, or while a stopping libvirtd
    still starts a guest, must leave no QEMU: the reaper knows the run's guests by
    their name prefix and looks again while a daemon of the run lives."""
    run = f"mdh-lv-t{os.getpid():x}"
    harness = subprocess.Popen(["python3", "-c", REAPER_CHILD, run], stdout=subprocess.PIPE,
                               text=True, cwd=Path(__file__).resolve().parents[2],
                               env={**os.environ, "PYTHONPATH": os.getcwd()})
    early, late = tmp_path / "early.pid", tmp_path / "late.pid"
    # Started by "libvirtd" after the reaper, never registered anywhere.
    guest = subprocess.Popen(_fake_guest(run, "remap", early), env={})
    # A daemon of the run that starts one more guest 1 s after the harness died (the
    # guest's name is not on the daemon's own command line, as with libvirtd).  The
    # daemon writes that guest's pid: the reaper may kill the guest before the guest's
    # own Python has started and written it (seen in CI under load).
    daemon = subprocess.Popen(
        ["python3", "-c", "import subprocess, sys, time; time.sleep(1); "
         "late = subprocess.Popen([a.replace('@', 'guest=') for a in sys.argv[2:]]); "
         "open(sys.argv[1], 'w').write(str(late.pid)); time.sleep(1)",
         str(late),
         *(a.replace("guest=", "@")
           for a in _fake_guest(run, "late", tmp_path / "late-self.pid"))],
        env={RUN_MARKER_ENV: run})
    try:
        assert harness.stdout is not None and harness.stdout.readline() == "READY\n"
        harness.kill()
        harness.wait(timeout=10)
        guest.wait(timeout=10)  # killed (by the reaper: nobody else does)
        daemon.wait(timeout=10)
        deadline = time.monotonic() + 10
        while not late.exists() or _pid_alive(int(late.read_text() or "0")):
            assert time.monotonic() < deadline, "the guest started after the kill lives on"
            time.sleep(0.1)
    finally:
        for proc in (harness, guest, daemon):
            proc.kill()
            proc.wait()
        if late.exists() and late.read_text():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(late.read_text()), signal.SIGKILL)
    assert guest.returncode == -signal.SIGKILL
