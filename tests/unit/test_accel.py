"""The accelerator decision table, with the liveness check injected."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import pytest

from harness.config import Accel
from harness.errors import KvmUnavailable
from harness.qemu import accel
from harness.qemu.accel import AccelDecision, decide_accel, kvm_liveness_probe
from harness.qemu.probe import QemuInfo
from harness.version import Version

HANG = (
    "/dev/kvm opens but a guest kernel printed nothing within 8 s under KVM "
    "(nested virtualisation?)"
)
NO_DEVICE = "/dev/kvm is missing or cannot be opened read-write"


def info(kvm_device: bool) -> QemuInfo:
    return QemuInfo(
        Path("/usr/bin/qemu-system-x86_64"), Version(7, 2, 22), True, True, kvm_device
    )


class Liveness:
    """A liveness stub that counts its calls."""

    def __init__(self, alive: bool, detail: str) -> None:
        self.result = (alive, detail)
        self.calls = 0

    def __call__(self) -> tuple[bool, str]:
        self.calls += 1
        return self.result


ALIVE = (True, "a guest kernel printed its banner after 0.3 s")
DEAD = (False, HANG)


@pytest.mark.parametrize("device", [True, False])
@pytest.mark.parametrize("live", [ALIVE, DEAD])
def test_tcg_is_tcg_without_asking(device: bool, live: tuple[bool, str]) -> None:
    probe = Liveness(*live)
    assert decide_accel(Accel.TCG, info(device), probe) == AccelDecision(
        Accel.TCG, "TCG requested (--accel tcg)", fell_back=False
    )
    assert probe.calls == 0


@pytest.mark.parametrize("requested", [Accel.KVM, Accel.AUTO])
def test_kvm_when_device_and_liveness_hold(requested: Accel) -> None:
    probe = Liveness(*ALIVE)
    assert decide_accel(requested, info(True), probe) == AccelDecision(
        Accel.KVM, "KVM works: a guest kernel printed its banner after 0.3 s", fell_back=False
    )
    assert probe.calls == 1


def test_auto_falls_back_when_the_guest_hangs() -> None:
    assert decide_accel(Accel.AUTO, info(True), Liveness(*DEAD)) == AccelDecision(
        Accel.TCG, f"KVM unusable, fell back to TCG: {HANG}", fell_back=True
    )


def test_auto_falls_back_without_a_device_and_skips_the_boot() -> None:
    probe = Liveness(*ALIVE)
    assert decide_accel(Accel.AUTO, info(False), probe) == AccelDecision(
        Accel.TCG, f"KVM unusable, fell back to TCG: {NO_DEVICE}", fell_back=True
    )
    assert probe.calls == 0


def test_kvm_required_but_guest_hangs_raises() -> None:
    with pytest.raises(KvmUnavailable, match="^" + re.escape(
            f"--accel kvm was requested but KVM cannot run a guest here: {HANG}\n")) as caught:
        decide_accel(Accel.KVM, info(True), Liveness(*DEAD))
    assert caught.value.message == (
        f"--accel kvm was requested but KVM cannot run a guest here: {HANG}"
    )
    assert caught.value.hint == "use --accel tcg or auto"
    assert caught.value.exit_code == 2


def test_kvm_required_without_a_device_raises() -> None:
    probe = Liveness(*ALIVE)
    with pytest.raises(KvmUnavailable, match="cannot run a guest here: /dev/kvm is missing"):
        decide_accel(Accel.KVM, info(False), probe)
    assert probe.calls == 0


def test_liveness_is_memoised_per_qemu_and_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Path, Path, Accel, float]] = []

    def fake_boot(qemu: Path, kernel: Path, how: Accel, timeout: float,
                  datadirs: Sequence[Path] = ()) -> tuple[bool, str]:
        calls.append((qemu, kernel, how, timeout))
        return False, f"no banner from {kernel.name}"

    monkeypatch.setattr(accel, "boot_liveness", fake_boot)
    accel.clear_liveness_memo()
    try:
        first = kvm_liveness_probe(Path("/q/qemu"), Path("/k/vmlinux"), timeout=3.0)
        again = kvm_liveness_probe(Path("/q/qemu"), Path("/k/vmlinux"))
        other = kvm_liveness_probe(Path("/q/qemu"), Path("/k/vmlinuz"))
    finally:
        accel.clear_liveness_memo()
    assert first == again == (False, "no banner from vmlinux")
    assert other == (False, "no banner from vmlinuz")
    assert calls == [
        (Path("/q/qemu"), Path("/k/vmlinux"), Accel.KVM, 3.0),
        (Path("/q/qemu"), Path("/k/vmlinuz"), Accel.KVM, 4.0),
    ]
