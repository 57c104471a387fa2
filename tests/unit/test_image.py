"""Recipes, module order, package resolution, the cache (no apt on a hit) and cpio."""

from __future__ import annotations

import io
import json
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

from harness.errors import CacheDirError, ImageBuildError
from harness.image import build as image_mod
from harness.image.apt import PackageInfo
from harness.image.build import (
    BUILDER_VERSION,
    Resolution,
    build_image,
    dependency_closure,
    pick_kernel_package,
    store_resolution,
)
from harness.image.cpio import NewcWriter
from harness.image.initramfs import module_name, parse_modules_builtin, resolve_module_order
from harness.image.lock import cache_lock
from harness.image.recipe import (
    cache_key,
    load_recipe,
    parse_recipe,
    recipe_digest,
    recipe_files,
    recipe_names,
)

DATA = Path(__file__).parent / "data"
TRUE = Path(shutil.which("true") or "/bin/true")


def _modules_dep_graph() -> dict[str, tuple[str, ...]]:
    # A real 6.1 modules.dep, turned into the name -> depends graph .modinfo gives.
    graph = {}
    for line in (DATA / "modules.dep").read_text().splitlines():
        path, _, deps = line.partition(":")
        graph[module_name(path)] = tuple(module_name(d) for d in deps.split())
    return graph


WANTED = ["virtio_pci", "virtio_net", "9pnet_virtio", "9p"]


def test_module_order_puts_every_dependency_first() -> None:
    graph = _modules_dep_graph()
    order = resolve_module_order(WANTED, graph.__getitem__, builtin=set())
    assert order == [
        "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio", "virtio_ring",
        "virtio_pci", "failover", "net_failover", "virtio_net", "9pnet", "9pnet_virtio",
        "netfs", "fscache", "9p",
    ]
    for index, name in enumerate(order):
        for dep in graph[name]:
            assert order.index(dep) < index, f"{dep} must load before {name}"


def test_built_in_modules_are_not_loaded() -> None:
    graph = _modules_dep_graph()
    builtin = parse_modules_builtin(
        "kernel/drivers/virtio/virtio.ko\nkernel/drivers/virtio/virtio_ring.ko\n"
        "kernel/drivers/virtio/virtio_pci.ko\nkernel/drivers/virtio/virtio_pci_legacy_dev.ko\n"
        "kernel/drivers/virtio/virtio_pci_modern_dev.ko\n")
    order = resolve_module_order(WANTED, graph.__getitem__, builtin)
    assert order[:3] == ["failover", "net_failover", "virtio_net"]
    assert not set(order) & builtin
    everything = set(graph)
    assert resolve_module_order(WANTED, graph.__getitem__, everything) == []


def test_dependency_cycle_is_detected() -> None:
    graph = {"a": ("b",), "b": ("a",)}
    with pytest.raises(ImageBuildError, match="cycle"):
        resolve_module_order(["a"], graph.__getitem__, set())


def test_module_name_handles_compression_and_dashes() -> None:
    assert module_name("kernel/net/9p/9pnet_virtio.ko.xz") == "9pnet_virtio"
    assert module_name("kernel/net/9p/9pnet_virtio.ko.zst") == "9pnet_virtio"
    assert module_name("kernel/drivers/x/foo-bar.ko") == "foo_bar"


def test_both_recipes_parse_and_share_init_and_agent() -> None:
    assert {"debian-bookworm-x86_64", "debian-trixie-x86_64"} <= set(recipe_names())
    bookworm, trixie = load_recipe(), load_recipe("debian-trixie-x86_64")
    assert bookworm.name == "debian-bookworm-x86_64" and bookworm.suite.name == "bookworm"
    assert trixie.suite.name == "trixie" and trixie.suite.security == "trixie-security"
    assert bookworm.init == trixie.init and bookworm.agent == trixie.agent
    assert bookworm.init.is_file() and bookworm.init.parent.name == "common"
    assert "9p" in trixie.modules and "dropbear-bin" in trixie.userland_packages
    files = recipe_files(trixie)
    assert set(files) == {"recipe.toml", "common/init.sh", "common/mdh-agent.c"}


def test_shared_file_changes_the_digest(tmp_path: Path) -> None:
    recipe = load_recipe()
    files = recipe_files(recipe)
    base = recipe_digest(files, BUILDER_VERSION)
    assert base == recipe_digest(dict(reversed(files.items())), BUILDER_VERSION)
    edited = {**files, "common/init.sh": files["common/init.sh"] + b"\n"}
    assert recipe_digest(edited, BUILDER_VERSION) != base
    assert recipe_digest(files, BUILDER_VERSION + "x") != base


def test_recipe_missing_key_raises() -> None:
    with pytest.raises(KeyError, match=r"^'suite'$"):  # the first key read: [debian] suite
        parse_recipe({"name": "x", "debian": {}, "kernel": {}, "userland": {}, "host": {}},
                      Path("."))


