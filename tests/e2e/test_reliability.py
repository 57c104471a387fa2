"""Nothing outlives a run, whatever ends it; and the guest is locked down.

Each leak test drives the real CLI (or an inner pytest) in a subprocess inside a
``Sandbox``: private TMPDIR and XDG_STATE_HOME, and a marker in the environment that
every QEMU it starts inherits.  Afterwards no marked QEMU may live, no new tmpfs may
be mounted on the host (pid 1's table) or in our namespace, nothing may be left in
the private directories or in the export scratch directory, except the log directory
of a failed run, which the harness keeps on purpose and names on stderr.

Failures are made for real, without test hooks in the harness: a QEMU wrapper script
(``--qemu``) rewrites the guest's command line, so a remap export is served as warn
(a failing verdict), the guest kernel panics, or its init hangs.  Only the boot
deadline is shortened, through $MDH_TIMEOUT_SCALE.

The security checks share one guest (module scope) to stay cheap.
"""

from __future__ import annotations

import ast
import gc
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from harness.environment import Environment
from harness.errors import HostKeyMismatch
from harness.guest.lifecycle import check_alive
from harness.guest.ssh import connect_with_retry
from harness.qemu.machine import Machine
from harness.qemu.qmp import Qmp

from .helpers import HARNESS_TIMEOUT, REPO, needs_qemu, qemu_wrapper
from .leaks import (
    Sandbox,
    assert_no_qemu_left,
    kept_log_dirs,
    marked_qemu_pids,
    mount_namespace_alive,
)

pytestmark = [needs_qemu]

# One guest with one remap export: the shortest real run (about 4 s under TCG).
# One guest, one export: the standard layout alone (the overlay would add a guest).
RUN = ["run", "--accel", "tcg", "--modes", "remap", "--no-control", "--cache", "none",
       "--layout", "standard"]


# --- how a run ends -----------------------------------------------------------------


@pytest.mark.timeout(200)
def test_passing_runs_in_parallel_leave_nothing(tmp_path: Path) -> None:
    """The full default matrix and a one-guest run at once: both pass, no leftovers.

    The SSH forward port is chosen by QEMU (hostfwd port 0), so there is no port a
    user could give twice; two runs side by side are the clash that can happen.
    """
    sandbox = Sandbox(tmp_path)
    full = sandbox.start(["run", "--accel", "tcg"])
    small = sandbox.start(RUN)
    for running in (full, small):
        rc, out, err = running.finish(HARNESS_TIMEOUT)
        assert rc == 0, f"stdout:\n{out}\nstderr:\n{err}"
        assert "PASS" in out and "FAIL" not in out
        assert kept_log_dirs(err) == []
    sandbox.assert_clean()


@pytest.mark.timeout(180)
def test_failing_verdict_keeps_all_logs_and_nothing_else(tmp_path: Path) -> None:
    """A remap export served as warn fails the verdict; the logs of that run survive."""
    wrapper = qemu_wrapper(tmp_path, old="multidevs=remap", new="multidevs=warn")
    sandbox = Sandbox(tmp_path / "sandbox")
    logs = tmp_path / "logs"
    result = sandbox.run([*RUN, "--qemu", str(wrapper), "--logs", str(logs)],
                         timeout=HARNESS_TIMEOUT)
    assert result.returncode == 1, result.stderr
    assert "FAIL" in result.stdout and "collision" in result.stdout
    kept = kept_log_dirs(result.stderr)
    assert len(kept) == 1 and kept[0].parent == logs, result.stderr
    cases = [d for d in kept[0].iterdir() if d.is_dir()]
    assert len(cases) == 1, cases
    files = {name: (cases[0] / name).read_text(errors="replace")
             for name in ("console.log", "qemu-stderr.log", "qmp.log", "command.txt")}
    assert "MDH-READY" in files["console.log"]
    # The wrapper really ran the guest in warn mode: QEMU's own warning is captured.
    assert "collisions" in files["qemu-stderr.log"]
    assert '"QMP"' in files["qmp.log"] and "quit" in files["qmp.log"]
    assert "multidevs=remap" in files["command.txt"]
    assert files["command.txt"].startswith(str(wrapper))
    sandbox.assert_clean()


