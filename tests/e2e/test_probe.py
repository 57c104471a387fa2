"""Probing real and fake QEMU binaries, and the KVM liveness boot (no guest image needed)."""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from harness.config import SANDBOX_DENY, Accel
from harness.errors import QemuNotFound, QemuTooOld
from harness.qemu.accel import boot_liveness, clear_liveness_memo, kvm_liveness_probe
from harness.qemu.probe import probe_qemu, require_multidevs
from harness.version import Version

from .helpers import needs_qemu, real_qemu
from .kernel_path import NO_KERNEL_REASON, find_test_kernel

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]


def version_line(binary: Path) -> tuple[int, int, int]:
    """The version ``--version`` prints, read here independently of the harness."""
    text = subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                          timeout=15, check=True).stdout
    match = re.search(r"version (\d+)\.(\d+)\.(\d+)", text)
    assert match, text
    major, minor, micro = (int(part) for part in match.groups())
    return major, minor, micro


def own_children() -> list[str]:
    """Command lines of live (non-zombie) processes whose parent is this test process."""
    found = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            text = Path(stat).read_text()
            cmdline = Path(stat).with_name("cmdline").read_bytes()
        except OSError:
            continue
        state, ppid = text.rsplit(") ", 1)[1].split()[:2]
        if int(ppid) == os.getpid() and state != "Z":
            found.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
    return found


def processes_with(marker: str) -> list[str]:
    """Command lines of any process on the machine that contain ``marker``."""
    found = []
    for path in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            cmdline = Path(path).read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            found.append(cmdline)
    return found


def fake_qemu(tmp_path: Path, version_line: str, otherwise: str) -> Path:
    """A shell script that answers --version with ``version_line`` and runs ``otherwise``
    for any other arguments (which is where a real QEMU would start a QMP monitor)."""
    script = tmp_path / "qemu-system-x86_64"
    script.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = "--version" ]; then\n'
        f"    echo '{version_line}'\n"
        "    echo 'Copyright (c) 2003-2019 Fabrice Bellard and the QEMU Project developers'\n"
        "    exit 0\n"
        "fi\n"
        f"{otherwise}\n"
    )
    script.chmod(0o755)
    return script


@needs_qemu
def test_probe_real_qemu(tmp_path: Path) -> None:
    qemu = real_qemu()
    log = tmp_path / "qmp.jsonl"
    began = time.monotonic()
    info = probe_qemu(qemu, qmp_log=log)
    assert time.monotonic() - began < 15
    assert info.binary == qemu
    # QMP's query-version must agree with what the binary prints.
    assert info.version == version_line(qemu)
    assert info.version >= Version(4, 2, 0)
    assert info.multidevs_supported is True
    # Every QEMU since 2.11 knows these -sandbox sets (7.2 and 10.0 do).
    assert info.sandbox_supported is True
    assert info.sandbox_deny == SANDBOX_DENY
    assert info.kvm_device == os.access("/dev/kvm", os.R_OK | os.W_OK)
    require_multidevs(info)
    sent = [json.loads(line).get("send") for line in log.read_text().splitlines()]
    assert {"execute": "query-command-line-options", "arguments": {"option": "fsdev"}} in sent
    assert own_children() == []


@needs_qemu
def test_probe_finds_qemu_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    qemu = real_qemu()
    monkeypatch.setenv("PATH", str(qemu.parent))
    assert probe_qemu("qemu-system-x86_64").binary == qemu


def test_old_qemu_is_reported_then_refused(tmp_path: Path) -> None:
    # A 4.1 cannot know multidevs, so the probe does not start QMP at all: the fake
    # failing every other invocation must not matter, and probe --json can report it.
    fake = fake_qemu(tmp_path, "QEMU emulator version 4.1.0", "echo 'qemu: bad option' >&2; exit 1")
    info = probe_qemu(fake, timeout=10)
    assert info.version == Version(4, 1, 0)
    assert info.multidevs_supported is False
    with pytest.raises(QemuTooOld, match=r"^" + re.escape(
            f"{fake} is QEMU 4.1.0; multidevs needs QEMU >= 4.2")) as caught:
        require_multidevs(info)
    assert caught.value.message == f"{fake} is QEMU 4.1.0; multidevs needs QEMU >= 4.2"
    assert caught.value.exit_code == 2


