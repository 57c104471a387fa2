"""Progress lines: each distinct line of an export build said once."""

from __future__ import annotations

from harness.progress import said_once


def test_said_once_passes_each_distinct_line_once_in_order() -> None:
    heard: list[str] = []
    say = said_once(heard.append)
    for line in ("overlay: bits", "ext4: formatting", "overlay: bits", "ext4: formatting",
                 "overlay: other bits"):
        say(line)
    assert heard == ["overlay: bits", "ext4: formatting", "overlay: other bits"]


def test_each_wrapper_remembers_only_its_own_lines() -> None:
    heard: list[str] = []
    first, second = said_once(heard.append), said_once(heard.append)
    first("overlay: bits")
    second("overlay: bits")
    assert heard == ["overlay: bits", "overlay: bits"]
