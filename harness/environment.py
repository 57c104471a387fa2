"""What every command needs before it boots a guest: QEMU probed, image built,
accelerator decided, deadlines scaled.  ``Environment.machine_spec`` turns that
into the spec of one guest."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from . import paths
from .config import Accel, BootMethod
from .errors import UsageError
from .image.artefacts import GuestImage
from .image.build import build_image, mark_used
from .image.kernelfile import check_same_release, kernel_release
from .inputs import read_input
from .machine_options import MachineOptions
from .progress import Progress, quiet
from .qemu.accel import AccelDecision, decide_accel, kvm_liveness_probe
from .qemu.debian import resolve_debian
from .qemu.probe import DEFAULT_QEMU, QemuInfo, probe_qemu, require_multidevs, resolve_binary
from .qemu.remembered import RememberedLiveness, cached_note, liveness_key, remembered_probe
from .qemu.spec import ExportSpec, MachineSpec
from .qemu.virtiofsd import Virtiofsd, find_virtiofsd
from .timeouts import Timeouts, timeout_scale_from_env

if TYPE_CHECKING:
    # Imported where used: the result schema brings the verdict vocabulary, which
    # exec never needs (its start-up path stays small).
    from .results import EnvironmentRecord

# A bzImage's setup header carries "HdrS" at this offset (Documentation/x86/boot.rst).
_BZIMAGE_MAGIC_AT = 0x202



@dataclass(frozen=True)
class Environment:
    """The probed QEMU, the guest image and the accelerator every guest will use."""

    info: QemuInfo
    image: GuestImage
    accel: AccelDecision
    boot: BootMethod
    timeouts: Timeouts
    # Firmware directories passed as -L (a QEMU outside the system prefix); (): QEMU's.
    datadirs: tuple[Path, ...] = ()
    # Saved guest states (boot by restore); None: every boot is cold (--cold).
    state_cache: Path | None = None
    # The daemon of virtiofs exports; None when the run has none.
    virtiofsd: Virtiofsd | None = None
    # --kernel, booted instead of the image's own kernel; None: the image's.
    kernel: Path | None = None
    # The KVM liveness answer behind ``accel``; set when it came from the cache and
    # said "KVM works", so a guest failing under KVM can drop it (``forget_kvm``).
    remembered_kvm: RememberedLiveness | None = field(default=None, compare=False)

    @property
    def kernel_file(self) -> str:
        """The kernel file every guest boots, in words (for messages)."""
        if self.kernel is not None:
            return f"--kernel {self.kernel}"
        return f"the kernel of image {self.image.directory.name}"

    def forget_kvm(self) -> bool:
        """Drop a remembered "KVM works" this environment relied on; False when it
        relied on none (the decision was fresh, or TCG)."""
        if self.remembered_kvm is None:
            return False
        self.remembered_kvm.forget()
        return True

    @property
    def record(self) -> EnvironmentRecord:
        """This environment in the result schema."""
        from .results import EnvironmentRecord

        return EnvironmentRecord(self.info, self.accel, self.image.recipe,
                                 self.image.kernel_release, self.virtiofsd)

    def machine_spec(
        self,
        exports: Sequence[ExportSpec],
        log_dir: Path,
        extra_append: Sequence[str] = (),
        cpus: int = 1,
    ) -> MachineSpec:
        """A MachineSpec for one guest of this environment."""
        return MachineSpec(
            cpus=cpus,
            qemu=self.info.binary,
            accel=self.accel.used,
            image=self.image,
            log_dir=log_dir,
            exports=tuple(exports),
            boot=self.boot,
            sandbox=self.info.sandbox_supported,
            monitor_object=self.info.monitor_object,
            sandbox_deny=self.info.sandbox_deny,
            extra_append=tuple(extra_append),
            timeouts=self.timeouts,
            datadirs=self.datadirs,
            state_cache=self.state_cache,
            virtiofsd=self.virtiofsd.command if self.virtiofsd else (),
        )


def resolve_qemu(qemu: str | None, progress: Progress = quiet) -> Path:
    """The QEMU binary as a path: --qemu, else $MDH_QEMU, else the one on PATH;
    ``debian:SUITE`` is that suite's QEMU, fetched into the cache the first time."""
    given = qemu or os.environ.get("MDH_QEMU") or DEFAULT_QEMU
    return resolve_binary(resolve_debian(given, progress) or given)


