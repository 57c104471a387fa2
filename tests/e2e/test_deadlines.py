"""Every wait ends: a guest command that never stops printing, a FIFO given as a file,
another run holding the image cache lock, and a cache hit that must wait for nothing.

Each case runs the CLI in a ``Sandbox`` with short deadlines (MDH_TIMEOUT_SCALE), so a
wait that is not bounded shows as this test's timeout, never as a pass.  The image
cache is a private copy wherever the case holds its lock or plants something in it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.guest.ssh import OUTPUT_CAP
from harness.image.build import LOCK_WAIT_S
from harness.image.recipe import DEFAULT_RECIPE
from harness.libvirt.daemon import RUN_MARKER_ENV
from harness.proc import processes_with_env

from .helpers import REPO, libvirt_missing, needs_qemu, private_image_cache
from .leaks import Sandbox, kept_log_dirs

EXIT_ENVIRONMENT = 2
# The harness's own memory beside what it keeps of a command's output (Python,
# paramiko, the harness): measured ~75 MB.
_BASELINE_RSS = 200 << 20


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def _high_water(pid: int) -> int:
    """The process's peak resident memory so far in bytes (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@needs_qemu
@pytest.mark.timeout(150)
def test_a_guest_command_that_never_stops_printing_ends_at_its_deadline(tmp_path: Path) -> None:
    """``exec -- yes`` ends by its deadline (36 s at scale 0.2) or at the output cap,
    whichever comes first, with exit 2, one line and bounded memory.  A TCG guest
    prints ~2 MB/s, far from the cap here: test_ssh_limits drives the same loop past
    the cap with a faster sender."""
    sandbox = Sandbox(tmp_path)
    started = time.monotonic()
    running = sandbox.start(["exec", "--accel", "tcg", "--", "yes"],
                            env={"MDH_TIMEOUT_SCALE": "0.2"})
    peak = 0
    while running.proc.poll() is None and time.monotonic() - started < 120:
        peak = max(peak, _high_water(running.proc.pid))
        time.sleep(0.2)
    rc, stdout, stderr = running.finish(timeout=20)
    elapsed = time.monotonic() - started
    assert rc == EXIT_ENVIRONMENT, f"rc {rc}\n{stderr}"
    errors = _error_lines(stderr)
    assert len(errors) == 1, stderr
    assert "Traceback" not in stderr, stderr
    assert errors[0].endswith(": yes"), errors
    assert ("guest command did not finish within 36 s" in errors[0]
            or f"more than the output cap of {OUTPUT_CAP >> 20} MiB" in errors[0]), errors
    # The deadline counts from the command's start: boot (restored or cold) comes first.
    assert elapsed < 36 + 30, f"took {elapsed:.1f} s"
    assert stdout == "", "a command stopped at its deadline prints nothing of its output"
    assert 0 < peak < OUTPUT_CAP + _BASELINE_RSS, f"peak RSS {peak >> 20} MiB"
    sandbox.assert_clean(allowed=kept_log_dirs(stderr))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", ["exec", "run"])
def test_a_fifo_given_as_kernel_is_refused_at_once(tmp_path: Path, command: str) -> None:
    """open() of a FIFO waits for a writer forever; the harness must not."""
    fifo = tmp_path / "vmlinux"
    os.mkfifo(fifo)
    sandbox = Sandbox(tmp_path / "sandbox")
    args = [command, "--accel", "tcg", "--kernel", str(fifo)]
    if command == "exec":
        args += ["--", "true"]
    started = time.monotonic()
    result = sandbox.run(args, timeout=40, env={"MDH_CACHE_DIR": str(tmp_path / "cache")})
    assert time.monotonic() - started < 20
    assert result.returncode == EXIT_ENVIRONMENT, f"rc {result.returncode}\n{result.stderr}"
    assert _error_lines(result.stderr) == [
        f"error: --kernel {fifo} is a FIFO, not a regular file"], result.stderr
    assert "hint: pass a vmlinux (ELF) or a bzImage" in result.stderr
    assert not (tmp_path / "cache").exists(), "an image build was started"
    sandbox.assert_clean()


# A second harness process holding the image cache lock through the harness's own
# lock (so it says what it does the way a building run does), until stdin closes.
_HOLDER = """
import sys
from pathlib import Path
from harness.image.lock import cache_lock
with cache_lock(Path(sys.argv[1]), sys.argv[2], 10.0):
    print("held", flush=True)
    sys.stdin.read()
"""


def _hold_lock(lock: Path, what: str) -> subprocess.Popen[str]:
    lock.parent.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(lock), what], cwd=REPO,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    return holder


def _release(holder: subprocess.Popen[str]) -> None:
    assert holder.stdin is not None
    holder.stdin.close()
    holder.wait(timeout=10)


