"""Build and cache the guest image described by a recipe in guests/.

The image is made from the host's own Debian packages: the distro kernel is fetched
with ``apt-get download`` and unpacked with ``dpkg-deb -x`` (never installed), and
busybox, dropbear and the observation agent are copied or compiled into an
uncompressed initramfs.  Nothing needs root, so a developer without sudo can build
an image after a root ``scripts/setup`` installed the packages.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import lzma
import os
import re
import shutil
import subprocess
import tempfile
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .config import GuestImage
from .cpio import NewcWriter
from .errors import CacheDirError, ImageBuildError, MissingPackages

# Bump when the way an image is assembled changes, so old cache entries are not reused.
BUILDER_VERSION = "3"
DEFAULT_RECIPE = "debian-bookworm-x86_64"
_XZ_MAGIC = b"\xfd7zXZ\x00"
_SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@dataclass(frozen=True)
class Recipe:
    """A parsed ``guests/<name>/recipe.toml`` and the files it names."""

    name: str
    directory: Path
    kernel_metapackage: str
    kernel_package_pattern: str
    modules: tuple[str, ...]
    busybox: Path
    dropbear: Path
    init: Path
    agent: Path
    host_packages: tuple[str, ...]
    tool_packages: Mapping[str, str]


def guests_dir() -> Path:
    """Where recipes live: $MDH_GUESTS_DIR, else the checkout's guests/ folder."""
    env = os.environ.get("MDH_GUESTS_DIR")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "guests"


def load_recipe(name_or_path: str | Path = DEFAULT_RECIPE) -> Recipe:
    """Read a recipe by name (a folder of guests/) or by path to its folder."""
    directory = Path(name_or_path)
    if not (directory / "recipe.toml").is_file():
        directory = guests_dir() / str(name_or_path)
    path = directory / "recipe.toml"
    if not path.is_file():
        raise ImageBuildError(
            f"guest recipe {name_or_path!s} not found (looked for {path})",
            hint=f"recipes are folders of {guests_dir()}; the default is {DEFAULT_RECIPE}",
        )
    try:
        data = tomllib.loads(path.read_text())
        return parse_recipe(data, directory)
    except (tomllib.TOMLDecodeError, KeyError, TypeError) as exc:
        raise ImageBuildError(
            f"guest recipe {path} is malformed: {exc!r}",
            hint="compare it with guests/debian-bookworm-x86_64/recipe.toml",
        ) from exc


def parse_recipe(data: Mapping[str, object], directory: Path) -> Recipe:
    """Turn the TOML tables of a recipe into a Recipe (KeyError if a key is missing)."""
    kernel = _table(data, "kernel")
    userland = _table(data, "userland")
    host = _table(data, "host")
    modules = kernel["modules"]
    packages = host["packages"]
    tools = host.get("tools", {})
    if not isinstance(modules, list) or not isinstance(packages, list):
        raise TypeError("kernel.modules and host.packages must be lists")
    if not isinstance(tools, dict):
        raise TypeError("host.tools must be a table")
    return Recipe(
        name=str(data["name"]),
        directory=directory,
        kernel_metapackage=str(kernel["metapackage"]),
        kernel_package_pattern=str(kernel["package_pattern"]),
        modules=tuple(str(m) for m in modules),
        busybox=Path(str(userland["busybox"])),
        dropbear=Path(str(userland["dropbear"])),
        init=directory / str(userland["init"]),
        agent=directory / str(userland["agent"]),
        host_packages=tuple(str(p) for p in packages),
        tool_packages={str(k): str(v) for k, v in tools.items()},
    )


def _table(data: Mapping[str, object], key: str) -> Mapping[str, object]:
    value = data[key]
    if not isinstance(value, dict):
        raise TypeError(f"[{key}] must be a table")
    return value


# --- modules.dep -------------------------------------------------------------------


