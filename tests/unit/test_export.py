"""The multi-device export, built for real in a child process's private namespace.

Mounting needs the private namespace, which must not be entered by the pytest process
itself; each scenario therefore runs in a Python child that enters it, builds the
export, reports a JSON summary and checks its own cleanup. The test process checks
from outside that nothing leaked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from harness.host.truth import HostTruth, device_file_names

from .truths import host_dir, host_file

REPO = Path(__file__).resolve().parents[2]
NOBODY = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="builds tmpfs mounts: run as root")

CHILD = r"""
import json, os, sys
from pathlib import Path
from harness.config import Layout
from harness.host.layout import ExportLayout
from harness.errors import ExportError
from harness.host.export import build_export
from harness.host.namespace import enter_private_namespace

args = json.loads(sys.argv[1])
info = enter_private_namespace()

def mountinfo():
    with open("/proc/self/mountinfo") as handle:
        return handle.read()

def summary(export):
    truth = export.truth
    return {
        "root": str(export.root),
        "devices": [[d.index, d.relpath, d.st_dev, str(d.path)] for d in export.devices],
        "entries": [
            [e.path, e.dev, e.ino, e.nlink, str(e.kind), e.device,
             None if e.content is None else e.content.decode()]
            for e in truth.entries
        ],
        "times": {e.path: [e.mtime, e.size] for e in truth.entries},
        "repeated": sorted(truth.repeated_inodes()),
        "premise_holds": truth.premise_holds,
        "device_count": truth.device_count,
        "mounts_inside": mountinfo().count(str(export.root)),
    }

out = {"kind": str(info.kind)}
layout = ExportLayout(args["devices"], args["files"], args.get("nested", False),
                      Layout.LOOP if args.get("loop") else Layout.STANDARD)
root = Path(args["root"]) if args.get("root") else None
base = Path(args["base"]) if args.get("base") else None
try:
    with build_export(layout, base_dir=base, root=root) as export:
        out["summary"] = summary(export)
        if args.get("chdir"):
            os.chdir(export.root / "dev01")  # makes a plain umount fail with EBUSY
        if args.get("raise") == "error":
            raise RuntimeError("boom")
        if args.get("raise") == "interrupt":
            raise KeyboardInterrupt
except ExportError as exc:
    out["error"] = str(exc)
except RuntimeError as exc:
    out["raised"] = str(exc)
except KeyboardInterrupt:
    out["raised"] = "KeyboardInterrupt"
if "summary" in out:
    out["mounts_after"] = mountinfo().count(out["summary"]["root"])
    out["root_exists_after"] = os.path.exists(out["summary"]["root"])
