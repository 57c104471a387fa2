"""The scripted filesystem's FUSE server: a read-only tree answered from a spec
(``host.scripted_spec``), run as a subprocess by ``host.scripted_mount``:
``python -m harness.host.scripted_server MOUNTPOINT < SPEC.json``.

The server is libfuse 3's high-level API through mfusepy.  With libfuse's ``use_ino``
the st_ino of getattr and the d_ino of readdir reach the kernel unchanged, all 64 bits
(measured: 2**63 + 2**62 + 5, 0xFFFF_0000_0000_0001 and 2**64 - 1 come back from lstat
and scandir as given).  The kernel's own inode objects are keyed by libfuse's node ids,
so two hard links are two kernel inodes that report the same st_ino and st_nlink:
exactly what stat(2), and so QEMU, sees of a hard link.
"""

from __future__ import annotations

import argparse
import errno
import os
import stat
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .scripted_spec import ScriptedEntry, spec_from_json, validate_spec

# The mount's fsname and subtype: a leftover shows as "fuse.scripted_fs" in mountinfo.
FS_NAME = "scripted_fs"
# Written on stdout once mounted; scripted_mount waits for it.
READY_LINE = b"READY\n"
# The kernel's entry/attribute cache timeout.  The tree never changes while mounted, so
# a cached answer is always the spec's answer; caching only saves upcalls.  With 0 the
# kernel revalidates every path component on every lstat (5 getattr upcalls per file,
# measured) and walking 72,000 files took 11-17 s; with libfuse's default of 1 s, one
# upcall per file and 3-7 s.  Longer saves nothing more on such a walk.
CACHE_TIMEOUT_S = 1.0

_MODES = {"dir": stat.S_IFDIR | 0o755, "file": stat.S_IFREG | 0o644,
          "symlink": stat.S_IFLNK | 0o777}

ReaddirEntry = tuple[str, dict[str, int], int]


@dataclass(frozen=True)
class ServedTree:
    """A validated spec as the server looks it up, keyed by FUSE path ("/", "/a/b").

    Built once at start, so every request is one dict lookup: the attribute dicts and
    directory listings are handed to mfusepy as they are.
    """

    attrs: Mapping[str, dict[str, int]]
    listings: Mapping[str, list[ReaddirEntry]]
    contents: Mapping[str, bytes]
    targets: Mapping[str, str]


def _fuse_path(path: str) -> str:
    return "/" + path


def _default_nlinks(spec: Sequence[ScriptedEntry]) -> dict[str, int]:
    links: dict[int, int] = {}
    subdirs: dict[str, int] = {}
    for entry in spec:
        links[entry.ino] = links.get(entry.ino, 0) + 1
        if entry.kind == "dir" and entry.path:
            parent = entry.path.rpartition("/")[0]
            subdirs[parent] = subdirs.get(parent, 0) + 1
    nlinks = {}
    for entry in spec:
        if entry.nlink is not None:
            nlinks[entry.path] = entry.nlink
        elif entry.kind == "dir":
            nlinks[entry.path] = 2 + subdirs.get(entry.path, 0)
        else:
            nlinks[entry.path] = links[entry.ino] if entry.kind == "file" else 1
    return nlinks


def _attrs(entry: ScriptedEntry, nlink: int, uid: int, gid: int) -> dict[str, int]:
    mtime_ns = entry.mtime * 1_000_000_000
    return {"st_ino": entry.ino, "st_mode": _MODES[entry.kind], "st_nlink": nlink,
            "st_size": entry.size, "st_blocks": (entry.size + 511) // 512,
            "st_uid": uid, "st_gid": gid,
            "st_mtime": mtime_ns, "st_atime": mtime_ns, "st_ctime": mtime_ns}


def build_tree(spec: Sequence[ScriptedEntry], *, uid: int = 0, gid: int = 0) -> ServedTree:
    """Validate ``spec`` and index it for serving; every file is owned by ``uid``:``gid``."""
    validate_spec(spec)
    nlinks = _default_nlinks(spec)
    attrs = {_fuse_path(e.path): _attrs(e, nlinks[e.path], uid, gid) for e in spec}
    by_path = {e.path: e for e in spec}
    listings: dict[str, list[ReaddirEntry]] = {}
    for entry in spec:
        if entry.kind == "dir":
            # The root's ".." is itself, as on any filesystem's root.
            parent = by_path[entry.path.rpartition("/")[0]] if entry.path else entry
            listings[_fuse_path(entry.path)] = [(".", _dirent(entry), 0),
                                                ("..", _dirent(parent), 0)]
    for entry in spec:
        if entry.path:
            head, _, name = entry.path.rpartition("/")
            listings[_fuse_path(head)].append((name, _dirent(entry), 0))
    return ServedTree(
        attrs=attrs, listings=listings,
        contents={_fuse_path(e.path): e.content for e in spec if e.kind == "file"},
        targets={_fuse_path(e.path): e.target for e in spec if e.kind == "symlink"},
    )


