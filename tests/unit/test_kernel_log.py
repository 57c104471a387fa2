"""The kernel log rules: each trouble pattern with a line shaped as Linux 6.1 or 6.12
prints it (lib/bug.c, arch/x86/kernel/dumpstack.c and traps.c, kernel/hung_task.c,
lib/ubsan.c, kernel/watchdog.c), and lines that must not count as trouble."""

from __future__ import annotations

import pytest

from harness.verdicts.kernel import MAX_TROUBLE, kernel_failures, kernel_lines

TROUBLE = [
    "WARNING: CPU: 0 PID: 231 at fs/9p/vfs_inode.c:1108 v9fs_vfs_rename+0x3e/0x50 [9p]",
    "BUG: kernel NULL pointer dereference, address: 0000000000000008",
    "kernel BUG at fs/9p/fid.c:42!",
    # 6.1's die() header, and 6.12's with its "Oops: " prefix.
    "general protection fault, probably for non-canonical address 0xdead000000000100: 0000 "
    "[#1] PREEMPT SMP NOPTI",
    "invalid opcode: 0000 [#1] PREEMPT SMP NOPTI",
    "Oops: general protection fault, probably for non-canonical address 0x6b6b6b6b6b6b6b6b: "
    "0000 [#1] PREEMPT SMP NOPTI",
    "stack segment: 0000 [#1] PREEMPT SMP NOPTI",
    "RIP: 0010:v9fs_fid_lookup+0x20/0x1a0 [9p]",
    "Call Trace:",
    "INFO: task mdh-agent:312 blocked for more than 120 seconds.",
    "UBSAN: array-index-out-of-bounds in fs/9p/vfs_dir.c:104:11",
    "watchdog: BUG: soft lockup - CPU#0 stuck for 26s! [mdh-agent:312]",
    "rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:",
    "BUG: KASAN: slab-use-after-free in v9fs_evict_inode+0x1c/0x60",
    "list_del corruption, ffff888003a1b2c8->next is LIST_POISON1 (dead000000000100)",
    "Kernel panic - not syncing: Fatal exception",
]


@pytest.mark.parametrize("line", TROUBLE)
def test_each_trouble_line_fails_the_row(line: str) -> None:
    dmesg = f"[   12.345678] 9pnet: Installing 9P2000 support\n[   13.000001] {line}\n"
    assert kernel_failures(dmesg) == [f"the guest kernel is in trouble (dmesg): {line!r}"]
    assert line in kernel_lines(dmesg)[0]


def test_ordinary_lines_are_no_trouble() -> None:
    ordinary = ("[ 0.1] Kernel command line: console=ttyS0 oops=panic mdh_9p=mdh0:/mnt/mdh0\n"
                "[ 1.2] 9pnet_virtio: no channels available for device mdh7\n"
                "[ 2.0] VFS: Lookup of 'dev01' in 9p 9p would have caused loop\n"
                "[ 2.1] random: crng init done\n")
    assert kernel_failures(ordinary) == []


def test_a_long_oops_is_named_by_its_first_lines() -> None:
    oops = "\n".join(["BUG: unable to handle page fault for address: 0000000000001000",
                      "Oops: 0000 [#1] PREEMPT SMP NOPTI", "RIP: 0010:x+0x1/0x2",
                      "Call Trace:"] * 3)
    failures = kernel_failures(oops)
    assert len(failures) == MAX_TROUBLE + 1
    assert failures[-1] == "... and 4 more trouble lines in dmesg"
