"""Every multidevs mode on a real guest, through the pytest plugin's fixtures."""

from __future__ import annotations

import pytest

from harness.agent.witnesses import TOOL_NAMES
from harness.checks.ids import collect, run_witnesses
from harness.config import ExportLayout, Mode
from harness.environment import Environment
from harness.host.export import build_export
from harness.host.truth import Export
from harness.plugin import MachineFactory
from harness.qemu.machine import Machine
from harness.verdicts.ids import Verdict, judge
from harness.verdicts.witnesses import judge_witnesses

pytestmark = pytest.mark.timeout(240)


def _judge(env: Environment, machine: Machine, export: Export, mode: Mode,
           mount_point: str = "/mnt/mdh0") -> Verdict:
    view = collect(machine, mount_point, export.truth.paths)
    runs = run_witnesses(machine, mount_point, export.truth.paths)
    witnesses = judge_witnesses(export.truth, runs, view.observation.passes[0])
    return judge(mode, env.info.version.as_tuple(), export.truth, view.observation,
                 machine.stderr_text(), witnesses)


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
    if mdh_environment.info.version.as_tuple() < (10, 0, 0):
        assert len(verdict.collisions) > 0


def test_control_single_device_is_quiet_in_every_mode(
    machine_factory: MachineFactory, mdh_environment: Environment
) -> None:
    layout = ExportLayout(devices=1, files_per_device=4)
    with build_export(layout) as a, build_export(layout) as b, \
            build_export(layout) as c, build_export(layout) as d:
        exports = [(a, Mode.REMAP), (b, Mode.WARN), (c, Mode.FORBID), (d, Mode.DEFAULT)]
        guest = machine_factory(exports=exports)
        for index, (export, mode) in enumerate(exports):
            verdict = _judge(mdh_environment, guest, export, mode, f"/mnt/mdh{index}")
            assert verdict.passed, (mode, verdict.failures)
            assert verdict.witnesses_intact is True
            assert verdict.collisions == () and verdict.qemu_message is None


def test_remap_verdict_fails_on_a_warn_guest(
    machine_factory: MachineFactory, mdh_environment: Environment
) -> None:
    """The oracle is not always green: judge a real warn guest as if it were remap."""
    with build_export(ExportLayout(devices=3, files_per_device=4)) as export:
        guest = machine_factory(exports=[(export, Mode.WARN)])
        verdict = _judge(mdh_environment, guest, export, Mode.REMAP)
        assert not verdict.passed
        assert any("collide" in f or "collision" in f for f in verdict.failures), verdict.failures
        # Each witness is a rule of its own that must say fail here.
        broken = {f.split()[1] for f in verdict.failures if f.startswith("witness ")}
        assert broken == set(TOOL_NAMES), verdict.failures
