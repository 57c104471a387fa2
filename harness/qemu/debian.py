"""Programs from Debian, by suite name: fetched, unpacked and run, never installed.

``--qemu debian:SUITE`` tests the ``qemu-system-x86`` of any suite Debian serves, from
bullseye's 5.2 to sid's 11.x, on this host; the virtiofs rows run trixie's virtiofsd
the same way.  One mechanism for both: the package comes through the same private
apt as the guest packages (state under the harness cache) with its whole
shared-library closure, is unpacked with ``dpkg-deb -x`` into
``<cache>/<qemu|virtiofsd>/<suite>-<version>/`` and runs through that suite's own
dynamic loader and libraries, so a sid binary needs nothing of the host's libc.  A
small wrapper script in the unpacked tree does that (for QEMU it also points
``QEMU_MODULE_DIR`` at the tree's modules: Debian builds the TCG accelerator and
devices as modules), so everything that takes a program's path (the probe, ``-L``
lookup, saved-state keys, libvirt's ``<emulator>``) takes it unchanged.  QEMU's
firmware is the tree's own share/qemu, share/seabios and lib/ipxe/qemu
(``environment.find_datadirs``).

A build is recorded in a manifest (suite, every package's version, the binary's, the
loader's and the wrapper's size and sha256) and checked on every use like a guest
image; it is unpacked in a scratch directory and recorded only after the wrapper has
started it, so nothing half-made is ever found.  Once fetched, a build is found again
without any apt call; ``multidevs-harness qemu fetch --refresh`` asks the archive for
a newer QEMU.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import paths
from ..errors import ImageBuildError, UsageError
from ..image.apt import PrivateApt, Suite, unpack_deb
from ..image.build import dependency_closure
from ..image.verify import file_problem, record_files_at
from ..proc import run_tied
from ..progress import Progress, quiet

PREFIX = "debian:"
SUITES: Mapping[str, Suite] = {s.name: s for s in (
    Suite("bullseye", ("bullseye", "bullseye-updates"), security="bullseye-security"),
    Suite("bookworm", ("bookworm", "bookworm-updates"), security="bookworm-security"),
    Suite("bookworm-backports", ("bookworm", "bookworm-updates", "bookworm-backports"),
          security="bookworm-security", preferred="bookworm-backports"),
    Suite("trixie", ("trixie", "trixie-updates"), security="trixie-security"),
    Suite("forky", ("forky",)),
    Suite("sid", ("sid",)),
)}
# What is followed from a package's Depends: QEMU's own packages, the firmware and
# shared libraries.  Not the rest (systemd, adduser, debconf): nothing of them runs
# when the program starts.
_FOLLOWED = re.compile(r"^(qemu-|seabios$|ipxe-qemu$|lib|zlib1g$|gcc-\d+-base$)")
# Merged-/usr suites have the loader under usr/lib; bullseye's packages under lib.
LOADERS = (Path("usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"),
           Path("lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"),
           Path("usr/lib64/ld-linux-x86-64.so.2"), Path("lib64/ld-linux-x86-64.so.2"))
LIBRARY_DIRS = (Path("usr/lib/x86_64-linux-gnu"), Path("lib/x86_64-linux-gnu"))
MANIFEST = "mdh-build.json"
_VERSION_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Program:
    """A program of one Debian package that runs unpacked, through its suite's loader."""

    name: str  # for messages
    package: str  # the package under test; its version names the build
    binary: Path  # in the unpacked tree
    # The script that runs it (beside the binary, so paths relative to it still hold).
    wrapper: Path
    builds: str  # the cache folder of its builds (``paths``)
    # What ``--version`` prints when it starts.
    version_words: str
    # Variables the wrapper sets, each to a path in the tree.
    environment: tuple[tuple[str, Path], ...] = ()


# QEMU's modules (Debian builds the TCG accelerator and devices as modules).
MODULE_DIR = Path("usr/lib/x86_64-linux-gnu/qemu")
QEMU = Program("QEMU", "qemu-system-x86", Path("usr/bin/qemu-system-x86_64"),
               Path("usr/bin/mdh-qemu-system-x86_64"), paths.QEMU_BUILDS,
               "QEMU emulator version", (("QEMU_MODULE_DIR", MODULE_DIR),))
VIRTIOFSD = Program("virtiofsd", "virtiofsd", Path("usr/libexec/virtiofsd"),
                    Path("usr/libexec/mdh-virtiofsd"), paths.VIRTIOFSD_BUILDS, "virtiofsd")


