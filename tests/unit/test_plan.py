"""Which guests a run boots, with which exports, and the order of the result rows."""

from __future__ import annotations

import pytest

from harness.checks.registry import FAMILIES, RULES
from harness.cli.options import CHECKS
from harness.config import (
    ALL_CHECKS,
    ALL_MODES,
    Cache,
    Check,
    Layout,
    Mode,
    RowKey,
    Transport,
    Via,
)
from harness.errors import UsageError
from harness.host.layout import ExportLayout
from harness.plan import (
    DEFAULT_CHECKS,
    apply_checks,
    checks_for,
    plan_guests,
    row_rank,
)
from harness.pool import _outside
from harness.version import Version

LAYOUT = ExportLayout(devices=3, files_per_device=8)


def _shape(modes: tuple[Mode, ...], control: bool = True, share: bool = True,
           layout: ExportLayout = LAYOUT) -> list[tuple[str, list[str]]]:
    return [(g.name, [e.row for e in g.exports])
            for g in plan_guests(modes, layout, control, share)]


def test_default_matrix_boots_two_guests() -> None:
    assert _shape(ALL_MODES) == [
        ("remap+forbid+warn", ["remap", "forbid", "warn"]),
        ("control+default", ["control-remap", "control-warn", "control-forbid",
                             "control-default", "default"]),
    ]


def test_warn_and_default_never_share_a_qemu() -> None:
    # Before QEMU 10 both print the same warning, once per process.
    for guest in plan_guests(ALL_MODES, LAYOUT, control=True):
        modes = {e.mode for e in guest.exports if e.layout.devices > 1}
        assert not {Mode.WARN, Mode.DEFAULT} <= modes, guest.name


def test_isolate_gives_every_mode_its_own_guest() -> None:
    assert _shape(ALL_MODES, share=False) == [
        ("remap", ["remap"]), ("warn", ["warn"]), ("forbid", ["forbid"]),
        ("default", ["default"]),
        ("control", ["control-remap", "control-warn", "control-forbid", "control-default"]),
    ]


def test_control_exports_are_single_device_and_capped() -> None:
    layout = ExportLayout(devices=5, files_per_device=1000)
    (control,) = [g for g in plan_guests((Mode.WARN,), layout, True) if g.name == "control"]
    assert [(e.layout.devices, e.layout.files_per_device) for e in control.exports] == [(1, 64)]


def test_no_control_and_single_device_runs() -> None:
    assert _shape((Mode.REMAP, Mode.DEFAULT), control=False) == [
        ("remap", ["remap"]), ("default", ["default"])]
    # One device is the control itself: no separate control guest.
    assert _shape((Mode.WARN,), layout=ExportLayout(devices=1)) == [("warn", ["warn"])]


def test_rows_sort_by_mode_asked_then_controls_then_the_rest() -> None:
    rank = row_rank(RULES, (Mode.WARN, Mode.REMAP))
    rows = ["reject-x", "control-remap", "remap", "control-warn", "warn"]
    assert sorted(rows, key=lambda r: rank.get(r, len(rank))) == [
        "warn", "remap", "control-warn", "control-remap", "reject-x"]


def test_stderr_outside_every_slice_is_everything_else() -> None:
    text = "boot\nA1\nmid\nB1\nshutdown\n"
    first, second = slice(5, 8), slice(12, 15)
    assert (text[first], text[second]) == ("A1\n", "B1\n")
    assert _outside(text, [second, first]) == "boot\n\nmid\n\nshutdown\n"
    assert _outside(text, []) == text


