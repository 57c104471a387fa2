"""What the e2e test modules share: skip markers, the CLI in a subprocess, and the
QEMU wrapper that breaks a guest on purpose.

A test module takes its helpers from here (or from ``leaks``), never from another
test module.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Whichever QEMU the run is about, as the harness picks it: $MDH_QEMU, else the one
# on PATH (None: there is none).
_QEMU_NAME = os.environ.get("MDH_QEMU") or "qemu-system-x86_64"
_QEMU_FOUND = shutil.which(_QEMU_NAME)
QEMU: Path | None = Path(_QEMU_FOUND) if _QEMU_FOUND else None

needs_qemu = pytest.mark.skipif(
    QEMU is None, reason=f"{_QEMU_NAME} not found (apt-get install qemu-system-x86)")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounts tmpfs: needs root")


def real_qemu() -> Path:
    """The QEMU binary of ``QEMU``; only for tests marked ``needs_qemu``."""
    assert QEMU is not None, "a test using the real QEMU must be marked needs_qemu"
    return QEMU


# Above the harness's own deadlines (Sandbox halves them: boot 45 s under TCG), below
# each test's pytest-timeout: whichever layer fires first names the problem best.
HARNESS_TIMEOUT = 120.0


def harness_argv(*args: str) -> list[str]:
    """The command line that runs the ``multidevs-harness`` CLI with ``args``: this
    interpreter with ``-m harness.cli``, which imports the harness from the working
    directory and $PYTHONPATH as this test process does (the installed script could
    import another copy than the one under test)."""
    return [sys.executable, "-m", "harness.cli", *args]


def run_command(
    argv: Sequence[str], timeout: float, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` to completion: stdin closed, stdout and stderr kept as text, the
    exit status returned, not checked."""
    return subprocess.run(
        list(argv), env=None if env is None else dict(env), capture_output=True, text=True,
        timeout=timeout, check=False, stdin=subprocess.DEVNULL,
    )


