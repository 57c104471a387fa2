"""The rendered command line is accepted by the real QEMU, commas in paths and all.

QEMU starts paused (-S), so no guest runs: a mis-escaped ``path=`` would make QEMU
reject the option or fail to open the directory, and the QMP monitor on the
inherited fd shows the devices and the SSH forward as rendered.
"""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
from pathlib import Path

import pytest

from harness.config import Accel, BootMethod, Mode
from harness.image.artefacts import GuestImage
from harness.proc import kill_process_group, tail_text
from harness.qemu.cmdline import kernel_append, render_command, shell_quote_command
from harness.qemu.probe import probe_qemu
from harness.qemu.qmp import Qmp
from harness.qemu.spec import ExportSpec, MachineSpec

from .helpers import needs_qemu, real_qemu
from .kernel_path import NO_KERNEL_REASON, find_test_kernel

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

KERNEL = find_test_kernel()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@needs_qemu
@pytest.mark.skipif(KERNEL is None, reason=NO_KERNEL_REASON)
def test_rendered_command_is_accepted_by_qemu(tmp_path: Path) -> None:
    root = tmp_path / "odd,dir"
    shares = [root / "share,one", root / "share two"]
    for share in shares:
        share.mkdir(parents=True)
    # -S: QEMU parses and loads the kernel but never runs it.
    assert KERNEL is not None
    kernel = root / "vmlinuz,x"
    kernel.symlink_to(KERNEL)
    initrd = root / "initrd"
    initrd.write_bytes(b"\0" * 512)
    image = GuestImage(
        directory=root,
        recipe="test",
        cache_key="k",
        kernel_release="x",
        vmlinux=kernel,
        vmlinuz=kernel,
        initrd=initrd,
        host_key_pub=root / "h",
        client_key=root / "c",
        client_key_pub=root / "c.pub",
    )
    exports = (
        ExportSpec(tag="t0", path=shares[0], mode=Mode.REMAP, mount_point="/mnt/t0"),
        ExportSpec(tag="t1", path=shares[1], mode=Mode.DEFAULT, mount_point="/mnt/t1"),
    )
    qemu = real_qemu()
    info = probe_qemu(qemu)
    spec = MachineSpec(
        qemu=qemu,
        accel=Accel.TCG,
        image=image,
        log_dir=tmp_path,
        exports=exports,
        boot=BootMethod.BZIMAGE,
        sandbox=info.sandbox_supported,
    )
    port = free_port()
    console = root / "console,log"
    ours, theirs = socket.socketpair()
    argv = render_command(
        spec,
        console_path=console,
        qmp_fd=theirs.fileno(),
        host_port=port,
        append=kernel_append(exports),
    )
    argv.insert(1, "-S")
    stderr = tmp_path / "stderr"
    with open(stderr, "wb") as err:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            pass_fds=(theirs.fileno(),),
            start_new_session=True,
        )
    theirs.close()
    try:
        with Qmp(ours, log_path=tmp_path / "qmp.jsonl") as qmp:
            try:
                qmp.connect(timeout=10)
            except Exception:
                pytest.fail(
                    f"QEMU rejected {shell_quote_command(argv)}:\n{tail_text(stderr.read_bytes())}"
                )
            qtree = qmp.human("info qtree")
            usernet = qmp.human("info usernet")
            chardevs = qmp.execute("query-chardev")
            qmp.quit()
        assert proc.wait(timeout=10) == 0
    finally:
        with contextlib.suppress(OSError):
            ours.close()
        kill_process_group(proc)
    assert 'mount_tag = "t0"' in qtree and 'mount_tag = "t1"' in qtree
    assert 'fsdev = "fsdev0"' in qtree and 'fsdev = "fsdev1"' in qtree
    # Columns: FD, then source address and port, then destination address and port.
    forward = rf"TCP\[HOST_FORWARD\]\s+\d+\s+127\.0\.0\.1\s+{port}\s+10\.0\.2\.15\s+22\s"
    assert re.search(forward, usernet), usernet
    assert isinstance(chardevs, list)
    labels = {c["label"]: c["filename"] for c in chardevs if isinstance(c, dict)}
    assert labels["console"] == "file"
    assert labels["qmp"].startswith("unix:")
    # The console file exists under its exact (comma-containing) name.
    assert console.is_file()
    assert "-sandbox" in argv
