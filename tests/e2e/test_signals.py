"""Signals by convention: exit 128 + the first signal (130 SIGINT, 143 SIGTERM); from
that signal on no guest boots and no observation starts, and a second signal does not
interrupt the cleanup.

The run has more guests than workers (four guests, two at a time), so a worker that
went on after the signal would boot the next guest: every QEMU the run started is
counted, and none may appear after the first signal.  Before these fixes SIGTERM
exited 130, and after two SIGINTs 50 ms apart one try in three went on booting and
observing a guest for 13 s.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import pytest

from .helpers import needs_qemu, needs_root
from .leaks import Sandbox, kept_log_dirs, marked_qemu_pids

# A process's start time has the kernel's clock-tick resolution (10 ms); the main
# thread stops the workers within milliseconds of the signal.
START_MARGIN_S = 0.1
_TICKS = os.sysconf("SC_CLK_TCK")


def _started(pid: int) -> float:
    """When ``pid`` started, in CLOCK_BOOTTIME seconds (/proc/PID/stat's starttime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    return int(fields[19]) / _TICKS


RUN = ["run", "--accel", "tcg", "--modes", "remap,warn,forbid", "--isolate", "--cache",
       "none", "--layout", "standard", "--checks", "ids", "--no-witness", "--jobs", "2"]


@needs_root
@needs_qemu
@pytest.mark.timeout(150)
@pytest.mark.parametrize(
    ("signals", "delay"),
    [((signal.SIGTERM,), 0.0), ((signal.SIGINT, signal.SIGINT), 0.0),
     ((signal.SIGINT, signal.SIGINT), 0.7), ((signal.SIGINT, signal.SIGINT), 2.0),
     ((signal.SIGTERM, signal.SIGINT), 1.0)],
    ids=["SIGTERM-at-boot", "SIGINT-twice-at-boot", "SIGINT-twice-0.7s-later",
         "SIGINT-twice-2s-later", "SIGTERM-then-SIGINT"])
def test_a_signal_boots_nothing_more_and_exits_128_plus_it(
        tmp_path: Path, signals: tuple[signal.Signals, ...], delay: float) -> None:
    sandbox = Sandbox(tmp_path)
    running = sandbox.start(RUN)
    running.wait_for("booting guest", timeout=90)
    time.sleep(delay)
    seen = marked_qemu_pids(sandbox.marker)
    told = len(running.lines)
    sent, sent_boottime = time.monotonic(), time.clock_gettime(time.CLOCK_BOOTTIME)
    running.signal(signals[0])
    for later in signals[1:]:
        time.sleep(0.05)
        running.signal(later)
    # Every QEMU of the run seen until the harness exits, with its start time: none
    # may start after the signal (a worker's guest launched as the signal landed,
    # before the main thread stopped the workers, is within the margin).
    starts: dict[int, float] = {}
    while running.proc.poll() is None and time.monotonic() - sent < 60:
        for pid in marked_qemu_pids(sandbox.marker) - seen - set(starts):
            with contextlib.suppress(OSError):
                starts[pid] = _started(pid)
        time.sleep(0.02)
    rc, _, err = running.finish(30)
    stopped_after = time.monotonic() - sent
    after = "".join(running.lines[told:])
    assert rc == 128 + signals[0], err
    assert f"interrupted ({signals[0].name}): guests stopped" in err
    late = {pid: at - sent_boottime for pid, at in starts.items()
            if at > sent_boottime + START_MARGIN_S}
    assert late == {}, f"QEMU started after the signal (s after it): {late}\n{err}"
    # "SSH up after ... ; observing" starts an observation; a guest killed while
    # observing says "... while observing", which is the stop itself.
    assert "; observing" not in after, after
    assert stopped_after < 20, f"stopped {stopped_after:.1f} s after the signal\n{err}"
    assert "Traceback" not in err
    sandbox.assert_clean(allowed=kept_log_dirs(err))
