"""runtime_mount, remount and bind: each rule with a case where it must say fail."""

from __future__ import annotations

import errno
import stat
from dataclasses import replace

from harness.agent.stat import GuestObservation, GuestResult, GuestStat
from harness.checks.live import _forgive_host_gaps, another_order
from harness.config import Mode
from harness.host.truth import HostTruth
from harness.verdicts.common import Status
from harness.verdicts.live import RemountSeen, RuntimeSeen, judge_remount, judge_runtime
from harness.version import Version

from .truths import host_dir, host_file

V7 = Version(7, 2, 22)
DIR, FILE = stat.S_IFDIR | 0o755, stat.S_IFREG | 0o644
WARNING = ("qemu-system-x86_64: warning: 9p: Multiple devices detected in same VirtFS "
           "export, which might lead to file ID collisions and severe misbehaviours on guest!")


BEFORE = HostTruth((host_dir(".", 10, 1, 0), host_file("a", 10, 2, 0),
                    host_dir("dev01", 11, 1, 1), host_file("dev01/a", 11, 2, 1)))
DURING = HostTruth((*BEFORE.entries, host_dir("late", 12, 1, 2),
                    host_file("late/a", 12, 2, 2)))


def _remapped() -> dict[str, GuestResult]:
    ids = {".": 1, "a": 2, "dev01": 3, "dev01/a": 4, "late": 5, "late/a": 6}
    files = {"a", "dev01/a", "late/a"}
    return {p: GuestStat(40, i, 1, FILE if p in files else DIR) for p, i in ids.items()}


def _runtime(**changes: object) -> RuntimeSeen:
    seen = _remapped()
    first = {p: seen[p] for p in BEFORE.paths}
    third = {**first, "late": GuestStat(40, 7, 1, DIR)}
    return replace(RuntimeSeen(BEFORE, DURING, "late", 2, first, seen, third, (), ""),
                   **changes)  # type: ignore[arg-type]  # test-only field overrides


def test_remap_runtime_mount_passes_with_unique_ids_and_the_covered_directory() -> None:
    verdict = judge_runtime(Mode.REMAP, V7, _runtime(), "", "")
    assert verdict.status is Status.PASS, verdict.failures


def test_a_duplicate_id_after_a_runtime_mount_under_remap_fails() -> None:
    second = {**_remapped(), "late/a": GuestStat(40, 2, 1, FILE)}  # the id of "a"
    verdict = judge_runtime(Mode.REMAP, V7, _runtime(second=second), "", "")
    assert verdict.status is Status.FAIL
    assert verdict.failures[0].startswith("collision after the runtime mount: guest id "
                                          "(dev 40, ino 2) is shared by 'a'")


def test_an_old_id_changing_when_a_device_comes_or_goes_fails() -> None:
    second = {**_remapped(), "dev01/a": GuestStat(40, 9, 1, FILE)}
    verdict = judge_runtime(Mode.REMAP, V7, _runtime(second=second), "", "")
    assert "'dev01/a' changed when a device was mounted: (dev 40, ino 4) -> (dev 40, ino 9)" \
        in verdict.failures
    third = {**_runtime().third, "a": errno.ENOENT}
    verdict = judge_runtime(Mode.REMAP, V7, _runtime(third=third), "", "")
    assert verdict.failures[0].startswith("'a' changed when a device was unmounted")


def test_a_message_for_the_runtime_device_fails_in_every_mode() -> None:
    for mode in (Mode.WARN, Mode.FORBID, Mode.REMAP):
        verdict = judge_runtime(mode, V7, _runtime(stderr_during=WARNING), "", "")
        assert any(f.startswith("QEMU printed a message for the device mounted at runtime")
                   for f in verdict.failures), (mode, verdict.failures)


def test_warn_wants_the_runtime_device_to_collide() -> None:
    verdict = judge_runtime(Mode.WARN, V7, _runtime(), WARNING, "")
    assert verdict.failures == ("expected the device mounted at runtime to collide with an "
                                "earlier one (its inode numbers repeat theirs), found no "
                                "collision",)
    colliding = {**_remapped(), "late/a": GuestStat(40, 2, 1, FILE)}
    assert judge_runtime(Mode.WARN, V7, _runtime(second=colliding), WARNING, "").passed


def test_forbid_wants_enodev_on_the_runtime_device() -> None:
    denied = {**_remapped(), "late": errno.ENODEV, "late/a": errno.ENODEV}
    assert judge_runtime(Mode.FORBID, V7, _runtime(second=denied), "", "").passed
    verdict = judge_runtime(Mode.FORBID, V7, _runtime(), "", "")
    assert "'late' on the device mounted at runtime gave (dev 40, ino 5) under forbid, " \
        "expected ENODEV" in verdict.failures


