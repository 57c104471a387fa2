"""Builders of host truths for the unit tests: one ``HostEntry`` per call, shaped as
the harness's own export builds them.

A directory has two links and tmpfs's 60-byte size; a file has one link, a size that
is its content's length, and by default the content the export writes into it: its
device's name and its path there (the root device is called dev00).
"""

from __future__ import annotations

from harness.host.truth import EntryKind, HostEntry

DIR_SIZE = 60


def file_content(path: str, device: int) -> bytes:
    """What the export writes into the file at ``path`` on ``device``: "dev00/a" for
    "a" on the root device, the path itself ("dev01/a") on a device of its own."""
    return f"{path if device else 'dev00/' + path}\n".encode()


def host_dir(path: str, dev: int, ino: int, device: int, *, nlink: int = 2,
             mtime: int = 0) -> HostEntry:
    """The directory ``path`` (host ids ``dev``, ``ino``) on export device ``device``."""
    return HostEntry(path, dev, ino, nlink, EntryKind.DIR, device, None, mtime, DIR_SIZE)


def host_file(path: str, dev: int, ino: int, device: int, content: str | bytes | None = None,
              *, nlink: int = 1, mtime: int = 0) -> HostEntry:
    """The regular file ``path`` (host ids ``dev``, ``ino``) on export device ``device``;
    ``content`` (text is encoded) defaults to ``file_content``."""
    if content is None:
        data = file_content(path, device)
    else:
        data = content.encode() if isinstance(content, str) else content
    return HostEntry(path, dev, ino, nlink, EntryKind.FILE, device, data, mtime, len(data))
