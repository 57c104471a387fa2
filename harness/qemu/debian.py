"""QEMU from Debian, by suite name: fetched, unpacked and run, never installed.

``--qemu debian:SUITE`` tests the ``qemu-system-x86`` of any suite Debian serves, from
bullseye's 5.2 to sid's 11.x, on this host.  The packages come through the same
private apt as the guest packages (state under the harness cache) with their whole
shared-library closure, are unpacked with ``dpkg-deb -x`` into
``<cache>/qemu/<suite>-<version>/`` and run through that suite's own dynamic loader
and libraries, so a sid binary needs nothing of the host's libc.  A small wrapper
script in the unpacked tree does that (and points ``QEMU_MODULE_DIR`` at the tree's
modules: Debian builds the TCG accelerator and devices as modules), so everything
that takes a QEMU path (the probe, ``-L`` lookup, saved-state keys, libvirt's
``<emulator>``) takes it unchanged.  The firmware is the tree's own share/qemu,
share/seabios and lib/ipxe/qemu (``environment.find_datadirs``).

A build is recorded in a manifest (suite, every package's version, the binary's and
the loader's size and sha256) and checked on every use like a guest image; it is
written in a scratch directory and renamed into place only after the wrapper has
started it, so nothing half-written is ever found.  Once fetched, a build is found
again without any apt call; ``multidevs-harness qemu fetch --refresh`` asks the
archive for a newer one.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import paths
from ..config import Progress, quiet
from ..errors import ImageBuildError, UsageError
from ..image.apt import PackageInfo, PrivateApt, Suite
from ..image.verify import file_problem, record_files_at
from ..proc import run_tied

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
# The one package under test; its version names the build.
QEMU_PACKAGE = "qemu-system-x86"
# What is followed from qemu-system-x86's Depends: QEMU's own packages, the firmware
# and shared libraries.  Not the rest (systemd, adduser, debconf): nothing of them
# runs when QEMU starts.
_FOLLOWED = re.compile(r"^(qemu-|seabios$|ipxe-qemu$|lib|zlib1g$|gcc-\d+-base$)")
BINARY = Path("usr/bin/qemu-system-x86_64")
# The wrapper sits beside the binary so the prefix's share/qemu is found from it.
WRAPPER = Path("usr/bin/mdh-qemu-system-x86_64")
MODULE_DIR = Path("usr/lib/x86_64-linux-gnu/qemu")
# Merged-/usr suites have the loader under usr/lib; bullseye's packages under lib.
LOADERS = (Path("usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"),
           Path("lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"),
           Path("usr/lib64/ld-linux-x86-64.so.2"), Path("lib64/ld-linux-x86-64.so.2"))
LIBRARY_DIRS = (Path("usr/lib/x86_64-linux-gnu"), Path("lib/x86_64-linux-gnu"))
MANIFEST = "mdh-build.json"
_VERSION_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class DebianQemu:
    """One unpacked Debian QEMU: its suite, ``qemu-system-x86``'s version and tree."""

    suite: str
    version: str
    root: Path
    packages: Mapping[str, str]
    fetched_at: float

    @property
    def wrapper(self) -> Path:
        """The executable that runs it (pass it wherever a QEMU binary is taken)."""
        return self.root / WRAPPER


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


def qemu_root(cache_root: Path, suite: Suite, version: str) -> Path:
    """Where one Debian QEMU build is unpacked (a version's ':' epoch made safe)."""
    return paths.qemu_builds_dir(cache_root) / f"{suite.name}-{_safe(version)}"


def load_build(root: Path) -> tuple[DebianQemu | None, str | None]:
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
    for name in (str(BINARY), data["loader"], str(WRAPPER)):
        problem = file_problem(root / name, files.get(name))
        if problem is not None:
            return None, problem
    packages = data.get("packages", {})
    return DebianQemu(data["suite"], data["version"], root,
                      {str(k): str(v) for k, v in packages.items()},
                      float(data.get("fetched_at", 0))), None


def cached_builds(cache_root: Path, suite: Suite | None = None) -> list[DebianQemu]:
    """Whole builds in the cache (of ``suite``, or all), newest fetch first."""
    found = []
    pattern = f"{suite.name}-*" if suite else "*"
    for root in paths.qemu_builds_dir(cache_root).glob(pattern):
        build, _ = load_build(root)
        if build is not None and (suite is None or build.suite == suite.name):
            found.append(build)
    return sorted(found, key=lambda b: b.fetched_at, reverse=True)


class PinGone(ImageBuildError):
    """The archive no longer serves the version a pin names (it serves another)."""

    def __init__(self, suite: str, pinned: str, served: str) -> None:
        super().__init__(
            f"Debian {suite} serves {QEMU_PACKAGE} {served}, not the pinned {pinned}",
            hint="move the pin: multidevs-harness qemu pin --update")
        self.suite, self.pinned, self.served = suite, pinned, served


def served_version(suite: Suite, cache_root: Path | None = None,
                   progress: Progress = quiet) -> str:
    """The ``qemu-system-x86`` version the archive serves for ``suite`` now."""
    apt = PrivateApt(suite, paths.apt_dir(suite.name, cache_root or paths.cache_root()))
    progress(f"apt-get update (Debian {suite.name}, private lists)")
    apt.update()
    return apt.show([QEMU_PACKAGE])[QEMU_PACKAGE].version


