"""QEMU from Debian by suite, and the newest one the suite is pinned to (issue 33).

The newest pinned QEMU (sid's) runs a small matrix here, so the next deprecation of an
option the harness passes shows up in this suite, not in a user's nightly job.  A pin
the archive no longer serves skips the test naming the pin and the command that moves
it: an archive change never fails CI.  Two simulated QEMUs hold the stderr grammar to
its promise: sid's QEMU given the ``-mon`` it deprecates must give no failing row and
one line naming it; a located multi-device warning must still count as the warning.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from harness import paths
from harness.errors import ArchiveUnreachable
from harness.qemu.debian import SUITES, DebianBuild, PinGone, fetch_debian_qemu
from harness.qemu.pins import load_pins

from .helpers import HARNESS_TIMEOUT, needs_qemu, qemu_child_wrapper
from .leaks import Sandbox

NEWEST = "sid"
NOTICE = "QEMU warns about an option the harness passed, not one under test"


@pytest.fixture(scope="module")
def newest() -> DebianBuild:
    """The pinned sid QEMU, fetched into the cache once (about 35 MB, 10 s here)."""
    pin = load_pins()[NEWEST]
    try:
        return fetch_debian_qemu(SUITES[NEWEST], version=pin)
    except PinGone as exc:
        pytest.skip(f"the pin of Debian {NEWEST} is stale: {exc.message}; move it with "
                    "'multidevs-harness qemu pin --update' (harness/qemu-pins.toml)")
    except ArchiveUnreachable as exc:
        pytest.skip(f"Debian archive unreachable, no {NEWEST} QEMU to test: {exc.message}")


def _run(sandbox: Sandbox, qemu: str, report: Path, *extra: str) -> tuple[
        str, dict[str, Any]]:
    result = sandbox.run(["run", "--accel", "tcg", "--qemu", qemu, "--json", str(report),
                          *extra], timeout=HARNESS_TIMEOUT + 60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stderr, json.loads(report.read_text())


@needs_qemu
@pytest.mark.timeout(300)
def test_the_newest_pinned_qemu_passes_a_small_matrix(newest: DebianBuild,
                                                      tmp_path: Path) -> None:
    sandbox = Sandbox(tmp_path / "sandbox")
    stderr, data = _run(sandbox, f"debian:{NEWEST}", tmp_path / "run.json",
                        "--modes", "remap,warn,forbid", "--checks", "ids,held_fd",
                        "--layout", "standard")
    assert data["qemu"]["package"] == f"Debian {newest.version}", data["qemu"]
    statuses = {r["case"]: r["status"] for r in data["results"]}
    # held_fd-forbid is the known qemu-forbid-held-fid (still in 11.1); nothing fails.
    assert set(statuses.values()) <= {"pass", "known"} and statuses["remap"] == "pass", \
        statuses
    # The harness passes nothing this QEMU deprecates: it asked for monitor-qmp.
    assert data["qemu_warnings_on_harness_options"] == [] and NOTICE not in stderr
    command = data["results"][0]["qemu_command"]
    assert "monitor-qmp,id=qmpmon,chardev=qmp" in command and " -mon " not in command
    sandbox.assert_clean()


MON_WRAPPER = """\
#!{python}
# sid's QEMU handed the -mon it deprecates in place of the monitor-qmp object the
# harness asked for (guest boots only; the probe runs unchanged).
import os, sys
real = {real!r}
args = sys.argv[1:]
if "-append" in args:
    at = args.index("monitor-qmp,id=qmpmon,chardev=qmp")
    args[at - 1:at + 1] = ["-mon", "chardev=qmp,mode=control"]
