"""Every verdict rule, passing and failing, on small hand-made truths and observations.

The fixture is a two-device export laid out like the real one: device 0 (host dev 100)
is the root, device 1 (host dev 200) is mounted at "dev01", both hold a file "a" and a
hard-link pair "l1"/"l2", created in the same order so their inode numbers repeat.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Mapping

import pytest

from harness.agent.stat import GuestObservation, GuestResult, GuestStat
from harness.config import Mode
from harness.errors import QemuTooOld
from harness.host.truth import EntryKind, HostEntry, HostTruth
from harness.verdicts.common import (
    Expectation,
    Status,
    expected_behaviour,
    find_multidevs_messages,
)
from harness.verdicts.ids import Collision, find_collisions, judge, unobserved
from harness.verdicts.witnesses import Witness
from harness.version import Version

from .truths import host_dir, host_file

DIR_MODE = 0o040755
FILE_MODE = 0o100644
GUEST_DEV = 50
OLD = Version(9, 2, 0)
NEW = Version(10, 0, 0)

WARNING = (
    "qemu-system-x86_64: warning: 9p: Multiple devices detected in same VirtFS export, "
    "which might lead to file ID collisions and severe misbehaviours on guest! You should "
    "either use a separate export for each device shared from host or use virtfs option "
    "'multidevs=remap'!"
)
FORBID_MESSAGE = (
    "qemu-system-x86_64: 9p: Multiple devices detected in same VirtFS export. Access of "
    "guest to additional devices is (partly) denied due to virtfs option 'multidevs=forbid' "
    "being effective."
)
NOISE = "qemu-system-x86_64: terminating on signal 15 from pid 4242\n"


TRUTH = HostTruth(
    (
        host_dir(".", 100, 1, 0, nlink=3),
        host_file("a", 100, 2, 0, "dev00/a\n"),
        host_dir("dev01", 200, 1, 1),
        host_file("dev01/a", 200, 2, 1, "dev01/a\n"),
        host_file("dev01/l1", 200, 3, 1, "dev01/l1\n", nlink=2),
        host_file("dev01/l2", 200, 3, 1, "dev01/l1\n", nlink=2),
        host_file("l1", 100, 3, 0, "dev00/l1\n", nlink=2),
        host_file("l2", 100, 3, 0, "dev00/l1\n", nlink=2),
    )
)
CONTROL = HostTruth(
    (
        host_dir(".", 100, 1, 0),
        host_file("a", 100, 2, 0, "dev00/a\n"),
        host_file("l1", 100, 3, 0, "dev00/l1\n", nlink=2),
        host_file("l2", 100, 3, 0, "dev00/l1\n", nlink=2),
    )
)
# Two devices, but every inode number is different: the premise cannot hold.
NO_OVERLAP = HostTruth(
    (
        host_dir(".", 100, 1, 0),
        host_file("a", 100, 2, 0, "dev00/a\n"),
        host_dir("dev01", 200, 11, 1),
        host_file("dev01/a", 200, 12, 1, "dev01/a\n"),
    )
)


def _stat(entry: HostEntry, ino: int) -> GuestStat:
    mode = DIR_MODE if entry.kind is EntryKind.DIR else FILE_MODE
    return GuestStat(GUEST_DEV, ino, entry.nlink, mode)


def remapped(truth: HostTruth) -> dict[str, GuestResult]:
    """What remap shows: one fresh guest inode per distinct host file."""
    numbers: dict[tuple[int, int], int] = {}
    return {
        e.path: _stat(e, numbers.setdefault(e.file_id, 1000 + len(numbers))) for e in truth.entries
    }


def passed_through(truth: HostTruth) -> dict[str, GuestResult]:
    """What warn shows: the host inode number (+2, the Linux client's qid mapping)."""
    return {e.path: _stat(e, e.ino + 2) for e in truth.entries}


def forbidden(truth: HostTruth) -> dict[str, GuestResult]:
    """What forbid shows: the root device passes through, the others are ENODEV."""
    through = passed_through(truth)
    return {e.path: through[e.path] if e.device == 0 else errno.ENODEV for e in truth.entries}


def dirents_of(
    truth: HostTruth, first: Mapping[str, GuestResult]
) -> dict[str, tuple[tuple[str, int], ...]]:
    """readdir as a consistent server reports it: each entry with lstat's inode."""
    listing: dict[str, list[tuple[str, int]]] = {}
    for entry in truth.entries:
        if entry.kind is EntryKind.DIR and isinstance(first[entry.path], GuestStat):
            listing.setdefault(entry.path, [])
    for entry in truth.entries:
        if entry.path == ".":
            continue
        parent, _, name = entry.path.rpartition("/")
        result = first[entry.path]
        if (parent or ".") in listing and isinstance(result, GuestStat):
            listing[parent or "."].append((name, result.ino))
    return {path: tuple(entries) for path, entries in listing.items()}


def observe(
    truth: HostTruth,
    view: Callable[[HostTruth], dict[str, GuestResult]],
    passes: int = 2,
    **changes: GuestResult,
) -> GuestObservation:
    """An observation of ``passes`` identical passes; ``changes`` alter pass 2 only."""
    first = view(truth)
    second = dict(first)
    for path, result in changes.items():
        second[path.replace("__", "/")] = result
    rounds = [first, second][:passes] if passes <= 2 else [first] * passes
    return GuestObservation(tuple(rounds), dirents_of(truth, first), {})


def with_result(obs: GuestObservation, path: str, result: GuestResult) -> GuestObservation:
    """The same observation with ``path`` changed in every pass."""
    passes = tuple({**p, path: result} for p in obs.passes)
    return GuestObservation(passes, obs.dirents, obs.dirent_errors)


INTACT = (Witness("tar", True, "GNU tar: all 6 files intact", 0),
          Witness("find", True, "find: listed 8 of 8 paths", 0))
BROKEN = (Witness("tar", False, "GNU tar: 1 of 6 files wrong or missing: ...", 0),
          Witness("find", True, "find: listed 8 of 8 paths", 0))


# --- the version table ------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        (Version(4, 2, 0), Expectation.COLLIDE_AND_WARN),
        (Version(9, 2, 0), Expectation.COLLIDE_AND_WARN),
        (Version(9, 2, 99), Expectation.COLLIDE_AND_WARN),
        (Version(10, 0, 0), Expectation.UNIQUE_IDS),
        (Version(10, 1, 2), Expectation.UNIQUE_IDS),
    ],
)
def test_default_mode_follows_the_version_table(
    version: Version, expected: Expectation
) -> None:
    assert expected_behaviour(Mode.DEFAULT, version) is expected


