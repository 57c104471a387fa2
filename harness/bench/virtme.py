"""virtme-ng beside the harness: ``vng --exec 'uname -r'`` on the guest image's own
kernel under TCG, in the same benchmark run, so ``exec`` can be given as a ratio to
it.  Where virtme-ng cannot run here the figure says why instead.

Everything is temporary: virtme-ng is installed from PyPI into a throwaway venv, the
kernel's package (and, where the host lacks them, kmod's ``modprobe`` and busybox)
is fetched from the guest suite's archive into the same temporary directory.
virtme-ng insists on the modules under ``/lib/modules/<release>`` on the host (else
it prints nothing), so they are bind-mounted there in a mount namespace of
``vng``'s own (``unshare``): the host sees at most the empty directories the mount
needed, and only those the run created, removed afterwards.  Without a tty
``vng`` shows the command's output only with ``--verbose`` and exits 255 for lack of
virtio-serial script ports although the command ran, so the figure checks the
output for the release, not the exit status.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from .. import paths
from ..errors import HarnessError
from ..image.apt import PrivateApt, unpack_deb
from ..image.artefacts import GuestImage
from ..image.recipe import load_recipe
from ..proc import run_tied
from ..progress import Progress

PACKAGE = "virtme-ng"
MODULES = Path("/lib/modules")
# Generous: under TCG on a loaded 2-core runner one vng boot took 30 s.
RUN_TIMEOUT_S = 240.0
INSTALL_TIMEOUT_S = 600.0


class VngUnavailable(Exception):
    """Why virtme-ng cannot be measured here (said in the figures, not raised on)."""


def measure_vng(image: GuestImage, qemu: Path, runs: int, progress: Progress) -> dict[str, Any]:
    """``vng --exec 'uname -r'`` ``runs`` times on ``image``'s kernel with ``qemu`` under
    TCG: ``{"version", "seconds": stats, "samples"}``, or ``{"skipped": why}``."""
    try:
        with tempfile.TemporaryDirectory(prefix="mdh-vng-") as tmp, \
                _modules_mount_point(image.kernel_release) as target:
            work = Path(tmp)
            vng = _install(work, progress)
            tools = _host_side(image, work, progress)
            samples = [_run_once(vng, image, qemu, tools, target, work, progress, index)
                       for index in range(runs)]
            version = _output([str(vng), "--version"], work, _env(vng, tools)).strip()
    except VngUnavailable as exc:
        progress(f"virtme-ng: not measured: {exc}")
        return {"skipped": str(exc)}
    return {"version": version, "seconds": _stats(samples), "samples": samples}


def _stats(samples: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(samples), 3), "min": round(min(samples), 3),
            "max": round(max(samples), 3)}


def _output(argv: list[str], cwd: Path, env: Mapping[str, str] | None = None,
            timeout: float = 120.0) -> str:
    try:
        done = run_tied(argv, cwd=cwd, env=env, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise VngUnavailable(f"{Path(argv[0]).name} did not run: {exc}") from exc
    if done.returncode != 0:
        tail = " ".join((done.stderr or done.stdout).split())[-300:]
        raise VngUnavailable(f"{' '.join(argv[:3])} exited {done.returncode}: {tail}")
    return done.stdout


def _install(work: Path, progress: Progress) -> Path:
    """virtme-ng in a venv of its own under ``work``; its ``vng``."""
    progress(f"virtme-ng: installing {PACKAGE} from PyPI into a throwaway venv")
    venv = work / "venv"
    _output([sys.executable, "-m", "venv", str(venv)], work)
    _output([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
             PACKAGE], work, timeout=INSTALL_TIMEOUT_S)
    vng = venv / "bin" / "vng"
    if not vng.is_file():
        raise VngUnavailable(f"pip installed {PACKAGE} but no {vng}")
    return vng


def _host_tool(name: str) -> str | None:
    # modprobe lives in sbin, often not on a user's PATH.
    found = shutil.which(name) or next(
        (str(p) for p in (Path("/usr/sbin") / name, Path("/sbin") / name) if p.is_file()), None)
    return found


def _host_side(image: GuestImage, work: Path, progress: Progress) -> dict[str, Path]:
    """The kernel's modules (depmod'ed) and the host tools vng needs (modprobe,
    busybox) under ``work``: ``{"modules": .../lib/modules, "bin": dir for PATH,
    "busybox": path}``."""
    manifest = json.loads((image.directory / "manifest.json").read_text())
    versions: dict[str, str] = manifest.get("versions", {})
    kernel_pkg = next((p for p in versions if p.startswith("linux-image-")), None)
    if kernel_pkg is None:
        raise VngUnavailable(f"image {image.directory.name} names no linux-image package")
    pins = {kernel_pkg: versions[kernel_pkg]}
    busybox = _host_tool("busybox")
    if busybox is None and "busybox-static" in versions:
        pins["busybox-static"] = versions["busybox-static"]
    suite = load_recipe(image.recipe).suite
    apt = PrivateApt(suite, paths.apt_dir(suite.name))
    kmod = _host_tool("modprobe") is None or _host_tool("depmod") is None
    try:
        if kmod:
            pins |= {name: info.version for name, info in apt.show(["kmod", "libkmod2"]).items()}
        progress(f"virtme-ng: fetching {', '.join(pins)} from Debian {apt.suite.name}")
        root = work / "root"
        (work / "debs").mkdir()
        for deb in apt.download(pins, work / "debs"):
            unpack_deb(deb, root)
    except HarnessError as exc:
        raise VngUnavailable(f"cannot fetch the kernel's packages: {exc.message}") from exc
    tools = {"modules": root / "lib" / "modules", "bin": work / "bin",
             "busybox": Path(busybox) if busybox else root / "bin" / "busybox"}
    tools["bin"].mkdir()
    if kmod:
        _kmod_wrappers(root, tools["bin"])
    _output([str(_host_tool("depmod") or tools["bin"] / "depmod"), "-b", str(root),
             image.kernel_release], work, _env(None, tools))
    return tools


def _kmod_wrappers(root: Path, bindir: Path) -> None:
    """``modprobe`` and ``depmod`` from the unpacked kmod, finding its library there.
    kmod tells its commands apart by argv[0]'s name; the package's own links are
    absolute (/bin/kmod), so links of the right names are made beside it."""
    libs = root / "usr" / "lib" / "x86_64-linux-gnu"
    links = root / "kmod-links"
    links.mkdir()
    for name in ("modprobe", "depmod"):
        (links / name).symlink_to(root / "bin" / "kmod")
        wrapper = bindir / name
        wrapper.write_text(f'#!/bin/sh\nLD_LIBRARY_PATH="{libs}" exec "{links / name}" "$@"\n')
        wrapper.chmod(0o755)


def _env(vng: Path | None, tools: Mapping[str, Path]) -> dict[str, str]:
    # vng runs virtme-run from PATH, and modprobe from PATH too.
    extra = [str(tools["bin"])] + ([str(vng.parent)] if vng else [])
    return {**os.environ, "PATH": ":".join([*extra, os.environ.get("PATH", "/usr/bin:/bin")])}


@contextlib.contextmanager
def _modules_mount_point(release: str) -> Iterator[Path]:
    """``/lib/modules/<release>`` as an empty directory to bind-mount over; the
    directories this made are removed on the way out (only those, only if empty).
    Entered first: without root nothing is downloaded in vain."""
    if os.geteuid() != 0:
        raise VngUnavailable("virtme-ng needs the kernel's modules under /lib/modules; "
                             "laying them out without touching the host takes root "
                             "(a bind mount in a private mount namespace)")
    if shutil.which("unshare") is None:
        raise VngUnavailable("unshare (util-linux) is missing: no private mount namespace "
                             "for the kernel's modules")
    target = MODULES / release
    made = [p for p in (MODULES, target) if not p.exists()]
    try:
        for directory in made:
            directory.mkdir()
        yield target
    finally:
        for directory in reversed(made):
            with contextlib.suppress(OSError):
                directory.rmdir()


def _run_once(vng: Path, image: GuestImage, qemu: Path, tools: Mapping[str, Path],
              target: Path, work: Path, progress: Progress, index: int) -> float:
    """One ``vng --exec 'uname -r'``; its wall seconds, once the release was printed."""
    source = tools["modules"] / image.kernel_release
    argv = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
            'mount --bind "$1" "$2" && shift 2 && exec "$@"', "sh", str(source), str(target),
            str(vng), "--run", str(image.vmlinuz), "--disable-kvm", "--qemu", str(qemu),
            "--busybox", str(tools["busybox"]), "--exec", "uname -r", "--verbose"]
    started = time.monotonic()
    try:
        done = run_tied(argv, cwd=work, env=_env(vng, tools), timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise VngUnavailable(f"vng did not finish within {RUN_TIMEOUT_S:.0f} s") from exc
    seconds = time.monotonic() - started
    lines = {line.strip() for line in (done.stdout + done.stderr).splitlines()}
    if image.kernel_release not in lines:
        tail = " ".join((done.stderr or done.stdout).split())[-300:]
        raise VngUnavailable(f"vng exited {done.returncode} without printing "
                             f"{image.kernel_release}: {tail}")
    progress(f"virtme-ng: vng --exec 'uname -r' {index + 1}: {seconds:.2f} s "
             f"(exit {done.returncode})")
    return round(seconds, 3)