def test_each_mode_gets_a_device_per_cache_mode_in_its_guest() -> None:
    plans = plan_guests(ALL_MODES, LAYOUT, True, caches=(Cache.NONE, Cache.LOOSE))
    assert [(g.name, [e.row for e in g.exports]) for g in plans] == [
        ("remap+forbid+warn", ["remap", "remap+loose", "forbid", "forbid+loose", "warn",
                               "warn+loose"]),
        ("control+default", ["control-remap", "control-warn", "control-forbid",
                             "control-default", "default", "default+loose"]),
    ]
    exports = {e.row: e for g in plans for e in g.exports}
    assert exports["warn+loose"].cache == "loose" and exports["warn"].cache == "none"
    # QEMU prints each message once per process: only the first of a mode can show it.
    assert [r for r, e in exports.items() if e.message_printed] == [
        "remap+loose", "forbid+loose", "warn+loose", "default+loose"]
    assert all(e.cache == "none" for r, e in exports.items() if r.startswith("control-"))


def test_isolated_modes_keep_their_cache_devices_together() -> None:
    plans = plan_guests((Mode.WARN,), LAYOUT, False, share=False,
                        caches=(Cache.LOOSE, Cache.NONE))
    assert [(g.name, [(e.row, e.message_printed) for e in g.exports]) for g in plans] == [
        ("warn", [("warn+loose", False), ("warn", True)])]


def test_rows_sort_by_mode_then_cache_as_asked() -> None:
    rank = row_rank(RULES, (Mode.WARN, Mode.REMAP), (Cache.LOOSE, Cache.NONE))
    rows = ["control-warn", "remap", "warn", "remap+loose", "warn+loose"]
    assert sorted(rows, key=lambda r: rank.get(r, len(rank))) == [
        "warn+loose", "warn", "remap+loose", "remap", "control-warn"]


def _families(modes: tuple[Mode, ...], checks: tuple[Check, ...],
              layout: ExportLayout = LAYOUT) -> list[tuple[str, list[tuple[str, str]]]]:
    return [(g.name, [(e.row, e.check) for e in apply_checks(g, RULES, checks).exports])
            for g in plan_guests(modes, layout, True)]


def test_families_follow_their_modes_ids_export_in_the_same_guest() -> None:
    # After the ids export of the same mode: QEMU prints each message once per
    # process, so the ids row keeps its exactly-once rule.  bind must stay silent, so
    # it comes before anything in its guest that prints (after the silent controls).
    trailing = ("operations", "cross_device", "runtime_mount", "remount")
    shared = ("remap", "forbid", "warn")
    # held_fd asks what only forbid promises: one row, after runtime_mount's.
    before, after = trailing[:3], trailing[3:]
    assert _families(ALL_MODES, DEFAULT_CHECKS) == [
        ("remap+forbid+warn", [(m, "ids") for m in shared]
         + [(f"{c}-{m}", c) for c in before for m in shared]
         + [("held_fd-forbid", "held_fd")]
         + [(f"{c}-{m}", c) for c in after for m in shared]),
        ("control+default", [(f"control-{m.value}", "ids") for m in ALL_MODES]
         + [(f"bind-{m.value}", "bind") for m in ALL_MODES] + [("default", "ids")]
         + [(f"{c}-default", c) for c in trailing]),
    ]


def test_checks_without_ids_keep_only_the_asked_families() -> None:
    assert _families((Mode.FORBID, Mode.DEFAULT), (Check.CROSS_DEVICE, Check.BIND)) == [
        ("forbid", [("cross_device-forbid", "cross_device")]),
        ("control+default", [("bind-forbid", "bind"), ("bind-default", "bind"),
                             ("cross_device-default", "cross_device")]),
    ]


def test_a_single_device_run_has_no_foreign_device_to_operate_on() -> None:
    assert _families((Mode.WARN,), DEFAULT_CHECKS, ExportLayout(devices=1)) == [
        ("warn", [("warn", "ids")])]


def test_family_exports_are_small_two_device_exports() -> None:
    (guest,) = [apply_checks(g, RULES, (Check.OPERATIONS,))
                for g in plan_guests((Mode.WARN,), LAYOUT, control=False)]
    assert [(e.layout.devices, e.layout.files_per_device) for e in guest.exports] == [(2, 2)]
    (_, control) = [apply_checks(g, RULES, (Check.BIND,))
                    for g in plan_guests((Mode.WARN,), LAYOUT, True)]
    assert [(e.row, e.layout.devices) for e in control.exports] == [("bind-warn", 1)]


