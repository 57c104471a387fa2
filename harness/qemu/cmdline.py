"""The QEMU command line, rendered by small pure functions.

Each ``*_args`` function turns one device group of a ``MachineSpec`` into a list
of strings, with each option and its value on one line.  Every QemuOpts value the
harness did not write itself is escaped (a comma becomes ``,,``) so a path
containing a comma survives.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..config import Accel, BootMethod, Mode, Transport
from ..errors import UsageError
from .spec import ExportSpec, MachineSpec

MACHINE_TYPE = "q35"

# The 9p wire size.  131072 is Linux's own default since 5.15; stating it keeps older
# guest kernels off their 8 KiB default, which QEMU warns is slow.
TCG_CPU = "qemu64,+rdrand"
MSIZE = 131072

# x86 COMMAND_LINE_SIZE is 2048 including the terminating NUL.
_CMDLINE_MAX = 2047

# Measured under TCG (QEMU 7.2, Debian's 6.1 kernel, PVH, boot to a trivial init):
# 'cryptomgr.notests' skips the crypto self-tests, by initcall_debug the largest
# initcall (crypto_algapi_init, ~0.17 s of a ~1.5 s boot), and cut guest uptime at
# init by 0.2-0.3 s.  tsc=reliable, no_timer_check, mitigations=off and nokaslr made
# no difference above run-to-run noise, so they are not here.  'quiet' matters:
# every console line is an emulated UART write.
# oops=panic: an oops while an export is observed stops the guest at once, and the
# harness fails the rows (GuestCrashed) instead of observing a half-dead kernel.
# norandmaps (no address-space randomisation for guest processes): QEMU 7.2's TCG finds
# x86 code it translated before by virtual address as well as physical (later QEMUs
# can translate it position-independently and may gain less), so with random layouts
# every tool's ld.so and libc are translated afresh in every process.  Measured under
# TCG (QEMU 7.2, 6.1 guest), five rounds of GNU find and rsync: 1.2-1.4 s randomised,
# 0.63-0.69 s fixed; the witnesses run those tools over every witnessed export.
# Nothing under test (9p or virtiofs ids) depends on the layout of guest processes.
BASE_APPEND: tuple[str, ...] = ("console=ttyS0", "panic=-1", "oops=panic", "quiet",
                                "cryptomgr.notests", "norandmaps")

# Tags and mount points travel through the kernel command line and a shell `for`
# loop in the guest init: no spaces, no quotes, no ':' (the field separator).
_SAFE_NAME = re.compile(r"[A-Za-z0-9_./-]+")
_SAFE_WORD = re.compile(r"[A-Za-z0-9_]+")


def escape_opt(value: str) -> str:
    """Escape a QemuOpts value: a comma would otherwise start the next option."""
    return value.replace(",", ",,")


def datadir_args(datadirs: Sequence[Path]) -> list[str]:
    """One ``-L`` per firmware directory, in search order (-L is taken verbatim, not
    as QemuOpts: no escaping).  Debian splits QEMU's firmware over three directories
    (share/qemu, share/seabios, lib/ipxe/qemu), so one is often not enough."""
    return [arg for directory in datadirs for arg in ("-L", str(directory))]


def machine_args(spec: MachineSpec) -> list[str]:
    """Machine type, accelerator, CPU, memory and the "no defaults" switches.

    ``q35``, not ``pc``: measured under TCG (PVH, this image's init loading virtio
    modules, mounting two 9p exports, starting dropbear) q35 was ready in 1.81 s
    against 2.29 s (mean of 8 each; bzImage 4.41 s against 4.69 s).  On ``pc`` the
    guest routes each PCI INTx through an ACPI link device (LNKB..LNKD), whose AML
    costs 0.1-0.2 s apiece under TCG; q35 has fixed GSI links.  (With no PCI
    drivers loaded, pc booted about 0.1 s sooner, which is why the real init decided.)
    -nodefaults drops the default NIC, so no iPXE option ROM is loaded either.

    ``spec.tuned=False`` renders what a user would write by hand (default machine,
    CPU and devices): the benchmark's baseline.
    """
    firmware = datadir_args(spec.datadirs)
    if not spec.tuned:
        return [
            *firmware,
            "-accel", spec.accel.value,
            "-m", str(spec.memory_mb),
            "-smp", str(spec.cpus),
            "-display", "none",
        ]  # fmt: skip
    # vhost-user-fs: virtiofsd reads and writes the guest's RAM itself, so the RAM
    # must be a shareable memfd (KVM is not needed for that; TCG works).
    shared = uses_virtiofs(spec.exports)
    memory = ["-object", f"memory-backend-memfd,id={_SHARED_MEM},size={spec.memory_mb}M,"
              "share=on"] if shared else []
    args = [
        *firmware,
        *memory,
        "-machine", MACHINE_TYPE + (f",memory-backend={_SHARED_MEM}" if shared else ""),
        "-accel", spec.accel.value,
    ]  # fmt: skip
    if spec.accel is Accel.KVM:
        # The host CPU model avoids both feature warnings and slower emulated paths.
        args += ["-cpu", "host"]
    else:
        # RDRAND lets the guest kernel seed its CRNG at once (CONFIG_RANDOM_TRUST_CPU);
        # without it dropbear's getrandom() blocked ~1.4 s under TCG waiting for
        # jitter entropy, the largest single cost of boot-to-SSH.
        args += ["-cpu", TCG_CPU]
    args += [
        "-m", str(spec.memory_mb),
        "-smp", str(spec.cpus),
        "-nodefaults",
        "-no-user-config",
        "-display", "none",
        "-vga", "none",
    ]  # fmt: skip
    return args


_SHARED_MEM = "mem"
# virtqueue size of each vhost-user-fs device: virtiofsd's own examples use 1024.
_VIRTIOFS_QUEUE = 1024


def uses_virtiofs(exports: Iterable[ExportSpec]) -> bool:
    """Whether any export is served over virtiofs (shared RAM, no saved states)."""
    return any(e.transport is Transport.VIRTIOFS for e in exports)


def vhost_user_fs_args(export: ExportSpec, index: int, socket_name: str) -> list[str]:
    """One virtiofs export: a chardev connecting to virtiofsd's abstract socket
    ``socket_name`` (nothing on the filesystem to leave behind) and the
    ``vhost-user-fs-pci`` device carrying the tag the guest mounts."""
    _check_name(export.tag, "virtiofs tag")
    _check_name(socket_name, "virtiofsd socket name")
    return [
        "-chardev", f"socket,id=vfs{index},path={socket_name},abstract=on",
        "-device", f"vhost-user-fs-pci,id=fs{index},chardev=vfs{index},tag={export.tag},"
                   f"queue-size={_VIRTIOFS_QUEUE}",
    ]  # fmt: skip


def kernel_args(spec: MachineSpec, append: str) -> list[str]:
    """``-kernel`` (vmlinux for PVH, vmlinuz for bzImage), ``-initrd``, ``-append``.

    These three are taken verbatim by QEMU, not parsed as QemuOpts, so a comma in
    the path needs no escaping (checked on 7.2).
    """
    kernel = spec.image.vmlinux if spec.boot is BootMethod.PVH else spec.image.vmlinuz
    return [
        "-kernel", str(kernel),
        "-initrd", str(spec.image.initrd),
        "-append", append,
    ]  # fmt: skip


def fsdev_args(export: ExportSpec, index: int) -> list[str]:
    """One 9p export: ``-fsdev local,...`` and the ``virtio-9p-pci`` that carries it.

    ``multidevs=`` is left out for Mode.DEFAULT, which is what "not given" tests.
    """
    _check_name(export.tag, "9p mount tag")
    fsdev = [
        "local",
        f"id=fsdev{index}",
        f"path={escape_opt(str(export.path))}",
        f"security_model={escape_opt(export.security_model)}",
    ]
    if export.mode.qemu_value is not None:
        fsdev.append(f"multidevs={export.mode.qemu_value}")
    if export.readonly:
        fsdev.append("readonly=on")
    device = [
        "virtio-9p-pci",
        f"id=fs{index}",
        f"fsdev=fsdev{index}",
        f"mount_tag={escape_opt(export.tag)}",
    ]
    return [
        "-fsdev", ",".join(fsdev),
        "-device", ",".join(device),
    ]  # fmt: skip


def net_args(host_port: int, rom: bool = False) -> list[str]:
    """User-mode networking with the guest's SSH port on 127.0.0.1:``host_port`` only.

    ``host_port=0`` lets QEMU bind a free port itself, so no other process can take
    it between choosing and binding; ``info usernet`` then tells which (checked on
    7.2).  Binding to 127.0.0.1 keeps the guest's root login off the host's other
    networks.  ``romfile=`` (empty) skips loading the NIC's iPXE boot ROM.
    """
    if not 0 <= host_port <= 65535:
        raise UsageError(
            f"SSH forward port must be 0..65535 (0: QEMU picks), got {host_port}",
            hint="pass 0 to let QEMU bind a free port itself",
        )
    return [
        "-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{host_port}-:22",
        "-device", "virtio-net-pci,netdev=net0" + ("" if rom else ",romfile="),
    ]  # fmt: skip


# A forward to the guest's port 22 bound on 127.0.0.1, as net_args renders it (the
# guest address differs between QEMU's default net and libvirt's).
_USERNET_SSH = re.compile(r"HOST_FORWARD\]\s+\d+\s+127\.0\.0\.1\s+(\d+)\s+\S+\s+22\b")


def forwarded_port(usernet: str) -> int | None:
    """The host port of the guest's SSH forward in HMP ``info usernet``, else None.

    net_args binds port 0, so QEMU picked the port itself; this reads which.
    """
    match = _USERNET_SSH.search(usernet)
    return int(match.group(1)) if match else None


def serial_args(console_path: Path) -> list[str]:
    """The guest's serial console (ttyS0) written to ``console_path``."""
    return [
        "-chardev", f"file,id=console,path={escape_opt(str(console_path))}",
        "-serial", "chardev:console",
    ]  # fmt: skip


