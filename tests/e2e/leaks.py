"""Leak checks shared by the e2e tests: QEMU processes, tmpfs mounts, temp dirs.

``Sandbox`` runs the ``multidevs-harness`` CLI in a subprocess (``helpers.harness_argv``)
with its own TMPDIR and XDG_STATE_HOME and a marker in its environment, which every
QEMU it starts inherits.  So whatever the run leaves behind is attributable to it even
while other harness runs share the machine: marked QEMU processes, files under the
private directories, new tmpfs mounts on the host, anything in the export scratch
directory.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harness import paths
from harness.proc import processes_with_env

from .helpers import harness_argv, run_command

# Every QEMU started by a sandboxed harness inherits this variable from it.
MARKER_ENV = "MDH_TEST_MARKER"
# Set once per test process (tests/conftest.py): every QEMU it starts inherits it.
WORKER_MARKER_ENV = "MDH_TEST_WORKER"
_KEPT = re.compile(r"logs kept in (\S+)")
TIMEOUT_SCALE = "0.5"


def qemu_pids() -> set[int]:
    """PIDs of every QEMU system emulator on the machine."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
            state = (entry / "stat").read_text().split(") ", 1)[1][0]
        except OSError:
            continue
        if comm.startswith("qemu-system") and state != "Z":
            pids.add(int(entry.name))
    return pids


def marked_qemu_pids(marker: str) -> set[int]:
    """Live QEMU processes whose environment carries ``MARKER_ENV=marker``."""
    return processes_with_env(MARKER_ENV, marker)


def assert_no_qemu_left(*pids: int, within: float = 10.0) -> None:
    """Fail if a QEMU (of ``pids``, or any this test process or its subprocesses
    started) is still alive after ``within``.  Other pytest-xdist workers' guests, and
    anything else on the machine, are not this test's to judge."""
    deadline = time.monotonic() + within
    while True:
        alive = set(pids) & qemu_pids() if pids else \
            processes_with_env(WORKER_MARKER_ENV, os.environ[WORKER_MARKER_ENV])
        if not alive:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"QEMU processes left running: {sorted(alive)}")
        time.sleep(0.1)


def _tmpfs_in(mounts_file: str) -> set[str]:
    try:
        text = Path(mounts_file).read_text()
    except OSError:
        return set()
    return {fields[1] for fields in (line.split() for line in text.splitlines())
            if len(fields) > 2 and fields[2] == "tmpfs"}


def host_tmpfs_mounts() -> set[str]:
    """tmpfs mount points in the host's (pid 1's) mount namespace."""
    return _tmpfs_in("/proc/1/mounts")


def visible_tmpfs_mounts() -> set[str]:
    """tmpfs mounts of the host and of this process's namespace (which a child inherits)."""
    return host_tmpfs_mounts() | _tmpfs_in("/proc/self/mounts")


def scratch_anchor() -> Path:
    """The directory the harness mounts its private export scratch tmpfs on."""
    return paths.scratch_anchor()


def _parent_pid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[1])


def host_view(path: Path) -> Path:
    """``path`` as the host's mount namespace sees it.

    This process may sit in the pytest plugin's private namespace, where the export
    scratch tmpfs hides the host's directory.  So look through /proc/PID/root of the
    outermost ancestor we may inspect (pid 1's own may be closed to us in a
    container), which the plugin's unshare did not move.
    """
    outermost = None
    pid = os.getpid()
    while pid > 1:
        try:
            os.stat(f"/proc/{pid}/root/")
            outermost = pid
            pid = _parent_pid(pid)
        except OSError:
            break
    if outermost is None:
        return path
    return Path(f"/proc/{outermost}/root") / path.absolute().relative_to("/")


def tree(root: Path) -> set[Path]:
    """Every path below ``root`` (not ``root`` itself); empty if it does not exist."""
    found: set[Path] = set()
    for directory, dirs, files in os.walk(root):
        found.update(Path(directory) / name for name in (*dirs, *files))
    return found


