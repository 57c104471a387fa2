"""The speed benchmark behind ``scripts/bench``: figures, not pass/fail.

Measures QEMU-start-to-SSH for the tuned guest and for a naive baseline in the same
run, boot-to-SSH of every guest recipe, the whole ``exec -- uname -r`` round trip,
the wall time of the default matrix (also on Debian's QEMU 10 build), a 64-device,
100,000-file remap run, and virtme-ng's ``vng --exec`` on the same kernel.
Targets are printed beside the figures; machines are too noisy for timed tests, and
shared ones for absolute seconds: the ratios (exec to ``exec --accel tcg`` and to
vng, the matrix and the scale run to one cold boot) are measured in the same run,
so they carry over.
"""

from __future__ import annotations

import json
import math
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..agent.stat import SCALE_AGENT_THREADS
from ..config import (
    ALL_MODES,
    Accel,
    BootMethod,
    Cache,
    Check,
    Layout,
    Mode,
    Transport,
)
from ..environment import Environment, prepare
from ..errors import ArchiveUnreachable
from ..host.export import build_export
from ..host.layout import ExportLayout
from ..host.namespace import enter_private_namespace
from ..image.recipe import DEFAULT_RECIPE, recipe_names
from ..machine_options import MachineOptions
from ..plan import RunOptions
from ..proc import run_tied
from ..progress import Progress
from ..qemu.debian import SUITES, fetch_debian_qemu
from ..qemu.machine import Machine
from ..qemu.spec import ExportSpec
from ..qemu.virtiofsd import find_virtiofsd
from ..report import environment_json
from ..results import EnvironmentRecord, ResultRow
from ..run import run_checks
from ..verdicts.ids import ids_verdict
from .options import BenchOptions, parse_bench_options
from .virtme import measure_vng

TARGET_BOOT_TCG_S = 2.0
TARGET_BOOT_KVM_S = 0.5
TARGET_MATRIX_OVER_BOOT = 3.5
TARGET_SCALE_OVER_BOOT = 12.0
TARGET_EXEC_OVER_TCG = 1.3
TARGET_EXEC_OVER_VNG = 0.15
# predict over a tree this large, on this many devices, within this (no guest boots).
PREDICT_PATHS = 100_000
PREDICT_DEVICES = 8
TARGET_PREDICT_S = 3.0
# A grid cell against the same matrix run alone (issue 33), medians of this many rounds.
TARGET_GRID_CELL = 1.2
GRID_ROUNDS = 2

def _stats(samples: Sequence[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(samples), 3),
        "min": round(min(samples), 3),
        "max": round(max(samples), 3),
    }


def time_boots(env: Environment, count: int, naive: bool, progress: Progress) -> list[float]:
    """Seconds from QEMU's start to an SSH session with the export mounted, ``count``
    times, one 3-device export.  Cold unless ``env`` restores saved states."""
    samples: list[float] = []
    with build_export(ExportLayout(devices=3, files_per_device=8)) as export:
        share = ExportSpec(tag="mdh0", path=export.root, mode=Mode.REMAP,
                           mount_point="/mnt/mdh0")
        for index in range(count):
            with tempfile.TemporaryDirectory(prefix="mdh-bench-") as logs:
                spec = env.machine_spec([share], Path(logs))
                if naive:
                    spec = replace(spec, boot=BootMethod.BZIMAGE, tuned=False,
                                   state_cache=None)
                with Machine(spec, name="naive" if naive else "tuned") as machine:
                    machine.wait_ready()
                    assert machine.boot_seconds is not None
                    samples.append(machine.boot_seconds)
            how = "naive" if naive else ("restored" if env.state_cache else "cold")
            progress(f"{how} boot {index + 1}/{count}: {samples[-1]:.2f} s")
    return samples


def header(record: EnvironmentRecord, boots: int) -> dict[str, Any]:
    """The figures' first keys: the environment block every output shares, and the count."""
    return {**environment_json(record), "boots": boots}


def adjacent_boot(env: Environment, progress: Progress) -> float:
    """One cold boot to SSH timed just before a long figure: on a machine whose load
    changes, a ratio to it says more than one to the boots timed minutes earlier."""
    return time_boots(replace(env, state_cache=None), 1, naive=False, progress=progress)[0]


