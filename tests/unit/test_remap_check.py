"""The remap model held against a guest (``verdicts.remap``) and inside the ids verdict.

Numbers worked by hand from QEMU's hw/9pfs/9p.c (see tests/unit/test_remap_model.py):
the first device QEMU sees gets a 1-bit key and affix 1 (qid path = ino << 1 | 1);
the next key gets affix index 2 (3 bits, value 2: ino << 3 | 2).  The guest's st_ino
is qid path + 2 (Linux's v9fs_qid2ino on a 64-bit ino_t).
"""

from __future__ import annotations

from dataclasses import replace

from harness.agent.stat import GuestObservation, GuestResult, GuestStat
from harness.config import Layout, Mode
from harness.host.truth import EntryKind, HostEntry, HostTruth, scripted_content
from harness.verdicts.common import Status
from harness.verdicts.ids import judge
from harness.verdicts.remap import (
    FULLMAP_WARNING,
    check_remap,
    first_sight,
    fullmap_warning_failures,
)
from harness.version import Version

DIR, FILE = 0o040755, 0o100644
L1, L2, L3 = 1 << 62, 1 << 63, (1 << 63) | (1 << 62)
QEMU = Version(7, 2, 22)


def _overlay() -> HostTruth:
    """One st_dev (an overlay), xino layer bits in the top of the lower layers' inodes."""
    def d(path: str, ino: int) -> HostEntry:
        return HostEntry(path, 47, ino, 2, EntryKind.DIR, 0)

    def f(path: str, ino: int) -> HostEntry:
        return HostEntry(path, 47, ino, 1, EntryKind.FILE, 0, path.encode(), size=2)

    return HostTruth((d(".", 1), d("l1", L1 + 1), f("l1/f0", L1 + 2), d("l2", L2 + 1),
                      f("l2/f0", L2 + 2), d("l3", L3 + 1), f("l3/f0", L3 + 2)))


def _guest(truth: HostTruth, inos: dict[str, int]) -> dict[str, GuestResult]:
    return {e.path: GuestStat(9, inos[e.path], e.nlink, DIR if e.kind is EntryKind.DIR else FILE)
            for e in truth.entries}


# Worked by hand: "." (ino 1) is seen first: 1-bit key 0, affix 1 -> 1<<1|1 = 3.
# l1 (bit 62 set, bit 63 clear): key 0 again -> (2^62+1)<<1|1 (bit 63 of the path).
# l2: key 1 (bit 63), new: affix index 2, 3 bits, value 2 -> (2^63+1)<<3|2 mod 2^64 = 10.
# l3 (bits 63, 62): key 1 too -> same shift, bit 62 dropped -> 10: l2 and l3 collide;
# their files: (…+2)<<3|2 = 18 for both.  Guest st_ino = path + 2.
MODEL_INOS = {".": 5, "l1": ((L1 + 1) << 1 | 1) + 2, "l1/f0": ((L1 + 2) << 1 | 1) + 2,
              "l2": 12, "l2/f0": 20, "l3": 12, "l3/f0": 20}


def test_first_sight_is_root_then_probe_then_truth_order() -> None:
    truth = _overlay()
    assert first_sight(truth, ["l3/f0"]) == [".", "l3", "l3/f0", "l1", "l1/f0", "l2",
                                             "l2/f0"]


def test_guest_that_runs_the_modelled_algorithm_agrees_and_collisions_are_explained() -> None:
    truth = _overlay()
    check = check_remap(truth, _guest(truth, MODEL_INOS))
    assert check.agrees and check.compared == 7 and check.differences == ()
    assert {p.paths for p in check.predicted} == {("l2", "l3"), ("l2/f0", "l3/f0")}
    why = next(p.why for p in check.predicted if p.paths == ("l2/f0", "l3/f0"))
    assert why.startswith("bits 62-61 dropped: key (dev 0x2f, prefix 0x1) looks at inode "
                          "bit 63, its affix (index 2) is 3 bits wide")


def test_guest_that_differs_from_the_model_says_where() -> None:
    truth = _overlay()
    unique = dict(MODEL_INOS, **{"l3/f0": 21, "l3": 13})
    check = check_remap(truth, _guest(truth, unique))
    assert not check.agrees
    assert check.differences == ("'l3': guest ino 0xd, model 0xc",
                                 "'l3/f0': guest ino 0x15, model 0x14")


def _observation(truth: HostTruth, inos: dict[str, int]) -> GuestObservation:
    first = _guest(truth, inos)
    return GuestObservation((first, first), {}, {})


def test_remap_row_on_the_overlay_fails_with_the_models_explanation() -> None:
    truth = _overlay()
    verdict = judge(Mode.REMAP, QEMU, truth, _observation(truth, MODEL_INOS), "")
    assert verdict.status is Status.FAIL
    assert verdict.remap is not None and verdict.remap.agrees
    assert any(line.startswith("collision: guest id (dev 9, ino 20) is shared by 'l2/f0'")
               for line in verdict.failures), verdict.failures
    assert any(line.startswith("remap model: 'l2/f0', 'l3/f0' share one qid: bits 62-61")
               for line in verdict.failures), verdict.failures
    assert any(note.startswith("remap model: the guest's ids equal the model's at all 7")
               for note in verdict.notes)


def test_warn_on_the_overlay_passes_host_numbers_through_and_has_no_model() -> None:
    truth = _overlay()
    host = {e.path: e.ino + 2 for e in truth.entries}
    verdict = judge(Mode.WARN, QEMU, truth, _observation(truth, host), "")
    assert verdict.status is Status.PASS, verdict.failures
    assert verdict.remap is None