@pytest.mark.parametrize("version", [Version(4, 2, 0), Version(9, 2, 0), Version(10, 0, 0)])
def test_explicit_modes_do_not_depend_on_the_version(version: Version) -> None:
    assert expected_behaviour(Mode.REMAP, version) is Expectation.UNIQUE_IDS
    assert expected_behaviour(Mode.WARN, version) is Expectation.COLLIDE_AND_WARN
    assert expected_behaviour(Mode.FORBID, version) is Expectation.DENY_FOREIGN


TOO_OLD = r"^QEMU 4\.1\.0 has no multidevs option \(added in 4\.2\.0\)"


def test_qemu_before_4_2_is_an_error() -> None:
    with pytest.raises(QemuTooOld, match=TOO_OLD) as info:
        expected_behaviour(Mode.REMAP, Version(4, 1, 0))
    assert info.value.message == "QEMU 4.1.0 has no multidevs option (added in 4.2.0)"
    with pytest.raises(QemuTooOld, match=TOO_OLD):
        judge(Mode.WARN, Version(4, 1, 0), TRUTH, observe(TRUTH, passed_through), WARNING)


# --- messages ------------------------------------------------------------------------


def test_messages_are_classified_by_kind() -> None:
    reworded = "9p: Multiple devices detected in same VirtFS export!?"
    stderr = f"{NOISE}{WARNING}\n{FORBID_MESSAGE}\n{reworded}\n"
    messages = find_multidevs_messages(stderr)
    assert messages.warn == (WARNING,)
    assert messages.forbid == (FORBID_MESSAGE,)
    assert messages.unknown == (reworded,)
    assert len(messages.all) == 3
    assert find_multidevs_messages(NOISE).all == ()


# --- collisions -------------------------------------------------------------------------