def family_seconds(rows: Sequence[ResultRow]) -> dict[str, dict[str, float]]:
    """Per check family, the guest seconds its rows' observations took (summed over
    every guest of the run) and its row count, the costliest first: where the
    matrix's time goes, so the next cut aims at the largest share."""
    found: dict[str, dict[str, float]] = {}
    for row in rows:
        family = found.setdefault(row.check, {"seconds": 0.0, "rows": 0})
        family["seconds"] += row.observe_seconds or 0.0
        family["rows"] += 1
    return {name: {"seconds": round(f["seconds"], 3), "rows": f["rows"]} for name, f in
            sorted(found.items(), key=lambda item: -item[1]["seconds"])}


def _matrix(env: Environment, tuned_median: float, progress: Progress) -> dict[str, Any]:
    """The default matrix, cold and with restored guests, each beside a cold boot timed
    just before it (the ratios), and the ids family alone (restored), so what the
    other families cost shows as a difference."""
    figures: dict[str, Any] = {}
    for label, each in (("", replace(env, state_cache=None)), ("restored_", env)):
        boot = adjacent_boot(env, progress)
        started = time.monotonic()
        matrix = run_checks(RunOptions(modes=ALL_MODES, layout=ExportLayout()), progress,
                            env=each)
        seconds = time.monotonic() - started
        # Held: exit 0 (a known QEMU bug reproduced is not news; see verdicts.known).
        figures.update({f"{label}matrix_s": round(seconds, 3),
                        f"{label}matrix_passed": matrix.exit_code == 0,
                        f"{label}matrix_over_boot": round(seconds / boot, 2),
                        f"{label}matrix_adjacent_boot_s": round(boot, 3),
                        f"{label}matrix_families": family_seconds(matrix.rows)})
    figures["matrix_over_median_boot"] = round(figures["matrix_s"] / tuned_median, 2)
    # The ids family alone: as run (cache none,loose, witnesses), without the cache
    # axis, and without the witnesses, so what each costs shows as a difference.
    ids_options = RunOptions(modes=ALL_MODES, layout=ExportLayout(), checks=(Check.IDS,))
    for key, options in (
            ("ids_only", ids_options),
            ("ids_cache_none", replace(ids_options, caches=(Cache.NONE,))),
            ("ids_no_witness", replace(ids_options, witness=False))):
        started = time.monotonic()
        ids = run_checks(options, progress, env=env)
        figures[f"restored_matrix_{key}_s"] = round(time.monotonic() - started, 3)
        figures["restored_matrix_passed"] &= ids.exit_code == 0
    return figures


def _layouts(env: Environment, layouts: Sequence[Layout],
             progress: Progress) -> dict[str, Any]:
    """Each host layout alone: the ids family under remap and warn, cache=none, no
    controls (restored guests), with the statuses its rows got."""
    figures: dict[str, Any] = {}
    for kind in layouts:
        options = RunOptions(modes=(Mode.REMAP, Mode.WARN), layout=ExportLayout(),
                             layouts=(kind,), caches=(Cache.NONE,), control=False,
                             checks=(Check.IDS,))
        started = time.monotonic()
        report = run_checks(options, progress, env=env)
        figures[kind.value] = {
            "seconds": round(time.monotonic() - started, 3),
            "exit_code": report.exit_code,
            "rows": {row.case: row.status.value for row in report.rows}}
    return figures


def _transports(env: Environment, options: BenchOptions,
                progress: Progress) -> dict[str, Any]:
    """9p beside virtiofs: the ids family on the default layouts (cache=none for 9p,
    controls kept), every row's guest boot and its own observation time, so the
    virtiofs rows (cold: vhost-user-fs cannot be saved) show beside 9p's (restored)."""
    env = replace(env, virtiofsd=find_virtiofsd(options.virtiofsd, progress=progress))
    matrix = RunOptions(modes=ALL_MODES, layout=ExportLayout(), caches=(Cache.NONE,),
                        checks=(Check.IDS,), transports=(Transport.NINEP, Transport.VIRTIOFS))
    started = time.monotonic()
    report = run_checks(matrix, progress, env=env)
    return {
        "seconds": round(time.monotonic() - started, 3),
        "exit_code": report.exit_code,
        "virtiofsd": env.virtiofsd.version if env.virtiofsd else None,
        "rows": [{"case": r.case, "transport": r.transport, "status": r.status.value,
                  "boot": r.start.value if r.start else None,
                  "boot_s": round(r.boot_seconds or 0.0, 3),
                  "observe_s": round(r.observe_seconds or 0.0, 3)} for r in report.rows],
    }