def run_harness(
    args: Sequence[str], timeout: float, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the CLI with ``args`` to completion (see ``run_command``)."""
    return run_command(harness_argv(*args), timeout, env)


WRAPPER = """\
#!{python}
# A QEMU that breaks the guest on purpose; probes (no -append) pass through untouched.
import os, sys
args = sys.argv[1:]
if "-append" in args:
    at = args.index("-append") + 1
    args[at] = (args[at] + " " + {append!r}).strip()
    args = [arg.replace({old!r}, {new!r}) for arg in args]
os.execv({real!r}, [{real!r}, *args])
"""


def qemu_wrapper(directory: Path, append: str = "", old: str = "", new: str = "") -> Path:
    """Write a ``--qemu`` wrapper that adds ``append`` to the kernel command line and
    replaces ``old`` by ``new`` in every argument of a guest boot (exec: same process).
    Only for tests marked ``needs_qemu``."""
    path = directory / "qemu-wrapper"
    path.write_text(WRAPPER.format(python=sys.executable, append=append, old=old or "\0",
                                   new=new, real=str(real_qemu())))
    path.chmod(0o755)
    return path


CHILD_WRAPPER = """\
#!{python}
# A QEMU run as this script's child, its stderr passed through line by line: each
# line has {old!r} replaced by {new!r}; multi-device lines go to stdout when asked
# ({to_stdout!r}); once QEMU has exited, the last step runs.  Probes (no -append)
# run the real QEMU unchanged.
import os, subprocess, sys
real = {real!r}
args = sys.argv[1:]
if "-append" not in args:
    os.execv(real, [real, *args])
# close_fds=False: QEMU's QMP socket is an inherited descriptor.
child = subprocess.Popen([real, *args], stderr=subprocess.PIPE, close_fds=False)
for raw in child.stderr:
    line = raw.decode(errors="replace").replace({old!r}, {new!r})
    out = sys.stdout if {to_stdout!r} and "Multiple devices" in line else sys.stderr
    out.write(line)
    out.flush()
status = child.wait()
{last}
sys.exit(status if status >= 0 else 128 - status)
"""
# The last step of a QEMU that "asserts" at exit: the line, then SIGABRT.
ABORT_AT_EXIT = ("sys.stderr.write(\"qemu-system-x86_64: ../hw/9pfs/9p.c:1870: v9fs_walk: "
                 "Assertion `fidp->fid_type == P9_FID_NONE' failed.\\n\"); "
                 "sys.stderr.flush(); os.abort()")


def qemu_child_wrapper(directory: Path, old: str = "", new: str = "", to_stdout: bool = False,
                       last: str = "") -> Path:
    """Write a ``--qemu`` wrapper that runs the real QEMU as its child and rewrites its
    stderr (``CHILD_WRAPPER``); ``last`` is Python run after QEMU exited (e.g.
    ``ABORT_AT_EXIT``).  Only for tests marked ``needs_qemu``."""
    path = directory / "qemu-child-wrapper"
    path.write_text(CHILD_WRAPPER.format(python=sys.executable, old=old or "\0", new=new,
                                         to_stdout=to_stdout, last=last,
                                         real=str(real_qemu())))
    path.chmod(0o755)
    return path


VIRTIOFSD_WRAPPER = """\
#!{python}
# A virtiofsd that never announces submounts, whatever its caller asks (the harness
# says --announce-submounts; libvirt says nothing, and 1.13 announces by default).
import os, sys
real = {real!r}
args = [a for a in sys.argv[1:] if a not in ("--announce-submounts", "--no-announce-submounts")]
os.execv(real[0], [*real, *args, "--no-announce-submounts"])
"""


def virtiofsd_wrapper(directory: Path, real: Sequence[str]) -> Path:
    """Write a ``--virtiofsd`` wrapper that runs ``real`` (the real virtiofsd's command)
    with submounts forced off (exec: same process, so the harness still ties it)."""
    path = directory / "virtiofsd-wrapper"
    path.write_text(VIRTIOFSD_WRAPPER.format(python=sys.executable, real=list(real)))
    path.chmod(0o755)
    return path


def private_image_cache(cache: Path, resolved_at: float | None = None) -> Path:
    """A private image cache holding a copy (not links: nothing a test plants or
    breaks there may reach the shared cache) of the default recipe's current image and
    its stored resolution (its ``resolved_at`` replaced when given); returns the
    image's directory in the copy."""
    import json
    import time

    from harness.image.build import build_image

    image = build_image()
    copy = cache / image.directory.name
    shutil.copytree(image.directory, copy)
    shared = image.directory.parent / "resolved" / f"{image.recipe}.json"
    data = json.loads(shared.read_text())
    resolved = cache / "resolved" / shared.name
    resolved.parent.mkdir(parents=True)
    resolved.write_text(json.dumps({**data, "resolved_at": resolved_at or time.time()}))
    return copy


def libvirt_missing() -> str | None:
    """Why a private libvirtd cannot run here, or None."""
    if os.geteuid() != 0:
        return "a private libvirtd needs root"
    try:
        import libvirt  # noqa: F401
    except ImportError:
        return "libvirt-python is not installed: pip install '.[libvirt]'"
    for daemon in ("libvirtd", "virtlogd"):
        if shutil.which(daemon, path="/usr/sbin:/usr/bin:/sbin:/bin") is None:
            return f"{daemon} is not installed (apt-get install libvirt-daemon-system)"
    return None


# The unprivileged user rootless runs are tested as.
NOBODY = 65534


def python_for_nobody() -> list[str] | None:
    """An interpreter argv that user nobody can run with this environment's packages
    (with ``nobody_env``'s PYTHONPATH): this one where nobody may reach it, else the
    system's of the same version; None when neither can."""
    candidates = [sys.executable, f"/usr/bin/python{sys.version_info[0]}.{sys.version_info[1]}"]
    for python in candidates:
        probe = subprocess.run(
            ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", python,
             "-c", "import paramiko, zstandard"],
            env={**os.environ, **nobody_path()}, capture_output=True, check=False, timeout=30)
        if probe.returncode == 0:
            return [python]
    return None


def nobody_path() -> dict[str, str]:
    """The PYTHONPATH that gives user nobody this checkout and this environment's
    packages."""
    import sysconfig

    return {"PYTHONPATH": f"{REPO}:{sysconfig.get_paths()['purelib']}"}


def as_nobody(argv: Sequence[str]) -> list[str]:
    """``argv`` run as user nobody, with no supplementary groups."""
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv]

