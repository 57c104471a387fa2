"""Build and cache the guest image described by a recipe in guests/.

Every package that goes in (the distro kernel, busybox, dropbear and the libraries
dropbear links) comes from the recipe's Debian suite through a private apt
configuration: downloaded with ``apt-get download`` and unpacked with ``dpkg-deb -x``,
never installed.  So the image is the same whatever host builds it, and the host
needs only QEMU, Python, dpkg/apt, Debian's keyring and a C compiler for the agent.

Package versions are resolved (one apt-get update and apt-cache show per suite) on
an explicit ``image build``, and when no image of the recipe's files exists (or a
resolution under a day old has none yet).  A run that finds its image in the cache
uses it without taking the cache lock and without any apt call, however old the
resolution (it says when that is over a day): a cache hit never waits on another
run's build or on the archive.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .. import paths
from ..cachefs import check_dir, lock_file, open_nofollow, private_dir, write_atomic
from ..errors import CacheDirError, ImageBuildError, MissingPackages
from ..proc import find_program, run_tied
from ..progress import Progress, quiet
from ..timeouts import timeout_scale_from_env
from .apt import PackageInfo, PrivateApt, unpack_deb
from .artefacts import GuestImage
from .initramfs import (
    TOOLS_DIR,
    Contents,
    Keys,
    ModuleTree,
    generate_keys,
    library_closure,
    nss_modules,
    resolve_in_tree,
    write_initramfs,
)
from .kernelfile import check_same_release, extract_vmlinux, kernel_release, modules_release
from .lock import cache_lock
from .recipe import Recipe, cache_key, load_recipe, recipe_digest, recipe_files
from .verify import image_problem, record_files

# Bump when the way an image is assembled changes, so old cache entries are not reused.
BUILDER_VERSION = "6"
# An image used by some run within this many seconds is never pruned.
IN_USE_S = 24 * 3600
USED_STAMP = ".last-used"
RESOLUTION_MAX_AGE = 24 * 3600.0
LOCK_FILE = ".lock"
# How long a run waits for another's image build (scaled by MDH_TIMEOUT_SCALE): a
# cold build downloads some 60 MB of packages, minutes on a slow mirror.
LOCK_WAIT_S = 900.0


# --- host tools ----------------------------------------------------------------------


def not_installed(packages: Sequence[str], dpkg_query_output: str) -> list[str]:
    """The ``packages`` that ``dpkg-query -W -f '${Package} ${db:Status-Abbrev}\\n'``
    did not list as installed ("ii"): unknown to dpkg, removed, or half-installed."""
    installed = {fields[0].partition(":")[0] for line in dpkg_query_output.splitlines()
                 if len(fields := line.split()) >= 2 and fields[1] == "ii"}
    return [package for package in packages if package not in installed]


def check_host_tools(recipe: Recipe) -> None:
    """Raise MissingPackages naming the packages whose tools are absent and the
    recipe's ``[host] packages`` that dpkg does not list as installed (headers and
    keyrings have no tool to look for).  Debian and Ubuntu hosts are the ones
    scripts/setup knows, so dpkg answers; without dpkg-query the dpkg package is
    already named through its tools."""
    missing = {pkg for tool, pkg in recipe.tool_packages.items() if find_program(tool) is None}
    query = find_program("dpkg-query")
    if query is not None and recipe.host_packages:
        # Exit 1 when some package is unknown: its name is simply absent from stdout.
        listed = run_tied([query, "-W", "-f", "${Package} ${db:Status-Abbrev}\\n",
                           *recipe.host_packages], timeout=60)
        missing |= set(not_installed(recipe.host_packages, listed.stdout))
    if missing:
        raise MissingPackages(sorted(missing))


def _run(argv: Sequence[str], cwd: Path | None = None, what: str = "",
         env: Mapping[str, str] | None = None) -> str:
    result = run_tied(argv, cwd=cwd, env=env)
    if result.returncode != 0:
        raise ImageBuildError(
            f"{what or argv[0]} failed (exit {result.returncode}): {' '.join(argv)}",
            details=result.stderr.strip()[-2000:],
        )
    return result.stdout


# --- package resolution ----------------------------------------------------------------


@dataclass(frozen=True)
class Resolution:
    """The package versions a recipe resolved to, and when (stored in the cache)."""

    kernel_package: str
    versions: Mapping[str, str]
    resolved_at: float

    def fresh(self, now: float) -> bool:
        """Young enough to build from without asking apt again."""
        return 0 <= now - self.resolved_at < RESOLUTION_MAX_AGE


def pick_kernel_package(meta: PackageInfo, pattern: str) -> str:
    """The concrete kernel package the metapackage depends on (matching ``pattern``)."""
    wanted = re.compile(pattern)
    for name in meta.depends:
        if wanted.match(name):
            return name
    raise ImageBuildError(
        f"{meta.name} {meta.version} does not depend on a package matching {pattern}",
        hint="the recipe's [kernel] package_pattern must match the suite's kernel",
    )


def dependency_closure(
    roots: Iterable[str], show: Callable[[list[str]], Mapping[str, PackageInfo]],
    follow: Callable[[str], bool] = lambda name: True,
) -> dict[str, str]:
    """Package -> version for ``roots`` and everything they Depend on that ``follow``
    accepts, transitively.

    ``show`` answers for a batch of names, so each level of the tree is one apt call;
    a name it has no answer for (a virtual package, where ``show`` passes those over)
    is asked once, never again.
    """
    versions: dict[str, str] = {}
    asked: set[str] = set()
    pending = sorted(set(roots))
    while pending:
        asked.update(pending)
        infos = show(pending)
        for info in infos.values():
            versions[info.name] = info.version
        pending = sorted({d for i in infos.values() for d in i.depends if follow(d)} - asked)
    return versions


def kernel_parts(kernel: PackageInfo, patterns: Sequence[str]) -> list[str]:
    """The Depends of ``kernel`` that hold its files (``Recipe.kernel_parts``)."""
    if not patterns:
        return []
    found = [d for d in kernel.depends if any(re.match(p, d) for p in patterns)]
    if len(found) < len(patterns):
        raise ImageBuildError(
            f"{kernel.name} {kernel.version} depends on no package for some of "
            f"{', '.join(patterns)} (it depends on {', '.join(kernel.depends)})",
            hint="the recipe's [kernel] parts must match the suite's package split")
    return found


def resolve(recipe: Recipe, apt: PrivateApt, progress: Progress) -> Resolution:
    """Refresh the suite's lists and pin every package the image needs."""
    progress(f"apt-get update (Debian {recipe.suite.name}, private lists)")
    apt.update()
    meta = apt.show([recipe.kernel_metapackage])[recipe.kernel_metapackage]
    kernel = pick_kernel_package(meta, recipe.kernel_package_pattern)
    # The kernel's own Depends (kmod, initramfs-tools) are for installing it: not needed,
    # but for the packages that hold its files where it is a metapackage itself.
    info = apt.show([kernel])[kernel]
    versions = {kernel: info.version}
    parts = kernel_parts(info, recipe.kernel_parts)
    if parts:
        versions.update((p.name, p.version) for p in apt.show(parts).values())
    versions.update(dependency_closure(recipe.userland_packages, apt.show))
    return Resolution(kernel, versions, time.time())