def qmp_args(fd: int, monitor_object: bool = False) -> list[str]:
    """A QMP monitor on an inherited, already connected socket ``fd`` (no path race).

    QEMU 7.2 accepts ``-chardev socket,fd=N`` for a connected socketpair end and
    greets on it at once (checked).  ``monitor_object``: the binary lists a
    ``monitor-qmp`` object type (``-object help``, asked by the probe), which QEMU
    11.1 tells users to take instead of ``-mon``: it warns on every start that
    ``-mon`` is deprecated.  A QEMU without the type gets ``-mon``, which is then
    current.  Both greet on the socket at once (checked on 7.2 and 11.1.3).
    """
    monitor = ["-object", "monitor-qmp,id=qmpmon,chardev=qmp"] if monitor_object \
        else ["-mon", "chardev=qmp,mode=control"]
    return ["-chardev", f"socket,id=qmp,fd={fd}", *monitor]


def sandbox_args(deny: Sequence[str]) -> list[str]:
    """``-sandbox on`` with the further sets ``deny`` (``config.SANDBOX_DENY``): a QEMU
    serving the host's files to a guest should not gain privileges, change scheduling
    or reach obsolete syscalls."""
    return ["-sandbox", ",".join(["on", *(f"{name}=deny" for name in deny)])]