def test_find_collisions_groups_distinct_host_files_by_guest_id() -> None:
    collisions = find_collisions(TRUTH, passed_through(TRUTH))
    assert collisions == (
        Collision((GUEST_DEV, 3), ((".", 100, 1), ("dev01", 200, 1))),
        Collision((GUEST_DEV, 4), (("a", 100, 2), ("dev01/a", 200, 2))),
        # the hard links are one host file per device: one entry each, not four
        Collision((GUEST_DEV, 5), (("dev01/l1", 200, 3), ("l1", 100, 3))),
    )
    assert collisions[1].describe() == (
        f"guest id (dev {GUEST_DEV}, ino 4) is shared by 'a' (host dev 100, ino 2) and "
        "'dev01/a' (host dev 200, ino 2)"
    )


def test_hard_links_sharing_a_guest_id_are_not_a_collision() -> None:
    assert find_collisions(TRUTH, remapped(TRUTH)) == ()


# --- remap -----------------------------------------------------------------------------


def test_remap_passes_with_unique_stable_ids() -> None:
    verdict = judge(Mode.REMAP, OLD, TRUTH, observe(TRUTH, remapped), NOISE, INTACT)
    assert verdict.failures == ()
    assert verdict.status is Status.PASS
    assert verdict.expectation == "unique ids, no message"
    assert verdict.observed == "0 collisions, 0 denied, no message"
    assert verdict.files_checked == 8
    assert verdict.host_devices == 2
    assert verdict.witnesses_intact is True
    assert verdict.qemu_message is None


def test_remap_fails_on_a_collision() -> None:
    obs = with_result(observe(TRUTH, remapped), "dev01/a", GuestStat(GUEST_DEV, 1001, 1, FILE_MODE))
    verdict = judge(Mode.REMAP, OLD, TRUTH, obs, "", INTACT)
    assert not verdict.passed
    assert verdict.failures == (
        f"collision: guest id (dev {GUEST_DEV}, ino 1001) is shared by 'a' (host dev 100, "
        "ino 2) and 'dev01/a' (host dev 200, ino 2)",
        # readdir of dev01 still reports the old number, so it disagrees with lstat now
        "readdir of 'dev01' gives 'a' d_ino 1003, but lstat gives ino 1001",
    )
    assert verdict.observed == "1 collision, 0 denied, no message"


def test_remap_fails_when_an_id_changes_between_passes() -> None:
    obs = observe(TRUTH, remapped, dev01__a=GuestStat(GUEST_DEV, 1077, 1, FILE_MODE))
    verdict = judge(Mode.REMAP, OLD, TRUTH, obs, "", INTACT)
    assert verdict.failures == (
        f"guest id of 'dev01/a' changed between pass 1 and pass 2: (dev {GUEST_DEV}, ino 1003) "
        f"-> (dev {GUEST_DEV}, ino 1077)",
    )


def test_remap_fails_when_a_path_turns_into_an_error_between_passes() -> None:
    obs = observe(TRUTH, remapped, a=errno.ESTALE)
    verdict = judge(Mode.REMAP, OLD, TRUTH, obs, "", INTACT)
    assert verdict.failures == (
        f"result of 'a' changed between pass 1 and pass 2: (dev {GUEST_DEV}, ino 1001) -> "
        "errno 116 (ESTALE)",
    )


def test_remap_needs_a_second_look() -> None:
    one = observe(TRUTH, remapped, passes=1)
    blind = GuestObservation(one.passes, {}, {})
    verdict = judge(Mode.REMAP, OLD, TRUTH, blind, "", INTACT)
    assert verdict.failures == (
        "only 1 stat pass and no readdir observed; a second look is needed to show ids "
        "are stable",
    )


def test_remap_one_pass_plus_readdir_is_enough() -> None:
    # The scale run's budget: readdir's d_ino, checked against lstat, is the second look.
    verdict = judge(Mode.REMAP, OLD, TRUTH, observe(TRUTH, remapped, passes=1), "", INTACT)
    assert verdict.passed, verdict.failures


def test_remap_fails_on_any_message() -> None:
    verdict = judge(Mode.REMAP, OLD, TRUTH, observe(TRUTH, remapped), WARNING + "\n", INTACT)
    assert verdict.failures == (
        f"expected no multi-device message on QEMU stderr, found 1: {WARNING!r}",
    )
    assert verdict.qemu_message == WARNING
    assert verdict.observed == "0 collisions, 0 denied, 1 warning"


