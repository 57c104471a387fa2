"""The start-up path loads only what the command needs: ``exec`` (and every command's
``--help``) loads no verdicts, no result schema and no report writer; ``reproduce``
loads no report writer.  Each case runs in a fresh interpreter, since this process
has long imported everything."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# The verdicts and what only a judged run needs: none of it is exec's business.
JUDGING = ("harness.verdicts", "harness.results", "harness.report", "harness.checks",
           "harness.run", "harness.pool", "harness.workers")
REPORT_WRITERS = ("harness.report",)

LOADED = """
import json, sys
{code}
print(json.dumps(sorted(m for m in sys.modules if m.startswith("harness"))))
"""


def loaded_after(code: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", LOADED.format(code=code)], check=True,
                         capture_output=True, text=True, timeout=60)
    return list(json.loads(out.stdout.splitlines()[-1]))


def offending(modules: list[str], banned: tuple[str, ...]) -> list[str]:
    return [m for m in modules if any(m == b or m.startswith(b + ".") for b in banned)]


@pytest.mark.timeout(90)
def test_exec_path_loads_no_verdicts_and_no_report() -> None:
    # Everything exec runs: the CLI, the command and the guest machinery it uses.
    modules = loaded_after("import harness.cli, harness.commands.exec")
    assert "harness.qemu.machine" in modules, "the exec path was not loaded at all"
    assert offending(modules, JUDGING) == []


@pytest.mark.timeout(90)
@pytest.mark.parametrize("command", ["exec", "reproduce", "run", "probe"])
def test_help_loads_no_verdicts(command: str) -> None:
    modules = loaded_after(
        "from harness.cli import main\n"
        f"try:\n    main([{command!r}, '--help'])\nexcept SystemExit:\n    pass")
    assert "harness.cli" in modules
    assert offending(modules, JUDGING) == []


@pytest.mark.timeout(90)
def test_reproduce_path_loads_no_report_writer() -> None:
    modules = loaded_after("import harness.cli, harness.commands.reproduce")
    assert "harness.commands.reproduce" in modules
    assert offending(modules, REPORT_WRITERS) == []