@dataclass(frozen=True)
class DebianBuild:
    """One unpacked Debian build: its program, suite, the package's version, tree."""

    program: Program
    suite: str
    version: str
    root: Path
    packages: Mapping[str, str]
    fetched_at: float

    @property
    def wrapper(self) -> Path:
        """The executable that runs it (pass it wherever the program's path is taken)."""
        return self.root / self.program.wrapper


def suite_of(spec: str) -> Suite | None:
    """The suite a ``--qemu`` value names (``debian:SUITE``), None for a path or name
    on PATH; UsageError naming the suites for an unknown one."""
    if not spec.startswith(PREFIX):
        return None
    name = spec[len(PREFIX):]
    if name not in SUITES:
        raise UsageError(f"--qemu {spec}: Debian has no suite {name!r} that serves QEMU here",
                         hint=f"choose one of {', '.join(PREFIX + s for s in SUITES)}")
    return SUITES[name]


def _safe(version: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+~-]", "_", version)


def build_root(cache_root: Path, program: Program, suite: Suite, version: str) -> Path:
    """Where one Debian build is unpacked (a version's ':' epoch made safe)."""
    return cache_root / program.builds / f"{suite.name}-{_safe(version)}"


def load_build(root: Path, program: Program) -> tuple[DebianBuild | None, str | None]:
    """The build unpacked at ``root`` if it is whole, else None and why (None, None:
    nothing there)."""
    try:
        data = json.loads((root / MANIFEST).read_text())
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as exc:
        return None, f"{MANIFEST} cannot be read: {exc}"
    if not isinstance(data, dict) or not all(isinstance(data.get(k), str)
                                             for k in ("suite", "version", "loader")):
        return None, f"{MANIFEST} is not a build's manifest"
    files: Any = data.get("files")
    if not isinstance(files, dict):
        return None, f"{MANIFEST} records no files"
    for name in (str(program.binary), data["loader"], str(program.wrapper)):
        problem = file_problem(root / name, files.get(name))
        if problem is not None:
            return None, problem
    packages = data.get("packages", {})
    return DebianBuild(program, data["suite"], data["version"], root,
                       {str(k): str(v) for k, v in packages.items()},
                       float(data.get("fetched_at", 0))), None


def cached_builds(cache_root: Path, program: Program = QEMU,
                  suite: Suite | None = None) -> list[DebianBuild]:
    """Whole builds in the cache (of ``suite``, or all), newest fetch first."""
    found = []
    pattern = f"{suite.name}-*" if suite else "*"
    for root in (cache_root / program.builds).glob(pattern):
        build, _ = load_build(root, program)
        if build is not None and (suite is None or build.suite == suite.name):
            found.append(build)
    return sorted(found, key=lambda b: b.fetched_at, reverse=True)


class PinGone(ImageBuildError):
    """The archive no longer serves the version a pin names (it serves another)."""

    def __init__(self, suite: str, package: str, pinned: str, served: str) -> None:
        super().__init__(
            f"Debian {suite} serves {package} {served}, not the pinned {pinned}",
            hint="move the pin: multidevs-harness qemu pin --update")
        self.suite, self.pinned, self.served = suite, pinned, served


def served_version(suite: Suite, cache_root: Path | None = None,
                   progress: Progress = quiet, program: Program = QEMU) -> str:
    """The version of ``program``'s package the archive serves for ``suite`` now."""
    return _served(program, suite, cache_root or paths.cache_root(), progress)[1]


def _served(program: Program, suite: Suite, cache_root: Path,
            progress: Progress) -> tuple[PrivateApt, str]:
    """The suite's private apt, its lists refreshed, and the version of ``program``'s
    package it serves."""
    apt = PrivateApt(suite, paths.apt_dir(suite.name, cache_root))
    progress(f"apt-get update (Debian {suite.name}, private lists)")
    apt.update()
    return apt, apt.show([program.package])[program.package].version


def fetch_unpacked(
    program: Program, suite: Suite, cache_root: Path | None = None,
    progress: Progress = quiet, *, version: str | None = None, refresh: bool = False,
) -> DebianBuild:
    """Debian ``suite``'s build of ``program``, from the cache or fetched (``version``:
    exactly that one, else the newest in the cache, else what the archive serves;
    ``refresh`` asks the archive even when the cache has one).

    Raises ArchiveUnreachable without the archive, PinGone when ``version`` is no
    longer served, ImageBuildError when the packages do not make a program that starts.
    """
    cache_root = cache_root or paths.cache_root()
    if not refresh:
        for build in cached_builds(cache_root, program, suite):
            if version is None or build.version == version:
                return build
    apt, served = _served(program, suite, cache_root, progress)
    if version is not None and served != version:
        raise PinGone(suite.name, program.package, version, served)
    root = build_root(cache_root, program, suite, served)
    found, _ = load_build(root, program)
    if found is not None:
        return found
    pins = library_closure(apt, (program.package,))
    progress(f"fetching {program.name} {served} from Debian {suite.name} ({len(pins)} "
             "packages, unpacked with their libraries, never installed)")
    return _unpack_build(program, apt, pins, root, cache_root, served)


