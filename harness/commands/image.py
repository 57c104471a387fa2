"""``image build``, ``image list`` and ``image prune``: the guest images and the saved
guest states, as data (JSON) and as text."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .. import paths
from ..image.artefacts import GuestImage
from ..image.build import build_image, list_images
from ..progress import Progress
from ..qemu.snapshot import KEEP_STATES, StateCache


def build(guest: str | None, modules: Path | None, force: bool,
          progress: Progress) -> GuestImage:
    """Resolve the recipe's packages and build its image (a cache hit unless forced)."""
    return build_image(guest, progress=progress, force=force, refresh=True,
                       modules_dir=modules)


def image_json(image: GuestImage) -> dict[str, Any]:
    """``image build --json``: every field of the image, paths as strings."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(image).items()}


def image_text(image: GuestImage) -> str:
    """``image build``: the recipe, whether it was built, and the files."""
    state = "cache hit" if image.cache_hit else "built"
    return (f"{image.recipe} ({state}): kernel {image.kernel_release}\n"
            f"  vmlinux  {image.vmlinux}\n  vmlinuz  {image.vmlinuz}\n  initrd   {image.initrd}")


def _states() -> StateCache:
    return StateCache(paths.states_dir())


def prune() -> str:
    """Remove every saved guest state, and every incomplete one (a save killed
    midway, a state without metadata); what was removed, in one line."""
    removed = _states().prune(keep=0)
    incomplete = sum(1 for e in removed if not e.complete)
    return (f"removed {len(removed) - incomplete} saved guest states and {incomplete} "
            f"incomplete ones ({sum(e.size for e in removed) / 2**20:.1f} MiB)")


def listing() -> dict[str, Any]:
    """``image list --json``: the recipes and their cached images, and the saved states."""
    found = list_images()
    found["states"] = [
        {"key": e.key, "path": str(e.path), "size_bytes": e.size,
         "created": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(e.created)),
         "description": e.description}
        for e in _states().entries()
    ]
    return found


def listing_text(found: dict[str, Any]) -> str:
    """``image list``: one block per recipe, then the saved states."""
    lines = [f"cache: {found['cache_root']}"]
    for recipe in found["recipes"]:
        default = " (default)" if recipe["default"] else ""
        lines.append(f"{recipe['name']}{default}: Debian {recipe['suite']}, "
                     f"resolved {recipe['resolved_at'] or 'never'}")
        lines += [_image_line(image) for image in recipe["images"]] or ["  (nothing cached)"]
    lines.append(f"saved guest states: {len(found['states'])} (newest {KEEP_STATES} kept)")
    lines += [f"  {state['key']}  {state['size_bytes'] / 2**20:6.1f} MiB  "
              f"{state['created']}  {state['description']}" for state in found["states"]]
    return "\n".join(lines)


def _image_line(image: dict[str, Any]) -> str:
    mib = image["size_bytes"] / 2**20
    modules = f"  modules {image['modules_release']}" if image["variant"] == "modules" else ""
    return (f"  {image['kernel_release']:28} {mib:6.1f} MiB  built {image['built_at']}"
            f"{'  current' if image['current'] else ''}{modules}\n    {image['directory']}")
