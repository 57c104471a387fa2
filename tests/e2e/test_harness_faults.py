"""A fault of the harness is never news about QEMU: exit 2 (125 under --bisect), one
line on the terminal, the traceback in a file, the other guests' work and the reports
kept, and report paths refused before anything boots.

Each fault is a real one, planted where the harness meets the world: a lock file of
another user, an immutable directory in a private copy of the image cache, a report path that
cannot be written.  Before these fixes each gave a traceback and exit 1, the exit
status CI files as a QEMU regression (and ``git bisect run`` as a bad commit).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sysconfig
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import NOBODY, REPO, needs_qemu, needs_root, private_image_cache, python_for_nobody
from .leaks import Sandbox, kept_log_dirs

EXIT_ENVIRONMENT = 2
EXIT_BISECT_SKIP = 125
_FAULT = re.compile(r"harness fault \(a bug in the harness, not a finding\): (.*); "
                    r"traceback in (\S+)")


def _one_error_line(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    assert "Traceback" not in stderr, stderr
    return errors[0]


# --- a lock file of another user ----------------------------------------------------


@pytest.fixture
def nobody_dir() -> Iterator[Path]:
    """A directory user nobody owns (pytest's tmp_path is root's, mode 0700)."""
    path = Path(tempfile.mkdtemp(prefix="mdh-nobody-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@needs_root
@needs_qemu
@pytest.mark.timeout(90)
def test_a_lock_of_another_user_is_exit_2_and_one_line(nobody_dir: Path) -> None:
    """A non-root run on a cache whose ``.lock`` root made: it cannot open the lock
    (PermissionError).  That was a traceback and exit 1; now exit 2 and one line naming
    the lock, its owner and what to do."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    python = python_for_nobody()
    if python is None:
        pytest.skip("no Python that user nobody can run with the harness's packages")
    cache, state, tmp = (nobody_dir / name for name in ("cache", "state", "tmp"))
    for directory in (cache, state, tmp):
        directory.mkdir()
        os.chown(directory, NOBODY, NOBODY)
    (cache / ".lock").touch(mode=0o644)  # root's, as a root run leaves it
    env = {**os.environ, "HOME": str(nobody_dir), "MDH_CACHE_DIR": str(cache),
           "XDG_STATE_HOME": str(state), "TMPDIR": str(tmp),
           "PYTHONPATH": f"{REPO}:{sysconfig.get_paths()['purelib']}"}
    argv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *python,
            "-m", "harness.cli", "exec", "--accel", "tcg", "--", "true"]
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60,
                            check=False, stdin=subprocess.DEVNULL, cwd=nobody_dir)
    assert result.returncode == EXIT_ENVIRONMENT, f"rc {result.returncode}\n{result.stderr}"
    assert _one_error_line(result.stderr) == (
        f"error: cannot open the image cache lock {cache / '.lock'}: Permission denied "
        f"(it belongs to uid 0, this run is uid {NOBODY})")
    assert "hint: run as the user who owns the cache, or set MDH_CACHE_DIR" in result.stderr
    # Nothing but the probe's remembered answers (in a cache of nobody's own) was made.
    assert sorted(p.name for p in cache.iterdir()) in ([".lock"], [".lock", "remembered"])
    assert (cache / ".lock").read_bytes() == b""


# --- a states directory nothing may be made in: every guest's fault ------------------


@pytest.fixture
def frozen_states(tmp_path: Path) -> Iterator[Path]:
    """A private image cache whose ``states`` directory is immutable (chattr +i): the
    harness's own checks pass (ours, mode 0700), but making a state's directory in it
    fails with EPERM, a host condition the harness does not foresee."""
    cache = tmp_path / "cache"
    private_image_cache(cache)
    states = cache / "states"
    shutil.rmtree(states, ignore_errors=True)
    states.mkdir(mode=0o700)
    frozen = subprocess.run(["chattr", "+i", str(states)], capture_output=True, text=True,
                            check=False, timeout=30)
    if frozen.returncode != 0:
        pytest.skip(f"chattr +i is not supported under {tmp_path}: {frozen.stderr.strip()}")
    try:
        yield cache
    finally:
        subprocess.run(["chattr", "-i", str(states)], check=False, timeout=30)


