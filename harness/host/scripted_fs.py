"""A read-only FUSE filesystem whose inode numbers are written down in a spec.

QEMU's 9p ``multidevs=remap`` packs a file's device and inode number into a 64-bit
qid path, and what it does with inode numbers whose top bits are set, that differ only
in high bits, or that bring more than 65536 distinct 16-bit prefixes cannot be tested
on a real filesystem: no real filesystem lets the caller choose st_ino.  This one does.
Every path of the tree, its kind, inode number, content, mtime and link count come from
a list of ``ScriptedEntry``; the server answers from that list and nothing else.

The server is libfuse 3's high-level API through mfusepy, run as a subprocess
(``python -m harness.host.scripted_fs MOUNTPOINT < SPEC.json``) by ``scripted_mount``.
With libfuse's ``use_ino`` the st_ino of getattr and the d_ino of readdir reach the
kernel unchanged, all 64 bits (measured: 2**63 + 2**62 + 5, 0xFFFF_0000_0000_0001 and
2**64 - 1 come back from lstat and scandir as given).  The kernel's own inode objects
are keyed by libfuse's node ids, so two hard links are two kernel inodes that report the
same st_ino and st_nlink: exactly what stat(2), and so QEMU, sees of a hard link.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import errno
import json
import os
import select
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal, get_args

from ..errors import ScriptedFsError, indent
from ..proc import kill_process_group, run_tied, spawn_tied, tail_text
from .mounts import parse_mountinfo
from .namespace import unmount

Kind = Literal["dir", "file", "symlink"]
KINDS: tuple[str, ...] = get_args(Kind)
INO_LIMIT = 1 << 64
SPEC_VERSION = 1
# The mount's fsname and subtype: a leftover shows as "fuse.scripted_fs" in mountinfo.
FS_NAME = "scripted_fs"
READY_LINE = b"READY\n"
# The kernel's entry/attribute cache timeout.  The tree never changes while mounted, so
# a cached answer is always the spec's answer; caching only saves upcalls.  With 0 the
# kernel revalidates every path component on every lstat (5 getattr upcalls per file,
# measured) and walking 72,000 files took 11-17 s; with libfuse's default of 1 s, one
# upcall per file and 3-7 s.  Longer saves nothing more on such a walk.
CACHE_TIMEOUT_S = 1.0
# How long each step of the teardown may take: the server leaving by itself after the
# unmount, after SIGTERM, and dying after SIGKILL.  Well below the tests' 60 s.
STOP_STEP_S = 5.0

_MODES = {"dir": stat.S_IFDIR | 0o755, "file": stat.S_IFREG | 0o644,
          "symlink": stat.S_IFLNK | 0o777}
_NAME_MAX = 255
_INT64 = 1 << 63
_NLINK_LIMIT = 1 << 32  # the kernel's fuse_attr carries nlink in 32 bits
_JSON_KEYS = frozenset({"path", "kind", "ino", "content_base64", "mtime", "nlink", "target"})

ReaddirEntry = tuple[str, dict[str, int], int]


@dataclass(frozen=True)
class ScriptedEntry:
    """One path of a scripted tree.

    ``path`` is relative with "/" between components, "" for the root (which the spec
    must have, as a dir).  Two file entries with the same ``ino`` are hard links of one
    file and must agree in content, mtime and nlink.  ``nlink`` None means the usual
    count: the number of paths sharing the ino for a file, 2 plus the subdirectories for
    a dir, 1 for a symlink.  ``target`` is a symlink's text.
    """

    path: str
    kind: Kind
    ino: int
    content: bytes = b""
    mtime: int = 0
    nlink: int | None = None
    target: str = ""

    @property
    def size(self) -> int:
        """st_size as served: the content's length, a symlink's target length, 0 for dirs."""
        if self.kind == "symlink":
            return len(os.fsencode(self.target))
        return len(self.content)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _path_problem(path: object) -> str | None:
    if not isinstance(path, str):
        return f"path must be a str, not {type(path).__name__}"
    if path == "":
        return None
    if path.startswith("/"):
        return "path must be relative (no leading '/')"
    for name in path.split("/"):
        if name in ("", ".", ".."):
            return f"path has an empty, '.' or '..' component: {name!r}"
        if "\0" in name:
            return "path contains a NUL character"
        if len(os.fsencode(name)) > _NAME_MAX:
            return f"component longer than {_NAME_MAX} bytes"
    return None


def _ino_problem(ino: object) -> str | None:
    if not _is_int(ino):
        return f"ino must be an int, not {type(ino).__name__}"
    assert isinstance(ino, int)
    if ino == 0:
        return "ino 0 is not allowed (it means 'no inode' to readdir and to FUSE)"
    if ino < 0:
        return f"ino {ino} is negative"
    if ino >= INO_LIMIT:
        return f"ino {ino:#x} is >= 2**64: st_ino has 64 bits"
    return None


def _payload_problem(entry: ScriptedEntry) -> str | None:
    if not isinstance(entry.content, bytes):
        return f"content must be bytes, not {type(entry.content).__name__}"
    if not isinstance(entry.target, str):
        return f"target must be a str, not {type(entry.target).__name__}"
    if entry.kind != "file" and entry.content:
        return f"a {entry.kind} has no content"
    if entry.kind == "symlink" and not entry.target:
        return "a symlink needs a non-empty target"
    if entry.kind != "symlink" and entry.target:
        return f"only a symlink has a target, not a {entry.kind}"
    if entry.path == "" and entry.kind != "dir":
        return f"the root ('') must be a dir, not a {entry.kind}"
    return None


def _entry_problem(entry: ScriptedEntry) -> str | None:
    if entry.kind not in KINDS:
        return f"kind {entry.kind!r} is not one of {', '.join(KINDS)}"
    if not _is_int(entry.mtime) or not -_INT64 <= entry.mtime < _INT64:
        return f"mtime {entry.mtime!r} is not an int in the signed 64-bit range"
    if entry.nlink is not None and (
        not _is_int(entry.nlink) or not 0 <= entry.nlink < _NLINK_LIMIT
    ):
        return f"nlink {entry.nlink!r} is not None or an int in [0, 2**32)"
    return _path_problem(entry.path) or _ino_problem(entry.ino) or _payload_problem(entry)


def _fail(index: int, entry: ScriptedEntry, problem: str) -> ValueError:
    return ValueError(f"scripted fs entry {index} ({entry.path!r}): {problem}")


def _hard_link_problem(first: ScriptedEntry, entry: ScriptedEntry) -> str | None:
    shared = f"ino {entry.ino:#x} is also {first.path!r}'s"
    if first.kind != "file" or entry.kind != "file":
        return f"{shared}: only files may share an ino (as hard links), " \
            f"not a {entry.kind} and a {first.kind}"
    for name in ("content", "mtime", "nlink"):
        if getattr(first, name) != getattr(entry, name):
            return f"{shared}: a hard link with different {name}"
    return None


def validate_spec(spec: Sequence[ScriptedEntry]) -> None:
    """Raise ValueError naming the first wrong entry (its index and path) and what is wrong.

    Checked: each entry's fields, duplicate paths, a parent that is missing or not a
    dir, the root, and hard links (same ino) that are not files with equal content,
    mtime and nlink.
    """
    by_path: dict[str, ScriptedEntry] = {}
    by_ino: dict[int, ScriptedEntry] = {}
    for index, entry in enumerate(spec):
        problem = _entry_problem(entry)
        if problem is None and entry.path in by_path:
            problem = "duplicate path"
        if problem is None and entry.ino in by_ino:
            problem = _hard_link_problem(by_ino[entry.ino], entry)
        if problem is not None:
            raise _fail(index, entry, problem)
        by_path[entry.path] = entry
        by_ino.setdefault(entry.ino, entry)
    if "" not in by_path:
        raise ValueError("scripted fs spec has no root entry (path '', kind 'dir')")
    for index, entry in enumerate(spec):
        if entry.path == "":
            continue
        parent = entry.path.rpartition("/")[0]
        if parent not in by_path:
            raise _fail(index, entry, f"missing parent dir {parent!r}")
        if by_path[parent].kind != "dir":
            raise _fail(index, entry, f"parent {parent!r} is a {by_path[parent].kind}")


def _entry_to_json(entry: ScriptedEntry) -> dict[str, object]:
    data: dict[str, object] = {"path": entry.path, "kind": entry.kind, "ino": entry.ino,
                               "mtime": entry.mtime}
    if entry.content:
        data["content_base64"] = base64.b64encode(entry.content).decode("ascii")
    if entry.nlink is not None:
        data["nlink"] = entry.nlink
    if entry.target:
        data["target"] = entry.target
    return data


def spec_to_json(spec: Sequence[ScriptedEntry]) -> str:
    """The spec as JSON text (content in base64), after checking it with validate_spec."""
    validate_spec(spec)
    return json.dumps({"version": SPEC_VERSION, "entries": [_entry_to_json(e) for e in spec]})


def _entry_from_json(index: int, data: object) -> ScriptedEntry:
    where = f"scripted fs JSON entry {index}"
    if not isinstance(data, dict):
        raise ValueError(f"{where}: not an object")
    unknown = set(data) - _JSON_KEYS
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
    missing = {"path", "kind", "ino"} - set(data)
    if missing:
        raise ValueError(f"{where}: missing keys {sorted(missing)}")
    encoded = data.get("content_base64", "")
    if not isinstance(encoded, str):
        raise ValueError(f"{where}: content_base64 must be a string")
    try:
        content = base64.b64decode(encoded, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"{where}: content_base64 is not base64: {exc}") from None
    return ScriptedEntry(path=data["path"], kind=data["kind"], ino=data["ino"],
                         content=content, mtime=data.get("mtime", 0),
                         nlink=data.get("nlink"), target=data.get("target", ""))


def spec_from_json(text: str) -> tuple[ScriptedEntry, ...]:
    """Read a spec written by spec_to_json; raise ValueError if it is malformed or invalid."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"scripted fs spec is not JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("version") != SPEC_VERSION:
        raise ValueError(f"scripted fs spec must be an object with version {SPEC_VERSION}")
    entries = data.get("entries")
    if not isinstance(entries, list):
        raise ValueError("scripted fs spec has no 'entries' list")
    spec = tuple(_entry_from_json(i, item) for i, item in enumerate(entries))
    validate_spec(spec)
    return spec


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
    """``python -m harness.host.scripted_fs MOUNTPOINT < SPEC.json``: serve until stopped."""
    parser = argparse.ArgumentParser(
        prog="python -m harness.host.scripted_fs",
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


# --- the harness side --------------------------------------------------------------


@dataclass(frozen=True)
class ScriptedMount:
    """A running scripted filesystem: where it is mounted and its server's pid."""

    mountpoint: Path
    pid: int


def mount_points(mountinfo: bytes) -> set[str]:
    """The mount points of ``/proc/self/mountinfo`` bytes, unescaped (``host.mounts``
    reads the lines; names that are not UTF-8 keep their bytes as os.fsdecode does)."""
    return {m.mount_point for m in parse_mountinfo(mountinfo.decode(errors="surrogateescape"))}


def is_mounted(path: Path) -> bool:
    """Whether ``path`` is a mount point in this process's mount namespace.

    Read from mountinfo, not by stat: a stat of a hung FUSE mount would block.
    """
    with open("/proc/self/mountinfo", "rb") as file:
        return os.path.realpath(path) in mount_points(file.read())


def _child_env() -> dict[str, str]:
    # The server imports this package: make it importable from where this copy lives,
    # whatever put it on our own sys.path.
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def _startup_error(what: str, errlog: IO[bytes]) -> ScriptedFsError:
    errlog.seek(0)
    tail = tail_text(errlog.read())
    return ScriptedFsError(
        f"the scripted FUSE filesystem {what}",
        hint="it needs /dev/fuse, the fuse kernel module, libfuse 3 and mfusepy "
        "(./scripts/setup installs fuse3 and the venv); the server's stderr says more",
        details="  server stderr (tail):\n" + indent(tail or "(empty)"),
    )


def _wait_ready(proc: subprocess.Popen[bytes], mountpoint: Path, errlog: IO[bytes],
                timeout: float) -> None:
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    deadline = time.monotonic() + timeout
    seen = b""
    while READY_LINE not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            raise _startup_error(f"was not mounted on {mountpoint} within {timeout:g} s",
                                 errlog)
        if not poller.poll(left * 1000):
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=STOP_STEP_S)
            raise _startup_error(
                f"exited (status {proc.returncode}) before it was mounted on {mountpoint}",
                errlog)
        seen += chunk