def no_reboot_args() -> list[str]:
    """``-no-reboot``: with the guest's ``panic=-1`` a kernel panic ends QEMU at once."""
    return ["-no-reboot"]


def slot_exports(exports: Sequence[ExportSpec], slots: int, filler: Path) -> tuple[
        ExportSpec, ...]:
    """``exports`` padded to ``slots`` 9p devices tagged ``mdhN`` (boot by restore).

    A saved state fixes the guest's device set; the unused slots share ``filler``
    (an empty directory) and are never mounted by the harness.  They are read-only
    (``readonly=on``): a guest that mounts one anyway must not write into the host.
    """
    padded = list(exports)
    for index in range(len(padded), slots):
        padded.append(ExportSpec(tag=f"mdh{index}", path=filler, mode=Mode.REMAP,
                                 mount_point=f"/mnt/mdh{index}", readonly=True))
    return tuple(padded)


def render_command(
    spec: MachineSpec,
    *,
    console_path: Path,
    qmp_fd: int | None,
    host_port: int,
    append: str,
    incoming: Sequence[str] = (),
    sockets: Sequence[str] = (),
) -> list[str]:
    """The whole QEMU argv for ``spec``, binary first.

    ``sockets``: the abstract socket name of each virtiofs export's virtiofsd, in the
    order of those exports.

    ``-sandbox on`` is rendered when ``spec.sandbox`` says the binary supports it
    (the environment sets it from the probe).  ``qmp_fd=None`` leaves the monitor out (for a
    by-hand reproduction, where no inherited fd exists).
    """
    argv = [str(spec.qemu)]
    argv += machine_args(spec)
    argv += kernel_args(spec, append)
    names = iter(sockets)
    for index, export in enumerate(spec.exports):
        if export.transport is Transport.VIRTIOFS:
            name = next(names, None)
            if name is None:
                raise UsageError(f"virtiofs export {export.tag} has no virtiofsd socket",
                                 hint="start its virtiofsd before rendering the command")
            argv += vhost_user_fs_args(export, index, name)
        else:
            argv += fsdev_args(export, index)
    argv += net_args(host_port, rom=not spec.tuned)
    argv += serial_args(console_path)
    if qmp_fd is not None:
        argv += qmp_args(qmp_fd, spec.monitor_object)
    if spec.sandbox:
        argv += sandbox_args(spec.sandbox_deny)
    argv += no_reboot_args()
    return argv + list(incoming)


