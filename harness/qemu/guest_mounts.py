"""How a guest learns of its exports: on the kernel command line, which its init reads
and mounts before SSH is up, or over SSH once it answers.

A restorable guest is told of none on its command line (a saved state must not hold a
mounted export), and neither is a guest whose exports would overflow x86's 2,047-byte
command line (four cache modes of the default matrix need 2,334): both mount them
over SSH, with the same mount commands the init runs.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Sequence

from ..config import Transport
from ..errors import GuestInitFailed
from ..guest.ssh import GuestSsh
from .cmdline import fits_kernel_line, mount_options
from .spec import ExportSpec


def kernel_exports(exports: Sequence[ExportSpec], extra: Sequence[str] = (), *,
                   restorable: bool = False) -> tuple[ExportSpec, ...]:
    """The exports the kernel command line names: all of them, or none when the guest
    mounts them over SSH (``mounted_over_ssh``)."""
    if restorable or not fits_kernel_line(exports, extra):
        return ()
    return tuple(exports)


def mounted_over_ssh(exports: Sequence[ExportSpec], extra: Sequence[str] = (), *,
                     restorable: bool = False) -> tuple[ExportSpec, ...]:
    """The exports ``mount_exports`` mounts once SSH answers: those the kernel command
    line does not name."""
    named = kernel_exports(exports, extra, restorable=restorable)
    return () if named else tuple(exports)


def mount_exports(ssh: GuestSsh, exports: Sequence[ExportSpec], *, restored: bool,
                  timeout: float) -> None:
    """Mount every export over SSH, as the init does for a cold guest told of them on
    its kernel command line; after a restore set the guest's clock first (it still
    shows the time of the save).

    Raises GuestInitFailed with the guest's words when a mount fails.
    """
    steps = [f"date -s @{int(time.time())} > /dev/null"] if restored else []
    for export in exports:
        point = shlex.quote(export.mount_point)
        steps.append(f"mkdir -p {point}")
        if export.transport is Transport.VIRTIOFS:
            steps.append(f"mount -t virtiofs {shlex.quote(export.tag)} {point}")
        else:
            steps.append(f"mount -t 9p -o {mount_options(export)} {shlex.quote(export.tag)} "
                         f"{point}")
    if not steps:
        return
    result = ssh.run(" && ".join(steps), timeout=timeout)
    if result.rc != 0:
        raise GuestInitFailed(
            f"mounting the exports over SSH failed (rc {result.rc}): "
            f"{result.stderr.decode(errors='replace').strip()}",
            hint="the same mount the init makes on a cold boot; see the console log",
        )