print(json.dumps(out))
"""



def run_child(args: dict[str, Any], prefix: list[str] | None = None,
              child: str = CHILD) -> dict[str, Any]:
    python = sys.executable
    if prefix:
        python = "/usr/bin/python3" if _cannot_run(prefix, python) else python
    proc = subprocess.run(
        [*(prefix or []), python, "-c", child, json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=REPO,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    if "summary" in result:
        root = result["summary"]["root"]
        with open("/proc/self/mountinfo") as handle:
            assert root not in handle.read(), "an export mount is visible on the host"
    return result


def _cannot_run(prefix: list[str], python: str) -> bool:
    probe = subprocess.run([*prefix, python, "-c", "pass"], capture_output=True, check=False)
    return probe.returncode != 0


def entries(result: dict[str, Any]) -> dict[str, list[Any]]:
    return {row[0]: row[1:] for row in result["summary"]["entries"]}


@needs_root
def test_three_devices_share_inode_numbers(base: Path) -> None:
    result = run_child({"devices": 3, "files": 8, "base": str(base)})
    summary = result["summary"]
    assert result["kind"] == "mount"
    assert [d[:2] for d in summary["devices"]] == [[0, "."], [1, "dev01"], [2, "dev02"]]
    assert len({d[2] for d in summary["devices"]}) == 3
    assert summary["device_count"] == 3
    assert summary["premise_holds"] is True
    assert summary["mounts_inside"] == 3
    table = entries(result)
    # 3 device roots + per device: 8 files, sub, sub/inner, link-a, link-b and the
    # twins (twin-same, twin-mtime, twin-dir, its one entry)
    # and the special files (special-link, special-fifo, special-socket)
    assert len(table) == 3 + 3 * 19
    for device, prefix in enumerate(("", "dev01/", "dev02/")):
        kinds = [table[f"{prefix}special-{n}"][3] for n in ("link", "fifo", "socket")]
        assert kinds == ["symlink", "other", "other"]
        # Made last: every other entry of the device keeps the number it had before.
        specials = {table[f"{prefix}special-{n}"][1] for n in ("link", "fifo", "socket")}
        others = [row[1] for row in table.values() if row[4] == device and row[1] not in specials]
        assert max(others) < min(specials)
    names = device_file_names(8)
    assert names[0] == "file 0000" and names[-1] == "odd\nname"
    for inner in [*names, "sub", "sub/inner", "link-a", "link-b"]:
        inos = {table[f"{prefix}{inner}"][1] for prefix in ("", "dev01/", "dev02/")}
        assert len(inos) == 1, f"{inner!r} has different inode numbers: {inos}"
    # every device root is inode 1, so "." and "dev01" collide when passed through
    assert table["."][1] == table["dev01"][1] == table["dev02"][1] == 1
    assert set(summary["repeated"]) >= {table["file 0000"][1], table["link-a"][1], 1}
    assert table["dev01/file 0003"] == [table["dev01"][0], 5, 1, "file", 1, "dev01/file 0003\n"]
    assert table["file 0003"][-1] == "dev00/file 0003\n"
    assert table["dev02/odd\nname"][-1] == "dev02/odd\nname\n"
    assert table["dev02/sub/inner"][-1] == "dev02/sub/inner\n"
    assert table["dev01/link-a"][2] == table["dev01/link-b"][2] == 2
    assert table["dev01/link-b"][-1] == "dev01/link-a\n"
    assert table["dev01/sub"][3] == "dir"
    assert result["mounts_after"] == 0
    assert result["root_exists_after"] is False


@needs_root
def test_nested_device_is_an_extra_device(base: Path) -> None:
    result = run_child({"devices": 3, "files": 4, "nested": True, "base": str(base)})
    summary = result["summary"]
    assert [d[:2] for d in summary["devices"]] == [
        [0, "."],
        [1, "dev01"],
        [2, "dev02"],
        [3, "dev01/nested"],
    ]
    table = entries(result)
    assert table["dev01/nested"][4] == 3
    assert table["dev01/nested/file 0000"][1] == table["dev01/file 0000"][1]
    assert table["dev01/nested/link-a"][1] == table["link-a"][1]
    assert result["mounts_after"] == 0


@needs_root
def test_loop_layout_root_and_mount_point_share_a_qid(base: Path) -> None:
    result = run_child({"devices": 2, "files": 3, "loop": True, "base": str(base)})
    summary = result["summary"]
    # The root holds only dev01, dev01 only sub: one entry each, so one size.
    assert [p for p, *_ in summary["entries"]] == [
        ".", "dev01", "dev01/sub", "dev01/sub/file 0000", "dev01/sub/file 0001",
        "dev01/sub/odd\nname"]
    table = entries(result)
    assert table["."][1] == table["dev01"][1]  # inode 1 of each tmpfs
    assert summary["times"]["."] == summary["times"]["dev01"]  # mtime and size
    assert table["."][0] != table["dev01"][0] and result["mounts_after"] == 0


def test_loop_layout_is_two_devices() -> None:
    from harness.config import Layout
    from harness.errors import UsageError
    from harness.host.layout import ExportLayout

    with pytest.raises(UsageError, match="exactly two devices"):
        ExportLayout(devices=3, kind=Layout.LOOP)


@needs_root
def test_single_device_control(base: Path) -> None:
    summary = run_child({"devices": 1, "files": 1, "base": str(base)})["summary"]
    assert summary["device_count"] == 1
    assert summary["repeated"] == []
    assert summary["premise_holds"] is True
    # one file only: no room for the odd name
    assert [row[0] for row in summary["entries"]] == [
        ".",
        "file 0000",
        "link-a",
        "link-b",
        "special-fifo",
        "special-link",
        "special-socket",
        "sub",
        "sub/inner",
        "twin-dir",
        "twin-dir/only-d000",
        "twin-mtime",
        "twin-same",
    ]


@needs_root
def test_twins_are_built_to_collide_or_not(base: Path) -> None:
    """Which qids collide is decided by the build, not by the clock: twin-same and
    twin-dir share inode number, size and mtime on every device, twin-mtime's mtimes
    differ, and the device roots' mtimes differ so a collision stays on the twins."""
    result = run_child({"devices": 3, "files": 2, "base": str(base)})
    table, times = entries(result), result["summary"]["times"]
    for name in ("twin-same", "twin-mtime", "twin-dir"):
        assert len({table[f"{p}{name}"][1] for p in ("", "dev01/", "dev02/")}) == 1, name
        assert len({times[f"{p}{name}"][1] for p in ("", "dev01/", "dev02/")}) == 1, name
    assert {times[f"{p}twin-same"][0] for p in ("", "dev01/", "dev02/")} == {1_700_000_000}
    assert {times[f"{p}twin-dir"][0] for p in ("", "dev01/", "dev02/")} == {1_700_000_000}
    assert [times[f"{p}twin-mtime"][0] for p in ("", "dev01/", "dev02/")] == [
        1_700_000_000, 1_700_000_004, 1_700_000_008]
    assert [times[p][0] for p in (".", "dev01", "dev02")] == [
        1_700_000_064, 1_700_000_128, 1_700_000_192]
    assert table["dev01/twin-dir/only-d001"][1] == table["dev02/twin-dir/only-d002"][1]


