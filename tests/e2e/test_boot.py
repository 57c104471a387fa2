"""Boot, exec and shut down real guests (TCG here; KVM where it works)."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import replace
from pathlib import Path

import pytest

from harness.environment import Environment
from harness.errors import GuestPanic, SshUnavailable
from harness.plugin import MachineFactory
from harness.qemu.machine import Machine
from harness.timeouts import Timeouts

from .helpers import run_harness
from .leaks import assert_no_qemu_left

pytestmark = pytest.mark.timeout(240)


def test_guest_runs_a_command_over_ssh(machine_factory: MachineFactory) -> None:
    guest = machine_factory()
    result = guest.run("uname -r; id -u; echo err >&2; exit 3")
    assert result.rc == 3
    lines = result.text.split()
    assert lines[0].endswith("-amd64") and lines[1] == "0"
    assert result.stderr == b"err\n"
    assert guest.boot_seconds is not None and guest.boot_seconds > 0


def test_shutdown_leaves_no_qemu(machine_factory: MachineFactory) -> None:
    guest = machine_factory()
    pid = guest.pid
    assert pid is not None
    guest.shutdown()
    assert not guest.is_running()
    assert_no_qemu_left(pid)


def test_guest_panic_fails_fast_with_console_tail(machine_factory: MachineFactory) -> None:
    # rdinit of a missing file makes the kernel panic before userspace starts.
    started = time.monotonic()
    with pytest.raises(GuestPanic, match=r"^guest0: the guest kernel panicked "
                       r"\('Kernel panic - not syncing: [^\n]*'\)\n") as info:
        machine_factory(extra_append=["rdinit=/no-such-init", "init=/no-such-init"])
    assert time.monotonic() - started < 60, "a panic must not wait for the boot timeout"
    assert "Kernel panic" in info.value.console_tail
    assert "panicked" in info.value.message


def test_killed_qemu_is_reported_not_hung(machine_factory: MachineFactory) -> None:
    guest: Machine = machine_factory()
    guest.kill()
    started = time.monotonic()
    with pytest.raises(SshUnavailable, match=r"^SSH (session to \S+ is closed|command failed "
                       r"in transport: true: )") as info:
        guest.run("true", timeout=20)
    # Reported at once, not after the command's 20 s deadline.
    assert time.monotonic() - started < 5
    assert "the guest or QEMU may have died" in info.value.hint or "closed" in info.value.message
    assert guest.stopped() == "QEMU exited with status -9"


def test_exec_cli_prints_kernel_release(tmp_path: Path) -> None:
    result = run_harness(["exec", "--accel", "tcg", "--", "uname", "-r"], timeout=200)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("-amd64")
    assert_no_qemu_left()


def test_shutdown_is_soft_when_qemu_answers(machine_factory: MachineFactory) -> None:
    guest = machine_factory()
    started = time.monotonic()
    guest.shutdown()
    assert guest.exit_code == 0, "QMP quit must end QEMU by itself"
    assert time.monotonic() - started < 5
    assert '"quit"' in guest.qmp_log_path.read_text()


def test_shutdown_is_hard_when_qemu_does_not_answer(
    mdh_environment: Environment, tmp_path: Path
) -> None:
    """A QEMU that cannot answer QMP (stopped here with SIGSTOP) is SIGKILLed after the
    soft stop's deadlines, not waited for forever."""
    spec = replace(mdh_environment.machine_spec((), tmp_path),
                   timeouts=Timeouts(boot=90, command=60, shutdown=1, qmp=1))
    with Machine(spec, name="stuck") as guest:
        guest.wait_ready()
        assert guest.pid is not None
        os.kill(guest.pid, signal.SIGSTOP)
        started = time.monotonic()
        guest.shutdown()
        assert time.monotonic() - started < 8
    assert guest.exit_code == -signal.SIGKILL
    assert_no_qemu_left(guest.pid)
