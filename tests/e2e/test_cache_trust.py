"""Nothing cached is trusted as it is (issue 22), on real guests and the real CLI.

A kernel rebuilt in place boots cold and rows name the kernel the guest reports; a
truncated vmlinux is rebuilt, said once; a planted link, a cache others can write,
a corrupt manifest, metadata without ``created`` and a killed save are each met as
the harness promises.  Every test damages a private cache (``MDH_CACHE_DIR``), a
copy of the current image: never the shared one.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from harness import paths
from harness.image.build import build_image

from .helpers import HARNESS_TIMEOUT, needs_qemu
from .leaks import Sandbox

EXIT_ENVIRONMENT = 2


def _private_cache(root: Path, *, apt: bool = False) -> tuple[Path, Path]:
    """A cache of its own: a copy of the current image and of the resolutions (and
    with ``apt`` of the private apt lists, for a rebuild).  Returns the cache root
    and the copied image directory."""
    image = build_image()
    cache = root / "cache"
    cache.mkdir(mode=0o700)
    copy = cache / image.directory.name
    shutil.copytree(image.directory, copy)
    shutil.copytree(paths.resolved_dir(), cache / paths.RESOLVED)
    if apt:
        shutil.copytree(paths.cache_root() / paths.APT, cache / paths.APT)
    return cache, copy


def _error_line(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit 2 with one 'error:' line (and its hint) holding every needle, no traceback."""
    err = result.stderr
    assert result.returncode == EXIT_ENVIRONMENT, f"rc {result.returncode}\n{err}"
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, f"{needle!r} missing from:\n{err}"
    return errors[0]


# --- item 1: a kernel rebuilt in place is another kernel ----------------------------------


def _exec(sandbox: Sandbox, cache: Path, kernel: Path) -> subprocess.CompletedProcess[str]:
    result = sandbox.run(["exec", "--accel", "tcg", "--kernel", str(kernel), "--",
                          "uname", "-r"], timeout=HARNESS_TIMEOUT,
                         env={"MDH_CACHE_DIR": str(cache)})
    assert result.returncode == 0, result.stderr
    return result


@needs_qemu
@pytest.mark.timeout(400)
def test_a_kernel_rebuilt_in_place_boots_cold_and_rows_name_what_the_guest_runs(
    tmp_path: Path,
) -> None:
    cache, image = _private_cache(tmp_path)
    sandbox = Sandbox(tmp_path / "sandbox")
    kernel = tmp_path / "bzImage"
    shutil.copyfile(image / "vmlinuz", kernel)
    release = _exec(sandbox, cache, kernel).stdout.strip()
    _exec(sandbox, cache, kernel)  # saves the state if the first did not
    assert "(restored)" in _exec(sandbox, cache, kernel).stderr
    # Rebuilt in place: the same release, new bytes, a new size and mtime.  Restoring
    # the old kernel's saved RAM would judge the first build every time.
    with open(kernel, "ab") as handle:
        handle.write(b"\0")
    rebuilt = _exec(sandbox, cache, kernel)
    assert "(cold)" in rebuilt.stderr and "(restored)" not in rebuilt.stderr, rebuilt.stderr
    assert f"kernel: --kernel {kernel} (release {release})" in rebuilt.stderr
    assert "(restored)" in _exec(sandbox, cache, kernel).stderr  # its own state now
    report = tmp_path / "run.json"
    result = sandbox.run(["run", "--accel", "tcg", "--kernel", str(kernel), "--modes", "remap",
                          "--no-control", "--json", str(report)], timeout=HARNESS_TIMEOUT,
                         env={"MDH_CACHE_DIR": str(cache)})
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(report.read_text())
    assert data["guest"]["kernel"] == release
    guests = {(r["guest"]["kernel"], r["guest"]["build"]) for r in data["results"]}
    assert len(guests) == 1, guests
    reported, build = guests.pop()
    assert reported == release and build.startswith("#1 SMP"), (reported, build)
    sandbox.assert_clean()


# --- item 4: the cache defends itself --------------------------------------------------


