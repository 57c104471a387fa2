"""How a long step says what it is doing: a Progress takes one line at a time.

Its own module, stdlib only: the image build, the host exports, QEMU, libvirt and
the run loop all report progress, and the type must sit below all of them.
"""

from __future__ import annotations

from collections.abc import Callable

# Where a long step reports what it is doing: one line at a time, to the terminal.
Progress = Callable[[str], None]


def quiet(_: str) -> None:
    """A Progress that says nothing (library callers, tests)."""


def said_once(progress: Progress) -> Progress:
    """``progress`` that passes each distinct line on once: exports of one layout are
    built alike and say alike things (eight overlay exports, eight identical lines)."""
    said: set[str] = set()

    def say(message: str) -> None:
        if message not in said:
            said.add(message)
            progress(message)

    return say