def _scale(env: Environment, options: BenchOptions, progress: Progress) -> dict[str, Any]:
    """One remap export of ``--scale-devices`` devices and ``--scale-files`` files,
    looked at once.  The cache and layout axes are pinned (none, standard): left to
    the run's defaults they would observe the same 100,000 paths twice more (cache
    loose) and add an overlay guest, which measures the axes, not the scale."""
    per_device = math.ceil(options.scale_files / options.scale_devices)
    layout = ExportLayout(devices=options.scale_devices, files_per_device=per_device)
    started = time.monotonic()
    scale = run_checks(
        RunOptions(modes=(Mode.REMAP,), layout=layout, control=False, witness=False,
                   checks=(Check.IDS,), caches=(Cache.NONE,), layouts=(Layout.STANDARD,),
                   passes=1, guest_cpus=options.scale_cpus, agent_threads=SCALE_AGENT_THREADS),
        progress, env=env,
    )
    seconds = time.monotonic() - started
    checked = sum(ids.files_checked for r in scale.rows if (ids := ids_verdict(r.verdict)))
    return {"devices": options.scale_devices, "files_requested": options.scale_files,
            "files_checked": checked, "wall_s": round(seconds, 3),
            "files_per_s": round(checked / seconds, 1) if seconds else None,
            "passed": scale.passed}


def predict_figure(progress: Progress, paths: int = PREDICT_PATHS,
                   devices: int = PREDICT_DEVICES) -> dict[str, Any]:
    """``multidevs-harness predict`` over a standard export of ``paths`` paths on
    ``devices`` tmpfs devices, as a user runs it: a fresh CLI process (in this
    process's namespace, so it sees the mounts), its wall and CPU seconds."""
    # Each device also holds the sub/inner file, the hard-link pair and the twins.
    per_device = math.ceil(paths / devices) - 8
    with build_export(ExportLayout(devices=devices, files_per_device=per_device)) as export:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.monotonic()
        done = run_tied([sys.executable, "-m", "harness.cli", "predict", "--json",
                         "--qemu-version", "7.2.0", "--max-paths", str(2 * paths),
                         str(export.root)], timeout=120)
        wall = time.monotonic() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    found = json.loads(done.stdout) if done.stdout else {}
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    progress(f"predict over {found.get('files_checked')} paths: {wall:.2f} s "
             f"({cpu:.2f} s CPU), exit {done.returncode}")
    return {"paths": found.get("files_checked"), "devices": found.get("host_devices"),
            "wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "exit_code": done.returncode,
            "walk_s": round(found.get("walk_seconds", 0.0), 3)}


def _machine(options: BenchOptions) -> MachineOptions:
    """The benchmark's machine: ``--qemu`` and ``--accel`` as given, the default guest."""
    return MachineOptions(qemu=options.qemu, accel=options.accel)


def _guests(options: BenchOptions, progress: Progress) -> dict[str, Any]:
    """Boot-to-SSH of every guest recipe, each with its own kernel."""
    figures = {}
    for name in recipe_names():
        env = prepare(replace(_machine(options), guest=name, cold=True), progress)
        samples = time_boots(env, options.boots, naive=False, progress=progress)
        figures[name] = {"kernel": env.image.kernel_release, "boot_to_ssh_s": _stats(samples)}
    return figures


def _exec_round_trip(options: BenchOptions, progress: Progress,
                     cold: bool, accel: str | None = None) -> dict[str, float]:
    """``multidevs-harness exec -- uname -r`` as a user runs it: the whole CLI, a fresh
    process each time (probe, image cache hit, boot or restore, SSH, shutdown), with
    ``--accel`` as given to the benchmark unless ``accel`` says otherwise."""
    samples = []
    accel = accel or options.accel.value
    for index in range(options.boots):
        started = time.monotonic()
        argv = [sys.executable, "-m", "harness.cli", "exec", "--accel", accel,
                *(["--qemu", options.qemu] if options.qemu else []),
                *(["--cold"] if cold else []), "--", "uname", "-r"]
        done = run_tied(argv, timeout=300)
        if done.returncode != 0:
            raise subprocess.CalledProcessError(done.returncode, argv, done.stdout, done.stderr)
        samples.append(time.monotonic() - started)
        progress(f"exec --accel {accel}{' --cold' if cold else ''} -- uname -r "
                 f"{index + 1}/{options.boots}: {samples[-1]:.2f} s")
    return _stats(samples)


