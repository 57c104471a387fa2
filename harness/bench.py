"""The speed benchmark behind ``scripts/bench``: figures, not pass/fail.

Measures QEMU-start-to-SSH for the tuned guest and for a naive baseline in the same
run, the wall time of the default matrix, and a 64-device, 100,000-file remap run.
Targets are printed beside the figures; machines are too noisy for timed tests.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from .config import ALL_MODES, Accel, BootMethod, ExportLayout, ExportSpec, Mode
from .environment import Environment, prepare
from .export import build_export
from .machine import Machine
from .namespace import enter_private_namespace
from .observe import SCALE_AGENT_THREADS
from .oracle import Verdict
from .plan import RunOptions
from .report import environment_json
from .results import EnvironmentRecord
from .run import run_matrix

Progress = Callable[[str], None]

TARGET_BOOT_TCG_S = 2.0
TARGET_BOOT_KVM_S = 0.5
TARGET_MATRIX_OVER_BOOT = 2.0
TARGET_SCALE_S = 30.0
SCALE_DEVICES = 64
SCALE_FILES = 100_000


def _stats(samples: Sequence[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(samples), 3),
        "min": round(min(samples), 3),
        "max": round(max(samples), 3),
    }


def time_boots(env: Environment, count: int, naive: bool, progress: Progress) -> list[float]:
    """Seconds from QEMU's start to an SSH session, ``count`` times, one 3-device export."""
    samples: list[float] = []
    with build_export(ExportLayout(devices=3, files_per_device=8)) as export:
        share = ExportSpec(tag="mdh0", path=export.root, mode=Mode.REMAP,
                           mount_point="/mnt/mdh0")
        for index in range(count):
            with tempfile.TemporaryDirectory(prefix="mdh-bench-") as logs:
                spec = env.machine_spec([share], Path(logs))
                if naive:
                    spec = replace(spec, boot=BootMethod.BZIMAGE, tuned=False)
                with Machine(spec, name="naive" if naive else "tuned") as machine:
                    machine.wait_ready()
                    assert machine.boot_seconds is not None
                    samples.append(machine.boot_seconds)
            progress(f"{'naive' if naive else 'tuned'} boot {index + 1}/{count}: "
                     f"{samples[-1]:.2f} s")
    return samples


def header(record: EnvironmentRecord, boots: int) -> dict[str, Any]:
    """The figures' first keys: the environment block every output shares, and the count."""
    return {**environment_json(record), "boots": boots}


def run_bench(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    """Run every measurement and return the JSON-ready figures."""
    env = prepare(args.qemu, Accel(args.accel), progress=progress)
    enter_private_namespace()
    result = header(env.record, args.boots)
    tuned = time_boots(env, args.boots, naive=False, progress=progress)
    result["boot_to_ssh_s"] = _stats(tuned)
    if not args.skip_naive:
        naive = time_boots(env, args.boots, naive=True, progress=progress)
        result["naive_boot_to_ssh_s"] = _stats(naive)
        result["naive_over_tuned"] = round(statistics.median(naive) / statistics.median(tuned), 2)

    started = time.monotonic()
    matrix = run_matrix(RunOptions(modes=ALL_MODES, layout=ExportLayout()), progress, env=env)
    matrix_s = time.monotonic() - started
    result["matrix_s"] = round(matrix_s, 3)
    result["matrix_passed"] = matrix.passed
    result["matrix_over_boot"] = round(matrix_s / statistics.median(tuned), 2)

    if not args.skip_scale:
        per_device = math.ceil(args.scale_files / args.scale_devices)
        layout = ExportLayout(devices=args.scale_devices, files_per_device=per_device)
        started = time.monotonic()
        scale = run_matrix(
            RunOptions(modes=(Mode.REMAP,), layout=layout, control=False, witness=False,
                       passes=1, guest_cpus=args.scale_cpus,
                       agent_threads=SCALE_AGENT_THREADS),
            progress, env=env,
        )
        scale_s = time.monotonic() - started
        checked = sum(r.verdict.files_checked for r in scale.rows
                      if isinstance(r.verdict, Verdict))
        result["scale"] = {
            "devices": args.scale_devices,
            "files_requested": args.scale_files,
            "files_checked": checked,
            "wall_s": round(scale_s, 3),
            "files_per_s": round(checked / scale_s, 1) if scale_s else None,
            "passed": scale.passed,
        }
    return result


def summary(result: dict[str, Any]) -> str:
    """Readable lines with each figure beside its target."""
    boot = result["boot_to_ssh_s"]
    accel = result["accel"]["used"]
    target = TARGET_BOOT_KVM_S if accel == "kvm" else TARGET_BOOT_TCG_S
    lines = [
        f"QEMU {result['qemu']['version']}, guest kernel {result['guest']['kernel']}",
        f"accelerator: {accel} ({result['accel']['reason']})",
        f"boot to SSH (tuned): median {boot['median']:.2f} s "
        f"[min {boot['min']:.2f}, max {boot['max']:.2f}] over {result['boots']} boots "
        f"(target <= {target} s {accel})",
    ]
    if "naive_boot_to_ssh_s" in result:
        naive = result["naive_boot_to_ssh_s"]
        lines.append(
            f"boot to SSH (naive bzImage, default devices): median {naive['median']:.2f} s "
            f"-> {result['naive_over_tuned']}x slower"
        )
    lines.append(
        f"default matrix: {result['matrix_s']:.2f} s = {result['matrix_over_boot']}x one boot "
        f"(target <= {TARGET_MATRIX_OVER_BOOT}); all passed: {result['matrix_passed']}"
    )
    if "scale" in result:
        scale = result["scale"]
        lines.append(
            f"scale: remap, {scale['devices']} devices, {scale['files_checked']} paths checked "
            f"in {scale['wall_s']:.1f} s ({scale['files_per_s']}/s; target <= "
            f"{TARGET_SCALE_S} s); passed: {scale['passed']}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m harness.bench``: print JSON on stdout, the summary on stderr."""
    parser = argparse.ArgumentParser(prog="bench", description=__doc__)
    parser.add_argument("--qemu")
    parser.add_argument("--accel", default="auto", choices=[a.value for a in Accel])
    parser.add_argument("--boots", type=int, default=5)
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--skip-scale", action="store_true")
    parser.add_argument("--scale-devices", type=int, default=SCALE_DEVICES)
    parser.add_argument("--scale-files", type=int, default=SCALE_FILES)
    parser.add_argument("--scale-cpus", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)

    def progress(message: str) -> None:
        print(f"[bench] {message}", file=sys.stderr, flush=True)

    result = run_bench(args, progress)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    print(summary(result), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