def parse_modules_dep(text: str) -> dict[str, tuple[str, ...]]:
    """Map each module's path (as in modules.dep) to the paths it depends on."""
    deps: dict[str, tuple[str, ...]] = {}
    for line in text.splitlines():
        if not line.strip() or ":" not in line:
            continue
        path, _, rest = line.partition(":")
        deps[path.strip()] = tuple(rest.split())
    return deps


def module_name(path: str) -> str:
    """``kernel/net/9p/9pnet_virtio.ko(.xz)`` -> ``9pnet_virtio`` (dashes as underscores)."""
    base = path.rsplit("/", 1)[-1]
    base = re.sub(r"\.ko(\.(xz|gz|zst))?$", "", base)
    return base.replace("-", "_")


def resolve_module_order(modules_dep: str, wanted: Sequence[str]) -> list[str]:
    """Paths of ``wanted`` and all their dependencies, each after what it needs.

    The order comes from a depth-first walk of modules.dep's own dependency lists,
    so a kernel update that adds or renames a dependency needs no change here.
    """
    deps = parse_modules_dep(modules_dep)
    by_name = {module_name(path): path for path in deps}
    order: list[str] = []
    visiting: set[str] = set()

    def visit(path: str) -> None:
        if path in order:
            return
        if path in visiting:
            raise ImageBuildError(f"modules.dep has a dependency cycle through {path}")
        visiting.add(path)
        for dep in deps.get(path, ()):
            visit(dep)
        visiting.discard(path)
        order.append(path)

    for name in wanted:
        path = by_name.get(name.replace("-", "_"))
        if path is None:
            raise ImageBuildError(
                f"module {name} is not in this kernel's modules.dep",
                hint="is it built in (modules.builtin) or named differently? fix the recipe",
            )
        visit(path)
    return order


# --- cache key ---------------------------------------------------------------------


def cache_key(recipe_files: Mapping[str, bytes], versions: Mapping[str, str]) -> str:
    """Hash of the recipe's files, the package versions used and the builder version."""
    digest = hashlib.sha256()
    digest.update(f"builder={BUILDER_VERSION}\n".encode())
    for name in sorted(recipe_files):
        digest.update(f"file {name} {len(recipe_files[name])}\n".encode())
        digest.update(recipe_files[name])
    for name in sorted(versions):
        digest.update(f"pkg {name}={versions[name]}\n".encode())
    return digest.hexdigest()


