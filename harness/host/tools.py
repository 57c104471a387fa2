"""The host tools and kernel filesystems a layout needs: where a tool is, running it
with an error that says what failed, and refusing early (naming the package or the
module) what this host lacks.  Used by the layout modules (``host.blockfs``,
``host.overlay``, ``host.scripted``)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from ..errors import ExportError, LayoutRequirementMissing, LayoutUnavailable
from ..proc import find_program, run_tied
from .namespace import in_user_namespace

# Formatting a small image takes well under a second; this only stops a hung tool.
TOOL_TIMEOUT_S = 60.0


def kernel_filesystems(text: str) -> frozenset[str]:
    """The filesystem names of /proc/filesystems ``text`` ("nodev\\ttmpfs", "\\text4")."""
    return frozenset(line.split()[-1] for line in text.splitlines() if line.split())


def require_filesystem(fstype: str, module: str | None = None) -> None:
    """Raise LayoutRequirementMissing when the kernel lists no ``fstype`` and loading
    ``module`` (default: the same name) does not add it.  A filesystem built as a
    module is listed only once loaded, which a mount would do by itself; so modprobe
    is tried before saying no."""
    try:
        listed = kernel_filesystems(Path("/proc/filesystems").read_text())
    except OSError:
        return  # no /proc: let the mount itself tell
    if fstype in listed:
        return
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        run_tied([find_program("modprobe") or "modprobe", "-q", module or fstype],
                 timeout=TOOL_TIMEOUT_S)
    if fstype not in kernel_filesystems(Path("/proc/filesystems").read_text()):
        raise LayoutRequirementMissing(
            f"this kernel has no {fstype} filesystem (not in /proc/filesystems, and "
            f"modprobe {module or fstype} did not add it)",
            hint=f"boot a kernel with {fstype} built in or as a module",
        )


def find_tool(name: str, package: str) -> str:
    """The full path of host tool ``name``, looked for in $PATH and sbin; raises
    LayoutRequirementMissing naming the Debian ``package`` that ships it."""
    found = find_program(name)
    if found is None:
        raise LayoutRequirementMissing(
            f"{name} is not installed (it formats or manages the layout's filesystem)",
            hint=f"install {package} (scripts/setup does): apt-get install -y {package}",
        )
    return found


def run_tool(argv: Sequence[str], what: str, timeout: float = TOOL_TIMEOUT_S) -> str:
    """Run a host tool to completion and return its stdout; ExportError with its
    stderr tail when it fails or outlives ``timeout`` seconds."""
    try:
        result = run_tied(argv, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise ExportError(f"{what}: {argv[0]} did not finish within {timeout:g} s",
                          hint="the host is overloaded or the tool hangs") from exc
    except OSError as exc:
        raise ExportError(f"{what}: cannot run {argv[0]}: {exc.strerror}",
                          hint="check that the tool is installed and executable") from exc
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise ExportError(f"{what} failed: {' '.join(argv)} exited {result.returncode}",
                          hint="; ".join(tail) or "the tool printed nothing")
    return result.stdout


def require_real_root(what: str) -> None:
    """Raise LayoutUnavailable (one line) when this process cannot attach loop devices:
    inside a user namespace, root is root of that namespace only."""
    if in_user_namespace() or os.geteuid() != 0:
        raise LayoutUnavailable(
            f"{what} layout skipped: loop devices need real root, and this harness runs "
            "in a user namespace (rootless)")
