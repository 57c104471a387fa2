"""The export layouts' pure parts: each layout's premise on hand-made truths (holding
and failing), the scripted specs walked through the remap model in truth order, and
the errors a host without a layout's tools gives."""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path

import pytest

from harness.config import ALL_LAYOUTS, Layout
from harness.errors import ExportError, LayoutRequirementMissing, LayoutUnavailable
from harness.host import blockfs, export, loop, scripted, tools
from harness.host.layout import ExportLayout
from harness.host.scripted import ScriptedDevice, scripted_devices
from harness.host.scripted_spec import validate_spec
from harness.host.truth import (
    EntryKind,
    HostEntry,
    HostTruth,
    declared_ino,
    layout_premise,
    scripted_content,
)
from harness.verdicts.remap_model import (
    DEGRADED_WARNING,
    ModelledQid,
    RemapBranch,
    RemapResult,
    SeenFile,
    affix_for_index,
    model_remap,
)

ROOT_DEV = 1
# Pure and quick (the full-map model walks 66,000 files in about a second).
pytestmark = pytest.mark.timeout(60)


def entry(path: str, dev: int, ino: int, device: int = 0, content: bytes | None = None,
          kind: EntryKind = EntryKind.FILE) -> HostEntry:
    return HostEntry(path, dev, ino, 1, kind, device, content)


def truth(*entries: HostEntry) -> HostTruth:
    return HostTruth(entries)


# --- premises -----------------------------------------------------------------------


def test_every_layout_has_a_builder_and_a_premise() -> None:
    assert set(export._BUILDERS) == set(Layout)
    empty = truth(entry(".", 1, 1, kind=EntryKind.DIR))
    for kind in ALL_LAYOUTS:
        layout_premise(kind, empty)  # no KeyError


@pytest.mark.parametrize("kind", [Layout.STANDARD, Layout.LOOP])
def test_tmpfs_layouts_need_a_repeated_number(kind: Layout) -> None:
    assert layout_premise(kind, truth(entry(".", 1, 1), entry("dev01", 2, 1, 1))) is None
    assert layout_premise(kind, truth(entry(".", 1, 1), entry("dev01", 2, 5, 1))) == (
        "the export spans 2 host devices but no inode number repeats across them")


def test_overlay_needs_one_device_and_the_layer_bits() -> None:
    held = truth(entry(".", 9, 2), entry("up/f0", 9, 5), entry("l1/f0", 9, 1 << 62 | 5))
    assert layout_premise(Layout.OVERLAY, held) is None
    no_bits = truth(entry(".", 9, 2), entry("l1/f0", 9, 5))
    assert layout_premise(Layout.OVERLAY, no_bits) == (
        "no inode number has bit 62 or above set: overlayfs's xino did not put the layer "
        "in the top bits")
    per_layer = truth(entry(".", 9, 2), entry("l1/f0", 10, 1 << 62 | 5))
    assert layout_premise(Layout.OVERLAY, per_layer) == (
        "the overlay export spans 2 st_dev values, not one: xino is not in effect")


def test_overlay_mixed_needs_the_bits_and_a_repeat() -> None:
    held = truth(entry(".", 1, 1), entry("dev01/l2/f0", 9, 1 << 63 | 5, 1),
                 entry("dev02", 3, 1, 2))
    assert layout_premise(Layout.OVERLAY_MIXED, held) is None
    no_repeat = truth(entry(".", 1, 1), entry("dev01/l2/f0", 9, 1 << 63 | 5, 1))
    assert "no inode number repeats" in (layout_premise(Layout.OVERLAY_MIXED, no_repeat) or "")
    no_bits = truth(entry(".", 1, 1), entry("dev02", 3, 1, 2))
    assert "xino" in (layout_premise(Layout.OVERLAY_MIXED, no_bits) or "")


def _btrfs(snap_ino: int = 257, snap_dev: int = 5) -> HostTruth:
    return truth(entry(".", 1, 1), entry("dev01", 2, 256, 1),
                 entry("dev01/snap", snap_dev, 256, 4),
                 entry("dev01/snap/f", snap_dev, snap_ino, 4),
                 entry("dev01/sv1", 3, 256, 2), entry("dev01/sv1/f", 3, 257, 2))


def test_btrfs_needs_a_snapshot_with_its_origins_numbers_elsewhere() -> None:
    assert layout_premise(Layout.BTRFS, _btrfs()) is None
    assert layout_premise(Layout.BTRFS, _btrfs(snap_ino=300)) == (
        "dev01/snap/f is inode 300, its origin dev01/sv1/f 257: the snapshot does not "
        "share its origin's inode numbers")
    assert layout_premise(Layout.BTRFS, _btrfs(snap_dev=3)) == (
        "dev01/snap is on its origin's st_dev 3: no device of its own")
    assert layout_premise(Layout.BTRFS, truth(entry(".", 1, 1))) == (
        "the export has no btrfs snapshot dev01/snap")