def test_remap_fails_on_an_unstatable_path() -> None:
    obs = with_result(observe(TRUTH, remapped), "dev01/l2", errno.ENODEV)
    verdict = judge(Mode.REMAP, OLD, TRUTH, obs, "", INTACT)
    assert verdict.failures == ("'dev01/l2' is not stat-able in the guest: errno 19 (ENODEV)",)
    assert verdict.denied == 1


def test_remap_fails_when_hard_links_get_two_ids() -> None:
    obs = with_result(observe(TRUTH, remapped), "l2", GuestStat(GUEST_DEV, 1099, 2, FILE_MODE))
    obs = GuestObservation(obs.passes, dirents_of(TRUTH, obs.passes[0]), {})
    verdict = judge(Mode.REMAP, OLD, TRUTH, obs, "", INTACT)
    assert verdict.failures == (
        f"hard links of one host file got different guest ids: 'l1' (dev {GUEST_DEV}, "
        f"ino 1005) and 'l2' (dev {GUEST_DEV}, ino 1099)",
    )


def test_remap_fails_on_a_broken_witness() -> None:
    verdict = judge(Mode.REMAP, OLD, TRUTH, observe(TRUTH, remapped), "", BROKEN)
    assert verdict.failures == (
        "witness tar not intact: GNU tar: 1 of 6 files wrong or missing: ...",)
    assert verdict.witnesses_intact is False


def test_remap_witness_not_run_is_not_a_failure() -> None:
    verdict = judge(Mode.REMAP, OLD, TRUTH, observe(TRUTH, remapped), "")
    assert verdict.passed
    assert verdict.witnesses_intact is None


def test_remap_fails_on_readdir_problems() -> None:
    obs = observe(TRUTH, remapped)
    listing = dict(obs.dirents)
    listing["dev01"] = (("a", 1003), ("l1", 1004), ("ghost", 7))
    obs = GuestObservation(obs.passes, listing, {".": errno.EIO})
    verdict = judge(Mode.REMAP, OLD, TRUTH, obs, "", INTACT)
    assert verdict.failures == (
        "readdir of '.' failed: errno 5 (EIO)",
        "readdir of 'dev01' does not list 'l2'",
        "readdir of 'dev01' lists 'ghost', which the host does not have",
    )


def test_remap_fails_when_the_guest_sees_another_file_type() -> None:
    obs = with_result(observe(TRUTH, remapped), "a", GuestStat(GUEST_DEV, 1001, 1, DIR_MODE))
    verdict = judge(Mode.REMAP, OLD, TRUTH, obs, "", INTACT)
    assert verdict.failures == ("'a' is a file on the host but a dir in the guest",)


def test_missing_observation_is_a_failure() -> None:
    obs = observe(TRUTH, remapped)
    passes = tuple({k: v for k, v in p.items() if k != "l2"} for p in obs.passes)
    verdict = judge(Mode.REMAP, OLD, TRUTH, GuestObservation(passes, obs.dirents, {}), "", INTACT)
    assert verdict.failures == (
        "'l2' was not observed in pass 1",
        "'l2' was not observed in pass 2",
    )
    empty = judge(Mode.REMAP, OLD, TRUTH, GuestObservation((), {}, {}), "", INTACT)
    assert empty.failures == ("no stat pass was observed",)


def test_long_failure_lists_are_capped() -> None:
    entries = [host_dir(".", 100, 1, 0)]
    for device, dev in ((0, 100), (1, 200)):
        if device:
            entries.append(host_dir("dev01", dev, 1, 1))
        prefix = "dev01/" if device else ""
        entries += [host_file(f"{prefix}f{i:02d}", dev, 2 + i, device, "x") for i in range(25)]
    truth = HostTruth(tuple(entries))
    verdict = judge(Mode.REMAP, OLD, truth, observe(truth, passed_through), "")
    collisions = [line for line in verdict.failures if line.startswith("collision")]
    assert len(collisions) == 20
    assert "... and 6 more collisions" in verdict.failures
    assert len(verdict.collisions) == 26


# --- warn ------------------------------------------------------------------------------


def test_warn_passes_with_collisions_and_one_warning() -> None:
    verdict = judge(Mode.WARN, OLD, TRUTH, observe(TRUTH, passed_through), NOISE + WARNING, BROKEN)
    assert verdict.failures == ()
    assert verdict.passed
    assert verdict.expectation == "id collisions, one warning"
    assert verdict.observed == "3 collisions, 0 denied, 1 warning"
    assert verdict.qemu_message == WARNING
    # the broken witness is the expected damage: recorded, not failed
    assert verdict.witnesses_intact is False
    assert verdict.notes == ("witnesses broken: tar (results[].witnesses and reproduce say "
                             "how)",)


