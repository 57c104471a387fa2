"""The image cache defends itself (issue 22): damaged images are rebuilt and said so
once, a corrupt manifest is no crash, a cache others can write is refused, metadata
is written whole, and ``--force`` never replaces an image a run is using."""

from __future__ import annotations

import io
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from harness.errors import CacheDirError, ImageBuildError
from harness.image import build as image_mod
from harness.image.artefacts import GuestImage
from harness.image.build import (
    BUILDER_VERSION,
    Resolution,
    build_image,
    cached_images,
    check_image,
    mark_used,
    store_resolution,
)
from harness.image.cpio import NewcWriter
from harness.image.recipe import cache_key, load_recipe, recipe_digest, recipe_files
from harness.image.verify import record_files

TRUE = Path(shutil.which("true") or "/bin/true")
VERSIONS = {"linux-image-6.1.0-56-amd64": "6.1.192-2"}


def _initramfs() -> bytes:
    out = io.BytesIO()
    cpio = NewcWriter(out)
    cpio.file("init", b"#!/bin/sh\n" * 100, mode=0o755)
    cpio.close()
    return out.getvalue()


def _image(directory: Path, manifest: dict[str, Any], *, record: bool = True) -> Path:
    """A whole image: a real ELF file as vmlinux, a real newc archive as initramfs;
    with ``record`` the sizes and hashes a build writes down."""
    directory.mkdir(parents=True)
    shutil.copyfile(TRUE, directory / "vmlinux")
    (directory / "vmlinuz").write_bytes(b"bzImage" * 10)
    (directory / "initrd.cpio").write_bytes(_initramfs())
    for name in ("host_key.pub", "client_key", "client_key.pub"):
        (directory / name).write_bytes(b"key\n")
    if record:
        manifest = {**manifest, "files": record_files(directory)}
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory


def _current(cache: Path) -> tuple[Path, dict[str, Any]]:
    """The directory and manifest the default recipe's fresh resolution points at."""
    recipe = load_recipe()
    digest = recipe_digest(recipe_files(recipe), BUILDER_VERSION)
    key = cache_key(digest, VERSIONS)
    store_resolution(cache, recipe, Resolution("linux-image-6.1.0-56-amd64", VERSIONS,
                                               time.time()))
    manifest = {"recipe": recipe.name, "digest": digest, "key": key,
                "kernel_release": "6.1.0-56-amd64", "built_at": time.time()}
    return cache / f"{recipe.name}-{key[:16]}", manifest


# --- what is checked on use ---------------------------------------------------------


@pytest.mark.parametrize("record", [True, False], ids=["recorded", "built-before-records"])
@pytest.mark.parametrize("damage, said", [
    ("empty vmlinux", "vmlinux is empty"),
    ("truncated vmlinux", "vmlinux "),
    ("truncated initrd", "initrd.cpio "),
    ("missing client_key", "client_key is missing"),
])
def test_a_damaged_image_is_not_used(tmp_path: Path, record: bool, damage: str,
                                     said: str) -> None:
    directory = _image(tmp_path / "img", {"recipe": "r", "key": "k", "kernel_release": "6.1"},
                       record=record)
    assert check_image(directory) == (json.loads((directory / "manifest.json").read_text()),
                                      None)
    what, name = damage.split(" ")
    path = directory / ("initrd.cpio" if name == "initrd" else name)
    if what == "empty":
        path.write_bytes(b"")
    elif what == "truncated":
        path.write_bytes(path.read_bytes()[:-64])
    else:
        path.unlink()
    manifest, problem = check_image(directory)
    assert manifest is None and problem is not None and problem.startswith(said), problem


def test_a_file_changed_in_place_is_found_by_its_hash(tmp_path: Path) -> None:
    directory = _image(tmp_path / "img", {"recipe": "r", "key": "k", "kernel_release": "6.1"})
    vmlinuz = directory / "vmlinuz"
    data = bytearray(vmlinuz.read_bytes())
    data[3] ^= 1  # same size, one bit: only the hash tells (the mtime moved)
    vmlinuz.write_bytes(bytes(data))
    assert check_image(directory)[1] == "vmlinuz changed since the build (another sha256)"
    vmlinuz.write_bytes(b"bzImage" * 10)  # the same bytes again, a new mtime: whole
    assert check_image(directory)[1] is None


@pytest.mark.parametrize("text, said", [
    ("[1, 2]", "manifest.json holds a list, not an object"),
    ('{"recipe": "r", "key": "k"}', "manifest.json has no 'kernel_release'"),
    ("{", "manifest.json cannot be read"),
    ('{"recipe": "r", "key": "k", "kernel_release": "6.1", "files": [1]}',
     "manifest.json's 'files' is not a table of files"),
])
def test_a_corrupt_manifest_is_a_damaged_image_not_a_crash(tmp_path: Path, text: str,
                                                           said: str) -> None:
    directory = _image(tmp_path / "debian-bookworm-x86_64-0123456789abcdef",
                       {"recipe": "r", "key": "k", "kernel_release": "6.1"})
    (directory / "manifest.json").write_text(text)
    manifest, problem = check_image(directory)
    assert manifest is None and problem is not None and problem.startswith(said)
    assert cached_images(tmp_path, "debian-bookworm-x86_64") == []