@pytest.mark.parametrize("kind", [Layout.XFS, Layout.EXT4])
def test_formatted_layouts_need_their_numbers_on_another_device(kind: Layout) -> None:
    held = truth(entry(".", 1, 1), entry("f", 1, 131), entry("dev01", 7, 128, 1),
                 entry("dev01/f", 7, 131, 1))
    assert layout_premise(kind, held) is None
    apart = truth(entry(".", 1, 1), entry("f", 1, 2), entry("dev01", 7, 128, 1),
                  entry("dev01/f", 7, 131, 1), entry("dev02", 8, 1, 2))
    assert layout_premise(kind, apart) == (
        "no inode number of the formatted device (dev01, 128..131) appears on another device")


def test_scripted_needs_lstat_to_show_the_chosen_numbers() -> None:
    chosen = 1 << 63 | 5
    held = truth(entry(".", 1, 1), entry("dev01/a", 2, chosen, 1,
                                         scripted_content("dev01/a", chosen)))
    assert layout_premise(Layout.SCRIPTED, held) is None
    renumbered = truth(entry(".", 1, 1), entry("dev01/a", 2, 7, 1,
                                               scripted_content("dev01/a", chosen)))
    assert layout_premise(Layout.SCRIPTED_FULLMAP, renumbered) == (
        "dev01/a: the spec chose inode 0x8000000000000005, lstat shows 0x7: the FUSE "
        "server's numbers did not reach the kernel")
    assert layout_premise(Layout.SCRIPTED, truth(entry("a", 1, 2, 0, b"plain\n"))) == (
        "no scripted file in the export says which inode number its spec chose")


def test_scripted_content_names_the_chosen_number() -> None:
    content = scripted_content("dev04/t0001b", (1 << 64) - 1)
    assert content == b"dev04/t0001b ino=0xffffffffffffffff\n"
    assert declared_ino(content) == (1 << 64) - 1
    assert declared_ino(b"dev00/file 0000\n") is None
    assert declared_ino(b"x ino=0xzz\n") is None
    assert declared_ino(None) is None


# --- the scripted specs through QEMU's remap, as the model has it ---------------------


def truth_order(devices: Sequence[ScriptedDevice]) -> list[tuple[str, SeenFile]]:
    """(path, file) in the order record_truth and the guest agent go: the export root
    (a tmpfs, small numbers) first, then each device depth first with names sorted,
    then the root's own files (all named after "devNN")."""
    order = [(".", SeenFile(ROOT_DEV, 1))]
    for dev, device in enumerate(devices, start=ROOT_DEV + 1):
        entries = sorted(device.spec, key=lambda e: e.path.split("/") if e.path else [])
        order += [(f"{device.relpath}/{e.path}".rstrip("/"), SeenFile(dev, e.ino))
                  for e in entries]
    order += [(f"file {n:04d}", SeenFile(ROOT_DEV, n + 2)) for n in range(8)]
    return order


def walk(devices: Sequence[ScriptedDevice]) -> tuple[RemapResult, dict[str, ModelledQid]]:
    order = truth_order(devices)
    result = model_remap(file for _, file in order)
    return result, {path: result.qids[file] for path, file in order}


def paths_of(groups: Iterable[tuple[SeenFile, ...]],
             order: list[tuple[str, SeenFile]]) -> list[list[str]]:
    by_file = {file: path for path, file in order}
    return [sorted(by_file[f] for f in group) for group in groups]


def test_the_scripted_specs_are_valid_and_small() -> None:
    devices = scripted_devices()
    for device in devices:
        validate_spec(device.spec)
    assert [d.relpath for d in devices] == ["dev01", "dev02", "dev03", "dev04"]
    assert sum(len(d.spec) for d in devices) < 400


def test_each_scripted_device_gets_the_key_width_it_is_built_for() -> None:
    _, qids = walk(scripted_devices())
    widths = {path: (q.affix_index, q.prefix_bits) for path, q in qids.items()
              if "/" not in path}
    assert widths["."] == (1, 1)
    assert widths["dev01"] == (2, 3)  # seen second
    assert widths["dev02"] == (10, 7)
    assert widths["dev03"] == (138, 15)
    assert widths["dev04"] == (256, 17)  # first seen after 255 keys


def test_dev01_collides_on_bits_its_3_bit_key_ignores() -> None:
    devices = scripted_devices()
    result, qids = walk(devices)
    order = truth_order(devices)
    groups = paths_of(result.collisions(), order)
    dev01 = [g for g in groups if g[0].startswith("dev01/")]
    # Groups 0 and 1 (3-bit affixes) keep bits 60..58; groups 2-5 (5-bit) lose 60..59,
    # so their files pair up by bit 58; groups 6 and 7 (7-bit) lose 60..57: all eight.
    assert [g for g in dev01 if len(g) == 8] == [
        [f"dev01/g6v{v}" for v in range(8)], [f"dev01/g7v{v}" for v in range(8)]]
    assert sorted(len(g) for g in dev01) == [4] * 8 + [8] * 2
    assert not any(p.startswith(("dev01/g0", "dev01/g1")) for g in dev01 for p in g)
    by_path = {path: file for path, file in order}
    wide = [by_path[p] for p in dev01[-1]]
    differ = 0
    for file in wide:
        differ |= file.ino ^ wide[0].ino
    assert differ == 0b111 << 58  # bits 60..58 only
    assert qids["dev01/g7v0"].prefix_bits == 3 and qids["dev01/g7v0"].affix_bits == 7
    assert result.explain(tuple(wide)).startswith("bits 60-57 dropped")


