"""The multidevs=remap model against numbers worked by hand from QEMU's hw/9pfs/9p.c.

The working, used throughout:
  affix n (k = 0): n written in 2 * bit_length(n) - 1 bits, then mirrored.
    1 -> "1"                 value 1,  1 bit
    2 -> "010" mirrored "010" value 2,  3 bits
    3 -> "011" mirrored "110" value 6,  3 bits
    4 -> "00100" mirrored     value 4,  5 bits
  a device's key width: the width of the next affix index when it is first seen.
  key: (dev, (ino >> (64 - width)) & 0xffff).
  qid.path: ((ino << affix bits) mod 2**64) | affix value.
  guest st_ino (64-bit Linux client): qid.path + 2.
"""

from __future__ import annotations

import pytest

from harness.verdicts.remap_model import (
    DEGRADED_WARNING,
    RemapBranch,
    RemapExhausted,
    RemapModel,
    SeenFile,
    affix_for_index,
    bits_phrase,
    dropped_mask,
    guest_ino,
    model_remap,
)

TOP = 1 << 63
BIT62 = 1 << 62
BIT61 = 1 << 61


def test_affixes_by_hand() -> None:
    assert [(a.value, a.bits) for a in map(affix_for_index, range(1, 9))] == [
        (1, 1), (2, 3), (6, 3), (4, 5),
        (20, 5),  # 5 = "00101" mirrored "10100" = 20
        (12, 5),  # 6 = "00110" mirrored "01100" = 12
        (28, 5),  # 7 = "00111" mirrored "11100" = 28
        (8, 7),   # 8 = "0001000" is its own mirror
    ]
    # 256 = 1 << 8: 17 bits, bit 8 stays in the middle.
    assert affix_for_index(256).value == 256 and affix_for_index(256).bits == 17
    # 65535 = sixteen 1s in 31 bits, mirrored to bits 30..15: 2**31 - 2**15.
    assert affix_for_index(65535).value == 2**31 - 2**15 and affix_for_index(65535).bits == 31
    # The full map's affix, index 65536 = 1 << 16: 33 bits, value 1 << 16.
    assert affix_for_index(65536).value == 1 << 16 and affix_for_index(65536).bits == 33
    with pytest.raises(ValueError, match="reserves 0"):
        affix_for_index(0)


def test_first_device_gets_the_shortest_affix() -> None:
    # The export root is stat'ed first (Tattach): device 0x801 is keyed on 1 bit and its
    # key (0x801, 0) takes affix 1.  path = (2 << 1) | 1 = 5, guest st_ino 7.
    root = model_remap([SeenFile(0x801, 2)]).qids[SeenFile(0x801, 2)]
    assert (root.path, root.guest_ino, root.branch) == (5, 7, RemapBranch.SUFFIX)
    assert (root.affix_index, root.affix_bits, root.prefix_bits, root.prefix_key) == (1, 1, 1, 0)
    assert root.dropped_bits == 0


def test_several_devices_take_growing_affixes() -> None:
    # Four devices, inode 2 each, in this order:
    #   A: width of affix 1 = 1, affix 1 ("1"):   (2 << 1) | 1 = 5
    #   B: width of affix 2 = 3, affix 2 ("010"): (2 << 3) | 2 = 18
    #   C: width of affix 3 = 3, affix 3 ("110"): (2 << 3) | 6 = 22
    #   D: width of affix 4 = 5, affix 4:         (2 << 5) | 4 = 68
    files = [SeenFile(dev, 2) for dev in (0xA, 0xB, 0xC, 0xD)]
    result = model_remap(files)
    assert [result.qids[f].path for f in files] == [5, 18, 22, 68]
    assert [result.qids[f].prefix_bits for f in files] == [1, 3, 3, 5]
    assert result.collisions() == []
    assert not result.fullmap_reached and result.warnings == ()


