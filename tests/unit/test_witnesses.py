"""The witnesses: the guest script's shape, its strict parser, and each tool's verdict,
including every way a tool can be caught out."""

from __future__ import annotations

import errno

import pytest

from harness.agent.stat import GuestResult, GuestStat
from harness.agent.witnesses import (
    TOOL_NAMES,
    TOOLS,
    TOOLS_DIR,
    ToolRun,
    WitnessRuns,
    parse_listing,
    parse_witness_output,
    witness_script,
)
from harness.errors import GuestOutputError
from harness.host.truth import EntryKind, HostEntry, HostTruth
from harness.verdicts.witnesses import judge_witnesses

from .truths import host_dir, host_file

DIR, FILE = 0o040755, 0o100644


# Two tmpfs devices numbered alike: the root device and dev01, each with a file and a
# hard-link pair; under warn their guest ids collide (dev01 even with the root).
TRUTH = HostTruth((
    host_dir(".", 100, 1, 0),
    host_file("a", 100, 2, 0),
    host_dir("dev01", 200, 1, 1),
    host_file("dev01/a", 200, 2, 1),
    host_file("dev01/l1", 200, 3, 1, b"dev01/l\n", nlink=2),
    host_file("dev01/l2", 200, 3, 1, b"dev01/l\n", nlink=2),
    host_file("l1", 100, 3, 0, b"dev00/l\n", nlink=2),
    host_file("l2", 100, 3, 0, b"dev00/l\n", nlink=2),
))
FILES = [e.path for e in TRUTH.entries if e.kind is EntryKind.FILE]


def _ids(remapped: bool) -> dict[str, GuestResult]:
    """Guest ids: host ids remapped apart, or passed through (warn) on one guest dev."""
    return {e.path: GuestStat(9, e.ino + (1000 * e.device if remapped else 0), e.nlink,
                              DIR if e.kind is EntryKind.DIR else FILE) for e in TRUTH.entries}


REMAPPED, PASSED = _ids(True), _ids(False)


def _copy(tool: str, rc: int = 0, stderr: str = "", **changes: bytes | int | None) -> ToolRun:
    copied: dict[str, bytes | int] = {p: TRUTH.by_path[p].content or b"" for p in FILES}
    for path, value in changes.items():
        key = path.replace("__", "/")
        if value is None:
            copied[key] = errno.ENOENT
        else:
            copied[key] = value
    return ToolRun(tool, rc, stderr, copied=copied)


def _listing(tool: str, paths: list[str], rc: int = 0, stderr: str = "") -> ToolRun:
    sizes = tool == "du"
    return ToolRun(tool, rc, stderr, listed=tuple(
        (p, TRUTH.by_path[p].size if sizes else None) for p in paths))


DU_ALL = [p for p in TRUTH.paths if p not in ("l2", "dev01/l2")]


def _runs(**runs: ToolRun) -> WitnessRuns:
    every = {"busybox-tar": _copy("busybox-tar"), "tar": _copy("tar"), "cp": _copy("cp"),
             "rsync": _copy("rsync"), "du": _listing("du", DU_ALL),
             "find": _listing("find", list(TRUTH.paths))}
    every.update(runs)
    return WitnessRuns(every, "")


def _witness(name: str, run: ToolRun, ids: dict[str, GuestResult] = REMAPPED) -> tuple[
        bool | None, str]:
    found = {w.tool: w for w in judge_witnesses(TRUTH, _runs(**{name: run}), ids)}
    return found[name].intact, found[name].detail


# --- the verdicts -------------------------------------------------------------------------


def test_every_witness_intact_on_a_faithful_guest() -> None:
    witnesses = judge_witnesses(TRUTH, _runs(), REMAPPED)
    assert [w.tool for w in witnesses] == list(TOOL_NAMES)
    assert all(w.intact for w in witnesses)
    details = {w.tool: w.detail for w in witnesses}
    assert details["tar"] == "GNU tar: all 6 files intact"
    assert details["find"] == "find: listed 8 of 8 paths"
    assert details["du"] == "du -ab: counted 32 B of 32 B of files"


def test_no_runs_no_witnesses() -> None:
    assert judge_witnesses(TRUTH, None, REMAPPED) == ()


def test_copy_taken_for_a_hard_link_names_whose_content_it_got() -> None:
    # tar met dev01/l1 with l1's guest id and stored it as a link to l1
    intact, detail = _witness("tar", _copy("tar", dev01__l1=b"dev00/l\n",
                                           dev01__l2=b"dev00/l\n"))
    assert intact is False
    assert detail == ("GNU tar: 2 of 6 files wrong or missing: 'dev01/l1' has the content "
                      "of 'l1', 'dev01/l2' has the content of 'l1'")


