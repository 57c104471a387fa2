"""Where the e2e tests that need only a kernel (not a running guest) find one."""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

from harness.image.build import build_image


@cache
def find_test_kernel() -> Path | None:
    """$MDH_TEST_KERNEL, else the guest image's bzImage (built or reused from the cache)."""
    override = os.environ.get("MDH_TEST_KERNEL")
    if override:
        return Path(override)
    return build_image().vmlinuz


NO_KERNEL_REASON = "no readable kernel: set MDH_TEST_KERNEL=/path/to/vmlinuz"
