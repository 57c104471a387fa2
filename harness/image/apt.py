"""A private apt for one Debian suite: package lists, versions and downloads.

Every guest package (kernel and userland) comes from the recipe's own suite through
an apt configuration whose state lives under the harness cache, so the image is the
same whatever the host runs and the host's apt sources are never read or changed.
Nothing is installed: packages are only downloaded and later unpacked with dpkg-deb.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import ArchiveUnreachable, ImageBuildError
from ..proc import run_tied
from ..timeouts import timeout_scale_from_env

DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SECURITY_MIRROR = "http://deb.debian.org/debian-security"
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
# Deadlines of each apt call in seconds (scaled by MDH_TIMEOUT_SCALE): the lists of
# a suite and its pockets are some 40 MB, the image's packages some 60 MB.
APT_TIMEOUTS = {"update": 300.0, "show": 300.0, "download": 600.0}


@dataclass(frozen=True)
class Suite:
    """Where a recipe's packages come from: a suite, its update pockets, a mirror."""

    name: str
    pockets: tuple[str, ...]
    security: str = ""
    components: tuple[str, ...] = ("main",)
    architecture: str = "amd64"
    # A pocket whose packages win over the others' (a backports pocket, which the
    # archive marks NotAutomatic so apt would otherwise never pick it); "" for none.
    preferred: str = ""


@dataclass(frozen=True)
class PackageInfo:
    """One candidate package as ``apt-cache show`` describes it."""

    name: str
    version: str
    depends: tuple[str, ...]


def mirrors() -> tuple[str, str]:
    """The archive and security mirrors ($MDH_DEBIAN_MIRROR, $MDH_DEBIAN_SECURITY_MIRROR)."""
    return (
        os.environ.get("MDH_DEBIAN_MIRROR") or DEFAULT_MIRROR,
        os.environ.get("MDH_DEBIAN_SECURITY_MIRROR") or DEFAULT_SECURITY_MIRROR,
    )


def sources_list(suite: Suite, mirror: str, security_mirror: str) -> str:
    """The private sources.list: every pocket, signed by Debian's archive keyring."""
    components = " ".join(suite.components)
    opts = f"[arch={suite.architecture} signed-by={KEYRING}]"
    lines = [f"deb {opts} {mirror} {pocket} {components}" for pocket in suite.pockets]
    if suite.security:
        lines.append(f"deb {opts} {security_mirror} {suite.security} {components}")
    return "\n".join(lines) + "\n"


def preferences(suite: Suite) -> str:
    """The private apt's preferences: empty, or one pin raising ``suite.preferred``
    above the archive's default 500 (backports are published at 100)."""
    if not suite.preferred:
        return ""
    return f"Package: *\nPin: release n={suite.preferred}\nPin-Priority: 900\n"


def apt_options(state: Path, architecture: str = "amd64") -> list[str]:
    """``-o`` options that point apt at ``state`` only, never at the host's apt files.

    The empty status file keeps the host's installed packages out of the picture, and
    the empty parts folders hide /etc/apt/sources.list.d, preferences and keyrings.
    The host's apt.conf.d still applies (a proxy set there is wanted), except for the
    binary caches, named here: hosts made from container images turn them off
    (Docker's ``docker-clean``), and then every ``apt-cache show`` parsed the suite's
    18 MB package list again, 0.78 s a call against 0.23 s with the cache, eight calls
    per ``image build`` (which ``scripts/setup`` runs every time).
    """
    empty = state / "empty"
    settings = {
        "Dir::Etc::SourceList": state / "sources.list",
        "Dir::Etc::SourceParts": empty,
        "Dir::Etc::Preferences": state / "preferences",
        "Dir::Etc::PreferencesParts": empty,
        "Dir::Etc::Trusted": KEYRING,
        "Dir::Etc::TrustedParts": empty,
        "Dir::State": state / "state",
        "Dir::State::Lists": state / "lists",
        "Dir::State::status": state / "status",
        "Dir::Cache": state / "cache",
        "Dir::Cache::pkgcache": "pkgcache.bin",
        "Dir::Cache::srcpkgcache": "srcpkgcache.bin",
        "APT::Architecture": architecture,
        "APT::Architectures": architecture,
        "Debug::NoLocking": "1",
    }
    options: list[str] = []
    for key, value in settings.items():
        options += ["-o", f"{key}={value}"]
    return options


