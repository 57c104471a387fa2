"""SSH round trip side of the ``held_fd`` family: the guest holds a directory open, the
host mounts a tmpfs over it, and the guest calls through the held fd (rules in
``verdicts.held``).

The guest holds the directory with a background ``sleep`` whose fd 3 is the
directory, and the agent then works below ``/proc/PID/fd/3``: that path resolves to
the guest's dentry of the held directory, whose fid QEMU still resolves by its path,
now the covering tmpfs root.  The host reads that root back before and after.
"""

from __future__ import annotations

import os
import shlex
import stat
from pathlib import Path

from ..agent.ops import OpRequest
from ..config import Check, Mode
from ..guest.lifecycle import Guest
from ..host.export import extra_device
from ..host.truth import LINK_A, Export
from ..plan import ExportPlan, FamilyRules, Placement
from ..qemu.spec import ExportSpec
from ..verdicts.held import HeldCall, HeldSeen, HostDir, judge_held
from ..verdicts.ops import OpsVerdict
from .family import Judging
from .ops import run_ops

HELD = "held"  # the directory on the root device the guest holds open
# setattr, mkdir, lcreate, symlink and unlinkat through the held fd, and a stat that
# shows what QEMU says of the fid itself.  QEMU 7.2's v9fs_mkdir and v9fs_symlink
# create before stat_to_qid can deny, and v9fs_setattr never asks.
CALLS = (
    HeldCall("stat", "."),
    HeldCall("chmod", ".", effect="mode"),
    HeldCall("mkdir", "held-dir", effect="add"),
    HeldCall("creat", "held-file", effect="add"),
    HeldCall("symlink", "held-link", "held-target", effect="add"),
    HeldCall("unlink", LINK_A, effect="remove"),
)


def _host_dir(path: Path) -> HostDir:
    return HostDir(stat.S_IMODE(os.lstat(path).st_mode), tuple(sorted(os.listdir(path))))


def _hold(guest: Guest, spec: ExportSpec) -> tuple[int | None, str]:
    """Start the guest's holder of HELD; its pid, or None and why not."""
    point = shlex.quote(spec.mount_point)
    # Started from a command substitution, the holder outlives this SSH session; it
    # opens HELD after the fork, so the host must not mount before its fd 3 exists.
    result = guest.run(
        f"cd {point} && p=$(sleep 1000 3< {HELD} >/dev/null 2>&1 & echo $!) && i=0 && "
        f"while [ ! -L /proc/$p/fd/3 ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i + 1)); "
        f"done && [ -L /proc/$p/fd/3 ] && echo $p")
    text = result.stdout.decode(errors="replace").strip()
    if result.rc != 0 or not text.isdigit():
        return None, f"rc {result.rc}: {(text + result.stderr.decode(errors='replace'))[:200]}"
    return int(text), ""


class HeldFdCheck:
    """Hold a directory open in the guest, mount a tmpfs over it on the host, call
    through the held fd, read the tmpfs back."""

    # Only forbid promises that a device mounted under a directory the guest holds open
    # stays untouched (the other modes may change any device); the tmpfs is mounted
    # after QEMU (and virtiofsd, whose sandbox no later mount reaches) started, and the
    # question is 9p's.
    rules = FamilyRules(Check.HELD_FD, Placement.TRAILING, only_mode=Mode.FORBID,
                        mounts_after_start=True)

    def observe(self, guest: Guest, spec: ExportSpec, export: Export,
                plan: ExportPlan) -> HeldSeen:
        (export.root / HELD).mkdir(mode=0o755)
        pid, why = _hold(guest, spec)
        index = len(export.devices)
        with extra_device(export, HELD, index, existing=True) as device:
            before = _host_dir(device.path)
            if pid is None:
                return HeldSeen(HELD, index, CALLS, why, (), before, before)
            requests = [OpRequest(c.op, c.name, c.path2) for c in CALLS]
            done = run_ops(guest, f"/proc/{pid}/fd/3", requests, after=f"kill {pid}")
            after = _host_dir(device.path)
        return HeldSeen(HELD, index, CALLS, "", done.answer.errnos, before, after,
                        done.dmesg)

    def judge(self, judging: Judging, seen: HeldSeen) -> OpsVerdict:
        return judge_held(judging.plan.mode, judging.qemu_version, seen, judging.stderr,
                          judging.stderr_outside, judging.command_failures)
