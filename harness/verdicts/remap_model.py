"""A model of the qid.path QEMU's 9p server gives each file under ``multidevs=remap``.

What the model follows (hw/9pfs/9p.c; the same from QEMU 4.2 to 10.x, 7.2 and 10.0
included: between them only the hash of the lookup tables changed, not what is
stored or returned):

* Affixes.  The n-th affix (n = 1, 2, ...) is n's Exp-Golomb code (k = 0) with its
  bits mirrored, so it can end a number: ``2 * bit_length(n) - 1`` bits wide.  Index 1
  is 1 bit wide, 2 and 3 are 3 bits, 4 to 7 are 5 bits, and so on.
* Devices.  The first time a device is seen, it is given a key width: the width of
  the affix the next new key will get.  It never changes afterwards.
* Keys.  A file's key is (st_dev, the top ``width`` bits of st_ino) with those bits
  stored in 16 bits, so a width over 16 loses the topmost bits.  A new key takes the
  next affix index; the counter is 16 bits wide and 0 is reserved, so 65535 keys fit.
* Paths.  ``qid.path = (st_ino << affix bits) | affix value`` in 64 bits: the top
  ``affix bits`` of the inode fall off.  A key's affix can be wider than its device's
  key width (only the device's first key is sure to match it), and inodes under one
  key that differ only in the fallen bits the key did not look at get one path.
* Full map.  A new key after the 65535th makes QEMU warn "9p: Potential degraded
  performance of inode remapping" once and give each new (st_dev, st_ino) the next id
  of a counter: ``(id << 33) | 1 << 16`` (the affix of index 65536), ids 1 to 2**31 - 1;
  then "No more prefixes available" and the stat fails.
* The export root.  ``multidevs=remap`` ignores the root device the server noted
  at start-up (that is for warn and forbid): the root is stat'ed first, by Tattach,
  so its device gets the 1-bit key and affix 1 like any first device would.

The Linux 9p client then shows ``qid.path + 2`` as st_ino (``guest_ino``).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property
from types import MappingProxyType

INO_BITS = 64
_U64 = (1 << INO_BITS) - 1
# QppEntry.ino_prefix is a uint16_t: the key keeps at most 16 inode bits.
KEY_BITS = 16
# qp_affix_next is a uint16_t starting at 1, so the 65535th new key sets it to 0.
AFFIX_COUNTER_WRAP = 1 << 16
# The full map ends every path with the affix one past the counter's last index.
FULLMAP_AFFIX_INDEX = 1 << 16
# Linux's QID2INO (formerly v9fs_qid2ino) on a 64-bit ino_t.
GUEST_INO_OFFSET = 2
DEGRADED_WARNING = "9p: Potential degraded performance of inode remapping"
EXHAUSTED_ERROR = "9p: No more prefixes available for remapping inodes from host to guest."


class RemapExhausted(Exception):
    """QEMU can map no more files: the full map's ids ran out (the guest sees ENFILE)."""


class RemapBranch(StrEnum):
    """Which of QEMU's two mappings gave a file its qid.path."""

    # qid_path_suffixmap: the key's affix below the shifted inode.
    SUFFIX = "suffix"
    # qid_path_fullmap: the affix counter had run out, a per-file id instead.
    FULLMAP = "fullmap"


@dataclass(frozen=True)
class Affix:
    """One affix: its index, the value that ends the path, and its width in bits."""

    index: int
    value: int
    bits: int


@dataclass(frozen=True)
class SeenFile:
    """What QEMU's lstat gave for one file: its device and inode number."""

    dev: int
    ino: int

    def __post_init__(self) -> None:
        # One comparison chain on the common path: predict feeds 100,000 of these.
        if 0 <= self.dev <= _U64 and 0 <= self.ino <= _U64:
            return
        for name, number in (("dev", self.dev), ("ino", self.ino)):
            if not 0 <= number <= _U64:
                raise ValueError(f"{name} {number} is not a 64-bit unsigned number")


@dataclass(frozen=True)
class ModelledQid:
    """The qid.path QEMU gives one file, and how it got there.

    ``prefix_bits`` is the device's key width and ``prefix_key`` the (at most 16-bit)
    key QEMU looked up; both are None for a device first seen after the affixes ran
    out, where QEMU's width is undefined.  ``dropped_bits`` masks the inode bits the
    shift lost that the key never looked at (0 under the full map, which keys on the
    whole inode).
    """

    path: int
    branch: RemapBranch
    affix_index: int
    affix_bits: int
    prefix_bits: int | None
    prefix_key: int | None
    dropped_bits: int

    @property
    def guest_ino(self) -> int:
        """The st_ino a 64-bit Linux guest shows for this qid."""
        return guest_ino(self.path)


def _reverse_bits(value: int, width: int) -> int:
    return int(format(value, f"0{width}b")[::-1], 2)