@needs_root
def test_nested_needs_two_devices(base: Path) -> None:
    result = run_child({"devices": 1, "files": 2, "nested": True, "base": str(base)})
    assert result["error"].startswith(
        "a nested device needs at least 2 devices (it is mounted inside dev01)"
    )


@needs_root
def test_user_root_must_be_an_empty_directory(base: Path) -> None:
    full = base / "full"
    full.mkdir()
    (full / "x").mkdir()
    try:
        result = run_child({"devices": 2, "files": 2, "root": str(full)})
        assert result["error"].startswith(f"export root {full} is not an empty directory")
        missing = run_child({"devices": 2, "files": 2, "root": str(base / "missing")})
        assert missing["error"].startswith(f"export root {base / 'missing'} is not an empty")
    finally:
        (full / "x").rmdir()
        full.rmdir()


@needs_root
def test_user_root_is_used_and_kept(base: Path) -> None:
    given = base / "given"
    given.mkdir()
    try:
        result = run_child({"devices": 2, "files": 2, "root": str(given)})
        assert result["summary"]["root"] == str(given)
        assert result["mounts_after"] == 0
        assert result["root_exists_after"] is True
        assert list(given.iterdir()) == []
    finally:
        given.rmdir()


@needs_root
@pytest.mark.parametrize("how", ["error", "interrupt"])
def test_cleanup_on_exceptions(base: Path, how: str) -> None:
    result = run_child({"devices": 3, "files": 2, "base": str(base), "raise": how})
    assert result["raised"] == ("boom" if how == "error" else "KeyboardInterrupt")
    assert result["mounts_after"] == 0
    assert result["root_exists_after"] is False


@needs_root
def test_busy_mount_is_detached_lazily(base: Path) -> None:
    result = run_child({"devices": 2, "files": 2, "base": str(base), "chdir": True})
    assert "error" not in result
    assert result["mounts_after"] == 0
    assert result["root_exists_after"] is False


@needs_root
def test_scale_many_devices_and_many_files(base: Path) -> None:
    wide = run_child({"devices": 128, "files": 2, "base": str(base)})
    assert wide["summary"]["device_count"] == 128
    assert wide["summary"]["devices"][-1][1] == "dev127"
    assert wide["mounts_after"] == 0
    deep = run_child({"devices": 2, "files": 20_000, "base": str(base)})
    assert len(deep["summary"]["entries"]) == 2 * (20_000 + 4 + 4 + 3) + 2  # twins, specials
    assert deep["mounts_after"] == 0