@pytest.mark.timeout(180)
def test_guest_panic_fails_fast_and_leaves_only_logs(tmp_path: Path) -> None:
    """A guest that panics before it is ready could not run the check: an error, exit 2."""
    wrapper = qemu_wrapper(tmp_path, append="rdinit=/no-such-init init=/no-such-init")
    sandbox = Sandbox(tmp_path / "sandbox")
    junit = tmp_path / "run.xml"
    started = time.monotonic()
    result = sandbox.run([*RUN, "--qemu", str(wrapper), "--junit", str(junit)],
                         timeout=HARNESS_TIMEOUT)
    assert time.monotonic() - started < 60, "a panic must not wait for the boot deadline"
    assert result.returncode == 2, result.stderr
    assert "GuestPanic" in result.stdout and "panicked" in result.stderr
    assert re.search(r"^remap\s.*\sERROR$", result.stdout, re.MULTILINE), result.stdout
    # One testcase per row of that guest (ids and every family's export of remap).
    cases = {case.get("name"): case for case in ET.parse(junit).getroot().iter("testcase")}
    assert "remap" in cases and "remount-remap" in cases, cases
    for case in cases.values():
        assert case.find("failure") is None
        error = case.find("error")
        assert error is not None and "GuestPanic" in (error.get("message") or "")
    kept = kept_log_dirs(result.stderr)
    assert len(kept) == 1 and "Kernel panic" in "".join(
        p.read_text(errors="replace") for p in kept[0].rglob("console.log"))
    sandbox.assert_clean(allowed=kept)


@pytest.mark.timeout(180)
def test_failed_init_step_ends_the_boot_at_once_with_its_reason(tmp_path: Path) -> None:
    """A 9p tag QEMU does not serve: the init says so, the run errors within seconds."""
    wrapper = qemu_wrapper(tmp_path, append="mdh_9p=nosuchtag:/mnt/nosuch:trans=virtio")
    sandbox = Sandbox(tmp_path / "sandbox")
    started = time.monotonic()
    result = sandbox.run([*RUN, "--qemu", str(wrapper)], timeout=HARNESS_TIMEOUT)
    elapsed = time.monotonic() - started
    assert result.returncode == 2, result.stdout + result.stderr
    assert elapsed < 30, f"took {elapsed:.1f} s: the failure must not wait for the deadline"
    assert "GuestInitFailed" in result.stdout
    assert "MDH-FAILED 9p: mount -t 9p -o trans=virtio nosuchtag /mnt/nosuch" in result.stdout
    kept = kept_log_dirs(result.stderr)
    assert len(kept) == 1
    sandbox.assert_clean(allowed=kept)


@pytest.mark.timeout(180)
@pytest.mark.parametrize(("wrapper_args", "code"), [
    ({"old": "multidevs=remap", "new": "multidevs=warn"}, 1),  # a regression: bad commit
    ({"append": "rdinit=/no-such-init init=/no-such-init"}, 125),  # cannot boot: skip it
], ids=["fail-stays-1", "error-becomes-125"])
def test_bisect_exit_codes(tmp_path: Path, wrapper_args: dict[str, str], code: int) -> None:
    wrapper = qemu_wrapper(tmp_path, **wrapper_args)
    sandbox = Sandbox(tmp_path / "sandbox")
    result = sandbox.run([*RUN, "--qemu", str(wrapper), "--bisect"], timeout=HARNESS_TIMEOUT)
    assert result.returncode == code, result.stdout + result.stderr
    sandbox.assert_clean(allowed=kept_log_dirs(result.stderr))


