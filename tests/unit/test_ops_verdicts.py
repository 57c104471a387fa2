"""The operation families' rules, each with a case where it must say fail."""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from harness.checks.ops import guest_xattr, operation_cases
from harness.config import Mode, Transport
from harness.qemu.spec import ExportSpec
from harness.verdicts.common import Status
from harness.verdicts.ops import (
    TWIN_TARGET,
    CrossSeen,
    OpCase,
    OperationsSeen,
    OpsVerdict,
    expected_host_state,
    judge_cross_device,
    judge_operations,
)
from harness.version import Version

V7 = Version(7, 2, 22)
WARNING = ("qemu-system-x86_64: warning: 9p: Multiple devices detected in same VirtFS "
           "export, which might lead to file ID collisions and severe misbehaviours on guest!")
FORBID = ("qemu-system-x86_64: 9p: Multiple devices detected in same VirtFS export. Access "
          "of guest to file 'x' denied due to virtfs option 'multidevs=forbid' being effective.")


def _cases() -> list[OpCase]:
    return operation_cases(".", 0, 0, ("file", "dir", "symlink", "missing")) + \
        operation_cases("dev01", 1, 0, ("file", "dir", "symlink", "missing", "mountpoint"))


def _seen(answers: list[int], **changes: object) -> OperationsSeen:
    cases = _cases()
    seen = OperationsSeen(tuple(cases), tuple(answers), ("dev01", "file 0000"), 0, ("dev01",),
                          (), 2)
    return replace(seen, **changes)  # type: ignore[arg-type]  # test-only field overrides


def _as_measured(forbid: bool) -> list[int]:
    return [errno.ENODEV if forbid and c.device else c.natural for c in _cases()]


def _forbid_answering(code: int, pick: Callable[[OpCase], bool]) -> OpsVerdict:
    """forbid's verdict when the first case ``pick`` selects answers ``code`` and every
    other case what forbid must answer."""
    answers = _as_measured(True)
    answers[next(i for i, c in enumerate(_cases()) if pick(c))] = code
    return judge_operations(Mode.FORBID, V7, _seen(answers), "", "")


def test_the_cases_cover_every_operation_on_every_kind_of_target() -> None:
    cases = _cases()
    ops = {c.op for c in cases}
    assert len(ops) == 16 and "readdir" not in ops
    assert {(c.device, c.target) for c in cases} == {
        (0, "file"), (0, "dir"), (0, "symlink"), (0, "missing"),
        (1, "file"), (1, "dir"), (1, "symlink"), (1, "missing"), (1, "mountpoint")}
    # Renaming the mount point could move a host mount: never asked.
    assert not [c for c in cases if c.target == "mountpoint" and c.op == "rename"]
    assert {c.path for c in cases if c.target == "mountpoint"} == {"dev01"}


def test_forbid_passes_when_every_foreign_operation_is_enodev() -> None:
    verdict = judge_operations(Mode.FORBID, V7, _seen(_as_measured(True)), FORBID, "")
    assert verdict.status is Status.PASS, verdict.failures
    assert verdict.qemu_message == FORBID


def test_a_foreign_operation_that_succeeds_under_forbid_fails_and_is_named() -> None:
    verdict = _forbid_answering(
        0, lambda c: c.device == 1 and c.op == "unlink" and c.target == "file")
    assert verdict.status is Status.FAIL
    assert verdict.failures == (
        "unlink on file 'dev01/ops/file-unlink' (device 1) gave success, "
        "expected errno 19 (ENODEV)",)


def test_enoent_for_a_missing_name_under_a_foreign_directory_fails_under_forbid() -> None:
    # The walk must stop at the foreign directory, not report the name as absent.
    verdict = _forbid_answering(errno.ENOENT, lambda c: c.device == 1 and c.target == "missing")
    assert verdict.status is Status.FAIL and "ENOENT" in verdict.failures[0]


def test_a_root_device_operation_denied_under_forbid_fails() -> None:
    verdict = _forbid_answering(errno.ENODEV, lambda c: c.device == 0 and c.op == "creat")
    assert verdict.status is Status.FAIL and "the root device" in verdict.failures[0]


def test_remap_wants_natural_results_on_foreign_devices_too() -> None:
    assert judge_operations(Mode.REMAP, V7, _seen(_as_measured(False)), "", "").passed
    denied = judge_operations(Mode.REMAP, V7, _seen(_as_measured(True)), "", "")
    assert denied.status is Status.FAIL
    assert len(denied.failures) == sum(1 for c in _cases() if c.device == 1)