# Where distributions install QEMU: its compiled-in firmware path is right for these.
_MARKER_ROM = "linuxboot_dma.bin"
_SYSTEM_BIN = (Path("/usr/bin"), Path("/bin"), Path("/usr/local/bin"), Path("/usr/sbin"))
# Where Debian's packages put the firmware QEMU's share/qemu links to (seabios,
# ipxe-qemu), relative to the prefix.
_DEBIAN_SPLIT = ("share/seabios", "lib/ipxe/qemu")
# The host's firmware directories, as Debian's own QEMU is built to search them.
HOST_FIRMWARE = (Path("/usr/share/qemu"), Path("/usr/share/seabios"),
                 Path("/usr/lib/ipxe/qemu"))
# What every guest here loads: q35's BIOS and the option ROM of a -kernel boot.
_NEEDED_BLOBS = ("bios-256k.bin", _MARKER_ROM)


def find_datadirs(binary: Path, override: Sequence[Path] = (),
                  host: Sequence[Path] = HOST_FIRMWARE) -> tuple[Path, ...]:
    """The firmware directories to pass as -L for ``binary``, in search order; () for
    QEMU's own.

    ``override`` (--qemu-datadir, repeatable) wins.  A binary in a system bin
    directory uses the path it was built with.  Any other binary (a build tree, an
    unpacked package) gets a ``pc-bios/`` beside it, or the firmware directories of
    the prefix it sits in (``../share/qemu/``, and where they exist the prefix's
    ``share/seabios`` and ``lib/ipxe/qemu``, where Debian puts the BIOS and the
    option ROMs): its built-in path points at a prefix where nothing is installed.
    When those lack a blob every guest here needs (a build from Debian's source,
    whose blobs are dropped), the host's firmware directories (``host``: Debian's
    three) follow them, so QEMU finds the blob there.
    """
    for directory in override:
        if not directory.is_dir():
            raise UsageError(f"--qemu-datadir {directory} is not a directory",
                             hint="pass QEMU's pc-bios/ or share/qemu/ directory "
                             "(repeat the option for several)")
    if override:
        return tuple(override)
    if binary.parent in _SYSTEM_BIN:
        return ()
    own = _own_datadirs(binary)
    if all(any((d / blob).is_file() for d in own) for blob in _NEEDED_BLOBS):
        return own
    return (*own, *(d for d in host if d.is_dir() and d not in own))


def _own_datadirs(binary: Path) -> tuple[Path, ...]:
    beside = binary.parent / "pc-bios"
    # The option ROM of -kernel boots, which every guest here needs: its presence
    # tells QEMU's data directory from an unrelated folder of the same name.
    if (beside / _MARKER_ROM).is_file():
        return (beside,)
    prefix = binary.parent.parent
    if not (prefix / "share" / "qemu" / _MARKER_ROM).is_file():
        return ()
    return tuple(d for d in (prefix / "share" / "qemu", *(prefix / s for s in _DEBIAN_SPLIT))
                 if d.is_dir())


def kernel_kind(kernel: Path) -> BootMethod:
    """How ``kernel`` boots: PVH for an ELF vmlinux, bzImage for a bzImage.

    Raises UsageError for anything else, before a guest is started with it: QEMU
    would otherwise fail in a way that looks like a QEMU problem.
    """
    # Opened without blocking: a FIFO passed as --kernel would wait for a writer forever.
    head = read_input(kernel, "--kernel", "pass a vmlinux (ELF) or a bzImage",
                      limit=_BZIMAGE_MAGIC_AT + 4)
    if head.startswith(b"\x7fELF"):
        return BootMethod.PVH
    if head[_BZIMAGE_MAGIC_AT:] == b"HdrS":
        return BootMethod.BZIMAGE
    raise UsageError(f"--kernel {kernel} is neither an ELF vmlinux nor a bzImage",
                     hint="pass the kernel build's vmlinux or arch/x86/boot/bzImage")


def _kernel_override(image: GuestImage, kernel: Path | None,
                     kind: BootMethod | None) -> tuple[GuestImage, BootMethod]:
    """The image with ``kernel`` (--kernel, of ``kind``: ``kernel_kind``) in place of
    its own, and how it boots.  The release is the file's own (bzImage header, ELF
    banner): rows and the environment name the kernel that boots, not the image's."""
    if kernel is None or kind is None:
        return image, BootMethod.PVH
    image = replace(image, kernel_release=kernel_release(kernel))
    if kind is BootMethod.PVH:
        return replace(image, vmlinux=kernel), BootMethod.PVH
    return replace(image, vmlinuz=kernel), BootMethod.BZIMAGE


def check_kernel_modules(image: GuestImage, kernel: Path | None) -> None:
    """Refuse to boot a kernel that would reject the image's modules (exit 2).

    An image whose kernel has 9p and virtio built in carries no modules, so any
    kernel may boot it.
    """
    if not image.modules_release:
        return
    booted = image.kernel_release
    where = f"--kernel {kernel}" if kernel else f"image {image.directory.name}"
    check_same_release(booted, image.modules_release, where)