def test_warn_fails_without_the_warning() -> None:
    verdict = judge(Mode.WARN, OLD, TRUTH, observe(TRUTH, passed_through), NOISE, INTACT)
    assert verdict.failures == (
        "expected the multi-device warning exactly once on QEMU stderr, found it 0 times",
    )
    assert verdict.notes == ()


def test_warn_fails_with_the_warning_twice() -> None:
    stderr = f"{WARNING}\n{NOISE}{WARNING}\n"
    verdict = judge(Mode.WARN, OLD, TRUTH, observe(TRUTH, passed_through), stderr, INTACT)
    assert verdict.failures == (
        "expected the multi-device warning exactly once on QEMU stderr, found it 2 times",
    )
    assert verdict.observed == "3 collisions, 0 denied, 2 warnings"


def test_a_later_export_of_the_mode_may_miss_the_message_but_not_repeat_it() -> None:
    # QEMU printed it for an earlier export of this mode in the same process.
    quiet = judge(Mode.WARN, OLD, TRUTH, observe(TRUTH, passed_through), NOISE, INTACT,
                  message_printed=True)
    assert quiet.passed, quiet.failures
    assert quiet.notes[0].startswith("message already printed by this QEMU")
    twice = judge(Mode.FORBID, OLD, TRUTH, observe(TRUTH, passed_through),
                  f"{FORBID_MESSAGE}\n{FORBID_MESSAGE}\n", INTACT, message_printed=True)
    assert "expected the multidevs=forbid message at most once on QEMU stderr (already " \
        "printed for an earlier export), found it 2 times" in twice.failures


def test_warn_fails_without_a_collision() -> None:
    verdict = judge(Mode.WARN, OLD, TRUTH, observe(TRUTH, remapped), WARNING, INTACT)
    assert verdict.failures == (
        "expected at least one guest id collision (host inode numbers repeat across 2 "
        "devices), found none",
    )


def test_warn_fails_on_enodev_and_a_forbid_message() -> None:
    obs = with_result(observe(TRUTH, passed_through), "dev01/a", errno.ENODEV)
    verdict = judge(Mode.WARN, OLD, TRUTH, obs, f"{WARNING}\n{FORBID_MESSAGE}\n", INTACT)
    assert verdict.failures == (
        "'dev01/a' was denied (ENODEV), which only multidevs=forbid may do",
        f"unexpected multidevs=forbid message on QEMU stderr: {FORBID_MESSAGE!r}",
    )
    assert verdict.denied == 1


def test_warn_fails_on_an_unrecognised_message() -> None:
    odd = "qemu: 9p: Multiple devices detected in same VirtFS export (reworded)"
    verdict = judge(
        Mode.WARN, OLD, TRUTH, observe(TRUTH, passed_through), f"{WARNING}\n{odd}"
    )
    assert verdict.failures == (f"unrecognised multi-device message on QEMU stderr: {odd!r}",)


# --- forbid ----------------------------------------------------------------------------


def test_forbid_passes_when_foreign_devices_are_denied() -> None:
    verdict = judge(Mode.FORBID, OLD, TRUTH, observe(TRUTH, forbidden), FORBID_MESSAGE, BROKEN)
    assert verdict.failures == ()
    assert verdict.passed
    assert verdict.denied == 4  # dev01 itself is foreign: it is the root of device 1
    assert verdict.observed == "0 collisions, 4 denied, 1 forbid message"
    assert verdict.expectation == "foreign devices denied (ENODEV), one forbid message"


def test_forbid_fails_on_a_readable_foreign_file() -> None:
    obs = with_result(observe(TRUTH, forbidden), "dev01/a", GuestStat(GUEST_DEV, 4, 1, FILE_MODE))
    verdict = judge(Mode.FORBID, OLD, TRUTH, obs, FORBID_MESSAGE)
    assert verdict.failures == (
        "foreign path 'dev01/a' (device 1) was stat-able under multidevs=forbid, expected ENODEV",
        # and being readable it collides with the root's "a"
        f"collision: guest id (dev {GUEST_DEV}, ino 4) is shared by 'a' (host dev 100, ino 2) "
        "and 'dev01/a' (host dev 200, ino 2)",
    )