os.execv(real, [real, *args])
"""


@needs_qemu
@pytest.mark.timeout(300)
def test_a_deprecation_of_the_harnesss_own_option_fails_no_row_and_is_said_once(
    newest: DebianBuild, tmp_path: Path,
) -> None:
    wrapper = tmp_path / "qemu-mon"
    wrapper.write_text(MON_WRAPPER.format(python=sys.executable, real=str(newest.wrapper)))
    wrapper.chmod(0o755)
    sandbox = Sandbox(tmp_path / "sandbox")
    stderr, data = _run(sandbox, str(wrapper), tmp_path / "run.json",
                        "--modes", "remap,warn", "--checks", "ids", "--layout", "standard")
    line = ("qemu-system-x86_64: -mon chardev=qmp,mode=control: warning: '-mon' is "
            "deprecated, use '-object' with 'monitor-hmp' or 'monitor-qmp' types instead")
    said = [text for text in stderr.splitlines() if NOTICE in text]
    # Two guests printed it; it is said once, with QEMU's own words and the option.
    assert len(said) == 1 and said[0].endswith(line), stderr
    assert data["qemu_warnings_on_harness_options"] == [line]
    assert {r["status"] for r in data["results"]} == {"pass"}, data["results"]
    sandbox.assert_clean()


@needs_qemu
@pytest.mark.timeout(300)
def test_a_located_multidevs_warning_still_counts_as_the_warning(tmp_path: Path) -> None:
    # The location names the -fsdev with a multidevs= value of its own: the message,
    # not the location, says which message it is.
    located = ("qemu-system-x86_64: -fsdev local,id=fsdev0,multidevs=forbid: warning: 9p: "
               "Multiple")
    wrapper = qemu_child_wrapper(tmp_path, old="qemu-system-x86_64: warning: 9p: Multiple",
                                 new=located)
    sandbox = Sandbox(tmp_path / "sandbox")
    _, data = _run(sandbox, str(wrapper), tmp_path / "run.json", "--modes", "warn",
                   "--checks", "ids", "--layout", "standard", "--no-control")
    rows = {r["case"]: r for r in data["results"]}
    assert rows["warn"]["status"] == "pass", rows["warn"]
    assert rows["warn"]["qemu_message"].startswith(located), rows["warn"]["qemu_message"]
    sandbox.assert_clean()


@pytest.mark.timeout(60)
def test_an_unknown_suite_is_refused_naming_the_suites(tmp_path: Path) -> None:
    sandbox = Sandbox(tmp_path / "sandbox")
    result = sandbox.run(["run", "--qemu", "debian:nosuchsuite"], timeout=50)
    assert result.returncode == 2, result.stderr
    assert "error: --qemu debian:nosuchsuite: Debian has no suite 'nosuchsuite'" \
        in result.stderr and "debian:bullseye" in result.stderr and "Traceback" not in \
        result.stderr
    sandbox.assert_clean()


@pytest.mark.timeout(120)
def test_an_unreachable_archive_is_exit_2_naming_the_step_and_leaves_no_build(
    tmp_path: Path,
) -> None:
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    sandbox = Sandbox(tmp_path / "sandbox")
    # Port 9 (discard) on loopback: nothing listens, the connection is refused at once.
    result = sandbox.run(["qemu", "fetch", "forky"], timeout=100,
                         env={"MDH_CACHE_DIR": str(cache),
                              "MDH_DEBIAN_MIRROR": "http://127.0.0.1:9/debian"})
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: apt-get update for Debian forky failed (exit 100)"] or \
        errors == ["error: apt-get update for Debian forky fetched no package list"], \
        result.stderr
    builds = paths.qemu_builds_dir(cache)
    assert not builds.exists() or list(builds.iterdir()) == []
    sandbox.assert_clean()


@pytest.mark.timeout(60)
def test_the_cache_lists_the_fetched_build_with_its_pin(newest: DebianBuild,
                                                        tmp_path: Path) -> None:
    sandbox = Sandbox(tmp_path / "sandbox")
    result = sandbox.run(["qemu", "list", "--json"], timeout=50)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    builds = {(b["suite"], b["version"]): b for b in data["builds"]}
    listed = builds[(NEWEST, newest.version)]
    assert listed["binary"] == str(newest.wrapper) and data["pins"][NEWEST] == newest.version
    text = sandbox.run(["qemu", "list"], timeout=50)
    assert text.returncode == 0 and f"{newest.version}" in text.stdout and "pinned" in \
        text.stdout, text.stdout + text.stderr
    sandbox.assert_clean()