def fetch_debian_qemu(suite: Suite, cache_root: Path | None = None,
                      progress: Progress = quiet, *, version: str | None = None,
                      refresh: bool = False) -> DebianBuild:
    """Debian ``suite``'s QEMU (``fetch_unpacked``)."""
    return fetch_unpacked(QEMU, suite, cache_root, progress, version=version, refresh=refresh)


def library_closure(apt: PrivateApt, roots: Iterable[str]) -> dict[str, str]:
    """Package -> version for ``roots`` and, transitively, the QEMU, firmware and
    library packages they Depend on (``_FOLLOWED``); virtual names are passed over.
    Each level of the tree is one apt call."""
    return dependency_closure(roots, lambda names: apt.show(names, missing_ok=True),
                              follow=lambda name: _FOLLOWED.match(name) is not None)


def _unpack_build(program: Program, apt: PrivateApt, pins: Mapping[str, str], root: Path,
                  scratch: Path, version: str) -> DebianBuild:
    with tempfile.TemporaryDirectory(prefix=".unpack-", dir=scratch) as tmp:
        work = Path(tmp)
        staging = work / "root"
        for deb in apt.download(pins, work):
            unpack_deb(deb, staging)
        loader = next((p for p in LOADERS if (staging / p).is_file()), None)
        if not (staging / program.binary).is_file() or loader is None:
            raise ImageBuildError(f"{program.package} {version} of Debian {apt.suite.name} "
                                  f"unpacked to no {program.binary} or no dynamic loader")
        write_wrapper(program, staging, root, loader)
        build = DebianBuild(program, apt.suite.name, version, root, dict(pins), time.time())
        manifest = {"suite": build.suite, "version": version, "loader": str(loader),
                    "packages": dict(pins), "fetched_at": build.fetched_at}
        root.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(root, ignore_errors=True)
        # Started where it will live (the wrapper names its final paths); recorded
        # in the manifest only once it started, so no half-made build is ever found.
        staging.rename(root)
        try:
            check_starts(build)
            manifest["files"] = record_files_at(root, (program.binary, loader,
                                                       program.wrapper))
            (root / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        return build


def write_wrapper(program: Program, staging: Path, root: Path, loader: Path) -> None:
    """The script that runs ``program`` unpacked at ``root`` through its own loader and
    libraries, its variables set; written into ``staging`` (later ``root``)."""
    libraries = ":".join(str(root / d) for d in LIBRARY_DIRS)
    variables = "".join(f"{name}={shlex.quote(str(root / path))}\nexport {name}\n"
                        for name, path in program.environment)
    path = staging / program.wrapper
    path.write_text(
        "#!/bin/sh\n"
        f"# Written by multidevs-harness: Debian's {program.package} unpacked here runs\n"
        "# through its own suite's loader and libraries, never the host's.\n"
        f"{variables}"
        f"exec {shlex.quote(str(root / loader))} --library-path {shlex.quote(libraries)} "
        f"{shlex.quote(str(root / program.binary))} \"$@\"\n")
    path.chmod(0o755)


def check_starts(build: DebianBuild) -> None:
    """Run the build's ``--version`` through its loader; ImageBuildError with its own
    output when it does not start (a library missing from the closure, say)."""
    program = build.program
    result = run_tied([str(build.wrapper), "--version"], timeout=_VERSION_TIMEOUT_S)
    if result.returncode != 0 or program.version_words not in result.stdout + result.stderr:
        raise ImageBuildError(
            f"{program.name} {build.version} of Debian {build.suite} does not start "
            f"through its own loader (exit {result.returncode})",
            hint="its output is below; a library missing from the closure is a harness "
            "bug (report it)",
            details=(result.stdout + result.stderr).strip()[-2000:])


def resolve_debian(spec: str, progress: Progress = quiet) -> Path | None:
    """The wrapper of ``--qemu debian:SUITE``'s QEMU (fetched the first time), or None
    when ``spec`` names no suite (a path or a name on PATH)."""
    suite = suite_of(spec)
    if suite is None:
        return None
    build = fetch_debian_qemu(suite, progress=progress)
    progress(f"QEMU {build.version} from Debian {build.suite}: {build.root}")
    return build.wrapper