def test_copy_missing_directory_is_folded_and_the_complaint_kept() -> None:
    run = _copy("cp", rc=1, stderr="cp: will not create hard link 'out/dev01' to directory "
                "'out'\n", dev01__a=None, dev01__l1=None, dev01__l2=None)
    intact, detail = _witness("cp", run, PASSED)
    assert intact is False
    assert detail == ("cp -a: 3 of 6 files wrong or missing: missing 'dev01' (all 3 files); "
                      "exit 1: cp: will not create hard link 'out/dev01' to directory 'out'")


def test_copy_with_unknown_bytes_and_an_unreadable_file() -> None:
    intact, detail = _witness("rsync", _copy("rsync", a=b"garbage", l1=errno.EIO))
    assert intact is False
    assert "'a' has b'garbage'" in detail and "'l1' unreadable (errno 5)" in detail


def test_a_tool_that_fails_breaks_its_witness_even_with_a_good_result() -> None:
    intact, detail = _witness("busybox-tar", _copy("busybox-tar", rc=1, stderr="tar: x\n"))
    assert intact is False and detail.endswith("all 6 files intact; exit 1: tar: x")


def test_find_skipping_a_directory_it_took_for_a_loop() -> None:
    run = _listing("find", [".", "a", "dev01", "l1", "l2"], rc=1,
                   stderr="find: File system loop detected; './dev01' is part of the same "
                   "file system loop as '.'.\n")
    run = ToolRun("find", run.rc, run.stderr, listed=tuple(
        item for item in run.listed or () if item[0] != "dev01"))
    intact, detail = _witness("find", run, PASSED)
    assert intact is False
    assert detail.startswith("find: listed 4 of 8 paths; 'dev01' taken for a loop with '.' "
                             "(and the 3 paths below); exit 1: find: File system loop")


def test_find_listing_too_much_is_caught() -> None:
    run = ToolRun("find", 0, "", listed=tuple((p, None) for p in (*TRUTH.paths, "a", "ghost")))
    intact, detail = _witness("find", run)
    assert intact is False
    assert "'a' listed twice" in detail and "'ghost' listed, which the host does not have" \
        in detail


def test_du_taking_a_file_for_a_hard_link_of_another_device() -> None:
    listed = [p for p in DU_ALL if p != "dev01/a"]
    intact, detail = _witness("du", _listing("du", listed), PASSED)
    assert intact is False
    assert detail == ("du -ab: counted 24 B of 32 B of files; 'dev01/a' taken for a hard "
                      "link of 'a'")


def test_du_counting_both_names_of_a_hard_link_is_caught() -> None:
    intact, detail = _witness("du", _listing("du", [*DU_ALL, "l2"]))
    assert intact is False and "hard links 'l1', 'l2' all counted" in detail


def test_du_counting_a_wrong_size_is_caught() -> None:
    listed = tuple((p, 99 if p == "a" else TRUTH.by_path[p].size) for p in DU_ALL)
    intact, detail = _witness("du", ToolRun("du", 0, "", listed=listed))
    assert intact is False and "'a' counted as 99 B, the host has 8 B" in detail


def test_a_tool_missing_from_the_image_is_not_run() -> None:
    witnesses = judge_witnesses(TRUTH, _runs(rsync=ToolRun("rsync", None)), REMAPPED)
    rsync = next(w for w in witnesses if w.tool == "rsync")
    assert rsync.intact is None and not rsync.ran
    assert rsync.detail == f"rsync -aH: not in the guest image ({TOOLS_DIR}/rsync)"


# --- the script and its parser --------------------------------------------------------


def test_script_runs_every_tool_in_the_mount_point() -> None:
    script = witness_script("/mnt/mdh 0")
    assert script.startswith("cat > /tmp/mdh-wpaths\n")
    for tool in TOOLS:
        assert f"echo '@@W {tool.name}'" in script
    assert script.count("(cd '/mnt/mdh 0' && ") == len(TOOLS)
    assert script.rstrip().endswith("dmesg -c\necho @@DONE")


def _block(name: str, body: str, rc: int = 0) -> str:
    return f"@@W {name}\n@@RC {rc}\n{body}"


PATHS = ("a", "odd\nname")


def _read(contents: tuple[bytes, ...]) -> str:
    lines = "".join(f"R {i} {c.hex()}\n" for i, c in enumerate(contents))
    return f"@@READ\n{lines}END {len(contents)}\n"


DU_HEX = b"5\t./a\x0012\t.\x00".hex()
FIND_HEX = b".\x00./odd\nname\x00".hex()
NO_SIZE_HEX = b"./a\x00".hex()