@needs_root
def test_rootless_export_as_nobody(base: Path) -> None:
    probe = subprocess.run([*NOBODY, "unshare", "-Urm", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"unprivileged user namespaces are disabled here: {probe.stderr!r}")
    result = run_child({"devices": 2, "files": 3, "base": str(base)}, prefix=NOBODY)
    assert result["kind"] == "user+mount"
    assert result["summary"]["device_count"] == 2
    assert result["summary"]["premise_holds"] is True
    assert result["mounts_after"] == 0
    assert result["root_exists_after"] is False


def test_refuses_to_mount_outside_a_private_namespace(tmp_path: Path) -> None:
    # In a fresh interpreter: this pytest process itself may already have entered
    # the plugin's private namespace for the e2e tests.
    code = (
        "from pathlib import Path\n"
        "from harness.host.layout import ExportLayout\n"
        "from harness.errors import ExportError\n"
        "from harness.host.export import build_export\n"
        "try:\n"
        f"    with build_export(ExportLayout(2, 2), base_dir=Path({str(tmp_path)!r})):\n"
        "        print('MOUNTED')\n"
        "except ExportError as exc:\n"
        "    print('REFUSED', exc.message)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=False, timeout=30)
    assert result.stdout.strip() == (
        "REFUSED refusing to mount the export outside a private mount namespace"
    ), result.stderr
    assert list(tmp_path.iterdir()) == []


def test_host_truth_helpers() -> None:
    truth = HostTruth(
        (
            host_dir(".", 1, 1, 0),
            host_file("a", 1, 2, 0, b"x", nlink=2),
            host_file("b", 1, 2, 0, b"x", nlink=2),
            host_dir("dev01", 2, 1, 1),
        )
    )
    assert truth.paths == (".", "a", "b", "dev01")
    assert truth.by_file_id == {(1, 1): (".",), (1, 2): ("a", "b"), (2, 1): ("dev01",)}
    assert truth.repeated_inodes() == {1: (1, 2)}
    assert truth.device_count == 2
    assert truth.by_path["b"].file_id == (1, 2)


# --- a device set that changes while the export is in use ---------------------------

LIVE_CHILD = r"""
import json, os, sys
from pathlib import Path
from harness.host.layout import ExportLayout
from harness.host.truth import SUBDIR
from harness.host.export import bind_twice, build_export, extra_device, record_truth
from harness.host.namespace import enter_private_namespace

args = json.loads(sys.argv[1])
info = enter_private_namespace()
mounts = lambda: open("/proc/self/mountinfo").read()
ids = lambda path: list(os.lstat(path)[1:3][::-1])  # (st_dev, st_ino)
out = {"kind": str(info.kind)}
with build_export(ExportLayout(2, 2), base_dir=Path(args["base"])) as export:
    root = export.root
    with extra_device(export, "late", 2) as device:
        truth = record_truth(root, (*export.devices, device))
        out["late_devices"] = truth.device_count
        out["late_file"] = ids(root / "late" / "file 0000")
        out["dev01_file"] = ids(root / "dev01" / "file 0000")
        out["late_mounted"] = str(root / "late") in mounts()
    out["late_after"] = [os.listdir(root / "late"), str(root / "late") in mounts()]
    with bind_twice(export, SUBDIR, ("bind-a", "bind-b")):
        out["bind_ids"] = [ids(root / p / "inner") for p in (SUBDIR, "bind-a", "bind-b")]
        out["bind_devices"] = record_truth(root, export.devices).device_count
    out["bind_after"] = [os.listdir(root / "bind-a"), str(root / "bind-a") in mounts()]
    out["summary"] = {"root": str(root)}
out["mounts_after"] = mounts().count(out["summary"]["root"])
print(json.dumps(out))
"""


def _check_live(result: dict[str, Any]) -> None:
    # The runtime device repeats the others' inode numbers on a device of its own...
    assert result["late_devices"] == 3 and result["late_mounted"] is True
    assert result["late_file"][1] == result["dev01_file"][1]
    assert result["late_file"][0] != result["dev01_file"][0]
    # ... and once unmounted leaves the empty directory it covered.
    assert result["late_after"] == [[], False]
    # Three paths, one file, and no device beyond the export's own two.
    assert len({tuple(i) for i in result["bind_ids"]}) == 1 and result["bind_devices"] == 2
    assert result["bind_after"] == [[], False]
    assert result["mounts_after"] == 0


@needs_root
def test_runtime_device_and_binds_as_root(base: Path) -> None:
    _check_live(run_child({"base": str(base)}, child=LIVE_CHILD))


@needs_root
def test_runtime_device_and_binds_rootless(base: Path) -> None:
    probe = subprocess.run([*NOBODY, "unshare", "-Urm", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"unprivileged user namespaces are disabled here: {probe.stderr!r}")
    result = run_child({"base": str(base)}, prefix=NOBODY, child=LIVE_CHILD)
    assert result["kind"] == "user+mount"
    _check_live(result)
