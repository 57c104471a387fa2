"""Every bad input ends in exit status 2 with one readable message and nothing leaked.

The CLI runs in a subprocess inside a ``Sandbox`` (see leaks.py), so each case also
proves that refusing to run left no QEMU, mount or temporary file behind.  Where no
CLI option exists for a case (the export root, a broken recipe's tool check, the
pinned host key), the API is tested as well, so the error type and its hint are
pinned down.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from harness.errors import MissingPackages
from harness.image.build import build_image, check_host_tools
from harness.image.recipe import guests_dir, load_recipe

from .helpers import REPO, harness_argv, needs_qemu, needs_root
from .leaks import Sandbox, kept_log_dirs

EXIT_ENVIRONMENT = 2


def assert_clear_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    """Exit 2, exactly one 'error:' line carrying every needle, a hint, no traceback."""
    err = result.stderr
    assert result.returncode == EXIT_ENVIRONMENT, f"rc {result.returncode}\n{err}"
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    assert "Traceback" not in err, err
    for needle in needles:
        assert needle in err, f"{needle!r} missing from:\n{err}"
    assert result.stdout == "", "nothing may go to stdout on an error"


def fake_qemu(directory: Path, script: str) -> Path:
    path = directory / "fake-qemu"
    path.write_text(script)
    path.chmod(0o755)
    return path


# --- arguments ----------------------------------------------------------------------

USAGE_CASES = [
    (["--modes", "remap,bogus"], ["unknown multidevs mode 'bogus'",
                                  "hint: choose from remap,warn,forbid,default"]),
    (["--devices", "0"], ["--devices must be between 1 and 128, got 0", "hint:"]),
    (["--devices", "1000"], ["--devices must be between 1 and 128, got 1000", "hint:"]),
    (["--files", "0"], ["--files must be between 1 and 100000, got 0", "hint:"]),
    (["--devices", "three"], ["argument --devices: not a whole number: 'three'", "usage:"]),
    # Each bound passes alone; together 12.8 million files would exhaust the host.
    (["--devices", "128", "--files", "100000"],
     ["--devices 128 x --files 100000 is 12,800,000 files; at most 200,000 fit",
      "hint: lower --files to 1,562 or fewer for 128 devices"]),
    # An unset CI variable: never the default QEMU, kernel or report path instead.
    (["--qemu", ""], ["argument --qemu: empty value (an unset variable?)", "usage:"]),
    (["--kernel", ""], ["argument --kernel: empty value (an unset variable?)", "usage:"]),
    (["--json", ""], ["argument --json: empty value (an unset variable?)", "usage:"]),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("args", "needles"), USAGE_CASES,
                         ids=["bogus-mode", "devices-0", "devices-1000", "files-0", "devices-nan",
                              "devices-x-files", "empty-qemu", "empty-kernel", "empty-json"])
def test_bad_arguments(tmp_path: Path, args: list[str], needles: list[str]) -> None:
    sandbox = Sandbox(tmp_path)
    started = time.monotonic()
    result = sandbox.run(["run", "--accel", "tcg", *args], timeout=30)
    assert time.monotonic() - started < 15, "an argument error needs no probing"
    assert_clear_error(result, *needles)
    sandbox.assert_clean()


# --- the QEMU binary ----------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", ["missing", "not-qemu", "qemu-4.1.0", "kernel-missing",
                                  "kernel-not-a-kernel"])
def test_bad_qemu_is_named_before_any_image_build(tmp_path: Path, case: str) -> None:
    """With an empty image cache, too: the QEMU check must not wait for an image build."""
    sandbox = Sandbox(tmp_path / "sandbox")
    args = ["run", "--accel", "tcg"]
    env = {"MDH_CACHE_DIR": str(tmp_path / "empty-cache")}
    if case == "missing":
        args += ["--qemu", "/nonexistent/qemu-system-x86_64"]
        needles = ["QEMU binary /nonexistent/qemu-system-x86_64 does not exist",
                   "hint: install qemu-system-x86"]
    elif case == "not-qemu":
        args += ["--qemu", "/bin/true"]
        needles = ["/bin/true is not QEMU", "hint: install qemu-system-x86"]
    elif case == "qemu-4.1.0":
        old = fake_qemu(tmp_path, "#!/bin/sh\necho 'QEMU emulator version 4.1.0'\n")
        args += ["--qemu", str(old)]
        needles = [f"{old} is QEMU 4.1.0; multidevs needs QEMU >= 4.2", "hint: install"]
    elif case == "kernel-missing":
        args += ["--kernel", "/nonexistent/vmlinuz"]
        needles = ["--kernel /nonexistent/vmlinuz: No such file or directory", "hint:"]
    else:
        # Once QEMU was started with it and failed, which looked like a QEMU regression.
        args += ["--kernel", "/etc/passwd"]
        needles = ["--kernel /etc/passwd is neither an ELF vmlinux nor a bzImage", "hint:"]
    started = time.monotonic()
    result = sandbox.run(args, timeout=50, env=env)
    assert time.monotonic() - started < 20
    assert_clear_error(result, *needles)
    assert not (tmp_path / "empty-cache").exists(), "an image build was started"
    sandbox.assert_clean()


@needs_qemu
@pytest.mark.timeout(90)
def test_accel_kvm_where_kvm_does_not_run_fails_fast(tmp_path: Path) -> None:
    sandbox = Sandbox(tmp_path)
    started = time.monotonic()
    result = sandbox.run(["run", "--accel", "kvm", "--modes", "remap", "--no-control"],
                         timeout=80)
    elapsed = time.monotonic() - started
    if result.returncode == 0:
        pytest.skip("KVM runs guests on this machine; nothing to refuse")
    assert elapsed < 30, f"took {elapsed:.1f} s to give up on KVM"
    assert_clear_error(result, "--accel kvm was requested but KVM cannot run a guest here",
                       "hint: use --accel tcg or auto")
    sandbox.assert_clean()


# --- unwritable directories ---------------------------------------------------------


def _read_only_wrapper(directory: Path) -> list[str]:
    """argv prefix: run the command in a throwaway mount namespace where ``directory``
    is a read-only tmpfs (root ignores permission bits, not a read-only mount)."""
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            'd=$1; shift; mount -t tmpfs -o ro tmpfs "$d" && exec "$@"', "sh", str(directory)]


@needs_qemu
@pytest.mark.timeout(60)
@pytest.mark.parametrize("what", ["cache", "logs"])
@pytest.mark.parametrize("how", ["missing-proc-dir", pytest.param("read-only", marks=needs_root)])
def test_unwritable_directories(tmp_path: Path, what: str, how: str) -> None:
    sandbox = Sandbox(tmp_path / "sandbox")
    if how == "missing-proc-dir":
        target = Path("/proc/nope")
        prefix: list[str] = []
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        target = ro / "dir"
        prefix = _read_only_wrapper(ro)
    args = ["run", "--accel", "tcg", "--modes", "remap", "--no-control"]
    env: dict[str, str] = {}
    if what == "cache":
        env["MDH_CACHE_DIR"] = str(target)
        needles = [f"cannot write the image cache {target}", "hint: set MDH_CACHE_DIR"]
    else:
        args += ["--logs", str(target)]
        needles = [f"cannot write the log directory {target}", "hint: pass --logs"]
    argv = [*prefix, *harness_argv(*args)]
    result = sandbox.run([], timeout=50, env=env, argv=argv)
    assert_clear_error(result, *needles)
    sandbox.assert_clean()


# --- the guest's host key -----------------------------------------------------------


def _cache_with_wrong_host_key(root: Path) -> Path:
    """A copy of the image cache whose pinned host key belongs to no guest.

    The big files are symlinks to the real image, so the copy is cheap and the real
    cache is never touched; the directory name (the cache key) is the same, so the
    harness takes it as a cache hit.
    """
    image = build_image()
    copy = root / image.directory.name
    copy.mkdir(parents=True)
    for path in image.directory.iterdir():
        if path.name in {"vmlinux", "vmlinuz", "initrd.cpio"}:
            (copy / path.name).symlink_to(path)
        elif path.is_file():
            shutil.copy2(path, copy / path.name)
    public = Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    (copy / "host_key.pub").write_bytes(public + b"\n")
    return root


@needs_qemu
@pytest.mark.timeout(120)
def test_guest_with_another_host_key_is_refused(tmp_path: Path) -> None:
    cache = _cache_with_wrong_host_key(tmp_path / "cache")
    sandbox = Sandbox(tmp_path / "sandbox")
    result = sandbox.run(["exec", "--accel", "tcg", "--", "true"], timeout=100,
                         env={"MDH_CACHE_DIR": str(cache)})
    assert "cache hit" in result.stderr, "the copied cache was not used"
    assert_clear_error(result, "presented host key ssh-ed25519",
                       "hint: refusing to connect")
    kept = kept_log_dirs(result.stderr)
    assert len(kept) == 1
    sandbox.assert_clean(allowed=kept)


# --- the export root (API only: the CLI has no option for it) -----------------------

EXPORT_ROOT_CHILD = r"""
import json, sys
from pathlib import Path
from harness.host.layout import ExportLayout
from harness.errors import ExportError
from harness.host.export import build_export
from harness.host.namespace import enter_private_namespace

