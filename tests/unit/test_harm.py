"""Aliasing: the qid prediction, the harm probe's protocol, and every harm rule.

The fixture is the real export's twins on two devices (host dev 201 at "dev01", 202
at "dev02"): twin-same (same size and mtime: qids collide under warn), twin-mtime
(mtimes 4 s apart: no collision) and twin-dir (a different entry per device, same
mtime: collides, and so may everything below it).
"""

from __future__ import annotations

import errno

import pytest

from harness.agent.harm import FileSeen, HarmObservation, parse_harm_output, printf_command
from harness.agent.stat import GuestObservation, GuestResult, GuestStat
from harness.config import Cache, Mode
from harness.errors import GuestOutputError
from harness.host.truth import EntryKind, HostEntry, HostTruth
from harness.verdicts.common import Status
from harness.verdicts.harm import (
    HarmProbe,
    assess,
    harm_probe,
    harm_rules,
    predict,
    qid_version,
)
from harness.verdicts.ids import HarmInput, judge
from harness.verdicts.kernel import kernel_lines
from harness.version import Version

from .truths import host_dir, host_file

T = 1_700_000_000
MOUNT = "/mnt/mdh1"


def _device(n: int) -> list[HostEntry]:
    dev, rel = 200 + n, f"dev0{n}"
    return [
        host_dir(rel, dev, 1, n, mtime=T + 64 * (n + 1)),
        host_dir(f"{rel}/twin-dir", dev, 4, n, mtime=T),
        host_file(f"{rel}/twin-dir/only-d00{n}", dev, 5, n, mtime=T),
        host_file(f"{rel}/twin-mtime", dev, 3, n, mtime=T + 4 * n),
        host_file(f"{rel}/twin-same", dev, 2, n, mtime=T),
    ]


TRUTH = HostTruth((host_dir(".", 100, 1, 0, mtime=T), *_device(1), *_device(2)))
PROBE = HarmProbe(files=(("dev01/twin-same", "dev02/twin-same"),
                         ("dev01/twin-mtime", "dev02/twin-mtime")),
                  dirs=(("dev01/twin-dir", "dev02/twin-dir"),))
MAY_ALIAS = {"dev01/twin-same", "dev02/twin-same", "dev01/twin-dir", "dev02/twin-dir",
             "dev01/twin-dir/only-d001", "dev02/twin-dir/only-d002"}


def _intact() -> HarmObservation:
    """What a guest without aliasing shows: every file its own, the cwd unmoved."""
    files = {}
    for pair in PROBE.files:
        for path in pair:
            entry = TRUTH.by_path[path]
            files[path] = FileSeen(entry.content, entry.content, entry.mtime, 0)
    return HarmObservation(
        files=files,
        listed={"dev02/twin-dir": ("only-d002",)},
        cwd={"dev01/twin-dir": f"{MOUNT}/dev01/twin-dir"},
        cwd_listed={"dev01/twin-dir": ("only-d001",)},
        errors=(),
    )


def _aliased_same() -> HarmObservation:
    """dev02/twin-same served from dev01's inode: its bytes, its lock; the cwd moved."""
    seen = _intact()
    first = TRUTH.by_path["dev01/twin-same"]
    files = dict(seen.files)
    files["dev02/twin-same"] = FileSeen(first.content, first.content, first.mtime,
                                        errno.EWOULDBLOCK)
    return HarmObservation(files, seen.listed, {"dev01/twin-dir": f"{MOUNT}/dev02/twin-dir"},
                           {"dev01/twin-dir": ("only-d002",)}, ())


def _aliased_mtime() -> HarmObservation:
    """twin-mtime aliased although its qids differ: outside the prediction."""
    seen = _intact()
    first = TRUTH.by_path["dev01/twin-mtime"]
    files = dict(seen.files)
    files["dev02/twin-mtime"] = FileSeen(first.content, first.content, first.mtime, 0)
    return HarmObservation(files, seen.listed, seen.cwd, seen.cwd_listed, ())


def test_qid_version_is_mtime_xor_size_shifted() -> None:
    assert qid_version(T, 16) == T ^ (16 << 8)
    assert qid_version(T, 1 << 40) == T & 0xFFFFFFFF  # cut to QEMU's 32 bits