def mount_namespace_alive(ns: str) -> bool:
    """True while any process still lives in mount namespace ``ns`` ("mnt:[...]")."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "ns" / "mnt") == ns:
                    return True
            except OSError:
                continue
    return False


def own_pid() -> int:
    return os.getpid()


@dataclass
class Running:
    """A harness started in the background; stderr is collected line by line."""

    proc: subprocess.Popen[str]
    stdout_path: Path
    lines: list[str] = field(default_factory=list)
    _seen: threading.Condition = field(default_factory=threading.Condition)
    _reader: threading.Thread | None = None

    def __post_init__(self) -> None:
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._seen:
                self.lines.append(line)
                self._seen.notify_all()
        with self._seen:
            self._seen.notify_all()

    @property
    def stderr(self) -> str:
        with self._seen:
            return "".join(self.lines)

    def wait_for(self, text: str, timeout: float) -> None:
        """Block until ``text`` appears on stderr; fail if the harness exits or time passes."""
        deadline = time.monotonic() + timeout
        with self._seen:
            while not any(text in line for line in self.lines):
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and self._reader_done()):
                    raise AssertionError(
                        f"{text!r} not on the harness's stderr (rc {self.proc.poll()}):\n"
                        + "".join(self.lines)
                    )
                self._seen.wait(min(left, 0.2))

    def _reader_done(self) -> bool:
        return self._reader is not None and not self._reader.is_alive()

    def finish(self, timeout: float) -> tuple[int, str, str]:
        """Wait for exit; return (rc, stdout, stderr). Kills the harness on timeout."""
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"harness still running after {timeout} s:\n{self.stderr}"
            ) from None
        if self._reader is not None:
            self._reader.join(timeout=10)
        return rc, self.stdout_path.read_text(errors="replace"), self.stderr

    def signal(self, signum: signal.Signals) -> None:
        self.proc.send_signal(signum)


class Sandbox:
    """Private TMPDIR, XDG_STATE_HOME and QEMU marker for CLI runs, plus leak checks.

    Create it before the run (it snapshots the mount table then); call
    ``assert_clean`` afterwards.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp = root / "tmp"
        self.state = root / "state"
        self.log_base = self.state / "multidevs-harness" / "logs"
        self.tmp.mkdir(parents=True, exist_ok=True)
        # The state base is persistent by design; only run directories in it count.
        self.log_base.mkdir(parents=True, exist_ok=True)
        self.marker = uuid.uuid4().hex
        self.env = {
            **os.environ,
            "TMPDIR": str(self.tmp),
            "XDG_STATE_HOME": str(self.state),
            MARKER_ENV: self.marker,
            # Halved harness deadlines (TCG boot 45 s, guest command 90 s): a run that
            # hangs is ended by the harness itself, well inside the callers' timeouts.
            "MDH_TIMEOUT_SCALE": TIMEOUT_SCALE,
        }
        self._mounts_before = visible_tmpfs_mounts()
        self._files_before = tree(self.tmp) | tree(self.state)
        self._runs = 0

    def _env(self, extra: Mapping[str, str] | None) -> dict[str, str]:
        return {**self.env, **(extra or {})}

    def run(
        self, args: Sequence[str], timeout: float, env: Mapping[str, str] | None = None,
        argv: Sequence[str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run the CLI with ``args`` (or ``argv`` instead) to completion in the sandbox."""
        return run_command(argv if argv is not None else harness_argv(*args), timeout,
                           self._env(env))

    def start(self, args: Sequence[str], env: Mapping[str, str] | None = None) -> Running:
        """Start the CLI in the background; stdout goes to a file, stderr is watched."""
        self._runs += 1
        stdout_path = self.root / f"stdout-{self._runs}.txt"
        with open(stdout_path, "w") as stdout:
            proc = subprocess.Popen(
                harness_argv(*args), env=self._env(env), stdin=subprocess.DEVNULL,
                stdout=stdout, stderr=subprocess.PIPE, text=True,
            )
        return Running(proc, stdout_path)

    def leftovers(self, allowed: Iterable[Path] = (), within: float = 10.0) -> list[str]:
        """What the runs left behind, except anything under ``allowed`` (kept logs)."""
        problems: list[str] = []
        deadline = time.monotonic() + within
        while (qemu := marked_qemu_pids(self.marker)) and time.monotonic() < deadline:
            time.sleep(0.1)
        if qemu:
            problems.append(f"QEMU still running: pids {sorted(qemu)}")
        # virtiofsd runs as itself or, unpacked from Debian, under its loader.
        daemons = {pid for comm in ("virtiofsd", "ld-linux")
                   for pid in processes_with_env(MARKER_ENV, self.marker, comm)}
        if daemons:
            problems.append(f"virtiofsd still running: pids {sorted(daemons)}")
        mounts = visible_tmpfs_mounts() - self._mounts_before
        problems += [f"tmpfs still mounted on the host: {m}" for m in sorted(mounts)]
        keep = [Path(p) for p in allowed]
        new = (tree(self.tmp) | tree(self.state)) - self._files_before
        for path in sorted(new):
            if not any(path == k or k in path.parents or path in k.parents for k in keep):
                problems.append(f"left behind: {path}")
        anchor = host_view(scratch_anchor())
        if anchor.is_dir():
            problems += [f"left in the export scratch dir: {p}" for p in sorted(tree(anchor))]
        return problems

    def assert_clean(self, allowed: Iterable[Path] = ()) -> None:
        """Fail with the list of leftovers, if any."""
        problems = self.leftovers(allowed)
        assert not problems, "the harness leaked:\n  " + "\n  ".join(problems)


def kept_log_dirs(stderr: str) -> list[Path]:
    """Log directories the harness said it kept ("logs kept in DIR")."""
    return [Path(m) for m in _KEPT.findall(stderr)]