@needs_qemu
@pytest.mark.timeout(90)
def test_a_held_cache_lock_is_waited_for_aloud_and_not_forever(tmp_path: Path) -> None:
    """An empty private cache (a miss: the run must build) whose lock another process
    holds: the run says whom it waits for, then gives up with exit 2 at the scaled
    deadline (900 s x 0.005 = 4.5 s), naming the holder."""
    cache = tmp_path / "cache"
    holder = _hold_lock(cache / ".lock", f"building image {DEFAULT_RECIPE}")
    try:
        sandbox = Sandbox(tmp_path / "sandbox")
        started = time.monotonic()
        result = sandbox.run(["exec", "--accel", "tcg", "--", "true"], timeout=60,
                             env={"MDH_CACHE_DIR": str(cache), "MDH_TIMEOUT_SCALE": "0.005"})
        elapsed = time.monotonic() - started
    finally:
        _release(holder)
    wait = LOCK_WAIT_S * 0.005
    claim = f"pid {holder.pid}: building image {DEFAULT_RECIPE}"
    assert result.returncode == EXIT_ENVIRONMENT, f"rc {result.returncode}\n{result.stderr}"
    assert f"waiting for {claim} (the image cache {cache} is locked; up to {wait:.1f} s)" \
        in result.stderr
    assert _error_lines(result.stderr) == [
        f"error: the image cache lock {cache / '.lock'} is still held after {wait:.1f} s, "
        f"by {claim}"], result.stderr
    assert "Traceback" not in result.stderr
    assert wait <= elapsed < wait + 20, f"took {elapsed:.1f} s"
    assert "apt-get" not in result.stderr
    sandbox.assert_clean()


@needs_qemu
@pytest.mark.timeout(120)
def test_a_cache_hit_waits_for_no_lock_and_asks_no_apt(tmp_path: Path) -> None:
    """A cached image with a two-day-old resolution, while another process holds the
    cache lock and the archive is unreachable: the run uses the image at once, asks
    apt nothing and says how old the versions are."""
    cache = tmp_path / "cache"
    copy = private_image_cache(cache, time.time() - 2 * 86400)
    holder = _hold_lock(cache / ".lock", f"building image {DEFAULT_RECIPE}")
    try:
        sandbox = Sandbox(tmp_path / "sandbox")
        result = sandbox.run(
            ["exec", "--accel", "tcg", "--cold", "--", "uname", "-r"], timeout=100,
            env={"MDH_CACHE_DIR": str(cache),
                 # Nothing listens there: an apt call would fail (or hang) visibly.
                 "MDH_DEBIAN_MIRROR": "http://127.0.0.1:9/debian",
                 "MDH_DEBIAN_SECURITY_MIRROR": "http://127.0.0.1:9/debian-security"})
    finally:
        _release(holder)
    assert result.returncode == 0, result.stderr
    assert "guest image: cache hit" in result.stderr
    assert "resolved 2.0 days ago; 'multidevs-harness image build' picks up newer ones" \
        in result.stderr
    assert "waiting for" not in result.stderr
    assert "apt-get" not in result.stderr and "cannot refresh" not in result.stderr
    assert result.stdout.strip() == json.loads((copy / "manifest.json").read_text())[
        "kernel_release"]
    sandbox.assert_clean(allowed=kept_log_dirs(result.stderr))


# In a child process (it enters a mount namespace of its own and starts a private
# libvirtd there): stop libvirtd, then ask it something.
_LIBVIRT_CHILD = r"""
import json, os, signal, sys, time
from pathlib import Path
from harness.host.namespace import enter_private_namespace
from harness.libvirt.daemon import RUN_MARKER_ENV, import_libvirt, private_libvirt
from harness.proc import processes_with_env

enter_private_namespace()
libvirt, _ = import_libvirt()
out = {}
with private_libvirt(Path(sys.argv[1]), run_id=sys.argv[2]) as conn:
    (pid,) = processes_with_env(RUN_MARKER_ENV, sys.argv[2], comm_prefix="libvirtd")
    os.kill(pid, signal.SIGSTOP)
    started = time.monotonic()
    try:
        conn.listAllDomains(0)
        out["answered"] = True
    except libvirt.libvirtError as exc:
        out["error"] = exc.get_error_message()
    finally:
        out["seconds"] = time.monotonic() - started
        os.kill(pid, signal.SIGCONT)
print(json.dumps(out))
"""




@pytest.mark.timeout(120)
@pytest.mark.skipif(libvirt_missing() is not None, reason=str(libvirt_missing()))
def test_a_libvirt_call_to_a_stopped_libvirtd_ends(tmp_path: Path) -> None:
    """A libvirtd that stops answering (here SIGSTOP) mid-run: the client's call fails
    once the keepalive probes go unanswered (1 s x 3 at scale 0.2), instead of
    waiting forever."""
    run_id = f"mdh-lv-test-{os.getpid()}"
    try:
        result = subprocess.run(
            [sys.executable, "-c", _LIBVIRT_CHILD, str(tmp_path / "logs"), run_id], cwd=REPO,
            env={**os.environ, "MDH_TIMEOUT_SCALE": "0.2"}, capture_output=True, text=True,
            timeout=60, check=False)
    finally:
        # A child killed while libvirtd was stopped leaves it stopped: its parent-death
        # SIGTERM is delivered once it runs again.
        for pid in processes_with_env(RUN_MARKER_ENV, run_id, comm_prefix="libvirtd"):
            os.kill(pid, signal.SIGCONT)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.splitlines()[-1])
    assert "answered" not in out, out
    assert "keepalive" in out["error"], out
    assert 2 < out["seconds"] < 15, out