def test_every_planned_family_is_implemented() -> None:
    assert set(FAMILIES) == set(ALL_CHECKS)


def test_the_checks_option_is_parsed_in_order_without_repeats() -> None:
    assert CHECKS.parse(" operations,ids,operations ") == ("operations", "ids")
    with pytest.raises(UsageError, match="unknown check family 'bogus'") as caught:
        CHECKS.parse("ids,bogus")
    assert caught.value.hint is not None and "cross_device" in caught.value.hint
    with pytest.raises(UsageError, match="no check family"):
        CHECKS.parse(",")


def test_family_rows_sort_after_ids_and_controls() -> None:
    rank = row_rank(RULES, (Mode.WARN, Mode.REMAP))
    rows = ["cross_device-warn", "operations-remap", "control-warn", "remap",
            "operations-warn", "warn"]
    assert sorted(rows, key=lambda r: rank.get(r, len(rank))) == [
        "warn", "remap", "control-warn", "operations-warn", "operations-remap",
        "cross_device-warn"]


def test_libvirt_runs_no_family_that_mounts_after_qemu_started() -> None:
    assert checks_for(Via.QEMU, RULES, ALL_CHECKS) == (ALL_CHECKS, ())
    assert checks_for(Via.LIBVIRT, RULES, ALL_CHECKS) == (
        ("ids", "operations", "cross_device", "remount"), ("runtime_mount", "held_fd", "bind"))


def test_families_join_once_per_mode_whatever_its_cache_exports() -> None:
    plans = plan_guests((Mode.WARN,), LAYOUT, False, caches=(Cache.NONE, Cache.LOOSE))
    rows = [e.row for e in apply_checks(plans[0], RULES, DEFAULT_CHECKS).exports]
    assert rows.count("operations-warn") == 1 and rows[:2] == ["warn", "warn+loose"]


def test_cross_device_gets_a_row_per_inode_caching_cache_mode() -> None:
    plans = plan_guests((Mode.WARN,), LAYOUT, False,
                        caches=(Cache.NONE, Cache.MMAP, Cache.LOOSE, Cache.FSCACHE))
    exports = apply_checks(plans[0], RULES, (Check.CROSS_DEVICE,)).exports
    assert [(e.row, e.cache) for e in exports] == [
        ("cross_device-warn", "none"), ("cross_device-warn+loose", "loose"),
        ("cross_device-warn+fscache", "fscache")]
    rank = row_rank(RULES, (Mode.WARN,), (Cache.NONE, Cache.LOOSE))
    assert rank["cross_device-warn"] < rank["cross_device-warn+loose"] < rank["runtime_mount-warn"]


def test_witnesses_run_where_their_verdict_says_something() -> None:
    plans = plan_guests(ALL_MODES, LAYOUT, True, caches=(Cache.NONE, Cache.LOOSE))
    witnessed = {e.row for g in plans for e in g.exports if e.witness}
    # Not forbid (every tool just fails there), one control (all controls are alike).
    assert witnessed == {"remap", "remap+loose", "warn", "warn+loose", "default",
                         "default+loose", "control-remap"}
    # Nor bind (one host file per path, nothing the ids rules do not judge).
    binds = [e for g in plans for e in apply_checks(g, RULES, ALL_CHECKS).exports
             if e.check == "bind"]
    assert len(binds) == 4 and not any(e.witness for e in binds)


@pytest.mark.parametrize(("version", "witnessed"), [
    (None, True), (Version(7, 2, 22), False), (Version(9, 2, 0), False),
    (Version(9, 2, 50), True), (Version(10, 0, 0), True)])
def test_single_device_default_is_witnessed_only_where_it_may_remap(
        version: Version | None, witnessed: bool) -> None:
    from harness.plan import RunOptions, plan_run

    plan = plan_run(RunOptions(modes=tuple(ALL_MODES), layout=LAYOUT), RULES, True, version)
    witness = {e.row: e.witness for g in plan.guests for e in g.exports if e.check is Check.IDS}
    assert witness["default@overlay"] is witnessed
    assert witness["default+loose@overlay"] is witnessed
    # Several devices, or remap on one: witnessed whatever the version.
    assert witness["default"] and witness["default+loose"] and witness["remap@overlay"]
    assert not witness["warn@overlay"]


