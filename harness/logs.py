"""Log directories: one per run, kept when the user asked or when someone must read them."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from . import paths
from .config import Progress, quiet
from .errors import CacheDirError


class LogDir:
    """A run's log directory and whether it is kept when the run ends."""

    def __init__(self, path: Path, named: bool) -> None:
        self.path = path
        self.named = named  # the user asked for it (--logs): never removed
        self.needed = False

    @property
    def kept(self) -> bool:
        return self.named or self.needed

    def keep(self) -> None:
        """Keep the directory and say where it is: the run failed, or its evidence is
        the point."""
        self.needed = True


def _new_log_dir(base: Path, prefix: str, hint: str) -> Path:
    try:
        base.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        return Path(tempfile.mkdtemp(prefix=f"{prefix}-{stamp}-", dir=base))
    except OSError as exc:
        raise CacheDirError(
            f"cannot write the log directory {base}: {exc.strerror}", hint=hint
        ) from exc



@contextlib.contextmanager
def log_root(
    logs: Path | None, prefix: str = "run", progress: Progress = quiet
) -> Iterator[LogDir]:
    """A new log directory under ``logs`` (always kept) or the state directory.

    The latter is removed at the end unless ``keep()`` was called, or an exception
    (Ctrl-C included) left the block: logs survive exactly when someone needs them,
    and then ``progress`` is told where they are.
    """
    if logs is not None:
        log_dir = LogDir(_new_log_dir(logs, prefix, "pass --logs with a writable directory"),
                         named=True)
    else:
        log_dir = LogDir(_new_log_dir(paths.logs_dir(), prefix,
                                      "set XDG_STATE_HOME or pass --logs DIR"), named=False)
    try:
        yield log_dir
    except BaseException:
        log_dir.keep()
        raise
    finally:
        if log_dir.needed:
            progress(f"logs kept in {log_dir.path}")
        elif not log_dir.kept:
            shutil.rmtree(log_dir.path, ignore_errors=True)
