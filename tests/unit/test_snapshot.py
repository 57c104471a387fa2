"""Boot by restore, the pure parts: which saved state may be used, and the cache."""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from harness.config import Accel, ExportSpec, GuestImage, MachineSpec, Mode
from harness.qemu.machine import SLOTS, Machine
from harness.qemu.snapshot import KEEP_STATES, StateCache


def _spec(tmp_path: Path, qemu: Path, **changes: object) -> MachineSpec:
    image = GuestImage(tmp_path / "img", "r", "k", "6.1", tmp_path / "img/vmlinux",
                       tmp_path / "img/vmlinuz", tmp_path / "img/initrd", tmp_path / "h",
                       tmp_path / "c", tmp_path / "c.pub")
    exports = (ExportSpec("mdh0", tmp_path / "a", Mode.REMAP, "/mnt/mdh0"),
               ExportSpec("mdh1", tmp_path / "b", Mode.WARN, "/mnt/mdh1"))
    spec = MachineSpec(qemu=qemu, accel=Accel.TCG, image=image, log_dir=tmp_path / "logs",
                       exports=exports, state_cache=tmp_path / "states")
    return replace(spec, **changes)  # type: ignore[arg-type]


@pytest.fixture
def qemu(tmp_path: Path) -> Path:
    binary = tmp_path / "qemu-system-x86_64"
    binary.write_bytes(b"\x7fELF a QEMU")
    return binary


def _key(spec: MachineSpec) -> str:
    return Machine(spec).state_key()


def test_export_paths_and_modes_do_not_change_the_key(tmp_path: Path, qemu: Path) -> None:
    spec = _spec(tmp_path, qemu)
    other = replace(spec, exports=(ExportSpec("mdh0", tmp_path / "x", Mode.FORBID, "/mnt/mdh0"),))
    assert _key(spec) == _key(other)


@pytest.mark.parametrize("change", [
    {"memory_mb": 512}, {"cpus": 2}, {"accel": Accel.KVM}, {"extra_append": ("loglevel=7",)},
    {"sandbox": True}, {"datadir": Path("/opt/qemu/share")},
])
def test_what_a_restore_must_match_changes_the_key(
    tmp_path: Path, qemu: Path, change: dict[str, object]
) -> None:
    spec = _spec(tmp_path, qemu)
    assert _key(spec) != _key(replace(spec, **change))  # type: ignore[arg-type]


def test_a_changed_image_changes_the_key(tmp_path: Path, qemu: Path) -> None:
    spec = _spec(tmp_path, qemu)
    image = replace(spec.image, vmlinux=tmp_path / "img2/vmlinux", initrd=tmp_path / "img2/i")
    assert _key(spec) != _key(replace(spec, image=image))


def test_another_qemu_binary_changes_the_key(tmp_path: Path, qemu: Path) -> None:
    spec = _spec(tmp_path, qemu)
    before = _key(spec)
    # The same path rebuilt: another size and mtime.
    qemu.write_bytes(b"\x7fELF a rebuilt QEMU")
    os.utime(qemu, ns=(1, 1))
    assert _key(spec) != before
    copy = tmp_path / "other-qemu"
    shutil.copy(qemu, copy)
    assert _key(replace(spec, qemu=copy)) != _key(spec)


def test_too_many_exports_boot_cold(tmp_path: Path, qemu: Path) -> None:
    many = tuple(ExportSpec(f"mdh{i}", tmp_path, Mode.REMAP, f"/mnt/mdh{i}")
                 for i in range(SLOTS + 1))
    assert Machine(_spec(tmp_path, qemu)).restorable
    assert not Machine(_spec(tmp_path, qemu, exports=many)).restorable
    assert not Machine(_spec(tmp_path, qemu, state_cache=None)).restorable


def _save(cache: StateCache, key: str, data: bytes = b"state") -> Path:
    with cache.saving(key) as partial:
        assert partial is not None
        partial.write_bytes(data)
        cache.commit(key, partial, f"test {key}")
    found = cache.find(key)
    assert found is not None
    return found


def test_a_committed_state_is_found_a_partial_one_never(tmp_path: Path) -> None:
    cache = StateCache(tmp_path)
    assert cache.find("k") is None
    with cache.saving("k") as partial:
        assert partial is not None
        partial.write_bytes(b"half")
        assert cache.find("k") is None  # not committed yet
    assert cache.find("k") is None and not partial.exists()  # abandoned: gone
    assert _save(cache, "k").read_bytes() == b"state"


def test_a_truncated_state_is_never_used(tmp_path: Path) -> None:
    cache = StateCache(tmp_path)
    path = _save(cache, "k", b"x" * 100)
    path.write_bytes(b"x" * 60)
    assert cache.find("k") is None


def test_only_one_process_saves_a_key(tmp_path: Path) -> None:
    cache = StateCache(tmp_path)
    with cache.saving("k") as first:
        assert first is not None
        # Another process (another open file description) is refused the lock.
        with StateCache(tmp_path).saving("k") as second:
            assert second is None


def test_invalidate_and_prune(tmp_path: Path) -> None:
    cache = StateCache(tmp_path)
    _save(cache, "bad")
    cache.invalidate("bad")
    assert cache.find("bad") is None
    for index in range(KEEP_STATES + 2):
        _save(cache, f"k{index}")
    kept = [e.key for e in cache.entries()]
    assert len(kept) == KEEP_STATES and "k0" not in kept and f"k{KEEP_STATES + 1}" in kept
    assert len(cache.prune(keep=0)) == KEEP_STATES and cache.entries() == []
