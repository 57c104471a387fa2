"""Which virtiofsd serves the virtiofs rows, and its version.

Debian 12 has no Rust virtiofsd; Debian 13 (trixie) packages 1.13.  Its binary runs on
a Debian 12 host through trixie's own dynamic loader and libraries: it is fetched,
unpacked and run the way ``--qemu debian:SUITE`` runs a QEMU (``qemu.debian``), under
``<cache>/virtiofsd/<suite>-<version>/``, and found there again without any apt call.
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
from ..errors import VirtiofsdError
from ..proc import run_tied
from ..progress import Progress, quiet
from .debian import SUITES, VIRTIOFSD, fetch_unpacked

TRIXIE = SUITES["trixie"]
HOST_CANDIDATES = (Path("/usr/libexec/virtiofsd"),)
_VERSION_RE = re.compile(r"virtiofsd\s+v?(\d+(?:\.\d+)+)")
_VERSION_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Virtiofsd:
    """A virtiofsd to run: the command that starts it, its version, where it came from."""

    # The binary itself (or the wrapper script of a Debian build, ``qemu.debian``).
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
        result = run_tied([*command, "--version"], timeout=_VERSION_TIMEOUT_S)
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


def host_virtiofsd() -> Path | None:
    """A virtiofsd installed on the host (Debian 13, Ubuntu), else None."""
    found = shutil.which("virtiofsd")
    if found:
        return Path(found)
    return next((p for p in HOST_CANDIDATES if p.is_file()), None)


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
    build = fetch_unpacked(VIRTIOFSD, TRIXIE, cache_root or paths.cache_root(), progress)
    command = (str(build.wrapper),)
    return Virtiofsd(command, ask_version(command, str(build.wrapper)),
                     f"debian {TRIXIE.name}")