def test_prediction_under_warn_is_the_colliding_twins_and_below() -> None:
    prediction = predict(TRUTH, remapped=False)
    assert prediction.may_alias == MAY_ALIAS
    assert sorted(map(sorted, prediction.colliding)) == [
        ["dev01/twin-dir", "dev02/twin-dir"],
        ["dev01/twin-dir/only-d001", "dev02/twin-dir/only-d002"],
        ["dev01/twin-same", "dev02/twin-same"],
    ]


def test_prediction_under_remap_is_empty() -> None:
    assert predict(TRUTH, remapped=True).may_alias == frozenset()


def test_probe_pairs_devices_one_and_two() -> None:
    assert harm_probe([".", "dev01", "dev02", "dev01/nested"]) == PROBE
    two = harm_probe([".", "dev01"])
    assert two is not None and two.files[0] == ("twin-same", "dev01/twin-same")
    assert harm_probe(["."]) is None


def test_assess_names_how_each_path_aliased() -> None:
    harm = assess(TRUTH, PROBE, _aliased_same(), MOUNT, predict(TRUTH, False))
    described = {(a.path, a.how, a.source) for a in harm.aliased}
    assert described == {
        ("dev02/twin-same", "content", "dev01/twin-same"),
        ("dev02/twin-same", "mapped bytes", "dev01/twin-same"),
        ("dev02/twin-same", "lock identity", "dev01/twin-same"),
        ("dev01/twin-dir", "cwd listing", "dev02/twin-dir"),
    }
    assert harm.cwd_moved is True and "dev02/twin-dir" in harm.cwd_detail


def _rules(seen: HarmObservation, unique: bool, cache: Cache) -> tuple[list[str], list[str]]:
    return harm_rules(assess(TRUTH, PROBE, seen, MOUNT, predict(TRUTH, unique)), unique, cache)


@pytest.mark.parametrize("cache", list(Cache))
def test_nothing_aliased_passes_in_every_mode_and_cache(cache: Cache) -> None:
    for unique in (True, False):
        failures, _ = _rules(_intact(), unique, cache)
        assert failures == []


@pytest.mark.parametrize("cache", list(Cache))
def test_aliasing_under_remap_fails_in_every_cache_mode(cache: Cache) -> None:
    failures, notes = _rules(_aliased_same(), True, cache)
    assert any("'dev02/twin-same': content from 'dev01/twin-same'" in f for f in failures)
    assert any(f.startswith("cwd moved (under remap") for f in failures)
    assert notes == []


@pytest.mark.parametrize("cache", [Cache.NONE, Cache.MMAP])
def test_aliasing_under_warn_without_an_inode_cache_fails(cache: Cache) -> None:
    failures, _ = _rules(_aliased_same(), False, cache)
    assert any("6.9-6.11.5" in f and "lock identity" in f for f in failures)
    assert any(f.startswith("cwd moved") for f in failures)


@pytest.mark.parametrize("cache", [Cache.LOOSE, Cache.FSCACHE])
def test_predicted_aliasing_under_warn_with_an_inode_cache_is_recorded(cache: Cache) -> None:
    failures, notes = _rules(_aliased_same(), False, cache)
    assert failures == []
    assert any(n.startswith("predicted harm: 'dev02/twin-same': content") for n in notes)
    assert any(n.startswith("predicted harm: cwd moved") for n in notes)


def test_predicted_aliasing_that_does_not_show_is_noted_not_failed() -> None:
    failures, notes = _rules(_intact(), False, Cache.LOOSE)
    assert failures == [] and notes == ["predicted aliasing of 4 probed paths did not show"]


def test_aliasing_outside_the_prediction_fails() -> None:
    failures, _ = _rules(_aliased_mtime(), False, Cache.LOOSE)
    assert failures and all("outside the prediction: 'dev02/twin-mtime'" in f for f in failures)


def test_an_access_error_outside_the_prediction_fails() -> None:
    seen = _intact()
    eloop = HarmObservation(seen.files, seen.listed, seen.cwd, seen.cwd_listed,
                            (("dev02/twin-mtime", "open", errno.ELOOP),))
    failures, _ = _rules(eloop, False, Cache.LOOSE)
    assert failures == ["open of 'dev02/twin-mtime' failed: errno 40 (ELOOP)"]


WARNING = "qemu: warning: 9p: Multiple devices detected in same VirtFS export, which " \
    "might lead to file ID collisions"


def _stats(truth: HostTruth) -> dict[str, GuestResult]:
    """Every path stat-able with its host inode number on one guest device (warn)."""
    return {e.path: GuestStat(50, e.ino, e.nlink, 0o040755 if e.kind is EntryKind.DIR
                              else 0o100644) for e in truth.entries}