def _resolution_path(cache_root: Path, recipe: Recipe) -> Path:
    return paths.resolved_dir(cache_root) / f"{recipe.name}.json"


def load_resolution(cache_root: Path, recipe: Recipe) -> Resolution | None:
    """The stored resolution, or None if there is none (or it cannot be read)."""
    try:
        data = json.loads(_resolution_path(cache_root, recipe).read_text())
        return Resolution(str(data["kernel_package"]),
                          {str(k): str(v) for k, v in data["versions"].items()},
                          float(data["resolved_at"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def store_resolution(cache_root: Path, recipe: Recipe, resolution: Resolution) -> None:
    """Write the resolution next to the images (atomically: readers never see half)."""
    path = _resolution_path(cache_root, recipe)
    private_dir(path.parent, tighten=False)
    write_atomic(path, (json.dumps({
        "recipe": recipe.name, "suite": recipe.suite.name,
        "kernel_package": resolution.kernel_package,
        "versions": dict(resolution.versions), "resolved_at": resolution.resolved_at,
    }, indent=2) + "\n").encode(), mode=0o644)


# --- the cache ------------------------------------------------------------------------


def image_paths(directory: Path, manifest: Mapping[str, Any]) -> GuestImage:
    """The GuestImage of a cache directory, from its manifest."""
    return GuestImage(
        directory=directory,
        recipe=str(manifest["recipe"]),
        cache_key=str(manifest["key"]),
        kernel_release=str(manifest["kernel_release"]),
        modules_release=str(manifest.get("modules_release", "")),
        missing_modules=tuple(str(m) for m in manifest.get("missing_modules", ())),
        vmlinux=directory / "vmlinux",
        vmlinuz=directory / "vmlinuz",
        initrd=directory / "initrd.cpio",
        host_key_pub=directory / "host_key.pub",
        client_key=directory / "client_key",
        client_key_pub=directory / "client_key.pub",
    )


def check_image(directory: Path) -> tuple[dict[str, Any] | None, str | None]:
    """A cache directory's manifest if the image in it is whole (``verify``), else
    None and why (None, None: no image there at all)."""
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as exc:
        return None, f"manifest.json cannot be read: {exc}"
    problem = image_problem(directory, manifest)
    return (manifest, None) if problem is None else (None, problem)


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """A cache directory's manifest if the image in it is whole, else None."""
    return check_image(directory)[0]


def cached_images(cache_root: Path, recipe: str) -> list[tuple[Path, dict[str, Any]]]:
    """Complete images of ``recipe`` (distro and modules variants), newest first."""
    found = []
    for directory in cache_root.glob(f"{recipe}[-+]*"):
        manifest = read_manifest(directory)
        if manifest is not None and manifest.get("recipe") == recipe:
            found.append((directory, manifest))
    return sorted(found, key=lambda item: float(item[1].get("built_at", 0)), reverse=True)


def _ensure_writable(cache_root: Path) -> None:
    try:
        cache_root.mkdir(parents=True, exist_ok=True, mode=0o700)
        with tempfile.NamedTemporaryFile(dir=cache_root, prefix=".probe-"):
            pass
    except OSError as exc:
        raise CacheDirError(
            f"cannot write the image cache {cache_root}: {exc.strerror}",
            hint="set MDH_CACHE_DIR (or XDG_CACHE_HOME) to a writable directory",
        ) from exc
    # Ours and nobody else's: whoever can write it chooses the kernel we boot.
    check_dir(cache_root, follow=True)


# The images this process uses: a shared flock on each one's USED_STAMP, held until
# the process ends (the kernel drops it then, SIGKILL included).  ``--force`` and
# pruning take the lock exclusively, without waiting, before removing a directory.
_HELD: dict[Path, int] = {}


def mark_used(directory: Path) -> None:
    """Note that a run uses this image now, so no other run prunes or replaces it
    while this process lives."""
    with contextlib.suppress(OSError, CacheDirError):
        if directory in _HELD:
            os.utime(directory / USED_STAMP)
            return
        fd = open_nofollow(directory / USED_STAMP, os.O_RDONLY | os.O_CREAT)
        os.utime(fd)
        fcntl.flock(fd, fcntl.LOCK_SH)
        _HELD[directory] = fd


def in_use(directory: Path) -> bool:
    """Whether a running harness (another, or this one) holds ``directory``."""
    if directory in _HELD:
        return True
    try:
        with lock_file(directory / USED_STAMP, fcntl.LOCK_EX | fcntl.LOCK_NB) as fd:
            return fd is None
    except (CacheDirError, OSError):
        return True  # cannot tell: treat as used


def _last_used(directory: Path) -> float:
    stamps = [directory / USED_STAMP, directory]
    return max((p.stat().st_mtime for p in stamps if p.exists()), default=0.0)


def _prune_old(cache_root: Path, prefix: str, keep: Path) -> None:
    # An image is ~80 MB; older builds of the same recipe (and variant) are rarely
    # used again once a newer one exists.  But another checkout or harness version
    # sharing this cache may be running from one right now (its recipe files or
    # builder differ): images used within IN_USE_S stay.
    pattern = re.compile(re.escape(prefix) + r"-[0-9a-f]{16}")
    now = time.time()
    for old in cache_root.glob(f"{prefix}-*"):
        if old != keep and old.is_dir() and pattern.fullmatch(old.name) \
                and now - _last_used(old) > IN_USE_S and not in_use(old):
            shutil.rmtree(old, ignore_errors=True)


def tree_digest(moddir: Path) -> str:
    """Hash of every file in a modules tree (names and contents)."""
    import hashlib

    hasher = hashlib.sha256()
    for path in sorted(p for p in moddir.rglob("*") if p.is_file()):
        hasher.update(f"{path.relative_to(moddir)} {path.stat().st_size}\n".encode())
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                hasher.update(block)
    return hasher.hexdigest()


# --- the build --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """What one build_image call settled on before touching the cache."""

    recipe: Recipe
    digest: str
    resolution: Resolution
    key: str
    directory: Path
    modules_dir: Path | None


def build_image(
    recipe: Recipe | str | None = None,
    cache_root: Path | None = None,
    progress: Progress = quiet,
    force: bool = False,
    refresh: bool = False,
    modules_dir: Path | None = None,
) -> GuestImage:
    """Return the cached image for ``recipe`` (a Recipe, a name, None = default).

    ``refresh`` (what ``image build`` passes) resolves package versions through apt
    now; otherwise a cached image is used as it is (``_reuse``: no lock, no apt
    call), and only a miss takes the cache lock (waiting at most LOCK_WAIT_S, scaled)
    and, when its resolution is a day old, asks apt.  ``force`` rebuilds even on a
    hit.  ``modules_dir`` (a ``make modules_install INSTALL_MOD_PATH=DIR`` tree)
    builds a variant whose initramfs carries that tree's modules, keyed by the tree's
    content.
    """
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    cache_root = cache_root or paths.cache_root()
    _ensure_writable(cache_root)
    check_host_tools(recipe)
    digest = recipe_digest(recipe_files(recipe), BUILDER_VERSION)
    if modules_dir is not None:
        digest = recipe_digest({"modules-tree": tree_digest(_moddir(modules_dir)).encode(),
                                "recipe": digest.encode()}, BUILDER_VERSION)
    if not (force or refresh):
        # The cache-hit path takes neither the lock nor apt: a run never waits on
        # another's build, or on the archive, for an image it already has.
        hit = _reuse(recipe, cache_root, digest, modules_dir, progress)
        if hit is not None:
            return hit
    with cache_lock(cache_root / LOCK_FILE, f"building image {recipe.name}",
                    LOCK_WAIT_S * timeout_scale_from_env(), progress):
        if not (force or refresh):
            # Another run may have built it while this one waited.
            hit = _reuse(recipe, cache_root, digest, modules_dir, quiet)
            if hit is not None:
                return hit
        apt = PrivateApt(recipe.suite, paths.apt_dir(recipe.suite.name, cache_root))
        resolution = load_resolution(cache_root, recipe)
        # A day-fresh resolution still matches the private lists, so only an
        # explicit build or an old one asks apt again.
        if force or refresh or resolution is None or not resolution.fresh(time.time()):
            resolution = resolve(recipe, apt, progress)
            store_resolution(cache_root, recipe, resolution)
        plan = _plan(recipe, cache_root, digest, resolution, modules_dir)
        manifest, problem = check_image(plan.directory)
        if manifest is not None and not force:
            return replace(image_paths(plan.directory, manifest), cache_hit=True)
        if problem is not None:
            progress(f"cached image {plan.directory.name} is damaged ({problem}); "
                     "rebuilding it")
        image = _build(plan, apt, cache_root, progress)
    progress(f"guest image ready: kernel {image.kernel_release}")
    return image


def _plan(recipe: Recipe, cache_root: Path, digest: str, resolution: Resolution,
          modules_dir: Path | None) -> _Plan:
    key = cache_key(digest, resolution.versions)
    prefix = recipe.name if modules_dir is None else f"{recipe.name}+modules"
    return _Plan(recipe, digest, resolution, key, cache_root / f"{prefix}-{key[:16]}",
                 modules_dir)


def _reuse(recipe: Recipe, cache_root: Path, digest: str, modules_dir: Path | None,
           progress: Progress) -> GuestImage | None:
    """A cached image usable as it is (no lock, no apt call), or None: build one.

    The image of the stored resolution is used whatever its age; a resolution over a
    day old is only said to be (``image build`` resolves again).  With a day-fresh
    resolution whose image is missing, the new versions are built; with none stored
    (a copied cache), the newest image of the same recipe files is as good as any.
    """
    stored = load_resolution(cache_root, recipe)
    if stored is not None:
        directory = _plan(recipe, cache_root, digest, stored, modules_dir).directory
        manifest = read_manifest(directory)
        if manifest is None and stored.fresh(time.time()):
            return None
        if manifest is None:
            same = [(d, m) for d, m in cached_images(cache_root, recipe.name)
                    if m.get("digest") == digest]
            if not same:
                return None
            directory, manifest = same[0]
        if not stored.fresh(time.time()):
            days = (time.time() - stored.resolved_at) / 86400
            progress(f"package versions of {recipe.name} were resolved {days:.1f} days ago; "
                     "'multidevs-harness image build' picks up newer ones")
        return replace(image_paths(directory, manifest), cache_hit=True)
    same = [(d, m) for d, m in cached_images(cache_root, recipe.name) if m.get("digest") == digest]
    return replace(image_paths(*same[0]), cache_hit=True) if same else None


def _build(plan: _Plan, apt: PrivateApt, cache_root: Path, progress: Progress) -> GuestImage:
    _refuse_in_use(plan.directory)  # before minutes of work; again when publishing
    _remove_leftovers(cache_root)
    progress(f"building guest image {plan.recipe.name} into {plan.directory}")
    staging = Path(tempfile.mkdtemp(prefix=".build-", dir=cache_root))
    try:
        with tempfile.TemporaryDirectory(prefix=".work-", dir=cache_root) as tmp:
            manifest = _assemble(plan, apt, staging, Path(tmp), progress)
        manifest["files"] = record_files(staging)
        write_atomic(staging / "manifest.json",
                     (json.dumps(manifest, indent=2) + "\n").encode(), mode=0o644)
        _publish(staging, plan.directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _prune_old(cache_root, plan.directory.name[:-17], keep=plan.directory)
    return image_paths(plan.directory, manifest)


def _refuse_in_use(directory: Path, held: bool | None = None) -> None:
    """Never pull a whole image from under a run (``--force``): its SSH key and
    kernel are read by path while it runs, and a rebuilt image has new keys.  A
    damaged image is replaced all the same: no run can use it."""
    if held is None:
        held = directory.exists() and in_use(directory)
    if held and read_manifest(directory) is not None:
        raise ImageBuildError(
            f"image {directory.name} is in use by a running harness: rebuilding it now "
            "would replace its kernel and keys under that run",
            hint="wait until the other runs end and build again (a damaged image is "
                 "rebuilt by the next run by itself)")


def _publish(staging: Path, directory: Path) -> None:
    """Put a finished build in place.  An old directory there is renamed away while
    its USED_STAMP is locked (no run can start using it meanwhile), then removed."""
    if not directory.exists():
        staging.rename(directory)
        return
    with lock_file(directory / USED_STAMP, fcntl.LOCK_EX | fcntl.LOCK_NB) as fd:
        _refuse_in_use(directory, held=fd is None or directory in _HELD)
        old = Path(tempfile.mkdtemp(prefix=".old-", dir=directory.parent))
        directory.rename(old / "image")
        staging.rename(directory)
    shutil.rmtree(old, ignore_errors=True)


def _remove_leftovers(cache_root: Path) -> None:
    # Staging and work directories of builds that were killed (builds run under the
    # cache lock, which the caller holds, so none of these is in progress).
    for prefix in (".build-", ".work-", ".old-"):
        for leftover in cache_root.glob(f"{prefix}*"):
            shutil.rmtree(leftover, ignore_errors=True)


def _find_vmlinuz(tree: Path) -> tuple[Path | None, str]:
    """The kernel image of an unpacked kernel and the release its path names: Debian
    up to 6.x ships boot/vmlinuz-<release>, sid from 7.x usr/lib/modules/<release>/
    vmlinuz (in linux-binary-<release>)."""
    found = next((tree / "boot").glob("vmlinuz-*"), None)
    if found is not None:
        return found, found.name.removeprefix("vmlinuz-")
    found = next((tree / "usr" / "lib" / "modules").glob("*/vmlinuz"), None)
    return (found, found.parent.name) if found is not None else (None, "")


def _moddir(tree: Path) -> Path:
    """``tree/(usr/)lib/modules/<release>`` of a modules tree or unpacked kernel package."""
    release = modules_release(tree)
    if tree.name == release:
        return tree
    for base in ("lib/modules", "usr/lib/modules"):
        if (tree / base / release).is_dir():
            return tree / base / release
    raise ImageBuildError(f"{tree} has no lib/modules/{release}")


def _assemble(plan: _Plan, apt: PrivateApt, out: Path, work: Path,
              progress: Progress) -> dict[str, Any]:
    recipe, kernel_pkg = plan.recipe, plan.resolution.kernel_package
    progress(f"apt-get download {len(plan.resolution.versions)} packages from "
             f"Debian {recipe.suite.name}")
    (work / "debs").mkdir()
    debs = apt.download(plan.resolution.versions, work / "debs")
    kernel_debs = (f"{kernel_pkg}_", *(f"{name}_" for name in plan.resolution.versions
                                       if any(re.match(p, name) for p in recipe.kernel_parts)))
    for deb in debs:
        unpack_deb(deb, work / ("kernel" if deb.name.startswith(kernel_debs) else "userland"))
    vmlinuz, named = _find_vmlinuz(work / "kernel")
    if vmlinuz is None:
        raise ImageBuildError(f"{kernel_pkg} holds no boot/vmlinuz-* nor "
                              "usr/lib/modules/*/vmlinuz")
    release = kernel_release(vmlinuz)
    check_same_release(release, named, f"{kernel_pkg} file name")
    shutil.copyfile(vmlinuz, out / "vmlinuz")
    progress("extracting vmlinux (PVH entry) from vmlinuz")
    (out / "vmlinux").write_bytes(extract_vmlinux(vmlinuz.read_bytes()))
    tree = ModuleTree(_moddir(plan.modules_dir or work / "kernel"))
    missing = [m for m in recipe.virtiofs_modules if not tree.has(m)]
    order = tree.order([*recipe.modules, *(m for m in recipe.virtiofs_modules
                                           if m not in missing)])
    if missing:
        progress(f"the kernel lacks {' '.join(missing)}: its virtiofs rows will be errors")
    progress(f"modules from {tree.moddir.name}: {' '.join(order) or 'all built in'}")
    keys = generate_keys()
    (out / "host_key.pub").write_bytes(keys.host_public)
    (out / "client_key").write_bytes(keys.client_private)
    (out / "client_key").chmod(0o600)
    (out / "client_key.pub").write_bytes(keys.client_public)
    write_initramfs(out / "initrd.cpio", _contents(recipe, work, keys, tree, order))
    return {
        "recipe": recipe.name, "suite": recipe.suite.name, "key": plan.key,
        "digest": plan.digest, "builder": BUILDER_VERSION, "built_at": time.time(),
        "kernel_release": release,
        "modules_release": tree.moddir.name if order else "",
        "modules": order, "missing_modules": missing, "modules_tree": str(plan.modules_dir or ""),
        "versions": dict(plan.resolution.versions),
    }


def _contents(recipe: Recipe, work: Path, keys: Keys, tree: ModuleTree,
              order: Sequence[str]) -> Contents:
    userland = work / "userland"
    busybox = resolve_in_tree(userland, recipe.busybox)
    busybox.chmod(0o755)
    # busybox-static is a static x86_64 binary like the host, so asking it for its
    # applet list runs nothing of the host's and needs no loader.
    applets = _run([str(busybox), "--list-full"], what="busybox --list-full").split()
    agent = work / "mdh-agent"
    # gcc's own temporary files go to the build's work directory: cc1 and as outlive a
    # gcc killed with the harness by a moment, and must not leave files in /tmp.
    _run([find_program("gcc") or "gcc", "-O2", "-static", "-pthread", "-Wall", "-o", str(agent),
          str(recipe.agent)], what="gcc mdh-agent", env={**os.environ, "TMPDIR": str(work)})
    return Contents(
        init=recipe.init.read_bytes(),
        busybox=busybox.read_bytes(),
        applets=applets,
        dropbear=(recipe.dropbear, resolve_in_tree(userland, recipe.dropbear).read_bytes()),
        libraries={**library_closure(userland, recipe.dropbear,
                                     *recipe.witness_tools.values()),
                   **nss_modules(userland)},
        tools={f"{TOOLS_DIR}/{name}": resolve_in_tree(userland, path)
               for name, path in recipe.witness_tools.items()},
        agent=agent.read_bytes(),
        keys=keys,
        modules=[(name, tree.plain(name)) for name in order],
    )


# --- listing ------------------------------------------------------------------------------


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(timestamp))


def _size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir() if p.is_file())


def list_images(cache_root: Path | None = None) -> dict[str, Any]:
    """Every recipe and what the cache holds for it (no apt call, nothing built).

    ``current`` marks the image a run would use now: built from the recipe's present
    files and, if a resolution is stored, from its package versions.
    """
    from .recipe import DEFAULT_RECIPE, recipe_names

    cache_root = cache_root or paths.cache_root()
    recipes = []
    for name in recipe_names():
        recipe = load_recipe(name)
        digest = recipe_digest(recipe_files(recipe), BUILDER_VERSION)
        stored = load_resolution(cache_root, recipe)
        key = cache_key(digest, stored.versions) if stored else None
        images = [
            {
                "directory": str(directory),
                "variant": "modules" if directory.name.startswith(f"{name}+") else "distro",
                "kernel_release": manifest.get("kernel_release"),
                "modules_release": manifest.get("modules_release"),
                "size_bytes": _size(directory),
                "built_at": _iso(manifest.get("built_at")),
                "current": manifest.get("key") == key if key else manifest.get("digest") == digest,
            }
            for directory, manifest in cached_images(cache_root, name)
        ]
        recipes.append({
            "name": name, "default": name == DEFAULT_RECIPE, "suite": recipe.suite.name,
            "kernel_package": stored.kernel_package if stored else None,
            "resolved_at": _iso(stored.resolved_at) if stored else None,
            "images": images,
        })
    return {"cache_root": str(cache_root), "recipes": recipes}
