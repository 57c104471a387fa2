"""The benchmark's command line, read once into ``BenchOptions``: the measurements
take that frozen value and never see argparse."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..config import ALL_LAYOUTS, Accel, Layout, parse_enum_list

SCALE_DEVICES = 64
SCALE_FILES = 100_000
# Layouts timed one by one: all but scripted-fullmap (~66,000 files, minutes under TCG).
BENCH_LAYOUTS = tuple(k for k in ALL_LAYOUTS if k is not Layout.SCRIPTED_FULLMAP)


@dataclass(frozen=True)
class BenchOptions:
    """What ``scripts/bench`` was asked to measure, and on which QEMU."""

    qemu: str | None = None
    accel: Accel = Accel.AUTO
    boots: int = 5
    skip_naive: bool = False
    skip_scale: bool = False
    skip_qemu10: bool = False
    skip_virtiofs: bool = False
    skip_guests: bool = False
    skip_predict: bool = False
    skip_vng: bool = False
    vng_runs: int = 3
    # The QEMUs of the grid figure; (): no grid figure.
    grid_qemus: tuple[str, ...] = ("debian:bookworm", "debian:sid")
    virtiofsd: Path | None = None
    scale_devices: int = SCALE_DEVICES
    scale_files: int = SCALE_FILES
    scale_cpus: int = 2
    # Host layouts timed one by one; (): none.
    layouts: tuple[Layout, ...] = BENCH_LAYOUTS
    json: Path | None = None


def _parser() -> argparse.ArgumentParser:
    default = BenchOptions()
    parser = argparse.ArgumentParser(prog="bench", description="Speed figures: boot to "
                                     "SSH, exec, the matrix, the scale run, predict, vng.")
    parser.add_argument("--qemu", help="the QEMU to measure (default as for run)")
    parser.add_argument("--accel", default=default.accel.value,
                        choices=[a.value for a in Accel])
    parser.add_argument("--boots", type=int, default=default.boots)
    for skipped in ("naive", "scale", "qemu10", "virtiofs", "predict"):
        parser.add_argument(f"--skip-{skipped}", action="store_true")
    parser.add_argument("--skip-guests", action="store_true",
                        help="skip boot-to-SSH of every guest recipe")
    parser.add_argument("--grid-qemus", default=",".join(default.grid_qemus),
                        help="the QEMUs of the grid figure, comma-separated ('' skips it)")
    parser.add_argument("--skip-vng", action="store_true",
                        help="skip virtme-ng (installed from PyPI into a throwaway venv)")
    parser.add_argument("--vng-runs", type=int, default=default.vng_runs,
                        help="vng --exec runs (each a whole TCG boot; default 3)")
    parser.add_argument("--virtiofsd", type=Path,
                        help="the virtiofsd of the virtiofs rows (default as for run)")
    parser.add_argument("--scale-devices", type=int, default=default.scale_devices)
    parser.add_argument("--scale-files", type=int, default=default.scale_files)
    parser.add_argument("--scale-cpus", type=int, default=default.scale_cpus)
    parser.add_argument("--layouts", default=",".join(default.layouts),
                        help="host layouts timed one by one (default: every one but the "
                        "66,000-file scripted-fullmap; empty: none)")
    parser.add_argument("--json", type=Path, help="also write the JSON here")
    return parser


def parse_bench_options(argv: Sequence[str] | None = None) -> BenchOptions:
    """The benchmark's options from ``argv`` (default: the process's)."""
    ns = _parser().parse_args(argv)
    layouts = parse_enum_list(ns.layouts, ALL_LAYOUTS, "layout", "--layouts standard,overlay") \
        if ns.layouts.strip() else ()
    return BenchOptions(
        qemu=ns.qemu, accel=Accel(ns.accel), boots=ns.boots, skip_naive=ns.skip_naive,
        skip_scale=ns.skip_scale, skip_qemu10=ns.skip_qemu10, skip_virtiofs=ns.skip_virtiofs,
        skip_guests=ns.skip_guests, skip_predict=ns.skip_predict, skip_vng=ns.skip_vng,
        vng_runs=ns.vng_runs,
        grid_qemus=tuple(q.strip() for q in ns.grid_qemus.split(",") if q.strip()),
        virtiofsd=ns.virtiofsd, scale_devices=ns.scale_devices, scale_files=ns.scale_files,
        scale_cpus=ns.scale_cpus, layouts=layouts, json=ns.json)
