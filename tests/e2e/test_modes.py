"""Every multidevs mode on a real guest, through the pytest plugin's fixtures."""

from __future__ import annotations

import pytest

from harness.config import ExportLayout, Mode
from harness.environment import Environment
from harness.export import Export, build_export
from harness.machine import Machine
from harness.observe import collect
from harness.oracle import Verdict, judge, judge_witness
from harness.plugin import MachineFactory

pytestmark = pytest.mark.timeout(240)


def _judge(env: Environment, machine: Machine, export: Export, mode: Mode) -> Verdict:
    view = collect(machine, "/mnt/mdh0", export.truth.paths, witness=True)
    witness = judge_witness(export.truth, view.extracted)
    return judge(mode, env.info.version.as_tuple(), export.truth, view.observation,
                 machine.stderr_text(), witness)


@pytest.mark.multidevs(mode="remap")
def test_remap_keeps_ids_unique(
    machine: Machine, multidevs_export: Export, mdh_environment: Environment
) -> None:
    verdict = _judge(mdh_environment, machine, multidevs_export, Mode.REMAP)
    assert verdict.passed, verdict.failures
    assert verdict.collisions == () and verdict.denied == 0
    assert verdict.witness_intact is True
    assert verdict.qemu_message is None


@pytest.mark.multidevs(mode="warn")
def test_warn_collides_and_warns_once(
    machine: Machine, multidevs_export: Export, mdh_environment: Environment
) -> None:
    verdict = _judge(mdh_environment, machine, multidevs_export, Mode.WARN)
    assert verdict.passed, verdict.failures
    assert len(verdict.collisions) > 0
    assert verdict.qemu_message is not None and "file ID collisions" in verdict.qemu_message
    # The harm is real: busybox tar stores colliding files as hard links.
    assert verdict.witness_intact is False


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
            view = collect(guest, f"/mnt/mdh{index}", export.truth.paths, witness=True)
            verdict = judge(mode, mdh_environment.info.version.as_tuple(), export.truth,
                            view.observation, guest.stderr_text(),
                            judge_witness(export.truth, view.extracted))
            assert verdict.passed, (mode, verdict.failures)
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
