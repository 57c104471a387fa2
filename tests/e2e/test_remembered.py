"""exec reuses what it found out before: the QEMU probe's answers and the KVM
liveness answer, until what they depend on changes; a remembered "KVM works" that
stops working is dropped and KVM checked again.

Each test runs QEMU through a private wrapper script: its identity is its own, so
the remembered answers these tests make, change and plant touch no other run.  (A
copy of the binary would not do: QEMU finds its accelerator modules by its path.)  --cold:
no saved guest state is made for a binary that is deleted afterwards.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness import paths
from harness.environment import find_datadirs
from harness.image.build import build_image
from harness.qemu.remembered import Liveness, liveness_key, load_liveness, store_liveness

from .helpers import needs_qemu, real_qemu
from .leaks import Sandbox

pytestmark = [needs_qemu, pytest.mark.timeout(400)]

PROBED = "probed"
PROBE_CACHED = "probe answers remembered (cached)"
ACCEL_CACHED = "(cached: decided at "


def private_qemu(directory: Path) -> Path:
    path = directory / "qemu-private"
    path.write_text(f'#!/bin/sh\nexec {real_qemu()} "$@"\n')
    path.chmod(0o755)
    return path


def exec_uname(sandbox: Sandbox, qemu: Path) -> str:
    result = sandbox.run(["exec", "--cold", "--qemu", str(qemu), "--", "uname", "-r"],
                         timeout=150)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("-amd64"), result.stdout
    return result.stderr


def accel_line(stderr: str) -> str:
    return next(line for line in stderr.splitlines() if "accelerator:" in line)


def test_second_exec_reuses_the_answers_until_qemu_changes(tmp_path: Path) -> None:
    qemu = private_qemu(tmp_path)
    sandbox = Sandbox(tmp_path / "sandbox")
    first = exec_uname(sandbox, qemu)
    assert f"{qemu}: {PROBED}" in first, first
    assert ACCEL_CACHED not in accel_line(first)
    second = exec_uname(sandbox, qemu)
    assert f"{qemu}: {PROBE_CACHED}" in second, second
    assert ACCEL_CACHED in accel_line(second), second
    # The decision itself is the same one, only not paid for again.
    assert accel_line(second).split("): ", 1)[1] == accel_line(first).split(": ", 2)[2]
    # Another build of "the same" QEMU (same path, new mtime) is asked again.
    os.utime(qemu, ns=(1_000_000_000, 1_000_000_000))
    third = exec_uname(sandbox, qemu)
    assert f"{qemu}: {PROBED}" in third, third
    assert ACCEL_CACHED not in accel_line(third), third
    sandbox.assert_clean()


def test_a_remembered_kvm_works_that_fails_falls_back_once(tmp_path: Path) -> None:
    qemu = private_qemu(tmp_path)
    # The firmware directories the run passes this QEMU (a script outside the system
    # prefix, with no firmware of its own: the host's) are part of the key.
    key = liveness_key(qemu, build_image().vmlinux, find_datadirs(qemu))
    root = paths.remembered_dir()
    sandbox = Sandbox(tmp_path / "sandbox")
    first = exec_uname(sandbox, qemu)
    if "accelerator: kvm" in first:
        pytest.skip("KVM runs guests here: a remembered 'KVM works' cannot go stale")
    # Plant the answer a host where KVM used to work would have left behind.
    store_liveness(root, key, Liveness(True, "a guest kernel printed its banner", 1.0))
    stderr = exec_uname(sandbox, qemu)
    assert "accelerator: kvm (cached: decided at " in stderr, stderr
    assert "the guest failed under KVM, which was remembered as working" in stderr, stderr
    assert "forgot that, checking KVM again" in stderr
    assert stderr.count("booting guest (kvm)") == 1 and "booting guest (tcg)" in stderr
    assert "accelerator: tcg: KVM unusable, fell back to TCG" in stderr, stderr
    found = load_liveness(root, key)
    assert found is not None and not found.alive, "the re-check must be remembered"
    sandbox.assert_clean(allowed=[sandbox.log_base])