def _exec_figures(options: BenchOptions, env: Environment, tuned: float,
                  progress: Progress) -> dict[str, Any]:
    """exec cold and warm, warm with ``--accel tcg`` (what remembering the accelerator
    must bring it close to) and beside virtme-ng, as ratios measured in this run.
    The warm runs alternate so that load on the machine falls on both alike."""
    figures: dict[str, Any] = {"exec_cold_s": _exec_round_trip(options, progress, cold=True)}
    figures["exec_over_boot_s"] = round(figures["exec_cold_s"]["median"] - tuned, 3)
    _exec_round_trip(replace(options, boots=1), progress, cold=False)
    warm: list[dict[str, float]] = []
    tcg: list[dict[str, float]] = []
    for _ in range(options.boots):
        one = replace(options, boots=1)
        warm.append(_exec_round_trip(one, progress, cold=False))
        tcg.append(_exec_round_trip(one, progress, cold=False, accel=Accel.TCG.value))
    figures["exec_s"] = _stats([s["median"] for s in warm])
    figures["exec_tcg_s"] = _stats([s["median"] for s in tcg])
    figures["exec_over_tcg"] = round(figures["exec_s"]["median"]
                                     / figures["exec_tcg_s"]["median"], 2)
    if not options.skip_vng:
        vng = measure_vng(env.image, env.info.binary, options.vng_runs, progress)
        figures["vng"] = vng
        if "seconds" in vng:
            figures["exec_over_vng"] = round(figures["exec_s"]["median"]
                                             / vng["seconds"]["median"], 3)
    return figures


def _qemu10(options: BenchOptions, progress: Progress) -> dict[str, Any]:
    """The default matrix on Debian's QEMU 10 build (bookworm-backports), if reachable."""
    try:
        binary = fetch_debian_qemu(SUITES["bookworm-backports"], progress=progress).wrapper
    except ArchiveUnreachable as exc:
        return {"skipped": exc.message}
    env = prepare(replace(_machine(options), qemu=str(binary)), progress)
    started = time.monotonic()
    matrix = run_checks(RunOptions(modes=ALL_MODES, layout=ExportLayout()), progress, env=env)
    return {"version": str(env.info.version), "matrix_s": round(time.monotonic() - started, 3),
            "matrix_passed": matrix.exit_code == 0}


def _grid(options: BenchOptions, progress: Progress) -> dict[str, Any]:
    """A grid cell against the same matrix run alone (issue 33: <= 1.2x).  A warm-up
    grid first saves each cell's guest states, so both sides boot restored; then
    ``GRID_ROUNDS`` rounds of each cell alone and the grid, alternating, so a busy
    moment of the host falls on both sides; medians compared."""
    from ..commands.grid import run_grid

    qemus = options.grid_qemus
    matrix = RunOptions(modes=ALL_MODES, layout=ExportLayout(), machine=_machine(options))
    guests = (DEFAULT_RECIPE,)
    try:
        run_grid(matrix, qemus, guests, progress)
    except ArchiveUnreachable as exc:
        return {"skipped": exc.message}
    alone: dict[str, list[float]] = {qemu: [] for qemu in qemus}
    in_grid: dict[str, list[float]] = {qemu: [] for qemu in qemus}
    versions: dict[str, str] = {}
    for _ in range(GRID_ROUNDS):
        for qemu in qemus:
            started = time.monotonic()
            run_checks(replace(matrix, qemus=(qemu,), guests=guests), progress)
            alone[qemu].append(time.monotonic() - started)
        for cell in run_grid(matrix, qemus, guests, progress):
            in_grid[cell.qemu].append(cell.seconds)
            versions[cell.qemu] = cell.qemu_version
    cells = []
    for qemu in qemus:
        grid_s, alone_s = statistics.median(in_grid[qemu]), statistics.median(alone[qemu])
        cells.append({"qemu": qemu, "version": versions[qemu], "grid_s": round(grid_s, 3),
                      "alone_s": round(alone_s, 3), "ratio": round(grid_s / alone_s, 2),
                      "rounds": GRID_ROUNDS})
    return {"cells": cells}