@needs_qemu
@pytest.mark.timeout(360)
@pytest.mark.parametrize("records", [True, False], ids=["recorded", "built-before-records"])
def test_a_truncated_vmlinux_is_rebuilt_and_said_once(tmp_path: Path, records: bool) -> None:
    # The image under test is made here in both shapes, never taken as the machine's
    # cache holds it: an image built by today's code records each file's size (the
    # size is what gives the cut away), one built before that has only the ELF
    # headers to go by.  Which one a machine's cache holds depends on its history.
    cache, image = _private_cache(tmp_path, apt=True)
    manifest_path = image / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    vmlinux = image / "vmlinux"
    full = vmlinux.stat().st_size
    assert manifest["files"]["vmlinux"]["size"] == full  # built by today's code
    if not records:
        del manifest["files"]
        manifest_path.write_text(json.dumps(manifest))
    half = full // 2
    with open(vmlinux, "r+b") as handle:
        handle.truncate(half)
    sandbox = Sandbox(tmp_path / "sandbox")
    result = sandbox.run(["exec", "--accel", "tcg", "--", "uname", "-r"], timeout=300,
                         env={"MDH_CACHE_DIR": str(cache)})
    assert result.returncode == 0, result.stderr
    damaged = [line for line in result.stderr.splitlines() if "is damaged" in line]
    assert len(damaged) == 1, result.stderr
    said = (f"vmlinux is {half} bytes, {full} when built" if records
            else f"vmlinux is cut short: {half} bytes")
    assert f"cached image {image.name} is damaged ({said}" in damaged[0] \
        and damaged[0].endswith("; rebuilding it"), damaged
    manifest = json.loads(manifest_path.read_text())
    assert manifest["files"]["vmlinux"]["size"] == vmlinux.stat().st_size > 0
    sandbox.assert_clean()


@needs_qemu
@pytest.mark.timeout(60)
@pytest.mark.parametrize("who", ["group", "others"])
def test_a_cache_others_can_write_is_refused_with_the_fix(tmp_path: Path, who: str) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o770 if who == "group" else 0o757)
    sandbox = Sandbox(tmp_path / "sandbox")
    result = sandbox.run(["exec", "--accel", "tcg", "--", "true"], timeout=50,
                         env={"MDH_CACHE_DIR": str(cache)})
    _error_line(result, f"the cache directory {cache} is writable by other users",
                f"hint: chmod go-w {cache}")
    assert sorted(p.name for p in cache.iterdir()) == []  # refused before writing
    sandbox.assert_clean()


@needs_qemu
@pytest.mark.timeout(60)
def test_a_planted_lock_link_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    victim.chmod(0o644)
    (cache / ".lock").symlink_to(victim)
    sandbox = Sandbox(tmp_path / "sandbox")
    result = sandbox.run(["exec", "--accel", "tcg", "--", "true"], timeout=50,
                         env={"MDH_CACHE_DIR": str(cache)})
    _error_line(result, f"{cache / '.lock'} in the cache is a symbolic link: refused",
                f"hint: remove it (rm {cache / '.lock'})")
    assert victim.read_bytes() == b"precious" and victim.stat().st_mode & 0o777 == 0o644
    sandbox.assert_clean()


@pytest.mark.timeout(60)
def test_a_corrupt_manifest_and_metadata_without_created_are_no_crash(tmp_path: Path) -> None:
    cache, image = _private_cache(tmp_path)
    other = cache / f"{image.name[:-16]}{'f' * 16}"  # another image of the recipe
    shutil.copytree(image, other)
    (other / "manifest.json").write_text("[1, 2]")
    state = cache / paths.STATES / "0123456789abcdef01234567"
    state.mkdir(parents=True)
    (state / "state.bin").write_bytes(b"x" * 4096)
    (state / "meta.json").write_text('{"size": 4096}')  # no "created"
    sandbox = Sandbox(tmp_path / "sandbox")
    result = sandbox.run(["image", "list", "--json"], timeout=50,
                         env={"MDH_CACHE_DIR": str(cache)})
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    directories = [i["directory"] for r in found["recipes"] for i in r["images"]]
    assert str(image) in directories and str(other) not in directories
    assert [s["key"] for s in found["states"]] == [state.name]
    sandbox.assert_clean()


@pytest.mark.timeout(60)
def test_image_prune_removes_what_a_killed_save_left(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    states = cache / paths.STATES
    killed = states / "0123456789abcdef01234567"  # SIGKILL during the save
    killed.mkdir(parents=True)
    (killed / "state.bin.partial").write_bytes(b"x" * (3 << 20))
    metaless = states / "abcdef0123456789abcdef01"  # SIGKILL before the metadata
    metaless.mkdir()
    (metaless / "state.bin").write_bytes(b"x" * (2 << 20))
    sandbox = Sandbox(tmp_path / "sandbox")
    result = sandbox.run(["image", "prune"], timeout=50, env={"MDH_CACHE_DIR": str(cache)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == \
        "removed 0 saved guest states and 2 incomplete ones (5.0 MiB)"
    assert list(states.iterdir()) == []
    sandbox.assert_clean()
