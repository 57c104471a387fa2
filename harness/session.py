"""What every command needs before it boots a guest: QEMU probed, image built,
accelerator decided; and helpers to turn that into a running Machine."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .accel import decide_accel, kvm_liveness_probe
from .config import (
    Accel,
    AccelDecision,
    BootMethod,
    ExportSpec,
    GuestImage,
    MachineSpec,
    Timeouts,
)
from .errors import CacheDirError, QemuNotFound, UsageError
from .image import build_image
from .kernelfile import check_same_release, kernel_release
from .machine import Machine
from .qemu import QemuInfo, probe_qemu, require_multidevs
from .ssh import CommandResult

DEFAULT_QEMU = "qemu-system-x86_64"
Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@dataclass(frozen=True)
class Environment:
    """The probed QEMU, the guest image and the accelerator every guest will use."""

    info: QemuInfo
    image: GuestImage
    accel: AccelDecision
    boot: BootMethod
    timeouts: Timeouts

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
            extra_append=tuple(extra_append),
            timeouts=self.timeouts,
        )


def resolve_qemu(qemu: str | None) -> Path:
    """The QEMU binary as a path: --qemu, else $MDH_QEMU, else the one on PATH."""
    name = qemu or os.environ.get("MDH_QEMU") or DEFAULT_QEMU
    if "/" in name:
        return Path(name)
    found = shutil.which(name)
    if found is None:
        raise QemuNotFound(
            f"{name} is not on PATH",
            hint="install qemu-system-x86 (./scripts/setup) or pass --qemu PATH",
        )
    return Path(found)


def timeout_scale_from_env() -> float:
    """$MDH_TIMEOUT_SCALE as a positive factor for every deadline (1 when unset)."""
    text = os.environ.get("MDH_TIMEOUT_SCALE", "").strip()
    if not text:
        return 1.0
    try:
        scale = float(text)
    except ValueError:
        scale = 0.0
    if not 0 < scale <= 100:
        raise UsageError(
            f"MDH_TIMEOUT_SCALE must be a number in (0, 100], got {text!r}",
            hint="for example MDH_TIMEOUT_SCALE=2 doubles every boot and command deadline",
        )
    return scale


def _kernel_override(image: GuestImage, kernel: Path | None) -> tuple[GuestImage, BootMethod]:
    if kernel is None:
        return image, BootMethod.PVH
    if not kernel.is_file():
        raise QemuNotFound(f"--kernel {kernel} does not exist", hint="pass a vmlinux or bzImage")
    with open(kernel, "rb") as handle:
        is_elf = handle.read(4) == b"\x7fELF"
    # An ELF vmlinux is entered through PVH; anything else is treated as a bzImage.
    if is_elf:
        return replace(image, vmlinux=kernel), BootMethod.PVH
    return replace(image, vmlinuz=kernel), BootMethod.BZIMAGE


def check_kernel_modules(image: GuestImage, kernel: Path | None) -> None:
    """Refuse to boot a kernel that would reject the image's modules (exit 2).

    An image whose kernel has 9p and virtio built in carries no modules, so any
    kernel may boot it.
    """
    if not image.modules_release:
        return
    booted = image.kernel_release if kernel is None else kernel_release(kernel)
    where = f"--kernel {kernel}" if kernel else f"image {image.directory.name}"
    check_same_release(booted, image.modules_release, where)


def prepare(
    qemu: str | None,
    accel: Accel,
    kernel: Path | None = None,
    progress: Progress = _quiet,
    timeout_scale: float | None = None,
    guest: str | None = None,
    modules_dir: Path | None = None,
) -> Environment:
    """Build (or reuse) the image, probe QEMU and decide the accelerator.

    ``timeout_scale`` stretches every harness deadline (default: $MDH_TIMEOUT_SCALE,
    else 1), for slow runners and for tests that must see a deadline pass quickly.
    ``guest`` names the recipe (a folder of guests/; None = the default recipe);
    ``modules_dir`` (a ``make modules_install`` tree) puts its modules in the image,
    for booting a self-built ``kernel``.
    """
    scale = timeout_scale if timeout_scale is not None else timeout_scale_from_env()
    # QEMU first: a missing or too old binary is reported in a second, not after an
    # image build that may download a kernel for minutes.
    binary = resolve_qemu(qemu)
    progress(f"probing {binary}")
    info = probe_qemu(binary)
    require_multidevs(info)
    image = build_image(guest, progress=progress, modules_dir=modules_dir)
    if image.cache_hit:
        progress(f"guest image: cache hit ({image.kernel_release})")
    image, boot = _kernel_override(image, kernel)
    check_kernel_modules(image, kernel)
    kernel_for_probe = image.vmlinux if boot is BootMethod.PVH else image.vmlinuz
    decision = decide_accel(
        accel, info, lambda: kvm_liveness_probe(info.binary, kernel_for_probe)
    )
    progress(f"accelerator: {decision.used.value}: {decision.reason}")
    return Environment(
        info=info,
        image=image,
        accel=decision,
        boot=boot,
        timeouts=Timeouts.for_accel(decision.used, scale),
    )


def probe_environment(
    qemu: str | None, accel: Accel, progress: Progress = _quiet
) -> dict[str, Any]:
    """The facts ``multidevs-harness probe`` reports (no guest booted unless KVM is tried)."""
    binary = resolve_qemu(qemu)
    info = probe_qemu(binary)
    report: dict[str, Any] = {
        "binary": str(info.binary),
        "version": str(info.version),
        "multidevs_supported": info.multidevs_supported,
        "sandbox_supported": info.sandbox_supported,
        "kvm_device": info.kvm_device,
    }
    if info.multidevs_supported:
        image = build_image(progress=progress)
        decision = decide_accel(
            accel, info, lambda: kvm_liveness_probe(info.binary, image.vmlinux)
        )
        report.update(
            accel=decision.used.value, accel_reason=decision.reason,
            accel_fell_back=decision.fell_back,
        )
    else:
        require_multidevs(info)
    return report


def _new_log_dir(base: Path, prefix: str, hint: str) -> Path:
    try:
        base.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        return Path(tempfile.mkdtemp(prefix=f"{prefix}-{stamp}-", dir=base))
    except OSError as exc:
        raise CacheDirError(
            f"cannot write the log directory {base}: {exc.strerror}", hint=hint
        ) from exc


@contextlib.contextmanager
def log_root(logs: Path | None, prefix: str = "run") -> Iterator[tuple[Path, list[bool]]]:
    """A log directory; kept if the user named it or the run failed, else removed.

    Yields the directory and a one-element list the caller sets to ``[True]`` when
    the run failed, so the logs survive exactly when someone needs to read them.
    """
    failed = [False]
    if logs is not None:
        directory = _new_log_dir(logs, prefix, "pass --logs with a writable directory")
        yield directory, failed
        return
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    directory = _new_log_dir(base / "multidevs-harness" / "logs", prefix,
                             "set XDG_STATE_HOME or pass --logs DIR")
    keep = True
    try:
        yield directory, failed
        keep = failed[0]
    finally:
        if not keep:
            shutil.rmtree(directory, ignore_errors=True)


def exec_in_guest(
    command: Sequence[str],
    *,
    qemu: str | None = None,
    accel: Accel = Accel.AUTO,
    kernel: Path | None = None,
    logs: Path | None = None,
    progress: Progress = _quiet,
    guest: str | None = None,
    modules_dir: Path | None = None,
) -> CommandResult:
    """Boot a guest with no export, run ``command`` over SSH, shut the guest down."""
    env = prepare(qemu, accel, kernel, progress, guest=guest, modules_dir=modules_dir)
    with log_root(logs, "exec") as (directory, failed):
        try:
            spec = env.machine_spec((), directory)
            progress(f"booting guest ({env.accel.used.value}); logs in {directory}")
            with Machine(spec, sandbox_supported=env.info.sandbox_supported,
                         progress=progress, name="exec") as machine:
                machine.wait_ready()
                progress(f"guest ready in {machine.times.ssh:.2f} s")
                return machine.run(shlex.join(command))
        except BaseException:
            failed[0] = True
            progress(f"logs kept in {directory}")
            raise
