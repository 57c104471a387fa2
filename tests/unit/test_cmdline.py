"""The QEMU command line and guest kernel command line, rendered without running QEMU."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from harness.config import Accel, BootMethod, Mode
from harness.errors import UsageError
from harness.image.artefacts import GuestImage
from harness.qemu.cmdline import (
    escape_opt,
    fits_kernel_line,
    fsdev_args,
    kernel_append,
    kernel_args,
    machine_args,
    net_args,
    qmp_args,
    render_command,
    serial_args,
    slot_exports,
)
from harness.qemu.guest_mounts import kernel_exports, mounted_over_ssh
from harness.qemu.spec import ExportSpec, MachineSpec

IMAGE = GuestImage(
    directory=Path("/cache/img"),
    recipe="debian-bookworm-x86_64",
    cache_key="k",
    kernel_release="6.1.0-56-amd64",
    vmlinux=Path("/cache/img/vmlinux"),
    vmlinuz=Path("/cache/img/vmlinuz"),
    initrd=Path("/cache/img/initrd"),
    host_key_pub=Path("/cache/img/host_key.pub"),
    client_key=Path("/cache/img/client_key"),
    client_key_pub=Path("/cache/img/client_key.pub"),
)
OPTS = "trans=virtio,version=9p2000.L,cache=none,msize=131072"


def export(tag: str = "t0", mode: Mode = Mode.REMAP, **kw: Any) -> ExportSpec:
    spec = ExportSpec(tag=tag, path=Path("/srv/x"), mode=mode, mount_point="/mnt/x")
    return replace(spec, **kw)


def spec(**kw: Any) -> MachineSpec:
    base = MachineSpec(
        qemu=Path("/usr/bin/qemu-system-x86_64"),
        accel=Accel.TCG,
        image=IMAGE,
        log_dir=Path("/tmp/logs"),
        exports=(export("t0"), export("t1", Mode.DEFAULT, path=Path("/srv/y"))),
        sandbox=True,
    )
    return replace(base, **kw)


def pairs(argv: list[str], option: str) -> list[str]:
    """Every value that follows ``option`` in ``argv``."""
    return [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == option]


# --- fsdev ------------------------------------------------------------------------


def test_fsdev_escapes_commas_in_the_path() -> None:
    args = fsdev_args(export(path=Path("/srv/a,b/c,,d")), 3)
    assert args == [
        "-fsdev",
        "local,id=fsdev3,path=/srv/a,,b/c,,,,d,security_model=none,multidevs=remap",
        "-device",
        "virtio-9p-pci,id=fs3,fsdev=fsdev3,mount_tag=t0",
    ]


def test_fsdev_escapes_commas_in_the_security_model() -> None:
    args = fsdev_args(export(security_model="mapped-xattr,x"), 0)
    assert "security_model=mapped-xattr,,x" in args[1]


@pytest.mark.parametrize("mode", [Mode.REMAP, Mode.WARN, Mode.FORBID])
def test_fsdev_names_the_mode(mode: Mode) -> None:
    assert fsdev_args(export(mode=mode), 0)[1].endswith(f",multidevs={mode.value}")


def test_fsdev_omits_multidevs_for_default() -> None:
    args = fsdev_args(export(mode=Mode.DEFAULT), 0)
    assert args[1] == "local,id=fsdev0,path=/srv/x,security_model=none"
    assert "multidevs" not in " ".join(args)


def test_fsdev_readonly() -> None:
    assert fsdev_args(export(readonly=True), 0)[1].endswith(",multidevs=remap,readonly=on")


@pytest.mark.parametrize("tag", ["", "a b", "a,b", "tag:x", "t'q", "ü"])
def test_fsdev_rejects_unsafe_tags(tag: str) -> None:
    with pytest.raises(UsageError, match="may only contain letters, digits and _ . / -"):
        fsdev_args(export(tag=tag), 0)


def test_escape_opt() -> None:
    assert escape_opt("a,b,,c") == "a,,b,,,,c"
    assert escape_opt("plain") == "plain"


# --- other groups -----------------------------------------------------------------


def test_hostfwd_is_bound_to_loopback_and_skips_the_option_rom() -> None:
    assert net_args(2222) == [
        "-netdev",
        "user,id=net0,hostfwd=tcp:127.0.0.1:2222-:22",
        "-device",
        "virtio-net-pci,netdev=net0,romfile=",
    ]


def test_port_zero_lets_qemu_pick() -> None:
    assert net_args(0)[1] == "user,id=net0,hostfwd=tcp:127.0.0.1:0-:22"


@pytest.mark.parametrize("port", [-1, 65536])
def test_net_rejects_bad_ports(port: int) -> None:
    with pytest.raises(UsageError, match=r"^SSH forward port must be 0\.\.65535 \(0: QEMU "
                       rf"picks\), got {port}\n") as caught:
        net_args(port)
    assert caught.value.message == (
        f"SSH forward port must be 0..65535 (0: QEMU picks), got {port}"
    )


def test_serial_console_goes_to_an_escaped_file() -> None:
    assert serial_args(Path("/logs/a,b/console.log")) == [
        "-chardev",
        "file,id=console,path=/logs/a,,b/console.log",
        "-serial",
        "chardev:console",
    ]


def test_qmp_uses_the_inherited_fd() -> None:
    assert qmp_args(7) == ["-chardev", "socket,id=qmp,fd=7", "-mon", "chardev=qmp,mode=control"]


def test_a_qemu_with_the_monitor_object_gets_it_not_the_deprecated_mon() -> None:
    assert qmp_args(7, monitor_object=True) == [
        "-chardev", "socket,id=qmp,fd=7", "-object", "monitor-qmp,id=qmpmon,chardev=qmp"]
    argv = render_command(spec(monitor_object=True), console_path=Path("/c"), qmp_fd=9,
                          host_port=0, append="")
    assert "-mon" not in argv and "monitor-qmp,id=qmpmon,chardev=qmp" in argv


def test_machine_tcg_gets_rdrand_not_cpu_host() -> None:
    assert machine_args(spec(memory_mb=384, cpus=2)) == [
        "-machine", "q35",
        "-accel", "tcg",
        "-cpu", "qemu64,+rdrand",
        "-m", "384",
        "-smp", "2",
        "-nodefaults",
        "-no-user-config",
        "-display", "none",
        "-vga", "none",
    ]  # fmt: skip


def test_machine_kvm_uses_the_host_cpu() -> None:
    args = machine_args(spec(accel=Accel.KVM))
    assert args[:6] == ["-machine", "q35", "-accel", "kvm", "-cpu", "host"]


def test_kernel_pvh_boots_vmlinux_and_bzimage_boots_vmlinuz() -> None:
    assert kernel_args(spec(), "x y") == [
        "-kernel", "/cache/img/vmlinux",
        "-initrd", "/cache/img/initrd",
        "-append", "x y",
    ]  # fmt: skip
    assert kernel_args(spec(boot=BootMethod.BZIMAGE), "x")[1] == "/cache/img/vmlinuz"


def test_kernel_paths_are_not_escaped() -> None:
    # -kernel/-initrd are taken verbatim by QEMU (not QemuOpts): ",," would be wrong.
    image = replace(IMAGE, vmlinux=Path("/c,d/vmlinux"))
    assert pairs(kernel_args(spec(image=image), "a"), "-kernel") == ["/c,d/vmlinux"]


# --- whole command ----------------------------------------------------------------


def test_render_command_composes_every_group() -> None:
    argv = render_command(
        spec(),
        console_path=Path("/tmp/logs/console.log"),
        qmp_fd=5,
        host_port=40022,
        append="console=ttyS0",
    )
    assert argv[0] == "/usr/bin/qemu-system-x86_64"
    assert pairs(argv, "-fsdev") == [
        "local,id=fsdev0,path=/srv/x,security_model=none,multidevs=remap",
        "local,id=fsdev1,path=/srv/y,security_model=none",
    ]
    assert pairs(argv, "-device") == [
        "virtio-9p-pci,id=fs0,fsdev=fsdev0,mount_tag=t0",
        "virtio-9p-pci,id=fs1,fsdev=fsdev1,mount_tag=t1",
        "virtio-net-pci,netdev=net0,romfile=",
    ]
    assert pairs(argv, "-chardev") == [
        "file,id=console,path=/tmp/logs/console.log",
        "socket,id=qmp,fd=5",
    ]
    assert pairs(argv, "-sandbox") == ["on"]
    assert pairs(argv, "-append") == ["console=ttyS0"]
    assert argv[-1] == "-no-reboot"


def test_render_command_sandbox_only_when_the_probe_found_it() -> None:
    def render(machine: MachineSpec) -> list[str]:
        return render_command(machine, console_path=Path("/c"), qmp_fd=5, host_port=2222,
                              append="")

    assert pairs(render(spec()), "-sandbox") == ["on"]
    assert "-sandbox" not in render(spec(sandbox=False))
    denied = spec(sandbox_deny=("elevateprivileges", "resourcecontrol"))
    assert pairs(render(denied), "-sandbox") == [
        "on,elevateprivileges=deny,resourcecontrol=deny"]


def test_render_command_without_qmp_for_reproduction() -> None:
    argv = render_command(spec(), console_path=Path("/c"), qmp_fd=None, host_port=2222, append="")
    assert "-mon" not in argv
    assert "socket,id=qmp,fd=5" not in argv


# --- kernel command line ----------------------------------------------------------


def test_kernel_append_base_and_mdh_items() -> None:
    line = kernel_append(
        [export("t0"), export("data_1", Mode.DEFAULT, mount_point="/mnt/d-1.x", cache="loose")],
        ["loglevel=7"],
    )
    assert line == (
        "console=ttyS0 panic=-1 oops=panic quiet cryptomgr.notests norandmaps "
        f"mdh_9p=t0:/mnt/x:{OPTS} "
        "mdh_9p=data_1:/mnt/d-1.x:trans=virtio,version=9p2000.L,cache=loose,msize=131072 "
        "loglevel=7"
    )


def test_kernel_append_readonly_mounts_ro() -> None:
    assert kernel_append([export(readonly=True)]).endswith(f"mdh_9p=t0:/mnt/x:{OPTS},ro")


def test_kernel_append_without_exports() -> None:
    assert kernel_append([]) == (
        "console=ttyS0 panic=-1 oops=panic quiet cryptomgr.notests norandmaps")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("tag", "bad tag", "9p mount tag 'bad tag' may only contain"),
        ("tag", "a:b", "9p mount tag 'a:b' may only contain"),
        ("mount_point", "/mnt/a b", "guest mount point '/mnt/a b' may only contain"),
        ("mount_point", "/mnt/a,b", "guest mount point '/mnt/a,b' may only contain"),
        ("mount_point", "mnt/x", "guest mount point 'mnt/x' is not absolute"),
        ("cache", "none,x", "9p cache mode 'none,x' is not a plain word"),
    ],
)
def test_kernel_append_rejects(field: str, value: str, message: str) -> None:
    changes: dict[str, Any] = {field: value}
    with pytest.raises(UsageError, match="^" + re.escape(message)) as caught:
        kernel_append([export(**changes)])
    assert caught.value.message.startswith(message)


@pytest.mark.parametrize("extra", ["", "a b", 'x="y"'])
def test_kernel_append_rejects_bad_extra(extra: str) -> None:
    with pytest.raises(UsageError, match="is empty or contains spaces or quotes"):
        kernel_append([], [extra])


def test_kernel_append_refuses_an_overlong_line() -> None:
    exports = [export(f"tag{i:03d}", mount_point=f"/mnt/{'m' * 40}{i}") for i in range(40)]
    with pytest.raises(UsageError, match=r"would be \d+ bytes; x86 allows 2047"):
        kernel_append(exports)


def test_exports_that_overflow_the_line_are_mounted_over_ssh() -> None:
    # 57 exports (the control guest of --cache none,loose,fscache) overflow x86's line:
    # the kernel is told of none, and every one is mounted over SSH once it answers.
    many = [export(f"mdh{i}", mount_point=f"/mnt/mdh/e{i}", cache="fscache") for i in range(57)]
    assert not fits_kernel_line(many)
    assert kernel_exports(many) == ()
    assert mounted_over_ssh(many) == tuple(many)
    assert len(kernel_append(kernel_exports(many))) < 2047
    few = many[:3]
    assert fits_kernel_line(few)
    assert kernel_exports(few) == tuple(few) and mounted_over_ssh(few) == ()
    # A restorable guest is told of none, however few.
    assert kernel_exports(few, restorable=True) == ()
    assert mounted_over_ssh(few, restorable=True) == tuple(few)


def test_a_bad_name_is_refused_whatever_the_line_length() -> None:
    with pytest.raises(UsageError, match="may only contain"):
        fits_kernel_line([export("bad tag")])


def test_unused_slots_export_the_filler_read_only() -> None:
    padded = slot_exports((export("mdh0"),), 3, Path("/logs/empty-slot"))
    assert [e.tag for e in padded] == ["mdh0", "mdh1", "mdh2"]
    assert [e.readonly for e in padded] == [False, True, True]
    argv = render_command(spec(exports=padded), console_path=Path("/c"), qmp_fd=5,
                          host_port=0, append="")
    assert pairs(argv, "-fsdev")[1:] == [
        f"local,id=fsdev{i},path=/logs/empty-slot,security_model=none,multidevs=remap,"
        "readonly=on" for i in (1, 2)]