def test_a_remap_guest_that_keeps_files_apart_passes_but_notes_it_is_not_the_model() -> None:
    truth = _overlay()
    fixed = dict(MODEL_INOS, **{"l3/f0": 21, "l3": 13})
    verdict = judge(Mode.REMAP, QEMU, truth, _observation(truth, fixed), "")
    assert verdict.status is Status.PASS, verdict.failures
    assert any("differ from the model's at 2 of 7 paths" in note for note in verdict.notes)


def test_the_note_counts_every_differing_path_not_the_lines_it_shows() -> None:
    # Seven differ; five are listed and a sixth line counts the rest: the note must
    # say 7 (it said 6, the number of lines).
    truth = _overlay()
    shifted = {path: ino + 100 for path, ino in MODEL_INOS.items()}
    verdict = judge(Mode.REMAP, QEMU, truth, _observation(truth, shifted), "")
    assert verdict.remap is not None and len(verdict.remap.differences) == 6
    assert verdict.remap.differences[-1] == "... and 2 more"
    assert any("differ from the model's at 7 of 7 paths" in note for note in verdict.notes), \
        verdict.notes


def test_the_fullmap_warning_is_expected_exactly_where_the_model_overflows() -> None:
    truth = _overlay()
    check = check_remap(truth, _guest(truth, MODEL_INOS))
    line = f"qemu-system-x86_64: warning: 9p: {FULLMAP_WARNING}"
    assert not check.fullmap_reached
    assert fullmap_warning_failures(check, "") == []
    assert fullmap_warning_failures(check, line) == [
        f"unexpected {FULLMAP_WARNING!r} on QEMU stderr: the model's remap table never "
        "overflows here"]
    assert fullmap_warning_failures(None, line) != []


def test_the_fullmap_warning_must_show_once_where_the_table_overflows() -> None:
    truth = _overlay()
    check = replace(check_remap(truth, _guest(truth, MODEL_INOS)), fullmap_reached=True)
    line = f"qemu-system-x86_64: warning: 9p: {FULLMAP_WARNING}"
    assert fullmap_warning_failures(check, line) == []
    assert fullmap_warning_failures(check, "") == [
        f"expected QEMU's {FULLMAP_WARNING!r} warning once (the model's remap table "
        "overflows into the full map), found it 0 times"]


WARNING = ("qemu-system-x86_64: warning: 9p: Multiple devices detected in same VirtFS "
           "export, which might lead to file ID collisions and severe misbehaviours on "
           "guest! You should either use a separate export for each device shared from "
           "host or use virtfs option 'multidevs=remap'!")


def _two_devices() -> HostTruth:
    """Numbers chosen so nothing repeats across the two devices (as the scripted
    layout chooses them)."""
    return HostTruth((
        HostEntry(".", 40, 1, 3, EntryKind.DIR, 0),
        HostEntry("a", 40, 7, 1, EntryKind.FILE, 0, scripted_content("a", 7), size=1),
        HostEntry("dev01", 41, 2, 2, EntryKind.DIR, 1),
        HostEntry("dev01/b", 41, 8, 1, EntryKind.FILE, 1, scripted_content("dev01/b", 8),
                  size=1)))


def test_warn_expects_collisions_exactly_where_host_numbers_repeat() -> None:
    truth = _two_devices()
    host = {e.path: e.ino + 2 for e in truth.entries}
    verdict = judge(Mode.WARN, QEMU, truth, _observation(truth, host), WARNING,
                    layout=Layout.SCRIPTED)
    assert verdict.status is Status.PASS, verdict.failures  # nothing repeats: none expected
    merged = dict(host, **{"dev01/b": host["a"]})  # two different numbers made one
    verdict = judge(Mode.WARN, QEMU, truth, _observation(truth, merged), WARNING,
                    layout=Layout.SCRIPTED)
    assert verdict.status is Status.FAIL
    assert verdict.failures[0].startswith(
        "collision of files with different host inode numbers: guest id (dev 9, ino 9)")


def test_a_layout_premise_that_fails_makes_the_row_inconclusive() -> None:
    truth = _two_devices()  # no inode number with the overlay's top bits
    host = {e.path: e.ino + 2 for e in truth.entries}
    verdict = judge(Mode.WARN, QEMU, truth, _observation(truth, host), WARNING,
                    layout=Layout.OVERLAY_MIXED)
    assert verdict.status is Status.INCONCLUSIVE
    assert verdict.failures[0].startswith("premise failed: ")


def test_the_fullmap_warning_printed_for_an_earlier_export_is_not_expected_again() -> None:
    # Each export is a 9p device with its own remap table, but QEMU warns once per
    # process: the second export whose table overflows shows nothing (stock QEMU 7.2's
    # remap+loose@scripted-fullmap failed "found it 0 times" before this was passed).
    truth = _overlay()
    check = replace(check_remap(truth, _guest(truth, MODEL_INOS)), fullmap_reached=True)
    line = f"qemu-system-x86_64: warning: 9p: {FULLMAP_WARNING}"
    assert fullmap_warning_failures(check, "", printed_before=True) == []
    assert fullmap_warning_failures(check, line, printed_before=True) == [
        f"QEMU's {FULLMAP_WARNING!r} warning again, 1 times: it prints it once per "
        "process, and did for an earlier export"]
