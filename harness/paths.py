"""Where the harness keeps things on the host: one module knows every directory.

The cache (``$MDH_CACHE_DIR``, else ``$XDG_CACHE_HOME/multidevs-harness``) holds what
can be rebuilt: guest images, their package resolutions, the private apt trees, the
QEMU builds unpacked from Debian, the saved guest states, and the anchor of the
scratch tmpfs the exports are made on.  The state directory
(``$XDG_STATE_HOME/multidevs-harness``) holds what a person may want to read later:
the logs of failed runs.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import CacheDirError

# Below the cache root.
STATES = "states"  # saved guest states (boot by restore)
SCRATCH = "exports"  # anchor of the per-namespace scratch tmpfs (see host.export)
APT = "apt"  # one private apt tree per Debian suite
QEMU_BUILDS = "qemu"  # QEMU builds unpacked from Debian's packages
VIRTIOFSD_BUILDS = "virtiofsd"  # virtiofsd builds unpacked from Debian's packages
RESOLVED = "resolved"  # each recipe's resolved package versions
REMEMBERED = "remembered"  # QEMU probe answers and KVM liveness (qemu.remembered)


def cache_root() -> Path:
    """$MDH_CACHE_DIR, else $XDG_CACHE_HOME/multidevs-harness, else ~/.cache/...

    A variable set to nothing (an unset CI variable passed on) is refused, as an
    empty ``--qemu`` is: ``MDH_CACHE_DIR=''`` would quietly mean the default cache
    and ``HOME=''`` a cache at ``/.cache``."""
    env = os.environ.get("MDH_CACHE_DIR")
    if env is not None and not env.strip():
        raise CacheDirError("MDH_CACHE_DIR is set to nothing (an unset variable?)",
                            hint="unset it for the default cache, or name a directory")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    if not xdg and not os.environ.get("HOME", "unset").strip():
        raise CacheDirError("HOME is set to nothing, so the cache would be /.cache",
                            hint="set HOME, or name the cache with MDH_CACHE_DIR")
    return Path(xdg or str(Path.home() / ".cache")) / "multidevs-harness"


def states_dir(root: Path | None = None) -> Path:
    """Where saved guest states live."""
    return (root or cache_root()) / STATES


def scratch_anchor(root: Path | None = None) -> Path:
    """The directory each private namespace mounts its scratch tmpfs on."""
    return (root or cache_root()) / SCRATCH


def apt_dir(suite: str, root: Path | None = None) -> Path:
    """The private apt tree (lists, archives, state) of one Debian suite."""
    return (root or cache_root()) / APT / suite


def qemu_builds_dir(root: Path | None = None) -> Path:
    """Where QEMU builds unpacked from Debian's packages live."""
    return (root or cache_root()) / QEMU_BUILDS


def virtiofsd_builds_dir(root: Path | None = None) -> Path:
    """Where virtiofsd builds unpacked from Debian's packages live."""
    return (root or cache_root()) / VIRTIOFSD_BUILDS


def resolved_dir(root: Path | None = None) -> Path:
    """Where each recipe's resolved package versions are kept."""
    return (root or cache_root()) / RESOLVED


def remembered_dir(root: Path | None = None) -> Path:
    """Where the QEMU probe's answers and the KVM liveness answer are remembered."""
    return (root or cache_root()) / REMEMBERED


def state_home() -> Path:
    """$XDG_STATE_HOME/multidevs-harness, else ~/.local/state/multidevs-harness."""
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return base / "multidevs-harness"


def logs_dir() -> Path:
    """Where run logs go when no ``--logs`` is given."""
    return state_home() / "logs"