def test_readdir_of_the_root_must_list_every_mount_point() -> None:
    seen = _seen(_as_measured(True), root_listing=("file 0000",))
    verdict = judge_operations(Mode.FORBID, V7, seen, "", "")
    assert verdict.failures == (
        "readdir of the export root does not list the mount point 'dev01'",)
    failed = judge_operations(Mode.FORBID, V7, _seen(_as_measured(True), root_listing=None,
                                                     root_readdir_errno=errno.ENODEV), "", "")
    assert "readdir of the export root failed" in failed.failures[0]


def test_a_foreign_device_changed_under_forbid_fails() -> None:
    seen = _seen(_as_measured(True), foreign_changes=("ops/file-unlink: ... -> absent",))
    verdict = judge_operations(Mode.FORBID, V7, seen, "", "")
    assert verdict.status is Status.FAIL and "foreign device changed" in verdict.failures[0]


@pytest.mark.parametrize(("mode", "stderr", "outside", "complaint"), [
    (Mode.REMAP, WARNING, "", "expected no multi-device message on QEMU stderr, found 1"),
    (Mode.FORBID, WARNING, "", "unexpected multi-device warning on QEMU stderr"),
    (Mode.WARN, FORBID, "", "unexpected multidevs=forbid message on QEMU stderr"),
    (Mode.WARN, f"{WARNING}\n{WARNING}", "", "at most once on QEMU stderr (already printed for "
     "an earlier export), found it 2 times"),
    (Mode.WARN, "", WARNING, "outside every observation"),
])
def test_message_rules(mode: Mode, stderr: str, outside: str, complaint: str) -> None:
    verdict = judge_operations(mode, V7, _seen(_as_measured(mode is Mode.FORBID)), stderr,
                               outside)
    assert verdict.status is Status.FAIL
    assert any(complaint in f for f in verdict.failures), verdict.failures


def test_the_mode_message_may_be_absent_when_an_earlier_export_printed_it() -> None:
    assert judge_operations(Mode.WARN, V7, _seen(_as_measured(False)), "", "").passed
    assert judge_operations(Mode.WARN, V7, _seen(_as_measured(False)), WARNING, "").passed


# --- cross_device -------------------------------------------------------------------

BEFORE: dict[str, bytes | None] = {
    "xdev": None, "xdev/rename-file": b"r\n", "xdev/link-file": b"l\n",
    "xdev/mv-file": b"m\n", "xdev/mv-dir": None, "xdev/mv-dir/a": b"a\n",
    "dev01/xdev": None,
}
MOVES = {"xdev/mv-file": "dev01/xdev/mv-file", "xdev/mv-dir": "dev01/xdev/mv-dir"}
STEPS = (OpCase("rename", "file", 0, "xdev/rename-file", "dev01/xdev/rename-file"),
         OpCase("link", "file", 0, "xdev/link-file", "dev01/xdev/link-file"),
         OpCase("mv", "file", 0, "xdev/mv-file", "dev01/xdev/mv-file"))


def _cross(results: tuple[int, ...], after: dict[str, bytes | None]) -> CrossSeen:
    return CrossSeen(tuple(zip(STEPS, results, strict=True)), BEFORE, after, MOVES, 2)


def test_host_state_after_the_moves() -> None:
    assert expected_host_state(BEFORE, MOVES) == {
        "xdev": None, "xdev/rename-file": b"r\n", "xdev/link-file": b"l\n",
        "dev01/xdev/mv-file": b"m\n", "dev01/xdev/mv-dir": None,
        "dev01/xdev/mv-dir/a": b"a\n", "dev01/xdev": None}


def test_remap_cross_device_passes_with_exdev_and_a_copying_mv() -> None:
    seen = _cross((errno.EXDEV, errno.EXDEV, 0), expected_host_state(BEFORE, MOVES))
    assert judge_cross_device(Mode.REMAP, V7, seen, "", "").passed


def test_a_lost_file_after_a_cross_device_mv_under_remap_fails() -> None:
    after = expected_host_state(BEFORE, MOVES)
    del after["dev01/xdev/mv-dir/a"]
    verdict = judge_cross_device(Mode.REMAP, V7, _cross(Version(18, 18, 0), after), "", "")
    assert verdict.failures == ("host lost 'dev01/xdev/mv-dir/a'",)


def test_a_duplicated_or_altered_file_fails() -> None:
    after = expected_host_state(BEFORE, MOVES) | {"xdev/mv-file": b"m\n"}
    after["dev01/xdev/mv-dir/a"] = b""
    verdict = judge_cross_device(Mode.WARN, V7, _cross(Version(18, 18, 0), after), "", "")
    assert verdict.failures == (
        "host has 'xdev/mv-file', which should not exist (duplicated or left behind)",
        "host content of 'dev01/xdev/mv-dir/a' is b'', expected b'a\\n'")


