"""The worker threads of a run: the planned guests run ``jobs`` at a time, and on
Ctrl-C (or any exception) every live guest is stopped so the workers unwind.

What one worker does with its guest is ``pool.run_guest``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from .guest.lifecycle import Guest
from .plan import GuestPlan
from .results import ResultRow


class RunStopped(KeyboardInterrupt):
    """Raised in a worker that was about to boot a guest or start an observation after
    the run was interrupted: a KeyboardInterrupt, so no handler of the guest's work
    turns it into rows, and the main thread, already unwinding, ignores it."""


class LiveGuests:
    """Guests currently running, so Ctrl-C in the main thread can stop them all."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._guests: set[Guest] = set()
        self._stopping = False

    def add(self, guest: Guest) -> None:
        """Track ``guest``; after ``kill_all`` it is killed at once instead.

        A worker may be starting its guest when Ctrl-C comes: that guest must not
        then run a whole observation while the main thread waits for the worker.
        """
        with self._lock:
            self._guests.add(guest)
            stopping = self._stopping
        if stopping:
            guest.kill()

    def going(self) -> None:
        """Raise RunStopped once ``kill_all`` ran: after a signal, no worker boots a new
        guest or starts a new observation (it would run for seconds while the main
        thread waits for it)."""
        with self._lock:
            stopping = self._stopping
        if stopping:
            raise RunStopped()

    def discard(self, guest: Guest) -> None:
        with self._lock:
            self._guests.discard(guest)

    def kill_all(self) -> None:
        with self._lock:
            self._stopping = True
            guests = list(self._guests)
        for guest in guests:
            guest.kill()


def run_guests(
    plans: Sequence[GuestPlan],
    run_one: Callable[[GuestPlan], list[ResultRow]],
    jobs: int,
    live: LiveGuests,
) -> list[ResultRow]:
    """Run ``run_one`` for every plan, ``jobs`` at a time; on any exception (Ctrl-C
    included) stop every live guest so blocked workers unwind, then re-raise.

    Each worker thread owns its guest from launch to shutdown: QEMU's parent-death
    signal follows the thread that forked it.
    """
    rows: list[ResultRow] = []
    if jobs <= 1:
        try:
            for plan in plans:
                rows += run_one(plan)
            return rows
        except BaseException:
            live.kill_all()
            raise
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="guest") as pool:
        futures: list[Future[list[ResultRow]]] = [pool.submit(run_one, p) for p in plans]
        try:
            for future in futures:
                rows += future.result()
            return rows
        except BaseException:
            for future in futures:
                future.cancel()
            live.kill_all()
            raise