def _judge(seen: HarmObservation, mode: Mode, cache: Cache, dmesg: str = "") -> Status:
    stats = _stats(TRUTH)
    observation = GuestObservation((stats, stats), {}, {})
    verdict = judge(mode, Version(9, 2, 0), TRUTH, observation,
                    WARNING if mode is Mode.WARN else "",
                    harm=HarmInput(PROBE, seen, MOUNT, cache), dmesg=dmesg)
    return verdict.status


def test_a_kernel_warning_in_dmesg_fails_the_row() -> None:
    assert _judge(_intact(), Mode.WARN, Cache.LOOSE) is Status.PASS
    trouble = "[   3.1] 9p: x\n[   3.2] WARNING: CPU: 0 PID: 1 at fs/inode.c:1 iput+0x1\n"
    assert _judge(_intact(), Mode.WARN, Cache.LOOSE, trouble) is Status.FAIL


def test_the_verdicts_apply_the_harm_rules_per_mode_and_cache() -> None:
    assert _judge(_aliased_same(), Mode.WARN, Cache.LOOSE) is Status.PASS
    assert _judge(_aliased_same(), Mode.WARN, Cache.NONE) is Status.FAIL


def test_kernel_lines_keep_9p_netfs_fscache_vfs_and_trouble() -> None:
    kept, trouble = kernel_lines("[ 1.5] FS-Cache: Duplicate cookie detected\n"
                                 "[ 1.6] virtio_net: up\n<4>[ 2.0] BUG: kernel NULL pointer\n"
                                 "[ 0.1] Kernel command line: mdh_9p=mdh0:/mnt/mdh0\n")
    assert kept == ("FS-Cache: Duplicate cookie detected", "BUG: kernel NULL pointer")
    assert trouble == ("BUG: kernel NULL pointer",)


PATHS = ("d1/f", "d2/f", "d1/d", "d2/d")
OUTPUT = (
    "C 0 6869\nT 0 5\nM 0 6869\nL 0 0\n"
    "C 1 6869\nT 1 5\nM 1 6869\nL 1 11\n"
    "N 3 79\nW 2 2f6d2f6431\nP 2 78\nX 3 readdir 5\nEND 4\n"
)


def test_parse_harm_output() -> None:
    seen = parse_harm_output(OUTPUT, PATHS)
    assert seen.files["d2/f"] == FileSeen(b"hi", b"hi", 5, 11)
    assert seen.listed == {"d2/d": ("y",)} and seen.cwd_listed == {"d1/d": ("x",)}
    assert seen.cwd == {"d1/d": "/m/d1"} and seen.errors == (("d2/d", "readdir", 5),)


@pytest.mark.parametrize("bad, reason", [
    (OUTPUT.replace("END 4\n", ""), "without an END"),
    (OUTPUT.replace("L 1 11", "L 1 11\nL 1 0"), "second L record"),
    (OUTPUT.replace("X 3 readdir 5", "X 3 unlink 5"), "unknown operation"),
    (OUTPUT.replace("N 3 79", "N 3 2f"), "invalid directory entry"),
    (OUTPUT.replace("C 0 6869", "C 9 6869"), "out of range"),
    (OUTPUT.replace("T 0 5", "T 0 x"), "not a decimal"),
])
def test_parse_harm_output_is_strict(bad: str, reason: str) -> None:
    with pytest.raises(GuestOutputError, match=reason):
        parse_harm_output(bad, PATHS)


def test_printf_command_spells_out_every_unsafe_byte() -> None:
    assert printf_command(b"dev01/twin-same\0a b'\n") == \
        "printf 'dev01/twin-same\\000a\\040b\\047\\012'"


def test_reproduce_text_names_the_aliased_paths_and_the_commands() -> None:
    from harness.commands.reproduce import harm_text

    verdict = judge(Mode.WARN, Version(9, 2, 0), TRUTH, GuestObservation(({}, {}), {}, {}), "",
                    harm=HarmInput(PROBE, _aliased_same(), MOUNT, Cache.LOOSE))
    text = harm_text(verdict)
    assert "'dev02/twin-same': lock identity from 'dev01/twin-same'" in text
    assert "cwd moved from 'dev01/twin-dir'" in text
    assert "cd dev01/twin-dir; ls ../../dev02/twin-dir; readlink /proc/self/cwd" in text