def test_qemu_that_fails_qmp_is_not_found(tmp_path: Path) -> None:
    fake = fake_qemu(
        tmp_path,
        "QEMU emulator version 7.2.0",
        "echo 'qemu-system-x86_64: -chardev socket,id=qmp: nonsense 4711' >&2; exit 1",
    )
    with pytest.raises(QemuNotFound, match=r"^" + re.escape(
            f"{fake} printed a QEMU version but did not answer QMP (exit status 1): ")
    ) as caught:
        probe_qemu(fake, timeout=10)
    assert caught.value.message.startswith(
        f"{fake} printed a QEMU version but did not answer QMP (exit status 1): "
    )
    assert "nonsense 4711" in caught.value.details
    assert "install qemu-system-x86 or pass --qemu PATH" in caught.value.hint
    assert own_children() == []


def test_silent_qemu_times_out_and_its_group_is_killed(tmp_path: Path) -> None:
    # The backgrounded sleep is what a leaky probe would leave behind: only killing
    # the process group, not just the shell, ends it.  Its odd duration marks it.
    marker = f"299.{os.getpid()}"
    fake = fake_qemu(tmp_path, "QEMU emulator version 7.2.0", f"sleep {marker} & wait")
    began = time.monotonic()
    with pytest.raises(QemuNotFound, match=r"^" + re.escape(
            f"{fake} printed a QEMU version but did not answer QMP (still running): "
            "QEMU sent no QMP greeting within ")) as caught:
        probe_qemu(fake, timeout=2)
    assert time.monotonic() - began < 10
    assert "(still running)" in caught.value.message
    assert "no QMP greeting within" in caught.value.message
    assert processes_with(f"sleep {marker}") == []
    assert own_children() == []


def test_not_qemu_at_all(tmp_path: Path) -> None:
    with pytest.raises(QemuNotFound, match=r"^/bin/true is not QEMU: 'true --version' exited 0 "
                       r"without a 'QEMU emulator version' line") as caught:
        probe_qemu(Path("/bin/true"))
    assert caught.value.message == (
        "/bin/true is not QEMU: 'true --version' exited 0 without a 'QEMU emulator version' line"
    )
    script = tmp_path / "qemu"
    script.write_text("#!/bin/sh\necho 'GNU bash, version 5.2.15(1)-release'\necho oops >&2\n")
    script.chmod(0o755)
    with pytest.raises(QemuNotFound, match=r"^" + re.escape(
            f"{script} is not QEMU: 'qemu --version' exited 0")) as caught:
        probe_qemu(script)
    assert caught.value.message.startswith(f"{script} is not QEMU: 'qemu --version' exited 0")
    assert "GNU bash, version 5.2.15" in caught.value.details
    assert "oops" in caught.value.details


def test_missing_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(QemuNotFound, match=r"^" + re.escape(
            f"QEMU binary {tmp_path / 'nope'} does not exist")) as caught:
        probe_qemu(tmp_path / "nope")
    assert caught.value.message == f"QEMU binary {tmp_path / 'nope'} does not exist"
    assert caught.value.hint == "install qemu-system-x86 or pass --qemu PATH"
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(QemuNotFound, match=r"'qemu-system-x86_64' is not on PATH"):
        probe_qemu("qemu-system-x86_64")


# --- KVM liveness -----------------------------------------------------------------


KERNEL = find_test_kernel()
needs_kernel = pytest.mark.skipif(KERNEL is None, reason=NO_KERNEL_REASON)


@needs_qemu
@needs_kernel
def test_kvm_liveness_answers_quickly_and_is_memoised() -> None:
    assert KERNEL is not None
    qemu = real_qemu()
    clear_liveness_memo()
    began = time.monotonic()
    ok, detail = kvm_liveness_probe(qemu, KERNEL)
    took = time.monotonic() - began
    assert took < 20, f"liveness took {took:.1f} s"
    # Where KVM works the banner shows; here (nested virtualisation) it does not, and
    # the reason must say so in words fit for the report.
    if ok:
        assert detail.startswith("a guest kernel printed its banner after ")
    else:
        assert "under KVM" in detail or detail.startswith("QEMU exited with status")
    began = time.monotonic()
    assert kvm_liveness_probe(qemu, KERNEL) == (ok, detail)
    assert time.monotonic() - began < 0.1
    assert own_children() == []
    clear_liveness_memo()


@needs_qemu
@needs_kernel
def test_liveness_machinery_sees_the_banner_under_tcg() -> None:
    # The positive control: the same boot under TCG must show the banner, so a
    # False from the KVM probe means KVM, not a broken probe.
    assert KERNEL is not None
    ok, detail = boot_liveness(real_qemu(), KERNEL, Accel.TCG, timeout=20)
    assert ok, detail
    assert detail.startswith("a guest kernel printed its banner after ")
    assert own_children() == []