def test_forbid_fails_on_a_foreign_path_with_another_errno() -> None:
    obs = with_result(observe(TRUTH, forbidden), "dev01/l1", errno.ENOENT)
    verdict = judge(Mode.FORBID, OLD, TRUTH, obs, FORBID_MESSAGE)
    assert verdict.failures == (
        "foreign path 'dev01/l1' (device 1) failed with errno 2 (ENOENT), expected ENODEV",
    )


def test_forbid_fails_when_the_root_device_is_denied() -> None:
    obs = with_result(observe(TRUTH, forbidden), "l1", errno.ENODEV)
    verdict = judge(Mode.FORBID, OLD, TRUTH, obs, FORBID_MESSAGE)
    assert verdict.failures == ("'l1' is not stat-able in the guest: errno 19 (ENODEV)",)


def test_forbid_fails_on_message_count_and_kind() -> None:
    obs = observe(TRUTH, forbidden)
    assert judge(Mode.FORBID, OLD, TRUTH, obs, "").failures == (
        "expected the multidevs=forbid message exactly once on QEMU stderr, found it 0 times",
    )
    twice = f"{FORBID_MESSAGE}\n{FORBID_MESSAGE}\n{WARNING}\n"
    assert judge(Mode.FORBID, OLD, TRUTH, obs, twice).failures == (
        "expected the multidevs=forbid message exactly once on QEMU stderr, found it 2 times",
        f"unexpected multi-device warning on QEMU stderr: {WARNING!r}",
    )


# --- default ---------------------------------------------------------------------------


def test_default_before_10_judges_like_warn() -> None:
    verdict = judge(Mode.DEFAULT, OLD, TRUTH, observe(TRUTH, passed_through), WARNING)
    assert verdict.passed
    assert verdict.expectation == "id collisions, one warning (default of QEMU 9.2.0)"
    failing = judge(Mode.DEFAULT, OLD, TRUTH, observe(TRUTH, remapped), "")
    assert failing.failures == (
        "expected at least one guest id collision (host inode numbers repeat across 2 "
        "devices), found none",
        "expected the multi-device warning exactly once on QEMU stderr, found it 0 times",
    )


def test_default_from_10_judges_like_remap() -> None:
    verdict = judge(Mode.DEFAULT, NEW, TRUTH, observe(TRUTH, remapped), "", INTACT)
    assert verdict.passed
    assert verdict.expectation == "unique ids, no message (default of QEMU 10.0.0)"
    failing = judge(Mode.DEFAULT, NEW, TRUTH, observe(TRUTH, passed_through), WARNING, INTACT)
    assert failing.failures[-1] == (
        f"expected no multi-device message on QEMU stderr, found 1: {WARNING!r}"
    )
    assert len(failing.collisions) == 3


def test_a_message_outside_every_observation_fails_even_a_clean_row() -> None:
    verdict = judge(Mode.REMAP, OLD, TRUTH, observe(TRUTH, remapped), NOISE, INTACT,
                    stderr_outside="boot noise\n" + WARNING)
    assert verdict.status is Status.FAIL
    assert verdict.failures == (
        f"multi-device message on QEMU stderr outside every observation: {WARNING!r}",
    )


def test_outside_noise_without_a_message_passes() -> None:
    verdict = judge(Mode.REMAP, OLD, TRUTH, observe(TRUTH, remapped), NOISE, INTACT,
                    stderr_outside=NOISE)
    assert verdict.status is Status.PASS


def test_command_line_failures_are_judged_with_the_row() -> None:
    problem = "libvirt generated none for path=/x, expected multidevs=remap"
    verdict = judge(Mode.REMAP, OLD, TRUTH, observe(TRUTH, remapped), NOISE, INTACT,
                    command_failures=[problem])
    assert verdict.status is Status.FAIL and verdict.failures == (problem,)
    # The rest of the verdict still describes what was observed.
    assert verdict.observed == "0 collisions, 0 denied, no message"


