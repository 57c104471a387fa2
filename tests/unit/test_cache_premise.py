"""The cache premise (the guest mounted the export with the cache mode asked for) and
the probe-power rule over several rows."""

from __future__ import annotations

import errno

import pytest

from harness.agent.mounts import MountedCache, mounted_cache, proc_mounts_options
from harness.config import Cache, Check, Layout, Mode
from harness.verdicts.cache import (
    PowerFacts,
    cache_premise,
    predicted_harm_shown,
    probe_power,
    with_premise,
)
from harness.verdicts.common import Expectation, Status, Verdict
from harness.verdicts.harm import Aliased, Harm

# /proc/mounts lines as the guests printed them (QEMU 7.2, one export per mode).
LINUX_6_1 = """\
mdh0 /mnt/tnone 9p rw,sync,dirsync,relatime,access=client,trans=virtio 0 0
mdh1 /mnt/tmmap 9p rw,dirsync,relatime,mmap,access=client,trans=virtio 0 0
mdh2 /mnt/tloose 9p rw,dirsync,relatime,loose,access=client,trans=virtio 0 0
mdh3 /mnt/tfscache 9p rw,dirsync,relatime,fscache,access=client,trans=virtio 0 0
"""
LINUX_6_12 = """\
mdh0 /mnt/tnone 9p rw,relatime,access=client,trans=virtio 0 0
mdh1 /mnt/tmmap 9p rw,relatime,cache=0x5,access=client,trans=virtio 0 0
mdh2 /mnt/tloose 9p rw,relatime,cache=0xf,access=client,trans=virtio 0 0
mdh3 /mnt/tfscache 9p rw,relatime,cache=0x8f,access=client,trans=virtio 0 0
"""


@pytest.mark.parametrize("text", [LINUX_6_1, LINUX_6_12])
@pytest.mark.parametrize("cache", list(Cache))
def test_both_kernels_spellings_read_back(text: str, cache: Cache) -> None:
    fstype, options = proc_mounts_options(text)[f"/mnt/t{cache.value}"]
    assert fstype == "9p"
    assert mounted_cache(options).cache is cache
    assert cache_premise(cache, mounted_cache(options)) is None


def test_another_mode_fails_the_premise() -> None:
    options = proc_mounts_options(LINUX_6_12)["/mnt/tmmap"][1]
    failure = cache_premise(Cache.LOOSE, mounted_cache(options))
    assert failure is not None
    assert "cache=loose was asked" in failure and "'cache=0x5' (mmap)" in failure


@pytest.mark.parametrize("options,spelling", [
    ("rw,cache=0x1,trans=virtio", "cache=0x1"),  # readahead: not a mode the harness asks
    ("rw,cache=0xzz", "cache=0xzz"),
    ("rw,cache=bogus", "cache=bogus"),
])
def test_unknown_modes_fail_every_premise(options: str, spelling: str) -> None:
    seen = mounted_cache(options)
    assert seen == MountedCache(None, spelling)
    for cache in Cache:
        failure = cache_premise(cache, seen)
        assert failure is not None and "does not ask for" in failure


def test_the_name_spelling_and_no_option_are_read() -> None:
    assert mounted_cache("rw,cache=loose").cache is Cache.LOOSE
    assert mounted_cache("rw,relatime") == MountedCache(Cache.NONE, "no cache option")
    # A none that came back loose fails the premise too.
    assert cache_premise(Cache.NONE, mounted_cache("rw,loose")) is not None


def test_an_unmounted_export_fails_the_premise() -> None:
    failure = cache_premise(Cache.NONE, None)
    assert failure is not None and "not in the guest's /proc/mounts" in failure


def test_escaped_mount_points_and_later_mounts() -> None:
    text = ("a /mnt/with\\040space 9p rw,loose 0 0\n"
            "b /mnt/x 9p rw,loose 0 0\nc /mnt/x tmpfs rw 0 0\n")
    found = proc_mounts_options(text)
    assert found["/mnt/with space"] == ("9p", "rw,loose")
    assert found["/mnt/x"] == ("tmpfs", "rw")  # the later mount hides the earlier one


def _verdict(status: Status, failures: tuple[str, ...] = ()) -> Verdict:
    return Verdict(expectation="e", observed="o", status=status, failures=failures,
                   notes=("n",))


