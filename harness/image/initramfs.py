"""What goes into the guest's initramfs: module load order, libraries, keys, the cpio.

Everything is read from unpacked package trees of the recipe's suite, never from the
host: module dependencies from each module's ``.modinfo``, shared libraries from the
binaries' ELF headers, and the SSH keys are made in Python.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..config import GUEST_TOOLS_DIR
from ..errors import ImageBuildError
from .cpio import NewcWriter
from .elf import dynamic_info, module_depends
from .kernelfile import decompress_module, module_suffix

# Where glibc looks without an ld.so.cache, in both the pre- and merged-/usr layouts.
LIBRARY_DIRS = ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib64", "usr/lib64",
                "lib", "usr/lib")
# The witnesses' tools (GNU tar, cp, du, find, rsync): apart from busybox's applets.
TOOLS_DIR = GUEST_TOOLS_DIR.lstrip("/")
_GUEST_DIRS = ("bin", "sbin", "usr/bin", "usr/sbin", "etc/dropbear", "etc/mdh", "proc",
               "sys", "dev", "tmp", "run", "var/run", "mnt", "opt", "opt/mdh", TOOLS_DIR)


# --- kernel modules -----------------------------------------------------------------


def module_name(path: str) -> str:
    """``kernel/net/9p/9pnet_virtio.ko(.xz)`` -> ``9pnet_virtio`` (dashes as underscores)."""
    base = path.rsplit("/", 1)[-1]
    suffix = module_suffix(base)
    if suffix:
        base = base[: -len(suffix)]
    return base.replace("-", "_")


def resolve_module_order(
    wanted: Sequence[str], depends: Callable[[str], Sequence[str]], builtin: Collection[str]
) -> list[str]:
    """Names of ``wanted`` and all their dependencies, each after what it needs.

    ``depends(name)`` gives a module's direct dependencies (its ``.modinfo``
    ``depends=``, the same list depmod writes to modules.dep); built-in modules
    need no loading and are left out, so a kernel with 9p built in gets no modules.
    """
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in order or name in builtin:
            return
        if name in visiting:
            raise ImageBuildError(f"module dependencies have a cycle through {name}")
        visiting.add(name)
        for dep in depends(name):
            visit(dep.replace("-", "_"))
        visiting.discard(name)
        order.append(name)

    for name in wanted:
        visit(name.replace("-", "_"))
    return order


def parse_modules_builtin(text: str) -> set[str]:
    """Module names listed in a ``modules.builtin`` file."""
    return {module_name(line.strip()) for line in text.splitlines() if line.strip()}


class ModuleTree:
    """The modules of one ``lib/modules/<release>`` folder, read without depmod."""

    def __init__(self, moddir: Path) -> None:
        self.moddir = moddir
        self.paths: dict[str, Path] = {}
        for path in sorted(moddir.rglob("*.ko*")):
            if module_suffix(path.name) and path.is_file():
                self.paths.setdefault(module_name(path.name), path)
        builtin = moddir / "modules.builtin"
        self.builtin = parse_modules_builtin(builtin.read_text()) if builtin.is_file() else set()
        self._plain: dict[str, bytes] = {}

    def has(self, name: str) -> bool:
        """Whether module ``name`` is in the tree or built in."""
        name = name.replace("-", "_")
        return name in self.paths or name in self.builtin

    def plain(self, name: str) -> bytes:
        """The module as an uncompressed ``.ko``."""
        if name not in self._plain:
            path = self.paths.get(name)
            if path is None:
                raise ImageBuildError(
                    f"module {name} is neither in {self.moddir} nor built in "
                    "(modules.builtin)",
                    hint="check the recipe's [kernel] modules and the kernel's config",
                )
            self._plain[name] = decompress_module(path.name, path.read_bytes())
        return self._plain[name]

    def order(self, wanted: Sequence[str]) -> list[str]:
        """Load order of ``wanted`` with dependencies (see resolve_module_order)."""
        return resolve_module_order(
            wanted, lambda name: module_depends(self.plain(name), name), self.builtin
        )


# --- shared libraries ------------------------------------------------------------------


def resolve_in_tree(root: Path, path: str) -> Path:
    """The real file behind ``path`` inside ``root``, following symlinks within the tree.

    An absolute link target means the guest's root, so it is taken relative to
    ``root``, never to the host's /.  A merged-/usr path is tried under usr/ too.
    """
    relative = path.lstrip("/")
    for candidate in (relative, f"usr/{relative}"):
        current = root / candidate
        for _ in range(40):
            if not current.is_symlink():
                break
            target = str(current.readlink())
            current = root / target.lstrip("/") if target.startswith("/") else (
                current.parent / target)
        if current.is_file() and not current.is_symlink():
            return current
    raise ImageBuildError(f"{path} is not in the unpacked guest packages ({root})")


def library_closure(root: Path, *binaries: str) -> dict[str, Path]:
    """Guest path -> file in ``root`` for the interpreter and every library ``binaries``
    load.

    Follows DT_NEEDED transitively, looking in the directories glibc searches; one walk
    for all of them, so a library several binaries need is read once.
    """
    found: dict[str, Path] = {}
    pending = list(binaries)
    while pending:
        path = pending.pop()
        info = dynamic_info(resolve_in_tree(root, path).read_bytes(), path)
        if info.interpreter and info.interpreter not in found:
            found[info.interpreter] = resolve_in_tree(root, info.interpreter)
        for name in info.needed:
            if any(path.endswith("/" + name) for path in found):
                continue
            guest = _find_library(root, name)
            found[guest] = resolve_in_tree(root, guest)
            pending.append(guest)
    return found


# glibc loads these by name (dlopen) to look users up, so no ELF header names them.
# Before 2.34 (Debian 11's 2.31) nss_files is a module of its own and, without an
# nsswitch.conf, glibc asks "compat" first: dropbear then finds no root and refuses
# every login ("Login attempt for nonexistent user", measured with bullseye's
# dropbear 2020.81).  From 2.34 on nss_files is built into libc.
NSS_MODULES = ("libnss_files.so.2",)
NSSWITCH = b"passwd: files\ngroup: files\nshadow: files\n"


def nss_modules(root: Path) -> dict[str, Path]:
    """Guest path -> file of each NSS module glibc will dlopen that the unpacked
    packages ship (none for a glibc with them built in)."""
    found = {}
    for name in NSS_MODULES:
        for directory in LIBRARY_DIRS:
            if (root / directory / name).exists():
                guest = f"/{directory}/{name}"
                found[guest] = resolve_in_tree(root, guest)
                break
    return found


def _find_library(root: Path, name: str) -> str:
    for directory in LIBRARY_DIRS:
        if (root / directory / name).exists() or (root / directory / name).is_symlink():
            return f"/{directory}/{name}"
    raise ImageBuildError(
        f"shared library {name} is not in the unpacked guest packages",
        hint="add the package that ships it to the recipe's [userland] packages",
    )


# --- keys ---------------------------------------------------------------------------------


def dropbear_ed25519(private_seed: bytes, public: bytes) -> bytes:
    """An ed25519 key in dropbear's own private key format.

    string "ssh-ed25519", then a 64-byte string of seed and public key; every dropbear
    since 2020.79 reads it, unlike the OpenSSH format (only from 2022.82 on).
    """
    if len(private_seed) != 32 or len(public) != 32:
        raise ValueError("ed25519 keys are 32 bytes")
    kind = b"ssh-ed25519"
    return (struct.pack(">I", len(kind)) + kind + struct.pack(">I", 64)
            + private_seed + public)


@dataclass(frozen=True)
class Keys:
    """The guest's host key (dropbear format) and the client's key pair (OpenSSH)."""

    host_dropbear: bytes
    host_public: bytes
    client_private: bytes
    client_public: bytes


def generate_keys() -> Keys:
    """Fresh keys; the host key is pinned by the client, so no trust-on-first-use."""
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    raw = (ser.Encoding.Raw, ser.PrivateFormat.Raw, ser.NoEncryption())
    host = Ed25519PrivateKey.generate()
    host_pub = host.public_key().public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)
    client = Ed25519PrivateKey.generate()
    return Keys(
        host_dropbear=dropbear_ed25519(host.private_bytes(*raw), host_pub),
        host_public=host.public_key().public_bytes(
            ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH) + b"\n",
        client_private=client.private_bytes(
            ser.Encoding.PEM, ser.PrivateFormat.OpenSSH, ser.NoEncryption()),
        client_public=client.public_key().public_bytes(
            ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH) + b" multidevs-harness\n",
    )


# --- the archive --------------------------------------------------------------------------


@dataclass(frozen=True)
class Contents:
    """Everything the initramfs holds, gathered before writing."""

    init: bytes
    busybox: bytes
    applets: Iterable[str]
    dropbear: tuple[str, bytes]
    libraries: Mapping[str, Path]
    tools: Mapping[str, Path]  # guest path (under TOOLS_DIR) -> file in the packages
    agent: bytes
    keys: Keys
    modules: Sequence[tuple[str, bytes]]


def write_initramfs(path: Path, contents: Contents) -> None:
    """Write the uncompressed newc archive the kernel unpacks as its root."""
    with open(path, "wb") as handle:
        cpio = NewcWriter(handle)
        for directory in _GUEST_DIRS:
            cpio.directory(directory)
        cpio.directory("root", mode=0o700)
        cpio.file("init", contents.init, mode=0o755)
        cpio.file("bin/busybox", contents.busybox, mode=0o755)
        for applet in contents.applets:
            if applet.strip("/") != "bin/busybox":
                cpio.symlink(applet, "/bin/busybox")
        cpio.file(contents.dropbear[0], contents.dropbear[1], mode=0o755)
        for guest, real in sorted({**contents.libraries, **contents.tools}.items()):
            cpio.file(guest, real.read_bytes(), mode=0o755)
        cpio.file("bin/mdh-agent", contents.agent, mode=0o755)
        cpio.file("etc/dropbear/host_key", contents.keys.host_dropbear, mode=0o600)
        cpio.file("root/.ssh/authorized_keys", contents.keys.client_public, mode=0o600)
        cpio.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
        cpio.file("etc/nsswitch.conf", NSSWITCH)
        cpio.file("etc/shadow", b"root:*:19000:0:99999:7:::\n", mode=0o600)
        cpio.file("etc/group", b"root:x:0:\n")
        cpio.file("etc/shells", b"/bin/sh\n")
        for name, data in contents.modules:
            cpio.file(f"lib/modules/{name}.ko", data)
        listing = "".join(f"{name}.ko\n" for name, _ in contents.modules)
        cpio.file("etc/mdh/modules", listing.encode())
        cpio.close()