# Each tool's stderr, as the script reads them back in one agent call at the end.
ERRS: dict[str, bytes | int] = {name: b"" for name in TOOL_NAMES}
ERRS["find"] = b"find: odd\nname\n"


def _errs(errs: dict[str, bytes | int]) -> str:
    lines = "".join(f"RE {i} {e}\n" if isinstance(e, int) else f"R {i} {e.hex()}\n"
                    for i, e in enumerate(errs.values()))
    return f"@@ERRS\n{lines}END {len(errs)}\n"


def _output(errs: dict[str, bytes | int] | None = None, **blocks: str) -> str:
    every = {name: _block(name, _read((b"x", b"y"))) for name in TOOL_NAMES}
    every["du"] = _block("du", f"@@LIST {DU_HEX}\n")
    every["find"] = _block("find", f"@@LIST {FIND_HEX}\n")
    every.update(blocks)
    return ("".join(every.values()) + _errs(ERRS if errs is None else errs)
            + "@@DMESG\n[ 1.0] 9p: x\n@@DONE\n")


def test_parse_reads_every_tool() -> None:
    runs = parse_witness_output(_output(cp="@@W cp\n@@ABSENT\n"), PATHS)
    assert runs.dmesg == "[ 1.0] 9p: x\n"
    assert runs.runs["tar"].copied == {"a": b"x", "odd\nname": b"y"}
    assert runs.runs["cp"].rc is None
    assert runs.runs["du"].listed == (("a", 5), (".", 12))
    assert runs.runs["find"].listed == ((".", None), ("odd\nname", None))
    assert runs.runs["find"].stderr == "find: odd\nname\n"


@pytest.mark.parametrize(("blocks", "message"), [
    ({"rsync": ""}, "witness output lacks rsync"),
    ({"du": _block("du", "@@LIST zz\n")}, "du's listing is not hex"),
    ({"du": _block("du", f"@@LIST {NO_SIZE_HEX}\n")}, "not SIZE<TAB>PATH"),
    ({"tar": "@@W tar\n@@RC x\n"}, "witness tar: no exit status"),
    ({"tar": "@@W tar\n@@RC 0\n@@READ\n"}, "agent output is empty: no END record"),
    ({"tar": "@@W tar\n@@RC 0\n"}, "witness tar: output ends early"),
    ({"du": "@@W du\n@@RC 0\n"}, "witness du: output ends early"),
    ({"cp": "@@W cpio\n@@ABSENT\n"}, "unknown tool 'cpio'"),
])
def test_parse_refuses_what_the_script_cannot_have_printed(blocks: dict[str, str],
                                                          message: str) -> None:
    with pytest.raises(GuestOutputError, match=message):
        parse_witness_output(_output(None, **blocks), PATHS)


def test_parse_needs_the_end_of_the_script() -> None:
    with pytest.raises(GuestOutputError, match="no @@DMESG"):
        parse_witness_output(_output().replace("@@DONE", ""), PATHS)
    with pytest.raises(GuestOutputError, match="no @@ERRS section"):
        parse_witness_output(_output().replace("@@ERRS\n", ""), PATHS)


def test_a_stderr_is_cut_like_head_and_an_unreadable_one_refused() -> None:
    runs = parse_witness_output(_output(errs={**ERRS, "cp": b"e" * 4096}), PATHS)
    assert runs.runs["cp"].stderr == "e" * 600
    with pytest.raises(GuestOutputError, match="witness rsync: its stderr file could not "
                       "be read \\(errno 2\\)"):
        parse_witness_output(_output(errs={**ERRS, "rsync": 2}), PATHS)
    # An absent tool wrote none, and none is asked for.
    runs = parse_witness_output(_output(errs={**ERRS, "cp": 2}, cp="@@W cp\n@@ABSENT\n"), PATHS)
    assert runs.runs["cp"].rc is None


def test_listing_paths_are_made_relative_like_the_host_truth() -> None:
    assert parse_listing(b".\0./a b\0./sub/x\0", sizes=False) == (
        (".", None), ("a b", None), ("sub/x", None))
    assert parse_listing(b"", sizes=True) == ()


def test_every_recipe_ships_every_gnu_tool_a_witness_runs() -> None:
    from harness.image.recipe import load_recipe, recipe_names

    wanted = {tool.binary for tool in TOOLS if tool.binary}
    for name in recipe_names():
        recipe = load_recipe(name)
        assert set(recipe.witness_tools) == wanted, name
        assert {"tar", "coreutils", "findutils", "rsync"} <= set(recipe.userland_packages)


# --- special files: a symlink, a FIFO and a socket on each device ----------------------