@pytest.mark.parametrize("status", [Status.PASS, Status.FAIL, Status.INCONCLUSIVE])
def test_a_failed_premise_makes_the_row_inconclusive(status: Status) -> None:
    failures = ("x failed",) if status is Status.FAIL else ()
    judged = with_premise(_verdict(status, failures), "premise failed: why")
    assert judged.status is Status.INCONCLUSIVE
    assert judged.failures == ("premise failed: why",)
    assert judged.notes == ("n", *(f"not judged (premise failed): {f}" for f in failures))


def test_a_held_premise_or_an_error_is_left_alone() -> None:
    passed = _verdict(Status.PASS)
    assert with_premise(passed, None) is passed
    error = _verdict(Status.ERROR, ("no boot",))
    assert with_premise(error, "premise failed: why") is error


PROBED = ("dev01/twin-same", "dev02/twin-same", "dev01/twin-dir", "dev02/twin-dir")


def _harm(aliased: tuple[Aliased, ...] = (), cwd_moved: bool = False,
          errors: tuple[tuple[str, str, int], ...] = (),
          predicted: tuple[str, ...] = PROBED) -> Harm:
    return Harm(PROBED, aliased, cwd_moved, "", errors, predicted)


SHOWN = _harm((Aliased("dev02/twin-same", "content", "dev01/twin-same"),))


def test_predicted_harm_shown() -> None:
    assert predicted_harm_shown(SHOWN)
    assert predicted_harm_shown(_harm(cwd_moved=True))
    assert predicted_harm_shown(_harm(errors=(("dev01/twin-dir", "chdir", errno.ELOOP),)))
    assert not predicted_harm_shown(_harm())
    # Harm outside the prediction, or another errno, is not the predicted harm.
    assert not predicted_harm_shown(_harm(SHOWN.aliased, predicted=("dev01/twin-dir",)))
    assert not predicted_harm_shown(_harm(errors=(("dev01/twin-dir", "chdir", errno.EIO),)))
    assert not predicted_harm_shown(_harm(cwd_moved=True, predicted=("dev01/twin-same",)))


def _row(mode: Mode, harm: Harm | None, status: Status = Status.PASS,
         cache: Cache = Cache.LOOSE, layout: Layout = Layout.STANDARD,
         group: str = "g") -> PowerFacts:
    unique = mode is Mode.REMAP
    return PowerFacts(group, Check.IDS, mode,
                      Expectation.UNIQUE_IDS if unique else Expectation.COLLIDE_AND_WARN,
                      cache, layout, status, harm)


def test_remap_loose_beside_a_warn_loose_that_showed_harm_is_noted() -> None:
    found = probe_power([_row(Mode.REMAP, _harm()), _row(Mode.WARN, SHOWN)])
    assert found[1] is None
    assert found[0] is not None and not found[0].inconclusive
    assert "power is shown" in found[0].text


def test_remap_loose_beside_a_warn_loose_without_harm_is_inconclusive() -> None:
    found = probe_power([_row(Mode.REMAP, _harm()), _row(Mode.WARN, _harm())])
    assert found[0] is not None and found[0].inconclusive
    assert "lost its power" in found[0].text


def test_remap_loose_alone_says_it_cannot_prove_its_power() -> None:
    for rows in ([_row(Mode.REMAP, _harm())],
                 # another QEMU's, another layout's or another cache mode's warn row
                 [_row(Mode.REMAP, _harm()), _row(Mode.WARN, SHOWN, group="other")],
                 [_row(Mode.REMAP, _harm()), _row(Mode.WARN, SHOWN, layout=Layout.LOOP)],
                 [_row(Mode.REMAP, _harm()), _row(Mode.WARN, SHOWN, cache=Cache.FSCACHE)],
                 [_row(Mode.REMAP, _harm()), _row(Mode.WARN, None, Status.ERROR)]):
        found = probe_power(rows)[0]
        assert found is not None and not found.inconclusive, rows
        assert "power is not shown" in found.text


def test_the_rule_leaves_other_rows_alone() -> None:
    rows = [_row(Mode.REMAP, _harm(), cache=Cache.NONE),  # no inode cache
            _row(Mode.REMAP, None),  # no probe (a layout without twins)
            _row(Mode.REMAP, _harm(), Status.FAIL),  # it found harm: power shown
            _row(Mode.WARN, _harm())]
    assert probe_power(rows) == (None, None, None, None)
