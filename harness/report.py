"""Render a finished run as a terminal table, JSON and JUnit XML."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import AccelDecision
from .oracle import Verdict


@dataclass(frozen=True)
class CaseResult:
    """One guest's outcome: which case, its verdict, and where its evidence is."""

    case: str  # the mode name, or "control-<mode>" for the single-device control
    verdict: Verdict
    boot_seconds: float | None
    log_dir: Path
    via: str = "qemu"
    qemu_command: str = ""
    guest_command: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.verdict.passed


@dataclass(frozen=True)
class RunReport:
    """Everything a run found, plus the facts needed to reproduce it."""

    qemu_binary: str
    qemu_version: str
    multidevs_supported: bool
    accel: AccelDecision
    guest_kernel: str
    results: tuple[CaseResult, ...]
    wall_seconds: float = 0.0
    log_dir: str = ""
    logs_kept: bool = True

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def inconclusive(self) -> bool:
        return any(r.verdict.inconclusive for r in self.results)


def _yes_no(value: bool | None) -> str:
    return "n/a" if value is None else ("intact" if value else "BROKEN")


def table(report: RunReport) -> str:
    """A fixed-width table: case, expectation, observed, tar witness, verdict."""
    headers = ("case", "expectation", "observed", "tar witness", "verdict")
    rows = [
        (
            r.case,
            r.verdict.expectation,
            r.verdict.observed,
            _yes_no(r.verdict.witness_intact),
            "INCONCLUSIVE" if r.verdict.inconclusive else ("PASS" if r.passed else "FAIL"),
        )
        for r in report.results
    ]
    widths = [max(len(str(row[i])) for row in (headers, *rows)) for i in range(len(headers))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    failures = [(r.case, f) for r in report.results for f in r.verdict.failures]
    if failures:
        lines.append("")
        lines.append("failures:")
        for case, failure in failures:
            lines.append(f"  [{case}] {failure}")
    return "\n".join(lines)


def summary_line(report: RunReport) -> str:
    """One line for the end of the terminal output."""
    passed = sum(r.passed for r in report.results)
    accel = report.accel.used.value
    note = " (fell back: " + report.accel.reason + ")" if report.accel.fell_back else ""
    return (
        f"{passed}/{len(report.results)} cases passed in {report.wall_seconds:.1f} s "
        f"under {accel}{note}; QEMU {report.qemu_version} ({report.qemu_binary})"
    )


def result_dict(result: CaseResult) -> dict[str, Any]:
    """The JSON object of one case (keys promised in the README)."""
    v = result.verdict
    return {
        "case": result.case,
        "mode": v.mode.value,
        "via": result.via,
        "passed": v.passed,
        "inconclusive": v.inconclusive,
        "expectation": v.expectation,
        "observed": v.observed,
        "host_devices": v.host_devices,
        "files_checked": v.files_checked,
        "guest_collisions": len(v.collisions),
        "collisions": [
            {
                "guest_id": list(c.guest_id),
                "host_files": [
                    {"path": path, "dev": dev, "ino": ino} for path, dev, ino in c.host_files
                ],
            }
            for c in v.collisions[:50]
        ],
        "denied": v.denied,
        "qemu_message": v.qemu_message,
        "witness": {"tar_intact": v.witness_intact},
        "boot_seconds": None if result.boot_seconds is None else round(result.boot_seconds, 3),
        "failures": list(v.failures),
        "qemu_command": result.qemu_command,
        **result.extra,
    }


def to_json(report: RunReport) -> dict[str, Any]:
    """The whole report as a JSON-ready dict."""
    return {
        "passed": report.passed,
        "qemu": {
            "binary": report.qemu_binary,
            "version": report.qemu_version,
            "multidevs_supported": report.multidevs_supported,
        },
        "accel": {
            "used": report.accel.used.value,
            "reason": report.accel.reason,
            "fell_back": report.accel.fell_back,
        },
        "guest": {"kernel": report.guest_kernel},
        "wall_seconds": round(report.wall_seconds, 3),
        "log_dir": report.log_dir if report.logs_kept else None,
        "results": [result_dict(r) for r in report.results],
    }


def write_json(report: RunReport, path: Path) -> None:
    """Write the JSON report (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_json(report), indent=2) + "\n")


def to_junit(report: RunReport) -> ET.Element:
    """JUnit XML with one testcase per case, failures carrying the exact reasons."""
    failures = sum(1 for r in report.results if not r.passed)
    suite = ET.Element(
        "testsuite",
        name="multidevs-harness",
        tests=str(len(report.results)),
        failures=str(failures),
        errors="0",
        time=f"{report.wall_seconds:.3f}",
    )
    props = ET.SubElement(suite, "properties")
    for name, value in (
        ("qemu.binary", report.qemu_binary),
        ("qemu.version", report.qemu_version),
        ("accel.used", report.accel.used.value),
        ("accel.reason", report.accel.reason),
        ("guest.kernel", report.guest_kernel),
    ):
        ET.SubElement(props, "property", name=name, value=value)
    for result in report.results:
        case = ET.SubElement(
            suite,
            "testcase",
            classname=f"multidevs.{result.via}",
            name=result.case,
            time=f"{result.boot_seconds or 0.0:.3f}",
        )
        if not result.passed:
            kind = "inconclusive" if result.verdict.inconclusive else "regression"
            failure = ET.SubElement(
                case, "failure", message="; ".join(result.verdict.failures)[:1000], type=kind
            )
            failure.text = "\n".join(result.verdict.failures) + f"\nlogs: {result.log_dir}\n"
        out = ET.SubElement(case, "system-out")
        out.text = (
            f"expectation: {result.verdict.expectation}\n"
            f"observed: {result.verdict.observed}\n"
        )
    return suite


def write_junit(report: RunReport, path: Path) -> None:
    """Write the JUnit XML report (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tree = ET.ElementTree(to_junit(report))
    ET.indent(tree)
    tree.write(path, encoding="utf-8", xml_declaration=True)


def collision_table(results: Sequence[CaseResult]) -> str:
    """Guest id -> the distinct host files that share it (for ``reproduce``)."""
    lines: list[str] = []
    for result in results:
        for collision in result.verdict.collisions:
            dev, ino = collision.guest_id
            lines.append(f"guest (dev {dev}, ino {ino}) <- " + ", ".join(
                f"{path!r} (host dev {hdev}, ino {hino})"
                for path, hdev, hino in collision.host_files
            ))
    return "\n".join(lines) if lines else "no collisions"
