"""``predict``'s rules on hand-made truths, the mountinfo parser, and the rules a user's
tree (``--export``) is judged by: warn alone needs the premise, forbid denies what lies
below a foreign directory, readdir is not held to a listing the host could not read."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from harness.agent.stat import GuestObservation
from harness.config import Layout, Mode
from harness.host.mounts import (
    mount_holding,
    mount_points,
    mounts_under,
    parse_mountinfo,
    relative_point,
)
from harness.host.namespace import MS_NODEV, MS_NOSUID, MS_RELATIME, MS_STRICTATIME, kept_flags
from harness.host.truth import ExportDevice, HostTruth
from harness.verdicts.common import Expectation, Status
from harness.verdicts.ids import judge
from harness.verdicts.predict import (
    GroupPrediction,
    ModePrediction,
    VirtiofsPrediction,
    denied_paths,
    predict,
    raw_collisions,
)
from harness.version import Version

from .test_ids_verdicts import (
    FORBID_MESSAGE,
    NO_OVERLAP,
    OLD,
    TRUTH,
    WARNING,
    forbidden,
    observe,
    passed_through,
    remapped,
)
from .truths import host_dir, host_file

NEW = Version(10, 0, 0)
MODES = (Mode.REMAP, Mode.WARN, Mode.FORBID, Mode.DEFAULT)
TOP = 1 << 62
BIT63 = 1 << 63


def _devices(truth: HostTruth) -> list[ExportDevice]:
    seen: dict[int, ExportDevice] = {}
    for entry in truth.entries:
        seen.setdefault(entry.dev, ExportDevice(len(seen), Path("/t") / entry.path,
                                                entry.path, entry.dev))
    return list(seen.values())


def _predict(truth: HostTruth, version: Version = OLD) -> dict[Mode, ModePrediction]:
    found = predict(truth, _devices(truth), (), "/t", version, MODES)
    return {m.mode: m for m in found.modes}


# --- warn and the default before 10: raw st_ino repeats across st_dev -------------


def test_warn_predicts_each_raw_repeat_across_devices() -> None:
    groups = raw_collisions(TRUTH)
    # '.'/dev01 (ino 1), a/dev01/a (ino 2), l1/dev01/l1 (ino 3; hard links counted once)
    assert [(g.guest_ino, {(d, i) for _, d, i in g.host_files}) for g in groups] == [
        (3, {(100, 1), (200, 1)}), (4, {(100, 2), (200, 2)}), (5, {(200, 3), (100, 3)})]
    assert [p for p, _, _ in groups[2].host_files] == ["dev01/l1", "l1"]


def test_nothing_collides_without_a_repeat() -> None:
    found = predict(NO_OVERLAP, _devices(NO_OVERLAP), (), "/t", OLD, MODES)
    assert not found.collides
    by = {m.mode: m for m in found.modes}
    assert by[Mode.WARN].messages == ("multi-device warning",)
    assert by[Mode.FORBID].denied == ("dev01", "dev01/a")


def test_the_default_follows_the_version() -> None:
    old, new = _predict(TRUTH, OLD), _predict(TRUTH, NEW)
    assert old[Mode.DEFAULT].expectation is Expectation.COLLIDE_AND_WARN
    assert old[Mode.DEFAULT].collides
    assert new[Mode.DEFAULT].expectation is Expectation.UNIQUE_IDS
    assert not new[Mode.DEFAULT].collides
    window = _predict(TRUTH, Version(9, 2, 50))[Mode.DEFAULT]
    assert "may default to remap" in window.note


# --- remap: the model's collisions ------------------------------------------------


def test_remap_predicts_the_models_collision_on_top_bits() -> None:
    # The root's device is keyed on bit 63 alone (first seen with the 1-bit affix); its
    # second key (bit 63 set) gets the 3-bit affix, whose shift drops bits 62-61 the
    # key never looked at: two files differing only in bit 62 get one qid.
    truth = HostTruth((host_dir(".", 7, 5, 0), host_file("a", 7, BIT63 | 6, 0),
                       host_file("b", 7, BIT63 | TOP | 6, 0)))
    found = _predict(truth)[Mode.REMAP]
    assert found.collides
    group = found.collisions[0]
    assert {p for p, _, _ in group.host_files} == {"a", "b"}
    assert "bit 62" in group.why


def test_remap_keeps_distinct_plain_numbers_apart() -> None:
    assert not _predict(TRUTH)[Mode.REMAP].collides


# --- forbid -------------------------------------------------------------------------


def test_forbid_denies_paths_below_a_foreign_directory_too() -> None:
    # The root's filesystem again below dev01 (a bind of it inside another mount):
    # the lookup fails at dev01 already.
    truth = HostTruth((host_dir(".", 1, 1, 0), host_file("a", 1, 2, 0),
                       host_dir("dev01", 2, 1, 1), host_dir("dev01/back", 1, 9, 0),
                       host_file("dev01/back/x", 1, 10, 0), host_file("z", 1, 11, 0)))
    assert denied_paths(truth) == ("dev01", "dev01/back", "dev01/back/x")


def test_forbid_rows_hold_paths_below_a_foreign_directory_to_enodev() -> None:
    truth = HostTruth((host_dir(".", 1, 1, 0), host_dir("dev01", 2, 1, 1),
                       host_dir("dev01/back", 1, 9, 0)))
    seen = forbidden(truth)
    seen["dev01/back"] = errno.ENODEV
    ok = judge(Mode.FORBID, OLD, truth, GuestObservation((seen, seen), {}, {}), FORBID_MESSAGE)
    assert ok.status is Status.PASS, ok.failures
    seen["dev01/back"] = passed_through(truth)["dev01/back"]
    bad = judge(Mode.FORBID, OLD, truth, GuestObservation((seen, seen), {}, {}),
                FORBID_MESSAGE)
    assert bad.status is Status.FAIL
    assert any("'dev01/back'" in line and "expected ENODEV" in line for line in bad.failures)


# --- a user's tree: warn alone needs the premise ---------------------------------------


def test_a_user_tree_without_repeats_is_inconclusive_under_warn_only() -> None:
    warn = judge(Mode.WARN, OLD, NO_OVERLAP, observe(NO_OVERLAP, passed_through), WARNING,
                 layout=Layout.EXPORT)
    assert warn.status is Status.INCONCLUSIVE
    remap = judge(Mode.REMAP, OLD, NO_OVERLAP, observe(NO_OVERLAP, remapped), "",
                  layout=Layout.EXPORT)
    assert remap.status is Status.PASS, remap.failures


def test_a_user_tree_under_remap_still_fails_on_a_collision() -> None:
    seen = remapped(NO_OVERLAP)
    seen["dev01/a"] = seen["a"]
    verdict = judge(Mode.REMAP, OLD, NO_OVERLAP, GuestObservation((seen, seen), {}, {}), "",
                    layout=Layout.EXPORT)
    assert verdict.status is Status.FAIL
    assert any(line.startswith("collision: ") for line in verdict.failures)


def test_readdir_is_not_held_to_a_listing_the_host_could_not_read() -> None:
    truth = HostTruth(TRUTH.entries, partial=frozenset({"dev01"}))
    obs = observe(truth, remapped)
    broken = GuestObservation(obs.passes, {**obs.dirents, "dev01": ()}, {"dev01": errno.EACCES})
    assert judge(Mode.REMAP, OLD, truth, broken, "").status is Status.PASS
    whole = HostTruth(TRUTH.entries)
    failed = judge(Mode.REMAP, OLD, whole, broken, "")
    assert failed.status is Status.FAIL
    assert "readdir of 'dev01' failed: errno 13 (EACCES)" in failed.failures


# --- mountinfo ---------------------------------------------------------------------


MOUNTINFO = """\
22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 0:40 / /srv/my\\040tree rw,nosuid,nodev,relatime - tmpfs tmpfs rw
41 40 0:41 / /srv/my\\040tree/cache rw,noatime - btrfs /dev/sdb rw,subvol=/c
42 22 0:42 / /srv/other rw - tmpfs tmpfs rw
bad line
"""


def test_mountinfo_is_parsed_with_escapes_and_nesting() -> None:
    mounts = parse_mountinfo(MOUNTINFO)
    assert [m.mount_point for m in mounts] == ["/", "/srv/my tree", "/srv/my tree/cache",
                                               "/srv/other"]
    assert mounts[1].dev == os.makedev(0, 40) and mounts[2].fstype == "btrfs"
    under = mounts_under(mounts, "/srv/my tree")
    assert [m.mount_point for m in under] == ["/srv/my tree", "/srv/my tree/cache"]
    inner = mounts_under(mounts, "/srv/my tree/cache/x")
    assert [m.mount_point for m in inner] == ["/srv/my tree/cache"]
    holder = mount_holding(mounts, "/srv/my tree/cache/a/b")
    assert holder is not None and relative_point(holder, "/srv/my tree") == "cache"


def test_mount_points_unescape_field_five() -> None:
    text = ("22 1 0:21 / / rw - ext4 /dev/vda1 rw\n"
            "45 22 0:40 / /tmp/a\\040b ro - fuse.scripted_fs scripted_fs ro\n"
            "46 22 0:41 / /tmp/back\\134slash rw - tmpfs tmpfs rw\n")
    assert mount_points(text) == {"/", "/tmp/a b", "/tmp/back\\slash"}


def test_a_read_only_remount_repeats_the_locked_flags() -> None:
    assert kept_flags("rw,nosuid,nodev,relatime") == MS_NOSUID | MS_NODEV | MS_RELATIME
    assert kept_flags("rw") == MS_STRICTATIME


@pytest.mark.parametrize("options, expected", [("ro,relatime", True), ("rw,noatime", False)])
def test_read_only_is_read_from_the_mount_options(options: str, expected: bool) -> None:
    line = f"40 22 0:40 / /x {options} - tmpfs tmpfs rw\n"
    assert parse_mountinfo(line)[0].read_only is expected


# --- virtiofs: both virtiofsd settings, no QEMU version involved ----------------------


def _virtiofs(truth: HostTruth) -> dict[str, VirtiofsPrediction]:
    found = predict(truth, _devices(truth), (), "/t", OLD, (), (True, False))
    assert found.modes == ()
    return {v.setting: v for v in found.virtiofs}


def _ids(groups: tuple[GroupPrediction, ...]) -> list[tuple[int, set[tuple[str, int]]]]:
    return [(g.guest_ino, {(p, d) for p, d, _ in g.host_files}) for g in groups]


def test_virtiofs_without_submounts_predicts_warns_repeats_with_host_inode_numbers() -> None:
    plain = _virtiofs(TRUTH)["virtiofs-nosubmounts"]
    # As warn, but the FUSE client shows the host's st_ino (9p's adds 2).
    assert [(g.guest_ino, g.files) for g in plain.collisions] == [
        (g.guest_ino - 2, g.files) for g in raw_collisions(TRUTH)]
    assert plain.collides and plain.guest_devices == 1


def test_virtiofs_with_submounts_predicts_nothing_shared_but_a_mount_point_before_entry(
        ) -> None:
    announced = _virtiofs(TRUTH)["virtiofs"]
    assert not announced.collides and announced.guest_devices == 2
    # dev01's root (ino 1) borrows the root device's st_dev before anything entered it:
    # the export root's own id.
    assert _ids(announced.before_entry) == [(1, {(".", 100), ("dev01", 200)})]
    found = predict(NO_OVERLAP, _devices(NO_OVERLAP), (), "/t", OLD, (), (True,))
    assert not found.collides and found.virtiofs[0].before_entry == ()


def test_subvolumes_under_one_mount_point_share_their_borrowed_id() -> None:
    # Three btrfs-like devices below dev01, each root inode 256, none on dev01's own.
    truth = HostTruth((host_dir(".", 100, 1, 0), host_dir("dev01", 200, 256, 1),
                       host_dir("dev01/sv1", 201, 256, 2), host_dir("dev01/sv2", 202, 256, 3),
                       host_file("dev01/f", 200, 257, 1)))
    announced = _virtiofs(truth)["virtiofs"]
    assert _ids(announced.before_entry) == [
        (256, {("dev01", 200), ("dev01/sv1", 201), ("dev01/sv2", 202)})]