def test_inodes_differing_only_in_unkeyed_bits_collide() -> None:
    a_root, a_high, a_twin = SeenFile(7, 2), SeenFile(7, TOP | 2), SeenFile(7, TOP | BIT61 | 2)
    result = model_remap([a_root, a_high, a_twin])
    # Device 7 is keyed on bit 63 only.  a_high and a_twin share key (7, 1), which takes
    # affix 2 (3 bits): both shift bits 63-61 out, and bit 61 (where they differ) was
    # never keyed.  Both: (2 << 3) | 2 = 18.
    assert result.qids[a_high].path == result.qids[a_twin].path == 18
    assert result.qids[a_high].dropped_bits == BIT62 | BIT61
    assert result.collisions() == [(a_high, a_twin)]
    # The root's key (7, 0) has the 1-bit affix: it shifts out only bit 63, which is
    # keyed, so nothing is dropped there.
    assert result.qids[a_root].dropped_bits == 0


def test_a_device_keyed_as_wide_as_its_affix_drops_nothing() -> None:
    # Device 0xB is first seen at affix 2, so it is keyed on 3 bits, as wide as the
    # affixes 2 and 3 its two keys get.  Its inodes differing in bit 62 are keyed apart:
    #   (0xB, 2):         key 0b000 -> affix 2: (2 << 3) | 2 = 18
    #   (0xB, 2**62 + 2): key 0b010 -> affix 3: (2 << 3) | 6 = 22
    low, high = SeenFile(0xA, 2), SeenFile(0xB, 2)
    twin = SeenFile(0xB, BIT62 | 2)
    result = model_remap([low, high, twin])
    assert (result.qids[high].path, result.qids[twin].path) == (18, 22)
    assert result.qids[twin].prefix_key == 0b010
    assert result.qids[high].dropped_bits == result.qids[twin].dropped_bits == 0
    assert result.collisions() == []


def test_a_key_wider_than_16_bits_is_cut_and_loses_bit_63() -> None:
    # Devices 1..255 take affixes 1..255; device 256 is then keyed on the width of
    # affix 256, 17 bits, of which the uint16_t keeps bits 62-47.
    #   (256, 5):           key (5 >> 47) & 0xffff = 0      -> affix 256 (17 bits, value 256)
    #   (256, 2**63 + 5):   key (2**16) & 0xffff = 0: same  -> affix 256
    #       both paths: (5 << 17) | 256 = 655616 (bit 63 shifted out), guest 655618
    #   (256, 2**62 + 5):   key 2**15 = 0x8000 -> affix 257 ("100000001" in 17 bits,
    #       mirrored: 2**16 + 2**8 = 65792): (5 << 17) | 65792 = 721152
    model = RemapModel()
    for dev in range(1, 256):
        model.see(SeenFile(dev, 2))
    low, top, keyed = SeenFile(256, 5), SeenFile(256, TOP | 5), SeenFile(256, BIT62 | 5)
    for file in (low, top, keyed):
        model.see(file)
    result = model.result()
    assert result.qids[low].prefix_bits == 17
    assert result.qids[low].prefix_key == result.qids[top].prefix_key == 0
    assert result.qids[low].path == result.qids[top].path == 655616
    assert result.qids[top].guest_ino == 655618
    assert (result.qids[keyed].prefix_key, result.qids[keyed].path) == (0x8000, 721152)
    assert result.qids[low].dropped_bits == TOP
    assert result.collisions() == [(low, top)]
    assert result.explain((low, top)) == (
        "bit 63 dropped: key (dev 0x100, prefix 0x0) looks at inode bits 62-47 (its 17-bit "
        "prefix cut to 16), its affix (index 256) is 17 bits wide; the inodes differ in bit 63"
    )