@needs_root
@needs_qemu
@pytest.mark.timeout(200)
def test_a_fault_in_each_guest_becomes_its_error_rows_and_the_reports_are_written(
        tmp_path: Path, frozen_states: Path) -> None:
    """``states`` is immutable, so saving a guest's state raises PermissionError in
    each guest's own thread.  Each guest's rows say so as errors, every other guest
    still boots and runs, the table, JSON and JUnit are written, and ``--bisect``
    exits 125 (skip), not 1 (bad commit)."""
    cache = frozen_states
    sandbox = Sandbox(tmp_path / "sandbox")
    out = tmp_path / "out"
    result = sandbox.run(
        ["run", "--accel", "tcg", "--modes", "remap,warn", "--isolate", "--checks", "ids",
         "--cache", "none", "--no-control", "--no-witness", "--bisect",
         "--json", str(out / "run.json"), "--junit", str(out / "run.xml")],
        timeout=180, env={"MDH_CACHE_DIR": str(cache)})
    assert result.returncode == EXIT_BISECT_SKIP, f"rc {result.returncode}\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    report = json.loads((out / "run.json").read_text())
    assert report["exit_code"] == EXIT_ENVIRONMENT and report["passed"] is False
    guests = {row["guest"]["plan"] for row in report["results"]}
    assert len(guests) >= 2, report["results"]
    for name in guests:  # each guest was started on its own, none stopped by another's fault
        assert f"{name}: booting guest" in result.stderr, result.stderr
    traces = set()
    for row in report["results"]:
        assert row["status"] == "error", row
        fault = _FAULT.search(row["failures"][0])
        assert fault is not None, row["failures"]
        assert fault.group(1).startswith("PermissionError: [Errno 1] Operation not "
                                         f"permitted: '{cache / 'states'}/"), fault.group(1)
        traces.add(Path(fault.group(2)))
    for trace in traces:
        text = trace.read_text()
        assert text.startswith("Traceback") and "PermissionError" in text
    suite = ET.parse(out / "run.xml").getroot()
    assert suite.get("errors") == str(len(report["results"])) and suite.get("failures") == "0"
    assert "harness fault" in result.stdout  # the table's failure lines
    sandbox.assert_clean(allowed=kept_log_dirs(result.stderr))


@needs_root
@needs_qemu
@pytest.mark.timeout(120)
def test_a_fault_outside_any_guest_pool_is_exit_2_with_one_line(
        tmp_path: Path, frozen_states: Path) -> None:
    """The same fault under ``exec`` reaches the command line itself: exit 2, one
    ``error:`` line naming it and the file holding the traceback."""
    cache = frozen_states
    sandbox = Sandbox(tmp_path / "sandbox")
    result = sandbox.run(["exec", "--accel", "tcg", "--", "true"], timeout=100,
                         env={"MDH_CACHE_DIR": str(cache)})
    assert result.returncode == EXIT_ENVIRONMENT, f"rc {result.returncode}\n{result.stderr}"
    line = _one_error_line(result.stderr)
    fault = _FAULT.search(line)
    assert line.startswith("error: harness fault") and fault is not None, line
    assert fault.group(1).startswith("PermissionError: [Errno 1] Operation not permitted: "
                                     f"'{cache / 'states'}/"), line
    trace = Path(fault.group(2))
    assert trace.parent == sandbox.log_base
    assert "PermissionError" in trace.read_text()
    assert result.stdout == ""
    sandbox.assert_clean(allowed=[*kept_log_dirs(result.stderr), trace])


# --- report paths -------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", ["json-in-missing-proc-dir", "junit-is-a-directory"])
def test_unwritable_report_paths_are_refused_before_anything_boots(tmp_path: Path,
                                                                   case: str) -> None:
    """Found after the run, a report that cannot be written lost the run's work (and
    was a traceback, exit 1); now exit 2 at once, naming the path."""
    sandbox = Sandbox(tmp_path / "sandbox")
    if case == "json-in-missing-proc-dir":
        option, path, reason = "--json", Path("/proc/nope/run.json"), "No such file or directory"
    else:
        option, path, reason = "--junit", tmp_path / "reports", "Is a directory"
        path.mkdir()
    started = time.monotonic()
    result = sandbox.run(["run", "--accel", "tcg", option, str(path)],
                         timeout=40)
    assert time.monotonic() - started < 20
    assert result.returncode == EXIT_ENVIRONMENT, f"rc {result.returncode}\n{result.stderr}"
    assert _one_error_line(result.stderr) == f"error: {option} {path} cannot be written: {reason}"
    assert f"hint: pass {option} a file in a writable directory" in result.stderr
    assert "booting" not in result.stderr and "probing" not in result.stderr
    assert result.stdout == ""
    sandbox.assert_clean()


@pytest.mark.timeout(60)
def test_a_run_that_ends_before_any_row_still_writes_its_reports(tmp_path: Path) -> None:
    """CI reads the reports: a run stopped before any row (here a missing QEMU) writes
    them anyway, exit code 2 and the reason, instead of leaving none."""
    sandbox = Sandbox(tmp_path / "sandbox")
    out = tmp_path / "out"
    qemu = "/nonexistent/qemu-system-x86_64"
    result = sandbox.run(["run", "--accel", "tcg", "--qemu", qemu, "--json",
                          str(out / "run.json"), "--junit", str(out / "run.xml")], timeout=40)
    assert result.returncode == EXIT_ENVIRONMENT, f"rc {result.returncode}\n{result.stderr}"
    line = _one_error_line(result.stderr)
    assert line == f"error: QEMU binary {qemu} does not exist", line
    report = json.loads((out / "run.json").read_text())
    assert report == {"passed": False, "exit_code": EXIT_ENVIRONMENT,
                      "error": f"QEMU binary {qemu} does not exist", "results": []}
    suite = ET.parse(out / "run.xml").getroot()
    assert (suite.get("tests"), suite.get("errors"), suite.get("failures")) == ("1", "1", "0")
    error = suite.find("testcase/error")
    assert error is not None and error.get("message") == f"QEMU binary {qemu} does not exist"
    assert sorted(p.name for p in out.iterdir()) == ["run.json", "run.xml"]
    sandbox.assert_clean()