def default_cache_root() -> Path:
    """$MDH_CACHE_DIR, else $XDG_CACHE_HOME/multidevs-harness, else ~/.cache/..."""
    env = os.environ.get("MDH_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "multidevs-harness"


# --- vmlinux ------------------------------------------------------------------------


def extract_vmlinux(vmlinuz: bytes) -> bytes:
    """Unpack the ELF vmlinux from a bzImage whose payload is xz-compressed.

    The ELF carries the PVH entry note, so QEMU can start it directly and skip
    both the real-mode setup code and the kernel's own decompression.
    """
    start = vmlinuz.find(_XZ_MAGIC)
    while start >= 0:
        decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
        try:
            data = decompressor.decompress(vmlinuz[start:])
        except lzma.LZMAError:
            data = b""
        if data.startswith(b"\x7fELF"):
            return data
        start = vmlinuz.find(_XZ_MAGIC, start + 1)
    raise ImageBuildError(
        "no xz-compressed ELF payload found in the kernel image",
        hint="the recipe's kernel must be built with CONFIG_KERNEL_XZ (Debian's is)",
    )


# --- host tools ----------------------------------------------------------------------


def which(tool: str) -> str | None:
    """Find a tool on PATH or in the sbin directories a non-root PATH lacks."""
    found = shutil.which(tool)
    if found:
        return found
    for directory in _SBIN_DIRS:
        candidate = Path(directory) / tool
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def check_host_tools(recipe: Recipe) -> None:
    """Raise MissingPackages naming the packages whose tools are absent."""
    missing = {pkg for tool, pkg in recipe.tool_packages.items() if which(tool) is None}
    for path in (recipe.busybox, recipe.dropbear):
        if not path.exists():
            missing.add(recipe.tool_packages.get(path.name, path.name))
    if missing:
        raise MissingPackages(sorted(missing))


def _run(argv: Sequence[str], cwd: Path | None = None, what: str = "") -> str:
    result = subprocess.run(
        list(argv), cwd=cwd, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise ImageBuildError(
            f"{what or argv[0]} failed (exit {result.returncode}): {' '.join(argv)}",
            details=result.stderr.strip()[-2000:],
        )
    return result.stdout


def package_version(package: str) -> str:
    """Installed version of a Debian package ('' when not installed)."""
    result = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", package],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout.strip() if result.returncode == 0 else ""


def resolve_kernel_package(recipe: Recipe) -> tuple[str, str]:
    """The concrete kernel package behind the metapackage, and its version.

    One ``apt-cache show`` of the metapackage gives both (its Depends pins the
    ABI package with ``(= VERSION)``), which keeps a cache hit well under a second.
    """
    show = _run(
        ["apt-cache", "show", "--no-all-versions", recipe.kernel_metapackage],
        what="apt-cache show",
    )
    return parse_kernel_dependency(show, recipe.kernel_package_pattern, recipe.kernel_metapackage)


def parse_kernel_dependency(show: str, pattern: str, metapackage: str) -> tuple[str, str]:
    """Pick the kernel package and version out of ``apt-cache show`` text."""
    version_match = re.search(r"^Version:\s*(\S+)", show, re.MULTILINE)
    depends_match = re.search(r"^Depends:\s*(.+)$", show, re.MULTILINE)
    wanted = re.compile(pattern)
    if version_match and depends_match:
        for alternative in re.split(r"[,|]", depends_match.group(1)):
            item = re.match(r"\s*(\S+)(?:\s*\(\s*=\s*([^)\s]+)\s*\))?", alternative)
            if item and wanted.match(item.group(1)):
                return item.group(1), item.group(2) or version_match.group(1)
    raise ImageBuildError(
        f"{metapackage} does not depend on a package matching {pattern}",
        hint="run 'apt-get update' (as root) so apt knows the current kernel packages",
    )


# --- the build ----------------------------------------------------------------------


def recipe_files(recipe: Recipe) -> dict[str, bytes]:
    """Every file of the recipe folder, by name (they all shape the image)."""
    return {
        path.name: path.read_bytes()
        for path in sorted(recipe.directory.iterdir())
        if path.is_file()
    }


def image_paths(directory: Path, recipe: str, key: str, release: str) -> GuestImage:
    """The GuestImage for a (possibly not yet built) cache directory."""
    return GuestImage(
        directory=directory,
        recipe=recipe,
        cache_key=key,
        kernel_release=release,
        vmlinux=directory / "vmlinux",
        vmlinuz=directory / "vmlinuz",
        initrd=directory / "initrd.cpio",
        host_key_pub=directory / "host_key.pub",
        client_key=directory / "client_key",
        client_key_pub=directory / "client_key.pub",
    )


def build_image(
    recipe: Recipe | None = None,
    cache_root: Path | None = None,
    progress: Progress = _quiet,
    force: bool = False,
) -> GuestImage:
    """Return the cached image for ``recipe``, building it first if needed.

    The cache directory is named by a hash of the recipe files and the versions of
    every package that goes in, so a changed recipe or a kernel update builds anew
    and an unchanged one is a hit.  Builds take a lock so two runs never race.
    """
    recipe = recipe or load_recipe()
    cache_root = cache_root or default_cache_root()
    _ensure_writable(cache_root)
    check_host_tools(recipe)

    kernel_pkg, kernel_version = resolve_kernel_package(recipe)
    versions = {kernel_pkg: kernel_version}
    for pkg in ("busybox-static", "dropbear-bin", "libc6"):
        versions[pkg] = package_version(pkg)
    key = cache_key(recipe_files(recipe), versions)
    directory = cache_root / f"{recipe.name}-{key[:16]}"

    with _lock(cache_root / ".lock"):
        manifest = directory / "manifest.json"
        if manifest.is_file() and not force:
            release = json.loads(manifest.read_text())["kernel_release"]
            image = image_paths(directory, recipe.name, key, release)
            if _complete(image):
                return _with_hit(image)
        progress(f"building guest image {recipe.name} into {directory}")
        staging = Path(tempfile.mkdtemp(prefix=".build-", dir=cache_root))
        try:
            release = _assemble(recipe, kernel_pkg, staging, cache_root, progress)
            (staging / "manifest.json").write_text(
                json.dumps(
                    {"recipe": recipe.name, "key": key, "kernel_release": release,
                     "versions": versions, "builder": BUILDER_VERSION},
                    indent=2,
                )
                + "\n"
            )
            if directory.exists():
                shutil.rmtree(directory)
            staging.rename(directory)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        _prune_old(cache_root, recipe.name, keep=directory)
    progress(f"guest image ready: kernel {release}")
    return image_paths(directory, recipe.name, key, release)


def _with_hit(image: GuestImage) -> GuestImage:
    from dataclasses import replace

    return replace(image, cache_hit=True)


def _complete(image: GuestImage) -> bool:
    return all(
        path.is_file()
        for path in (image.vmlinux, image.vmlinuz, image.initrd, image.host_key_pub,
                     image.client_key)
    )


def _ensure_writable(cache_root: Path) -> None:
    try:
        cache_root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=cache_root, prefix=".probe-"):
            pass
    except OSError as exc:
        raise CacheDirError(
            f"cannot write the image cache {cache_root}: {exc.strerror}",
            hint="set MDH_CACHE_DIR (or XDG_CACHE_HOME) to a writable directory",
        ) from exc


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _prune_old(cache_root: Path, recipe: str, keep: Path) -> None:
    # An image is ~80 MB; older builds of the same recipe are never used again.
    for old in cache_root.glob(f"{recipe}-*"):
        if old != keep and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)