LINK, FIFO, SOCK = 0o120777, 0o010644, 0o140755
SPECIAL = HostTruth((
    *TRUTH.entries,
    HostEntry("s-link", 100, 4, 1, EntryKind.SYMLINK, 0),
    HostEntry("s-fifo", 100, 5, 1, EntryKind.OTHER, 0),
    HostEntry("s-sock", 100, 6, 1, EntryKind.OTHER, 0),
    HostEntry("dev01/s-fifo", 200, 5, 1, EntryKind.OTHER, 1),
))
SPECIAL_MODES = {"s-link": LINK, "s-fifo": FIFO, "s-sock": SOCK, "dev01/s-fifo": FIFO}
SPECIAL_IDS: dict[str, GuestResult] = {
    **REMAPPED, **{p: GuestStat(9, 5000 + i, 1, m)
                   for i, (p, m) in enumerate(SPECIAL_MODES.items())}}


def _special_copy(tool: str, rc: int = 0, **kinds: int | None) -> ToolRun:
    """A copy with every file intact; the specials as ``kinds`` (path with ``__`` for
    ``/`` -> mode, or None: absent), by default each as what it is."""
    got: dict[str, GuestResult] = {p: GuestStat(7, 1, 1, m) for p, m in SPECIAL_MODES.items()}
    for key, mode in kinds.items():
        path = key.replace("__", "/").replace("_", "-")
        got[path] = errno.ENOENT if mode is None else GuestStat(7, 1, 1, mode)
    return ToolRun(tool, rc, copied=_copy(tool).copied, kinds=got)


def _judge_special(run: ToolRun) -> tuple[bool | None, str]:
    runs = {name: ToolRun(name, None) for name in TOOL_NAMES} | {run.tool: run}
    witness = next(w for w in judge_witnesses(SPECIAL, WitnessRuns(runs, ""), SPECIAL_IDS)
                   if w.tool == run.tool)
    return witness.intact, witness.detail


def test_specials_copied_as_their_kind_are_intact() -> None:
    assert _judge_special(_special_copy("cp")) == (
        True, "cp -a: all 6 files intact; 4 of 4 special files copied as their kind")


def test_a_skipped_socket_is_intact_only_with_exit_0() -> None:
    # What both tars do: "socket ignored", exit 0.
    assert _judge_special(_special_copy("tar", s_sock=None)) == (
        True, "GNU tar: all 6 files intact; 3 of 4 special files copied as their kind, "
              "1 skipped")
    intact, detail = _judge_special(_special_copy("tar", rc=2, s_sock=None))
    assert intact is False and detail.endswith("1 skipped; exit 2")


def test_a_special_copied_as_another_kind_breaks_the_witness() -> None:
    intact, detail = _judge_special(_special_copy("rsync", s_fifo=0o100644, dev01__s_fifo=SOCK))
    assert intact is False
    assert detail == ("rsync -aH: all 6 files intact; 2 of 4 special files copied as their "
                      "kind: 's-fifo' copied as a regular file, the original is a FIFO, "
                      "'dev01/s-fifo' copied as a socket, the original is a FIFO")
    # A copy that cannot even be lstat'ed is wrong too.
    run = _special_copy("cp")
    broken = ToolRun("cp", 0, copied=run.copied, kinds={**(run.kinds or {}), "s-link": errno.EIO})
    intact, detail = _judge_special(broken)
    assert intact is False and "'s-link' in the copy: lstat failed (errno 5)" in detail


def test_the_script_lstats_the_specials_and_never_reads_them() -> None:
    script = witness_script("/mnt/mdh0", ["s-fifo", "dev01/s-sock"])
    assert "> /tmp/mdh-wspecial" in script
    assert script.count("mdh-agent stat /tmp/mdh-witness/out 1 1 < /tmp/mdh-wspecial") == 4
    assert "@@KINDS" not in witness_script("/mnt/mdh0")


def test_parse_reads_the_kinds_of_the_copies() -> None:
    kinds = "@@KINDS\nS 1 0 7 9 1 4516\nE 1 1 2\nEND 2\n"
    blocks = {name: _block(name, _read((b"x", b"y")) + kinds)
              for name in ("busybox-tar", "tar", "cp", "rsync")}
    runs = parse_witness_output(_output(None, **blocks), PATHS, ["s-fifo", "s-sock"])
    assert runs.runs["cp"].kinds == {"s-fifo": GuestStat(7, 9, 1, 4516), "s-sock": errno.ENOENT}
    with pytest.raises(GuestOutputError, match="special files' section is missing"):
        parse_witness_output(_output(), PATHS, ["s-fifo"])
    with pytest.raises(GuestOutputError, match="special files' section is unexpected"):
        parse_witness_output(_output(None, **blocks), PATHS)
