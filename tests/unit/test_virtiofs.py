"""The virtiofs rules (``verdicts.virtiofs``), each with a case where it must fail, and
the plan, command line and daemon options of the virtiofs transport.

The fixture is a two-device export: device 0 (host dev 100) is the root, device 1
(host dev 200) is mounted at "dev01"; both hold a file "a" and a hard-link pair
"l1"/"l2" with the same inode numbers, so raw st_ino repeats across devices.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import pytest

from harness.agent.stat import GuestObservation, GuestResult, GuestStat
from harness.checks.live import binds_before_start
from harness.checks.registry import RULES
from harness.cli.options import TRANSPORTS
from harness.config import Accel, Cache, Check, Layout, Mode, Transport, Via
from harness.errors import UsageError, VirtiofsdError
from harness.host.layout import ExportLayout
from harness.host.truth import EntryKind, HostEntry, HostTruth
from harness.image.artefacts import GuestImage
from harness.plan import RunOptions, plan_run, row_rank
from harness.qemu.cmdline import kernel_append, render_command
from harness.qemu.spec import ExportSpec, MachineSpec
from harness.qemu.vhostfs import daemon_args
from harness.qemu.virtiofsd import find_virtiofsd, parse_version
from harness.verdicts.common import Status
from harness.verdicts.ids import HarmInput
from harness.verdicts.predict import mount_points
from harness.verdicts.virtiofs import expected_collisions, judge_virtiofs
from harness.verdicts.witnesses import Witness

from . import test_harm as harm_fixture
from .truths import host_dir, host_file

TRUTH = HostTruth((
    host_dir(".", 100, 1, 0, nlink=3),
    host_file("a", 100, 2, 0),
    host_dir("dev01", 200, 1, 1),
    host_file("dev01/a", 200, 2, 1),
    host_file("dev01/l1", 200, 3, 1, nlink=2),
    host_file("dev01/l2", 200, 3, 1, nlink=2),
    host_file("l1", 100, 3, 0, nlink=2),
    host_file("l2", 100, 3, 0, nlink=2),
))
CONTROL = HostTruth((host_dir(".", 100, 1, 0), host_file("a", 100, 2, 0)))
NO_OVERLAP = HostTruth((host_dir(".", 100, 1, 0), host_dir("dev01", 200, 11, 1)))
WARNING = ("qemu-system-x86_64: warning: 9p: Multiple devices detected in same VirtFS "
           "export, which might lead to file ID collisions")


def _stat(entry: HostEntry, dev: int, ino: int | None = None) -> GuestStat:
    mode = 0o040755 if entry.kind is EntryKind.DIR else 0o100644
    return GuestStat(dev, entry.ino if ino is None else ino, entry.nlink, mode)


def submounted(truth: HostTruth) -> dict[str, GuestResult]:
    """What announced submounts show: a guest st_dev per host device, host st_ino."""
    return {e.path: _stat(e, e.dev + 1000) for e in truth.entries}


def one_superblock(truth: HostTruth) -> dict[str, GuestResult]:
    """What no submounts show: one guest st_dev, raw host st_ino."""
    return {e.path: _stat(e, 40) for e in truth.entries}


def _judge(submounts: bool, first: Mapping[str, GuestResult], truth: HostTruth = TRUTH,
           **kwargs: object) -> Status:
    observation = GuestObservation((first, first), {}, {})
    return judge_virtiofs(submounts, truth, observation, "", **kwargs).status  # type: ignore[arg-type]


def test_submounts_pass_with_a_device_each_and_host_inode_numbers() -> None:
    assert _judge(True, submounted(TRUTH)) is Status.PASS


def test_submounts_fail_when_two_host_devices_share_a_guest_st_dev() -> None:
    assert _judge(True, one_superblock(TRUTH)) is Status.FAIL
    verdict = judge_virtiofs(True, TRUTH, GuestObservation((one_superblock(TRUTH),), {}, {}), "")
    assert any("stands for 2 host devices" in f for f in verdict.failures)


def test_submounts_fail_when_one_host_device_shows_two_guest_st_devs() -> None:
    seen = submounted(TRUTH)
    seen["dev01/a"] = _stat(TRUTH.by_path["dev01/a"], 99)
    verdict = judge_virtiofs(True, TRUTH, GuestObservation((seen,), {}, {}), "")
    assert verdict.status is Status.FAIL
    assert any("shows as 2 guest st_dev values" in f for f in verdict.failures)


def test_submounts_fail_on_a_split_hard_link_and_on_a_collision() -> None:
    split = submounted(TRUTH)
    split["l2"] = _stat(TRUTH.by_path["l2"], 1100, 77)
    assert _judge(True, split) is Status.FAIL
    collided = submounted(TRUTH)
    collided["a"] = _stat(TRUTH.by_path["a"], 1100, 3)  # the id of l1/l2
    assert _judge(True, collided) is Status.FAIL


def test_submounts_fail_on_a_broken_witness_a_message_or_kernel_trouble() -> None:
    broken = (Witness("cp", False, "cp -a: 1 of 4 files wrong", 1),)
    assert _judge(True, submounted(TRUTH), witnesses=broken) is Status.FAIL
    observation = GuestObservation((submounted(TRUTH),), {}, {})
    assert judge_virtiofs(True, TRUTH, observation, WARNING).status is Status.FAIL
    trouble = "[ 3.2] WARNING: CPU: 0 PID: 1 at fs/fuse/inode.c:1 fuse_iget+0x1\n"
    assert _judge(True, submounted(TRUTH), dmesg=trouble) is Status.FAIL


def test_submounts_fail_when_the_harm_probe_shows_aliasing() -> None:
    truth = harm_fixture.TRUTH
    first = submounted(truth)
    intact = HarmInput(harm_fixture.PROBE, harm_fixture._intact(), harm_fixture.MOUNT,
                       Cache.NONE)
    aliased = HarmInput(harm_fixture.PROBE, harm_fixture._aliased_same(), harm_fixture.MOUNT,
                        Cache.NONE)
    assert _judge(True, first, truth, harm=intact) is Status.PASS
    assert _judge(True, first, truth, harm=aliased) is Status.FAIL
    # Without submounts the same finding is recorded, not judged.
    verdict = judge_virtiofs(False, truth, GuestObservation((one_superblock(truth),), {}, {}),
                             "", harm=aliased)
    assert verdict.status is Status.PASS
    assert any(n.startswith("measured without submounts: aliased") for n in verdict.notes)


def test_a_mount_points_readdir_may_give_the_covered_directory() -> None:
    assert mount_points(TRUTH) == {"dev01"}
    first = submounted(TRUTH)
    dirents = {".": (("a", 2), ("dev01", 5), ("l1", 3), ("l2", 3))}
    ok = GuestObservation((first, first), dirents, {})
    assert judge_virtiofs(True, TRUTH, ok, "").status is Status.PASS
    wrong = {".": (("a", 9), ("dev01", 5), ("l1", 3), ("l2", 3))}
    bad = GuestObservation((first, first), wrong, {})
    assert judge_virtiofs(True, TRUTH, bad, "").status is Status.FAIL


def test_no_submounts_pass_when_ids_collide_exactly_where_st_ino_repeats() -> None:
    assert len(expected_collisions(TRUTH)) == 3
    assert _judge(False, one_superblock(TRUTH)) is Status.PASS


def test_no_submounts_fail_on_a_missing_or_an_unexplained_collision() -> None:
    missing = one_superblock(TRUTH)
    missing["dev01/a"] = _stat(TRUTH.by_path["dev01/a"], 40, 500)
    verdict = judge_virtiofs(False, TRUTH, GuestObservation((missing,), {}, {}), "")
    assert verdict.status is Status.FAIL
    assert any("found them apart" in f for f in verdict.failures)
    extra = one_superblock(TRUTH)
    extra["dev01/l1"] = extra["dev01/l2"] = _stat(TRUTH.by_path["dev01/l1"], 40, 2)
    verdict = judge_virtiofs(False, TRUTH, GuestObservation((extra,), {}, {}), "")
    assert any("not explained by a repeated host st_ino" in f for f in verdict.failures)


def test_no_submounts_fail_on_several_guest_st_devs_or_an_unstatable_path() -> None:
    assert _judge(False, submounted(TRUTH)) is Status.FAIL
    gone = one_superblock(TRUTH)
    gone["dev01/a"] = 5  # EIO
    assert _judge(False, gone) is Status.FAIL


def test_no_submounts_record_broken_witnesses() -> None:
    broken = (Witness("find", False, "find: listed 2 of 8 paths", 1),)
    verdict = judge_virtiofs(False, TRUTH, GuestObservation((one_superblock(TRUTH),), {}, {}),
                             "", witnesses=broken)
    assert verdict.status is Status.PASS
    assert any("witnesses broken: find" in n for n in verdict.notes)


def test_a_single_device_is_the_control_in_both_settings() -> None:
    for submounts in (True, False):
        assert _judge(submounts, one_superblock(CONTROL), CONTROL) is Status.PASS
        collided = one_superblock(CONTROL)
        collided["a"] = _stat(CONTROL.by_path["a"], 40, 1)
        assert _judge(submounts, collided, CONTROL) is Status.FAIL


def test_no_repeated_inode_number_is_inconclusive() -> None:
    assert _judge(True, submounted(NO_OVERLAP), NO_OVERLAP) is Status.INCONCLUSIVE


# --- plan, command line, daemon ------------------------------------------------------


def _options(transports: str) -> RunOptions:
    return RunOptions(modes=(Mode.REMAP, Mode.WARN, Mode.FORBID, Mode.DEFAULT),
                      layout=ExportLayout(),
                      transports=TRANSPORTS.parse(transports))


def test_virtiofs_rows_are_ids_on_every_layout_then_the_families_in_guests_of_their_own(
        ) -> None:
    plan = plan_run(_options("9p,virtiofs"), families=RULES, live_stderr=True)
    ninep = plan_run(_options("9p"), families=RULES, live_stderr=True)
    extra = plan.guests[len(ninep.guests):]
    assert plan.guests[:len(ninep.guests)] == ninep.guests
    assert [g.name for g in extra] == ["virtiofs", "virtiofs-nosubmounts"]
    rows = [e.row for g in extra for e in g.exports]
    assert rows == ["virtiofs", "virtiofs@overlay", "operations-virtiofs",
                    "cross_device-virtiofs", "bind-virtiofs", "virtiofs-nosubmounts",
                    "virtiofs-nosubmounts@overlay", "operations-virtiofs-nosubmounts",
                    "cross_device-virtiofs-nosubmounts", "bind-virtiofs-nosubmounts"]
    assert [e.check for e in extra[0].exports] == [
        Check.IDS, Check.IDS, Check.OPERATIONS, Check.CROSS_DEVICE, Check.BIND]
    assert all(e.transport is Transport.VIRTIOFS for g in extra for e in g.exports)
    assert [e.submounts for g in extra for e in g.exports] == [True] * 5 + [False] * 5
    # The families' own exports, whatever the layouts: two devices, bind's one.
    assert [(e.layout.devices, e.witness) for e in extra[0].exports[2:]] == [
        (2, True), (2, True), (1, False)]
    rank = row_rank(RULES, (Mode.REMAP,), layouts=(Layout.STANDARD, Layout.OVERLAY))
    assert rank["bind-virtiofs-nosubmounts"] == len(rank) - 1
    assert rank["virtiofs-nosubmounts@overlay"] < rank["operations-virtiofs"]
    only = plan_run(_options("virtiofs"), families=RULES, live_stderr=True)
    assert [g.name for g in only.guests] == ["virtiofs", "virtiofs-nosubmounts"]


def test_virtiofs_families_follow_checks_and_skip_those_mounting_after_start() -> None:
    options = replace(_options("virtiofs"), checks=(Check.CROSS_DEVICE, Check.RUNTIME_MOUNT,
                                                      Check.HELD_FD, Check.REMOUNT))
    plan = plan_run(options, families=RULES, live_stderr=True)
    assert [[e.row for e in g.exports] for g in plan.guests] == [
        ["cross_device-virtiofs"], ["cross_device-virtiofs-nosubmounts"]]
    alone = replace(options, checks=(Check.RUNTIME_MOUNT,))
    assert plan_run(alone, families=RULES, live_stderr=True).guests == ()
    single = replace(options, layout=ExportLayout(devices=1))
    assert plan_run(single, families=RULES, live_stderr=True).guests == ()


def test_unknown_transport_is_refused() -> None:
    with pytest.raises(UsageError, match="unknown transport"):
        TRANSPORTS.parse("nfs")


def _spec(exports: tuple[ExportSpec, ...]) -> MachineSpec:
    image = GuestImage(Path("/img"), "r", "k", "6.1", Path("/img/vmlinux"),
                       Path("/img/vmlinuz"), Path("/img/initrd"), Path("/k.pub"),
                       Path("/k"), Path("/k.pub"))
    return MachineSpec(qemu=Path("/usr/bin/qemu"), accel=Accel.TCG, image=image,
                       log_dir=Path("/logs"), exports=exports)


VFS = ExportSpec("mdh0", Path("/x"), Mode.DEFAULT, "/mnt/mdh0", transport=Transport.VIRTIOFS)


def test_virtiofs_command_line_shares_the_ram_and_connects_to_the_daemon() -> None:
    argv = render_command(_spec((VFS,)), console_path=Path("/c"), qmp_fd=None, host_port=0,
                          append="", sockets=("mdh-vfs-1",))
    assert "memory-backend-memfd,id=mem,size=256M,share=on" in argv
    assert "q35,memory-backend=mem" in argv
    assert "socket,id=vfs0,path=mdh-vfs-1,abstract=on" in argv
    assert any(a.startswith("vhost-user-fs-pci,id=fs0,chardev=vfs0,tag=mdh0") for a in argv)
    assert not any("virtio-9p" in a for a in argv)
    with pytest.raises(UsageError, match="no virtiofsd socket"):
        render_command(_spec((VFS,)), console_path=Path("/c"), qmp_fd=None, host_port=0,
                       append="")
    nine = render_command(_spec(()), console_path=Path("/c"), qmp_fd=None, host_port=0,
                          append="")
    assert not any("memory-backend" in a for a in nine)
    assert "mdh_vfs=mdh0:/mnt/mdh0" in kernel_append((VFS,)).split()


def test_the_daemon_states_submounts_either_way() -> None:
    assert "--announce-submounts" in daemon_args(VFS, 7)
    off = daemon_args(ExportSpec("t", Path("/x"), Mode.DEFAULT, "/m",
                                 transport=Transport.VIRTIOFS, submounts=False), 7)
    assert "--no-announce-submounts" in off and "--fd=7" in off


def test_virtiofsd_version_and_lookup() -> None:
    assert parse_version("virtiofsd 1.13.2\n") == "1.13.2"
    assert parse_version("virtiofsd version 1.4.0 (QEMU)") is None
    with pytest.raises(VirtiofsdError, match="is not a file"):
        find_virtiofsd(Path("/nonexistent/virtiofsd"))


def test_virtiofs_binds_are_made_before_the_daemon_starts() -> None:
    plan = plan_run(replace(_options("virtiofs"), checks=(Check.BIND, Check.OPERATIONS)),
                    families=RULES, live_stderr=True)
    exports = [e for g in plan.guests for e in g.exports]
    assert [binds_before_start(e) for e in exports] == [False, True, False, True]
    ninep = plan_run(replace(_options("9p"), checks=(Check.BIND,)), families=RULES,
                     live_stderr=True)
    assert not any(binds_before_start(e) for g in ninep.guests for e in g.exports)


def test_libvirt_plans_the_submount_rows_alone() -> None:
    # libvirt 9.0 starts virtiofsd itself and has no XML to turn submounts off.
    options = replace(_options("virtiofs"), via=Via.LIBVIRT, layouts=(Layout.STANDARD,))
    plan = plan_run(options, families=RULES, live_stderr=False)
    assert [[e.row for e in g.exports] for g in plan.guests] == [
        ["virtiofs", "operations-virtiofs", "cross_device-virtiofs"]]
    assert plan.skipped == (Check.RUNTIME_MOUNT, Check.HELD_FD, Check.BIND)