def _unmount_if_mounted(mountpoint: Path) -> tuple[bool, str | None]:
    """Unmount ``mountpoint`` lazily if it is mounted: (whether it was unmounted, problem)."""
    if not is_mounted(mountpoint):
        return False, None
    try:
        # Detached even while busy; the server then reads ENODEV and leaves its loop.
        unmount(mountpoint, lazy=True)
        return True, None
    except OSError as exc:
        lazy_error = exc
    result = run_tied(["fusermount3", "-u", "-z", os.fspath(mountpoint)], timeout=STOP_STEP_S)
    if result.returncode == 0:
        return True, None
    return False, f"umount2 said {lazy_error.strerror}, fusermount3 said " \
        f"{result.stderr.strip()}"


def _exited(proc: subprocess.Popen[bytes], within: float) -> bool:
    try:
        proc.wait(timeout=within)
    except subprocess.TimeoutExpired:
        return False
    return True


def _stop(proc: subprocess.Popen[bytes], mountpoint: Path) -> list[str]:
    problems = []
    # Unmount first: it works whatever state the server is in, and lets it exit cleanly.
    # A server not yet mounted (a missed deadline) is sent SIGTERM straight away.
    unmounted, problem = _unmount_if_mounted(mountpoint)
    if problem is not None:
        problems.append(f"unmounting {mountpoint}: {problem}")
    if not (unmounted and _exited(proc, STOP_STEP_S)):
        proc.send_signal(signal.SIGTERM)
        if not _exited(proc, STOP_STEP_S) and kill_process_group(proc, STOP_STEP_S) is None:
            problems.append(f"server pid {proc.pid} did not die after SIGKILL")
    # A server that mounted after the first look and then died leaves a dead mount.
    _, problem = _unmount_if_mounted(mountpoint)
    if problem is not None:
        problems.append(f"unmounting {mountpoint} after the server stopped: {problem}")
    if proc.stdout is not None:
        proc.stdout.close()
    return problems