@pytest.mark.timeout(180)
def test_guest_that_never_boots_times_out_and_leaves_only_logs(tmp_path: Path) -> None:
    # busybox cat as init reads the silent serial console forever: no readiness line.
    wrapper = qemu_wrapper(tmp_path, append="rdinit=/bin/cat")
    sandbox = Sandbox(tmp_path / "sandbox")
    started = time.monotonic()
    result = sandbox.run([*RUN, "--qemu", str(wrapper)], timeout=HARNESS_TIMEOUT,
                         env={"MDH_TIMEOUT_SCALE": "0.06"})  # TCG boot deadline 90 s -> 5.4 s
    assert time.monotonic() - started < 40
    assert result.returncode == 2, result.stderr
    assert "GuestBootTimeout" in result.stdout
    assert "guest not ready within 5 s" in result.stderr
    kept = kept_log_dirs(result.stderr)
    assert len(kept) == 1
    sandbox.assert_clean(allowed=kept)


@pytest.mark.timeout(180)
def test_qemu_killed_while_booting_is_an_error(tmp_path: Path) -> None:
    sandbox = Sandbox(tmp_path)
    running = sandbox.start(RUN)
    running.wait_for("booting guest", timeout=60)
    pids = marked_qemu_pids(sandbox.marker)
    assert len(pids) == 1, pids
    os.kill(pids.pop(), signal.SIGKILL)
    rc, out, err = running.finish(HARNESS_TIMEOUT)
    assert rc == 2, err
    assert "QEMU exited with status -9" in out + err
    assert re.search(r"^remap\s.*\sERROR$", out, re.MULTILINE), out
    kept = kept_log_dirs(err)
    assert len(kept) == 1
    sandbox.assert_clean(allowed=kept)


@pytest.mark.timeout(180)
def test_qemu_dying_under_observation_is_a_failure(tmp_path: Path) -> None:
    """QEMU gone while an export is observed: a crash under test, exit 1, not a retry."""
    sandbox = Sandbox(tmp_path)
    # 3 x 2,000 files: two lstat passes take seconds, so the kill lands mid-observation.
    running = sandbox.start([*RUN, "--files", "2000", "--no-witness"])
    running.wait_for("observing", timeout=90)
    pids = marked_qemu_pids(sandbox.marker)
    assert len(pids) == 1, pids
    os.kill(pids.pop(), signal.SIGKILL)
    rc, out, err = running.finish(HARNESS_TIMEOUT)
    assert rc == 1, out + err
    assert "QEMU exited with status -9 while observing" in out, out
    assert re.search(r"^remap\s.*\sFAIL$", out, re.MULTILINE), out
    kept = kept_log_dirs(err)
    assert len(kept) == 1
    sandbox.assert_clean(allowed=kept)


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    ("signum", "jobs"),
    [(signal.SIGINT, []), (signal.SIGTERM, []), (signal.SIGINT, ["--jobs", "1"])],
    ids=["SIGINT", "SIGTERM", "SIGINT-jobs1"],
)
def test_signal_to_the_cli_stops_everything(
    tmp_path: Path, signum: signal.Signals, jobs: list[str]
) -> None:
    """Ctrl-C and SIGTERM while a guest boots: exit 128 + the signal (130, 143),
    guests and mounts gone.

    ``--jobs 1`` runs the guest in the main thread, where the signal lands directly;
    otherwise the main thread waits on a worker that owns the guest.
    """
    sandbox = Sandbox(tmp_path)
    running = sandbox.start([*RUN, *jobs])
    running.wait_for("booting guest", timeout=60)
    assert marked_qemu_pids(sandbox.marker), "no guest running when the signal is sent"
    sent = time.monotonic()
    running.signal(signum)
    rc, _, err = running.finish(60)
    assert time.monotonic() - sent < 30, "the harness must stop promptly on a signal"
    assert rc == 128 + signum, err
    assert f"interrupted ({signum.name}): guests stopped" in err
    assert "Traceback" not in err
    kept = kept_log_dirs(err)
    assert len(kept) == 1, err
    sandbox.assert_clean(allowed=kept)


