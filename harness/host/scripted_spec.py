"""The scripted filesystem's spec format: which paths, kinds, inode numbers, contents,
mtimes and link counts a scripted FUSE tree serves, their validation and the JSON that
carries them to the server.  Pure: data in, data or ValueError out.

QEMU's 9p ``multidevs=remap`` packs a file's device and inode number into a 64-bit
qid path, and what it does with inode numbers whose top bits are set, that differ only
in high bits, or that bring more than 65536 distinct 16-bit prefixes cannot be tested
on a real filesystem: no real filesystem lets the caller choose st_ino.  A scripted one
does: every path of the tree and its attributes come from a list of ``ScriptedEntry``
(``host.scripted_server`` serves it, ``host.scripted_mount`` mounts it).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

Kind = Literal["dir", "file", "symlink"]
KINDS: tuple[str, ...] = get_args(Kind)
INO_LIMIT = 1 << 64
SPEC_VERSION = 1
_NAME_MAX = 255
_INT64 = 1 << 63
_NLINK_LIMIT = 1 << 32  # the kernel's fuse_attr carries nlink in 32 bits
_JSON_KEYS = frozenset({"path", "kind", "ino", "content_base64", "mtime", "nlink", "target"})


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
