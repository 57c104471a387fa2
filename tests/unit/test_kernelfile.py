"""Kernel files: release strings, the vmlinux payload, compressed modules."""

from __future__ import annotations

import gzip
import lzma
import struct
from pathlib import Path

import pytest
import zstandard

from harness.errors import ImageBuildError, KernelModulesMismatch, KernelReleaseError
from harness.image.kernelfile import (
    check_same_release,
    decompress_module,
    extract_vmlinux,
    kernel_release,
    modules_release,
    release_from_bytes,
)

ELF = b"\x7fELF\x02\x01\x01" + bytes(9) + bytes(range(256)) * 64
VERSION = b"6.12.38+deb13-amd64 (debian-kernel@lists.debian.org) #1 SMP Debian 6.12.38-1"


def bzimage(payload: bytes, setup_sects: int = 3, version: bytes = VERSION) -> bytes:
    """A bzImage-shaped file: boot sector, setup header, version string, payload."""
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x1F1] = setup_sects
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, 0x020F)
    version_at = 0x600
    setup[version_at:version_at + len(version) + 1] = version + b"\0"
    struct.pack_into("<H", setup, 0x20E, version_at - 0x200)
    decompressor_stub = b"\x90" * 300
    struct.pack_into("<II", setup, 0x248, len(decompressor_stub), len(payload))
    return bytes(setup) + decompressor_stub + payload + b"\x00" * 64


def _zstd_stream(data: bytes) -> bytes:
    # Like the kernel's build: a streamed frame without a content size, then 4 size bytes.
    frame = zstandard.ZstdCompressor(level=3, write_content_size=False).compress(data)
    return frame + struct.pack("<I", len(data))


@pytest.mark.parametrize("compress", [
    lambda d: lzma.compress(d, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32),
    _zstd_stream,
    gzip.compress,
], ids=["xz", "zstd", "gzip"])
def test_extract_vmlinux_from_the_header_payload(compress: object) -> None:
    assert callable(compress)
    image = bzimage(compress(ELF))
    assert extract_vmlinux(image) == ELF
    assert release_from_bytes(image) == "6.12.38+deb13-amd64"


def test_extract_vmlinux_scans_when_there_is_no_header() -> None:
    blob = b"MZ setup code \xfd7zXZ\x00 decoy \x28\xb5\x2f\xfd decoy" + _zstd_stream(ELF)
    assert extract_vmlinux(blob + b"trailing junk") == ELF


def test_extract_vmlinux_refuses_a_payload_that_is_not_elf() -> None:
    with pytest.raises(ImageBuildError, match="no xz, zstd or gzip compressed ELF payload"):
        extract_vmlinux(bzimage(lzma.compress(b"not an ELF file" * 10)))
    with pytest.raises(ImageBuildError, match="no xz, zstd or gzip compressed ELF payload"):
        extract_vmlinux(b"MZ" + b"\0" * 100)


def test_kernel_release_of_bzimage_and_elf_files(tmp_path: Path) -> None:
    (tmp_path / "bzImage").write_bytes(bzimage(b"", version=b"6.1.0-56-amd64 (x@y) #1"))
    assert kernel_release(tmp_path / "bzImage") == "6.1.0-56-amd64"
    banner = b"Linux version 6.13.0-rc1-mdh+ (me@host) (gcc 12) #3 SMP\n"
    (tmp_path / "vmlinux").write_bytes(ELF + b"Linux version %s\0" + banner + ELF)
    assert kernel_release(tmp_path / "vmlinux") == "6.13.0-rc1-mdh+"


def test_kernel_release_failures(tmp_path: Path) -> None:
    (tmp_path / "initrd").write_bytes(b"070701" + bytes(200))
    with pytest.raises(KernelReleaseError, match="neither a bzImage nor an ELF vmlinux"):
        kernel_release(tmp_path / "initrd")
    (tmp_path / "vmlinux").write_bytes(ELF)
    with pytest.raises(KernelReleaseError, match="no 'Linux version' banner"):
        kernel_release(tmp_path / "vmlinux")
    with pytest.raises(KernelReleaseError, match="cannot read kernel"):
        kernel_release(tmp_path / "missing")


def test_modules_release_of_an_install_tree(tmp_path: Path) -> None:
    (tmp_path / "lib/modules/6.13.0-mdh/kernel").mkdir(parents=True)
    assert modules_release(tmp_path) == "6.13.0-mdh"
    assert modules_release(tmp_path / "lib/modules/6.13.0-mdh") == "6.13.0-mdh"
    (tmp_path / "lib/modules/6.12.0-old").mkdir()
    with pytest.raises(KernelReleaseError, match=r"found: 6.12.0-old, 6.13.0-mdh"):
        modules_release(tmp_path)
    with pytest.raises(KernelReleaseError, match="found: none"):
        modules_release(tmp_path / "empty")


def test_release_mismatch_names_both_and_exits_2() -> None:
    check_same_release("6.1.0-56-amd64", "6.1.0-56-amd64", "image")
    with pytest.raises(KernelModulesMismatch,
                       match=r"^kernel release 6\.12\.38\+deb13-amd64 does not match the "
                       r"modules' release 6\.1\.0-56-amd64 \(--kernel vmlinuz\)") as info:
        check_same_release("6.12.38+deb13-amd64", "6.1.0-56-amd64", "--kernel vmlinuz")
    assert info.value.exit_code == 2
    assert "6.12.38+deb13-amd64" in info.value.message
    assert "6.1.0-56-amd64" in info.value.message
    assert "modules_install" in info.value.hint


@pytest.mark.parametrize("name, packed", [
    ("9p.ko", ELF),
    ("9p.ko.xz", lzma.compress(ELF, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)),
    ("9p.ko.zst", zstandard.ZstdCompressor().compress(ELF)),
    ("9p.ko.gz", gzip.compress(ELF)),
])
def test_decompress_module(name: str, packed: bytes) -> None:
    assert decompress_module(name, packed) == ELF


def test_decompress_module_failures() -> None:
    with pytest.raises(ImageBuildError, match="9p.ko.bz2 is not a kernel module"):
        decompress_module("9p.ko.bz2", b"")
    with pytest.raises(ImageBuildError, match="cannot decompress module 9p.ko.xz"):
        decompress_module("9p.ko.xz", b"\xfd7zXZ\x00garbage")
    with pytest.raises(ImageBuildError, match="does not decompress to an ELF file"):
        decompress_module("9p.ko.zst", zstandard.ZstdCompressor().compress(b"text"))


def test_a_kernel_override_is_named_by_its_own_release(tmp_path: Path) -> None:
    # --kernel: the environment and every row name the file's release (its bzImage
    # header), not the image's (issue 22).
    from harness.config import BootMethod
    from harness.environment import _kernel_override, kernel_kind
    from harness.image.artefacts import GuestImage

    image = GuestImage(tmp_path, "r", "k", "6.1.0-57-amd64", tmp_path / "vmlinux",
                       tmp_path / "vmlinuz", tmp_path / "initrd", tmp_path / "h",
                       tmp_path / "c", tmp_path / "c.pub")
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(bzimage(b"payload"))
    booted, boot = _kernel_override(image, kernel, kernel_kind(kernel))
    assert (booted.kernel_release, booted.vmlinuz, boot) == (
        "6.12.38+deb13-amd64", kernel, BootMethod.BZIMAGE)
    assert _kernel_override(image, None, None) == (image, BootMethod.PVH)
