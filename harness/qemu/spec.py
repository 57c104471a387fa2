"""What a guest machine is given: its exports (``ExportSpec``) and, for QEMU, the whole
machine (``MachineSpec``), which ``qemu.cmdline`` renders and ``qemu.machine`` runs.

Data only: the pool, the checks and the libvirt backend describe exports with the
same ``ExportSpec``, and none of them needs the command line to do so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..config import Accel, BootMethod, Cache, Mode, Transport
from ..image.artefacts import GuestImage
from ..timeouts import Timeouts


@dataclass(frozen=True)
class ExportSpec:
    """One 9p export: a host directory shared under ``tag`` with one multidevs mode."""

    tag: str
    path: Path
    mode: Mode
    mount_point: str
    # cache=none makes every guest stat reach QEMU, so guest ids are QEMU's qids and
    # not whatever an inode cache merged.
    cache: Cache = Cache.NONE
    security_model: str = "none"
    readonly: bool = False
    # VIRTIOFS: served by a virtiofsd of its own, ``mode`` and ``cache`` unused; the
    # daemon announces submounts (each host device its own guest superblock) or not.
    transport: Transport = Transport.NINEP
    submounts: bool = True


@dataclass(frozen=True)
class MachineSpec:
    """Everything needed to render one QEMU command line and run it."""

    qemu: Path
    accel: Accel
    image: GuestImage
    log_dir: Path
    exports: tuple[ExportSpec, ...] = ()
    boot: BootMethod = BootMethod.PVH
    memory_mb: int = 256
    cpus: int = 1
    # -sandbox on; the environment sets it from the probe (not every build has it).
    sandbox: bool = False
    # The -sandbox sets denied besides the default one (a subset of SANDBOX_DENY the
    # binary knows; from the probe).
    sandbox_deny: tuple[str, ...] = ()
    extra_append: tuple[str, ...] = ()
    # False renders the untuned command line people write by hand (bench baseline).
    tuned: bool = True
    # Firmware directories for a QEMU outside the system prefix (one -L each, searched
    # in order); (): QEMU's own.
    datadirs: tuple[Path, ...] = ()
    # Saved guest states live here (boot by restore); None: every boot is cold.
    state_cache: Path | None = None
    # The binary has the monitor-qmp object type (the probe asked): the QMP monitor
    # is an -object, not the -mon that QEMU 11.1 deprecates.
    monitor_object: bool = False
    timeouts: Timeouts = field(default_factory=lambda: Timeouts.for_accel(Accel.TCG))
    # How to start virtiofsd (its argv before the harness's options) for virtiofs exports.
    virtiofsd: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.accel is Accel.AUTO:
            raise ValueError("MachineSpec needs a resolved accelerator (kvm or tcg)")