def affix_for_index(index: int) -> Affix:
    """The affix QEMU's affixForIndex gives ``index`` (1 or more): the Exp-Golomb code
    with k = 0 (``index`` itself, written in ``2 * bit_length - 1`` bits, leading
    zeros included) mirrored, so that no affix is the low end of another."""
    if index < 1:
        raise ValueError(f"affix index {index} is below 1: QEMU reserves 0 for 'run out'")
    width = 2 * index.bit_length() - 1
    return Affix(index, _reverse_bits(index, width), width)


def prefix_key(ino: int, prefix_bits: int) -> int:
    """The key QEMU files ``ino`` under on a device of key width ``prefix_bits``: the
    inode's top ``prefix_bits`` bits, of which a uint16_t keeps the lowest 16."""
    return (ino >> (INO_BITS - prefix_bits)) & ((1 << KEY_BITS) - 1)


@functools.cache
def dropped_mask(prefix_bits: int, affix_bits: int) -> int:
    """The inode bits a path loses without the key having looked at them: the top
    ``affix_bits`` (shifted out of 64 bits) less the bits the key kept (its device's
    top ``prefix_bits``, of which the 16 lowest survive the uint16_t)."""
    shifted = ((1 << affix_bits) - 1) << (INO_BITS - affix_bits)
    keyed = ((1 << min(prefix_bits, KEY_BITS)) - 1) << (INO_BITS - prefix_bits)
    return shifted & ~keyed


def guest_ino(qid_path: int) -> int:
    """The st_ino a Linux 9p client with a 64-bit ino_t shows for ``qid_path``: the
    path plus 2, wrapping at 2**64 (QID2INO, before it v9fs_qid2ino; a 32-bit ino_t
    folds the halves instead, which this does not model)."""
    if not 0 <= qid_path <= _U64:
        raise ValueError(f"qid path {qid_path} is not a 64-bit unsigned number")
    return (qid_path + GUEST_INO_OFFSET) & _U64


def bits_phrase(mask: int) -> str:
    """``mask``'s set bits, highest first, runs joined: "bit 63", "bits 62-61",
    "bits 63, 61-60"; "no bits" for 0."""
    runs: list[tuple[int, int]] = []
    for bit in range(mask.bit_length() - 1, -1, -1):
        if not mask >> bit & 1:
            continue
        if runs and runs[-1][1] == bit + 1:
            runs[-1] = (runs[-1][0], bit)
        else:
            runs.append((bit, bit))
    if not runs:
        return "no bits"
    words = [str(hi) if hi == lo else f"{hi}-{lo}" for hi, lo in runs]
    many = len(runs) > 1 or runs[0][0] != runs[0][1]
    return ("bits " if many else "bit ") + ", ".join(words)


@dataclass(frozen=True)
class RemapResult:
    """Every distinct file's modelled qid, in the order QEMU first stat'ed it.

    ``fullmap_at`` is the position, among all the stats given (repeats counted), of
    the first one that went to the full map; ``warnings`` holds what QEMU printed.
    """

    qids: Mapping[SeenFile, ModelledQid]
    fullmap_at: int | None
    warnings: tuple[str, ...]

    @property
    def fullmap_reached(self) -> bool:
        """Whether any file went to the full map."""
        return self.fullmap_at is not None

    def collisions(self) -> list[tuple[SeenFile, ...]]:
        """Groups of distinct files that share one qid.path (so one guest st_ino), each
        in first-seen order, the groups ordered by their first file."""
        return list(self._collisions)

    @cached_property
    def _collisions(self) -> tuple[tuple[SeenFile, ...], ...]:
        # Computed once: the check and the prediction both ask (100,000 files).
        groups: dict[int, list[SeenFile]] = {}
        for file, qid in self.qids.items():
            groups.setdefault(qid.path, []).append(file)
        return tuple(tuple(group) for group in groups.values() if len(group) > 1)

    def explain(self, group: Sequence[SeenFile]) -> str:
        """Why the files of ``group`` (two or more, one qid.path) collide: the inode
        bits the shift dropped unkeyed, the key and the affix width."""
        qids = [self.qids[file] for file in group]
        if len(set(group)) < 2 or len({qid.path for qid in qids}) != 1:
            raise ValueError("explain needs two or more distinct files with one qid path")
        first, qid = group[0], qids[0]
        differ = 0
        for file in group[1:]:
            differ |= file.ino ^ first.ino
        key = "undefined" if qid.prefix_key is None else hex(qid.prefix_key)
        return (
            f"{bits_phrase(qid.dropped_bits)} dropped: key (dev {first.dev:#x}, prefix {key}) "
            f"looks at {_keyed_phrase(qid.prefix_bits)}, its affix (index {qid.affix_index}) "
            f"is {qid.affix_bits} bits wide; the inodes differ in {bits_phrase(differ)}"
        )


