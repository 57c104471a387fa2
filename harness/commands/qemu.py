"""``qemu list``, ``qemu fetch`` and ``qemu pin``: the QEMUs of Debian's suites that
``--qemu debian:SUITE`` runs, as data and as text."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from .. import paths
from ..progress import Progress
from ..qemu.debian import SUITES, DebianBuild, cached_builds, fetch_debian_qemu, served_version
from ..qemu.pins import load_pins, pins_path, render_pins


def build_json(build: DebianBuild) -> dict[str, Any]:
    """One cached build as data."""
    return {"suite": build.suite, "version": build.version, "binary": str(build.wrapper),
            "root": str(build.root), "packages": len(build.packages),
            "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(build.fetched_at))}


def listing() -> dict[str, Any]:
    """``qemu list --json``: every whole build in the cache, and the pins."""
    return {"cache_root": str(paths.qemu_builds_dir()),
            "builds": [build_json(b) for b in cached_builds(paths.cache_root())],
            "pins": load_pins()}


def listing_text(found: dict[str, Any]) -> str:
    """``qemu list``: one line per cached build (pinned ones marked)."""
    lines = [f"Debian QEMUs in {found['cache_root']} (--qemu debian:SUITE):"]
    pins = found["pins"]
    for build in found["builds"]:
        pinned = "  pinned" if pins.get(build["suite"]) == build["version"] else ""
        lines.append(f"  {build['suite']:19} {build['version']:32} fetched "
                     f"{build['fetched_at']}{pinned}\n    {build['binary']}")
    if not found["builds"]:
        lines.append("  (none yet: multidevs-harness qemu fetch SUITE, or run --qemu "
                     "debian:SUITE)")
    return "\n".join(lines)


def fetch(suites: Sequence[str], refresh: bool, progress: Progress) -> list[DebianBuild]:
    """Fetch (or find) each suite's QEMU; ``refresh`` asks the archive for a newer one."""
    return [fetch_debian_qemu(SUITES[name], progress=progress, refresh=refresh)
            for name in suites]


def pin(update: bool, progress: Progress) -> str:
    """Each suite's pin beside what the archive serves now; with ``update`` the lock
    file is rewritten to what is served."""
    pins = load_pins()
    served = {name: served_version(suite, progress=progress) for name, suite in SUITES.items()}
    lines = [f"{'suite':19} {'pinned':32} {'served now':32}"]
    for name in SUITES:
        mark = "" if pins.get(name) == served[name] else "  (moved)"
        lines.append(f"{name:19} {pins.get(name, '-'):32} {served[name]:32}{mark}")
    if update:
        pins_path().write_text(render_pins(served))
        lines.append(f"written: {pins_path()}")
    elif any(pins.get(name) != version for name, version in served.items()):
        lines.append("move the pins with: multidevs-harness qemu pin --update")
    return "\n".join(lines)