@pytest.mark.timeout(180)
def test_sigkill_to_the_cli_takes_qemu_and_mounts_with_it(tmp_path: Path) -> None:
    """SIGKILL runs no cleanup code: QEMU dies by its parent-death signal, the mounts
    with the namespace, and the export directories lived on a tmpfs of that namespace.
    What stays is the run's log directory (evidence of a failed run, as always)."""
    sandbox = Sandbox(tmp_path)
    running = sandbox.start(RUN)
    running.wait_for("booting guest", timeout=60)
    pids = marked_qemu_pids(sandbox.marker)
    assert pids
    namespace = os.readlink(f"/proc/{running.proc.pid}/ns/mnt")
    assert namespace != os.readlink("/proc/self/ns/mnt"), "the harness has no namespace"
    running.signal(signal.SIGKILL)
    rc, _, _ = running.finish(30)
    assert rc == -signal.SIGKILL
    assert_no_qemu_left(*pids, within=5.0)
    deadline = time.monotonic() + 5
    while mount_namespace_alive(namespace):
        assert time.monotonic() < deadline, f"mount namespace {namespace} outlived the harness"
        time.sleep(0.05)
    runs = list(sandbox.log_base.iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("run-")
    sandbox.assert_clean(allowed=runs)


INNER_TEST = """\
import time

import pytest


@pytest.mark.multidevs(mode="remap")
def test_sleeps_with_a_guest(machine):
    print("GUEST-UP", machine.pid, flush=True)
    time.sleep(600)
"""


@pytest.mark.timeout(200)
@pytest.mark.parametrize("method", ["signal", "thread"])
def test_pytest_timeout_in_a_guest_test_leaves_no_guest(tmp_path: Path, method: str) -> None:
    """pytest-timeout fires while a plugin test holds a guest and an export.

    ``signal`` raises in the test, so fixtures unwind; ``thread`` os._exit()s the
    whole pytest, so as after SIGKILL only the kernel cleans up.  Either way only the
    plugin's log directory (mdh-pytest-*) may stay.
    """
    inner = tmp_path / "inner"
    inner.mkdir()
    # The timeout counts from the test body only, so a slow boot cannot fire it early.
    (inner / "pytest.ini").write_text("[pytest]\ntimeout_func_only = true\n")
    (inner / "test_inner.py").write_text(INNER_TEST)
    sandbox = Sandbox(tmp_path / "sandbox")
    argv = [sys.executable, "-m", "pytest", str(inner / "test_inner.py"), "-c",
            str(inner / "pytest.ini"), "--rootdir", str(inner), "-p", "no:cacheprovider",
            "-s", "-q", "--mdh-accel", "tcg", "--timeout", "3", "--timeout-method", method]
    result = sandbox.run([], argv=argv, timeout=120)
    output = result.stdout + result.stderr
    assert "GUEST-UP" in output, output
    assert result.returncode != 0 and "Timeout" in output, output
    # The timed-out test's logs are kept, as for any failed test.
    kept = list(sandbox.tmp.glob("mdh-pytest-*"))
    assert len(kept) == 1, kept
    if method == "signal":
        assert f"kept in {kept[0]}/" in output, "the report must name the kept logs"
    sandbox.assert_clean(allowed=kept)


@pytest.mark.timeout(200)
def test_a_passing_plugin_session_leaves_no_log_directory(tmp_path: Path) -> None:
    """The plugin's log root (mdh-pytest-*) goes when no test failed, even though the
    last test's own log directory is removed after the session's fixtures ended."""
    inner = tmp_path / "inner"
    inner.mkdir()
    (inner / "test_inner.py").write_text(
        "def test_boots(machine):\n    assert machine.run('true').rc == 0\n")
    sandbox = Sandbox(tmp_path / "sandbox")
    argv = [sys.executable, "-m", "pytest", str(inner / "test_inner.py"), "--rootdir",
            str(inner), "-p", "no:cacheprovider", "-q", "--mdh-accel", "tcg"]
    result = sandbox.run([], argv=argv, timeout=150)
    assert result.returncode == 0, result.stdout + result.stderr
    assert list(sandbox.tmp.glob("mdh-pytest-*")) == []
    sandbox.assert_clean()


# --- security -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_guest(
    mdh_environment: Environment, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Machine]:
    """One guest (no export) for every security check of this module."""
    spec = mdh_environment.machine_spec((), tmp_path_factory.mktemp("shared-guest"))
    with Machine(spec, name="shared") as machine:
        machine.wait_ready()
        yield machine
    assert machine.pid is not None
    assert_no_qemu_left(machine.pid)