def _refusal(**given: object) -> str:
    from harness.plan import RunOptions, refuse_empty_selection

    options = RunOptions(**{"modes": tuple(ALL_MODES), "layout": LAYOUT, **given})  # type: ignore[arg-type]  # the test's own keywords
    with pytest.raises(UsageError) as caught:
        refuse_empty_selection(options, RULES)
    return caught.value.message


@pytest.mark.timeout(10)
def test_a_family_with_no_mode_it_runs_under_is_refused_naming_its_mode() -> None:
    assert _refusal(modes=(Mode.REMAP, Mode.WARN), checks=(Check.HELD_FD,)) == (
        "--checks held_fd with --modes remap,warn selects no rows: held_fd runs under "
        "forbid only, not under remap,warn")


@pytest.mark.timeout(10)
def test_a_writing_family_over_an_export_is_refused() -> None:
    from pathlib import Path

    export = ExportLayout(devices=2, files_per_device=1, kind=Layout.EXPORT, source=Path("/t"))
    assert "operations writes into the export and an --export tree is never written" in \
        _refusal(checks=(Check.OPERATIONS,), layouts=(Layout.EXPORT,), export=export)


@pytest.mark.timeout(10)
def test_families_without_their_guest_or_devices_are_refused() -> None:
    assert "bind runs in the control guest, which --no-control leaves out" in \
        _refusal(checks=(Check.BIND,), control=False)
    assert "remount runs on a multi-device export, and --devices is 1" in _refusal(
        checks=(Check.REMOUNT,), layout=ExportLayout(devices=1, files_per_device=8),
        layouts=(Layout.STANDARD,))
    assert "--via libvirt cannot run held_fd" in _refusal(
        checks=(Check.HELD_FD,), modes=(Mode.FORBID,), via=Via.LIBVIRT)


@pytest.mark.timeout(10)
def test_a_selection_with_rows_is_not_refused() -> None:
    from harness.plan import RunOptions, refuse_empty_selection

    refuse_empty_selection(RunOptions(modes=(Mode.FORBID,), layout=LAYOUT,
                                      checks=(Check.HELD_FD,)), RULES)


@pytest.mark.parametrize(("key", "name"), [
    (RowKey(Check.IDS, Mode.WARN), "warn"),
    (RowKey(Check.IDS, Mode.WARN, Cache.LOOSE, Layout.OVERLAY), "warn+loose@overlay"),
    (RowKey(Check.IDS, Mode.REMAP, control=True), "control-remap"),
    (RowKey(Check.CROSS_DEVICE, Mode.WARN, Cache.FSCACHE), "cross_device-warn+fscache"),
    (RowKey(Check.IDS, Mode.DEFAULT, layout=Layout.BTRFS, transport=Transport.VIRTIOFS,
            submounts=False), "virtiofs-nosubmounts@btrfs"),
    (RowKey(Check.BIND, Mode.DEFAULT, transport=Transport.VIRTIOFS), "bind-virtiofs"),
])
def test_a_row_key_names_its_row(key: RowKey, name: str) -> None:
    assert str(key) == name


def test_every_planned_export_is_named_by_its_key_and_no_two_share_a_name() -> None:
    from harness.plan import RunOptions, plan_run

    options = RunOptions(modes=tuple(ALL_MODES), layout=LAYOUT,
                         caches=(Cache.NONE, Cache.LOOSE, Cache.FSCACHE),
                         transports=(Transport.NINEP, Transport.VIRTIOFS))
    exports = [e for g in plan_run(options, RULES, True).guests for e in g.exports]
    assert len({e.row for e in exports}) == len(exports) > 40
    assert {e.row for e in exports if e.control} == {f"control-{m}" for m in ALL_MODES}
