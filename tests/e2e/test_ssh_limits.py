"""The harness's SSH command loop against a fast sender: deadline, output cap, stdin.

A TCG guest prints ~2 MB/s over SSH, too slow to fill the output cap within a test or
to keep data ready on every pass of the loop.  So the same client code
(``connect_with_retry``, ``GuestSsh.run``) talks here to a real SSH server on
localhost (paramiko's server side, real keys pinned as for a guest, a real socket)
whose commands are real host processes: data then comes as fast as Python can move
it, as it would from a guest under KVM or a readdir that never ends.
"""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paramiko.common import (
    AUTH_FAILED,
    AUTH_SUCCESSFUL,
    OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED,
    OPEN_SUCCEEDED,
)

from harness.errors import GuestCommandTimeout, GuestOutputTooLarge
from harness.guest.ssh import OUTPUT_CAP, GuestSsh, connect_with_retry


class _Server(paramiko.ServerInterface):
    """Accepts the one client key; runs each exec request as a host shell command."""

    def __init__(self, client_public: paramiko.PKey) -> None:
        self.client_public = client_public

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        return AUTH_SUCCESSFUL if key == self.client_public else AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        return OPEN_SUCCEEDED if kind == "session" else OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        threading.Thread(target=_serve, args=(channel, command.decode()), daemon=True).start()
        return True


def _feed(channel: paramiko.Channel, stdin: subprocess.Popen[bytes]) -> None:
    """The client's stdin into the process, until the client stops writing."""
    assert stdin.stdin is not None
    with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
        while data := channel.recv(1 << 16):
            stdin.stdin.write(data)
            stdin.stdin.flush()
    with contextlib.suppress(OSError):
        stdin.stdin.close()


