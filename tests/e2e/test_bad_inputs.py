"""The sweep of bad inputs: each case is a command line (and environment) a user could
type, with the exit status and the exact ``error:`` line it must give.

Every case runs the real CLI in a ``Sandbox`` and must end in exit 2 with exactly one
``error:`` line, a hint, no traceback, nothing on stdout, no "harness fault" (an input
the user controls is never a bug of the harness), nothing booted and nothing left
behind.  A new option ships with its bad inputs added here.

The files a case names are made in the test's own directory: ``{d}`` in an argument
is that directory.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from .helpers import REPO, harness_argv, needs_qemu, qemu_wrapper, real_qemu
from .leaks import Sandbox, kept_log_dirs

EXIT_ENVIRONMENT = 2
EXIT_BISECT_SKIP = 125


def _world(d: Path) -> None:
    """The files the cases name."""
    (d / "dir").mkdir()
    (d / "loop").symlink_to("loop")
    (d / "file-loop").symlink_to("file-loop")
    (d / "deep.toml").write_text("a = " + "[" * 5000 + "]" * 5000 + "\n")
    (d / "typo.toml").write_text('[[issue]]\nid = "mine"\ntitle = "t"\ncomponent = "qemu"\n'
                                 'modes = ["remapp"]\nfailures = ["^x"]\nreproducer = "r"\n')
    (d / "tree").mkdir()
    (d / "tree" / "file").write_text("mine\n")
    os.mkfifo(d / "fifo")
    (d / "empty").write_bytes(b"")
    (d / "bad.toml").write_text("not [ toml\n")
    (d / "partial.toml").write_text('[[issue]]\nid = "x"\n')
    fake = d / "fake-qemu"
    fake.write_text("#!/bin/sh\necho 'not qemu'\n")
    fake.chmod(0o755)


# (case id, arguments, the whole error line)
CASES: list[tuple[str, list[str], str]] = [
    # Input errors that were harness faults (IsADirectoryError, RuntimeError,
    # RecursionError) with a traceback file.
    ("kernel-is-a-directory", ["run", "--kernel", "{d}/dir"],
     "error: --kernel {d}/dir is a directory, not a regular file"),
    ("known-issues-is-a-directory", ["run", "--known-issues", "{d}/dir"],
     "error: --known-issues {d}/dir is a directory, not a regular file"),
    ("export-is-a-symlink-loop", ["run", "--export", "{d}/loop"],
     "error: {d}/loop: a loop of symbolic links; pass an existing directory"),
    ("predict-a-symlink-loop", ["predict", "{d}/loop"],
     "error: {d}/loop: a loop of symbolic links; pass an existing directory"),
    ("known-issues-nested-5000-deep", ["run", "--known-issues", "{d}/deep.toml"],
     "error: {d}/deep.toml: not a known-issues file: nested too deeply to read"),
    # Was accepted: the issue got a scope no row is ever in, and its bug showed as a
    # plain failure.
    ("known-issues-mode-typo", ["run", "--known-issues", "{d}/typo.toml"],
     "error: {d}/typo.toml: issue 1 (mine): modes: unknown value 'remapp' for transport 9p"),
    # Selections that plan no row: were "0/0 rows passed" and exit 2 without a word.
    ("held_fd-without-forbid", ["run", "--modes", "remap", "--checks", "held_fd"],
     "error: --checks held_fd with --modes remap selects no rows: held_fd runs under "
     "forbid only, not under remap"),
    ("writing-family-over-export", ["run", "--export", "{d}/tree", "--checks", "operations"],
     "error: --checks operations with --modes remap,warn,forbid,default selects no rows: "
     "operations writes into the export and an --export tree is never written (over "
     "--export only ids runs)"),
    ("bind-without-control", ["run", "--no-control", "--checks", "bind"],
     "error: --checks bind with --modes remap,warn,forbid,default selects no rows: bind "
     "runs in the control guest, which --no-control leaves out"),
    # Was an ERROR row naming the harness's bind of the tree in its cache, not the
    # user's path, and no error line.
    ("export-over-max-paths", ["run", "--export", "{d}/tree", "--max-paths", "1"],
     "error: --export {d}/tree holds more than 1 paths"),
    ("reproduce-export-over-max-paths",
     ["reproduce", "--export", "{d}/tree", "--max-paths", "1"],
     "error: --export {d}/tree holds more than 1 paths"),
    ("export-max-paths-0", ["run", "--export", "{d}/tree", "--max-paths", "0"],
     "error: --max-paths must be at least 1, got 0"),
    # Options out of range, empty, or unused by the mode of operation chosen: each was
    # accepted and ignored (exit 0 after a whole run).
    ("jobs-below-0", ["run", "--jobs", "-1"], "error: --jobs must be 0 or more, got -1"),
    ("guest-empty", ["run", "--guest", ""],
     "error: --guest '' names an empty recipe (an unset variable?)"),
    ("guest-empty-in-a-list", ["run", "--guest", "debian-bookworm-x86_64,"],
     "error: --guest 'debian-bookworm-x86_64,' names an empty recipe (an unset variable?)"),
    ("exec-guest-empty", ["exec", "--guest", "", "--", "true"],
     "error: --guest '' names an empty recipe (an unset variable?)"),
    ("max-paths-without-export", ["run", "--max-paths", "5"],
     "error: --max-paths limits the walk of --export, and no --export was given"),
    ("export-with-layout", ["run", "--export", "{d}/tree", "--layout", "overlay"],
     "error: --layout shapes the built layouts, and --export {d}/tree checks your own tree "
     "instead: it would be ignored"),
    ("export-with-devices-and-files", ["run", "--export", "{d}/tree", "--dev", "4",
                                       "--files", "3"],
     "error: --devices, --files shape the built layouts, and --export {d}/tree checks your "
     "own tree instead: they would be ignored"),
    ("reproduce-export-with-nested", ["reproduce", "--export", "{d}/tree", "--files", "2"],
     "error: --files shapes the built layouts, and --export {d}/tree checks your own tree "
     "instead: it would be ignored"),
    ("reproduce-loop-with-devices", ["reproduce", "--layout", "loop", "--devices", "5"],
     "error: --devices 5 is ignored by --layout loop (loop has 2 device(s) of its own)"),
    ("json-is-a-symlink-loop", ["run", "--json", "{d}/file-loop"],
     "error: --json {d}/file-loop cannot be written: Too many levels of symbolic links"),
    ("kernel-is-a-symlink-loop", ["run", "--kernel", "{d}/file-loop"],
     "error: --kernel {d}/file-loop: Too many levels of symbolic links"),
    ("predict-max-paths-0", ["predict", "{d}/tree", "--max-paths", "0"],
     "error: --max-paths must be at least 1, got 0"),
    # Kept from the first sweep, right already: a new option adds its own below.
    ("cache-bogus", ["run", "--cache", "bogus"], "error: unknown 9p cache mode 'bogus'"),
    ("transport-bogus", ["run", "--transport", "bogus"], "error: unknown transport 'bogus'"),
    ("layout-bogus", ["run", "--layout", "bogus"], "error: unknown layout 'bogus'"),
    ("checks-empty", ["run", "--checks", ""], "error: no check family given"),
    ("modes-empty", ["run", "--modes", ""], "error: no multidevs mode given"),
    ("files-negative", ["run", "--files", "-3"],
     "error: --files must be between 1 and 100000, got -3"),
    ("files-not-a-number", ["run", "--files", "1e3"],
     "error: argument --files: not a whole number: '1e3'"),
    ("kernel-is-a-fifo", ["run", "--kernel", "{d}/fifo"],
     "error: --kernel {d}/fifo is a FIFO, not a regular file"),
    ("kernel-empty-file", ["run", "--kernel", "{d}/empty"],
     "error: --kernel {d}/empty is neither an ELF vmlinux nor a bzImage"),
    ("known-issues-not-toml", ["run", "--known-issues", "{d}/bad.toml"],
     "error: {d}/bad.toml: not valid TOML: Expected '=' after a key in a key/value pair "
     "(at line 1, column 5)"),
    ("known-issues-missing-keys", ["run", "--known-issues", "{d}/partial.toml"],
     "error: {d}/partial.toml: issue 1 (x): missing title, component, modes, failures, "
     "reproducer"),
    ("qemu-not-qemu", ["run", "--qemu", "{d}/fake-qemu"],
     "error: {d}/fake-qemu is not QEMU: 'fake-qemu --version' exited 0 without a 'QEMU "
     "emulator version' line"),
    ("modules-without-a-release", ["run", "--modules", "{d}/tree"],
     "error: {d}/tree must hold exactly one lib/modules/<release> folder (found: none)"),
    ("export-is-a-file", ["run", "--export", "{d}/empty"],
     "error: {d}/empty is not a directory; pass the directory to export"),
    ("qemu-datadir-is-a-file", ["run", "--qemu-datadir", "{d}/empty"],
     "error: --qemu-datadir {d}/empty is not a directory"),
    ("recipe-missing", ["run", "--guest", "nosuch"],
     "error: guest recipe nosuch not found (looked for {repo}/guests/nosuch/recipe.toml)"),
    ("predict-a-fifo", ["predict", "{d}/fifo"],
     "error: {d}/fifo is not a directory; pass the directory to export"),
    ("predict-bad-version", ["predict", "{d}/tree", "--qemu-version", "1.x"],
     "error: --qemu-version '1.x' is not X.Y[.Z]"),
    ("exec-without-a-command", ["exec", "--accel", "tcg"], "error: no command given"),
    ("run-fixed-layouts-with-devices", ["run", "--layout", "loop,overlay", "--devices", "5"],
     "error: --devices 5 is ignored by --layout loop,overlay (loop has 2, overlay has 1 "
     "device(s) of its own)"),
    # --qemu: a directory or a link loop said "does not exist".
    ("qemu-is-a-directory", ["run", "--qemu", "{d}/dir"],
     "error: QEMU binary {d}/dir is a directory"),
    ("qemu-is-a-symlink-loop", ["run", "--qemu", "{d}/loop"],
     "error: QEMU binary {d}/loop cannot be reached: Too many levels of symbolic links"),
    ("qemu-unknown-debian-suite", ["run", "--qemu", "debian:nosuchsuite"],
     "error: --qemu debian:nosuchsuite: Debian has no suite 'nosuchsuite' that serves QEMU "
     "here"),
    ("grid-unknown-debian-suite", ["grid", "--qemu", "debian:sid,debian:nosuchsuite"],
     "error: --qemu debian:nosuchsuite: Debian has no suite 'nosuchsuite' that serves QEMU "
     "here"),
    ("grid-empty-guest", ["grid", "--qemu", "debian:sid", "--guest", "a,,b"],
     "error: --guest 'a,,b' names an empty recipe (an unset variable?)"),
]

# (case id, environment, the whole error line) for ``run`` with no further options.
ENV_CASES: list[tuple[str, dict[str, str], str]] = [
    ("cache-dir-empty", {"MDH_CACHE_DIR": ""},
     "error: MDH_CACHE_DIR is set to nothing (an unset variable?)"),
    ("home-empty", {"HOME": "", "XDG_CACHE_HOME": ""},
     "error: HOME is set to nothing, so the cache would be /.cache"),
]


def _filled(text: str, d: Path) -> str:
    return text.replace("{d}", str(d)).replace("{repo}", str(REPO))


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("args", "line", "env"),
                         [(a, line, {}) for _, a, line in CASES]
                         + [(["run"], line, env) for _, env, line in ENV_CASES],
                         ids=[case for case, _, _ in CASES] + [case for case, _, _ in ENV_CASES])
def test_a_bad_input_is_exit_2_and_one_error_line(tmp_path: Path, args: list[str],
                                                  line: str, env: dict[str, str]) -> None:
    world = tmp_path / "world"
    world.mkdir()
    _world(world)
    sandbox = Sandbox(tmp_path / "sandbox")
    argv = [_filled(a, world) for a in args]
    if argv[0] == "run":
        argv[1:1] = ["--accel", "tcg"]
    started = time.monotonic()
    # The environment cases judge the cache's own variables: none comes from ours.
    result = sandbox.run(argv, timeout=40, env=env,
                         argv=["env", "-u", "MDH_CACHE_DIR", *harness_argv(*argv)]
                         if env and "MDH_CACHE_DIR" not in env else None)
    assert time.monotonic() - started < 20, "a bad input needs no guest"
    err = result.stderr
    assert result.returncode == EXIT_ENVIRONMENT, f"rc {result.returncode}\n{err}"
    errors = [each for each in err.splitlines() if each.startswith("error:")]
    assert errors == [_filled(line, world)], err
    assert "harness fault" not in err and "Traceback" not in err, err
    assert "booting" not in err, err
    assert result.stdout == ""
    sandbox.assert_clean()


@pytest.mark.timeout(60)
def test_a_bad_input_under_bisect_is_125(tmp_path: Path) -> None:
    """``git bisect run`` skips a commit it cannot judge: an input error is no verdict."""
    sandbox = Sandbox(tmp_path / "sandbox")
    result = sandbox.run(["run", "--accel", "tcg", "--bisect", "--modes", "warn", "--checks",
                          "held_fd"], timeout=40)
    assert result.returncode == EXIT_BISECT_SKIP, result.stderr
    assert "held_fd runs under forbid only, not under warn" in result.stderr
    sandbox.assert_clean()


@needs_qemu
@pytest.mark.timeout(60)
def test_probe_of_a_qemu_too_old_says_why(tmp_path: Path) -> None:
    """probe prints its record, then exits 2 with the reason: before, its only word
    was ``qemu.multidevs_supported false``."""
    old = tmp_path / "qemu-4.1"
    old.write_text("#!/bin/sh\ncase \"$*\" in *--version*) echo 'QEMU emulator version 4.1.0'; "
                   f"exit 0;; esac\nexec {real_qemu()} \"$@\"\n")
    old.chmod(0o755)
    sandbox = Sandbox(tmp_path / "sandbox")
    result = sandbox.run(["probe", "--accel", "tcg", "--qemu", str(old)], timeout=40)
    assert result.returncode == EXIT_ENVIRONMENT, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {old} is QEMU 4.1.0; multidevs needs QEMU >= 4.2"], result.stderr
    assert "qemu.multidevs_supported   false" in result.stdout
    sandbox.assert_clean()


@needs_qemu
@pytest.mark.timeout(120)
def test_a_run_whose_rows_could_not_be_judged_says_why_in_an_error_line(
        tmp_path: Path) -> None:
    """Every exit 2 has its ``error:`` line: a run whose guest cannot boot (a QEMU that
    rejects a device) gives error rows, and the line counts them and names the first
    reason; before, only the table said so."""
    broken = qemu_wrapper(tmp_path, old="virtio-net-pci", new="mdh-no-such-device")
    sandbox = Sandbox(tmp_path / "sandbox")
    result = sandbox.run(["run", "--accel", "tcg", "--qemu", str(broken), "--modes", "remap",
                          "--cache", "none", "--checks", "ids", "--layout", "standard",
                          "--no-control", "--no-witness", "--cold"], timeout=100)
    assert result.returncode == EXIT_ENVIRONMENT, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    # The first reason carries QEMU's own words about the device it refused.
    assert errors[0].startswith(
        "error: 1 of 1 rows could not be judged; first [remap] QemuExitedEarly: remap: QEMU "
        "exited with status 1: qemu-system-x86_64: -device mdh-no-such-device,netdev=net0"
        ",romfile=: 'mdh-no-such-device' is not a valid device model name"), errors
    assert "hint: the failures above name each row's reason" in result.stderr
    sandbox.assert_clean(allowed=kept_log_dirs(result.stderr))


@needs_qemu
@pytest.mark.timeout(120)
def test_a_reproduce_that_could_not_run_says_why_in_an_error_line(tmp_path: Path) -> None:
    broken = qemu_wrapper(tmp_path, old="virtio-net-pci", new="mdh-no-such-device")
    sandbox = Sandbox(tmp_path / "sandbox")
    result = sandbox.run(["reproduce", "--accel", "tcg", "--qemu", str(broken), "--cold"],
                         timeout=100)
    assert result.returncode == EXIT_ENVIRONMENT, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(
        "error: 1 of 1 rows could not be judged; first [warn] QemuExitedEarly: warn: QEMU "
        "exited with status 1: qemu-system-x86_64: -device mdh-no-such-device"), result.stderr
    sandbox.assert_clean(allowed=kept_log_dirs(result.stderr))
