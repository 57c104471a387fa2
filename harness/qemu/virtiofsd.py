"""Which virtiofsd serves the virtiofs rows, and its version.

Debian 12 has no Rust virtiofsd; Debian 13 (trixie) packages 1.13.  Its binary runs on
a Debian 12 host through trixie's own dynamic loader and libraries (libc6,
libseccomp2, libcap-ng0, libgcc-s1), so those are fetched with it through the same
private apt as the guest packages, unpacked with ``dpkg-deb -x`` under
``<cache>/virtiofsd/<suite>-<version>/`` and found there again without any apt call.
The order: ``--virtiofsd PATH``, else a host install (PATH or /usr/libexec), else the
cached or freshly fetched trixie build.  QEMU 7.2's own C virtiofsd
(/usr/lib/qemu/virtiofsd) is not used: it takes another command line (``-o``
options) and is deprecated upstream.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .. import paths
from ..config import Progress, quiet
from ..errors import VirtiofsdError
from ..image.apt import PrivateApt, Suite
from .debian import unpack_packages

TRIXIE = Suite(name="trixie", pockets=("trixie", "trixie-updates"), security="trixie-security")
# The daemon and every library its ELF header and trixie's loader need.
PACKAGES = ("virtiofsd", "libc6", "libseccomp2", "libcap-ng0", "libgcc-s1")
BINARY = Path("usr/libexec/virtiofsd")
LOADER = Path("usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
LIBRARY_DIRS = (Path("usr/lib/x86_64-linux-gnu"), Path("lib/x86_64-linux-gnu"))
HOST_CANDIDATES = (Path("/usr/libexec/virtiofsd"),)
_VERSION_RE = re.compile(r"virtiofsd\s+v?(\d+(?:\.\d+)+)")
_VERSION_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Virtiofsd:
    """A virtiofsd to run: the command that starts it, its version, where it came from."""

    # The binary itself, or the loader and its --library-path before the binary.
    command: tuple[str, ...]
    version: str
    source: str  # "--virtiofsd", "host" or "debian <suite>"

    @property
    def binary(self) -> str:
        """The daemon's own path (the last word of ``command``)."""
        return self.command[-1]


def parse_version(text: str) -> str | None:
    """``virtiofsd 1.13.2`` -> ``1.13.2``; None when ``--version`` said no such thing."""
    match = _VERSION_RE.search(text)
    return match.group(1) if match else None


def ask_version(command: tuple[str, ...], what: str) -> str:
    """Run ``command --version``; raise VirtiofsdError naming ``what`` when it cannot."""
    try:
        result = subprocess.run([*command, "--version"], capture_output=True, text=True,
                                timeout=_VERSION_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise VirtiofsdError(f"cannot run {what} --version: {exc}",
                             hint="pass a working virtiofsd with --virtiofsd PATH") from exc
    version = parse_version(result.stdout + result.stderr)
    if result.returncode != 0 or version is None:
        raise VirtiofsdError(
            f"{what} --version exited {result.returncode} without 'virtiofsd X.Y.Z'",
            hint="the harness needs the Rust virtiofsd (1.x); pass one with --virtiofsd PATH",
            details=(result.stdout + result.stderr).strip()[-1000:])
    return version


def unpacked_command(root: Path) -> tuple[str, ...]:
    """How an unpacked Debian build runs: its own loader, its own libraries."""
    libraries = ":".join(str(root / d) for d in LIBRARY_DIRS)
    return (str(root / LOADER), "--library-path", libraries, str(root / BINARY))


def host_virtiofsd() -> Path | None:
    """A virtiofsd installed on the host (Debian 13, Ubuntu), else None."""
    found = shutil.which("virtiofsd")
    if found:
        return Path(found)
    return next((p for p in HOST_CANDIDATES if p.is_file()), None)


def cached_root(cache_root: Path, suite: Suite = TRIXIE) -> Path | None:
    """The newest unpacked virtiofsd of ``suite`` already in the cache, or None."""
    found = sorted(paths.virtiofsd_builds_dir(cache_root).glob(f"{suite.name}-*/{BINARY}"))
    return found[-1].parents[2] if found else None


def fetch_debian_virtiofsd(cache_root: Path, suite: Suite = TRIXIE,
                           progress: Progress = quiet) -> Path:
    """The root of Debian ``suite``'s virtiofsd unpacked with its libraries, fetched if
    needed.  Raises ArchiveUnreachable without the archive, VirtiofsdError when the
    packages hold no daemon or loader."""
    if (root := cached_root(cache_root, suite)) is not None:
        return root
    apt = PrivateApt(suite, paths.apt_dir(suite.name, cache_root))
    progress(f"apt-get update (Debian {suite.name}, private lists)")
    apt.update()
    infos = apt.show(PACKAGES)
    version = re.sub(r"[^A-Za-z0-9.+~-]", "_", infos[PACKAGES[0]].version)
    root = paths.virtiofsd_builds_dir(cache_root) / f"{suite.name}-{version}"
    progress(f"fetching virtiofsd {version} from Debian {suite.name}")
    pins = {name: infos[name].version for name in PACKAGES}
    missing = unpack_packages(apt, pins, root, cache_root, (BINARY, LOADER))
    if missing:
        raise VirtiofsdError(f"{' '.join(PACKAGES)} from Debian {suite.name} hold no "
                             f"{', '.join(map(str, missing))}", hint="see the private apt's lists")
    return root


def find_virtiofsd(given: Path | None, cache_root: Path | None = None,
                   progress: Progress = quiet) -> Virtiofsd:
    """The virtiofsd of a run: ``given`` (--virtiofsd), else the host's, else Debian
    trixie's from the cache (fetched the first time); its version asked once."""
    if given is not None:
        if not given.is_file():
            raise VirtiofsdError(f"--virtiofsd {given} is not a file",
                                 hint="pass the path of a virtiofsd binary or wrapper")
        command: tuple[str, ...] = (str(given.resolve()),)
        return Virtiofsd(command, ask_version(command, str(given)), "--virtiofsd")
    host = host_virtiofsd()
    if host is not None:
        return Virtiofsd((str(host),), ask_version((str(host),), str(host)), "host")
    root = fetch_debian_virtiofsd(cache_root or paths.cache_root(), progress=progress)
    command = unpacked_command(root)
    return Virtiofsd(command, ask_version(command, str(root / BINARY)),
                     f"debian {TRIXIE.name}")