def prepare(
    machine: MachineOptions,
    progress: Progress = quiet,
    timeout_scale: float | None = None,
    trust_cached_kvm: bool = False,
) -> Environment:
    """Build (or reuse) the image, probe QEMU and decide the accelerator for ``machine``.

    ``timeout_scale`` stretches every harness deadline (default: $MDH_TIMEOUT_SCALE,
    else 1), for slow runners and for tests that must see a deadline pass quickly.
    ``machine.modules`` (a ``make modules_install`` tree) puts its modules in the
    image, for booting a self-built ``machine.kernel``; ``machine.cold`` turns boot by
    restore off.  The probe's answers and the KVM liveness answer are reused while
    what they depend on is unchanged (``qemu.remembered``); a remembered "KVM works"
    is trusted only with ``trust_cached_kvm`` (whose caller must then handle a guest
    failing under KVM: ``Environment.forget_kvm``), else checked again.
    """
    kernel = machine.kernel
    scale = timeout_scale if timeout_scale is not None else timeout_scale_from_env()
    # QEMU first: a missing or too old binary is reported in a second, not after an
    # image build that may download a kernel for minutes.
    kind = kernel_kind(kernel) if kernel is not None else None
    binary = resolve_qemu(machine.qemu, progress)
    info, cached = remembered_probe(paths.remembered_dir(), binary, probe_qemu)
    progress(f"QEMU {binary}: " + ("probe answers remembered (cached)" if cached else "probed"))
    require_multidevs(info)
    image = build_image(machine.guest, progress=progress, modules_dir=machine.modules)
    mark_used(image.directory)
    if image.cache_hit:
        progress(f"guest image: cache hit ({image.kernel_release})")
    image, boot = _kernel_override(image, kernel, kind)
    if kernel is not None:
        progress(f"kernel: --kernel {kernel} (release {image.kernel_release})")
    check_kernel_modules(image, kernel)
    firmware = find_datadirs(info.binary, machine.qemu_datadirs)
    if firmware:
        progress(f"QEMU firmware from {', '.join(map(str, firmware))} (-L)")
    kernel_for_probe = image.vmlinux if boot is BootMethod.PVH else image.vmlinuz
    decision, remembered = _decide_accel(machine.accel, info, kernel_for_probe, firmware,
                                         trust_cached_kvm, progress)
    virtiofsd = find_virtiofsd(machine.virtiofsd, progress=progress) \
        if machine.virtiofs else None
    if virtiofsd is not None:
        progress(f"virtiofsd {virtiofsd.version} ({virtiofsd.source}): {virtiofsd.binary}")
    return Environment(
        info=info,
        image=image,
        accel=decision,
        boot=boot,
        timeouts=Timeouts.for_accel(decision.used, scale),
        datadirs=firmware,
        state_cache=None if machine.cold else paths.states_dir(),
        virtiofsd=virtiofsd,
        kernel=kernel,
        remembered_kvm=remembered,
    )


def _decide_accel(
    accel: Accel, info: QemuInfo, kernel: Path, firmware: tuple[Path, ...],
    trust_cached_kvm: bool, progress: Progress,
) -> tuple[AccelDecision, RememberedLiveness | None]:
    """The accelerator, with the KVM liveness answer taken from the cache while its
    key holds (``qemu.remembered``); says on the terminal when it was.  Returns the
    cache handle too when the decision rests on a remembered "KVM works"."""
    liveness = RememberedLiveness(
        paths.remembered_dir(), liveness_key(info.binary, kernel, firmware),
        lambda: kvm_liveness_probe(info.binary, kernel, datadirs=firmware),
        trust_alive=trust_cached_kvm)
    decision = decide_accel(accel, info, liveness)
    if liveness.cached is None:
        progress(f"accelerator: {decision.used.value}: {decision.reason}")
        return decision, None
    progress(f"accelerator: {decision.used.value} ({cached_note(liveness.cached)}): "
             f"{decision.reason}")
    return decision, liveness if liveness.cached.alive else None


def probe_record(qemu: str | None, accel: Accel, progress: Progress = quiet) -> EnvironmentRecord:
    """The environment ``multidevs-harness probe`` reports.

    The accelerator and the guest are decided only for a QEMU that has multidevs
    (deciding KVM may boot a guest); otherwise they stay None.
    """
    from .results import EnvironmentRecord

    info = probe_qemu(resolve_qemu(qemu, progress))
    if not info.multidevs_supported:
        return EnvironmentRecord(info, None, None, None)
    image = build_image(progress=progress)
    decision = decide_accel(accel, info, lambda: kvm_liveness_probe(info.binary, image.vmlinux))
    return EnvironmentRecord(info, decision, image.recipe, image.kernel_release)
