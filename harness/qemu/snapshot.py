"""Boot by restore: a cache of saved guest states, keyed by everything a restore must match.

A TCG guest spends ~2.5 s in kernel init before SSH.  The first boot of a given
(QEMU, image, machine) key boots cold without any 9p mount, stops once the init said
ready, and saves its state over QMP (``migrate`` to a file); later boots start QEMU
with ``-incoming`` from that file and have SSH in a fraction of the time.  The 9p
exports are mounted over SSH afterwards, so the state never holds a mounted export
(QEMU refuses to migrate one) and one state serves any export path and any
``multidevs`` value: the device set is a fixed number of 9p slots whose tags never
change.

What a restore must match is in ``state_key``: the QEMU binary and every file the
command line names (kernel, initrd, firmware) by path, size, mtime and inode, and the
whole command line; a state made by another binary, a kernel rebuilt in place, a
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
import stat
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..cachefs import (
    PRIVATE_FILE,
    check_dir,
    create_exclusive,
    lock_file,
    private_dir,
    sync_dir,
    write_atomic,
)
from ..errors import CacheDirError, QmpError
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


def file_identity(path: Path) -> str:
    """Path, size, mtime (ns), device and inode of a file: one rebuilt in place (a
    kernel edit loop, a bisect step) or replaced by another is another file.  No
    content hash: hashing a 66 MB vmlinux costs 0.2 s, a third of a restore."""
    st = path.stat()
    return f"{path}:{st.st_size}:{st.st_mtime_ns}:{st.st_dev}:{st.st_ino}"


def binary_identity(binary: Path) -> str:
    """The identity of a QEMU binary: a rebuilt binary is another QEMU."""
    return file_identity(binary)


def _named_paths(arg: str) -> list[str]:
    # An argument names a file by itself (-kernel PATH) or as an option's value
    # (-drive file=PATH,..., -chardev ...,path=PATH); ",," is an escaped comma.
    values = [arg]
    for part in arg.replace(",,", "\0").split(","):
        values.append(part.partition("=")[2].replace("\0", ","))
    return [v for v in values if v.startswith("/")]


def named_files(argv: Sequence[str]) -> list[Path]:
    """Every file a QEMU command line names: each existing regular file given as an
    argument or an option value, and the files of a directory given to ``-L`` (the
    firmware and option ROMs QEMU loads from it)."""
    found: dict[Path, None] = {}
    for index, arg in enumerate(argv):
        for text in _named_paths(arg):
            path = Path(text)
            if path.is_file():
                found[path] = None
            elif path.is_dir() and index > 0 and argv[index - 1] == "-L":
                found.update((p, None) for p in sorted(path.iterdir()) if p.is_file())
    return list(found)


@dataclass(frozen=True)
class StateEntry:
    """One saved state in the cache (``complete`` False: a save that never finished,
    or whose metadata is lost; only pruning looks at those)."""

    key: str
    path: Path
    size: int
    created: float
    description: str
    complete: bool = True


def _read_meta(directory: Path) -> dict[str, Any] | None:
    """A key directory's metadata if it is whole, else None.  ``created`` may be
    missing (an older or hand-edited file): the state file's mtime stands in."""
    try:
        meta = json.loads((directory / META_FILE).read_text())
        state = (directory / STATE_FILE).lstat()
        if not isinstance(meta, dict) or not stat.S_ISREG(state.st_mode):
            return None
        size = int(meta["size"])
        created = meta.get("created", state.st_mtime)
        return {"size": size, "created": float(created),
                "description": str(meta.get("description", "")), "actual": state.st_size}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _disk_usage(directory: Path) -> int:
    with contextlib.suppress(OSError):
        return sum(p.lstat().st_size for p in directory.iterdir())
    return 0


