"""The private mount namespace: entered in a child process, never in the test process.

Entering it would change the pytest process for good, so each real check runs a small
Python child that enters the namespace, mounts a tmpfs and reports, while the test
looks at its own /proc/self/mountinfo from outside.
"""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.errors import NamespaceError
from harness.host import namespace

REPO = Path(__file__).resolve().parents[2]
NOBODY = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]

# The child: enter, enter again (idempotent), mount a tmpfs on argv[1], say so, wait for
# the parent to look from outside, then exit without unmounting: the kernel must clean up.
CHILD = r"""
import json, os, sys
from harness.host.namespace import enter_private_namespace, in_user_namespace, mount_tmpfs
from harness.host.namespace import private_namespace
info = enter_private_namespace()
again = enter_private_namespace()
target = sys.argv[1]
mount_tmpfs(target, "size=1m,mode=0755")
with open("/proc/self/mountinfo") as handle:
    inside = f" {target} " in handle.read()
print(json.dumps({
    "kind": str(info.kind), "real_uid": info.real_uid, "same": again is info,
    "private": private_namespace() is info, "userns": in_user_namespace(),
    "uid_inside": os.getuid(), "visible_inside": inside,
}), flush=True)
sys.stdin.readline()
"""


def _mounted(path: str) -> bool:
    with open("/proc/self/mountinfo") as handle:
        return f" {path} " in handle.read()