# --- what build_image does with a damaged image ---------------------------------------


class _Rebuilt(Exception):
    pass


def _no_build(*args: object) -> GuestImage:
    raise _Rebuilt()


@pytest.mark.parametrize("damage", ["truncated vmlinux", "manifest [1,2]"])
def test_a_damaged_image_is_rebuilt_and_said_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    directory, manifest = _current(tmp_path)
    _image(directory, manifest)
    assert build_image(cache_root=tmp_path).cache_hit  # whole: a hit, nothing said
    if damage == "truncated vmlinux":
        vmlinux = directory / "vmlinux"
        vmlinux.write_bytes(vmlinux.read_bytes()[: vmlinux.stat().st_size // 2])
    else:
        (directory / "manifest.json").write_text("[1, 2]")
    said: list[str] = []
    monkeypatch.setattr(image_mod, "_build", _no_build)
    with pytest.raises(_Rebuilt):
        build_image(cache_root=tmp_path, progress=said.append)
    damaged = [line for line in said if "is damaged" in line]
    assert damaged == [f"cached image {directory.name} is damaged "
                       f"({check_image(directory)[1]}); rebuilding it"], said


def test_a_cache_others_can_write_is_refused_with_the_fix(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o775)
    with pytest.raises(CacheDirError, match="is writable by other users") as caught:
        build_image(cache_root=cache)
    assert caught.value.hint == f"chmod go-w {cache}"


def test_a_symlinked_lock_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    (cache / ".lock").symlink_to(victim)
    with pytest.raises(CacheDirError, match=r"\.lock in the cache is a symbolic link"):
        build_image(cache_root=cache)
    assert victim.read_bytes() == b"precious" and victim.stat().st_mode & 0o777 != 0o600


def test_resolutions_are_written_whole_through_no_planted_link(tmp_path: Path) -> None:
    recipe = load_recipe()
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    resolved = tmp_path / "resolved"
    resolved.mkdir()
    (resolved / f"{recipe.name}.tmp").symlink_to(victim)  # the old fixed temp name
    (resolved / f"{recipe.name}.json").symlink_to(victim)
    store_resolution(tmp_path, recipe, Resolution("k", VERSIONS, 1.0))
    assert victim.read_bytes() == b"precious"
    written = resolved / f"{recipe.name}.json"
    assert not written.is_symlink() and json.loads(written.read_text())["kernel_package"] == "k"
    assert sorted(p.name for p in resolved.iterdir()) == [f"{recipe.name}.json",
                                                          f"{recipe.name}.tmp"]


# --- --force and images in use ---------------------------------------------------------


def test_force_never_replaces_an_image_in_use(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    directory, manifest = _current(tmp_path)
    _image(directory, manifest)
    monkeypatch.setattr(image_mod, "_HELD", {})
    mark_used(directory)  # this process runs from it (another process: the same lock)
    with pytest.raises(ImageBuildError, match="is in use by a running harness"):
        image_mod._build(image_mod._Plan(load_recipe(), "d", Resolution("k", VERSIONS, 1.0),
                                         manifest["key"], directory, None),
                         None, tmp_path, lambda _: None)  # type: ignore[arg-type]
    assert check_image(directory)[0] is not None


def test_publishing_swaps_a_directory_nobody_uses(tmp_path: Path) -> None:
    old = _image(tmp_path / "img", {"recipe": "r", "key": "old", "kernel_release": "6.1"})
    new = _image(tmp_path / ".build-x", {"recipe": "r", "key": "new", "kernel_release": "6.1"})
    image_mod._publish(new, old)
    assert json.loads((old / "manifest.json").read_text())["key"] == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img"]
    assert not os.path.exists(new)


@pytest.mark.timeout(30)
def test_an_image_another_process_uses_is_in_use_until_it_ends(tmp_path: Path) -> None:
    import subprocess

    directory = _image(tmp_path / "img", {"recipe": "r", "key": "k", "kernel_release": "6.1"})
    assert not image_mod.in_use(directory)
    # Another harness holding the image: the shared lock mark_used takes.
    holder = subprocess.Popen(["flock", "--shared", str(directory / ".last-used"),
                               "sleep", "30"], start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while not image_mod.in_use(directory) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert image_mod.in_use(directory)
    finally:
        os.killpg(holder.pid, 9)  # flock and its sleep, which inherited the lock
        holder.wait()
    # The kernel drops the lock with the last process holding it (sleep may die a
    # moment after flock).
    deadline = time.monotonic() + 10
    while image_mod.in_use(directory) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not image_mod.in_use(directory)
