"""The guest's ``/proc/mounts``: which 9p cache mode each export really got.  Pure; the
pool reads the file once per guest, after every export was observed.

The kernels spell the mode differently (measured with QEMU 7.2, mounting one export
per mode and reading ``/proc/mounts`` back):

========  ============================  ==========================================
asked     Linux 6.1                     Linux 6.12
========  ============================  ==========================================
none      nothing (``sync,dirsync``)    nothing
mmap      ``mmap``                      ``cache=0x5``
loose     ``loose``                     ``cache=0xf``
fscache   ``fscache``                   ``cache=0x8f``
========  ============================  ==========================================

6.1 prints the name of its ``enum p9_cache_modes`` as a bare word; from 6.4 on the
mode is a bitmask (fs/9p/v9fs.h: CACHE_FILE 0x1, CACHE_META 0x2, CACHE_WRITEBACK 0x4,
CACHE_LOOSE 0x8, CACHE_FSCACHE 0x80) printed as ``cache=0x%x`` when non-zero, and
each ``cache=`` name sets one of the ``CACHE_SC_*`` shortcuts: readahead 0x1, mmap
0x5, loose 0xf, fscache 0x8f.  ``cache=<name>`` is read too, the spelling kernels
between the two used.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..config import Cache

# The CACHE_SC_* shortcuts of Linux 6.4 on, by the bits they set.
_SHORTCUTS: Mapping[int, Cache] = {
    0x0: Cache.NONE, 0x5: Cache.MMAP, 0xF: Cache.LOOSE, 0x8F: Cache.FSCACHE}
_NAMES = frozenset(cache.value for cache in Cache)


@dataclass(frozen=True)
class MountedCache:
    """The cache mode a 9p mount shows: ``cache`` None when its options name a mode
    the harness does not ask for (``cache=0x1``, readahead, say); ``spelling`` is what
    the options said ("cache=0xf", "loose", "no cache option")."""

    cache: Cache | None
    spelling: str


def _unescape(field: str) -> str:
    """A /proc/mounts field with the kernel's octal escapes (``\\040`` a space) undone."""
    out, i = [], 0
    while i < len(field):
        code = field[i + 1:i + 4]
        if field[i] == "\\" and len(code) == 3 and all(c in "01234567" for c in code):
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def proc_mounts_options(proc_mounts: str) -> dict[str, tuple[str, str]]:
    """Mount point -> (filesystem type, options) of each line; a later mount on the same
    point wins (it hides the earlier one)."""
    found: dict[str, tuple[str, str]] = {}
    for line in proc_mounts.splitlines():
        fields = line.split()
        if len(fields) >= 4:
            found[_unescape(fields[1])] = (fields[2], fields[3])
    return found


def _from_value(value: str) -> Cache | None:
    if value in _NAMES:
        return Cache(value)
    try:
        bits = int(value, 16) if value.lower().startswith("0x") else None
    except ValueError:
        return None
    return None if bits is None else _SHORTCUTS.get(bits)


def mounted_cache(options: str) -> MountedCache:
    """The cache mode a 9p mount's options show, in either kernel's spelling; no cache
    option at all is cache=none (neither kernel prints it)."""
    for option in options.split(","):
        if option in _NAMES:
            return MountedCache(Cache(option), option)
        if option.startswith("cache="):
            return MountedCache(_from_value(option.removeprefix("cache=")), option)
    return MountedCache(Cache.NONE, "no cache option")