def test_dev04_loses_bit_63_to_the_16_bit_key() -> None:
    devices = scripted_devices()
    result, qids = walk(devices)
    groups = paths_of(result.collisions(), truth_order(devices))
    dev04 = [g for g in groups if g[0].startswith("dev04/")]
    assert dev04 == [[f"dev04/t{p:04x}a", f"dev04/t{p:04x}b"]
                     for p in scripted.TRUNCATED_PREFIXES]
    assert qids["dev04/t0001a"].prefix_bits == 17
    assert qids["dev04/t0001a"].prefix_key == qids["dev04/t0001b"].prefix_key == 1


def test_scripted_devices_2_and_3_only_spend_affixes() -> None:
    devices = scripted_devices()
    result, qids = walk(devices)
    groups = paths_of(result.collisions(), truth_order(devices))
    assert not any(p.startswith(("dev02", "dev03")) for g in groups for p in g)
    assert not result.fullmap_reached and result.warnings == ()
    assert max(q.affix_index for q in qids.values()) == 260


def test_scripted_fullmap_overflows_into_the_full_map() -> None:
    devices = scripted_devices(fullmap=True)
    validate_spec(devices[-1].spec)
    assert 66_000 <= sum(len(d.spec) for d in devices) <= 67_000
    result, qids = walk(devices)
    assert qids["dev05"].prefix_bits == 17 and qids["dev05"].affix_index == 261
    assert result.fullmap_reached and result.warnings == (DEGRADED_WARNING,)
    branches = {q.branch for p, q in qids.items() if p.startswith("dev05/")}
    assert branches == {RemapBranch.SUFFIX, RemapBranch.FULLMAP}
    assert affix_for_index(65535).bits == 31
    # The earlier devices are modelled as in the plain scripted layout.
    assert qids["dev04/t0001a"].branch is RemapBranch.SUFFIX


# --- what a host without a layout's requirements says ---------------------------------


def test_a_missing_tool_names_its_package() -> None:
    with pytest.raises(LayoutRequirementMissing) as caught:
        tools.find_tool("mkfs.no-such-fs", "btrfs-progs")
    assert caught.value.message.startswith("mkfs.no-such-fs is not installed")
    assert caught.value.hint.startswith("install btrfs-progs (scripts/setup does)")
    assert isinstance(caught.value, ExportError)


def test_a_tool_only_in_sbin_is_found_with_a_path_that_lacks_sbin(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A non-login root shell on Debian has no sbin in $PATH, where mkfs.* live.
    in_sbin = next(p for d in (Path("/usr/sbin"), Path("/sbin")) if d.is_dir()
                   for p in sorted(d.iterdir()) if p.is_file() and os.access(p, os.X_OK))
    monkeypatch.setenv("PATH", "/nonexistent")
    found = Path(tools.find_tool(in_sbin.name, "some-package"))
    assert found.name == in_sbin.name
    assert str(found.parent) in ("/usr/local/sbin", "/usr/sbin", "/sbin")


def test_rootless_loop_layouts_are_unavailable_in_one_line(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tools, "in_user_namespace", lambda: True)
    with pytest.raises(LayoutUnavailable) as caught:
        tools.require_real_root("xfs")
    assert "\n" not in str(caught.value)
    assert str(caught.value) == ("xfs layout skipped: loop devices need real root, and this "
                                 "harness runs in a user namespace (rootless)")


def test_a_kernel_without_the_filesystem_is_named() -> None:
    assert tools.kernel_filesystems("nodev\ttmpfs\n\text4\nnodev\toverlay\n") == {
        "tmpfs", "ext4", "overlay"}
    with pytest.raises(LayoutRequirementMissing, match="this kernel has no nosuchfs-mdh"):
        tools.require_filesystem("nosuchfs-mdh")


def test_nested_is_for_the_standard_layout_only() -> None:
    export._check_shape(ExportLayout(nested=True))
    with pytest.raises(ExportError, match="the btrfs layout has no nested device"):
        export._check_shape(ExportLayout(nested=True, kind=Layout.BTRFS))


def test_image_sizes_respect_each_mkfs_minimum() -> None:
    assert blockfs.XFS.image_bytes(8) == 300 << 20
    assert blockfs.BTRFS.image_bytes(8) == 128 << 20
    assert blockfs.EXT4.image_bytes(100_000) > 16 << 20


def test_the_loop_info_struct_has_the_kernels_size(tmp_path: Path) -> None:
    # struct loop_info64 is 232 bytes; lo_flags (autoclear) sits at offset 52.
    info = loop._loop_info(tmp_path / "x.img")
    assert len(info) == 232
    assert struct.unpack_from("=I", info, 52) == (4,)