def _serve(channel: paramiko.Channel, command: str) -> None:
    proc = subprocess.Popen(["sh", "-c", command], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    threading.Thread(target=_feed, args=(channel, proc), daemon=True).start()
    assert proc.stdout is not None
    try:
        while chunk := os.read(proc.stdout.fileno(), 1 << 16):
            channel.sendall(chunk)
        channel.send_exit_status(proc.wait())
    except (OSError, EOFError, paramiko.SSHException):
        pass  # the client closed the channel: its deadline or cap
    finally:
        proc.kill()
        proc.wait()
        # paramiko answers the exec request on the transport's thread after
        # check_channel_exec_request returns; a close sent from here first reached the
        # client before that answer under load, and its exec failed with "Channel
        # closed".  The client closes its end once it has the exit status (or gave up).
        deadline = time.monotonic() + 10
        while not channel.closed and time.monotonic() < deadline:
            time.sleep(0.01)
        channel.close()


@contextlib.contextmanager
def _ssh_server(tmp_path: Path) -> Iterator[GuestSsh]:
    """A connected GuestSsh to a local server; everything stopped on the way out."""
    host, client = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    openssh = (ser.Encoding.PEM, ser.PrivateFormat.OpenSSH, ser.NoEncryption())
    (tmp_path / "host_key").write_bytes(host.private_bytes(*openssh))
    (tmp_path / "host_key.pub").write_bytes(host.public_key().public_bytes(
        ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH) + b"\n")
    (tmp_path / "client_key").write_bytes(client.private_bytes(*openssh))
    host_key = paramiko.Ed25519Key.from_private_key_file(str(tmp_path / "host_key"))
    client_public = paramiko.Ed25519Key.from_private_key_file(str(tmp_path / "client_key"))
    listener = socket.create_server(("127.0.0.1", 0))
    transports: list[paramiko.Transport] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            conn, _ = listener.accept()
            transport = paramiko.Transport(conn)
            transports.append(transport)
            transport.add_server_key(host_key)
            transport.start_server(server=_Server(client_public))

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    port = listener.getsockname()[1]
    try:
        with connect_with_retry("127.0.0.1", port, tmp_path / "client_key",
                                tmp_path / "host_key.pub", time.monotonic() + 20,
                                lambda: None) as ssh:
            yield ssh
    finally:
        listener.close()
        acceptor.join(timeout=10)
        for transport in transports:
            transport.close()


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@pytest.mark.timeout(60)
def test_a_flood_is_ended_by_the_deadline(tmp_path: Path) -> None:
    """``yes`` keeps data ready on most passes: the clock is read on every one, so the
    command ends at its 2 s deadline, saying how much it had printed."""
    with _ssh_server(tmp_path) as ssh:
        started = time.monotonic()
        with pytest.raises(GuestCommandTimeout, match=r"(?m)^guest command did not finish within "
                           r"2 s \([0-9]+ bytes of output so far\): while :; do echo y; done$"):
            ssh.run("while :; do echo y; done", timeout=2.0)
        assert time.monotonic() - started < 4
        # The session is still usable afterwards: the flood's channel was closed.
        assert ssh.run("echo after", timeout=10).stdout == b"after\n"


@pytest.mark.timeout(90)
def test_closing_a_channel_while_the_guest_still_prints_keeps_the_session(tmp_path: Path) -> None:
    """A channel closed on its deadline while data still streams in must not take the
    session down.  The wake-up used to be an OS pipe that Channel.close() closed under
    the transport thread's feet: one CI run in ~1200 tests lost the whole session to
    EBADF.  Forty short floods make that window likely; each is followed by a command."""
    with _ssh_server(tmp_path) as ssh:
        for _ in range(40):
            with pytest.raises(GuestCommandTimeout):
                ssh.run("while :; do echo y; done", timeout=0.15)
            assert ssh.run("echo after", timeout=10).stdout == b"after\n"


@pytest.mark.timeout(120)
def test_a_flood_is_ended_by_the_output_cap_in_bounded_memory(tmp_path: Path) -> None:
    """Before its deadline, a flood passes the cap: stopped there, not kept whole
    (without a cap, 100 s of this flood were gigabytes)."""
    before = _peak_rss()
    with _ssh_server(tmp_path) as ssh:
        started = time.monotonic()
        with pytest.raises(GuestOutputTooLarge, match=r"(?m)^guest command printed more than the "
                           rf"output cap of {OUTPUT_CAP >> 20} MiB in [0-9.]+ s \(stopped\): "
                           r"yes$"):
            ssh.run("yes", timeout=100.0)
        elapsed = time.monotonic() - started
    grown = _peak_rss() - before
    # The kept output and one chunk beyond it, plus bytearray's growth slack.
    assert grown < OUTPUT_CAP * 1.5, f"peak RSS grew by {grown >> 20} MiB"
    assert elapsed < 90


@pytest.mark.timeout(60)
def test_stdin_is_fed_while_the_output_is_read(tmp_path: Path) -> None:
    """A command that prints more than the SSH window before it reads its stdin: a
    write of all stdin before reading anything stalled until the deadline."""
    payload = b"x" * (8 << 20)
    with _ssh_server(tmp_path) as ssh:
        result = ssh.run("head -c 8000000 /dev/zero; wc -c", stdin=payload, timeout=30)
    assert result.rc == 0
    assert len(result.stdout) == 8_000_000 + len(f"{len(payload)}\n")
    assert result.stdout.endswith(f"{len(payload)}\n".encode())
    assert result.duration < 15


@pytest.mark.timeout(60)
def test_stdin_nobody_reads_is_bounded_by_the_deadline(tmp_path: Path) -> None:
    """Stdin beyond the SSH window that the command never reads: the command's own
    deadline, not a transport failure blamed on the guest."""
    with _ssh_server(tmp_path) as ssh:
        started = time.monotonic()
        with pytest.raises(GuestCommandTimeout, match=r"(?m)within 2 s .*: sleep 30$"):
            ssh.run("sleep 30", stdin=b"y" * (16 << 20), timeout=2.0)
        assert time.monotonic() - started < 4


@pytest.mark.timeout(60)
def test_the_connection_sends_small_messages_at_once(tmp_path: Path) -> None:
    """Nagle's algorithm off: with it on, every channel open waited for the guest's
    delayed ACK (43 ms of a 66 ms round trip on a TCG guest; 1.6 ms of 19 ms without)."""
    with _ssh_server(tmp_path) as ssh:
        transport = ssh._client.get_transport()
        assert transport is not None
        sock = transport.sock
        assert isinstance(sock, socket.socket)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
