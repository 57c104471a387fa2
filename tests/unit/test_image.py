"""Recipe parsing, module order from modules.dep, cache key, vmlinux and cpio."""

from __future__ import annotations

import io
import lzma
from pathlib import Path

import pytest

from harness.cpio import NewcWriter
from harness.errors import ImageBuildError
from harness.image import (
    cache_key,
    extract_vmlinux,
    load_recipe,
    module_name,
    parse_modules_dep,
    parse_recipe,
    resolve_module_order,
)

DATA = Path(__file__).parent / "data"
MODULES_DEP = (DATA / "modules.dep").read_text()


def test_module_order_puts_every_dependency_first() -> None:
    order = resolve_module_order(MODULES_DEP, ["virtio_pci", "virtio_net", "9pnet_virtio", "9p"])
    names = [module_name(path) for path in order]
    assert names == [
        "virtio_pci_legacy_dev",
        "virtio_pci_modern_dev",
        "virtio",
        "virtio_ring",
        "virtio_pci",
        "failover",
        "net_failover",
        "virtio_net",
        "9pnet",
        "9pnet_virtio",
        "netfs",
        "fscache",
        "9p",
    ]
    # Every module appears after all of its own dependencies.
    deps = parse_modules_dep(MODULES_DEP)
    for index, path in enumerate(order):
        for dep in deps[path]:
            assert order.index(dep) < index, f"{dep} must load before {path}"


def test_module_order_leaves_out_unrelated_modules() -> None:
    order = resolve_module_order(MODULES_DEP, ["9p"])
    assert [module_name(p) for p in order] == ["9pnet", "netfs", "fscache", "9p"]


def test_unknown_module_is_a_clear_error() -> None:
    with pytest.raises(ImageBuildError, match="module virtiofs is not in this kernel"):
        resolve_module_order(MODULES_DEP, ["virtiofs"])


def test_dependency_cycle_is_detected() -> None:
    with pytest.raises(ImageBuildError, match="cycle"):
        resolve_module_order("a.ko: b.ko\nb.ko: a.ko\n", ["a"])


def test_module_name_handles_compression_and_dashes() -> None:
    assert module_name("kernel/net/9p/9pnet_virtio.ko.xz") == "9pnet_virtio"
    assert module_name("kernel/drivers/x/foo-bar.ko") == "foo_bar"


def test_default_recipe_parses() -> None:
    recipe = load_recipe()
    assert recipe.name == "debian-bookworm-x86_64"
    assert recipe.kernel_metapackage == "linux-image-amd64"
    assert "9p" in recipe.modules and "9pnet_virtio" in recipe.modules
    assert recipe.init.is_file() and recipe.agent.is_file()
    assert recipe.tool_packages["dropbearkey"] == "dropbear-bin"


def test_recipe_missing_key_raises() -> None:
    with pytest.raises(KeyError):
        parse_recipe({"name": "x", "kernel": {}, "userland": {}, "host": {}}, Path("."))


def test_unknown_recipe_names_the_folder() -> None:
    with pytest.raises(ImageBuildError, match="guest recipe no-such-recipe not found"):
        load_recipe("no-such-recipe")


def test_cache_key_changes_with_recipe_and_versions() -> None:
    files = {"init.sh": b"echo hi\n", "recipe.toml": b"name='x'\n"}
    versions = {"linux-image-6.1.0-56-amd64": "6.1.192-2", "busybox-static": "1:1.35.0-4"}
    base = cache_key(files, versions)
    assert base == cache_key(dict(reversed(files.items())), versions), "order must not matter"
    assert base != cache_key({**files, "init.sh": b"echo ho\n"}, versions)
    assert base != cache_key(files, {**versions, "busybox-static": "1:1.36.1-1"})
    assert base != cache_key({**files, "extra": b""}, versions)


def test_extract_vmlinux_finds_the_xz_payload() -> None:
    elf = b"\x7fELF" + bytes(range(256)) * 64
    bzimage = b"MZ setup code \xfd7zXZ\x00 decoy" + lzma.compress(elf, format=lzma.FORMAT_XZ)
    assert extract_vmlinux(bzimage + b"trailing junk") == elf


def test_extract_vmlinux_without_payload_fails() -> None:
    with pytest.raises(ImageBuildError, match="no xz-compressed ELF payload"):
        extract_vmlinux(b"MZ" + b"\0" * 100)


def test_newc_archive_layout() -> None:
    out = io.BytesIO()
    cpio = NewcWriter(out)
    cpio.file("etc/mdh/modules", b"9p.ko\n")
    cpio.symlink("bin/sh", "/bin/busybox")
    cpio.close()
    data = out.getvalue()
    assert data.startswith(b"070701")
    assert len(data) % 4 == 0
    # Parents come before children, and the archive ends with the trailer.
    assert data.index(b"etc\0") < data.index(b"etc/mdh\0") < data.index(b"etc/mdh/modules\0")
    assert data.rstrip(b"\0").endswith(b"TRAILER!!!")
    assert b"9p.ko\n" in data and b"/bin/busybox" in data


def test_kernel_dependency_from_apt_cache_show() -> None:
    from harness.image import parse_kernel_dependency

    show = (
        "Package: linux-image-amd64\nSource: linux-signed-amd64 (6.1.192+2)\n"
        "Version: 6.1.192-2\n"
        "Depends: linux-image-6.1.0-56-amd64 (= 6.1.192-2)\n"
    )
    pattern = r"^linux-image-[0-9.]+-[0-9]+-amd64$"
    assert parse_kernel_dependency(show, pattern, "linux-image-amd64") == (
        "linux-image-6.1.0-56-amd64", "6.1.192-2"
    )
    cloud = show.replace("6.1.0-56-amd64", "6.1.0-56-cloud-amd64")
    with pytest.raises(ImageBuildError, match="does not depend on a package matching"):
        parse_kernel_dependency(cloud, pattern, "linux-image-amd64")
