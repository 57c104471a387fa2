"""Adding a check family is its module and one registry entry: a toy family, planted
beside the real ones, is planned, ranked, refused and reported by the unchanged
planner and report, from nothing but its own ``rules``."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.checks.registry import FAMILIES, registry, rules_of
from harness.config import ALL_MODES, Cache, Check, Layout, Mode, Transport, Via
from harness.errors import UsageError
from harness.host.layout import ExportLayout
from harness.plan import RunOptions, plan_run, refuse_empty_selection, row_rank
from harness.report import row_dict, table
from harness.results import ResultRow, RunResults

from .test_results import RECORD
from .toy_family import TOY, ToyCheck, ToySeen

# The one registry entry.
PLANTED = registry(*FAMILIES.values(), ToyCheck())
RULES = rules_of(PLANTED)
LAYOUT = ExportLayout(devices=3, files_per_device=8)


def _options(**given: object) -> RunOptions:
    base: dict[str, object] = {"modes": ALL_MODES, "layout": LAYOUT,
                               "checks": (Check.IDS, TOY), "caches": (Cache.NONE, Cache.LOOSE)}
    return RunOptions(**{**base, **given})  # type: ignore[arg-type]  # the test's own keywords


def _rows(options: RunOptions) -> list[tuple[str, str, int]]:
    plan = plan_run(options, RULES, live_stderr=True)
    return [(g.name, e.row, e.layout.devices) for g in plan.guests for e in g.exports
            if e.check == TOY]


def test_the_toy_family_trails_its_one_mode_with_its_own_rules() -> None:
    # warn only, after warn's ids exports in warn's guest; one row per inode-caching
    # cache mode; its own three-device layout; virtiofs rows as it declares.
    assert _rows(_options(transports=(Transport.NINEP, Transport.VIRTIOFS))) == [
        ("remap+forbid+warn", "toy-warn", 3), ("remap+forbid+warn", "toy-warn+loose", 3),
        ("virtiofs", "toy-virtiofs", 3),
        ("virtiofs-nosubmounts", "toy-virtiofs-nosubmounts", 3)]
    (warn,) = [g for g in plan_run(_options(), RULES, True).guests if "warn" in g.name]
    rows = [e.row for e in warn.exports]
    assert rows.index("toy-warn") > rows.index("warn+loose")
    assert not any(e.witness for e in warn.exports if e.check == TOY)


def test_the_toy_family_is_left_out_where_its_rules_say() -> None:
    # It mounts after start: not under libvirt.  It writes: not over --export.
    libvirt = plan_run(_options(via=Via.LIBVIRT), RULES, live_stderr=True)
    assert libvirt.skipped == (TOY,)
    assert not any(e.check == TOY for g in libvirt.guests for e in g.exports)
    export = ExportLayout(devices=2, files_per_device=1, kind=Layout.EXPORT, source=Path("/t"))
    mine = plan_run(_options(layouts=(Layout.EXPORT,), export=export), RULES, True)
    assert mine.writing_skipped == (TOY,)


def test_the_toy_family_is_refused_naming_its_one_mode() -> None:
    with pytest.raises(UsageError) as caught:
        refuse_empty_selection(_options(modes=(Mode.REMAP,), checks=(TOY,)), RULES)
    assert caught.value.message == ("--checks toy with --modes remap selects no rows: "
                                    "toy runs under warn only, not under remap")


def test_the_toy_family_ranks_after_the_families_before_it() -> None:
    rank = row_rank(RULES, (Mode.WARN,), (Cache.NONE, Cache.LOOSE))
    assert rank["remount-warn"] < rank["toy-warn"] < rank["toy-warn+loose"] \
        < rank["virtiofs"] < rank["toy-virtiofs"]
    assert "toy-remap" not in rank


def test_the_toy_family_is_judged_and_reported() -> None:
    family = PLANTED[TOY]
    held, broken = (family.judge(None, ToySeen(n)) for n in (2, 1))  # type: ignore[arg-type]  # the toy reads no Judging
    rows = tuple(ResultRow(case=f"toy-warn{tail}", check=TOY, via=Via.QEMU, verdict=v)
                 for tail, v in (("", held), ("+loose", broken)))
    text = table(RunResults(RECORD, rows, 1.0, "/logs", logs_kept=True))
    assert "[toy-warn+loose] saw 1 foreign devices, expected 2" in text
    assert [(d["case"], d["check"], d["status"]) for d in map(row_dict, rows)] == [
        ("toy-warn", "toy", "pass"), ("toy-warn+loose", "toy", "fail")]


def test_two_families_of_one_name_are_refused() -> None:
    with pytest.raises(ValueError, match="two families named toy"):
        registry(ToyCheck(), ToyCheck())
