"""One convention for ``--json``: ``--json FILE`` writes FILE on every command that has
JSON, ``-`` (or the option alone) prints it.  ``predict T --json out.json`` used to
fail with "unrecognized arguments"; here the real command runs on a real tree (predict
boots nothing), in a process of its own as a user would start it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _harness(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness.cli", *argv], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})


def _tree(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "file").write_text("x")
    return tree


def test_predict_json_file_is_written_and_the_text_still_printed(tmp_path: Path) -> None:
    out = tmp_path / "reports" / "out.json"
    done = _harness("predict", str(_tree(tmp_path)), "--qemu-version", "7.2.0",
                    "--json", str(out))
    assert done.returncode == 0, done.stderr
    data = json.loads(out.read_text())
    assert data["files_checked"] == 3 and data["exit_code"] == 0
    assert [r["mode"] for r in data["results"]] == ["remap", "warn", "forbid", "default"]
    assert done.stdout.startswith(f"tree {tmp_path / 'tree'}: 3 paths on 1 device")
    assert f"JSON prediction: {out}" in done.stderr


@pytest.mark.parametrize("given", [["--json", "-"], ["--json"]])
def test_predict_json_to_stdout_prints_only_the_json(tmp_path: Path, given: list[str]) -> None:
    done = _harness("predict", str(_tree(tmp_path)), "--qemu-version", "7.2.0", *given)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["files_checked"] == 3  # nothing but the JSON


def test_predict_refuses_a_report_inside_the_tree_it_walks(tmp_path: Path) -> None:
    # The report would change the tree the prediction is about.
    tree = _tree(tmp_path)
    done = _harness("predict", str(tree), "--qemu-version", "7.2.0",
                    "--json", str(tree / "sub" / "out.json"))
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith(f"error: --json {tree / 'sub' / 'out.json'} is under the "
                                  "PATH this run reads"), done.stderr
    assert not (tree / "sub" / "out.json").exists()


def test_every_command_with_json_declares_it_the_same_way() -> None:
    for argv in (["predict", "--help"], ["probe", "--help"], ["image", "list", "--help"],
                 ["image", "build", "--help"], ["qemu", "list", "--help"], ["run", "--help"],
                 ["grid", "--help"]):
        done = _harness(*argv)
        assert "--json [FILE]" in done.stdout, (argv, done.stdout)
        assert "('-' or no FILE: stdout" in " ".join(done.stdout.split()), (argv, done.stdout)
