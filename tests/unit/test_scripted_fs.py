"""The scripted filesystem's pure parts: spec validation, JSON, the served index and the
operations' answers.  Mounting is in tests/e2e/test_scripted_fs.py."""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Callable
from dataclasses import replace
from typing import cast

import pytest

from harness.host.scripted_server import _Operations, build_tree
from harness.host.scripted_spec import (
    Kind,
    ScriptedEntry,
    spec_from_json,
    spec_to_json,
    validate_spec,
)

HIGH = (1 << 63) | (1 << 62) | 5
ROOT = ScriptedEntry("", "dir", 1)


def spec() -> list[ScriptedEntry]:
    return [
        ROOT,
        ScriptedEntry("d", "dir", 0xFFFF_0000_0000_0001, mtime=1_700_000_000),
        ScriptedEntry("d/e", "dir", 2),
        ScriptedEntry("d/a", "file", HIGH, b"\x00\xffbytes", mtime=5),
        ScriptedEntry("d/b", "file", HIGH, b"\x00\xffbytes", mtime=5),
        ScriptedEntry("f", "file", (1 << 64) - 1, b"", nlink=7),
        ScriptedEntry("l", "symlink", 3, target="d/a"),
    ]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("entries", "match"), [
    ([ROOT, ScriptedEntry("a", "file", 2), ScriptedEntry("a", "file", 3)],
     r"entry 2 \('a'\): duplicate path"),
    ([ROOT, ScriptedEntry("x/a", "file", 2)], r"entry 1 \('x/a'\): missing parent dir 'x'"),
    ([ROOT, ScriptedEntry("a", "file", 2), ScriptedEntry("a/b", "file", 3)],
     r"entry 2 \('a/b'\): parent 'a' is a file"),
    ([ROOT, ScriptedEntry("a", "file", 0)], r"entry 1 \('a'\): ino 0 is not allowed"),
    ([ROOT, ScriptedEntry("a", "file", 1 << 64)], r"entry 1 \('a'\): ino 0x1" + "0" * 16
     + r" is >= 2\*\*64"),
    ([ROOT, ScriptedEntry("a", "file", -1)], r"ino -1 is negative"),
    ([ROOT, ScriptedEntry("a", "file", True)], r"ino must be an int, not bool"),
    ([ROOT, ScriptedEntry("a", "file", 9, b"one"), ScriptedEntry("b", "file", 9, b"two")],
     r"entry 2 \('b'\): ino 0x9 is also 'a''s: a hard link with different content"),
    ([ROOT, ScriptedEntry("a", "file", 9, mtime=1), ScriptedEntry("b", "file", 9, mtime=2)],
     r"a hard link with different mtime"),
    ([ROOT, ScriptedEntry("a", "file", 9), ScriptedEntry("b", "file", 9, nlink=1)],
     r"a hard link with different nlink"),
    ([ROOT, ScriptedEntry("a", "dir", 9), ScriptedEntry("b", "file", 9)],
     r"only files may share an ino \(as hard links\), not a file and a dir"),
    ([ScriptedEntry("a", "dir", 2)], r"spec has no root entry"),
    ([ScriptedEntry("", "file", 1)], r"the root \(''\) must be a dir"),
    ([ROOT, ScriptedEntry("/a", "file", 2)], r"path must be relative"),
    ([ROOT, ScriptedEntry("a/../b", "file", 2)], r"'\.\.' component"),
    ([ROOT, ScriptedEntry("a/", "file", 2)], r"empty, '\.' or '\.\.' component"),
    ([ROOT, ScriptedEntry("a" * 256, "file", 2)], r"longer than 255 bytes"),
    ([ROOT, ScriptedEntry("a", cast(Kind, "fifo"), 2)], r"kind 'fifo' is not one of dir"),
    ([ROOT, ScriptedEntry("a", "symlink", 2)], r"a symlink needs a non-empty target"),
    ([ROOT, ScriptedEntry("a", "dir", 2, b"x")], r"a dir has no content"),
    ([ROOT, ScriptedEntry("a", "file", 2, target="x")], r"only a symlink has a target"),
    ([ROOT, ScriptedEntry("a", "file", 2, nlink=-1)], r"nlink -1 is not None or an int"),
    ([ROOT, ScriptedEntry("a", "file", 2, mtime=1 << 63)], r"mtime \d+ is not an int"),
])
def test_validate_names_the_wrong_entry(entries: list[ScriptedEntry], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        validate_spec(entries)


@pytest.mark.timeout(60)
def test_validate_accepts_hard_links_and_requires_a_root() -> None:
    validate_spec(spec())
    with pytest.raises(ValueError, match=r"no root entry \(path '', kind 'dir'\)"):
        validate_spec([])


@pytest.mark.timeout(60)
def test_json_round_trip_keeps_every_field() -> None:
    entries = spec()
    assert spec_from_json(spec_to_json(entries)) == tuple(entries)
    # 64-bit inode numbers stay exact integers in the JSON text, not floats.
    assert str(HIGH) in spec_to_json(entries)


@pytest.mark.timeout(60)
def test_to_json_refuses_an_invalid_spec() -> None:
    with pytest.raises(ValueError, match="duplicate path"):
        spec_to_json([ROOT, ROOT])


def _json(*entries: object) -> str:
    return json.dumps({"version": 1, "entries": [{"path": "", "kind": "dir", "ino": 1},
                                                 *entries]})


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("text", "match"), [
    ("{", r"spec is not JSON"),
    (json.dumps({"version": 2, "entries": []}), r"must be an object with version 1"),
    (json.dumps({"version": 1}), r"no 'entries' list"),
    (_json([1]), r"JSON entry 1: not an object"),
    (_json({"path": "a", "kind": "file"}), r"JSON entry 1: missing keys \['ino'\]"),
    (_json({"path": "a", "kind": "file", "ino": 2, "size": 3}),
     r"JSON entry 1: unknown keys \['size'\]"),
    (_json({"path": "a", "kind": "file", "ino": 2, "content_base64": "!!"}),
     r"JSON entry 1: content_base64 is not base64"),
    (_json({"path": "a", "kind": "file", "ino": 2, "content_base64": 5}),
     r"content_base64 must be a string"),
    (_json({"path": "a", "kind": "file", "ino": 0}), r"entry 1 \('a'\): ino 0 is not allowed"),
    (_json({"path": 5, "kind": "file", "ino": 2}), r"path must be a str, not int"),
])
def test_from_json_reports_what_is_malformed(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        spec_from_json(text)


@pytest.mark.timeout(60)
def test_tree_counts_links_and_lists_dot_entries() -> None:
    tree = build_tree(spec(), uid=12, gid=34)
    assert tree.attrs["/"]["st_nlink"] == 3  # "." and ".." plus d
    assert tree.attrs["/d"]["st_nlink"] == 3  # plus d/e
    assert tree.attrs["/d/a"]["st_nlink"] == tree.attrs["/d/b"]["st_nlink"] == 2
    assert tree.attrs["/f"]["st_nlink"] == 7  # given, not counted
    assert tree.attrs["/l"]["st_nlink"] == 1
    assert tree.attrs["/d/a"]["st_ino"] == HIGH
    assert tree.attrs["/d/a"]["st_size"] == 7
    assert tree.attrs["/l"]["st_size"] == 3
    assert tree.attrs["/d"]["st_mtime"] == 1_700_000_000 * 10**9
    assert stat.S_ISLNK(tree.attrs["/l"]["st_mode"])
    assert (tree.attrs["/f"]["st_uid"], tree.attrs["/f"]["st_gid"]) == (12, 34)
    names = {name: attrs["st_ino"] for name, attrs, _ in tree.listings["/d"]}
    assert names == {".": 0xFFFF_0000_0000_0001, "..": 1, "e": 2, "a": HIGH, "b": HIGH}
    root = {name: attrs["st_ino"] for name, attrs, _ in tree.listings["/"]}
    assert root == {".": 1, "..": 1, "d": 0xFFFF_0000_0000_0001, "f": (1 << 64) - 1, "l": 3}


@pytest.mark.timeout(60)
def test_operations_answer_from_the_tree() -> None:
    ops = _Operations(build_tree(spec()))
    assert ops.getattr("/d/b")["st_ino"] == HIGH
    assert ops.read("/d/a", 4, 2, 0) == b"byte"
    assert ops.readlink("/l") == "d/a"
    assert ops.open("/d/a", os.O_RDONLY) == 0
    calls: list[tuple[Callable[[], object], int]] = [
        (lambda: ops.getattr("/nope"), errno.ENOENT),
        (lambda: ops.readdir("/f", 0), errno.ENOTDIR),
        (lambda: ops.readdir("/nope", 0), errno.ENOENT),
        (lambda: ops.open("/d/a", os.O_WRONLY), errno.EROFS),
        (lambda: ops.open("/d", os.O_RDONLY), errno.EISDIR),
        (lambda: ops.readlink("/f"), errno.EINVAL),
    ]
    for call, code in calls:
        with pytest.raises(OSError) as caught:
            call()
        assert caught.value.errno == code


@pytest.mark.timeout(60)
def test_tree_refuses_an_invalid_spec() -> None:
    with pytest.raises(ValueError, match="missing parent dir"):
        build_tree([ROOT, replace(ROOT, path="x/y", ino=5)])

