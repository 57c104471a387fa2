"""``run --json`` and ``--junit`` write a report only where a report belongs.

Before these fixes every report was written to a file beside its path and renamed
over it: ``--json /dev/null`` left a 113-byte regular file where the device had been
(as root, the machine's own ``/dev/null``), ``--json`` naming the ``--kernel`` replaced
the kernel, ``--json`` and ``--junit`` naming one file kept only the JUnit, and
``--json out/`` made a file called ``out``.  Now a device or pipe is written through,
a symbolic link keeps naming the report, and every other clash is refused before
anything is probed or booted (exit 2, one ``error:`` line).

The refusals need no guest; a run that ends before any row (a missing QEMU) still
writes its reports, which is how the written-through cases are shown without a boot.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import socket
import stat
import subprocess
import threading
import time
import tty
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from .helpers import harness_argv, needs_qemu, needs_root, real_qemu
from .leaks import Sandbox, kept_log_dirs

EXIT_ENVIRONMENT = 2
MISSING_QEMU = "/nonexistent/qemu-system-x86_64"
UNRUN = {"passed": False, "exit_code": EXIT_ENVIRONMENT,
         "error": f"QEMU binary {MISSING_QEMU} does not exist", "results": []}


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == EXIT_ENVIRONMENT, f"rc {result.returncode}\n{result.stderr}"
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stdout == ""
    return errors[0]


@needs_root
@pytest.mark.timeout(60)
def test_a_character_device_is_written_through_never_replaced(tmp_path: Path) -> None:
    """A null device made with mknod (major 1, minor 3, as /dev/null) is still that
    device after both reports went to it."""
    sandbox = Sandbox(tmp_path / "sandbox")
    null = tmp_path / "null"
    os.mknod(null, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    result = sandbox.run(["run", "--accel", "tcg", "--qemu", MISSING_QEMU, "--json", str(null),
                          "--junit", str(null)], timeout=40)
    assert _one_error_line(result) == f"error: {UNRUN['error']}"
    after = null.lstat()
    assert stat.S_ISCHR(after.st_mode), oct(after.st_mode)
    assert (os.major(after.st_rdev), os.minor(after.st_rdev)) == (1, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["null", "sandbox"]
    sandbox.assert_clean()


@pytest.mark.timeout(60)
def test_a_terminal_gets_the_report_written_into_it(tmp_path: Path) -> None:
    """A pseudo-terminal's far end (a character device; a node of it made with mknod
    would not open: devpts answers EIO) as --junit: the JUnit arrives at the near end
    and the device is still there."""
    sandbox = Sandbox(tmp_path / "sandbox")
    near, far = os.openpty()
    try:
        tty.setraw(far)  # the bytes as written, no "\r\n" for "\n"
        node = Path(os.ttyname(far))
        rdev = node.stat().st_rdev
        result = sandbox.run(["run", "--accel", "tcg", "--qemu", MISSING_QEMU, "--junit",
                              str(node)], timeout=40)
        assert _one_error_line(result) == f"error: {UNRUN['error']}"
        received = b""
        while not received.endswith(b"</testsuite>\n"):
            ready, _, _ = select.select([near], [], [], 5)
            assert ready, f"the report did not arrive whole: {received!r}"
            received += os.read(near, 65536)
        after = node.lstat()
    finally:
        os.close(far)
        os.close(near)
    suite = ET.fromstring(received)
    error = suite.find("testcase/error")
    assert error is not None and error.get("message") == UNRUN["error"]
    assert stat.S_ISCHR(after.st_mode) and after.st_rdev == rdev, oct(after.st_mode)
    sandbox.assert_clean()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", ["-", "/dev/stdout"])
def test_stdout_gets_the_report_after_the_table(tmp_path: Path, name: str) -> None:
    """``-`` and ``/dev/stdout`` print the report, here into a file the shell would
    have redirected stdout to: not truncated, not replaced (the run's other output
    stays before it)."""
    sandbox = Sandbox(tmp_path / "sandbox")
    out = tmp_path / "stdout.txt"
    with out.open("w") as stdout:
        stdout.write("before\n")
        stdout.flush()
        proc = subprocess.run(harness_argv("run", "--accel", "tcg", "--qemu", MISSING_QEMU,
                                           "--json", name),
                              env=sandbox.env, stdout=stdout, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, text=True, timeout=40, check=False)
    assert proc.returncode == EXIT_ENVIRONMENT, proc.stderr
    text = out.read_text()
    assert text.startswith("before\n") and json.loads(text[len("before\n"):]) == UNRUN
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sandbox", "stdout.txt"]
    sandbox.assert_clean()


@pytest.mark.timeout(60)
def test_a_fifo_carries_the_report_and_stays_a_fifo(tmp_path: Path) -> None:
    """``--json >(jq .)`` hands the harness a pipe: the report must arrive through it."""
    sandbox = Sandbox(tmp_path / "sandbox")
    fifo = tmp_path / "report.fifo"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    result = sandbox.run(["run", "--accel", "tcg", "--qemu", MISSING_QEMU, "--json", str(fifo)],
                         timeout=40)
    reader.join(timeout=10)
    assert _one_error_line(result) == f"error: {UNRUN['error']}"
    assert received and json.loads(received[0]) == UNRUN
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.fifo", "sandbox"]
    sandbox.assert_clean()


@pytest.mark.timeout(60)
def test_a_listening_socket_gets_the_report_and_stays_a_socket(tmp_path: Path) -> None:
    sandbox = Sandbox(tmp_path / "sandbox")
    path = tmp_path / "collector.sock"
    received: list[bytes] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(os.fspath(path))
        server.listen(1)
        server.settimeout(30)

        def collect() -> None:
            with server.accept()[0] as peer:
                chunks = []
                while chunk := peer.recv(65536):
                    chunks.append(chunk)
                received.append(b"".join(chunks))

        collector = threading.Thread(target=collect, daemon=True)
        collector.start()
        result = sandbox.run(["run", "--accel", "tcg", "--qemu", MISSING_QEMU, "--json",
                              str(path)], timeout=40)
        collector.join(timeout=10)
    assert _one_error_line(result) == f"error: {UNRUN['error']}"
    assert received and json.loads(received[0]) == UNRUN
    assert stat.S_ISSOCK(path.lstat().st_mode)
    sandbox.assert_clean()


@pytest.mark.timeout(60)
def test_a_symbolic_link_keeps_naming_the_report(tmp_path: Path) -> None:
    sandbox = Sandbox(tmp_path / "sandbox")
    (tmp_path / "reports").mkdir()
    target = tmp_path / "reports" / "run.json"
    target.write_text("old\n")
    link = tmp_path / "latest.json"
    link.symlink_to(target)
    result = sandbox.run(["run", "--accel", "tcg", "--qemu", MISSING_QEMU, "--json", str(link)],
                         timeout=40)
    assert _one_error_line(result) == f"error: {UNRUN['error']}"
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert json.loads(target.read_text()) == UNRUN
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == ["run.json"]
    sandbox.assert_clean()


def _input_cases(tmp_path: Path) -> dict[str, tuple[list[str], Path, str]]:
    """Per case: the arguments, the input file a report names, and the refusal."""
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(b"\x7fELF not really a kernel\n")
    known = tmp_path / "known.toml"
    known.write_text("")
    qemu = tmp_path / "qemu-copy"
    shutil.copy(real_qemu(), qemu)
    link = tmp_path / "kernel-link"
    os.link(kernel, link)
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "file").write_text("mine\n")
    modules = tmp_path / "modules"
    (modules / "lib").mkdir(parents=True)
    return {
        "json-is-kernel": (["--kernel", str(kernel), "--json", str(kernel)], kernel,
                           f"error: --json {kernel} is the --kernel this run reads; the report "
                           "would replace it"),
        "junit-is-hard-link-of-kernel": (
            ["--kernel", str(kernel), "--junit", str(link)], kernel,
            f"error: --junit {link} is the --kernel this run reads; the report would replace it"),
        "json-is-known-issues": (
            ["--known-issues", str(known), "--json", str(known)], known,
            f"error: --json {known} is the --known-issues this run reads; the report would "
            "replace it"),
        "junit-is-qemu": (["--qemu", str(qemu), "--junit", str(qemu)], qemu,
                          f"error: --junit {qemu} is the --qemu this run reads; the report "
                          "would replace it"),
        "json-in-export-tree": (
            ["--export", str(tree), "--json", str(tree / "sub" / "file")], tree / "sub" / "file",
            f"error: --json {tree / 'sub' / 'file'} is under the --export this run reads; "
            "the report would write into it"),
        "junit-new-file-under-export": (
            ["--export", str(tree), "--junit", str(tree / "new" / "run.xml")],
            tree / "sub" / "file",
            f"error: --junit {tree / 'new' / 'run.xml'} is under the --export this run "
            "reads; the report would write into it"),
        "json-in-modules-tree": (
            ["--kernel", str(kernel), "--modules", str(modules), "--json",
             str(modules / "lib" / "run.json")], kernel,
            f"error: --json {modules / 'lib' / 'run.json'} is under the --modules this run "
            "reads; the report would write into it"),
    }


@needs_qemu
@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", ["json-is-kernel", "junit-is-hard-link-of-kernel",
                                  "json-is-known-issues", "junit-is-qemu", "json-in-export-tree",
                                  "junit-new-file-under-export", "json-in-modules-tree"])
def test_a_report_naming_an_input_is_refused_before_anything_boots(tmp_path: Path,
                                                                   case: str) -> None:
    sandbox = Sandbox(tmp_path / "sandbox")
    args, victim, refusal = _input_cases(tmp_path)[case]
    before = victim.read_bytes()
    started = time.monotonic()
    result = sandbox.run(["run", "--accel", "tcg", *args], timeout=40)
    assert time.monotonic() - started < 20
    assert _one_error_line(result) == refusal
    assert "hint: pass --" in result.stderr and "a file of its own" in result.stderr
    assert "booting" not in result.stderr and "probing" not in result.stderr
    assert victim.read_bytes() == before
    if case == "junit-new-file-under-export":
        assert sorted(p.name for p in (tmp_path / "tree").iterdir()) == ["sub"]
    sandbox.assert_clean()


@pytest.mark.timeout(60)
def test_two_reports_in_one_file_are_refused(tmp_path: Path) -> None:
    sandbox = Sandbox(tmp_path / "sandbox")
    report = tmp_path / "run.out"
    result = sandbox.run(["run", "--accel", "tcg", "--json", str(report), "--junit",
                          str(report)], timeout=40)
    assert _one_error_line(result) == (f"error: --junit {report} is also the --json report's "
                                       "path; one report would overwrite the other")
    assert "hint: give --junit and --json a file each" in result.stderr
    assert "probing" not in result.stderr and not report.exists()
    sandbox.assert_clean()


@pytest.mark.timeout(60)
def test_two_reports_on_stdout_are_refused(tmp_path: Path) -> None:
    sandbox = Sandbox(tmp_path / "sandbox")
    result = sandbox.run(["run", "--accel", "tcg", "--json", "-", "--junit", "/dev/stdout"],
                         timeout=40)
    assert _one_error_line(result) == ("error: --junit /dev/stdout is also the --json report's "
                                       "path; one report would overwrite the other")
    sandbox.assert_clean()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", ["trailing-slash", "existing-directory", "link-to-directory"])
def test_a_directory_is_refused(tmp_path: Path, case: str) -> None:
    sandbox = Sandbox(tmp_path / "sandbox")
    existing = tmp_path / "reports"
    existing.mkdir()
    (tmp_path / "to-reports").symlink_to(existing)
    given = {"trailing-slash": f"{tmp_path / 'new'}/", "existing-directory": str(existing),
             "link-to-directory": str(tmp_path / "to-reports")}[case]
    result = sandbox.run(["run", "--accel", "tcg", "--qemu", MISSING_QEMU, "--json", given],
                         timeout=40)
    line = _one_error_line(result)
    if case == "trailing-slash":
        assert line == (f"error: argument --json: {given!r} names a directory; give the "
                        "report's file name (e.g. out/run.json)")
    else:
        assert line == f"error: --json {given} cannot be written: Is a directory"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reports", "sandbox", "to-reports"]
    assert list(existing.iterdir()) == []
    sandbox.assert_clean()


FAST_RUN = ["run", "--accel", "tcg", "--modes", "remap", "--cache", "none", "--checks", "ids",
            "--no-control", "--no-witness"]


@needs_root
@needs_qemu
@pytest.mark.timeout(180)
@pytest.mark.parametrize("finding", [False, True], ids=["rows-pass", "rows-fail"])
def test_a_report_the_disk_refuses_is_an_error_line_but_never_hides_a_finding(
        tmp_path: Path, finding: bool) -> None:
    """``--junit /dev/full`` (a full disk) after the rows are judged: one ``error:``
    line naming it and the JSON still written; exit 2 when the rows passed, but 1
    when they hold a finding (the overlay's remap collision with no known issues),
    which a report that could not be written must not turn into "could not run".
    Before, it was a harness fault, exit 2 either way."""
    sandbox = Sandbox(tmp_path / "sandbox")
    empty = tmp_path / "known.toml"
    empty.write_text("")
    layout = ["--layout", "overlay", "--known-issues", str(empty)] if finding else \
        ["--layout", "standard"]
    report = tmp_path / "run.json"
    result = sandbox.run([*FAST_RUN, *layout, "--json", str(report), "--junit", "/dev/full"],
                         timeout=150)
    assert result.returncode == (1 if finding else EXIT_ENVIRONMENT), result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: the report /dev/full could not be written: No space left on "
                      "device"], result.stderr
    assert "harness fault" not in result.stderr
    assert json.loads(report.read_text())["exit_code"] == (1 if finding else 0)
    assert stat.S_ISCHR(Path("/dev/full").stat().st_mode)
    sandbox.assert_clean(allowed=kept_log_dirs(result.stderr))
