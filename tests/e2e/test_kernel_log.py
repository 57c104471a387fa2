"""Every family judges the kernel log its own observation read: a kernel complaint
logged in a real guest right before a family looks fails that family's row (before,
operations never read the log, and runtime_mount and remount cleared it unjudged).

The complaint is written to /dev/kmsg by the test (the kernel logs it as it would its
own ``WARNING:`` line); what is under test is the path from the guest's log to the
row: read by the family's ``dmesg -c``, handed to its verdict, judged.
"""

from __future__ import annotations

import pytest

from harness.checks.family import Judging
from harness.checks.registry import FAMILIES
from harness.config import Check, Mode
from harness.environment import Environment
from harness.host.truth import Export
from harness.plan import ExportPlan
from harness.qemu.machine import Machine

from .helpers import needs_qemu, needs_root

pytestmark = [needs_qemu, needs_root, pytest.mark.timeout(240)]

SPLAT = "WARNING: CPU: 0 PID: 1 at fs/9p/vfs_inode.c:1108 v9fs_vfs_rename+0x3e/0x50 [9p]"


@pytest.mark.multidevs(mode="remap", devices=2, files=2)
@pytest.mark.parametrize("check", [Check.OPERATIONS, Check.RUNTIME_MOUNT, Check.REMOUNT])
def test_a_kernel_warning_fails_the_family_that_read_it(
    machine: Machine, multidevs_export: Export, mdh_environment: Environment, check: Check
) -> None:
    family = FAMILIES[check]
    [spec] = machine.spec.exports
    plan = ExportPlan(Mode.REMAP, multidevs_export.layout, check)
    machine.run("dmesg -c > /dev/null")  # the boot's lines belong to no row here
    assert machine.run(f"echo '<4>{SPLAT}' > /dev/kmsg").rc == 0
    seen = family.observe(machine, spec, multidevs_export, plan)
    machine.shutdown()
    verdict = family.judge(Judging(plan, multidevs_export, spec, mdh_environment.info.version,
                                   "", "", ()), seen)
    assert verdict.failures == (f"the guest kernel is in trouble (dmesg): {SPLAT!r}",)