def test_unknown_recipe_names_the_known_ones() -> None:
    with pytest.raises(ImageBuildError, match="guest recipe no-such-recipe not found") as info:
        load_recipe("no-such-recipe")
    assert "debian-trixie-x86_64" in info.value.hint


def test_cache_key_changes_with_versions() -> None:
    versions = {"linux-image-6.1.0-56-amd64": "6.1.192-2", "busybox-static": "1:1.35.0-4"}
    base = cache_key("d" * 64, versions)
    assert base == cache_key("d" * 64, dict(reversed(versions.items())))
    assert base != cache_key("e" * 64, versions)
    assert base != cache_key("d" * 64, {**versions, "busybox-static": "1:1.36.1-1"})


def test_pick_kernel_package() -> None:
    meta = PackageInfo("linux-image-amd64", "6.12.38-1", ("linux-image-6.12.38+deb13-amd64",))
    trixie = load_recipe("debian-trixie-x86_64").kernel_package_pattern
    assert pick_kernel_package(meta, trixie) == "linux-image-6.12.38+deb13-amd64"
    cloud = PackageInfo("linux-image-amd64", "1", ("linux-image-6.12.38+deb13-cloud-amd64",))
    with pytest.raises(ImageBuildError, match="does not depend on a package matching"):
        pick_kernel_package(cloud, trixie)


def test_dependency_closure_asks_one_batch_per_level() -> None:
    archive = {
        "dropbear-bin": ("libc6", "zlib1g", "libtomcrypt1"),
        "libtomcrypt1": ("libc6", "libgmp10"),
        "zlib1g": ("libc6",), "libc6": ("libgcc-s1",), "libgcc-s1": ("libc6",),
        "libgmp10": ("libc6",), "busybox-static": (),
    }
    calls: list[list[str]] = []

    def show(names: list[str]) -> Mapping[str, PackageInfo]:
        calls.append(names)
        return {n: PackageInfo(n, f"{n}-v", archive[n]) for n in names}

    versions = dependency_closure(["dropbear-bin", "busybox-static"], show)
    assert versions == {n: f"{n}-v" for n in archive}
    assert calls == [["busybox-static", "dropbear-bin"],
                     ["libc6", "libtomcrypt1", "zlib1g"], ["libgcc-s1", "libgmp10"]]


def test_dependency_closure_follows_only_what_it_is_told_and_asks_a_virtual_name_once(
) -> None:
    # Debian's QEMU: its libraries are followed, adduser is not, and debconf-2.0 is
    # virtual (no stanza): asked once, then never again although two packages want it.
    archive = {
        "qemu-system-x86": ("libc6", "libglib2.0-0", "adduser", "debconf-2.0"),
        "libglib2.0-0": ("libc6", "debconf-2.0"), "libc6": (),
    }
    calls: list[list[str]] = []

    def show(names: list[str]) -> Mapping[str, PackageInfo]:
        calls.append(names)
        return {n: PackageInfo(n, f"{n}-v", archive[n]) for n in names if n in archive}

    versions = dependency_closure(["qemu-system-x86"], show,
                                  follow=lambda name: name != "adduser")
    assert versions == {n: f"{n}-v" for n in archive}
    assert calls == [["qemu-system-x86"], ["debconf-2.0", "libc6", "libglib2.0-0"]]


def _initramfs() -> bytes:
    out = io.BytesIO()
    cpio = NewcWriter(out)
    cpio.file("init", b"#!/bin/sh\n", mode=0o755)
    cpio.close()
    return out.getvalue()


def _fake_image(cache: Path, name: str, manifest: dict[str, object]) -> Path:
    """An image directory whose files pass the structure checks: a real ELF file
    (the host's ``true``) as vmlinux, a real newc archive as initramfs."""
    directory = cache / name
    directory.mkdir(parents=True)
    for part in ("vmlinuz", "host_key.pub", "client_key"):
        (directory / part).write_bytes(b"x")
    shutil.copyfile(TRUE, directory / "vmlinux")
    (directory / "initrd.cpio").write_bytes(_initramfs())
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory


class _NoApt:
    def __init__(self, *args: object) -> None:
        raise AssertionError("a cache hit must not call apt")