enter_private_namespace()
out = {}
try:
    with build_export(ExportLayout(2, 2), root=Path(sys.argv[1])):
        out["built"] = True
except ExportError as exc:
    out = {"type": type(exc).__name__, "message": exc.message, "hint": exc.hint}
out["mounted"] = sys.argv[1] in open("/proc/self/mounts").read()
print(json.dumps(out))
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["not-empty", "a-file", "missing"])
def test_export_root_must_be_an_empty_directory(tmp_path: Path, kind: str) -> None:
    root = tmp_path / "root"
    if kind == "not-empty":
        root.mkdir()
        (root / "precious").write_text("keep me\n")
    elif kind == "a-file":
        root.write_text("a file\n")
    result = subprocess.run(
        [sys.executable, "-c", EXPORT_ROOT_CHILD, str(root)], capture_output=True,
        text=True, timeout=30, check=False, cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["type"] == "ExportError", out
    assert out["message"] == f"export root {root} is not an empty directory"
    assert "existing empty directory" in out["hint"]
    assert out["mounted"] is False
    if kind == "not-empty":
        assert (root / "precious").read_text() == "keep me\n"


# --- host packages for the guest image ----------------------------------------------


def _recipe_changed(directory: Path, old: str, new: str) -> Path:
    """A copy of the default recipe in ``directory`` with ``old`` replaced by ``new``."""
    copy = directory / "recipe"
    shutil.copytree(guests_dir() / "debian-bookworm-x86_64", copy)
    toml = copy / "recipe.toml"
    text = toml.read_text()
    assert old in text
    toml.write_text(text.replace(old, new))
    return copy


def _recipe_with_missing_tool(directory: Path) -> Path:
    return _recipe_changed(directory, 'tools = { gcc = "gcc",', 'tools = { no-such-cc = "gcc-99",')


@pytest.mark.timeout(60)
def test_missing_host_packages_name_the_apt_get_line(tmp_path: Path) -> None:
    recipe = load_recipe(_recipe_with_missing_tool(tmp_path))
    with pytest.raises(MissingPackages, match=r"^missing host packages: gcc-99\n") as info:
        check_host_tools(recipe)
    assert info.value.packages == ("gcc-99",)
    assert "apt-get install -y gcc-99" in info.value.hint

    sandbox = Sandbox(tmp_path / "sandbox")
    result = sandbox.run(["image", "build", "--guest", str(tmp_path / "recipe")], timeout=30,
                         env={"MDH_CACHE_DIR": str(tmp_path / "cache")})
    assert_clear_error(result, "missing host packages: gcc-99", "apt-get install -y gcc-99")
    sandbox.assert_clean()


@pytest.mark.timeout(60)
def test_a_host_package_dpkg_does_not_list_is_named_before_building(tmp_path: Path) -> None:
    # The recipe says its [host] packages are checked before building: a header or a
    # keyring has no tool to look for, so dpkg is asked.
    copy = _recipe_changed(tmp_path, 'packages = ["gcc", "libc6-dev",',
                           'packages = ["gcc", "libc6-dev", "mdh-no-such-dev",')
    with pytest.raises(MissingPackages, match=r"^missing host packages: mdh-no-such-dev\n"):
        check_host_tools(load_recipe(copy))