def _python_for(prefix: list[str]) -> str | None:
    """An interpreter that ``prefix`` (a setpriv drop) can run, 3.11+ for StrEnum."""
    for candidate in (sys.executable, "/usr/bin/python3"):
        probe = subprocess.run(
            [*prefix, candidate, "-c", "import sys; assert sys.version_info >= (3, 11)"],
            capture_output=True,
            timeout=30,
            check=False,
        )
        if probe.returncode == 0:
            return candidate
    return None


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory under /tmp every user can use (pytest's tmp_path is root-only)."""
    path = Path(tempfile.mkdtemp(prefix="mdh-ns-test-"))
    path.chmod(0o777)
    try:
        yield path
    finally:
        for child in sorted(path.rglob("*"), reverse=True):
            child.rmdir()
        path.rmdir()


def _run_child(prefix: list[str], python: str, target: Path) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with subprocess.Popen(
        [*prefix, python, "-c", CHILD, str(target)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    ) as child:
        assert child.stdout is not None and child.stdin is not None
        line = child.stdout.readline()
        if not line:
            stderr = child.stderr.read() if child.stderr else ""
            child.wait(timeout=30)
            pytest.fail(f"child failed (rc {child.returncode}):\n{stderr}")
        report: dict[str, object] = json.loads(line)
        # While the child still holds its mount, it must not show up out here.
        report["visible_outside_while_alive"] = _mounted(str(target))
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.wait(timeout=30) == 0
    report["visible_outside_after"] = _mounted(str(target))
    return report


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to test the root path")
def test_root_gets_a_mount_namespace(shared_dir: Path) -> None:
    target = shared_dir / "mnt"
    target.mkdir()
    report = _run_child([], sys.executable, target)
    assert report == {
        "kind": "mount",
        "real_uid": 0,
        "same": True,
        "private": True,
        "userns": namespace.in_user_namespace(),  # unchanged: no new user namespace
        "uid_inside": 0,
        "visible_inside": True,
        "visible_outside_while_alive": False,
        "visible_outside_after": False,
    }


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to nobody with setpriv")
def test_unprivileged_user_gets_a_user_and_mount_namespace(shared_dir: Path) -> None:
    python = _python_for(NOBODY)
    if python is None:
        pytest.skip("no Python 3.11+ that user nobody may run")
    probe = subprocess.run([*NOBODY, "unshare", "-Urm", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"unprivileged user namespaces are disabled here: {probe.stderr!r}")
    target = shared_dir / "mnt"
    target.mkdir()
    target.chmod(0o777)
    report = _run_child(NOBODY, python, target)
    assert report == {
        "kind": "user+mount",
        "real_uid": 65534,
        "same": True,
        "private": True,
        "userns": True,
        "uid_inside": 0,  # mapped to root inside, so it may mount
        "visible_inside": True,
        "visible_outside_while_alive": False,
        "visible_outside_after": False,
    }


@pytest.fixture(autouse=True)
def _fresh_namespace_state(monkeypatch: pytest.MonkeyPatch) -> None:
    # The pytest plugin may already have moved this process into a private namespace
    # for the e2e tests; the in-process tests below start from "not entered".
    monkeypatch.setattr(namespace, "_entered", None)


def _single_threaded(monkeypatch: pytest.MonkeyPatch) -> None:
    # Under pytest-xdist this process also runs execnet's I/O thread, and the thread
    # check would refuse before the paths these tests are about.
    monkeypatch.setattr(namespace, "_thread_count", lambda: 1)


def test_failure_says_why_and_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    _single_threaded(monkeypatch)

    def refuse(flags: int) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    # Guard rails: the real syscalls must never run in the test process.
    monkeypatch.setattr(namespace, "_unshare", refuse)
    # An xdist worker runs an I/O thread of its own; the thread rule has its own test.
    monkeypatch.setattr(namespace, "_thread_count", lambda: 1)
    monkeypatch.setattr(namespace, "make_rprivate", _never)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(os, "getuid", lambda: 1000)
    with pytest.raises(NamespaceError, match=r"^cannot create a private mount namespace for the "
                       r"export mounts: unshare\(CLONE_NEWUSER\|CLONE_NEWNS\) as uid 1000: "
                       r"Operation not permitted \(EPERM\)\n") as info:
        namespace.enter_private_namespace()
    assert info.value.message == (
        "cannot create a private mount namespace for the export mounts: "
        "unshare(CLONE_NEWUSER|CLONE_NEWNS) as uid 1000: Operation not permitted (EPERM)"
    )
    assert info.value.hint.startswith(
        "run as root, or enable unprivileged user namespaces: "
        "sysctl kernel.unprivileged_userns_clone=1"
    )
    assert namespace.private_namespace() is None


def test_root_falls_back_to_a_user_namespace_and_reports_both(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _single_threaded(monkeypatch)
    calls: list[int] = []

    def refuse(flags: int) -> None:
        calls.append(flags)
        raise OSError(errno.EPERM if len(calls) == 1 else errno.ENOSPC, "refused")

    monkeypatch.setattr(namespace, "_unshare", refuse)
    monkeypatch.setattr(namespace, "_thread_count", lambda: 1)  # as above
    monkeypatch.setattr(namespace, "make_rprivate", _never)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(os, "getuid", lambda: 0)
    with pytest.raises(NamespaceError, match=r"^cannot create a private mount namespace for "
                       r"the export mounts: unshare\(CLONE_NEWNS\) as root: ") as info:
        namespace.enter_private_namespace()
    assert calls == [namespace.CLONE_NEWNS, namespace.CLONE_NEWUSER | namespace.CLONE_NEWNS]
    assert info.value.message == (
        "cannot create a private mount namespace for the export mounts: "
        "unshare(CLONE_NEWNS) as root: refused (EPERM); "
        "unshare(CLONE_NEWUSER|CLONE_NEWNS) as uid 0: refused (ENOSPC)"
    )


def test_refuses_once_threads_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(namespace, "_unshare", _never)
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        with pytest.raises(NamespaceError, match=r"^cannot enter a private mount namespace: "
                           r"this process already runs") as info:
            namespace.enter_private_namespace()
    finally:
        stop.set()
        thread.join()
    assert info.value.message.startswith(
        "cannot enter a private mount namespace: this process already runs"
    )
    assert "before starting any thread" in info.value.hint


def _never(*args: object) -> None:
    raise AssertionError("a real namespace syscall would have run in the test process")


def test_mount_tmpfs_refuses_outside_the_private_namespace(tmp_path: Path) -> None:
    with pytest.raises(NamespaceError, match="^" + re.escape(
            f"refusing to mount a tmpfs on {tmp_path} outside a private namespace")) as info:
        namespace.mount_tmpfs(tmp_path, "size=1m")
    assert info.value.message == (
        f"refusing to mount a tmpfs on {tmp_path} outside a private namespace"
    )
    assert not _mounted(str(tmp_path))


HOST_MOUNTINFO = (
    "23 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n"
    "24 23 0:22 / /proc rw,relatime shared:12 - proc proc rw\n"
)
# The same process chrooted into /var/tmp/c, where / is a plain directory: only the
# mounts made below the chroot are listed, none on "/".
CHROOT_MOUNTINFO = (
    "301 23 0:22 / /proc rw,relatime - proc proc rw\n"
    "305 23 0:51 / /tmp rw,relatime - tmpfs tmpfs rw\n"
)


def test_root_is_a_mount_point_except_in_a_plain_chroot() -> None:
    assert namespace.root_is_mount_point(HOST_MOUNTINFO)
    assert not namespace.root_is_mount_point(CHROOT_MOUNTINFO)


@pytest.mark.parametrize(("mountinfo", "hint_start"), [
    (CHROOT_MOUNTINFO, "/ is not a mount point here (a chroot?)"),
    (HOST_MOUNTINFO, "run as root, or enable unprivileged user namespaces"),
])
def test_root_that_cannot_be_made_private_is_refused_with_the_right_hint(
    monkeypatch: pytest.MonkeyPatch, mountinfo: str, hint_start: str,
) -> None:
    _single_threaded(monkeypatch)

    def refuse(path: str = "/") -> None:
        raise OSError(errno.EINVAL, "Invalid argument", path)

    # Guard rails: the real syscalls must never run in the test process.
    monkeypatch.setattr(namespace, "_unshare", lambda flags: None)
    monkeypatch.setattr(namespace, "make_rprivate", refuse)
    monkeypatch.setattr(namespace, "_mountinfo", lambda: mountinfo)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(os, "getuid", lambda: 0)
    with pytest.raises(NamespaceError, match=r"^entered a mount namespace but could not make / "
                       r"private: Invalid argument \(EINVAL\)\n") as info:
        namespace.enter_private_namespace()
    assert info.value.message == (
        "entered a mount namespace but could not make / private: Invalid argument (EINVAL)"
    )
    assert info.value.hint == "mounts could propagate to the host; not continuing. " + (
        namespace._CHROOT_HINT if mountinfo is CHROOT_MOUNTINFO else namespace._HINT)
    assert info.value.hint.split(". ", 1)[1].startswith(hint_start)
    assert namespace.private_namespace() is None