def test_the_full_map_takes_over_after_65535_keys() -> None:
    # Device 1 takes affix 1, devices 2..65535 take affixes 2..65535; the uint16_t
    # counter then wraps to 0.
    model = RemapModel()
    for dev in range(1, 65536):
        model.see(SeenFile(dev, 2))
    last = model.result().qids[SeenFile(65535, 2)]
    # Affix 65535 is 31 bits, value 2**31 - 2**15: (2 << 31) | that = 6442418176.
    assert (last.branch, last.affix_bits, last.path) == (RemapBranch.SUFFIX, 31, 6442418176)
    assert not model.result().fullmap_reached
    # A new key of device 1 (bit 63 set) finds no affix: full map id 1,
    # (1 << 33) | (1 << 16) = 8590000128, guest 8590000130.
    new_key = model.see(SeenFile(1, TOP | 2))
    assert (new_key.branch, new_key.path, new_key.guest_ino) == (
        RemapBranch.FULLMAP, 8590000128, 8590000130)
    assert (new_key.prefix_bits, new_key.prefix_key, new_key.dropped_bits) == (1, 1, 0)
    # A device first seen now has no defined key width: id 2, (2 << 33) | (1 << 16).
    late_device = model.see(SeenFile(65536, 2))
    assert (late_device.path, late_device.prefix_bits, late_device.prefix_key) == (
        17179934720, None, None)
    # An old key keeps its affix: (1, 3) is key (1, 0), affix 1: (3 << 1) | 1 = 7.
    assert model.see(SeenFile(1, 3)).path == 7
    # Seen again, a fully mapped file keeps its id; the next new file takes id 3.
    assert model.see(SeenFile(1, TOP | 2)).path == 8590000128
    assert model.see(SeenFile(1, TOP | 3)).path == (3 << 33) | (1 << 16)
    result = model.result()
    assert result.fullmap_at == 65535 and result.warnings == (DEGRADED_WARNING,)
    assert result.collisions() == []


def test_the_full_map_runs_out_after_2_31_minus_1_ids() -> None:
    # An export whose affixes are spent and whose full map is at its last id, 2**31 - 1
    # (the id is kept to 64 - 33 bits): that id is given, the next new file fails.
    model = RemapModel(affix_next=0, fullpath_next=2**31 - 1)
    last = model.see(SeenFile(7, 2))
    assert last.path == ((2**31 - 1) << 33) | (1 << 16) == 0xFFFF_FFFE_0001_0000
    with pytest.raises(RemapExhausted, match="No more prefixes available.*ino 0x3"):
        model.see(SeenFile(7, 3))
    assert model.see(SeenFile(7, 2)) == last


def test_counters_out_of_range_are_refused() -> None:
    with pytest.raises(ValueError, match="affix_next 65536 is not a uint16_t"):
        RemapModel(affix_next=65536)
    with pytest.raises(ValueError, match="fullpath_next 2147483648 is not below 2147483648"):
        RemapModel(fullpath_next=2**31)
    with pytest.raises(ValueError, match="ino 18446744073709551616 is not a 64-bit"):
        SeenFile(1, 2**64)


def test_hard_links_share_one_qid_and_are_no_collision() -> None:
    # One inode reached by two names is stat'ed twice: same key, same affix, same path.
    model = RemapModel()
    first = model.see(SeenFile(0x801, 40))
    model.see(SeenFile(0x802, 40))  # another device in between takes affix 2
    assert model.see(SeenFile(0x801, 40)) is first
    assert first.path == (40 << 1) | 1 == 81
    result = model.result()
    assert len(result.qids) == 2 and result.collisions() == []


