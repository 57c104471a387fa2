"""Guest recipes: ``guests/<name>/recipe.toml`` and the (possibly shared) files it names."""

from __future__ import annotations

import hashlib
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import ImageBuildError
from .apt import Suite

DEFAULT_RECIPE = "debian-bookworm-x86_64"


@dataclass(frozen=True)
class Recipe:
    """A parsed ``guests/<name>/recipe.toml`` and the files it names."""

    name: str
    directory: Path
    suite: Suite
    kernel_metapackage: str
    kernel_package_pattern: str
    modules: tuple[str, ...]
    userland_packages: tuple[str, ...]
    # Paths inside the unpacked userland packages (the guest's own paths).
    busybox: str
    dropbear: str
    # The tools the witnesses run (name -> path in the packages), put at
    # /opt/mdh/bin/<name> in the guest so they never shadow busybox's applets.
    witness_tools: Mapping[str, str]
    init: Path
    agent: Path
    host_packages: tuple[str, ...]
    tool_packages: Mapping[str, str]
    # Loaded like ``modules`` where the kernel has them (see GuestImage.missing_modules).
    virtiofs_modules: tuple[str, ...] = ()
    # Where the kernel package is itself a metapackage (sid from 7.x: linux-image-<rel>
    # depends on linux-binary-<rel> with the kernel and linux-modules-<rel>): patterns
    # of its Depends that hold the kernel's files.  (): the package holds them.
    kernel_parts: tuple[str, ...] = ()


def guests_dir() -> Path:
    """Where recipes live: $MDH_GUESTS_DIR, else the checkout's guests/ folder."""
    env = os.environ.get("MDH_GUESTS_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "guests"


def recipe_names() -> list[str]:
    """Names of every recipe folder under guests/, sorted."""
    return sorted(p.parent.name for p in guests_dir().glob("*/recipe.toml"))


def load_recipe(name_or_path: str | Path | None = None) -> Recipe:
    """Read a recipe by name (a folder of guests/) or by path to its folder."""
    name_or_path = name_or_path or DEFAULT_RECIPE
    directory = Path(name_or_path)
    if not (directory / "recipe.toml").is_file():
        directory = guests_dir() / str(name_or_path)
    path = directory / "recipe.toml"
    if not path.is_file():
        known = ", ".join(recipe_names()) or "none"
        raise ImageBuildError(
            f"guest recipe {name_or_path!s} not found (looked for {path})",
            hint=f"recipes are folders of {guests_dir()}: {known}; "
            f"the default is {DEFAULT_RECIPE}",
        )
    try:
        data = tomllib.loads(path.read_text())
        return parse_recipe(data, directory)
    except (tomllib.TOMLDecodeError, KeyError, TypeError, RecursionError) as exc:
        raise ImageBuildError(
            f"guest recipe {path} is malformed: {exc!r}",
            hint="compare it with guests/debian-bookworm-x86_64/recipe.toml",
        ) from exc


def _strings(table: Mapping[str, object], key: str) -> tuple[str, ...]:
    value = table[key]
    if not isinstance(value, list):
        raise TypeError(f"{key} must be a list")
    return tuple(str(item) for item in value)


def parse_recipe(data: Mapping[str, object], directory: Path) -> Recipe:
    """Turn the TOML tables of a recipe into a Recipe (KeyError if a key is missing)."""
    debian, kernel = _table(data, "debian"), _table(data, "kernel")
    userland, host = _table(data, "userland"), _table(data, "host")
    tools, witness_tools = _mapping(host, "tools"), _mapping(userland, "witnesses")
    return Recipe(
        name=str(data["name"]),
        directory=directory,
        suite=Suite(
            name=str(debian["suite"]),
            pockets=_strings(debian, "pockets"),
            security=str(debian.get("security", "")),
        ),
        kernel_metapackage=str(kernel["metapackage"]),
        kernel_package_pattern=str(kernel["package_pattern"]),
        modules=_strings(kernel, "modules"),
        userland_packages=_strings(userland, "packages"),
        busybox=str(userland["busybox"]),
        dropbear=str(userland["dropbear"]),
        witness_tools=witness_tools,
        init=(directory / str(userland["init"])).resolve(),
        agent=(directory / str(userland["agent"])).resolve(),
        host_packages=_strings(host, "packages"),
        tool_packages=tools,
        virtiofs_modules=_strings(kernel, "virtiofs_modules")
        if "virtiofs_modules" in kernel else (),
        kernel_parts=_strings(kernel, "parts") if "parts" in kernel else (),
    )


def _mapping(table: Mapping[str, object], key: str) -> dict[str, str]:
    value = table.get(key, {})
    if not isinstance(value, dict):
        raise TypeError(f"{key} must be a table")
    return {str(k): str(v) for k, v in value.items()}


def _table(data: Mapping[str, object], key: str) -> Mapping[str, object]:
    value = data[key]
    if not isinstance(value, dict):
        raise TypeError(f"[{key}] must be a table")
    return value


def recipe_files(recipe: Recipe) -> dict[str, bytes]:
    """Every file that shapes the image, by name: the recipe folder and shared files.

    Shared files (init, agent) are named by their path relative to guests/, so moving
    or editing one changes the key of every recipe that uses it.
    """
    files = {
        path.name: path.read_bytes()
        for path in sorted(recipe.directory.iterdir())
        if path.is_file()
    }
    for shared in (recipe.init, recipe.agent):
        try:
            name = str(shared.relative_to(recipe.directory.resolve().parent))
        except ValueError:
            name = str(shared)
        files[name] = shared.read_bytes()
    return files


def recipe_digest(files: Mapping[str, bytes], builder: str) -> str:
    """Hash of the recipe's files and the builder version (the versions come on top)."""
    digest = hashlib.sha256()
    digest.update(f"builder={builder}\n".encode())
    for name in sorted(files):
        digest.update(f"file {name} {len(files[name])}\n".encode())
        digest.update(files[name])
    return digest.hexdigest()


def cache_key(digest: str, versions: Mapping[str, str]) -> str:
    """The image's cache key: the recipe digest and every package version that goes in."""
    hasher = hashlib.sha256(f"recipe {digest}\n".encode())
    for name in sorted(versions):
        hasher.update(f"pkg {name}={versions[name]}\n".encode())
    return hasher.hexdigest()
