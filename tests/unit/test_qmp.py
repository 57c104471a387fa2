"""The synchronous QMP facade against a scripted fake QEMU on a socketpair."""

from __future__ import annotations

import gc
import json
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.errors import QmpError
from harness.qemu.qmp import Qmp

GREETING = {"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""},
                    "capabilities": []}}  # fmt: skip

# A handler gets the parsed command and returns the messages to send back (or None
# to hang up).
Handler = Callable[[dict[str, object]], list[dict[str, object]] | None]


def standard(command: dict[str, object]) -> list[dict[str, object]] | None:
    name = command["execute"]
    ident = command.get("id")
    if name == "qmp_capabilities":
        return [{"return": {}, "id": ident}]
    if name == "query-status":
        event: dict[str, object] = {
            "event": "STOP",
            "data": {},
            "timestamp": {"seconds": 1, "microseconds": 0},
        }
        return [event, {"return": {"status": "paused"}, "id": ident}]
    if name == "human-monitor-command":
        args = command["arguments"]
        assert isinstance(args, dict)
        return [{"return": f"ran {args['command-line']}\r\n", "id": ident}]
    if name == "hang":
        return []
    if name == "quit":
        return None
    return [{"error": {"class": "CommandNotFound", "desc": f"no {name}"}, "id": ident}]


def serve(sock: socket.socket, handler: Handler, greet: bool = True) -> None:
    # qemu.qmp sends bare JSON objects without newlines (QEMU's parser is
    # streaming), so split the byte stream with raw_decode, not by lines.
    decoder = json.JSONDecoder()
    buffer = ""
    with sock:
        try:
            if greet:
                sock.sendall(json.dumps(GREETING).encode() + b"\r\n")
            while chunk := sock.recv(65536):
                buffer += chunk.decode()
                while buffer.strip():
                    try:
                        command, end = decoder.raw_decode(buffer.lstrip())
                    except json.JSONDecodeError:
                        break
                    buffer = buffer.lstrip()[end:]
                    replies = handler(command)
                    if replies is None:
                        return
                    for reply in replies:
                        sock.sendall(json.dumps(reply).encode() + b"\r\n")
        except OSError:
            return  # the client went away first; that is some tests' point


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair()
    yield ours, theirs
    ours.close()
    theirs.close()


def start(
    theirs: socket.socket, handler: Handler = standard, greet: bool = True
) -> threading.Thread:
    thread = threading.Thread(target=serve, args=(theirs, handler, greet), daemon=True)
    thread.start()
    return thread


def test_execute_returns_value_and_logs_json_lines(
    pair: tuple[socket.socket, socket.socket], tmp_path: Path
) -> None:
    ours, theirs = pair
    start(theirs)
    log = tmp_path / "qmp.jsonl"
    with Qmp(ours, log_path=log) as qmp:
        greeting = qmp.connect(timeout=5)
        assert greeting == GREETING
        assert qmp.execute("query-status") == {"status": "paused"}
        assert qmp.human("info qtree") == "ran info qtree\r\n"
        assert [e["event"] for e in qmp.drain_events()] == ["STOP"]
        assert qmp.drain_events() == []
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    stripped = [{k: v for k, v in e.items() if k != "t"} for e in entries]
    assert stripped[0] == {"recv": GREETING}
    assert stripped[1] == {"send": {"execute": "query-status"}}
    assert stripped[2]["event"]["event"] == "STOP"
    assert stripped[3] == {"recv": {"return": {"status": "paused"}}}
    assert stripped[4] == {
        "send": {"execute": "human-monitor-command", "arguments": {"command-line": "info qtree"}}
    }
    assert all(isinstance(e["t"], float) for e in entries)


