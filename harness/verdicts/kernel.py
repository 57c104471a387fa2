"""The guest kernel's log: which lines a row keeps, and which show a kernel in trouble.

Every family reads the log it caused (``dmesg -c`` at the end of each look, so no line
is read twice and none is lost between families) and judges it here.  Pure.

The trouble patterns follow the formats Linux 6.1 and 6.12 print:

* lib/bug.c and kernel/panic.c: ``WARNING: CPU: 0 PID: 1 at fs/9p/vfs_inode.c:1 f+0x1/0x2``,
  ``kernel BUG at fs/9p/fid.c:42!``, ``BUG: kernel NULL pointer dereference, ...``;
* arch/x86/kernel/dumpstack.c and traps.c: the die header ``<what>: 0000 [#1] PREEMPT SMP
  NOPTI`` (6.1: ``general protection fault, probably for non-canonical address ...: 0000
  [#1]``, ``invalid opcode: 0000 [#1]``; 6.12 prefixes ``Oops: ``), then ``RIP: `` and
  ``Call Trace:``;
* kernel/hung_task.c: ``INFO: task mdh-agent:123 blocked for more than 120 seconds.``;
* lib/ubsan.c: ``UBSAN: array-index-out-of-bounds in fs/9p/vfs_dir.c:10:5``;
* kernel/watchdog.c and RCU: soft and hard lockups, RCU stalls; KASAN and KFENCE reports;
  list corruption (lib/list_debug.c).
"""

from __future__ import annotations

import re

# Kernel log lines a row keeps: the 9p client, netfs and FS-Cache, the VFS, and any
# sign of a kernel in trouble.
# (\b9p\b: not the harness's own mdh_9p= words echoed in "Kernel command line".)
_RELEVANT_WORDS = (r"\b9[pP]\b|9pnet|v9fs|netfs|FS-Cache|fscache|cachefiles|VFS"
                   r"|\bfuse\b|virtiofs|virtio-fs")
TROUBLE_PATTERNS = (
    r"WARNING:",
    r"BUG:",
    r"Oops",
    r"kernel BUG at ",
    r"general protection fault",
    r"invalid opcode: ",
    r": [0-9a-f]{4} \[#\d+\]",  # any die() header: "<what>: 0000 [#1] ..."
    r"INFO: task \S.* blocked for more than \d+ seconds",
    r"UBSAN: ",
    r"\bRIP: ",
    r"Call Trace:",
    r"Kernel panic",
    r"soft lockup",
    r"hard LOCKUP",
    r"rcu: INFO: rcu_\w+ (detected|self-detected) stall",
    r"KASAN: ",
    r"KFENCE: ",
    r"list_(add|del) corruption",
    r"Unable to handle kernel",
)
_TROUBLE = re.compile("|".join(TROUBLE_PATTERNS))
_RELEVANT = re.compile(f"{_RELEVANT_WORDS}|{_TROUBLE.pattern}")
_STAMP = re.compile(r"^(<\d+>)?\[\s*\d+\.\d+\]\s?")
MAX_DMESG = 40
# Trouble lines named in a row's failures: the first few say what happened; an oops
# is dozens of lines.
MAX_TROUBLE = 8


def kernel_lines(dmesg: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the lines a row keeps, the lines that show a kernel in trouble), timestamps cut."""
    lines = [_STAMP.sub("", line).rstrip() for line in dmesg.splitlines()]
    kept = tuple(line for line in lines if _RELEVANT.search(line))
    return kept[:MAX_DMESG], tuple(line for line in lines if _TROUBLE.search(line))


def kernel_failures(dmesg: str) -> list[str]:
    """One failure per trouble line of ``dmesg`` (the first MAX_TROUBLE, then a count)."""
    _, trouble = kernel_lines(dmesg)
    failures = [f"the guest kernel is in trouble (dmesg): {line!r}"
                for line in trouble[:MAX_TROUBLE]]
    if len(trouble) > MAX_TROUBLE:
        failures.append(f"... and {len(trouble) - MAX_TROUBLE} more trouble lines in dmesg")
    return failures