# --- the loop layout: a mount point that shares its parent's qid ----------------------

LOOP = HostTruth((host_dir(".", 100, 1, 0, mtime=T), host_dir("dev01", 200, 1, 1, mtime=T),
                  host_file("dev01/f", 200, 2, 1, mtime=T)))
LOOP_PROBE = HarmProbe(files=(), dirs=((".", "dev01"),))


def test_loop_probe_holds_the_root_and_lists_the_mount_point() -> None:
    assert harm_probe([".", "dev01"], loop=True) == LOOP_PROBE
    assert predict(LOOP, remapped=False).colliding == ((".", "dev01"),)


def _judge_loop(mode: Mode, cache: Cache, eloop: bool,
                code: int = errno.ELOOP) -> tuple[Status, tuple[str, ...]]:
    """6.12 with an inode cache: everything under dev01 gives ELOOP (``code``; or,
    ``eloop`` False, every path stats as QEMU passed it through)."""
    stats = _stats(LOOP)
    errors: tuple[tuple[str, str, int], ...] = ()
    if eloop:
        stats.update({"dev01": code, "dev01/f": code})
        errors = (("dev01", "opendir", code),)
    seen = HarmObservation({}, {} if eloop else {"dev01": ("f",)}, {".": MOUNT},
                           {".": ("dev01",)}, errors)
    verdict = judge(mode, Version(9, 2, 0), LOOP, GuestObservation((stats, stats), {}, {}),
                    WARNING if mode is Mode.WARN else "",
                    harm=HarmInput(LOOP_PROBE, seen, MOUNT, cache))
    return verdict.status, verdict.failures + verdict.notes


def test_eloop_is_the_predicted_harm_of_warn_with_an_inode_cache() -> None:
    status, lines = _judge_loop(Mode.WARN, Cache.LOOSE, eloop=True)
    assert status is Status.PASS, lines
    assert "predicted harm: 'dev01/f' is not stat-able: errno 40 (ELOOP)" in lines
    # No collision could be seen (dev01 is unreachable): the ELOOP stands for it.
    assert not any("expected at least one guest id collision" in line for line in lines)
    assert _judge_loop(Mode.WARN, Cache.LOOSE, eloop=False)[0] is Status.PASS


def test_eloop_fails_without_an_inode_cache_and_under_remap() -> None:
    status, lines = _judge_loop(Mode.WARN, Cache.NONE, eloop=True)
    assert status is Status.FAIL
    assert "'dev01/f' is not stat-able in the guest: errno 40 (ELOOP)" in lines
    status, lines = _judge_loop(Mode.REMAP, Cache.LOOSE, eloop=True)
    assert status is Status.FAIL
    assert "opendir of 'dev01' failed: errno 40 (ELOOP)" in lines


@pytest.mark.parametrize("code", [errno.EIO, errno.ESTALE, errno.ENOENT])
def test_only_eloop_is_the_predicted_harm_of_an_unreachable_device(code: int) -> None:
    # The whole foreign device failing with another errno is not what the kernel is
    # known to do for a collision: it fails, in the stat pass and in the probe.
    status, lines = _judge_loop(Mode.WARN, Cache.LOOSE, eloop=True, code=code)
    assert status is Status.FAIL
    name = errno.errorcode[code]
    assert f"'dev01/f' is not stat-able in the guest: errno {code} ({name})" in lines
    assert f"opendir of 'dev01' failed: errno {code} ({name})" in lines
    # And with nothing reachable, no collision stands in for the one warn promises.
    assert any("expected at least one guest id collision" in line for line in lines)


def _with_error(path: str, code: int) -> HarmObservation:
    seen = _intact()
    return HarmObservation(seen.files, seen.listed, seen.cwd, seen.cwd_listed,
                           ((path, "open", code),))


def test_on_a_predicted_twin_only_eloop_is_predicted_harm() -> None:
    twin = "dev02/twin-same"  # its qid collides with dev01's: the prediction covers it
    failures, notes = _rules(_with_error(twin, errno.ELOOP), False, Cache.LOOSE)
    assert failures == [] and f"open of {twin!r} failed: errno 40 (ELOOP)" in notes
    for code in (errno.EIO, errno.ESTALE):
        failures, _ = _rules(_with_error(twin, code), False, Cache.LOOSE)
        assert failures == [f"open of {twin!r} failed: errno {code} "
                            f"({errno.errorcode[code]})"]
