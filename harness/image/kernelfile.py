"""Read kernel files: release strings, the vmlinux inside a bzImage, compressed modules.

All pure functions over bytes or a directory tree, so a self-built kernel can be
checked against the modules that will be loaded into it before any guest boots.
"""

from __future__ import annotations

import lzma
import re
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import zstandard

from ..errors import ImageBuildError, KernelModulesMismatch, KernelReleaseError

_HDRS_OFFSET = 0x202
_KERNEL_VERSION_PTR = 0x20E
_PAYLOAD_FIELDS = 0x248
_XZ_MAGIC = b"\xfd7zXZ\x00"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_GZIP_MAGIC = b"\x1f\x8b\x08"
_BANNER = re.compile(rb"Linux version (\S+) \(")


# --- release strings -------------------------------------------------------------


def _is_bzimage(data: bytes) -> bool:
    return data[_HDRS_OFFSET:_HDRS_OFFSET + 4] == b"HdrS"


def release_from_bytes(data: bytes, what: str = "kernel") -> str:
    """The release (``uname -r``) of a bzImage or an ELF vmlinux given as bytes.

    A bzImage's setup header points at its version string (offset 0x20E, relative
    to 0x200); an ELF vmlinux carries the ``Linux version X (`` banner.
    """
    if _is_bzimage(data):
        pointer, = struct.unpack_from("<H", data, _KERNEL_VERSION_PTR)
        start = pointer + 0x200
        end = data.find(b"\0", start)
        if pointer == 0 or end < 0:
            raise KernelReleaseError(f"{what}: the bzImage header has no version string")
        return data[start:end].decode(errors="replace").split(" ", 1)[0]
    if data[:4] == b"\x7fELF":
        match = _BANNER.search(data)
        if match is None:
            raise KernelReleaseError(f"{what}: no 'Linux version' banner in the ELF file")
        return match.group(1).decode(errors="replace")
    raise KernelReleaseError(
        f"{what} is neither a bzImage nor an ELF vmlinux",
        hint="pass arch/x86/boot/bzImage or vmlinux from the kernel build",
    )


def kernel_release(path: Path) -> str:
    """The release string of the bzImage or vmlinux at ``path``."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KernelReleaseError(f"cannot read kernel {path}: {exc.strerror}") from exc
    return release_from_bytes(data, str(path))


def modules_release(tree: Path) -> str:
    """The release of a ``make modules_install INSTALL_MOD_PATH=tree`` tree.

    That is the single folder name under ``tree/lib/modules``; ``tree`` may also be
    that folder itself, or an unpacked kernel package (usr/lib/modules/<release>).
    """
    if (tree / "modules.order").is_file() or (tree / "kernel").is_dir():
        return tree.name
    # usr/lib/modules: a merged-/usr package tree (Debian 13's kernel packages).
    bases = [b for b in (tree / "lib" / "modules", tree / "usr" / "lib" / "modules")
             if b.is_dir() and not b.is_symlink()]
    releases = sorted({p.name for base in bases for p in base.iterdir() if p.is_dir()})
    if len(releases) != 1:
        found = ", ".join(releases) or "none"
        raise KernelReleaseError(
            f"{tree} must hold exactly one lib/modules/<release> folder (found: {found})",
            hint="use a fresh INSTALL_MOD_PATH for make modules_install",
        )
    return releases[0]


def check_same_release(kernel: str, modules: str, where: str) -> None:
    """Raise KernelModulesMismatch unless the two releases are equal."""
    if kernel != modules:
        raise KernelModulesMismatch(kernel, modules, where)


# --- decompression ------------------------------------------------------------------


def _xz(data: bytes) -> bytes:
    return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data)


def _zstd(data: bytes) -> bytes:
    # A stream decoder: the kernel's frames carry no content size, and a bzImage
    # appends four size bytes after the frame, which the decoder leaves unused.
    return zstandard.ZstdDecompressor().decompressobj().decompress(data)


def _gzip(data: bytes) -> bytes:
    return zlib.decompressobj(wbits=31).decompress(data)


_DECODERS: tuple[tuple[bytes, Callable[[bytes], bytes]], ...] = (
    (_XZ_MAGIC, _xz), (_ZSTD_MAGIC, _zstd), (_GZIP_MAGIC, _gzip),
)


def _try_decode(data: bytes) -> bytes | None:
    for magic, decode in _DECODERS:
        if data.startswith(magic):
            try:
                return decode(data)
            except (lzma.LZMAError, zstandard.ZstdError, zlib.error):
                return None
    return None


def extract_vmlinux(vmlinuz: bytes) -> bytes:
    """The ELF vmlinux inside a bzImage whose payload is xz, zstd or gzip compressed.

    The setup header's payload_offset/payload_length locate it exactly; without a
    usable header every compression magic in the file is tried.  The ELF carries
    the PVH entry note, so QEMU can start it directly.
    """
    if _is_bzimage(vmlinuz):
        setup_sects = vmlinuz[0x1F1] or 4
        offset, length = struct.unpack_from("<II", vmlinuz, _PAYLOAD_FIELDS)
        start = (setup_sects + 1) * 512 + offset
        data = _try_decode(vmlinuz[start:start + length]) if length else None
        if data is not None and data.startswith(b"\x7fELF"):
            return data
    for magic, _ in _DECODERS:
        start = vmlinuz.find(magic)
        while start >= 0:
            data = _try_decode(vmlinuz[start:])
            if data is not None and data.startswith(b"\x7fELF"):
                return data
            start = vmlinuz.find(magic, start + 1)
    raise ImageBuildError(
        "no xz, zstd or gzip compressed ELF payload found in the kernel image",
        hint="the kernel must be built with CONFIG_KERNEL_XZ, _ZSTD or _GZIP (Debian's is)",
    )


_MODULE_SUFFIXES: dict[str, Callable[[bytes], bytes]] = {
    ".ko": lambda data: data, ".ko.xz": _xz, ".ko.zst": _zstd, ".ko.gz": _gzip,
}


def module_suffix(name: str) -> str | None:
    """The module suffix of a file name (``.ko``, ``.ko.xz``, ...), None if not a module."""
    return next((s for s in _MODULE_SUFFIXES if name.endswith(s)), None)


def decompress_module(name: str, data: bytes) -> bytes:
    """A plain ``.ko`` from a module file's bytes, decoded according to its suffix.

    Decoding happens at build time so the guest's busybox insmod needs no
    decompressor and the initramfs stays uncompressed.
    """
    suffix = module_suffix(name)
    if suffix is None:
        raise ImageBuildError(f"{name} is not a kernel module (.ko, .ko.xz, .ko.zst, .ko.gz)")
    try:
        plain = _MODULE_SUFFIXES[suffix](data)
    except (lzma.LZMAError, zstandard.ZstdError, zlib.error) as exc:
        raise ImageBuildError(f"cannot decompress module {name}: {exc}") from exc
    if not plain.startswith(b"\x7fELF"):
        raise ImageBuildError(f"module {name} does not decompress to an ELF file")
    return plain