def mount_options(export: ExportSpec) -> str:
    """The guest's ``mount -t 9p -o`` options for ``export``, comma-joined."""
    if not _SAFE_WORD.fullmatch(export.cache):
        raise UsageError(
            f"9p cache mode {export.cache!r} is not a plain word",
            hint="use one of none, loose, fscache, mmap",
        )
    options = ["trans=virtio", "version=9p2000.L", f"cache={export.cache}", f"msize={MSIZE}"]
    if export.readonly:
        options.append("ro")
    return ",".join(options)


def kernel_append(exports: Iterable[ExportSpec], extra: Iterable[str] = ()) -> str:
    """The guest kernel command line: console, panic, speed-ups, one mdh_9p per export.

    Each export becomes ``mdh_9p=TAG:MOUNTPOINT:OPTS``, which the guest init parses
    from /proc/cmdline.  Tags and mount points may only use [A-Za-z0-9_./-] and mount
    points must be absolute; anything else raises UsageError, as does a line longer
    than x86 allows (``fits_kernel_line`` asks first).
    """
    line = " ".join(_kernel_items(exports, extra))
    if len(line) > _CMDLINE_MAX:
        raise UsageError(
            f"the guest kernel command line would be {len(line)} bytes; x86 allows {_CMDLINE_MAX}",
            hint="use fewer exports or shorter tags and mount points",
        )
    return line


def fits_kernel_line(exports: Iterable[ExportSpec], extra: Iterable[str] = ()) -> bool:
    """Whether the init can be told of every export on the kernel command line.  A
    guest of many exports (four cache modes of the default matrix: 2,334 bytes) is
    told of none and mounts them over SSH instead (``guest_mounts``)."""
    return len(" ".join(_kernel_items(exports, extra))) <= _CMDLINE_MAX


def _kernel_items(exports: Iterable[ExportSpec], extra: Iterable[str]) -> list[str]:
    items = list(BASE_APPEND)
    for export in exports:
        _check_name(export.tag, "9p mount tag")
        _check_name(export.mount_point, "guest mount point")
        if not export.mount_point.startswith("/"):
            raise UsageError(
                f"guest mount point {export.mount_point!r} is not absolute",
                hint="use a path such as /mnt/export",
            )
        items.append(f"mdh_vfs={export.tag}:{export.mount_point}"
                     if export.transport is Transport.VIRTIOFS else
                     f"mdh_9p={export.tag}:{export.mount_point}:{mount_options(export)}")
    for item in extra:
        if not item or any(ch.isspace() for ch in item) or '"' in item:
            raise UsageError(
                f"extra kernel argument {item!r} is empty or contains spaces or quotes",
                hint="pass one word per argument, e.g. --append loglevel=7",
            )
        items.append(item)
    return items


def guest_mount_command(export: ExportSpec) -> str:
    """How the guest mounts ``export`` (for reports and the by-hand script)."""
    if export.transport is Transport.VIRTIOFS:
        return f"mount -t virtiofs {export.tag} {export.mount_point}"
    return f"mount -t 9p -o {mount_options(export)} {export.tag} {export.mount_point}"


def shell_quote_command(argv: Sequence[str]) -> str:
    """One copy-pasteable shell line that runs ``argv`` exactly."""
    return shlex.join(argv)


def _check_name(value: str, what: str) -> None:
    if not _SAFE_NAME.fullmatch(value):
        raise UsageError(
            f"{what} {value!r} may only contain letters, digits and _ . / -",
            hint="it is passed on the kernel command line and parsed by the guest's shell",
        )
