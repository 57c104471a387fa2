"""A second QEMU to test against: Debian's own build, fetched and unpacked, never installed.

bookworm-backports carries QEMU 10.0.x built for Debian 12, whose binary runs on a
Debian 12 host next to the system's 7.2.  It comes through the same private apt as
the guest packages (state under the harness cache), is unpacked with ``dpkg-deb -x``
into ``<cache>/qemu/<suite>-<version>/`` and found again there without any apt call
on the next run.  Its firmware is in the unpacked ``usr/share/qemu``, which the
environment passes as ``-L`` (``environment.find_datadir``).
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from .. import paths
from ..config import Progress, quiet
from ..errors import ImageBuildError
from ..image.apt import PrivateApt, Suite
from ..proc import run_tied

BOOKWORM_BACKPORTS = Suite(name="bookworm-backports", pockets=("bookworm-backports",))
# The binary, its shared data (firmware, keymaps) and the common helpers it loads.
PACKAGES = ("qemu-system-x86", "qemu-system-common", "qemu-system-data")
BINARY = Path("usr/bin/qemu-system-x86_64")



def qemu_root(cache_root: Path, suite: Suite, version: str) -> Path:
    """Where one Debian QEMU build is unpacked (a version's ':' epoch made safe)."""
    safe = re.sub(r"[^A-Za-z0-9.+~-]", "_", version)
    return paths.qemu_builds_dir(cache_root) / f"{suite.name}-{safe}"


def cached_qemu(cache_root: Path, suite: Suite = BOOKWORM_BACKPORTS) -> Path | None:
    """The newest unpacked QEMU of ``suite`` already in the cache, or None."""
    found = sorted(paths.qemu_builds_dir(cache_root).glob(f"{suite.name}-*/{BINARY}"))
    return found[-1] if found else None


def fetch_debian_qemu(
    cache_root: Path, suite: Suite = BOOKWORM_BACKPORTS, progress: Progress = quiet,
    refresh: bool = False,
) -> Path:
    """The path of Debian's ``qemu-system-x86_64`` from ``suite``, fetched if needed.

    Without ``refresh`` a build already in the cache is used as it is.  Raises
    ArchiveUnreachable when the archive cannot be reached (tests skip on that) and
    ImageBuildError when the packages do not unpack into a binary.
    """
    if not refresh and (binary := cached_qemu(cache_root, suite)) is not None:
        return binary
    apt = PrivateApt(suite, paths.apt_dir(suite.name, cache_root))
    progress(f"apt-get update (Debian {suite.name}, private lists)")
    apt.update()
    infos = apt.show(PACKAGES)
    version = infos[PACKAGES[0]].version
    root = qemu_root(cache_root, suite, version)
    if (root / BINARY).is_file():
        return root / BINARY
    progress(f"fetching QEMU {version} from Debian {suite.name}")
    pins = {name: infos[name].version for name in PACKAGES}
    if unpack_packages(apt, pins, root, cache_root, (BINARY,)):
        raise ImageBuildError(f"{' '.join(PACKAGES)} {version} hold no {BINARY}")
    return root / BINARY


def unpack_packages(apt: PrivateApt, pins: Mapping[str, str], root: Path, scratch: Path,
                    needed: Sequence[Path]) -> tuple[Path, ...]:
    """Download the packages of ``pins`` (name -> version), unpack them together (never
    installed) and, when every ``needed`` path is in the tree, put it at ``root``,
    replacing what was there; return the ``needed`` paths that were missing (then
    nothing is put anywhere).  The work happens in a temporary directory under
    ``scratch`` (on ``root``'s filesystem, so the tree moves into place by rename)."""
    with tempfile.TemporaryDirectory(prefix=".unpack-", dir=scratch) as tmp:
        work = Path(tmp)
        staging = work / "root"
        for deb in apt.download(pins, work):
            unpack_deb(deb, staging)
        missing = tuple(path for path in needed if not (staging / path).is_file())
        if not missing:
            root.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(root, ignore_errors=True)
            staging.rename(root)
        return missing


def unpack_deb(deb: Path, into: Path) -> None:
    """``dpkg-deb -x`` one package into ``into`` (never installed)."""
    result = run_tied(["dpkg-deb", "-x", str(deb), str(into)])
    if result.returncode != 0:
        raise ImageBuildError(f"dpkg-deb -x {deb.name} failed (exit {result.returncode})",
                              details=result.stderr.strip()[-2000:])