# --- control ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [Mode.REMAP, Mode.WARN, Mode.FORBID, Mode.DEFAULT])
def test_control_passes_in_every_mode(mode: Mode) -> None:
    verdict = judge(mode, OLD, CONTROL, observe(CONTROL, passed_through), NOISE, INTACT)
    assert verdict.failures == ()
    assert verdict.status is Status.PASS
    assert verdict.expectation == "single device (control): unique ids, no message"
    assert verdict.host_devices == 1


@pytest.mark.parametrize("mode", [Mode.WARN, Mode.FORBID])
def test_control_fails_with_a_message(mode: Mode) -> None:
    message = WARNING if mode is Mode.WARN else FORBID_MESSAGE
    verdict = judge(mode, OLD, CONTROL, observe(CONTROL, passed_through), message, INTACT)
    assert verdict.failures == (
        f"expected no multi-device message on QEMU stderr, found 1: {message!r}",
    )


def test_control_fails_on_a_collision_and_a_broken_witness() -> None:
    obs = with_result(observe(CONTROL, passed_through), "l1", GuestStat(GUEST_DEV, 4, 2, FILE_MODE))
    obs = GuestObservation(obs.passes, {}, {})
    verdict = judge(Mode.WARN, OLD, CONTROL, obs, "", BROKEN)
    assert verdict.failures == (
        f"collision: guest id (dev {GUEST_DEV}, ino 4) is shared by 'a' (host dev 100, ino 2) "
        "and 'l1' (host dev 100, ino 3)",
        f"hard links of one host file got different guest ids: 'l1' (dev {GUEST_DEV}, ino 4) "
        f"and 'l2' (dev {GUEST_DEV}, ino 5)",
        "witness tar not intact: GNU tar: 1 of 6 files wrong or missing: ...",
    )


# --- the premise -------------------------------------------------------------------------


def test_no_repeated_inode_is_inconclusive() -> None:
    assert NO_OVERLAP.repeated_inodes() == {}
    assert not NO_OVERLAP.premise_holds
    verdict = judge(Mode.WARN, OLD, NO_OVERLAP, observe(NO_OVERLAP, passed_through), WARNING)
    assert verdict.status is Status.INCONCLUSIVE
    assert verdict.failures == (
        "premise failed: the export spans 2 host devices but no inode number repeats across "
        "them, so this row proves nothing (inconclusive)",
    )


def test_premise_holds_on_the_fixture_and_the_control() -> None:
    assert TRUTH.repeated_inodes() == {1: (100, 200), 2: (100, 200), 3: (100, 200)}
    assert TRUTH.premise_holds
    assert CONTROL.repeated_inodes() == {}
    assert CONTROL.premise_holds


def test_unobserved_is_an_error_when_the_check_could_not_run() -> None:
    verdict = unobserved(Mode.FORBID, 3, "GuestBootTimeout: no SSH after 90 s", Status.ERROR)
    assert verdict.status is Status.ERROR and not verdict.passed
    assert verdict.failures == ("GuestBootTimeout: no SSH after 90 s",)
    assert verdict.observed == "not observed: the check could not run"
    assert verdict.host_devices == 3 and verdict.witnesses_intact is None


def test_unobserved_is_a_failure_when_the_guest_crashed_under_test() -> None:
    verdict = unobserved(Mode.REMAP, 3, "QEMU exited with status 134 while observing",
                         Status.FAIL)
    assert verdict.status is Status.FAIL
    assert verdict.observed == "not observed: the guest crashed under test"


# --- issue 21: the verdicts' remaining holes -----------------------------------------

REWORDED_WARNING = ("qemu-system-x86_64: warning: 9p: Multiple devices detected in the same "
                    "VirtFS export, which may cause file ID collisions; use multidevs=remap")
REWORDED_FORBID = ("qemu-system-x86_64: 9p: multiple devices in one export: access denied "
                   "(multidevs=forbid)")


def test_a_reworded_message_still_counts_by_its_stable_parts() -> None:
    messages = find_multidevs_messages(f"{REWORDED_WARNING}\n{REWORDED_FORBID}\n")
    assert messages.warn == (REWORDED_WARNING,) and messages.forbid == (REWORDED_FORBID,)
    warn = judge(Mode.WARN, OLD, TRUTH, observe(TRUTH, passed_through), REWORDED_WARNING)
    assert warn.passed, warn.failures
    forbid = judge(Mode.FORBID, OLD, TRUTH, observe(TRUTH, forbidden), REWORDED_FORBID)
    assert forbid.passed, forbid.failures