def test_error_reply_names_the_command(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    start(theirs)
    with Qmp(ours) as qmp:
        qmp.connect(timeout=5)
        with pytest.raises(QmpError, match=r"^QMP command 'frobnicate' failed: "
                           r"CommandNotFound: no frobnicate") as caught:
            qmp.execute("frobnicate", {"x": 1})
    assert caught.value.message == "QMP command 'frobnicate' failed: CommandNotFound: no frobnicate"


def test_timeout_is_per_call_and_the_session_survives(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    start(theirs)
    with Qmp(ours) as qmp:
        qmp.connect(timeout=5)
        began = time.monotonic()
        with pytest.raises(QmpError,
                           match=r"^QMP command 'hang' got no answer within 0\.3 s\n") as caught:
            qmp.execute("hang", timeout=0.3)
        assert 0.25 < time.monotonic() - began < 3
        assert caught.value.message == "QMP command 'hang' got no answer within 0.3 s"
        assert "hung or very busy" in caught.value.hint
        assert qmp.execute("query-status", timeout=5) == {"status": "paused"}


def test_eof_mid_session_is_an_error_and_close_does_not_hang(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    start(theirs)
    qmp = Qmp(ours)
    qmp.connect(timeout=5)
    with pytest.raises(QmpError, match=r"^QMP connection lost while running 'quit'") as caught:
        qmp.execute("quit", timeout=5)  # the fake hangs up without replying
    assert caught.value.message.startswith("QMP connection lost while running 'quit'")
    began = time.monotonic()
    qmp.close()
    qmp.close()
    assert time.monotonic() - began < 3
    assert not qmp.connected


def test_quit_tolerates_the_hang_up(
    pair: tuple[socket.socket, socket.socket], tmp_path: Path
) -> None:
    ours, theirs = pair
    start(theirs)
    log = tmp_path / "qmp.jsonl"
    with Qmp(ours, log_path=log) as qmp:
        qmp.connect(timeout=5)
        qmp.quit(timeout=5)  # the fake hangs up without replying: no error
    sent = [json.loads(line).get("send") for line in log.read_text().splitlines()]
    assert {"execute": "quit"} in sent


def test_connect_to_a_dead_peer(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    theirs.close()
    with Qmp(ours) as qmp, pytest.raises(QmpError,
                                         match=r"^could not open the QMP session") as caught:
        qmp.connect(timeout=5)
    assert caught.value.message.startswith("could not open the QMP session")
    assert caught.value.hint == "QEMU has probably exited; its stderr log says why"


def test_connect_to_a_silent_peer_times_out(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, _theirs = pair
    began = time.monotonic()
    with Qmp(ours) as qmp, pytest.raises(
            QmpError, match=r"^QEMU sent no QMP greeting within 0\.3 s") as caught:
        qmp.connect(timeout=0.3)
    assert caught.value.message == "QEMU sent no QMP greeting within 0.3 s"
    assert time.monotonic() - began < 3


def test_use_after_close(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, _theirs = pair
    qmp = Qmp(ours)
    qmp.close()
    with pytest.raises(QmpError, match="already closed"):
        qmp.execute("query-status")


def _interrupt_once(monkeypatch: pytest.MonkeyPatch, client: object, name: str) -> None:
    """A real SIGINT delivered inside the library's ``name`` (the main thread's
    handler raises KeyboardInterrupt there), as a Ctrl-C lands at a random point."""
    original = getattr(client, name)

    def interrupted(*args: object) -> object:
        monkeypatch.setattr(client, name, original)
        signal.raise_signal(signal.SIGINT)
        return original(*args)

    monkeypatch.setattr(client, name, interrupted)


def test_ctrl_c_inside_the_library_is_not_raised_again_by_close(
    pair: tuple[socket.socket, socket.socket], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str],
) -> None:
    """Seen in CI: Ctrl-C landed in the library's sender task; close() re-raised it
    from the task, skipped closing the loop and socket (and the machine's own cleanup
    after it), and asyncio printed "Task exception was never retrieved" at exit."""
    ours, theirs = pair
    start(theirs)
    qmp = Qmp(ours, log_path=tmp_path / "qmp.jsonl")
    qmp.connect(timeout=5)
    _interrupt_once(monkeypatch, qmp._client, "_do_send")  # the socket write
    with pytest.raises(KeyboardInterrupt):
        qmp.execute("query-status", timeout=5)
    began = time.monotonic()
    qmp.close()  # the interrupt is the caller's already: not raised a second time
    assert time.monotonic() - began < 5
    assert ours.fileno() == -1
    del qmp
    gc.collect()
    err = capfd.readouterr().err
    assert "never retrieved" not in err
    assert "Traceback" not in err


def test_ctrl_c_during_close_is_raised_after_everything_is_released(
    pair: tuple[socket.socket, socket.socket], monkeypatch: pytest.MonkeyPatch,
) -> None:
    ours, theirs = pair
    start(theirs)
    qmp = Qmp(ours)
    qmp.connect(timeout=5)
    _interrupt_once(monkeypatch, qmp._client, "disconnect")
    with pytest.raises(KeyboardInterrupt):
        qmp.close()  # a new Ctrl-C: the user's, not to be swallowed
    assert ours.fileno() == -1
    qmp.close()  # and the session is closed for good