# The overlay finding: overlayfs (xino=on) over an upper and three lower tmpfs layers,
# files made in the same order, so each layer's f0 is tmpfs inode 2.  Under xino the
# host shows one st_dev and puts the layer in the top bits:
#   upper f0 2, lower1 f0 2**62 + 2, lower2 f0 2**63 + 2, lower3 f0 2**63 + 2**62 + 2.
# Working:
#   root (dev, 1), stat'ed first: the device's key width is 1 (affix 1), so a key is
#     bit 63 alone.  Key (dev, 0) -> affix 1: path = (ino << 1) | 1.
#   upper f0:  key 0, (2 << 1) | 1 = 5, guest 7.
#   lower1 f0: key 0, ((2**62 + 2) << 1) | 1 = 2**63 + 5 (bit 63 is set by the shift,
#     bit 62 of the inode went up, nothing lost), guest 2**63 + 7.
#   lower2 f0: key 1 is new -> affix 2, 3 bits, value 2:
#     ((2**63 + 2) << 3) mod 2**64 | 2 = (2 << 3) | 2 = 18.
#   lower3 f0: key 1 again -> affix 2: ((2**63 + 2**62 + 2) << 3) mod 2**64 | 2 = 18.
#   Bits 63-61 are shifted out; the key kept bit 63, so bits 62-61 are dropped unkeyed,
#   and lower2 and lower3 differ only in bit 62.  Guest st_ino: 18 + 2 = 20 for both.
OVERLAY_DEV = 0x2F


def _overlay_files(count: int) -> list[SeenFile]:
    files = [SeenFile(OVERLAY_DEV, 1)]
    for layer in range(4):  # upper, lower1, lower2, lower3
        files += [SeenFile(OVERLAY_DEV, (layer << 62) | (2 + n)) for n in range(count)]
    return files


def test_the_overlay_finding_lower2_and_lower3_collide_at_guest_ino_20() -> None:
    files = _overlay_files(3)
    result = model_remap(files)
    upper_f0, lower1_f0, lower2_f0, lower3_f0 = files[1], files[4], files[7], files[10]
    assert lower2_f0 == SeenFile(OVERLAY_DEV, 2**63 + 2)
    assert lower3_f0 == SeenFile(OVERLAY_DEV, 2**63 + 2**62 + 2)
    assert result.qids[upper_f0].path == 5
    assert result.qids[lower1_f0].path == 2**63 + 5
    assert result.qids[lower2_f0].path == result.qids[lower3_f0].path == 18
    assert result.qids[lower2_f0].guest_ino == result.qids[lower3_f0].guest_ino == 20
    assert (result.qids[lower3_f0].affix_index, result.qids[lower3_f0].prefix_key) == (2, 1)
    # Every file pair of lower2 and lower3 collides (f1: 26, f2: 34), nothing else does.
    assert result.collisions() == [(files[7 + n], files[10 + n]) for n in range(3)]
    assert [result.qids[g[0]].path for g in result.collisions()] == [18, 26, 34]
    assert result.explain((lower2_f0, lower3_f0)) == (
        "bits 62-61 dropped: key (dev 0x2f, prefix 0x1) looks at inode bit 63, its affix "
        "(index 2) is 3 bits wide; the inodes differ in bit 62"
    )


def test_explain_refuses_files_that_do_not_collide() -> None:
    files = _overlay_files(1)
    result = model_remap(files)
    with pytest.raises(ValueError, match="two or more distinct files with one qid path"):
        result.explain((files[1], files[2]))  # upper f0 (5) and lower1 f0 (2**63 + 5)


def test_guest_ino_adds_2_and_wraps() -> None:
    assert guest_ino(18) == 20
    assert guest_ino(2**64 - 1) == 1
    with pytest.raises(ValueError, match="not a 64-bit unsigned number"):
        guest_ino(-1)


def test_dropped_mask_and_bit_phrases() -> None:
    assert dropped_mask(1, 3) == BIT62 | BIT61
    assert dropped_mask(3, 3) == 0
    assert dropped_mask(17, 17) == TOP  # bits 62-47 keyed, 63 cut by the uint16_t
    assert bits_phrase(BIT62 | BIT61) == "bits 62-61"
    assert bits_phrase(TOP | BIT61 | (1 << 60)) == "bits 63, 61-60"
    assert bits_phrase(TOP) == "bit 63"
    assert bits_phrase(0) == "no bits"
