"""Where the report writers put a report, on real files: written through a device,
never renamed over it; a device that refuses the write is our error line, not a fault."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from harness.errors import ReportWriteError
from harness.report import write_json, write_unrun


@pytest.mark.timeout(10)
def test_a_full_device_is_a_report_error_naming_the_path() -> None:
    with pytest.raises(ReportWriteError) as caught:
        write_json({"passed": True}, Path("/dev/full"))
    assert caught.value.message == ("the report /dev/full could not be written: No space left "
                                    "on device")
    assert stat.S_ISCHR(Path("/dev/full").stat().st_mode)


@pytest.mark.timeout(10)
def test_a_regular_file_is_replaced_whole_and_its_link_kept(tmp_path: Path) -> None:
    target = tmp_path / "run.json"
    target.write_text("old, longer than the report will be\n" * 100)
    link = tmp_path / "latest.json"
    link.symlink_to(target)
    write_json({"passed": True}, link)
    assert link.is_symlink() and json.loads(target.read_text()) == {"passed": True}
    assert sorted(os.listdir(tmp_path)) == ["latest.json", "run.json"]


def test_a_run_without_rows_still_writes_every_report_it_was_asked_for(tmp_path: Path) -> None:
    # A CI step summary that cats the Markdown must say why, not find no file.
    paths = [tmp_path / name for name in ("run.json", "run.xml", "run.md")]
    write_unrun("QEMU 4.1.0 is older than 4.2", *paths)
    assert json.loads(paths[0].read_text())["error"] == "QEMU 4.1.0 is older than 4.2"
    assert 'errors="1"' in paths[1].read_text()
    assert paths[2].read_text() == ("**multidevs-harness did not run** (exit 2): "
                                    "QEMU 4.1.0 is older than 4.2\n")