def _listening(pid: int) -> list[tuple[str, str, int]]:
    """(table, address, port) of every TCP socket of process ``pid`` in LISTEN state."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in inodes:  # 0A = LISTEN
                continue
            address, port = fields[1].split(":")
            if table == "tcp":
                host = socket.inet_ntop(socket.AF_INET, bytes.fromhex(address)[::-1])
            else:
                host = address
            found.append((table, host, int(port, 16)))
    return found


@pytest.mark.timeout(240)
def test_ssh_forward_listens_on_loopback_only(shared_guest: Machine) -> None:
    assert shared_guest.pid is not None
    assert _listening(shared_guest.pid) == [("tcp", "127.0.0.1", shared_guest.host_port)]
    # QEMU's own view of its forwards: every one is bound to the loopback address.
    usernet = shared_guest.qmp.human("info usernet")
    forwards = re.findall(r"HOST_FORWARD\]\s+\d+\s+(\S+)\s+(\d+)", usernet)
    assert forwards == [("127.0.0.1", str(shared_guest.host_port))], usernet


@pytest.mark.timeout(240)
def test_guest_refuses_password_logins(shared_guest: Machine) -> None:
    transport = paramiko.Transport(("127.0.0.1", shared_guest.host_port))
    try:
        transport.start_client(timeout=30)
        for password in ("", "root"):
            with pytest.raises(paramiko.BadAuthenticationType,
                               match=r"^Bad authentication type; allowed types: "
                               r"\['publickey'\]$") as info:
                transport.auth_password("root", password)
            assert info.value.allowed_types == ["publickey"]
    finally:
        transport.close()


@pytest.mark.timeout(240)
def test_wrong_pinned_host_key_is_refused_at_once(
    shared_guest: Machine, tmp_path: Path
) -> None:
    public = Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    wrong = tmp_path / "host_key.pub"
    wrong.write_bytes(public + b"\n")
    image = shared_guest.spec.image
    started = time.monotonic()
    with pytest.raises(HostKeyMismatch, match=r"^guest at \[127\.0\.0\.1\]:\d+ presented "
                       r"host key ssh-ed25519 \S+, but the image pinned \S+\n") as info:
        connect_with_retry("127.0.0.1", shared_guest.host_port, image.client_key, wrong,
                           started + 60, lambda: check_alive(shared_guest))
    assert time.monotonic() - started < 15, "a mismatch must not be retried to the deadline"
    assert "refusing to connect" in info.value.hint
    # The right key still works: the refusal was about the key, not the guest.
    connect_with_retry("127.0.0.1", shared_guest.host_port, image.client_key,
                       image.host_key_pub, time.monotonic() + 60,
                       lambda: check_alive(shared_guest)).close()


@pytest.mark.timeout(240)
def test_qemu_runs_with_seccomp_sandbox(
    shared_guest: Machine, mdh_environment: Environment
) -> None:
    if not mdh_environment.info.sandbox_supported:
        pytest.skip(f"{mdh_environment.info.binary} has no -sandbox (built without seccomp)")
    argv = shared_guest.argv
    # Every QEMU with -sandbox (2.11 on) can deny these: 7.2 and 10.0 do.
    wanted = "on,obsolete=deny,elevateprivileges=deny,resourcecontrol=deny"
    assert argv[argv.index("-sandbox") + 1] == wanted
    cmdline = Path(f"/proc/{shared_guest.pid}/cmdline").read_bytes().split(b"\0")
    assert cmdline[cmdline.index(b"-sandbox") + 1] == wanted.encode()
    status = Path(f"/proc/{shared_guest.pid}/status").read_text()
    assert "\nSeccomp:\t2\n" in status, "QEMU runs without a seccomp filter"


def shell_uses(source: str, filename: str = "<string>") -> list[str]:
    """Calls that hand a string to a shell: shell=True, os.system, os.popen, getoutput."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Call):
            continue
        for keyword in node.keywords:
            if keyword.arg == "shell" and not (
                isinstance(keyword.value, ast.Constant) and keyword.value.value is False
            ):
                found.append(f"{filename}:{node.lineno}: shell={ast.unparse(keyword.value)}")
        name = ast.unparse(node.func)
        if name in {"os.system", "os.popen", "subprocess.getoutput",
                    "subprocess.getstatusoutput", "system", "popen"}:
            found.append(f"{filename}:{node.lineno}: {name}()")
    return found


