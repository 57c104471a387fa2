"""``exec``'s exit status is the guest command's own, and says so.

exec boots a guest, runs one command and shuts down; it judges nothing.  Its status is
passed through as ssh passes it (a script asks the guest a question), so ``-- false``
gives 1, which elsewhere in the harness means a finding: ``exec --help`` and the
docs/usage.md say which status is whose.  The harness's own failure is 2 with an ``error:``
line, which a command exiting 2 itself never prints.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .helpers import needs_qemu, run_harness
from .leaks import Sandbox, kept_log_dirs


@pytest.mark.timeout(30)
def test_exec_help_says_whose_status_it_exits_with() -> None:
    result = run_harness(["exec", "--help"], timeout=20)
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "exit status: the guest command's own (as ssh: 0-255, 255 if a signal ended it)" \
        in text
    assert "exec judges nothing, so 1 is the command's, never a finding" in text


@needs_qemu
@pytest.mark.timeout(180)
@pytest.mark.parametrize(("command", "code"), [
    (["false"], 1), (["sh", "-c", "echo out; echo err >&2; exit 2"], 2),
    (["sh", "-c", "kill -TERM $$"], 255)], ids=["false", "exit-2", "killed-by-signal"])
def test_exec_exits_with_the_commands_status(tmp_path: Path, command: list[str],
                                             code: int) -> None:
    sandbox = Sandbox(tmp_path)
    result = sandbox.run(["exec", "--accel", "tcg", "--", *command], timeout=150)
    assert result.returncode == code, result.stderr
    # The command's own 2 prints no error line: only the harness's failure does.
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == []
    sandbox.assert_clean(allowed=kept_log_dirs(result.stderr))