def run_bench(options: BenchOptions, progress: Progress) -> dict[str, Any]:
    """Run every measurement and return the JSON-ready figures."""
    env = prepare(_machine(options), progress)
    enter_private_namespace()
    result = header(env.record, options.boots)
    tuned = time_boots(replace(env, state_cache=None), options.boots, naive=False,
                       progress=progress)
    result["boot_to_ssh_s"] = _stats(tuned)
    time_boots(env, 1, naive=False, progress=progress)  # saves the state if none fits
    restored = time_boots(env, options.boots, naive=False, progress=progress)
    result["restored_boot_to_ssh_s"] = _stats(restored)
    result["restored_over_cold"] = round(statistics.median(restored)
                                         / statistics.median(tuned), 2)
    if not options.skip_naive:
        naive = time_boots(env, options.boots, naive=True, progress=progress)
        result["naive_boot_to_ssh_s"] = _stats(naive)
        result["naive_over_tuned"] = round(statistics.median(naive) / statistics.median(tuned), 2)
    if not options.skip_guests:
        result["guests"] = _guests(options, progress)
    result.update(_exec_figures(options, env, statistics.median(tuned), progress))
    result.update(_matrix(env, statistics.median(tuned), progress))
    if options.layouts:
        result["layouts"] = _layouts(env, options.layouts, progress)
    if not options.skip_virtiofs:
        result["transports"] = _transports(env, options, progress)
    if not options.skip_qemu10:
        result["qemu10"] = _qemu10(options, progress)
    if options.grid_qemus:
        result["grid"] = _grid(options, progress)
    if not options.skip_scale:
        boot = adjacent_boot(env, progress)
        result["scale"] = _scale(env, options, progress)
        result["scale_over_boot"] = round(result["scale"]["wall_s"] / boot, 1)
    if not options.skip_predict:
        result["predict"] = predict_figure(progress)
    return result


def _layout_lines(layouts: dict[str, Any]) -> list[str]:
    """One line per host layout timed alone, with its rows' statuses."""
    lines = []
    for kind, figure in layouts.items():
        rows = ", ".join(f"{case} {status}" for case, status in figure["rows"].items())
        lines.append(f"layout {kind}: {figure['seconds']:.2f} s (ids, remap and warn, cache "
                     f"none): {rows}; exit {figure['exit_code']}")
    return lines


def summary(result: dict[str, Any]) -> str:
    """Readable lines with each figure beside its target."""
    boot = result["boot_to_ssh_s"]
    accel = result["accel"]["used"]
    target = TARGET_BOOT_KVM_S if accel == "kvm" else TARGET_BOOT_TCG_S
    lines = [
        f"QEMU {result['qemu']['version']}, guest kernel {result['guest']['kernel']}",
        f"accelerator: {accel} ({result['accel']['reason']})",
        f"boot to SSH (tuned, cold): median {boot['median']:.2f} s "
        f"[min {boot['min']:.2f}, max {boot['max']:.2f}] over {result['boots']} boots "
        f"(target <= {target} s {accel})",
        f"boot to SSH (restored): median {result['restored_boot_to_ssh_s']['median']:.2f} s "
        f"= {result['restored_over_cold']}x cold (target <= 0.25x)",
    ]
    if "naive_boot_to_ssh_s" in result:
        naive = result["naive_boot_to_ssh_s"]
        lines.append(
            f"boot to SSH (naive bzImage, default devices): median {naive['median']:.2f} s "
            f"-> {result['naive_over_tuned']}x slower"
        )
    for name, guest in result.get("guests", {}).items():
        lines.append(f"boot to SSH, guest {name} ({guest['kernel']}): median "
                     f"{guest['boot_to_ssh_s']['median']:.2f} s")
    lines.append(f"exec --cold -- uname -r (whole CLI): median "
                 f"{result['exec_cold_s']['median']:.2f} s, {result['exec_over_boot_s']:+.2f} s "
                 f"over boot to SSH (target <= +0.6 s)")
    lines += _exec_lines(result)
    lines += _matrix_lines(result)
    lines += _layout_lines(result.get("layouts", {}))
    lines += _transport_lines(result.get("transports"))
    if "qemu10" in result:
        q10 = result["qemu10"]
        lines.append(f"default matrix on QEMU {q10['version']}: {q10['matrix_s']:.2f} s; all "
                     f"passed: {q10['matrix_passed']}" if "version" in q10
                     else f"QEMU 10: skipped ({q10['skipped']})")
    for cell in result.get("grid", {}).get("cells", []):
        lines.append(f"grid cell QEMU {cell['version']}: {cell['grid_s']:.1f} s in the grid, "
                     f"{cell['alone_s']:.1f} s alone (medians of {cell['rounds']} alternating "
                     f"rounds) = {cell['ratio']}x (target <= {TARGET_GRID_CELL}x)")
    if "predict" in result:
        found = result["predict"]
        lines.append(f"predict: {found['paths']} paths on {found['devices']} devices in "
                     f"{found['wall_s']:.2f} s ({found['cpu_s']:.2f} s CPU; target <= "
                     f"{TARGET_PREDICT_S} s), exit {found['exit_code']}")
    if "scale" in result:
        scale = result["scale"]
        lines.append(
            f"scale: remap, {scale['devices']} devices, {scale['files_checked']} paths checked "
            f"in {scale['wall_s']:.1f} s = {result['scale_over_boot']}x the cold boot before it "
            f"({scale['files_per_s']}/s; target <= {TARGET_SCALE_OVER_BOOT}x); "
            f"passed: {scale['passed']}"
        )
    return "\n".join(lines)


