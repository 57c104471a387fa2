"""SSH into the guest with paramiko: pinned host key, key auth, CommandResult.

Shaped after pytest-testinfra's paramiko backend: one lazily connected client,
commands through ``open_session()``, results as a small dataclass.  The guest's host
key was generated when the image was built, so it is pinned here and any other key
is refused: there is no trust-on-first-use step an attacker could ride.
"""

from __future__ import annotations

import base64
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import paramiko

from ..closing import Closing
from ..errors import GuestCommandTimeout, GuestOutputTooLarge, HostKeyMismatch, SshUnavailable

USER = "root"
# What one command may print, stdout and stderr together.  A guest that never stops
# printing (``yes``; a readdir that never ends, the bug class under test) would
# otherwise fill the harness's memory before any deadline.  256 MiB holds the agent's
# records of about two million paths (two lstat passes and a readdir line each, ~40
# bytes apiece), a hundred times the default --max-paths.
OUTPUT_CAP = 256 << 20
_CHUNK = 1 << 16

# paramiko's transport thread logs each failed banner read (sshd not up yet, QEMU
# gone) with a traceback, which Python prints on stderr when nothing configured
# logging: once per retry.  The same failure reaches us as an exception and is
# reported once; a program that configures logging still gets these records.
logging.getLogger("paramiko").addHandler(logging.NullHandler())


@dataclass(frozen=True)
class CommandResult:
    """Outcome of one command run in the guest."""

    command: str
    rc: int
    stdout: bytes
    stderr: bytes
    duration: float

    @property
    def text(self) -> str:
        """stdout decoded leniently (guest output is not always UTF-8)."""
        return self.stdout.decode(errors="replace")

    @property
    def ok(self) -> bool:
        return self.rc == 0


def load_pinned_key(path: Path) -> paramiko.PKey:
    """Read an OpenSSH public key line (``ssh-ed25519 AAAA...``) as a paramiko key."""
    try:
        kind, b64 = path.read_text().split()[:2]
        return paramiko.PKey.from_type_string(kind, base64.b64decode(b64))
    except (OSError, ValueError, paramiko.SSHException) as exc:
        raise SshUnavailable(
            f"cannot read the pinned guest host key {path}: {exc}",
            hint="rebuild the guest image: multidevs-harness image build --force",
        ) from exc


class _PinnedKeyPolicy(paramiko.MissingHostKeyPolicy):
    """Accept exactly the key the image build generated, refuse everything else."""

    def __init__(self, pinned: paramiko.PKey) -> None:
        self.pinned = pinned

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        if key.get_name() != self.pinned.get_name() or key.asbytes() != self.pinned.asbytes():
            raise HostKeyMismatch(
                f"guest at {hostname} presented host key {key.get_name()} "
                f"{key.fingerprint}, but the image pinned {self.pinned.fingerprint}",
                hint="refusing to connect: is another service on that port? "
                "If the image was rebuilt, rerun so the new key is used",
            )


class GuestSsh(Closing):
    """A connected SSH session to a guest; use ``connect_with_retry`` to make one."""

    def __init__(self, client: paramiko.SSHClient, host: str, port: int) -> None:
        self._client = client
        self.host = host
        self.port = port

    def close(self) -> None:
        """Close the transport; safe to call twice and after the guest died."""
        self._client.close()

    def run(self, command: str, stdin: bytes = b"", timeout: float = 60.0) -> CommandResult:
        """Run ``command`` through the guest's shell, feeding ``stdin``; never raise on rc.

        ``command`` is interpreted by the guest's /bin/sh; callers build it from
        constants and ``shlex.quote`` d values, never from raw user strings.  The
        command ends by ``timeout`` seconds (GuestCommandTimeout) or when its output
        passes OUTPUT_CAP (GuestOutputTooLarge), whichever comes first.
        """
        transport = self._client.get_transport()
        if transport is None or not transport.is_active():
            raise SshUnavailable(
                f"SSH session to {self.host}:{self.port} is closed",
                hint="the guest may have crashed; see the console log",
            )
        start = time.monotonic()
        try:
            channel = transport.open_session(timeout=timeout)
            try:
                channel.settimeout(max(0.1, timeout))
                channel.exec_command(command)
                out, err = _pump(channel, command, stdin, start, timeout)
                rc = channel.recv_exit_status()
            finally:
                channel.close()
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise SshUnavailable(
                f"SSH command failed in transport: {command}: {exc}",
                hint="the guest or QEMU may have died; see the console log",
            ) from exc
        return CommandResult(command, rc, bytes(out), bytes(err), time.monotonic() - start)


