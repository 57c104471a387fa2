"""The scripted FUSE filesystem mounted for real: the inode numbers lstat and readdir
report are exactly the spec's (bit 63 included), and nothing outlives scripted_mount,
whether its block ends normally, by an exception, or its caller is SIGKILLed.

These mount in the test's own mount namespace (the host's unless the session entered
a private one) and each checks that its mount is gone afterwards."""

from __future__ import annotations

import ctypes.util
import errno
import importlib.util
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.errors import ScriptedFsError
from harness.host.namespace import unmount
from harness.host.scripted_mount import is_mounted, scripted_mount
from harness.host.scripted_spec import ScriptedEntry

REPO = Path(__file__).resolve().parents[2]


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "mounting a FUSE filesystem here needs root"
    if not Path("/dev/fuse").exists():
        return "no /dev/fuse (fuse kernel module not loaded or not in this container)"
    if ctypes.util.find_library("fuse3") is None:
        return "libfuse 3 is not installed (apt-get install fuse3; see scripts/setup)"
    if importlib.util.find_spec("mfusepy") is None:
        return "mfusepy is not installed in this Python (pip install mfusepy)"
    return None


pytestmark = [pytest.mark.e2e, pytest.mark.skipif(_why_not() is not None,
                                                   reason=_why_not() or "")]

# Deadlines inside the tests stay well under the 60 s test timeout.
START_S = 20.0
BIT63 = 1 << 63
HIGH = BIT63 | (1 << 62) | 5
HIGH16 = 0xFFFF_0000_0000_0001
SPEC = [
    ScriptedEntry("", "dir", BIT63 | 1),
    ScriptedEntry("d", "dir", HIGH16, mtime=1_700_000_000),
    ScriptedEntry("d/a", "file", HIGH, b"hard link\n", mtime=12345),
    ScriptedEntry("d/b", "file", HIGH, b"hard link\n", mtime=12345),
    ScriptedEntry("top", "file", (1 << 64) - 1, b"\x00\x01" * 70000),
    ScriptedEntry("low", "file", 2, b""),
    ScriptedEntry("link", "symlink", BIT63, target="d/a"),
]


def _server_pids(mountpoint: Path) -> set[int]:
    """Live (not zombie) scripted servers whose command line names ``mountpoint``."""
    wanted = os.fsencode(mountpoint)
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(") ", 1)[1][:1]
        except OSError:
            continue
        if b"harness.host.scripted_server" in argv and wanted in argv and state not in "ZX":
            found.add(int(entry.name))
    return found