def _dirent(entry: ScriptedEntry) -> dict[str, int]:
    # mfusepy copies only these two into the dirent: d_type and (with use_ino) d_ino.
    return {"st_mode": _MODES[entry.kind], "st_ino": entry.ino}


def _os_error(code: int) -> OSError:
    # mfusepy turns an OSError into the negative errno libfuse replies with.
    return OSError(code, os.strerror(code))


class _Operations:
    """The mfusepy operations: lookups in a ServedTree.  Calls not defined here are left
    unset in libfuse, which answers ENOSYS; writes never get here (EROFS, ``-o ro``)."""

    use_ns = True  # mfusepy: st_*time in nanoseconds

    def __init__(self, tree: ServedTree) -> None:
        self._tree = tree
        self.served = False

    def init_with_config(self, conn: object, config: Any) -> None:
        # libfuse's high-level API replaces st_ino and d_ino by its own node ids unless
        # use_ino is set; the timeouts are explained at CACHE_TIMEOUT_S.
        config.use_ino = 1
        config.entry_timeout = CACHE_TIMEOUT_S
        config.attr_timeout = CACHE_TIMEOUT_S
        config.negative_timeout = CACHE_TIMEOUT_S
        self.served = True
        # Called on the kernel's FUSE_INIT, so the mount exists; the kernel holds other
        # requests until this init is answered.
        sys.stdout.buffer.write(READY_LINE)
        sys.stdout.flush()

    def getattr(self, path: str, fh: int | None = None) -> dict[str, int]:
        try:
            return self._tree.attrs[path]
        except KeyError:
            raise _os_error(errno.ENOENT) from None

    def readdir(self, path: str, fh: int) -> list[ReaddirEntry]:
        try:
            return self._tree.listings[path]
        except KeyError:
            raise _os_error(errno.ENOTDIR if path in self._tree.attrs else errno.ENOENT) \
                from None

    def open(self, path: str, flags: int) -> int:
        if flags & os.O_ACCMODE != os.O_RDONLY:
            raise _os_error(errno.EROFS)
        if path not in self._tree.contents:
            raise _os_error(errno.EISDIR if path in self._tree.listings else errno.ENOENT)
        return 0

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return self._tree.contents[path][offset:offset + size]

    def readlink(self, path: str) -> str:
        try:
            return self._tree.targets[path]
        except KeyError:
            raise _os_error(errno.EINVAL) from None


# fuse_main_real's status for "the loop returned non-zero", which is how a loop ended by
# libfuse's own SIGTERM/SIGINT/SIGHUP handler returns (the signal number); it has
# unmounted by then.  An unmount from outside ends the loop with 0.
_FUSE_MAIN_LOOP_STOPPED = 8


def serve(tree: ServedTree, mountpoint: Path) -> int:
    """Mount ``tree`` read-only on ``mountpoint`` and serve it in the foreground, one
    thread, until unmounted or sent SIGTERM/SIGINT (libfuse then unmounts).  Prints
    READY on stdout once mounted.  Returns the exit status."""
    # mfusepy picks libfuse 2 when both are installed; use_ino is set through libfuse
    # 3's config struct.
    os.environ["FUSE_LIBRARY_NAME"] = "fuse3"
    os.environ.pop("FUSE_LIBRARY_PATH", None)
    try:
        import mfusepy
    except (ImportError, OSError) as exc:
        print(f"{FS_NAME}: cannot load mfusepy with libfuse 3: {exc}", file=sys.stderr)
        return 2
    if mfusepy.fuse_version_major != 3:
        print(f"{FS_NAME}: needs libfuse 3, found {mfusepy.fuse_version_major}", file=sys.stderr)
        return 2
    ops = _Operations(tree)
    # No allow_other: QEMU runs as the same user as this server (root, or root of the
    # harness's user namespace), and FUSE lets that user in without it.
    try:
        mfusepy.FUSE(ops, os.fspath(mountpoint), foreground=True, nothreads=True, ro=True,
                     default_permissions=True, fsname=FS_NAME, subtype=FS_NAME)
    except RuntimeError as exc:
        if ops.served and exc.args == (_FUSE_MAIN_LOOP_STOPPED,):
            return 0
        print(f"{FS_NAME}: libfuse failed on {mountpoint}: status {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m harness.host.scripted_server MOUNTPOINT < SPEC.json``: serve until stopped."""
    parser = argparse.ArgumentParser(
        prog="python -m harness.host.scripted_server",
        description="Serve a scripted read-only tree (chosen inode numbers) over FUSE.",
    )
    parser.add_argument("mountpoint", type=Path,
                        help="an existing directory; the spec (spec_to_json) comes on stdin")
    args = parser.parse_args(argv)
    try:
        spec = spec_from_json(sys.stdin.buffer.read().decode())
    except (OSError, ValueError) as exc:
        print(f"{FS_NAME}: the spec on stdin: {exc}", file=sys.stderr)
        return 2
    return serve(build_tree(spec, uid=os.getuid(), gid=os.getgid()), args.mountpoint)


if __name__ == "__main__":
    sys.exit(main())