def test_cache_hit_takes_neither_the_lock_nor_apt(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = load_recipe()
    digest = recipe_digest(recipe_files(recipe), BUILDER_VERSION)
    versions = {"linux-image-6.1.0-56-amd64": "6.1.192-2"}
    key = cache_key(digest, versions)
    common = {"recipe": recipe.name, "digest": digest, "kernel_release": "6.1.0-56-amd64"}
    _fake_image(tmp_path, f"{recipe.name}-{'0' * 16}", {**common, "key": "old", "built_at": 1})
    newest = _fake_image(tmp_path, f"{recipe.name}-{key[:16]}",
                         {**common, "key": key, "built_at": 2})
    monkeypatch.setattr(image_mod, "PrivateApt", _NoApt)
    said: list[str] = []
    # Another run holds the cache lock (building something) all along: a hit must not
    # wait for it (the wait is bounded to 0.5 s here, so waiting would fail).
    monkeypatch.setattr(image_mod, "LOCK_WAIT_S", 0.5)
    with cache_lock(tmp_path / ".lock", "building image other", 1.0):
        # No resolution stored (a copied cache): the newest image of this recipe is used.
        hit = build_image(recipe, cache_root=tmp_path, progress=said.append)
        assert hit.cache_hit and hit.directory == newest
        # A fresh resolution: its key's image.
        store_resolution(tmp_path, recipe, Resolution("linux-image-6.1.0-56-amd64", versions,
                                                      time.time()))
        hit = build_image(recipe, cache_root=tmp_path, progress=said.append)
        assert hit.cache_hit and hit.directory == newest and hit.cache_key == key
        assert said == []
        # A two-day-old resolution whose image is there: used as it is, and said once.
        store_resolution(tmp_path, recipe, Resolution("linux-image-6.1.0-56-amd64", versions,
                                                      time.time() - 2 * 86400))
        hit = build_image(recipe, cache_root=tmp_path, progress=said.append)
        assert hit.cache_hit and hit.directory == newest
        assert len(said) == 1 and "resolved 2.0 days ago" in said[0], said
        # A miss must take the lock: held by the other run, it waits, then gives up.
        shutil.rmtree(newest)
        shutil.rmtree(tmp_path / f"{recipe.name}-{'0' * 16}")
        with pytest.raises(CacheDirError, match="still held after 0.5 s, by pid [0-9]+: "
                           "building image other"):
            build_image(recipe, cache_root=tmp_path, progress=said.append)
    # Free, the miss reaches apt (a day-old resolution, no image), as does image build.
    with pytest.raises(AssertionError, match="must not call apt"):
        build_image(recipe, cache_root=tmp_path)
    with pytest.raises(AssertionError, match="must not call apt"):
        build_image(recipe, cache_root=tmp_path, refresh=True)


def test_the_cache_lock_names_its_holder_and_gives_up_at_its_deadline(tmp_path: Path) -> None:
    lock = tmp_path / ".lock"
    said: list[str] = []
    with cache_lock(lock, "building image first", 1.0):
        assert lock.read_text() == f"pid {os.getpid()}: building image first\n"
        started = time.monotonic()
        with pytest.raises(CacheDirError, match=r"still held after 0.6 s, by pid [0-9]+: "
                           r"building image first") as info, \
                cache_lock(lock, "building image second", 0.6, said.append):
            pass
        assert 0.6 <= time.monotonic() - started < 3
        assert "MDH_TIMEOUT_SCALE" in info.value.hint
    assert said == [f"waiting for pid {os.getpid()}: building image first (the image cache "
                    f"{tmp_path} is locked; up to 0.6 s)"]
    # Released: the claim is gone and the next holder gets it at once.
    assert lock.read_text() == ""
    with cache_lock(lock, "building image second", 0.1):
        pass


def test_the_cache_lock_is_never_opened_through_a_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (tmp_path / ".lock").symlink_to(victim)
    with pytest.raises(CacheDirError, match=r"\.lock in the cache is a symbolic link"), \
            cache_lock(tmp_path / ".lock", "building image x", 0.1):
        pass
    assert victim.read_text() == "precious\n"


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


def test_prune_spares_images_another_run_used_recently(tmp_path: Path) -> None:
    import os
    import time

    from harness.image.build import IN_USE_S, _prune_old, mark_used

    keep, recent, stale = (tmp_path / f"debian-bookworm-x86_64-{c * 16}" for c in "abc")
    for directory in (keep, recent, stale):
        directory.mkdir()
        (directory / "vmlinux").write_bytes(b"")
    long_ago = time.time() - IN_USE_S - 60
    for directory in (recent, stale):
        os.utime(directory, (long_ago, long_ago))
    mark_used(recent)  # a run of another checkout is using it now
    _prune_old(tmp_path, "debian-bookworm-x86_64", keep=keep)
    assert keep.is_dir() and recent.is_dir() and not stale.exists()


def test_only_packages_dpkg_lists_as_installed_count_as_installed() -> None:
    from harness.image.build import not_installed

    output = ("gcc ii \n"
              "libc6-dev:amd64 ii \n"  # multi-arch names carry their architecture
              "apt rc \n"  # removed, its configuration left: not installed
              "dpkg iU \n")  # unpacked, not configured
    assert not_installed(["gcc", "libc6-dev", "apt", "dpkg", "debian-archive-keyring"],
                         output) == ["apt", "dpkg", "debian-archive-keyring"]
