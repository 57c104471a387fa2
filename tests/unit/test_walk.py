"""The walk of a user's tree (``host.walk``) on real directories, the plan of a run over
one, and the CLI's one-line refusals of a path that cannot be exported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from harness.checks.registry import RULES
from harness.config import Check, Layout, Mode
from harness.errors import TreeError, UsageError
from harness.host.layout import ExportLayout
from harness.host.populate import record_truth
from harness.host.truth import EntryKind, ExportDevice
from harness.host.walk import Unseen, walk_tree
from harness.plan import RunOptions, plan_run

REPO = Path(__file__).resolve().parents[2]
NOBODY = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]


def _tree(root: Path) -> Path:
    for name in ("b", "a", "a/z", "a/y"):
        (root / name).mkdir()
    for name in ("a/z/f", "a/y/g", "b/h", "top", "a/odd\nname"):
        (root / name).write_text(name)
    os.link(root / "top", root / "b/top-link")
    (root / "a/link").symlink_to("/nowhere")
    return root


def test_the_walk_takes_the_truth_order_of_the_built_exports(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    walk = walk_tree(root, read_prefix=4096, mountinfo="")
    device = ExportDevice(0, root, ".", os.stat(root).st_dev)
    assert walk.truth.entries == record_truth(root, [device]).entries
    assert walk.truth.paths[:4] == (".", "a", "a/link", "a/odd\nname")
    assert walk.problems == () and walk.truth.partial == frozenset()
    assert walk.devices == (device,)


def test_the_walk_reads_nothing_unless_asked(tmp_path: Path) -> None:
    walk = walk_tree(_tree(tmp_path), mountinfo="")
    assert all(e.content is None for e in walk.truth.entries)
    assert walk.file_bytes == sum(len(n) for n in ("a/z/f", "a/y/g", "b/h", "top", "top",
                                                  "a/odd\nname"))


def test_special_files_are_recorded_not_fatal(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    walk = walk_tree(tmp_path, read_prefix=16, mountinfo="")
    assert walk.truth.by_path["pipe"].kind is EntryKind.OTHER
    assert [(p.path, p.why) for p in walk.problems] == [("pipe", Unseen.SPECIAL)]


def test_more_paths_than_allowed_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(TreeError, match=r"holds more than 3 paths; pass --max-paths N"):
        walk_tree(_tree(tmp_path), max_paths=3, mountinfo="")


def test_a_path_that_is_no_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(TreeError, match="No such file or directory"):
        walk_tree(tmp_path / "missing", mountinfo="")
    with pytest.raises(TreeError, match="is not a directory"):
        walk_tree(tmp_path / "f", mountinfo="")


@pytest.mark.skipif(os.geteuid() != 0, reason="drops to nobody with setpriv: run as root")
def test_what_a_user_cannot_see_is_recorded() -> None:
    with tempfile.TemporaryDirectory(prefix="mdh-walk-test-") as made:
        _unseen_as_nobody(Path(made))


def _unseen_as_nobody(base: Path) -> None:
    base.chmod(0o755)  # nobody may enter it
    root = _tree(base)
    (root / "a").chmod(0o700)  # nobody cannot list it
    (root / "b").chmod(0o744)  # nobody can list it but not stat its entries
    code = ("import json,sys; from pathlib import Path; from harness.host.walk import "
            "walk_tree; w = walk_tree(Path(sys.argv[1]), mountinfo=''); print(json.dumps("
            "[sorted(w.truth.partial), [[p.path, p.why.value] for p in w.problems]]))")
    # The venv's interpreter may live where nobody cannot reach (/root): the system's.
    out = subprocess.run([*NOBODY, "/usr/bin/python3", "-c", code, str(root)], check=True,
                         capture_output=True, text=True, env={"PYTHONPATH": str(REPO)},
                         timeout=30, cwd="/").stdout
    assert out.strip() == ('[["a", "b"], [["a", "directory not listable"], ["b/h", '
                           '"cannot lstat"], ["b/top-link", "cannot lstat"]]]')


@pytest.mark.parametrize("argv", [["predict"], ["run", "--export"], ["reproduce", "--export"]])
def test_the_cli_refuses_a_missing_path_or_a_file_in_one_line(tmp_path: Path,
                                                              argv: list[str]) -> None:
    (tmp_path / "file").write_text("x")
    for path, said in ((tmp_path / "missing", "No such file or directory"),
                       (tmp_path / "file", "is not a directory")):
        done = subprocess.run([sys.executable, "-m", "harness.cli", *argv, str(path)],
                              capture_output=True, text=True, timeout=60,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
        assert done.returncode == 2
        assert done.stderr.count("\n") == 1 and said in done.stderr, done.stderr


def test_a_run_over_a_users_tree_runs_the_read_only_families_alone() -> None:
    export = ExportLayout(devices=2, files_per_device=1, kind=Layout.EXPORT,
                          source=Path("/srv/tree"))
    options = RunOptions(modes=(Mode.REMAP, Mode.WARN, Mode.FORBID), layout=ExportLayout(),
                         layouts=(Layout.EXPORT,), export=export, control=False)
    plan = plan_run(options, families=RULES, live_stderr=True)
    assert plan.writing_skipped == (Check.OPERATIONS, Check.CROSS_DEVICE, Check.RUNTIME_MOUNT,
                                    Check.HELD_FD, Check.BIND, Check.REMOUNT)
    rows = [e.row for g in plan.guests for e in g.exports]
    assert rows == ["remap@export", "remap+loose@export", "forbid@export",
                    "forbid+loose@export", "warn@export", "warn+loose@export"]
    assert {e.layout for g in plan.guests for e in g.exports} == {export}
    assert {e.check for g in plan.guests for e in g.exports} == {Check.IDS}


def test_the_export_layout_needs_its_source_and_only_it_has_one() -> None:
    with pytest.raises(UsageError):
        ExportLayout(kind=Layout.EXPORT)
    with pytest.raises(UsageError):
        ExportLayout(source=Path("/srv/tree"))


ROOTLESS_CHILD = r"""
import json, sys
from pathlib import Path
from harness.config import Layout
from harness.host.layout import ExportLayout
from harness.host.export import build_export
from harness.host.namespace import enter_private_namespace
info = enter_private_namespace()
layout = ExportLayout(devices=2, files_per_device=1, kind=Layout.EXPORT, source=Path(sys.argv[1]))
with build_export(layout) as export:
    try:
        (export.root / "new").write_text("x")
        wrote = "written"
    except OSError as exc:
        wrote = exc.strerror
    print(json.dumps([info.kind.value, list(export.truth.paths), wrote]))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="drops to nobody with setpriv: run as root")
def test_a_users_tree_is_bound_read_only_without_root() -> None:
    probe = subprocess.run([*NOBODY, "unshare", "-Urm", "true"], capture_output=True,
                           check=False, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"unprivileged user namespaces are disabled here: {probe.stderr!r}")
    with tempfile.TemporaryDirectory(prefix="mdh-walk-test-") as made:
        root = Path(made)
        root.chmod(0o755)
        (root / "a").mkdir()
        (root / "a/f").write_text("x")
        (root / "a/f").chmod(0o644)
        done = subprocess.run([*NOBODY, "/usr/bin/python3", "-c", ROOTLESS_CHILD, str(root)],
                              capture_output=True, text=True, timeout=60, cwd="/",
                              env={"PYTHONPATH": str(REPO),
                                   "MDH_CACHE_DIR": str(root / "cache")})
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == ["user+mount", [".", "a", "a/f"],
                                           "Read-only file system"]
        assert sorted(p.name for p in root.iterdir()) == ["a"]