def fetch_debian_qemu(
    suite: Suite, cache_root: Path | None = None, progress: Progress = quiet, *,
    version: str | None = None, refresh: bool = False,
) -> DebianQemu:
    """Debian ``suite``'s QEMU, from the cache or fetched (``version``: exactly that
    one, else the newest in the cache, else what the archive serves; ``refresh``
    asks the archive even when the cache has one).

    Raises ArchiveUnreachable without the archive, PinGone when ``version`` is no
    longer served, ImageBuildError when the packages do not make a QEMU that starts.
    """
    cache_root = cache_root or paths.cache_root()
    if not refresh:
        for build in cached_builds(cache_root, suite):
            if version is None or build.version == version:
                return build
    apt = PrivateApt(suite, paths.apt_dir(suite.name, cache_root))
    progress(f"apt-get update (Debian {suite.name}, private lists)")
    apt.update()
    served = apt.show([QEMU_PACKAGE])[QEMU_PACKAGE].version
    if version is not None and served != version:
        raise PinGone(suite.name, version, served)
    root = qemu_root(cache_root, suite, served)
    found, _ = load_build(root)
    if found is not None:
        return found
    pins = library_closure(apt, (QEMU_PACKAGE,))
    progress(f"fetching QEMU {served} from Debian {suite.name} ({len(pins)} packages, "
             "unpacked with their libraries, never installed)")
    return _unpack_build(apt, pins, root, cache_root, served)


def library_closure(apt: PrivateApt, roots: Iterable[str]) -> dict[str, str]:
    """Package -> version for ``roots`` and, transitively, the QEMU, firmware and
    library packages they Depend on (``_FOLLOWED``); virtual names are passed over.
    Each level of the tree is one apt call."""
    versions: dict[str, str] = {}
    asked: set[str] = set()
    pending = sorted(set(roots))
    while pending:
        asked.update(pending)
        infos: Mapping[str, PackageInfo] = apt.show(pending, missing_ok=True)
        for info in infos.values():
            versions[info.name] = info.version
        pending = sorted({d for i in infos.values() for d in i.depends
                          if _FOLLOWED.match(d)} - asked)
    return versions


def _unpack_build(apt: PrivateApt, pins: Mapping[str, str], root: Path, scratch: Path,
                  version: str) -> DebianQemu:
    with tempfile.TemporaryDirectory(prefix=".unpack-", dir=scratch) as tmp:
        work = Path(tmp)
        staging = work / "root"
        for deb in apt.download(pins, work):
            unpack_deb(deb, staging)
        loader = next((p for p in LOADERS if (staging / p).is_file()), None)
        if not (staging / BINARY).is_file() or loader is None:
            raise ImageBuildError(f"{QEMU_PACKAGE} {version} of Debian {apt.suite.name} "
                                  f"unpacked to no {BINARY} or no dynamic loader")
        write_wrapper(staging, root, loader)
        # Started where it will live: the wrapper names its final paths.
        (staging / WRAPPER).chmod(0o755)
        build = DebianQemu(apt.suite.name, version, root, dict(pins), time.time())
        manifest = {"suite": build.suite, "version": version, "loader": str(loader),
                    "packages": dict(pins), "fetched_at": build.fetched_at}
        root.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(root, ignore_errors=True)
        staging.rename(root)
        try:
            check_starts(build)
            manifest["files"] = record_files_at(root, (BINARY, loader, WRAPPER))
            (root / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        return build


def write_wrapper(staging: Path, root: Path, loader: Path) -> None:
    """The script that runs the unpacked QEMU at ``root`` through its own loader and
    libraries, its module directory set; written into ``staging`` (later ``root``)."""
    libraries = ":".join(str(root / d) for d in LIBRARY_DIRS)
    text = (
        "#!/bin/sh\n"
        "# Written by multidevs-harness: Debian's QEMU unpacked here runs through its\n"
        "# own suite's loader and libraries, never the host's.\n"
        f"QEMU_MODULE_DIR={shlex.quote(str(root / MODULE_DIR))}\n"
        "export QEMU_MODULE_DIR\n"
        f"exec {shlex.quote(str(root / loader))} --library-path {shlex.quote(libraries)} "
        f"{shlex.quote(str(root / BINARY))} \"$@\"\n"
    )
    (staging / WRAPPER).write_text(text)


def check_starts(build: DebianQemu) -> None:
    """Run the build's ``--version`` through its loader; ImageBuildError with QEMU's
    own output when it does not start (a library missing from the closure, say)."""
    result = run_tied([str(build.wrapper), "--version"], timeout=_VERSION_TIMEOUT_S)
    if result.returncode != 0 or "QEMU emulator version" not in result.stdout:
        raise ImageBuildError(
            f"QEMU {build.version} of Debian {build.suite} does not start through its "
            f"own loader (exit {result.returncode})",
            hint="its stderr is below; a library missing from the closure is a harness "
            "bug (report it)",
            details=(result.stdout + result.stderr).strip()[-2000:])


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


def resolve_debian(spec: str, progress: Progress = quiet) -> Path | None:
    """The wrapper of ``--qemu debian:SUITE``'s QEMU (fetched the first time), or None
    when ``spec`` names no suite (a path or a name on PATH)."""
    suite = suite_of(spec)
    if suite is None:
        return None
    build = fetch_debian_qemu(suite, progress=progress)
    progress(f"QEMU {build.version} from Debian {build.suite}: {build.root}")
    return build.wrapper


