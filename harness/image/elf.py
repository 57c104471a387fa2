"""Just enough of ELF64 (little endian) to read what the image build needs.

The guest's binaries come from another Debian suite than the host's, so the host's
``ldd`` (which runs the binary's interpreter) must not be asked about them; the
interpreter and DT_NEEDED entries are read from the file instead.  Kernel modules
are relocatable ELF files whose ``.modinfo`` section names their dependencies.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..errors import ImageBuildError

_PT_LOAD, _PT_DYNAMIC, _PT_INTERP = 1, 2, 3
_DT_NULL, _DT_NEEDED, _DT_STRTAB = 0, 1, 5


@dataclass(frozen=True)
class DynamicInfo:
    """What the dynamic loader needs to start a binary."""

    interpreter: str | None
    needed: tuple[str, ...]


def _check(data: bytes, what: str) -> None:
    if data[:4] != b"\x7fELF":
        raise ImageBuildError(f"{what} is not an ELF file")
    if data[4] != 2 or data[5] != 1:
        raise ImageBuildError(f"{what} is not a little-endian 64-bit ELF file")


def _segments(data: bytes) -> list[tuple[int, int, int, int]]:
    """(type, file offset, virtual address, file size) of every program header."""
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    segments = []
    for index in range(phnum):
        base = phoff + index * phentsize
        p_type, _, offset, vaddr, _, filesz = struct.unpack_from("<IIQQQQ", data, base)
        segments.append((p_type, offset, vaddr, filesz))
    return segments


def _cstring(data: bytes, offset: int) -> str:
    end = data.index(b"\0", offset)
    return data[offset:end].decode()


def dynamic_info(data: bytes, what: str = "binary") -> DynamicInfo:
    """The PT_INTERP path and the DT_NEEDED names of an executable or shared object.

    A static binary has neither and returns ``DynamicInfo(None, ())``.
    """
    _check(data, what)
    segments = _segments(data)
    interp = next((_cstring(data, off) for t, off, _, _ in segments if t == _PT_INTERP), None)
    dynamic = next(((off, size) for t, off, _, size in segments if t == _PT_DYNAMIC), None)
    if dynamic is None:
        return DynamicInfo(interp, ())
    entries = []
    offset, size = dynamic
    for pos in range(offset, offset + size, 16):
        tag, value = struct.unpack_from("<qQ", data, pos)
        if tag == _DT_NULL:
            break
        entries.append((tag, value))
    strtab = next((value for tag, value in entries if tag == _DT_STRTAB), None)
    if strtab is None:
        raise ImageBuildError(f"{what} has a dynamic section without a string table")
    # DT_STRTAB is an address; the PT_LOAD segment holding it gives its file offset.
    base = next(
        (off + strtab - vaddr for t, off, vaddr, size in segments
         if t == _PT_LOAD and vaddr <= strtab < vaddr + size),
        None,
    )
    if base is None:
        raise ImageBuildError(f"{what}: DT_STRTAB lies outside every loaded segment")
    needed = tuple(_cstring(data, base + value) for tag, value in entries if tag == _DT_NEEDED)
    return DynamicInfo(interp, needed)


def section(data: bytes, name: str, what: str = "ELF file") -> bytes | None:
    """The contents of the section called ``name``, or None if there is none."""
    _check(data, what)
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = []
    for index in range(shnum):
        sh_name, _, _, _, offset, size = struct.unpack_from("<IIQQQQ", data,
                                                           shoff + index * shentsize)
        headers.append((sh_name, offset, size))
    if not headers:
        return None
    _, names_offset, _ = headers[shstrndx]
    for sh_name, offset, size in headers:
        if _cstring(data, names_offset + sh_name) == name:
            return data[offset:offset + size]
    return None


def modinfo(data: bytes, what: str = "module") -> dict[str, list[str]]:
    """A kernel module's ``.modinfo`` as key -> values (``depends``, ``vermagic``, ...)."""
    raw = section(data, ".modinfo", what)
    if raw is None:
        raise ImageBuildError(f"{what} has no .modinfo section: not a kernel module")
    info: dict[str, list[str]] = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.decode(errors="replace").partition("=")
        if sep:
            info.setdefault(key, []).append(value)
    return info


def module_depends(data: bytes, what: str = "module") -> tuple[str, ...]:
    """Names of the modules a module needs loaded first (its ``depends=`` entry)."""
    values = modinfo(data, what).get("depends", [])
    return tuple(name for value in values for name in value.split(",") if name)


def file_extent(head: bytes, what: str = "ELF file") -> int:
    """How long a whole ELF64 file is, from its first bytes: the furthest end of its
    program segments and of its section header table (which a linker puts last).

    A file shorter than that was cut short.  ``head`` must hold the ELF header and
    the program headers (the first 64 KiB of a vmlinux do).
    """
    _check(head, what)
    shoff: int = struct.unpack_from("<Q", head, 0x28)[0]
    shentsize, shnum = struct.unpack_from("<HH", head, 0x3A)
    try:
        ends = [int(offset + size) for _, offset, _, size in _segments(head)]
    except struct.error as exc:
        raise ImageBuildError(f"{what}: its program headers are cut off") from exc
    return max([shoff + int(shentsize) * int(shnum), *ends])