class PrivateApt:
    """apt-get/apt-cache bound to one suite's private state folder."""

    def __init__(self, suite: Suite, state: Path) -> None:
        self.suite = suite
        self.state = state

    def _prepare(self) -> None:
        if not KEYRING.is_file():
            raise ImageBuildError(
                f"Debian's archive keyring {KEYRING} is missing",
                hint="apt-get install debian-archive-keyring (./scripts/setup does)",
            )
        for sub in ("empty", "lists/partial", "state", "cache/archives/partial"):
            (self.state / sub).mkdir(parents=True, exist_ok=True)
        (self.state / "status").touch()
        (self.state / "preferences").write_text(preferences(self.suite))
        mirror, security = mirrors()
        (self.state / "sources.list").write_text(sources_list(self.suite, mirror, security))

    def _run(self, tool: str, args: Sequence[str], cwd: Path | None = None) -> str:
        argv = [tool, *apt_options(self.state, self.suite.architecture), *args]
        timeout = APT_TIMEOUTS.get(args[0], APT_TIMEOUTS["show"]) * timeout_scale_from_env()
        try:
            result = run_tied(argv, cwd=cwd, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            # run_tied has killed its group; a mirror that stalls mid-transfer must not
            # hold the image cache lock (and every run waiting on it) forever.
            raise ArchiveUnreachable(
                f"{tool} {args[0]} for Debian {self.suite.name} did not finish within "
                f"{timeout:.0f} s (stopped)",
                hint="is the Debian archive reachable and fast enough? (MDH_DEBIAN_MIRROR "
                "overrides it; MDH_TIMEOUT_SCALE=2 doubles the deadline)",
            ) from exc
        if result.returncode != 0:
            network = re.search(r"Failed to fetch|Could not (resolve|connect)|Temporary failure"
                                r"|Connection|Unable to connect", result.stderr)
            error = ArchiveUnreachable if args[0] == "update" or network else ImageBuildError
            raise error(
                f"{tool} {args[0]} for Debian {self.suite.name} failed "
                f"(exit {result.returncode})",
                hint="is the Debian archive reachable? (MDH_DEBIAN_MIRROR overrides it)",
                details=result.stderr.strip()[-2000:],
            )
        return result.stdout

    def update(self) -> None:
        """Fetch the suite's package lists into the private state (incremental)."""
        self._prepare()
        self._run("apt-get", ["update", "-q"])
        # apt-get update exits 0 when a list could not be fetched; check it landed.
        if not any((self.state / "lists").glob("*_Packages*")):
            raise ArchiveUnreachable(
                f"apt-get update for Debian {self.suite.name} fetched no package list",
                hint="is the Debian archive reachable? (MDH_DEBIAN_MIRROR overrides it)",
            )

    def show(self, packages: Iterable[str], *, missing_ok: bool = False) -> dict[
            str, PackageInfo]:
        """Candidate version and dependencies of each package, in one apt-cache call.
        ``missing_ok``: a name with no package of its own (a virtual one, which
        apt-cache passes over) is left out of the answer instead of being an error."""
        names = sorted(set(packages))
        text = self._run("apt-cache", ["show", "--no-all-versions", *names])
        infos = parse_show(text)
        missing = [name for name in names if name not in infos]
        if missing and not missing_ok:
            raise ImageBuildError(f"Debian {self.suite.name} has no package {' '.join(missing)}")
        return infos

    def download(self, pins: Mapping[str, str], dest: Path) -> list[Path]:
        """Download exactly ``package=version`` for each pin into ``dest``."""
        self._run("apt-get", ["download", "-q", *(f"{p}={v}" for p, v in pins.items())],
                  cwd=dest)
        debs = []
        for package in pins:
            found = sorted(dest.glob(f"{package}_*.deb"))
            if not found:
                raise ImageBuildError(f"apt-get download {package} produced no .deb")
            debs.append(found[-1])
        return debs


def parse_show(text: str) -> dict[str, PackageInfo]:
    """Parse ``apt-cache show`` stanzas into name -> PackageInfo (first stanza wins)."""
    infos: dict[str, PackageInfo] = {}
    for stanza in re.split(r"\n\s*\n", text):
        fields = dict(re.findall(r"^([\w-]+):[ \t]*(.*)$", stanza, re.MULTILINE))
        name, version = fields.get("Package"), fields.get("Version")
        if not name or not version or name in infos:
            continue
        relations = ", ".join(f for f in (fields.get("Pre-Depends"), fields.get("Depends")) if f)
        infos[name] = PackageInfo(name, version, parse_depends(relations))
    return infos


def parse_depends(relations: str) -> tuple[str, ...]:
    """Package names of a Depends field, taking the first of each set of alternatives."""
    names = []
    for clause in relations.split(","):
        first = clause.split("|")[0].strip()
        match = re.match(r"([a-z0-9][a-z0-9+.-]*)", first)
        if match:
            names.append(match.group(1).split(":")[0])
    return tuple(names)


def unpack_deb(deb: Path, into: Path) -> None:
    """``dpkg-deb -x`` one package into ``into`` (never installed): the one unpacker of
    every Debian package the harness runs or puts in a guest."""
    result = run_tied(["dpkg-deb", "-x", str(deb), str(into)])
    if result.returncode != 0:
        raise ImageBuildError(f"dpkg-deb -x {deb.name} failed (exit {result.returncode})",
                              details=result.stderr.strip()[-2000:])
