"""A minimal writer for the "newc" cpio format the Linux initramfs unpacker reads.

Writing the archive ourselves means every entry is owned by root without needing
root (or fakeroot) on the host, and the output is byte-for-byte reproducible.
"""

from __future__ import annotations

import stat
from typing import BinaryIO

_MAGIC = b"070701"
_TRAILER = "TRAILER!!!"


class NewcWriter:
    """Append directories, files and symlinks to an uncompressed newc archive."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._ino = 1
        self._dirs: set[str] = set()

    def directory(self, path: str, mode: int = 0o755) -> None:
        """Add a directory (and its missing parents) once."""
        path = path.strip("/")
        if not path or path in self._dirs:
            return
        parent = path.rpartition("/")[0]
        if parent:
            self.directory(parent)
        self._dirs.add(path)
        self._entry(path, stat.S_IFDIR | mode, b"", nlink=2)

    def file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        """Add a regular file; parent directories are created as needed."""
        path = path.strip("/")
        self._parents(path)
        self._entry(path, stat.S_IFREG | mode, data)

    def symlink(self, path: str, target: str) -> None:
        """Add a symbolic link pointing at ``target``."""
        path = path.strip("/")
        self._parents(path)
        self._entry(path, stat.S_IFLNK | 0o777, target.encode())

    def close(self) -> None:
        """Write the trailer; the kernel stops reading the archive there."""
        self._entry(_TRAILER, 0, b"", nlink=1, ino=0)

    def _parents(self, path: str) -> None:
        parent = path.rpartition("/")[0]
        if parent:
            self.directory(parent)

    def _entry(
        self, name: str, mode: int, data: bytes, nlink: int = 1, ino: int | None = None
    ) -> None:
        encoded = name.encode() + b"\0"
        if ino is None:
            ino = self._ino
            self._ino += 1
        fields = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
        header = _MAGIC + b"".join(b"%08X" % value for value in fields)
        self._out.write(header + encoded)
        self._pad(len(header) + len(encoded))
        self._out.write(data)
        self._pad(len(data))

    def _pad(self, length: int) -> None:
        self._out.write(b"\0" * (-length % 4))