@pytest.mark.timeout(30)
def test_no_shell_in_harness() -> None:
    # The scanner itself must see what it is looking for.
    assert len(shell_uses("import os, subprocess\nsubprocess.run('x', shell=True)\n"
                          "os.system('y')\nsubprocess.Popen('z', shell=flag)\n")) == 3
    # Every module of every subpackage, not only the top level.
    sources = sorted((REPO / "harness").rglob("*.py"))
    assert len(sources) > 10
    found = [hit for path in sources
             for hit in shell_uses(path.read_text(), str(path.relative_to(REPO)))]
    assert found == []


@pytest.mark.timeout(30)
def test_interrupted_qmp_call_leaves_no_unretrieved_task(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Ctrl-C while QMP waits (here: for a greeting that never comes) must unwind
    quietly; asyncio used to print "Task exception was never retrieved" and a
    traceback after the harness's own "interrupted" line."""
    ours, theirs = socket.socketpair()
    qmp = Qmp(ours)
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        # Python's own SIGINT handler: a bare KeyboardInterrupt, no message.
        with pytest.raises(KeyboardInterrupt, match=r"\A\Z"):
            qmp.connect(timeout=10)
    finally:
        timer.cancel()
        qmp.close()
        theirs.close()
    del qmp
    gc.collect()
    assert "never retrieved" not in caplog.text, caplog.text


_interrupt_next_fork: list[bool] = []


def _interrupt_during_fork() -> None:
    # Runs in the forking thread just before fork(): a Ctrl-C that arrives now is
    # the one CPython would raise inside an at-fork hook and then ignore.
    if _interrupt_next_fork:
        _interrupt_next_fork.clear()
        signal.pthread_kill(threading.get_ident(), signal.SIGINT)


os.register_at_fork(before=_interrupt_during_fork)


@pytest.mark.timeout(60)
def test_ctrl_c_while_qemu_is_forked_is_not_lost(
    mdh_environment: Environment, tmp_path: Path
) -> None:
    """With --jobs 1 the main thread forks QEMU; a Ctrl-C landing during that fork
    was swallowed ("Exception ignored in ... _releaseLock") and the run went on."""
    spec = mdh_environment.machine_spec((), tmp_path / "guest")
    machine = Machine(spec)
    _interrupt_next_fork.append(True)
    started = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt, match=r"\A\Z"):  # the bare one of SIGINT
            machine.__enter__()
    finally:
        _interrupt_next_fork.clear()
        machine.shutdown()
    assert machine.pid is not None, "QEMU was never started"
    assert_no_qemu_left(machine.pid, within=0.5)
    # No QMP session yet: no soft stop to wait for, QEMU is killed at once.
    assert time.monotonic() - started < 5


SSH_RETRY_CHILD = r"""
import socket, sys, threading, time
from pathlib import Path
from harness.errors import SshUnavailable
from harness.guest.ssh import connect_with_retry

# Accepts and hangs up at once, as slirp's forward does while the guest's sshd is down.
server = socket.create_server(("127.0.0.1", 0))
def serve():
    while True:
        server.accept()[0].close()
threading.Thread(target=serve, daemon=True).start()
try:
    connect_with_retry("127.0.0.1", server.getsockname()[1], Path(sys.argv[1]),
                       Path(sys.argv[2]), time.monotonic() + 1.0, lambda: None)
except SshUnavailable as exc:
    print("REFUSED", exc.message)
"""


