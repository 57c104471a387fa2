"""Every multidevs mode on a real guest, through the pytest plugin's fixtures.

Each export is observed and judged by the real ``ids`` check family, as the run loop
(``harness.pool``) does it: observed in turn while the guest runs, each with the part
of QEMU's stderr written meanwhile, then judged once the guest is shut down.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from harness.agent.witnesses import TOOL_NAMES
from harness.checks.family import Judging
from harness.checks.ids import IdsSeen
from harness.checks.registry import FAMILIES
from harness.config import Check, Mode
from harness.environment import Environment
from harness.host.export import build_export
from harness.host.layout import ExportLayout
from harness.host.truth import Export
from harness.plan import ExportPlan
from harness.plugin import MachineFactory
from harness.qemu.machine import Machine
from harness.qemu.spec import ExportSpec
from harness.verdicts.ids import IdsVerdict, ids_verdict

pytestmark = pytest.mark.timeout(240)


def _outside(stderr: str, slices: Sequence[slice]) -> str:
    """What QEMU wrote outside every observation (boot, shutdown, in between)."""
    parts, position = [], 0
    for part in sorted(slices, key=lambda s: s.start):
        parts.append(stderr[position:part.start])
        position = part.stop
    parts.append(stderr[position:])
    return "\n".join(parts)


def _judge_all(env: Environment, guest: Machine,
               judged: Sequence[tuple[Export, Mode]]) -> list[IdsVerdict]:
    """Each export of ``guest`` (``judged``: in the order it serves them), judged by the
    ``ids`` family as the mode given (which need not be the mode it is served in),
    witnesses included."""
    family = FAMILIES[Check.IDS]
    observed: list[tuple[ExportSpec, Export, Mode, IdsSeen, slice]] = []
    for spec, (export, mode) in zip(guest.spec.exports, judged, strict=True):
        assert spec.path == export.root, (spec, export.root)
        plan = ExportPlan(mode, export.layout, cache=spec.cache, witness=True)
        before = len(guest.stderr_text())
        seen = family.observe(guest, spec, export, plan)
        observed.append((spec, export, mode, seen, slice(before, len(guest.stderr_text()))))
    guest.shutdown()  # the run loop judges a guest that is down: its stderr is complete
    stderr = guest.stderr_text()
    outside = _outside(stderr, [part for *_, part in observed])
    version = env.info.version
    verdicts = []
    for spec, export, mode, seen, part in observed:
        plan = ExportPlan(mode, export.layout, cache=spec.cache)
        verdict = ids_verdict(family.judge(
            Judging(plan, export, spec, version, stderr[part], outside, ()), seen))
        assert verdict is not None
        verdicts.append(verdict)
    return verdicts


def _judge(env: Environment, guest: Machine, export: Export, mode: Mode) -> IdsVerdict:
    """The guest's one export, judged by the ``ids`` family as ``mode``."""
    [verdict] = _judge_all(env, guest, [(export, mode)])
    return verdict


@pytest.mark.multidevs(mode="remap")
def test_remap_keeps_ids_unique(
    machine: Machine, multidevs_export: Export, mdh_environment: Environment
) -> None:
    verdict = _judge(mdh_environment, machine, multidevs_export, Mode.REMAP)
    assert verdict.passed, verdict.failures
    assert verdict.collisions == () and verdict.denied == 0
    assert verdict.witnesses_intact is True
    assert [w.tool for w in verdict.witnesses] == list(TOOL_NAMES)
    assert verdict.qemu_message is None


@pytest.mark.multidevs(mode="warn")
def test_warn_collides_and_warns_once(
    machine: Machine, multidevs_export: Export, mdh_environment: Environment
) -> None:
    verdict = _judge(mdh_environment, machine, multidevs_export, Mode.WARN)
    assert verdict.passed, verdict.failures
    assert len(verdict.collisions) > 0
    assert verdict.qemu_message is not None and "file ID collisions" in verdict.qemu_message
    # The harm is real, and every tool shows it: tar and rsync -aH store colliding
    # files as hard links, cp -a refuses to link a device root to the export root,
    # find and du take the device roots for loops.
    assert {w.tool for w in verdict.witnesses if w.intact is False} == set(TOOL_NAMES)


@pytest.mark.multidevs(mode="forbid")
def test_forbid_denies_other_devices(
    machine: Machine, multidevs_export: Export, mdh_environment: Environment
) -> None:
    verdict = _judge(mdh_environment, machine, multidevs_export, Mode.FORBID)
    assert verdict.passed, verdict.failures
    assert verdict.denied > 0
    assert verdict.qemu_message is not None and "multidevs=forbid" in verdict.qemu_message


@pytest.mark.multidevs(mode="default")
def test_default_follows_the_version_table(
    machine: Machine, multidevs_export: Export, mdh_environment: Environment
) -> None:
    verdict = _judge(mdh_environment, machine, multidevs_export, Mode.DEFAULT)
    assert verdict.passed, verdict.failures
    if mdh_environment.info.version < (10, 0, 0):
        assert len(verdict.collisions) > 0


def test_control_single_device_is_quiet_in_every_mode(
    machine_factory: MachineFactory, mdh_environment: Environment
) -> None:
    layout = ExportLayout(devices=1, files_per_device=4)
    with build_export(layout) as a, build_export(layout) as b, \
            build_export(layout) as c, build_export(layout) as d:
        exports = [(a, Mode.REMAP), (b, Mode.WARN), (c, Mode.FORBID), (d, Mode.DEFAULT)]
        guest = machine_factory(exports=exports)
        verdicts = _judge_all(mdh_environment, guest, exports)
        for (_, mode), verdict in zip(exports, verdicts, strict=True):
            assert verdict.passed, (mode, verdict.failures)
            assert verdict.witnesses_intact is True
            assert verdict.collisions == () and verdict.qemu_message is None


def test_remap_verdict_fails_on_a_warn_guest(
    machine_factory: MachineFactory, mdh_environment: Environment
) -> None:
    """The verdicts are not always green: judge a real warn guest as if it were remap."""
    with build_export(ExportLayout(devices=3, files_per_device=4)) as export:
        guest = machine_factory(exports=[(export, Mode.WARN)])
        verdict = _judge(mdh_environment, guest, export, Mode.REMAP)
        assert not verdict.passed
        assert any("collide" in f or "collision" in f for f in verdict.failures), verdict.failures
        # Each witness is a rule of its own that must say fail here.
        broken = {f.split()[1] for f in verdict.failures if f.startswith("witness ")}
        assert broken == set(TOOL_NAMES), verdict.failures
