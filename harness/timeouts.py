"""The harness's deadlines: per accelerator, scaled by $MDH_TIMEOUT_SCALE.

A module of its own, not part of QEMU's machine spec: the image build and the libvirt
daemon scale their own waits by the same factor, and the image build sits below QEMU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .config import Accel
from .errors import UsageError


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


@dataclass(frozen=True)
class Timeouts:
    """Harness deadlines in seconds; all sit below the tests' pytest-timeout."""

    boot: float
    command: float
    shutdown: float = 10.0
    qmp: float = 10.0

    @classmethod
    def for_accel(cls, accel: Accel, scale: float = 1.0) -> Timeouts:
        """TCG emulates every instruction, so it gets several times KVM's budget."""
        if accel is Accel.KVM:
            return cls(boot=30.0 * scale, command=60.0 * scale)
        return cls(boot=90.0 * scale, command=180.0 * scale)