def _spawn(spec_in: IO[bytes], mountpoint: Path, errlog: IO[bytes]) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "harness.host.scripted_fs", os.fspath(mountpoint)]
    # SIGTERM when the harness dies (even SIGKILLed): libfuse's handler then unmounts.
    # The kernel sends it when the forking *thread* exits, which cannot happen while
    # that thread is still inside scripted_mount.
    return spawn_tied(argv, stdin=spec_in, stdout=subprocess.PIPE, stderr=errlog,
                      death_signal=signal.SIGTERM, env=_child_env())


def _check_mountpoint(mountpoint: Path) -> None:
    if not mountpoint.is_dir():
        raise ScriptedFsError(f"scripted FUSE mount point {mountpoint} is not a directory",
                              hint="create the directory first")
    if is_mounted(mountpoint):
        raise ScriptedFsError(
            f"scripted FUSE mount point {mountpoint} is already a mount point",
            hint="pick an empty directory: the teardown unmounts whatever is mounted there")


@contextmanager
def scripted_mount(spec: Sequence[ScriptedEntry], mountpoint: Path, *,
                   timeout: float) -> Iterator[ScriptedMount]:
    """Serve ``spec`` read-only on ``mountpoint`` for the ``with`` block.

    Raises ValueError for an invalid spec, ScriptedFsError if the server is not
    mounted within ``timeout`` seconds (with its stderr tail) or if, afterwards, its
    mount or process would not go away.  On leaving, by any exception or
    KeyboardInterrupt too, the mount is lazily unmounted and the server stopped
    (exit, then SIGTERM, then SIGKILL) and reaped, at most about 3 * STOP_STEP_S.
    """
    spec_json = spec_to_json(spec)
    _check_mountpoint(mountpoint)
    # The spec reaches the server as its stdin, from a file without a name: a caller
    # killed outright (no ``finally`` runs) leaves no scratch directory behind.
    with tempfile.TemporaryFile() as spec_in, tempfile.TemporaryFile() as errlog:
        spec_in.write(spec_json.encode())
        spec_in.seek(0)
        proc = _spawn(spec_in, mountpoint, errlog)
        try:
            _wait_ready(proc, mountpoint, errlog, timeout)
            yield ScriptedMount(mountpoint=mountpoint, pid=proc.pid)
        finally:
            problems = _stop(proc, mountpoint)
        # Reached only when the block raised nothing: never hide the caller's exception.
        if problems:
            raise ScriptedFsError(
                "the scripted FUSE filesystem would not go away: " + "; ".join(problems),
                hint="check `grep fuse.scripted_fs /proc/self/mountinfo` and "
                "`pgrep -af scripted_fs`; umount -l the mount and kill the process")


if __name__ == "__main__":
    sys.exit(main())