def _gone(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(") ", 1)[1][:1] in "ZX"
    except OSError:
        return True


@pytest.fixture
def mountpoint(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "mnt"
    path.mkdir()
    yield path
    # A failing test must not leave its mount behind for the rest of the session.
    if is_mounted(path):
        unmount(path, lazy=True)


def _assert_left_nothing(mountpoint: Path, pid: int | None = None) -> None:
    assert not is_mounted(mountpoint), f"{mountpoint} is still in /proc/self/mountinfo"
    if pid is not None:
        assert _gone(pid), f"server pid {pid} is still alive"
    assert _server_pids(mountpoint) == set()


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_lstat_and_readdir_report_the_chosen_inode_numbers(mountpoint: Path) -> None:
    with scripted_mount(SPEC, mountpoint, timeout=START_S) as mount:
        assert is_mounted(mountpoint)
        want = {mountpoint / e.path if e.path else mountpoint: e for e in SPEC}
        for path, entry in want.items():
            assert os.lstat(path).st_ino == entry.ino, path
        dir_inos = {e.name: e.inode() for e in os.scandir(mountpoint / "d")}
        assert dir_inos == {"a": HIGH, "b": HIGH}
        top = {e.name: e.inode() for e in os.scandir(mountpoint)}
        assert top == {"d": HIGH16, "top": (1 << 64) - 1, "low": 2, "link": BIT63}
        a, b = os.lstat(mountpoint / "d/a"), os.lstat(mountpoint / "d/b")
        assert a.st_ino == b.st_ino == HIGH
        assert a.st_nlink == b.st_nlink == 2
        assert a.st_mtime == 12345 and a.st_size == len(b"hard link\n")
        assert os.lstat(mountpoint / "d").st_nlink == 2
        assert (mountpoint / "d/b").read_bytes() == b"hard link\n"
        assert (mountpoint / "top").read_bytes() == b"\x00\x01" * 70000
        assert os.readlink(mountpoint / "link") == "d/a"
        assert os.stat(mountpoint / "link").st_ino == HIGH  # followed through the link
        pid = mount.pid
        assert not _gone(pid)
    _assert_left_nothing(mountpoint, pid)


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_writes_fail_with_erofs(mountpoint: Path) -> None:
    with scripted_mount(SPEC, mountpoint, timeout=START_S):
        attempts: list[Callable[[], object]] = [
            lambda: open(mountpoint / "low", "wb"),  # noqa: SIM115 - it must fail to open
            lambda: (mountpoint / "new").write_bytes(b"x"),
            lambda: os.mkdir(mountpoint / "newdir"),
            lambda: os.unlink(mountpoint / "low"),
            lambda: os.rename(mountpoint / "low", mountpoint / "moved"),
            lambda: os.chmod(mountpoint / "low", 0o600),
        ]
        for attempt in attempts:
            with pytest.raises(OSError) as caught:
                attempt()
            assert caught.value.errno == errno.EROFS
    _assert_left_nothing(mountpoint)


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_an_exception_in_the_block_still_unmounts_and_stops(mountpoint: Path) -> None:
    pid = None
    with pytest.raises(RuntimeError, match="inside the block"), \
            scripted_mount(SPEC, mountpoint, timeout=START_S) as mount:
        pid = mount.pid
        os.lstat(mountpoint / "d/a")
        raise RuntimeError("inside the block")
    _assert_left_nothing(mountpoint, pid)


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_a_missed_deadline_says_so_and_leaves_nothing(mountpoint: Path) -> None:
    with pytest.raises(ScriptedFsError, match=r"was not mounted on .* within 1e-06 s"), \
            scripted_mount(SPEC, mountpoint, timeout=1e-6):
        pytest.fail("the block must not run")
    _assert_left_nothing(mountpoint)


HOLDER = """
import sys, time
from pathlib import Path
from harness.host.scripted_mount import scripted_mount
from harness.host.scripted_spec import ScriptedEntry
with scripted_mount([ScriptedEntry("", "dir", 5)], Path(sys.argv[1]), timeout=20) as m:
    print(m.pid, flush=True)
    time.sleep(50)
"""


def _read_line(proc: subprocess.Popen[bytes], timeout: float) -> bytes:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "the holder did not report its server's pid"
    return proc.stdout.readline()


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_a_sigkilled_caller_leaves_no_server_and_no_mount(mountpoint: Path,
                                                          tmp_path: Path) -> None:
    scratch = tmp_path / "holder-tmp"  # the holder's TMPDIR: must be empty afterwards
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch), "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(mountpoint)],
                              stdout=subprocess.PIPE, env=env)
    try:
        pid = int(_read_line(holder, START_S))
        assert is_mounted(mountpoint)
        holder.send_signal(signal.SIGKILL)  # no finally, no context manager exit
        holder.wait(timeout=10)
        # The server's parent-death signal (SIGTERM) makes libfuse unmount and exit.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not (_gone(pid) and not is_mounted(mountpoint)):
            time.sleep(0.05)
        _assert_left_nothing(mountpoint, pid)
        assert not list(scratch.iterdir()), "a killed caller left scratch files behind"
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        assert holder.stdout is not None
        holder.stdout.close()


def _big_spec(dirs: int, files: int) -> list[ScriptedEntry]:
    spec = [ScriptedEntry("", "dir", 1)]
    for d in range(dirs):
        spec.append(ScriptedEntry(f"d{d:03}", "dir", BIT63 | (d + 2)))
        for f in range(files):
            k = d * files + f
            # Top 16 bits vary across files, low bits keep every number distinct.
            spec.append(ScriptedEntry(f"d{d:03}/f{f:03}", "file",
                                      ((k % 65536) << 48) | (k + 1000)))
    return spec


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_a_70000_file_tree_walks_in_under_20_seconds(mountpoint: Path) -> None:
    spec = _big_spec(256, 280)
    want = {e.path: e.ino for e in spec if e.path}
    with scripted_mount(spec, mountpoint, timeout=START_S):
        start = time.monotonic()
        seen = {}
        for root, dirs, files in os.walk(mountpoint):
            for name in dirs + files:
                path = os.path.join(root, name)
                seen[os.path.relpath(path, mountpoint)] = os.lstat(path).st_ino
        took = time.monotonic() - start
    assert seen == want
    assert took < 20, f"os.walk + lstat of {len(want)} entries took {took:.1f} s"
    _assert_left_nothing(mountpoint)