def test_a_silent_no_op_mv_fails() -> None:
    # mv said it moved the file (exit 0) but the host still has it where it was.
    verdict = judge_cross_device(Mode.WARN, V7, _cross(Version(18, 18, 0), dict(BEFORE)), "", "")
    assert verdict.status is Status.FAIL
    assert "host lost 'dev01/xdev/mv-file'" in verdict.failures


def test_forbid_wants_enodev_a_failing_mv_and_an_untouched_host() -> None:
    ok = _cross((errno.ENODEV, errno.ENODEV, 1), dict(BEFORE))
    assert judge_cross_device(Mode.FORBID, V7, ok, FORBID, "").passed
    wrong = _cross((errno.EXDEV, errno.ENODEV, 0), expected_host_state(BEFORE, MOVES))
    verdict = judge_cross_device(Mode.FORBID, V7, wrong, "", "")
    assert verdict.failures[:2] == (
        "rename on file 'xdev/rename-file' (the root device) gave errno 18 (EXDEV), "
        "expected errno 19 (ENODEV)",
        "mv on file 'xdev/mv-file' (the root device) gave exit status 0, expected a "
        "non-zero exit status")
    assert "host lost 'xdev/mv-file'" in verdict.failures


# --- the twin rename: a silent no-op when the guest takes both names for one inode ----

TWIN = OpCase("rename", TWIN_TARGET, 0, "twin-same", "dev01/twin-same")
TWINS: dict[str, bytes | None] = {"twin-same": b"dev00\n", "dev01/twin-same": b"dev01\n"}


def _twin(result: int, aliasable: bool, after: dict[str, bytes | None] | None = None,
          mode: Mode = Mode.WARN) -> tuple[bool, tuple[str, ...]]:
    seen = CrossSeen(((TWIN, result),), TWINS, TWINS if after is None else after, {}, 2,
                     twins_may_alias=aliasable)
    verdict = judge_cross_device(mode, V7, seen, WARNING if mode is Mode.WARN else "", "")
    return verdict.passed, verdict.failures + verdict.notes


def test_warn_with_an_inode_cache_records_the_no_op_rename() -> None:
    passed, lines = _twin(0, aliasable=True)
    assert passed, lines
    assert lines == ("predicted harm: rename('twin-same', 'dev01/twin-same') returned 0 and "
                     "moved nothing: the guest took both names for one inode",)
    passed, lines = _twin(errno.EXDEV, aliasable=True)
    assert passed and lines == ("predicted no-op rename between twins did not show (EXDEV)",)


def test_a_no_op_rename_fails_where_no_inode_may_be_shared() -> None:
    assert not _twin(0, aliasable=False)[0]  # warn, cache=none
    assert not _twin(0, aliasable=True, mode=Mode.REMAP)[0]


def test_a_twin_rename_that_changed_the_host_fails_even_when_predicted() -> None:
    moved: dict[str, bytes | None] = {"dev01/twin-same": b"dev00\n"}
    passed, lines = _twin(0, aliasable=True, after=moved)
    assert not passed
    assert "host lost 'twin-same'" in lines


OOPS = ("[  42.123456] general protection fault, probably for non-canonical address "
        "0xdead000000000100: 0000 [#1] PREEMPT SMP NOPTI\n")
WARN_SPLAT = "[  42.1] WARNING: CPU: 0 PID: 77 at fs/9p/vfs_inode.c:1108 v9fs_vfs_rename+0x3e\n"


def test_a_kernel_warning_during_the_operations_fails_the_row() -> None:
    verdict = judge_operations(Mode.REMAP, V7, _seen(_as_measured(False), dmesg=WARN_SPLAT),
                               "", "")
    assert verdict.failures == ("the guest kernel is in trouble (dmesg): 'WARNING: CPU: 0 "
                                "PID: 77 at fs/9p/vfs_inode.c:1108 v9fs_vfs_rename+0x3e'",)


def test_an_oops_during_the_cross_device_moves_fails_the_row() -> None:
    seen = replace(_cross((errno.EXDEV, errno.EXDEV, 0), expected_host_state(BEFORE, MOVES)),
                   dmesg=OOPS)
    verdict = judge_cross_device(Mode.REMAP, V7, seen, "", "")
    assert verdict.status is Status.FAIL
    assert verdict.failures[0].startswith("the guest kernel is in trouble (dmesg): 'general "
                                          "protection fault")


