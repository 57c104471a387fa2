"""Log directories: one per run, kept when the user asked or when someone must read them."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from . import paths
from .errors import CacheDirError
from .progress import Progress, quiet


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


def harness_fault(exc: BaseException, directory: Path | None = None) -> str:
    """Write ``exc``'s traceback to a file and return one line that names it.

    An exception the harness did not raise on purpose is a harness bug, never news
    about QEMU: the caller turns it into exit 2 (or error rows) and shows only this
    line; the whole traceback waits in ``directory`` (default: the logs directory),
    or, when nothing can be written there, in the system's temporary directory.
    """
    import traceback

    text = "".join(traceback.format_exception(exc))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    where: Path | None = None
    for base in (directory or paths.logs_dir(), Path(tempfile.gettempdir())):
        try:
            base.mkdir(parents=True, exist_ok=True)
            handle, name = tempfile.mkstemp(prefix=f"harness-fault-{stamp}-", suffix=".log",
                                            dir=base)
            with open(handle, "w") as out:
                out.write(text)
            where = Path(name)
            break
        except OSError:
            continue
    summary = " ".join(f"{type(exc).__name__}: {exc}".split())
    if len(summary) > 300:
        summary = summary[:300] + "..."
    place = f"traceback in {where}" if where else "the traceback could not be written"
    return f"harness fault (a bug in the harness, not a finding): {summary}; {place}"