@pytest.mark.parametrize("line", [REWORDED_WARNING, REWORDED_FORBID,
                                  "qemu: 9p: Multiple devices detected in the same export"])
def test_any_multi_device_line_fails_remap_and_a_control(line: str) -> None:
    remap = judge(Mode.REMAP, OLD, TRUTH, observe(TRUTH, remapped), line)
    assert remap.failures == (f"expected no multi-device message on QEMU stderr, found 1: "
                              f"{line!r}",)
    control = judge(Mode.WARN, OLD, CONTROL, observe(CONTROL, passed_through), line)
    assert control.status is Status.FAIL


WINDOW = Version(9, 2, 50)


@pytest.mark.parametrize("version", [Version(9, 2, 50), Version(9, 2, 99)])
def test_the_undecided_default_is_judged_by_what_the_guest_shows(version: Version) -> None:
    warn = judge(Mode.DEFAULT, version, TRUTH, observe(TRUTH, passed_through), WARNING, BROKEN)
    assert warn.passed, warn.failures
    assert "showed warn's behaviour" in warn.notes[0]
    assert warn.expectation.endswith("(undecided default: the guest showed warn's behaviour)")
    remap = judge(Mode.DEFAULT, version, TRUTH, observe(TRUTH, remapped), "", INTACT)
    assert remap.passed, remap.failures
    assert "showed remap's behaviour" in remap.notes[0]


def test_the_undecided_default_still_needs_one_behaviour_whole() -> None:
    # Collisions (warn's) without the warning, and a remap-like guest with a warning.
    half = judge(Mode.DEFAULT, WINDOW, TRUTH, observe(TRUTH, passed_through), "", INTACT)
    assert half.failures == (
        "expected the multi-device warning exactly once on QEMU stderr, found it 0 times",)
    other = judge(Mode.DEFAULT, WINDOW, TRUTH, observe(TRUTH, remapped), WARNING, INTACT)
    assert other.failures == ("expected at least one guest id collision (host inode numbers "
                              "repeat across 2 devices), found none",)


def test_outside_the_window_the_default_is_fixed() -> None:
    remap_like = judge(Mode.DEFAULT, Version(9, 2, 49), TRUTH, observe(TRUTH, remapped), "")
    assert remap_like.status is Status.FAIL
    warn_like = judge(Mode.DEFAULT, NEW, TRUTH, observe(TRUTH, passed_through), WARNING)
    assert warn_like.status is Status.FAIL
    assert not any("lies between" in note for note in warn_like.notes)


def test_a_name_readdir_lists_twice_fails() -> None:
    obs = observe(TRUTH, remapped)
    dirents = dict(obs.dirents)
    dirents["."] = (*dirents["."], dirents["."][0])
    verdict = judge(Mode.REMAP, OLD, TRUTH, GuestObservation(obs.passes, dirents, {}), "")
    name = dirents["."][0][0]
    assert verdict.failures == (f"readdir of '.' lists {name!r} 2 times",)


def test_a_guest_nlink_differing_from_the_host_fails_in_every_mode() -> None:
    for mode, view, stderr in ((Mode.REMAP, remapped, ""),
                               (Mode.WARN, passed_through, WARNING),
                               (Mode.FORBID, forbidden, FORBID_MESSAGE)):
        obs = observe(TRUTH, view)
        seen = obs.passes[0]["l1"]
        assert isinstance(seen, GuestStat)
        wrong = with_result(obs, "l1", GuestStat(GUEST_DEV, seen.ino, 1, FILE_MODE))
        verdict = judge(mode, OLD, TRUTH, wrong, stderr)
        assert "'l1' has st_nlink 1 in the guest, 2 on the host" in verdict.failures, mode


def test_warn_with_collisions_among_directories_only_fails() -> None:
    # Files keep apart (as under remap), only the device roots share an id.
    view = remapped(TRUTH)
    view["dev01"] = GuestStat(GUEST_DEV, view["."].ino, 2, DIR_MODE)  # type: ignore[union-attr]
    obs = GuestObservation((view, view), dirents_of(TRUTH, view), {})
    verdict = judge(Mode.WARN, OLD, TRUTH, obs, WARNING)
    assert verdict.failures == ("expected guest id collisions among regular files (their host "
                                "inode numbers repeat across devices), found them only among "
                                "directories",)
