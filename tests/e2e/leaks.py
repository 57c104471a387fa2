"""Leak checks shared by the e2e tests: QEMU processes, tmpfs mounts, temp dirs."""

from __future__ import annotations

import os
import time
from pathlib import Path


def qemu_pids() -> set[int]:
    """PIDs of every QEMU system emulator on the machine."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
            state = (entry / "stat").read_text().split(") ", 1)[1][0]
        except OSError:
            continue
        if comm.startswith("qemu-system") and state != "Z":
            pids.add(int(entry.name))
    return pids


def assert_no_qemu_left(*pids: int, within: float = 10.0) -> None:
    """Fail if a QEMU (of ``pids``, or any if none given) is still alive after ``within``."""
    deadline = time.monotonic() + within
    while True:
        alive = qemu_pids()
        if pids:
            alive &= set(pids)
        if not alive:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"QEMU processes left running: {sorted(alive)}")
        time.sleep(0.1)


def host_tmpfs_mounts() -> set[str]:
    """tmpfs mount points in the host's (pid 1's) mount namespace."""
    text = Path("/proc/1/mounts").read_text()
    return {line.split()[1] for line in text.splitlines() if line.split()[2] == "tmpfs"}


def own_pid() -> int:
    return os.getpid()
