"""Boot by restore: a cache of saved guest states, keyed by everything a restore must match.

A TCG guest spends ~2.5 s in kernel init before SSH.  The first boot of a given
(QEMU, image, machine) key boots cold without any 9p mount, stops once the init said
ready, and saves its state over QMP (``migrate`` to a file); later boots start QEMU
with ``-incoming`` from that file and have SSH in a fraction of the time.  The 9p
exports are mounted over SSH afterwards, so the state never holds a mounted export
(QEMU refuses to migrate one) and one state serves any export path and any
``multidevs`` value: the device set is a fixed number of 9p slots whose tags never
change.

What a restore must match is in ``state_key``; a state made by another binary, a
changed image or different devices is never found.  A file whose size differs from
what was recorded (truncated) is never used; one QEMU rejects is removed and the
guest boots cold.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shlex
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..config import ExportSpec
from ..errors import GuestInitFailed, QmpError
from ..guest.ssh import GuestSsh
from .cmdline import mount_options
from .qmp import Qmp

# The newest states kept; each is ~80 MB at -m 256.
KEEP_STATES = 8
STATE_FILE = "state.bin"
META_FILE = "meta.json"
# Bytes per second for the migration stream: unlimited, the default throttles to
# 32 MiB/s (a 79 MB state took 0.52 s; raised, 0.10-0.16 s).
_MAX_BANDWIDTH = 1 << 40
_POLL_S = 0.005  # the whole restore takes ~0.1 s: poll finely


def state_key(parts: Sequence[str]) -> str:
    """A stable hash of everything a restore must match (see ``Machine.state_parts``)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()[:24]


def binary_identity(binary: Path) -> str:
    """Path, size and mtime of a QEMU binary: a rebuilt binary is another QEMU."""
    st = binary.stat()
    return f"{binary}:{st.st_size}:{st.st_mtime_ns}"


@dataclass(frozen=True)
class StateEntry:
    """One saved state in the cache."""

    key: str
    path: Path
    size: int
    created: float
    description: str


class StateCache:
    """Saved guest states under one directory, one sub-directory per key."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _dir(self, key: str) -> Path:
        return self.root / key

    def find(self, key: str) -> Path | None:
        """The state file for ``key`` if it is complete (size as recorded), else None."""
        directory = self._dir(key)
        try:
            meta = json.loads((directory / META_FILE).read_text())
            if (directory / STATE_FILE).stat().st_size == int(meta["size"]) > 0:
                return directory / STATE_FILE
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return None

    @contextlib.contextmanager
    def saving(self, key: str) -> Iterator[Path | None]:
        """A path to save ``key``'s state to, or None when another process is saving it.

        The state becomes visible to ``find`` only through ``commit``; a save that
        raised leaves nothing behind.
        """
        directory = self._dir(key)
        directory.mkdir(parents=True, exist_ok=True)
        with open(directory / ".lock", "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield None
                return
            partial = directory / f"{STATE_FILE}.partial"
            try:
                yield partial
            finally:
                partial.unlink(missing_ok=True)
                fcntl.flock(lock, fcntl.LOCK_UN)

    def commit(self, key: str, partial: Path, description: str) -> None:
        """Make a finished save visible, then keep only the newest KEEP_STATES states."""
        directory = self._dir(key)
        meta = {"size": partial.stat().st_size, "created": time.time(),
                "description": description}
        os.replace(partial, directory / STATE_FILE)
        (directory / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        self.prune(KEEP_STATES)

    def invalidate(self, key: str) -> None:
        """Forget ``key``'s state (QEMU rejected it): the next boot saves a new one."""
        (self._dir(key) / META_FILE).unlink(missing_ok=True)
        (self._dir(key) / STATE_FILE).unlink(missing_ok=True)

    def entries(self) -> list[StateEntry]:
        """Every complete state, newest first."""
        found = []
        for directory in self.root.glob("*"):
            path = self.find(directory.name)
            if path is None:
                continue
            meta = json.loads((directory / META_FILE).read_text())
            found.append(StateEntry(directory.name, path, int(meta["size"]),
                                    float(meta["created"]), str(meta.get("description", ""))))
        return sorted(found, key=lambda e: e.created, reverse=True)

    def prune(self, keep: int = 0) -> list[StateEntry]:
        """Remove all but the newest ``keep`` states; return what was removed."""
        removed = self.entries()[keep:]
        for entry in removed:
            shutil.rmtree(entry.path.parent, ignore_errors=True)
        return removed


def mount_exports(ssh: GuestSsh, exports: Sequence[ExportSpec], *, restored: bool,
                  timeout: float) -> None:
    """Mount every export over SSH, as the init does for a cold guest; after a restore
    set the guest's clock first (it still shows the time of the save).

    Raises GuestInitFailed with the guest's words when a mount fails.
    """
    steps = [f"date -s @{int(time.time())} > /dev/null"] if restored else []
    for export in exports:
        point = shlex.quote(export.mount_point)
        steps.append(f"mkdir -p {point}")
        steps.append(f"mount -t 9p -o {mount_options(export)} {shlex.quote(export.tag)} {point}")
    if not steps:
        return
    result = ssh.run(" && ".join(steps), timeout=timeout)
    if result.rc != 0:
        raise GuestInitFailed(
            f"mounting the 9p exports over SSH failed (rc {result.rc}): "
            f"{result.stderr.decode(errors='replace').strip()}",
            hint="the same mount the init makes on a cold boot; see the console log",
        )


def incoming_args(state: Path) -> list[str]:
    """``-incoming`` reading a saved state (exec: works on QEMU 4.2 to 10)."""
    return ["-incoming", f"exec:cat {shlex.quote(str(state))}"]


def save_state(qmp: Qmp, path: Path, deadline: float) -> None:
    """Stop the guest and save its whole state to ``path``; it stays stopped.

    Raises QmpError when QEMU refuses (a 9p export is mounted, say) or fails.
    """
    qmp.execute("stop")
    qmp.execute("migrate-set-parameters", {"max-bandwidth": _MAX_BANDWIDTH})
    qmp.execute("migrate", {"uri": f"exec:cat > {shlex.quote(str(path))}"})
    _wait_migration(qmp, deadline, "saving the guest state")


def wait_restored(qmp: Qmp, deadline: float) -> None:
    """Wait until QEMU has loaded the incoming state (the guest is then paused).

    A state QEMU rejects makes it exit, which the caller sees as a QmpError here or
    as QEMU gone; either way the state must not be used again.
    """
    while True:
        info = qmp.execute("query-status")
        status = info.get("status") if isinstance(info, dict) else None
        if status not in ("inmigrate", None):
            if status != "paused":
                raise QmpError(f"after loading the saved state QEMU is {status!r}, "
                               "expected 'paused'", hint="see the QEMU stderr log")
            return
        if time.monotonic() > deadline:
            raise QmpError("loading the saved guest state did not finish in time",
                           hint="a loaded machine restores slowly; see the QMP log")
        time.sleep(_POLL_S)


def _wait_migration(qmp: Qmp, deadline: float, what: str) -> None:
    while True:
        info = qmp.execute("query-migrate")
        status = info.get("status") if isinstance(info, dict) else None
        if status == "completed":
            return
        if status in ("failed", "cancelled"):
            raise QmpError(f"{what} failed: {info.get('error-desc', status)}"
                           if isinstance(info, dict) else f"{what} failed",
                           hint="see the QEMU stderr log")
        if time.monotonic() > deadline:
            raise QmpError(f"{what} did not finish in time (status {status})",
                           hint="a loaded machine saves slowly; see the QMP log")
        time.sleep(_POLL_S)