@pytest.mark.timeout(30)
def test_ssh_retries_print_no_tracebacks(tmp_path: Path) -> None:
    """Each failed banner read used to dump paramiko's traceback on stderr."""
    key = Ed25519PrivateKey.generate()
    client = tmp_path / "client_key"
    client.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.OpenSSH,
                                         serialization.NoEncryption()))
    pinned = tmp_path / "host_key.pub"
    pinned.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b"\n")
    result = subprocess.run([sys.executable, "-c", SSH_RETRY_CHILD, str(client), str(pinned)],
                            capture_output=True, text=True, timeout=20, check=False, cwd=REPO)
    assert result.stdout.startswith("REFUSED no SSH session"), result.stdout + result.stderr
    assert result.stderr == ""


LIVENESS_CHILD = r"""
import sys
from pathlib import Path
from harness.qemu.accel import boot_liveness
from harness.config import Accel

print("PROBING", flush=True)
print(boot_liveness(Path(sys.argv[1]), Path(sys.argv[2]), Accel.TCG, timeout=60))
"""


@pytest.mark.timeout(60)
def test_sigkill_during_the_liveness_boot_leaves_nothing(
    tmp_path: Path, mdh_environment: Environment
) -> None:
    """The accelerator probe's QEMU (under KVM here it hangs; -S stands in for that
    anywhere) used to outlive a SIGKILLed harness, with its mdh-liveness-* dir."""
    wrapper = qemu_wrapper(tmp_path, old="-no-reboot", new="-S")  # paused: never a banner
    sandbox = Sandbox(tmp_path / "sandbox")
    child = subprocess.Popen(
        [sys.executable, "-c", LIVENESS_CHILD, str(wrapper), str(mdh_environment.image.vmlinux)],
        env=sandbox.env, stdout=subprocess.PIPE, text=True, cwd=REPO,
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "PROBING\n"
        deadline = time.monotonic() + 20
        while not (pids := marked_qemu_pids(sandbox.marker)):
            assert time.monotonic() < deadline, "the liveness QEMU never started"
            time.sleep(0.05)
        time.sleep(0.5)
        child.kill()
        child.wait(timeout=10)
    finally:
        child.kill()
        child.wait()
        if child.stdout is not None:
            child.stdout.close()
    assert_no_qemu_left(*pids, within=5.0)
    sandbox.assert_clean()


# Calls one of the image build's helper runners with a fake tool first on PATH.
HELPER_CHILD = r"""
import sys
from pathlib import Path
from harness.image.apt import PrivateApt, Suite
from harness.image.build import _run
from harness.image.apt import unpack_deb
which, work = sys.argv[1], Path(sys.argv[2])
if which == "apt-get":
    PrivateApt(Suite("bookworm", ()), work / "apt")._run("apt-get", ["update"])
elif which == "dpkg-deb":
    unpack_deb(work / "x.deb", work / "into")
else:
    _run(["gcc", "-o", str(work / "agent")], what="gcc")
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("tool", ["apt-get", "dpkg-deb", "gcc"])
def test_image_build_helpers_die_with_a_sigkilled_harness(tmp_path: Path, tool: str) -> None:
    """apt, dpkg-deb and gcc run long in an image build; a SIGKILLed harness must
    take them along (a parent-death signal), not leave them writing into the cache."""
    bin_dir, pid_file = tmp_path / "bin", tmp_path / "tool.pid"
    bin_dir.mkdir()
    fake = bin_dir / tool
    fake.write_text(f"#!/bin/sh\necho $$ > {pid_file}\nexec sleep 60\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    child = subprocess.Popen([sys.executable, "-c", HELPER_CHILD, tool, str(tmp_path)],
                             env=env, cwd=REPO)
    try:
        deadline = time.monotonic() + 20
        while not pid_file.exists() or not pid_file.read_text().strip():
            assert time.monotonic() < deadline and child.poll() is None, f"{tool} never ran"
            time.sleep(0.05)
        pid = int(pid_file.read_text())
        child.kill()
        child.wait(timeout=10)
    finally:
        child.kill()
        child.wait()
    deadline = time.monotonic() + 5
    while _alive(pid):
        assert time.monotonic() < deadline, f"{tool} (pid {pid}) outlived the harness"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][:1]
    except OSError:
        return False
    return state not in ("Z", "X")
