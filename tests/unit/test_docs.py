"""The documentation's promises about itself: every relative link and anchor in the
README, CONTRIBUTING.md and docs/ resolves, every page links back to the README, the
module map names exactly the modules under harness/, and the usage page names every
option of every command.  Docs drift silently; these tests make the drift a failure."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted(DOCS.glob("*.md"))]
# [text](target): the target up to the first space or closing parenthesis.
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)


def _prose(text: str) -> str:
    """The page without its code blocks and inline code: a link inside them is an
    example, not a link."""
    return re.sub(r"`[^`\n]*`", "", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped (hyphens and
    underscores kept), spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every anchor a page offers, numbered as GitHub numbers repeated headings."""
    seen: dict[str, int] = {}
    found = set()
    for line in FENCE.sub("", page.read_text()).splitlines():
        match = re.match(r"#{1,6} (.+)", line)
        if not match:
            continue
        base = slug(match.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(page: Path) -> Iterator[str]:
    """The relative links of a page (web addresses are not this test's business)."""
    for target in LINK.findall(_prose(page.read_text())):
        if not re.match(r"[a-z]+:", target):
            yield target


def broken_links(page: Path) -> list[str]:
    """Each link of ``page`` whose file or anchor does not exist."""
    broken = []
    for target in links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and (dest.suffix != ".md" or anchor not in anchors(dest)):
            broken.append(f"{target}: no such anchor")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_and_anchor_resolves(page: Path) -> None:
    assert broken_links(page) == []


def test_a_broken_link_or_anchor_is_found(tmp_path: Path) -> None:
    (tmp_path / "there.md").write_text("# A title: here\n\n## Twice\n\n## Twice\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](there.md#a-title-here) [ok](there.md#twice-1) [gone](gone.md)\n"
                    "[bad](there.md#nowhere) `[code](skipped.md)` [web](https://x.org/y)\n"
                    "```\n[fenced](skipped.md)\n```\n")
    assert broken_links(page) == ["gone.md: no such file", "there.md#nowhere: no such anchor"]


@pytest.mark.parametrize("page", PAGES[1:], ids=lambda p: p.name)
def test_every_page_links_back_to_the_readme(page: Path) -> None:
    back = "README.md" if page.parent == ROOT else "../README.md"
    assert back in set(links(page))


def test_the_readme_is_a_door() -> None:
    # The reference lives in docs/; the README only says what, how to start, where next.
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


def test_the_readme_links_every_page_of_docs() -> None:
    linked = {Path(t.partition("#")[0]).name for t in links(ROOT / "README.md")}
    assert sorted(p.name for p in DOCS.glob("*.md") if p.name not in linked) == []


def test_the_module_map_names_every_module_and_only_those() -> None:
    page = (DOCS / "how-it-works.md").read_text()
    start = page.index("## Module map")
    table = page[start:page.index("\n## ", start + 1)]
    mapped = set(re.findall(r"^\| `(harness/[\w/]+\.py)`", table, re.MULTILINE))
    modules = {str(p.relative_to(ROOT)) for p in (ROOT / "harness").rglob("*.py")
               if p.name != "__init__.py"}
    assert sorted(modules - mapped) == [], "modules missing from the map"
    assert sorted(mapped - modules) == [], "the map names modules that do not exist"


def test_every_module_path_the_docs_name_exists() -> None:
    named = {m for page in PAGES for m in re.findall(r"harness/[\w/]+\.py", page.read_text())}
    assert sorted(m for m in named if not (ROOT / m).exists()) == []


Command = tuple[tuple[str, ...], argparse.ArgumentParser]


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[Command]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
    for sub in subs:
        for name, child in sub.choices.items():
            yield from _commands(child, (*path, name))


def test_the_usage_page_names_every_option_of_every_command() -> None:
    page = (DOCS / "usage.md").read_text()
    missing = []
    for path, parser in _commands(build_parser()):
        heading = f"### `{' '.join(path)}`"
        assert heading in page, heading
        section = page.split(heading, 1)[1].split("\n### ", 1)[0]
        missing += [f"{' '.join(path)} {option}" for action in parser._actions
                    for option in action.option_strings
                    if option not in ("-h", "--help")
                    and not re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", section)]
    assert missing == []


# Options several commands share: one declaration, so one help text (predict's --qemu,
# --transport and --max-paths, reproduce's --cache and --layout mean something else).
SHARED = ("--accel", "--cold", "--modes", "--checks", "--devices", "--files", "--json",
          "--logs", "--kernel", "--export")


def test_a_shared_option_says_the_same_on_every_command() -> None:
    helps: dict[str, dict[str, str | None]] = {}
    for path, parser in _commands(build_parser()):
        for action in parser._actions:
            for option in set(action.option_strings) & set(SHARED):
                helps.setdefault(option, {})[" ".join(path)] = action.help
    assert sorted(helps) == sorted(SHARED)
    differing = {option: texts for option, texts in helps.items()
                 if len(texts) < 2 or len(set(texts.values())) != 1 or None in texts.values()}
    assert differing == {}


def test_the_option_reference_is_the_parsers_own() -> None:
    # The usage page's option tables are generated; a help text changed in the parser
    # and not regenerated would make the page say something the command does not.
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "usage-doc"), "--check"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