def test_the_undecided_default_takes_warn_when_the_slice_warns() -> None:
    verdict = judge_operations(Mode.DEFAULT, Version(9, 2, 50), _seen(_as_measured(False)),
                               WARNING, "")
    assert verdict.passed, verdict.failures
    assert "showed warn's behaviour" in verdict.notes[0]
    # Outside the window the same default is warn's and the warning is simply allowed.
    assert not judge_operations(Mode.DEFAULT, V7, _seen(_as_measured(False)), WARNING,
                                "").notes


# --- over virtiofs: no mode, every call its ordinary result, no message at all --------


def _virtiofs_ops(answers: list[int], stderr: str = "") -> tuple[Status, tuple[str, ...]]:
    # Mode.DEFAULT is what a virtiofs row carries; on QEMU 7.2 9p's default is warn,
    # whose later rows may show the warning: a virtiofs row may not.
    verdict = judge_operations(Mode.DEFAULT, V7, _seen(answers), stderr, "",
                               transport=Transport.VIRTIOFS)
    return verdict.status, verdict.failures


def test_virtiofs_operations_want_the_ordinary_result_everywhere_and_no_message() -> None:
    assert _virtiofs_ops(_as_measured(False)) == (Status.PASS, ())
    status, failures = _virtiofs_ops(_as_measured(True))
    assert status is Status.FAIL and len(failures) == sum(c.device == 1 for c in _cases())
    assert failures[0].endswith("gave errno 19 (ENODEV), expected success")
    status, failures = _virtiofs_ops(_as_measured(False), WARNING)
    assert failures == (f"expected no multi-device message on QEMU stderr, found 1: "
                        f"{WARNING!r}",)


def test_virtiofs_xattr_calls_expect_eopnotsupp_whatever_the_host_does() -> None:
    spec = ExportSpec("mdh0", Path("/x"), Mode.DEFAULT, "/mnt/mdh0",
                      transport=Transport.VIRTIOFS)
    assert guest_xattr(spec, 0) == guest_xattr(spec, errno.EOPNOTSUPP) == errno.EOPNOTSUPP
    assert guest_xattr(replace(spec, transport=Transport.NINEP), 0) == 0
    cases = operation_cases("dev01", 1, guest_xattr(spec, 0), ("file", "symlink"))
    natural = {(c.target, c.op): c.natural for c in cases if "xattr" in c.op}
    # A symlink's user xattrs are refused by the guest's VFS before FUSE is asked.
    assert natural == {("file", "getxattr"): errno.EOPNOTSUPP,
                       ("file", "setxattr"): errno.EOPNOTSUPP,
                       ("symlink", "getxattr"): errno.ENODATA,
                       ("symlink", "setxattr"): errno.EPERM}


def test_virtiofs_cross_device_wants_exdev_and_no_no_op_twin_rename() -> None:
    seen = _cross((errno.EXDEV, errno.EXDEV, 0), expected_host_state(BEFORE, MOVES))
    assert judge_cross_device(Mode.DEFAULT, V7, seen, "", "",
                              transport=Transport.VIRTIOFS).passed
    denied = _cross((errno.ENODEV, errno.EXDEV, 0), expected_host_state(BEFORE, MOVES))
    verdict = judge_cross_device(Mode.DEFAULT, V7, denied, "", "",
                                 transport=Transport.VIRTIOFS)
    assert verdict.failures == ("rename on file 'xdev/rename-file' (the root device) gave "
                                "errno 19 (ENODEV), expected errno 18 (EXDEV)",)
    # Twins sharing (st_dev, st_ino) without submounts are still two FUSE inodes.
    twin = CrossSeen(((TWIN, 0),), TWINS, TWINS, {}, 2, twins_may_alias=True)
    verdict = judge_cross_device(Mode.DEFAULT, V7, twin, "", "",
                                 transport=Transport.VIRTIOFS)
    assert verdict.failures == ("rename on twin 'twin-same' (the root device) gave success, "
                                "expected errno 18 (EXDEV)",)


def test_a_mount_point_links_with_exdev_where_the_guest_sees_the_device_as_a_mount() -> None:
    def link(guest_mounts: bool) -> int:
        (case,) = [c for c in operation_cases("dev01", 1, 0, ("mountpoint",), guest_mounts)
                   if c.op == "link"]
        return case.natural
    # Through 9p one mount: the VFS refuses to link a directory; with virtiofs's
    # submounts the paths' mounts differ first, as on the host.
    assert (link(False), link(True)) == (errno.EPERM, errno.EXDEV)
