"""Boot by restore, the pure parts: which saved state may be used, and the cache."""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from harness.config import Accel, Mode
from harness.image.artefacts import GuestImage
from harness.qemu.machine import SLOTS, Machine
from harness.qemu.snapshot import KEEP_STATES, StateCache
from harness.qemu.spec import ExportSpec, MachineSpec


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
    {"sandbox": True}, {"datadirs": (Path("/opt/qemu/share"),)},
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


# --- every file the command line names (issue 22) ---------------------------------


def _image_files(spec: MachineSpec) -> None:
    spec.image.directory.mkdir(parents=True, exist_ok=True)
    for path in (spec.image.vmlinux, spec.image.initrd):
        path.write_bytes(b"first build")


@pytest.mark.parametrize("name", ["vmlinux", "initrd"])
@pytest.mark.parametrize("how", ["rebuilt", "touched", "replaced"])
def test_a_kernel_or_initrd_changed_in_place_changes_the_key(
    tmp_path: Path, qemu: Path, name: str, how: str
) -> None:
    spec = _spec(tmp_path, qemu)
    _image_files(spec)
    before = _key(spec)
    assert _key(spec) == before  # stable while nothing changes
    path: Path = getattr(spec.image, name)
    stamp = path.stat()
    if how == "rebuilt":  # the same release rebuilt: new bytes, new size
        path.write_bytes(b"second build, a longer one")
    elif how == "touched":  # same bytes, new mtime (make re-linked it)
        os.utime(path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 1))
    else:  # same size and mtime, another file (a copy moved over it)
        other = tmp_path / "other"
        other.write_bytes(b"first build")
        os.utime(other, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
        os.replace(other, path)
    assert _key(spec) != before


def test_named_files_reads_arguments_option_values_and_firmware_dirs(tmp_path: Path) -> None:
    from harness.qemu.snapshot import named_files

    kernel, rom, odd = tmp_path / "k", tmp_path / "fw" / "linuxboot_dma.bin", tmp_path / "a,b"
    rom.parent.mkdir()
    for path in (kernel, rom, odd):
        path.write_bytes(b"x")
    argv = ["qemu", "-kernel", str(kernel), "-L", str(rom.parent),
            "-drive", f"if=none,file={str(odd).replace(',', ',,')},format=raw",
            "-chardev", "file,id=c,path=/console", "-append", "console=ttyS0"]
    assert named_files(argv) == [kernel, rom, odd]


# --- the state cache defends itself (issue 22) -------------------------------------


def test_states_and_their_directories_are_private(tmp_path: Path) -> None:
    cache = StateCache(tmp_path / "states")
    path = _save(cache, "k")
    for directory in (cache.root, path.parent):
        assert directory.stat().st_mode & 0o777 == 0o700
    for file in (path, path.parent / "meta.json"):
        assert file.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("name", [".lock", "state.bin.partial", "meta.json"])
def test_a_planted_symlink_is_never_written_through(tmp_path: Path, name: str) -> None:
    from harness.errors import CacheDirError

    cache = StateCache(tmp_path / "states")
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (cache.root / "k").mkdir(parents=True)
    (cache.root / "k" / name).symlink_to(victim)
    if name == ".lock":
        with pytest.raises(CacheDirError, match=r"\.lock in the cache is a symbolic link"):
            _save(cache, "k")
    else:
        assert _save(cache, "k").read_bytes() == b"state"
        assert not (cache.root / "k" / name).is_symlink()
    assert victim.read_bytes() == b"precious"


def test_a_cache_others_can_write_is_refused(tmp_path: Path) -> None:
    from harness.errors import CacheDirError

    root = tmp_path / "cache"
    root.mkdir()
    root.chmod(0o777)
    with pytest.raises(CacheDirError, match="writable by other users") as caught:
        _save(StateCache(root / "states"), "k")
    assert caught.value.hint == f"chmod go-w {root}"
    root.chmod(0o755)
    assert _save(StateCache(root / "states"), "k").read_bytes() == b"state"


def test_a_cache_of_another_user_is_refused(tmp_path: Path) -> None:
    from harness.errors import CacheDirError

    if os.geteuid() != 0:
        pytest.skip("chown to another user needs root")
    root = tmp_path / "cache"
    root.mkdir()
    os.chown(root, 65534, 65534)
    with pytest.raises(CacheDirError, match="belongs to uid 65534, not to you"):
        _save(StateCache(root / "states"), "k")


def test_meta_without_created_breaks_no_later_save(tmp_path: Path) -> None:
    cache = StateCache(tmp_path)
    _save(cache, "old")
    meta = tmp_path / "old" / "meta.json"
    meta.write_text('{"size": 5}')
    # Every commit prunes, and pruning sorts by creation time.
    for index in range(3):
        _save(cache, f"k{index}")
    assert {e.key for e in cache.entries()} == {"old", "k0", "k1", "k2"}


def test_incomplete_entries_are_pruned_but_not_a_save_in_progress(tmp_path: Path) -> None:
    cache = StateCache(tmp_path)
    _save(cache, "whole")
    killed = tmp_path / "killed"  # SIGKILL during the save: only the partial file
    killed.mkdir()
    (killed / "state.bin.partial").write_bytes(b"x" * 1000)
    metaless = tmp_path / "metaless"  # SIGKILL between the rename and the metadata
    metaless.mkdir()
    (metaless / "state.bin").write_bytes(b"x" * 100)
    stray = tmp_path / "whole" / "state.bin.partial"  # a re-save killed beside a state
    stray.write_bytes(b"x")
    with cache.saving("busy") as partial:
        assert partial is not None
        partial.write_bytes(b"y" * 10)
        removed = cache.prune(keep=KEEP_STATES)
        assert partial.exists()  # being saved: left alone
    assert sorted((e.key, e.size, e.complete) for e in removed) == [
        ("killed", 1000, False), ("metaless", 100, False)]
    assert not killed.exists() and not metaless.exists() and not stray.exists()
    assert cache.find("whole") is not None


@pytest.mark.parametrize("text, release, build", [
    ("6.1.0-57-amd64\n#1 SMP PREEMPT_DYNAMIC Debian 6.1.192-3 (2026-11-20)\n",
     "6.1.0-57-amd64", "#1 SMP PREEMPT_DYNAMIC Debian 6.1.192-3 (2026-11-20)"),
    ("6.1.0-57-amd64\n", None, None),
    ("sh: uname: not found\nx\n", None, None),
])
def test_the_guest_kernel_is_read_from_both_uname_lines(text: str, release: str | None,
                                                        build: str | None) -> None:
    from harness.guest.uname import parse_uname

    reported = parse_uname(text)
    found = (reported.release, reported.build) if reported is not None else (None, None)
    assert found == (release, build)


def test_a_directory_pruned_under_a_starting_save_skips_the_save(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another process prunes the (still incomplete) key directory between this
    # save's mkdir and its lock: no save this time, and no error either.
    from harness.cachefs import private_dir as made
    from harness.qemu import snapshot

    def pruned_at_once(path: Path, **kwargs: bool) -> Path:
        made(path, **kwargs)
        if path.name == "k":
            shutil.rmtree(path)
        return path

    monkeypatch.setattr(snapshot, "private_dir", pruned_at_once)
    with StateCache(tmp_path / "states").saving("k") as partial:
        assert partial is None