def _pump(channel: paramiko.Channel, command: str, stdin: bytes, start: float,
          timeout: float) -> tuple[bytearray, bytearray]:
    """Feed ``stdin`` and gather stdout and stderr until the command exits.

    Sending and receiving share one loop, so a command that prints before it reads
    cannot stall the harness's write, and the deadline and the output cap are checked
    on every pass: a guest that never stops printing keeps data ready forever, and a
    loop that looked at the clock only when idle (as this one once did) never ended.
    """
    deadline = start + timeout
    # Woken by paramiko's transport thread when stdout or stderr data or EOF arrives.
    # Never select() on channel.fileno(): that makes an OS pipe which Channel.close()
    # closes while the transport thread may still be writing its wake-up byte to it
    # (paramiko 5.1 PosixPipe.close closes the fds before marking itself closed). A
    # command closed on its deadline while the guest was still printing then killed
    # the whole SSH session with EBADF, or wrote that byte into whatever file reused
    # the descriptor number.
    arrived = threading.Event()
    channel.in_buffer.set_event(arrived)
    channel.in_stderr_buffer.set_event(arrived)
    pending = memoryview(stdin)
    if not pending:
        channel.shutdown_write()
    out, err = bytearray(), bytearray()
    while True:
        _check_bounds(command, out, err, start, deadline, timeout)
        moved = False
        if pending and channel.send_ready():
            pending = pending[channel.send(bytes(pending[:_CHUNK])):]
            if not pending:
                channel.shutdown_write()
            moved = True
        if channel.recv_ready():
            out += channel.recv(_CHUNK)
            moved = True
        if channel.recv_stderr_ready():
            err += channel.recv_stderr(_CHUNK)
            moved = True
        if moved:
            continue
        if channel.exit_status_ready():
            break
        # Data and EOF set the event; the exit status and the send window are caught
        # by the short timeout.
        arrived.wait(min(0.02, max(0.0, deadline - time.monotonic())))
        arrived.clear()
    while channel.recv_ready() or channel.recv_stderr_ready():
        if channel.recv_ready():
            out += channel.recv(_CHUNK)
        if channel.recv_stderr_ready():
            err += channel.recv_stderr(_CHUNK)
        _check_bounds(command, out, err, start, deadline, timeout)
    return out, err


def _check_bounds(command: str, out: bytearray, err: bytearray, start: float,
                  deadline: float, timeout: float) -> None:
    """Raise when the command ran past its deadline or its output past the cap."""
    if len(out) + len(err) > OUTPUT_CAP:
        raise GuestOutputTooLarge(
            f"guest command printed more than the output cap of {OUTPUT_CAP >> 20} MiB "
            f"in {time.monotonic() - start:.1f} s (stopped): {command}",
            hint="a command that never stops printing (a readdir that never ends?); "
            "see the console log",
        )
    if time.monotonic() > deadline:
        raise GuestCommandTimeout(
            f"guest command did not finish within {timeout:.0f} s "
            f"({len(out) + len(err)} bytes of output so far): {command}",
            hint="the guest may be overloaded (TCG is slow; MDH_TIMEOUT_SCALE=2 doubles "
            "every deadline) or the command never ends; see the console log",
        )


def _client_key(path: Path) -> paramiko.Ed25519Key:
    try:
        return paramiko.Ed25519Key.from_private_key_file(str(path))
    except (OSError, paramiko.SSHException) as exc:
        raise SshUnavailable(
            f"cannot read the client key {path}: {exc}",
            hint="rebuild the guest image: multidevs-harness image build --force",
        ) from exc


def _nodelay_socket(host: str, port: int, timeout: float) -> socket.socket:
    """A TCP connection to the guest with Nagle's algorithm off.

    Every SSH exchange is small messages that wait for each other's answers (channel
    open, exec, exit status), and with Nagle on, each waited for the peer's delayed
    ACK: measured on a restored TCG guest, opening a channel took 43 ms with it and
    1.6 ms without, and a whole ``true`` round trip 66 ms against 19 ms.
    """
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        sock.close()
        raise
    return sock


def connect_with_retry(
    host: str,
    port: int,
    client_key: Path,
    host_key_pub: Path,
    deadline: float,
    alive: Callable[[], None],
) -> GuestSsh:
    """Connect as root before ``deadline`` (a time.monotonic() value).

    Retries while sshd is not yet up (refused connections, missing banner, reset)
    but calls ``alive()`` between attempts, which raises as soon as QEMU has exited
    or the guest panicked, so a dead guest fails at once instead of at the deadline.
    A host key mismatch is never retried.
    """
    pinned = load_pinned_key(host_key_pub)
    pkey = _client_key(client_key)
    last_error = "no attempt made"
    while True:
        alive()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise SshUnavailable(
                f"no SSH session to the guest at {host}:{port} before the deadline "
                f"(last error: {last_error})",
                hint="see the console log; under TCG raise the boot timeout",
            )
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(_PinnedKeyPolicy(pinned))
        try:
            client.connect(
                host,
                port=port,
                sock=_nodelay_socket(host, port, min(remaining, 5.0)),
                username=USER,
                pkey=pkey,
                allow_agent=False,
                look_for_keys=False,
                timeout=min(remaining, 5.0),
                banner_timeout=min(remaining, 10.0),
                auth_timeout=min(remaining, 10.0),
            )
            return GuestSsh(client, host, port)
        except HostKeyMismatch:
            client.close()
            raise
        except paramiko.AuthenticationException as exc:
            client.close()
            raise SshUnavailable(
                f"guest refused the harness's client key: {exc}",
                hint="rebuild the guest image: multidevs-harness image build --force",
            ) from exc
        except (TimeoutError, paramiko.SSHException, OSError, EOFError) as exc:
            client.close()
            last_error = f"{type(exc).__name__}: {exc}"
            time.sleep(0.05)
