"""The command line declares each shared option once: the same flag means the same
thing, with the same help, in every command that has it, unless the command means
something else by it and says so here."""

from __future__ import annotations

import argparse
from collections import defaultdict

from harness.cli import build_parser

# (command, flag) pairs whose command means something else by the flag.
OWN_MEANING = {
    ("predict", "--qemu"),  # only its version is read; nothing is booted
    ("predict", "--max-paths"),  # a walk of the tree given, with no guest's deadlines
    ("reproduce", "--cache"),  # one cache mode, not a list
    ("reproduce", "--layout"),  # one layout, not a list
}
# Flags that differ only in taking one value (exec, reproduce) or several (run, grid).
ONE_OR_SEVERAL = {"--qemu", "--guest"}


def commands(parser: argparse.ArgumentParser,
             path: str = "") -> list[tuple[str, argparse.ArgumentParser]]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [(path, parser)]
    return [found for sub in subs for name, child in sub.choices.items()
            for found in commands(child, f"{path} {name}".strip())]


def drifted(parser: argparse.ArgumentParser) -> dict[str, list[str]]:
    """Each flag declared with more than one help text (two for ONE_OR_SEVERAL), and the
    first command saying each."""
    helps: dict[str, dict[str, str]] = defaultdict(dict)
    for name, command in commands(parser):
        for action in command._actions:
            for flag in action.option_strings:
                if flag.startswith("--") and flag != "--help" and \
                        (name.split()[0], flag) not in OWN_MEANING:
                    helps[flag].setdefault(action.help or "", name)
    return {flag: sorted(texts.values()) for flag, texts in helps.items()
            if len(texts) > (2 if flag in ONE_OR_SEVERAL else 1)}


def test_every_shared_option_has_one_help_text() -> None:
    assert drifted(build_parser()) == {}


def test_a_drifted_help_text_is_found() -> None:
    # The check above must be able to fail: --cold declared by exec in words of its own.
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    exec_parser = sub.choices["exec"]
    cold = next(a for a in exec_parser._actions if "--cold" in a.option_strings)
    cold.help = "boot cold"
    assert drifted(parser) == {"--cold": ["exec", "run"]}