def _keyed_phrase(prefix_bits: int | None) -> str:
    """Which inode bits a device of key width ``prefix_bits`` keys on, in words."""
    if prefix_bits is None:
        return "no defined bits"
    kept = min(prefix_bits, KEY_BITS)
    mask = ((1 << kept) - 1) << (INO_BITS - prefix_bits)
    cut = f" (its {prefix_bits}-bit prefix cut to {KEY_BITS})" if prefix_bits > KEY_BITS else ""
    return f"inode {bits_phrase(mask)}{cut}"


class RemapModel:
    """QEMU's remap state for one export, fed one lstat at a time.

    ``affix_next`` and ``fullpath_next`` are QEMU's counters, 1 and 1 when the device
    starts; another start models an export part-way through its life.
    """

    def __init__(self, *, affix_next: int = 1, fullpath_next: int = 1) -> None:
        if not 0 <= affix_next < AFFIX_COUNTER_WRAP:
            raise ValueError(f"affix_next {affix_next} is not a uint16_t")
        self._fullmap_affix = affix_for_index(FULLMAP_AFFIX_INDEX)
        self._fullpath_wrap = 1 << (INO_BITS - self._fullmap_affix.bits)
        if not 0 <= fullpath_next < self._fullpath_wrap:
            raise ValueError(f"fullpath_next {fullpath_next} is not below {self._fullpath_wrap}")
        self._affix_next = affix_next
        self._fullpath_next = fullpath_next
        self._device_bits: dict[int, int | None] = {}
        self._keys: dict[tuple[int, int], Affix] = {}
        self._qids: dict[SeenFile, ModelledQid] = {}
        self._stats = 0
        self._fullmap_at: int | None = None
        self._warnings: list[str] = []

    def see(self, file: SeenFile) -> ModelledQid:
        """The qid.path QEMU gives ``file`` on this stat; the same (dev, ino) always gets
        the same answer.  Raises RemapExhausted when even the full map is spent."""
        position = self._stats
        self._stats += 1
        known = self._qids.get(file)
        if known is not None:
            return known
        qid = self._suffixmap(file)
        if qid is None:
            if self._fullmap_at is None:
                self._fullmap_at = position
                self._warnings.append(DEGRADED_WARNING)
            qid = self._fullmap(file)
        self._qids[file] = qid
        return qid

    def result(self) -> RemapResult:
        """A snapshot of every file modelled so far."""
        return RemapResult(MappingProxyType(dict(self._qids)), self._fullmap_at,
                           tuple(self._warnings))

    def _key_width(self, dev: int) -> int | None:
        # A device's width is fixed at first sight: that of the affix the next new key
        # would get.  With the counter at 0 QEMU takes log2(0); the model says None.
        if dev not in self._device_bits:
            next_index = self._affix_next
            self._device_bits[dev] = affix_for_index(next_index).bits if next_index else None
        return self._device_bits[dev]

    def _suffixmap(self, file: SeenFile) -> ModelledQid | None:
        width = self._key_width(file.dev)
        if width is None:
            # No key of this device was ever stored, so QEMU's lookup misses whatever
            # its undefined key is, and the counter is spent.
            return None
        key = prefix_key(file.ino, width)
        affix = self._keys.get((file.dev, key))
        if affix is None:
            if self._affix_next == 0:
                return None
            affix = affix_for_index(self._affix_next)
            self._affix_next = (self._affix_next + 1) % AFFIX_COUNTER_WRAP
            self._keys[(file.dev, key)] = affix
        path = ((file.ino << affix.bits) & _U64) | affix.value
        return ModelledQid(path, RemapBranch.SUFFIX, affix.index, affix.bits,
                           width, key, dropped_mask(width, affix.bits))

    def _fullmap(self, file: SeenFile) -> ModelledQid:
        if self._fullpath_next == 0:
            raise RemapExhausted(f"{EXHAUSTED_ERROR} (dev {file.dev:#x}, ino {file.ino:#x})")
        affix = self._fullmap_affix
        path = (self._fullpath_next << affix.bits) | affix.value
        self._fullpath_next = (self._fullpath_next + 1) % self._fullpath_wrap
        width = self._device_bits.get(file.dev)
        key = None if width is None else prefix_key(file.ino, width)
        return ModelledQid(path, RemapBranch.FULLMAP, affix.index, affix.bits,
                           width, key, 0)


def model_remap(seen: Iterable[SeenFile]) -> RemapResult:
    """Model a fresh export given every lstat QEMU makes, in order: the export root
    first (Tattach stats it before anything), then each walk, getattr and readdir
    entry (readdir stats every entry under remap).  Repeats are fine."""
    model = RemapModel()
    for file in seen:
        model.see(file)
    return model.result()
