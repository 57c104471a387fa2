"""ELF reading (interpreter, DT_NEEDED, .modinfo) and library lookup in a package tree."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from harness.errors import ImageBuildError
from harness.image.elf import dynamic_info, modinfo, module_depends, section
from harness.image.initramfs import library_closure, resolve_in_tree

VADDR = 0x400000


def make_executable(interp: str | None, needed: list[str]) -> bytes:
    """A minimal ELF64 with PT_INTERP, PT_LOAD and PT_DYNAMIC (strtab at a vaddr)."""
    strtab = b"\0"
    offsets = []
    for name in needed:
        offsets.append(len(strtab))
        strtab += name.encode() + b"\0"
    phnum = 3
    header_size, ph_size = 64, 56
    interp_off = header_size + phnum * ph_size
    interp_bytes = (interp.encode() + b"\0") if interp else b""
    strtab_off = interp_off + len(interp_bytes)
    dyn_off = strtab_off + len(strtab)
    dyn = b"".join(struct.pack("<qQ", 1, off) for off in offsets)
    dyn += struct.pack("<qQ", 5, VADDR + strtab_off) + struct.pack("<qQ", 0, 0)
    total = dyn_off + len(dyn)
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    header = ident + struct.pack("<HHIQQQIHHHHHH", 3, 62, 1, 0, header_size, 0, 0,
                                 header_size, ph_size, phnum, 64, 0, 0)
    phdrs = [
        (3 if interp else 4, 4, interp_off, VADDR + interp_off, len(interp_bytes)),
        (1, 5, 0, VADDR, total),
        (2, 6, dyn_off, VADDR + dyn_off, len(dyn)),
    ]
    table = b"".join(struct.pack("<IIQQQQQQ", t, f, off, va, va, size, size, 8)
                     for t, f, off, va, size in phdrs)
    return header + table + interp_bytes + strtab + dyn


def make_relocatable(sections: dict[str, bytes]) -> bytes:
    """A minimal ELF64 relocatable file (like a .ko) with the given sections."""
    names = b"\0"
    name_offsets = {}
    for name in [*sections, ".shstrtab"]:
        name_offsets[name] = len(names)
        names += name.encode() + b"\0"
    body = b""
    placed = []
    for name, data in [*sections.items(), (".shstrtab", names)]:
        placed.append((name_offsets[name], 64 + len(body), len(data)))
        body += data
    shoff = 64 + len(body)
    shnum = len(placed) + 1
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    header = ident + struct.pack("<HHIQQQIHHHHHH", 1, 62, 1, 0, 0, shoff, 0, 64, 0, 0, 64,
                                 shnum, shnum - 1)
    shdrs = bytes(64) + b"".join(struct.pack("<IIQQQQIIQQ", n, 1, 0, 0, off, size, 0, 0, 1, 0)
                                 for n, off, size in placed)
    return header + body + shdrs


def test_dynamic_info_reads_interpreter_and_needed() -> None:
    data = make_executable("/lib64/ld-linux-x86-64.so.2", ["libz.so.1", "libc.so.6"])
    info = dynamic_info(data)
    assert info.interpreter == "/lib64/ld-linux-x86-64.so.2"
    assert info.needed == ("libz.so.1", "libc.so.6")


def test_static_binary_has_no_dependencies() -> None:
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    header = ident + struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0, 64, 0, 0, 64, 56, 0, 64, 0, 0)
    info = dynamic_info(header)
    assert info.interpreter is None and info.needed == ()


def test_non_elf_and_32_bit_are_refused() -> None:
    with pytest.raises(ImageBuildError, match="dropbear is not an ELF file"):
        dynamic_info(b"#!/bin/sh\n", "dropbear")
    with pytest.raises(ImageBuildError, match="not a little-endian 64-bit"):
        dynamic_info(b"\x7fELF" + bytes([1, 1, 1]) + bytes(64))


def test_modinfo_depends_from_a_relocatable_module() -> None:
    modinfo_bytes = b"license=GPL\0depends=netfs,9pnet\0vermagic=6.12.1 SMP\0"
    module = make_relocatable({".text": b"\x90" * 8, ".modinfo": modinfo_bytes})
    assert module_depends(module) == ("netfs", "9pnet")
    assert modinfo(module)["vermagic"] == ["6.12.1 SMP"]
    assert section(module, ".text") == b"\x90" * 8
    assert section(module, ".nothing") is None
    no_deps = make_relocatable({".modinfo": b"depends=\0license=GPL\0"})
    assert module_depends(no_deps) == ()


def test_module_without_modinfo_is_refused() -> None:
    with pytest.raises(ImageBuildError, match="no .modinfo section"):
        modinfo(make_relocatable({".text": b""}), "9p.ko")


def _tree(root: Path) -> None:
    """A bookworm-like libc6 layout: /lib64 link to /lib/x86_64-linux-gnu, lib symlinks."""
    gnu = root / "lib/x86_64-linux-gnu"
    gnu.mkdir(parents=True)
    (gnu / "ld-linux-x86-64.so.2").write_bytes(make_executable(None, []))
    (gnu / "libc.so.6").write_bytes(make_executable(None, ["ld-linux-x86-64.so.2"]))
    (gnu / "libz.so.1.3").write_bytes(make_executable(None, ["libc.so.6"]))
    (gnu / "libz.so.1").symlink_to("libz.so.1.3")
    (root / "lib64").mkdir()
    (root / "lib64/ld-linux-x86-64.so.2").symlink_to("/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
    (root / "usr/sbin").mkdir(parents=True)
    (root / "usr/sbin/dropbear").write_bytes(
        make_executable("/lib64/ld-linux-x86-64.so.2", ["libz.so.1", "libc.so.6"]))


def test_library_closure_follows_needed_and_tree_symlinks(tmp_path: Path) -> None:
    _tree(tmp_path)
    libs = library_closure(tmp_path, "/usr/sbin/dropbear")
    gnu = tmp_path / "lib/x86_64-linux-gnu"
    assert libs == {
        "/lib64/ld-linux-x86-64.so.2": gnu / "ld-linux-x86-64.so.2",
        "/lib/x86_64-linux-gnu/libz.so.1": gnu / "libz.so.1.3",
        "/lib/x86_64-linux-gnu/libc.so.6": gnu / "libc.so.6",
    }, "libc's DT_NEEDED on the loader is met by the interpreter, not a second copy"


def test_merged_usr_paths_are_found_under_usr(tmp_path: Path) -> None:
    (tmp_path / "usr/bin").mkdir(parents=True)
    (tmp_path / "usr/bin/busybox").write_bytes(b"static")
    assert resolve_in_tree(tmp_path, "/bin/busybox") == tmp_path / "usr/bin/busybox"


def test_missing_library_names_it(tmp_path: Path) -> None:
    _tree(tmp_path)
    (tmp_path / "lib/x86_64-linux-gnu/libz.so.1").unlink()
    with pytest.raises(ImageBuildError, match="shared library libz.so.1 is not in the"):
        library_closure(tmp_path, "/usr/sbin/dropbear")


def test_absolute_symlink_never_escapes_to_the_host(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib/libc.so.6").symlink_to("/etc/hostname")
    with pytest.raises(ImageBuildError, match="not in the unpacked guest packages"):
        resolve_in_tree(tmp_path, "/lib/libc.so.6")


def _module(depends: str) -> bytes:
    return make_relocatable({".modinfo": f"depends={depends}\0license=GPL\0".encode()})


def test_module_tree_orders_from_modinfo_and_stores_plain_ko(tmp_path: Path) -> None:
    import lzma

    from harness.image.initramfs import ModuleTree

    moddir = tmp_path / "lib/modules/6.13.0-mdh"
    (moddir / "kernel/fs/9p").mkdir(parents=True)
    (moddir / "kernel/net/9p").mkdir(parents=True)
    (moddir / "kernel/fs/9p/9p.ko.xz").write_bytes(
        lzma.compress(_module("9pnet,netfs"), check=lzma.CHECK_CRC32))
    (moddir / "kernel/net/9p/9pnet.ko").write_bytes(_module("netfs"))
    (moddir / "kernel/net/9p/9pnet_virtio.ko").write_bytes(_module("9pnet,virtio_ring"))
    (moddir / "modules.builtin").write_text(
        "kernel/fs/netfs/netfs.ko\nkernel/drivers/virtio/virtio_ring.ko\n"
        "kernel/drivers/virtio/virtio_pci.ko\nkernel/drivers/net/virtio_net.ko\n")
    tree = ModuleTree(moddir)
    order = tree.order(["virtio_pci", "virtio_net", "9pnet_virtio", "9p"])
    assert order == ["9pnet", "9pnet_virtio", "9p"]
    assert tree.plain("9p") == _module("9pnet,netfs")


def test_module_tree_with_everything_built_in_needs_no_modules(tmp_path: Path) -> None:
    from harness.image.initramfs import ModuleTree

    (tmp_path / "modules.builtin").write_text(
        "kernel/fs/9p/9p.ko\nkernel/net/9p/9pnet_virtio.ko\nkernel/net/9p/9pnet.ko\n"
        "kernel/drivers/virtio/virtio_pci.ko\nkernel/drivers/net/virtio_net.ko\n")
    assert ModuleTree(tmp_path).order(["virtio_pci", "virtio_net", "9pnet_virtio", "9p"]) == []


def test_module_neither_present_nor_built_in_is_named(tmp_path: Path) -> None:
    from harness.image.initramfs import ModuleTree

    (tmp_path / "modules.builtin").write_text("")
    with pytest.raises(ImageBuildError, match="module 9p is neither in .* nor built in"):
        ModuleTree(tmp_path).order(["9p"])


def test_dropbear_key_format() -> None:
    from harness.image.initramfs import dropbear_ed25519, generate_keys

    key = dropbear_ed25519(b"s" * 32, b"p" * 32)
    assert key == b"\0\0\0\x0bssh-ed25519\0\0\0\x40" + b"s" * 32 + b"p" * 32
    keys = generate_keys()
    # The public half inside dropbear's file is the key the client pins.
    import base64

    blob = base64.b64decode(keys.host_public.split()[1])
    assert blob.endswith(keys.host_dropbear[-32:])
    assert keys.client_private.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    with pytest.raises(ValueError, match=r"^ed25519 keys are 32 bytes$"):
        dropbear_ed25519(b"short", b"p" * 32)