def _matrix_lines(result: dict[str, Any]) -> list[str]:
    """The default matrix against a cold boot, and the ids family's parts."""
    lines: list[str] = []
    lines.append(
        f"default matrix: {result['matrix_s']:.2f} s cold = {result['matrix_over_boot']}x the "
        f"cold boot timed before it (target <= {TARGET_MATRIX_OVER_BOOT}x), "
        f"{result['restored_matrix_s']:.2f} s restored = {result['restored_matrix_over_boot']}x "
        f"(ids family alone: "
        f"{result['restored_matrix_ids_only_s']:.2f} s); "
        f"all passed: {result['matrix_passed'] and result['restored_matrix_passed']}"
    )
    families = result.get("matrix_families")
    if families:
        lines.append("default matrix, cold, guest seconds by family: " + ", ".join(
            f"{name} {f['seconds']:.2f} s ({f['rows']:.0f} rows)"
            for name, f in families.items()))
    lines.append(
        f"ids family, restored: cache none,loose {result['restored_matrix_ids_only_s']:.2f} s, "
        f"cache none only {result['restored_matrix_ids_cache_none_s']:.2f} s, "
        f"none,loose without witnesses {result['restored_matrix_ids_no_witness_s']:.2f} s"
    )
    return lines


def _exec_lines(result: dict[str, Any]) -> list[str]:
    """exec warm, against ``--accel tcg`` and against virtme-ng (or why vng did not run)."""
    lines = [f"exec -- uname -r, warm state cache: median {result['exec_s']['median']:.2f} s "
             f"= {result['exec_over_tcg']}x the same with --accel tcg "
             f"({result['exec_tcg_s']['median']:.2f} s; target <= {TARGET_EXEC_OVER_TCG}x)"]
    vng = result.get("vng")
    if vng is None:
        return lines
    if "seconds" not in vng:
        return [*lines, f"virtme-ng: not measured: {vng['skipped']}"]
    return [*lines, f"{vng['version']}: vng --exec 'uname -r' --verbose (TCG, same "
                    f"kernel): median {vng['seconds']['median']:.2f} s; exec = "
                    f"{result['exec_over_vng']}x vng (target <= {TARGET_EXEC_OVER_VNG}x)"]


def _transport_lines(figure: dict[str, Any] | None) -> list[str]:
    """Per transport, each row's guest boot and observation time."""
    if figure is None:
        return []
    lines = [f"9p beside virtiofs (virtiofsd {figure['virtiofsd']}; ids, cache=none for 9p): "
             f"{figure['seconds']:.2f} s, exit {figure['exit_code']}"]
    for transport in ("9p", "virtiofs"):
        rows = [r for r in figure["rows"] if r["transport"] == transport]
        lines += [f"  {transport} {r['case']}: {r['status']}, guest boot {r['boot_s']:.2f} s "
                  f"({r['boot']}), observed in {r['observe_s']:.2f} s" for r in rows]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m harness.bench``: print JSON on stdout, the summary on stderr."""
    options = parse_bench_options(argv)

    def progress(message: str) -> None:
        print(f"[bench] {message}", file=sys.stderr, flush=True)

    result = run_bench(options, progress)
    text = json.dumps(result, indent=2)
    print(text)
    if options.json:
        options.json.write_text(text + "\n")
    print(summary(result), file=sys.stderr)
    return 0