class StateCache:
    """Saved guest states under one directory, one sub-directory per key.

    Every directory is private (0700) and every file 0600: a state holds the guest's
    RAM, its SSH host key included.  Fixed names are never opened through a link.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def _dir(self, key: str) -> Path:
        return self.root / key

    def _ready(self) -> None:
        # The cache root may be a link (a cache moved to a bigger disk) but must be
        # the user's own; the states directory is private.
        self.root.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        check_dir(self.root.parent, follow=True)
        private_dir(self.root)

    def find(self, key: str) -> Path | None:
        """The state file for ``key`` if it is complete (size as recorded), else None."""
        meta = _read_meta(self._dir(key))
        if meta is not None and meta["actual"] == meta["size"] > 0:
            return self._dir(key) / STATE_FILE
        return None

    @contextlib.contextmanager
    def saving(self, key: str) -> Iterator[Path | None]:
        """A path to save ``key``'s state to, or None when another process is saving it.

        The state becomes visible to ``find`` only through ``commit``; a save that
        raised leaves nothing behind.  The partial file is created here (0600, never
        through a link) before QEMU's ``cat >`` writes into it.
        """
        self._ready()
        directory = private_dir(self._dir(key))
        with contextlib.ExitStack() as stack:
            try:
                fd = stack.enter_context(
                    lock_file(directory / ".lock", fcntl.LOCK_EX | fcntl.LOCK_NB))
            except FileNotFoundError:
                fd = None  # another process pruned the directory since the mkdir
            # ... or between the open and the lock (the lock is on a removed file).
            if fd is None or os.fstat(fd).st_nlink == 0:
                yield None
                return
            partial = create_exclusive(directory / f"{STATE_FILE}.partial")
            try:
                yield partial
            finally:
                partial.unlink(missing_ok=True)
                # A save that failed (a full disk) leaves no directory either: under our
                # lock, as ``prune`` removes an incomplete one.
                if self.find(key) is None:
                    shutil.rmtree(directory, ignore_errors=True)

    def commit(self, key: str, partial: Path, description: str) -> None:
        """Make a finished save visible, then keep only the newest KEEP_STATES states.

        The metadata is written (atomically) before the state takes its name, so a
        crash in between leaves an entry ``prune`` removes, never a state ``find``
        would take with another's size."""
        directory = self._dir(key)
        meta = {"size": partial.stat().st_size, "created": time.time(),
                "description": description}
        write_atomic(directory / META_FILE, (json.dumps(meta, indent=2) + "\n").encode())
        os.chmod(partial, PRIVATE_FILE)
        os.replace(partial, directory / STATE_FILE)
        sync_dir(directory)
        self.prune(KEEP_STATES)

    def invalidate(self, key: str) -> None:
        """Forget ``key``'s state (QEMU rejected it): the next boot saves a new one."""
        (self._dir(key) / META_FILE).unlink(missing_ok=True)
        (self._dir(key) / STATE_FILE).unlink(missing_ok=True)

    def _directories(self) -> list[Path]:
        with contextlib.suppress(OSError):
            return [d for d in self.root.iterdir() if d.is_dir() and not d.is_symlink()]
        return []

    def entries(self) -> list[StateEntry]:
        """Every complete state, newest first."""
        found = []
        for directory in self._directories():
            meta = _read_meta(directory)
            if meta is not None and meta["actual"] == meta["size"] > 0:
                found.append(StateEntry(directory.name, directory / STATE_FILE, meta["size"],
                                        meta["created"], meta["description"]))
        return sorted(found, key=lambda e: e.created, reverse=True)

    def prune(self, keep: int = 0) -> list[StateEntry]:
        """Remove all but the newest ``keep`` states, and every incomplete entry (a
        ``state.bin.partial`` left by a killed save, a state without metadata) that
        no process is saving now; return what was removed."""
        removed = self.entries()[keep:]
        for entry in removed:
            shutil.rmtree(entry.path.parent, ignore_errors=True)
        return removed + self._prune_incomplete()

    def _prune_incomplete(self) -> list[StateEntry]:
        removed = []
        for directory in self._directories():
            try:
                with lock_file(directory / ".lock", fcntl.LOCK_EX | fcntl.LOCK_NB) as fd:
                    if fd is None:
                        continue  # being saved right now
                    size = _disk_usage(directory)
                    (directory / f"{STATE_FILE}.partial").unlink(missing_ok=True)
                    if self.find(directory.name) is not None:
                        continue
                    shutil.rmtree(directory, ignore_errors=True)
            except (CacheDirError, OSError):
                continue  # not ours to judge (a planted link): left as it is
            removed.append(StateEntry(directory.name, directory / STATE_FILE, size,
                                      0.0, "incomplete", complete=False))
        return removed


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
