"""The one small synchronous facade over the ``qemu.qmp`` library.

The rest of the harness is synchronous, so this class owns a private asyncio event
loop and runs every library coroutine to completion on it, each under its own
deadline.  Every command and every answer is written as one JSON line to the
optional "QMP exchange" log, which the pytest plugin attaches to failing tests.

Not thread-safe: one ``Qmp`` belongs to the thread that made it.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Awaitable, Mapping
from pathlib import Path
from typing import IO, Any, TypeVar

from qemu.qmp import ConnectError, ExecInterruptedError, ExecuteError, QMPClient, QMPError
from qemu.qmp.protocol import Runstate

from ..closing import Closing
from ..errors import QmpError

DEFAULT_TIMEOUT = 10.0
# How long close() may spend on an orderly disconnect before it just drops the socket.
_CLOSE_TIMEOUT = 2.0
_HINT_DEAD = "QEMU has probably exited; its stderr log says why"
_HINT_SLOW = (
    "QEMU is hung or very busy (a TCG guest under load is slow); check its stderr and "
    "the guest console, or raise the QMP timeout"
)

_T = TypeVar("_T")


class Qmp(Closing):
    """A synchronous QMP session over a socket already connected to QEMU.

    Give it our end of a ``socket.socketpair()`` whose other end QEMU received as
    ``-chardev socket,id=qmp,fd=N``: handing QEMU a socket we made avoids any race on
    a socket path.  The ``Qmp`` owns the socket from then on and closes it.
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        log_path: Path | None = None,
        default_timeout: float = DEFAULT_TIMEOUT,
        name: str = "qmp",
    ) -> None:
        self._log: IO[str] | None = None
        if log_path is not None:
            # Line-buffered and appended: a crash still leaves every line written so far.
            self._log = open(log_path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - lives as long as the session, closed in close()
        self._sock = sock
        self._default_timeout = default_timeout
        # A private loop rather than asyncio.run(): the client's reader task has to
        # survive from one synchronous call to the next.
        self._loop = asyncio.new_event_loop()
        # asyncio's own complaints (a task's exception never retrieved, a task destroyed
        # while pending) go to the exchange log, not to the user's terminal.
        self._loop.set_exception_handler(self._loop_complaint)
        self._client = QMPClient(name)
        # Ctrl-C or SIGTERM raised inside one of the library's tasks stays that task's
        # outcome and comes back out of the loop when close() next runs it; the ones the
        # caller has already seen (the same objects) tell those apart from a new signal.
        self._seen_interrupts: list[BaseException] = []
        self._events: list[dict[str, object]] = []
        self._closed = False

    # --- lifecycle -------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while the session is up (False before connect, after close or EOF)."""
        return not self._closed and self._client.runstate is Runstate.RUNNING

    def connect(self, timeout: float | None = None) -> dict[str, object]:
        """Read QEMU's greeting and negotiate capabilities; return the greeting.

        Raises QmpError when QEMU hangs up first (it died during startup) or says
        nothing before the deadline.
        """
        self._check_open("connect")
        limit = self._default_timeout if timeout is None else timeout
        try:
            self._run(self._client.connect(self._sock), limit)
        except TimeoutError:
            self._record({"timeout": "greeting", "after_s": limit})
            raise QmpError(
                f"QEMU sent no QMP greeting within {limit:.3g} s", hint=_HINT_SLOW
            ) from None
        except (ConnectError, QMPError, OSError, EOFError) as err:
            self._record({"error": "greeting", "detail": str(err)})
            raise QmpError(
                f"could not open the QMP session: {_describe(err)}", hint=_HINT_DEAD
            ) from err
        greeting = self._client.greeting
        # _asdict() is the library's own way to hand the greeting to sync code.
        raw: dict[str, object] = greeting._asdict() if greeting is not None else {}
        self._record({"recv": raw})
        return raw

    def close(self) -> None:
        """Disconnect and release the loop; safe to call twice and after QEMU died.

        Never waits longer than a few seconds and always releases the loop, the socket
        and the log.  It raises only a Ctrl-C or SIGTERM that arrives while it runs: on a
        dead QEMU the library re-raises the EOF its reader saw, and after an interrupt
        it re-raises that same interrupt, both of which the caller has already had.
        """
        if self._closed:
            return
        self._closed = True
        fresh: BaseException | None = None
        try:
            self._collect_events()
            if self._client.runstate is not Runstate.IDLE:
                self._run(self._client.disconnect(), _CLOSE_TIMEOUT)
        except Exception:
            # Typically the EOFError the reader saw when QEMU died: by the time we
            # close, the caller has its own error to report and must not lose it.
            pass
        except BaseException as exc:
            fresh = self._unless_seen(exc)
        finally:
            try:
                self._cancel_leftovers()
            except BaseException as exc:
                fresh = fresh or self._unless_seen(exc)
            self._loop.close()
            # The library closes the socket on a clean disconnect; after a failed
            # connect or a timed-out disconnect we still hold it.
            self._sock.close()
            if self._log is not None:
                self._log.close()
                self._log = None
        if fresh is not None:
            raise fresh

    # --- commands --------------------------------------------------------------------

    def execute(
        self,
        cmd: str,
        args: Mapping[str, object] | None = None,
        timeout: float | None = None,
    ) -> object:
        """Run one QMP command and return its ``return`` member.

        ``timeout`` (seconds, default the constructor's) bounds this call alone.
        Raises QmpError naming the command when QEMU answers with an error, does not
        answer in time, or the connection drops.
        """
        self._check_open(cmd)
        limit = self._default_timeout if timeout is None else timeout
        sent: dict[str, object] = {"execute": cmd}
        if args:
            sent["arguments"] = dict(args)
        self._record({"send": sent})
        try:
            value = self._run(self._client.execute(cmd, args), limit)
        except TimeoutError:
            self._record({"timeout": cmd, "after_s": limit})
            raise QmpError(
                f"QMP command {cmd!r} got no answer within {limit:.3g} s", hint=_HINT_SLOW
            ) from None
        except ExecuteError as err:
            self._record({"recv": dict(err.received)})
            raise QmpError(
                f"QMP command {cmd!r} failed: {err.error_class}: {err}",
                hint="the arguments or this QEMU's version do not support it; "
                "see the QMP exchange log",
            ) from err
        except (ExecInterruptedError, QMPError, OSError, EOFError) as err:
            self._record({"error": cmd, "detail": str(err)})
            raise QmpError(
                f"QMP connection lost while running {cmd!r}: {_describe(err)}", hint=_HINT_DEAD
            ) from err
        finally:
            self._collect_events()
        self._record({"recv": {"return": value}})
        return value

    def human(self, command_line: str, timeout: float | None = None) -> str:
        """Run a human-monitor (HMP) command such as ``info qtree``; return its text."""
        value = self.execute(
            "human-monitor-command", {"command-line": command_line}, timeout=timeout
        )
        if not isinstance(value, str):
            raise QmpError(
                f"human-monitor-command {command_line!r} returned {type(value).__name__}, not text",
                hint="this is a QEMU bug or not QEMU; see the QMP exchange log",
            )
        return value

    def quit(self, timeout: float | None = None) -> None:
        """Ask QEMU to exit; a hang-up instead of the reply counts as success.

        QEMU may close the socket before its ``{"return": {}}`` reaches us, which the
        library reports as an interrupted command.
        """
        try:
            self.execute("quit", timeout=timeout)
        except QmpError as err:
            if not isinstance(err.__cause__, ExecInterruptedError | EOFError | OSError):
                raise

    def drain_events(self) -> list[dict[str, object]]:
        """Return (and forget) the asynchronous events QEMU sent so far, oldest first.

        They are also in the exchange log; SHUTDOWN's ``reason`` (e.g. guest-panic)
        is the one callers usually want.
        """
        if not self._closed:
            self._collect_events()
        events, self._events = self._events, []
        return events

    # --- internals -------------------------------------------------------------------

    def _run(self, coro: Awaitable[_T], timeout: float) -> _T:
        # wait_for cancels the library call on timeout; the client stays usable.
        task = self._loop.create_task(asyncio.wait_for(coro, timeout))
        try:
            return self._loop.run_until_complete(task)
        except BaseException as exc:
            # Ctrl-C or SIGTERM raised in the loop leaves the call pending (cancel it
            # and take its outcome when close() next runs the loop) or, raised inside
            # the call itself, ends it with that exception (take it now).  Otherwise
            # asyncio prints "Task exception was never retrieved" and a traceback as
            # the harness exits.
            if not isinstance(exc, Exception) and not self._closed:
                self._seen_interrupts.append(exc)
            if task.done():
                _consume_outcome(task)
            else:
                task.cancel()
                task.add_done_callback(_consume_outcome)
            raise

    def _check_open(self, what: str) -> None:
        if self._closed:
            raise QmpError(
                f"QMP session already closed (tried {what!r})",
                hint="this is a harness bug: the machine was shut down before the call",
            )

    def _cancel_leftovers(self) -> None:
        # A timed-out or interrupted disconnect can leave reader/writer tasks behind;
        # cancel them so closing the loop does not warn about pending tasks.  A task
        # that ends with an interrupt re-raises it out of the loop at once, whatever
        # gather() is told, so an interrupt already seen ends one round, not the close.
        deadline = time.monotonic() + _CLOSE_TIMEOUT
        while pending := [task for task in asyncio.all_tasks(self._loop) if not task.done()]:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            for task in pending:
                task.cancel()
                task.add_done_callback(_consume_outcome)
            gathered = asyncio.gather(*pending, return_exceptions=True)
            try:
                self._loop.run_until_complete(asyncio.wait_for(gathered, left))
            except (TimeoutError, asyncio.CancelledError):
                return
            except BaseException as exc:
                if self._unless_seen(exc) is not None:
                    raise

    def _unless_seen(self, exc: BaseException) -> BaseException | None:
        """``exc`` unless it is an interrupt the caller already had from this session."""
        return None if any(exc is seen for seen in self._seen_interrupts) else exc

    def _loop_complaint(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        self._record({"asyncio": context.get("message", ""),
                      "exception": repr(exc) if exc is not None else None})

    def _collect_events(self) -> None:
        # Move events out of the library's unbounded queue into ours, logging each
        # once; a long run would otherwise keep every event QEMU ever sent.
        for event in self._client.events.clear():
            entry = dict(event)
            self._events.append(entry)
            self._record({"event": entry})

    def _record(self, entry: dict[str, object]) -> None:
        if self._log is None or self._log.closed:
            return
        line = {"t": round(time.time(), 3), **entry}
        self._log.write(json.dumps(line, default=str, sort_keys=False) + "\n")


def _consume_outcome(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _describe(err: BaseException) -> str:
    # The library wraps the root cause (EOFError, ConnectionResetError) in .exc.
    inner = getattr(err, "exc", None)
    if isinstance(inner, BaseException):
        return f"{err} ({type(inner).__name__}: {inner})" if str(inner) else f"{err} (EOF)"
    return str(err) or type(err).__name__
