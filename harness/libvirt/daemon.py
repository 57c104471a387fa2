"""The --via libvirt path's daemons: a virtlogd and a libvirtd private to the harness.

The exports are built, as on the direct path, inside the harness's private mount
namespace, where nothing can leak onto the host.  A libvirtd already running on the
host could not see them, so the harness always starts a libvirtd (and the virtlogd it
needs) of its own, as its children, *after* entering that namespace: they share it,
and libvirt's per-domain mount namespace, copied from libvirtd's when a guest starts,
holds the export mounts too.  Their state is private as well: empty tmpfs mounts
over /etc/libvirt (holding only the harness's qemu.conf), /run, /var/lib/libvirt
and /var/log/libvirt, so this libvirtd sees none of the host's
persistent domains, networks or pools (nothing autostarts), cannot clash with a host
libvirtd, and leaves no socket, definition, status file or domain log behind.
Clients in the namespace reach it at qemu:///system as usual.  Only libvirt's
capability cache in /var/cache/libvirt is shared with the host, on purpose: it saves
a QEMU probe of a few seconds per run.

The daemons get SIGTERM at the end, or through the parent-death signal if the
harness is killed; the ``Reaper`` kills the guests' QEMUs (which libvirt daemonizes,
out of reach of such a signal) if the harness dies first.  Since no directory is
created on the host, concurrent runs cannot trip over each other's mount points.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from ..errors import LibvirtError, indent
from ..host.namespace import mount_tmpfs, unmount
from ..proc import kill_process_group, spawn_tied, tail_file
from ..progress import Progress, quiet
from ..timeouts import timeout_scale_from_env

URI = "qemu:///system"

# The daemons' config and state, each on an empty tmpfs of its own in the harness's
# namespace.  All of /run, not /run/libvirt: that directory may not exist, and one
# the harness made on the host could only be removed again by racing other runs (an
# rmdir on the host detaches another run's tmpfs mounted on it).  Nothing else under
# /run is needed, and hiding the host's /run/dbus and /run/systemd keeps the private
# libvirtd from talking to the host's firewalld or machined.
PRIVATE_DIRS = (Path("/etc/libvirt"), Path("/run"), Path("/var/lib/libvirt"),
                Path("/var/log/libvirt"))
_PRIVATE_TMPFS = "mode=0755,size=64m"
RUN_DIR = Path("/run/libvirt")
SOCKET = RUN_DIR / "libvirt-sock"
VIRTLOGD_SOCKET = RUN_DIR / "virtlogd-sock"
DOMAIN_LOG_DIR = Path("/var/log/libvirt/qemu")
DOMAIN_RUN_DIR = RUN_DIR / "qemu"
DAEMON_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
# In the environment of every helper process a run starts (daemons, reaper), set to
# the run's domain-name prefix, so a leak check can tell one run's processes apart
# from those of another run on the same machine.
RUN_MARKER_ENV = "MDH_LIBVIRT_RUN"

# The private libvirtd's qemu.conf.
#  - user/group root: QEMU reads the kernel from root's image cache and the export
#    as root, like the direct path.  It also keeps libvirt's capability cache valid
#    where /dev/kvm is root-only: probing as "libvirt-qemu" (with CAP_DAC_OVERRIDE)
#    finds KVM but the later access check as that user does not, so libvirt 9.0
#    re-probes QEMU on every lookup (measured: 60 s to start one guest).
#  - no cgroup controllers: resource control is not under test, and libvirt would
#    otherwise leave machine/ cgroup directories on the host.
QEMU_CONF = """\
# Written by multidevs-harness for the libvirtd it runs in its own mount namespace.
user = "root"
group = "root"
cgroup_controllers = [ ]
"""

_DAEMON_START_TIMEOUT = 30.0
_DAEMON_STOP_TIMEOUT = 15.0
# Every client call ends when libvirtd stops answering: a keepalive probe every
# _KEEPALIVE_S (scaled by MDH_TIMEOUT_SCALE), and after _KEEPALIVE_COUNT unanswered
# ones the connection is closed, failing the pending call with a libvirtError
# (~20 s at scale 1).  A libvirtd that answers bounds its own calls: QEMU's monitor
# has its own timeouts there.
_KEEPALIVE_S = 5.0
_KEEPALIVE_COUNT = 3



# --- preconditions -----------------------------------------------------------------------


def require_root() -> None:
    """Raise LibvirtError unless the harness runs as root (qemu:///system needs it)."""
    if os.geteuid() != 0:
        raise LibvirtError(
            "--via libvirt needs root: it runs its own libvirtd for qemu:///system",
            hint="run it as root (sudo), or use --via qemu, which works rootless",
        )


@functools.cache
def import_libvirt() -> tuple[Any, Any]:
    """The ``libvirt`` and ``libvirt_qemu`` modules, or a LibvirtError saying how to get them."""
    try:
        import libvirt
        import libvirt_qemu
    except ImportError as exc:
        raise LibvirtError(
            f"the libvirt Python bindings are not installed ({exc})",
            hint="pip install '.[libvirt]' (builds libvirt-python; needs libvirt-dev, "
            "pkg-config and gcc: ./scripts/setup installs them)",
        ) from exc
    # libvirt prints every error to stderr by default, even ones the caller handles
    # (the rejection checks expect some); they reach us as exceptions instead.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    return libvirt, libvirt_qemu


def find_daemon(name: str) -> str:
    """The daemon's path in the system directories, or a LibvirtError naming the package."""
    found = shutil.which(name, path=DAEMON_PATH)
    if found is None:
        raise LibvirtError(
            f"{name} is not installed",
            hint="apt-get install libvirt-daemon-system (./scripts/setup does)",
        )
    return found


def error_text(exc: BaseException) -> str:
    """libvirt's own message of a ``libvirtError`` (``str()`` of anything else)."""
    getter = getattr(exc, "get_error_message", None)
    text = getter() if callable(getter) else None
    return str(text or exc)


# --- the private daemons -----------------------------------------------------------------


def _socket_ready(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


class _Daemon:
    """One libvirt daemon run in the foreground as our child, logging to a file."""

    def __init__(
        self, name: str, argv: Sequence[str], sock: Path, log_path: Path, run_id: str
    ) -> None:
        self.name = name
        self.run_id = run_id
        self.argv = list(argv)
        self.socket = sock
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float) -> float:
        """Start it and wait until its socket accepts; returns the seconds it took."""
        started = time.monotonic()
        with open(self.log_path, "ab") as log:
            try:
                # SIGTERM, not SIGKILL, if the harness dies: the daemons then exit
                # cleanly (the state they wrote is on tmpfs mounts that vanish with them).
                self.proc = spawn_tied(
                    self.argv, stdout=log, stderr=log, death_signal=signal.SIGTERM,
                    env={"PATH": DAEMON_PATH, "LC_ALL": "C", RUN_MARKER_ENV: self.run_id},
                )
            except OSError as exc:
                raise LibvirtError(f"cannot start {self.name}: {exc.strerror}",
                                   hint=f"check {self.argv[0]}") from exc
        deadline = started + timeout
        while not _socket_ready(self.socket):
            if self.proc.poll() is not None:
                raise LibvirtError(
                    f"{self.name} exited with status {self.proc.returncode} while starting",
                    hint=f"see {self.log_path}",
                    details="  log (tail):\n" + indent(tail_file(self.log_path, 15)),
                )
            if time.monotonic() > deadline:
                raise LibvirtError(
                    f"{self.name} did not open {self.socket} within {timeout:.0f} s",
                    hint=f"see {self.log_path}",
                    details="  log (tail):\n" + indent(tail_file(self.log_path, 15)),
                )
            time.sleep(0.02)
        return time.monotonic() - started

    def stop(self, timeout: float, progress: Progress) -> None:
        """SIGTERM, wait, then SIGKILL the daemon's process group. Safe to call twice."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
            return
        except subprocess.TimeoutExpired:
            progress(f"{self.name} ignored SIGTERM for {timeout:.0f} s; killing it")
        kill_process_group(proc, wait=10, progress=progress)


@contextlib.contextmanager
def _private_state(progress: Progress) -> Iterator[None]:
    """Empty tmpfs mounts over libvirt's config and state directories, in our namespace.

    Only existing directories are mounted on (the packages make them): a directory
    created on the host for a mount point would be left behind.
    """
    missing = [str(d) for d in PRIVATE_DIRS if not d.is_dir()]
    if missing:
        raise LibvirtError(
            f"libvirt's directories are missing: {', '.join(missing)}",
            hint="apt-get install --reinstall libvirt-daemon-system",
        )
    with ExitStack() as stack:
        for directory in PRIVATE_DIRS:
            try:
                mount_tmpfs(directory, _PRIVATE_TMPFS)
            except OSError as exc:
                raise LibvirtError(
                    f"cannot mount a private tmpfs on {directory}: {exc.strerror}",
                    hint="the harness must be root in its own mount namespace",
                ) from exc
            stack.callback(_unmount_quietly, directory, progress)
        (PRIVATE_DIRS[0] / "qemu.conf").write_text(QEMU_CONF)
        RUN_DIR.mkdir(mode=0o755)
        yield


def _unmount_quietly(path: Path, progress: Progress) -> None:
    try:
        unmount(path)
    except OSError:
        try:
            unmount(path, lazy=True)
        except OSError as exc:
            # Still private to our namespace: it goes when the harness exits.
            progress(f"warning: cannot unmount {path}: {exc.strerror}")


@contextlib.contextmanager
def private_libvirt(
    log_dir: Path, progress: Progress = quiet, run_id: str = ""
) -> Iterator[Any]:
    """virtlogd and libvirtd of our own, in our namespace; yields a qemu:///system connection.

    Must run in the harness's private mount namespace (as root), before any worker
    thread.  ``run_id`` goes into the daemons' environment (``RUN_MARKER_ENV``).  On
    exit, also on errors and Ctrl-C: every domain still running is destroyed, the
    daemons are stopped, the private tmpfs mounts are unmounted.
    """
    libvirt, _ = import_libvirt()
    daemons = [
        _Daemon("virtlogd", [find_daemon("virtlogd"), "--pid-file",
                             str(RUN_DIR / "virtlogd.pid")],
                VIRTLOGD_SOCKET, log_dir / "virtlogd.log", run_id),
        _Daemon("libvirtd", [find_daemon("libvirtd"), "--pid-file",
                             str(RUN_DIR / "libvirtd.pid")],
                SOCKET, log_dir / "libvirtd.log", run_id),
    ]
    log_dir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        stack.enter_context(_private_state(progress))
        for daemon in daemons:
            # Registered before starting, so a daemon that fails to come up is stopped.
            stack.callback(daemon.stop, _DAEMON_STOP_TIMEOUT, progress)
            seconds = daemon.start(_DAEMON_START_TIMEOUT)
            progress(f"{daemon.name} up in {seconds:.2f} s (private to the harness)")
        _event_loop(libvirt)
        try:
            conn = libvirt.open(URI)
            interval = max(1, round(_KEEPALIVE_S * timeout_scale_from_env()))
            conn.setKeepAlive(interval, _KEEPALIVE_COUNT)
        except libvirt.libvirtError as exc:
            raise LibvirtError(f"cannot connect to {URI}: {error_text(exc)}",
                               hint=f"see {log_dir / 'libvirtd.log'}") from exc
        stack.callback(_close_connection, conn, libvirt, progress)
        yield conn


@functools.cache
def _event_loop(libvirt: Any) -> None:
    """libvirt's default event loop, run by one daemon thread for the process's life.

    The connection's keepalive needs it: without an event loop no probe is sent, and
    a client call to a libvirtd that stopped answering (hung, stopped, starved)
    waits forever.  Started here, after the harness entered its mount namespace: a
    thread started earlier would make that unshare fail (threads share the fs state).
    """
    if libvirt.virEventRegisterDefaultImpl() < 0:
        raise LibvirtError("cannot register libvirt's event loop",
                           hint="a bug in the libvirt bindings; see libvirtd's log")

    def run() -> None:
        while libvirt.virEventRunDefaultImpl() >= 0:
            pass

    threading.Thread(target=run, name="libvirt-events", daemon=True).start()


def _close_connection(conn: Any, libvirt: Any, progress: Progress) -> None:
    # The safety net: whatever is still running here is ours and must not outlive
    # the daemon (libvirtd leaves running guests alone when it exits).
    try:
        for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
            progress(f"destroying leftover domain {dom.name()}")
            with contextlib.suppress(libvirt.libvirtError):
                dom.destroy()
    except libvirt.libvirtError as exc:
        progress(f"warning: cannot list domains: {error_text(exc)}")
    with contextlib.suppress(libvirt.libvirtError):
        conn.close()


def libvirt_version(conn: Any) -> str:
    """The daemon's libvirt version as "X.Y.Z"."""
    number = int(conn.getLibVersion())
    return f"{number // 1_000_000}.{number // 1000 % 1000}.{number % 1000}"


def require_emulator(conn: Any, emulator: Path, version: str, log: Path) -> None:
    """Raise LibvirtError (exit 2) unless libvirt can describe ``emulator``.

    libvirt probes a QEMU's capabilities before it starts a domain on it; a probe that
    fails leaves every createXML with "An error occurred, but the cause is unknown"
    and the reason only in the daemon's log (measured: Debian 12's libvirt 9.0 with
    Debian's QEMU 10.0 and 11.1: "Unable to read from monitor: Connection reset by
    peer", while 7.2 through the same wrapper works).  Asked once here, before any
    domain, the run ends with that reason instead of a row of errors per guest.
    """
    libvirt, _ = import_libvirt()
    try:
        conn.getDomainCapabilities(str(emulator), "x86_64", None, None, 0)
    except libvirt.libvirtError as exc:
        reason = probe_failure(log.read_text(errors="replace") if log.exists() else "",
                               emulator) or error_text(exc)
        raise LibvirtError(
            f"libvirt {version} cannot use the QEMU {emulator}: {reason}",
            hint=f"a QEMU newer than this libvirt knows? run it --via qemu, or with a "
            f"libvirt of its time; see {log}",
        ) from exc


def probe_failure(log_text: str, emulator: Path) -> str:
    """libvirt's last word on a failed capability probe of ``emulator`` in its log."""
    marker = f"Failed to probe capabilities for {emulator}: "
    found = [line.split(marker, 1)[1].strip() for line in log_text.splitlines()
             if marker in line]
    return found[-1] if found else ""


# --- the reaper --------------------------------------------------------------------------

# The reaper's whole program (argv: the run's domain-name prefix, its marker variable,
# the seconds it may wait for the daemons).  It waits for EOF on the pipe only the
# harness holds (normal exit, crash or SIGKILL alike), then SIGKILLs every QEMU whose
# guest name carries the run's prefix, again and again while a daemon of the run (found
# by its marker) still lives: a libvirtd stopping may still be starting a QEMU.
_REAPER = """\
import os, signal, sys, time
prefix, marker, limit = sys.argv[1], sys.argv[2].encode(), float(sys.argv[3])
sys.stdin.read()
guest, me, deadline = f"guest={prefix}-".encode(), str(os.getpid()), time.monotonic() + limit
while True:
    daemons = False
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or pid == me:
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if guest in handle.read():
                    os.kill(int(pid), signal.SIGKILL)
                    continue
            with open(f"/proc/{pid}/environ", "rb") as handle:
                daemons = daemons or marker in handle.read().split(b"\\0")
        except OSError:
            pass
    if not daemons or time.monotonic() > deadline:
        break
    time.sleep(0.1)
"""
# How long the reaper keeps looking while the run's daemons stop (SIGTERM by their
# parent-death signal; libvirtd takes about a second).
_REAPER_DAEMON_WAIT_S = 30.0


class Reaper:
    """A helper process that kills this run's QEMUs if the harness is killed outright.

    libvirt starts QEMU as a daemon, so unlike on the direct path no parent-death
    signal reaches it: after a SIGKILL of the harness (whose own daemons do die by
    theirs) the guests would run on, holding the export mounts in their namespaces.
    The reaper is started before any domain exists and knows every guest by the run's
    name prefix, so there is no window between ``createXML`` and a registration: a
    QEMU libvirt starts at any moment, even while its daemon stops, is found.  On a
    normal exit the domains are destroyed already and it finds nothing to do.
    """

    def __init__(self, run_id: str) -> None:
        marker = f"{RUN_MARKER_ENV}={run_id}"
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _REAPER, run_id, marker, str(_REAPER_DAEMON_WAIT_S)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, env={**os.environ, RUN_MARKER_ENV: run_id},
        )

    def close(self) -> None:
        """Let the reaper run now (normally a no-op) and wait for it."""
        if self._proc.stdin is not None:
            with contextlib.suppress(OSError):
                self._proc.stdin.close()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