def _assemble(
    recipe: Recipe, kernel_pkg: str, out: Path, cache_root: Path, progress: Progress
) -> str:
    with tempfile.TemporaryDirectory(prefix="mdh-kernel-", dir=cache_root) as tmp:
        work = Path(tmp)
        deb = _download_kernel(kernel_pkg, work, progress)
        progress(f"unpacking {deb.name}")
        root = work / "root"
        _run(["dpkg-deb", "-x", str(deb), str(root)], what="dpkg-deb -x")
        vmlinuz = next((root / "boot").glob("vmlinuz-*"), None)
        if vmlinuz is None:
            raise ImageBuildError(f"{deb.name} holds no boot/vmlinuz-*")
        release = vmlinuz.name.removeprefix("vmlinuz-")
        shutil.copyfile(vmlinuz, out / "vmlinuz")
        progress("extracting vmlinux (PVH entry) from vmlinuz")
        (out / "vmlinux").write_bytes(extract_vmlinux(vmlinuz.read_bytes()))

        progress("resolving module order from modules.dep")
        _run([str(which("depmod")), "-b", str(root), release], what="depmod")
        moddir = root / "lib" / "modules" / release
        order = resolve_module_order((moddir / "modules.dep").read_text(), recipe.modules)

        progress("generating SSH keys")
        _make_keys(out, work)
        progress("compiling mdh-agent (static)")
        agent = work / "mdh-agent"
        _run(
            [str(which("gcc")), "-O2", "-static", "-pthread", "-Wall", "-o", str(agent),
             str(recipe.agent)],
            what="gcc mdh-agent",
        )
        progress("writing initramfs")
        _write_initramfs(recipe, out / "initrd.cpio", moddir, order, work, agent)
    return release