def test_after_the_unmount_the_covered_directory_must_show_empty() -> None:
    gone = {**_runtime().third, "late": errno.ENOENT}
    verdict = judge_runtime(Mode.REMAP, V7, _runtime(third=gone), "", "")
    assert verdict.failures[0].startswith("after the unmount the covered directory 'late' gave "
                                          "errno 2 (ENOENT)")
    stale = judge_runtime(Mode.REMAP, V7, _runtime(late_listing=("a",)), "", "")
    assert stale.failures[0].startswith("after the unmount readdir of 'late' gave ('a',)")


def _remount(after: dict[str, GuestResult], rc: int = 0) -> RemountSeen:
    before: dict[str, GuestResult] = {"a": GuestStat(40, 2, 1, FILE), "dev01": errno.ENODEV}
    return RemountSeen(("a", "dev01"), before, after, rc, "umount: busy", 2)


def test_remount_keeps_every_id() -> None:
    same: dict[str, GuestResult] = {"a": GuestStat(40, 2, 1, FILE), "dev01": errno.ENODEV}
    assert judge_remount(Mode.REMAP, V7, _remount(same), "", "").passed


def test_an_id_that_changes_across_a_remount_fails() -> None:
    moved: dict[str, GuestResult] = {"a": GuestStat(40, 3, 1, FILE), "dev01": errno.ENODEV}
    verdict = judge_remount(Mode.REMAP, V7, _remount(moved), "", "")
    assert verdict.failures == (
        "'a' changed across the remount: (dev 40, ino 2) -> (dev 40, ino 3)",)


def test_a_failed_remount_fails() -> None:
    same: dict[str, GuestResult] = {"a": GuestStat(40, 2, 1, FILE), "dev01": errno.ENODEV}
    verdict = judge_remount(Mode.FORBID, V7, _remount(same, rc=32), "", "")
    assert verdict.failures == ("the guest could not remount the export (rc 32): umount: busy",)


def test_bind_mount_point_dinos_are_forgiven_only_for_the_hosts_own_gap() -> None:
    observation = GuestObservation(
        ({"bind-a": GuestStat(40, 6, 2, DIR), "bind-b": GuestStat(40, 6, 2, DIR)},),
        {".": (("bind-a", 9), ("bind-b", 12))}, {})
    forgiven = _forgive_host_gaps(observation, {"bind-a": 3, "bind-b": 3})
    # bind-a repeats the host's gap (d_ino - ino = 3); bind-b does not and stays wrong.
    assert forgiven.dirents["."] == (("bind-a", 6), ("bind-b", 12))


OOPS = "[ 9.9] BUG: kernel NULL pointer dereference, address: 0000000000000008\n"


def test_a_kernel_bug_during_a_runtime_mount_fails_the_row() -> None:
    verdict = judge_runtime(Mode.REMAP, V7, _runtime(dmesg=OOPS), "", "")
    assert verdict.failures == ("the guest kernel is in trouble (dmesg): 'BUG: kernel NULL "
                                "pointer dereference, address: 0000000000000008'",)


def test_a_kernel_warning_during_a_remount_fails_the_row() -> None:
    same: dict[str, GuestResult] = {"a": GuestStat(40, 2, 1, FILE), "dev01": errno.ENODEV}
    verdict = judge_remount(Mode.REMAP, V7, replace(_remount(same), dmesg=OOPS), "", "")
    assert verdict.status is Status.FAIL


def test_a_new_superblock_device_number_after_the_remount_passes() -> None:
    # A new anonymous st_dev for the new superblock is nothing wrong; the inodes hold.
    moved_dev: dict[str, GuestResult] = {"a": GuestStat(41, 2, 1, FILE), "dev01": errno.ENODEV}
    verdict = judge_remount(Mode.REMAP, V7, _remount(moved_dev), "", "")
    assert verdict.passed, verdict.failures


def test_two_st_dev_values_in_one_look_fail() -> None:
    before: dict[str, GuestResult] = {"a": GuestStat(40, 2, 1, FILE),
                                      "dev01": GuestStat(41, 3, 2, DIR)}
    seen = RemountSeen(("a", "dev01"), before, before, 0, "", 2)
    verdict = judge_remount(Mode.REMAP, V7, seen, "", "")
    assert verdict.failures[0] == ("the first look shows several guest st_dev values in one "
                                   "mount: 40 ('a'), 41 ('dev01')")


def test_remount_looks_again_with_the_devices_in_reverse_order() -> None:
    truth = HostTruth((host_dir(".", 10, 1, 0), host_file("a", 10, 2, 0),
                       host_dir("dev01", 11, 1, 1), host_file("dev01/a", 11, 2, 1),
                       host_dir("dev02", 12, 1, 2), host_file("dev02/a", 12, 2, 2)))
    assert another_order(truth) == ("dev02", "dev02/a", "dev01", "dev01/a", ".", "a")