def _download_kernel(package: str, work: Path, progress: Progress) -> Path:
    progress(f"apt-get download {package}")
    _run(["apt-get", "download", "-q", package], cwd=work, what="apt-get download")
    debs = sorted(work.glob(f"{package}_*.deb"))
    if not debs:
        raise ImageBuildError(f"apt-get download {package} produced no .deb in {work}")
    return debs[-1]


def _make_keys(out: Path, work: Path) -> None:
    # The guest's host key is made here and pinned by the client, so a guest that
    # presents any other key is refused: no trust-on-first-use.
    host_key = work / "host_key"
    _run([str(which("dropbearkey")), "-t", "ed25519", "-f", str(host_key)], what="dropbearkey")
    shutil.copyfile(host_key, out / "host_key.dropbear")
    pub = _run([str(which("dropbearkey")), "-y", "-f", str(host_key)], what="dropbearkey -y")
    line = next((ln for ln in pub.splitlines() if ln.startswith("ssh-")), None)
    if line is None:
        raise ImageBuildError("dropbearkey -y printed no public key", details=pub)
    (out / "host_key.pub").write_text(" ".join(line.split()[:2]) + "\n")

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    client = out / "client_key"
    client.write_bytes(private)
    client.chmod(0o600)
    (out / "client_key.pub").write_bytes(public + b" multidevs-harness\n")


def shared_libraries(binary: Path) -> list[Path]:
    """The shared objects ``binary`` loads (from ldd), including the ELF interpreter."""
    output = _run(["ldd", str(binary)], what=f"ldd {binary}")
    libs: list[Path] = []
    for line in output.splitlines():
        match = re.search(r"(/\S+) \(0x", line)
        if match:
            libs.append(Path(match.group(1)))
    return libs


def _write_initramfs(
    recipe: Recipe, path: Path, moddir: Path, modules: Sequence[str], work: Path,
    agent: Path,
) -> None:
    with open(path, "wb") as handle:
        cpio = NewcWriter(handle)
        for directory in ("bin", "sbin", "usr/bin", "usr/sbin", "etc/dropbear", "etc/mdh",
                          "proc", "sys", "dev", "tmp", "run", "var/run", "mnt"):
            cpio.directory(directory)
        cpio.directory("root", mode=0o700)
        cpio.file("bin/busybox", recipe.busybox.read_bytes(), mode=0o755)
        applets = _run([str(recipe.busybox), "--list-full"], what="busybox --list-full")
        for applet in applets.split():
            if applet != "bin/busybox":
                cpio.symlink(applet, "/bin/busybox")
        cpio.file("init", recipe.init.read_bytes(), mode=0o755)
        cpio.file("usr/sbin/dropbear", recipe.dropbear.read_bytes(), mode=0o755)
        for lib in shared_libraries(recipe.dropbear):
            real = lib.resolve()
            cpio.file(str(lib), real.read_bytes(), mode=0o755)
        cpio.file("bin/mdh-agent", agent.read_bytes(), mode=0o755)
        cpio.file("etc/dropbear/host_key", (path.parent / "host_key.dropbear").read_bytes(),
                  mode=0o600)
        cpio.file("root/.ssh/authorized_keys", (path.parent / "client_key.pub").read_bytes(),
                  mode=0o600)
        cpio.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
        cpio.file("etc/shadow", b"root:*:19000:0:99999:7:::\n", mode=0o600)
        cpio.file("etc/group", b"root:x:0:\n")
        cpio.file("etc/shells", b"/bin/sh\n")
        listing = []
        for module in modules:
            name = module.rsplit("/", 1)[-1]
            cpio.file(f"lib/modules/{name}", (moddir / module).read_bytes())
            listing.append(name)
        cpio.file("etc/mdh/modules", ("\n".join(listing) + "\n").encode())
        cpio.close()
