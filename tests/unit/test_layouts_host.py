"""Every export layout built for real, as root, in a child process's private namespace
(like test_export.py): the host truth each is built to show, and that once
``build_export`` is left (normally, by an exception or by Ctrl-C) no mount, no loop
device, no FUSE server and no directory of it remains; nor does a loop device once a
harness holding one is SIGKILLed.

A layout this host cannot build (a tool, /dev/fuse or a kernel filesystem missing) is
skipped with the harness's own message saying what is missing.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from harness.config import Layout
from harness.host.scripted import scripted_devices
from harness.verdicts.remap_model import RemapBranch, RemapModel, SeenFile

REPO = Path(__file__).resolve().parents[2]
NOBODY = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
# The child's own deadline sits below the tests' timeouts.
CHILD_TIMEOUT_S = 100
TEST_TIMEOUT_S = 120
# The ~66,000-entry tree takes 5-10 s here (one FUSE round trip per lstat, in a
# single-threaded Python server); far more means something went wrong.
FULLMAP_BUILD_LIMIT_S = 40.0

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="builds mounts: run as root")

CHILD = r"""
import json, os, sys, time
from pathlib import Path
from harness.config import Layout
from harness.host.layout import ExportLayout
from harness.errors import LayoutRequirementMissing, LayoutUnavailable
from harness.host.build import scratch_dir
from harness.host.export import build_export
from harness.host.namespace import enter_private_namespace
from harness.host.truth import layout_premise

args = json.loads(sys.argv[1])
info = enter_private_namespace()
scratch = scratch_dir()  # mounted once per namespace: part of the "before" picture

def mounts():
    found = {}
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            left, right = line.split(" - ")
            found[left.split()[4]] = right.split()[:2]  # fstype, source
    return found

def loops(new):
    out = {}
    for fstype, source in new.values():
        if source.startswith("/dev/loop"):
            name = source.rsplit("/", 1)[1]
            out[name] = Path(f"/sys/block/{name}/loop/backing_file").read_text().strip()
    return out

def servers(root):
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(") ", 1)[1][:1]
        except OSError:
            continue
        if b"harness.host.scripted_server" in argv and state not in "ZX" and any(
                arg.startswith(root.encode()) for arg in argv):
            pids.append(int(entry.name))
    return pids

def summary(export, took):
    new = {k: v for k, v in mounts().items() if k not in before}
    return {
        "root": str(export.root), "took": took,
        "devices": [[d.index, d.relpath, d.st_dev] for d in export.devices],
        "entries": [[e.path, e.dev, e.ino, e.nlink, str(e.kind), e.device, e.size, e.mtime]
                    for e in export.truth.entries],
        "premise": layout_premise(export.layout.kind, export.truth),
        "mounts": new, "loops": loops(new), "servers": servers(str(export.root)),
    }

before = mounts()
out = {"kind": str(info.kind)}
layout = ExportLayout(files_per_device=args["files"], kind=Layout(args["kind"]))
start = time.monotonic()
try:
    with build_export(layout, base_dir=Path(args["base"])) as export:
        out["summary"] = summary(export, time.monotonic() - start)
        if args.get("raise") == "error":
            raise RuntimeError("boom")
        if args.get("raise") == "interrupt":
            raise KeyboardInterrupt
except LayoutUnavailable as exc:
    out["unavailable"] = str(exc)
except LayoutRequirementMissing as exc:
    out["missing"] = str(exc)
except RuntimeError as exc:
    out["raised"] = str(exc)
except KeyboardInterrupt:
    out["raised"] = "KeyboardInterrupt"
after = mounts()
out["mounts_left"] = sorted(k for k in after if k not in before)
if "summary" in out:
    loops_left = []
    for name, backing in out["summary"]["loops"].items():
        try:
            now = Path(f"/sys/block/{name}/loop/backing_file").read_text().strip()
        except OSError:
            continue
        if now == backing:
            loops_left.append(name)
    out["loops_left"] = loops_left
    out["servers_left"] = [p for p in out["summary"]["servers"]
                           if Path(f"/proc/{p}").exists()
                           and Path(f"/proc/{p}/stat").read_text().rsplit(") ", 1)[1][:1]
                           not in "ZX"]
out["scratch_left"] = sorted(os.listdir(scratch)) if scratch else []
print(json.dumps(out))
"""



def run_child(args: dict[str, Any], tmp: Path, prefix: list[str] | None = None
              ) -> dict[str, Any]:
    """Run CHILD; skip when the layout's tools or filesystem are missing here; check
    from outside what it checked inside: nothing left."""
    # Its own TMPDIR: whatever the build puts in the temp dir must be gone afterwards.
    tmp.mkdir(mode=0o777, exist_ok=True)
    tmp.chmod(0o777)
    python = sys.executable
    if prefix and subprocess.run([*prefix, python, "-c", "pass"], capture_output=True,
                                 check=False).returncode != 0:
        python = "/usr/bin/python3"  # this venv is not reachable by that user
    proc = subprocess.run(
        [*(prefix or []), python, "-c", CHILD, json.dumps(args)],
        capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, cwd=REPO, check=False,
        env={**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(tmp)},
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    if "missing" in result:
        pytest.skip(result["missing"].splitlines()[0])
    assert result["mounts_left"] == [], result["mounts_left"]
    assert result["scratch_left"] == [], result["scratch_left"]
    assert sorted(p.name for p in tmp.iterdir()) == []
    if "summary" in result:
        assert result["loops_left"] == [] and result["servers_left"] == []
        with open("/proc/self/mountinfo") as handle:
            assert result["summary"]["root"] not in handle.read()
    return result


def build(kind: Layout, tmp_path: Path, base: Path, files: int = 3) -> dict[str, Any]:
    """Build ``kind`` in a child and return its result (after the leak checks)."""
    return run_child({"kind": kind.value, "files": files, "base": str(base)}, tmp_path / "tmp")


def table(summary: dict[str, Any]) -> dict[str, list[Any]]:
    """path -> [dev, ino, nlink, kind, device, size, mtime]."""
    return {row[0]: row[1:] for row in summary["entries"]}


def model_walk(summary: dict[str, Any]) -> tuple[RemapModel, dict[str, tuple[int, int]]]:
    """Feed the truth, in truth order, to the remap model; return it and, per device
    relpath, (affix index, key width) of its first stat."""
    model = RemapModel()
    first: dict[str, tuple[int, int]] = {}
    relpaths = {index: relpath for index, relpath, _ in summary["devices"]}
    for _, dev, ino, _, _, device, _, _ in summary["entries"]:
        qid = model.see(SeenFile(dev, ino))
        relpath = relpaths[device]
        if relpath not in first and qid.prefix_bits is not None:
            first[relpath] = (qid.affix_index, qid.prefix_bits)
    return model, first


@pytest.mark.timeout(TEST_TIMEOUT_S)
def test_overlay_is_one_device_with_the_layer_in_the_top_bits(tmp_path: Path,
                                                                 base: Path) -> None:
    summary = build(Layout.OVERLAY, tmp_path, base)["summary"]
    rows = table(summary)
    assert summary["premise"] is None
    assert len(summary["devices"]) == 1 and len({row[0] for row in rows.values()}) == 1
    assert summary["mounts"][summary["root"]][0] == "overlay"
    low = (1 << 62) - 1
    for name in ("f0", "f1", "f2"):
        inos = [rows[f"{layer}/{name}"][1] for layer in ("up", "l1", "l2", "l3")]
        # Layer k adds k << 62 (upper 0) to the same raw number on every layer.
        assert [ino >> 62 for ino in inos] == [0, 1, 2, 3]
        assert len({ino & low for ino in inos}) == 1
        assert {rows[f"{layer}/{name}"][5] for layer in ("up", "l1", "l2", "l3")} == {32}
    assert rows["l1/link-a"][1] == rows["l1/link-b"][1] and rows["l1/link-a"][2] == 2
    # The layers are tmpfs mounts outside the export root, gone with it.
    layers = [m for m in summary["mounts"] if m.rsplit("/", 1)[-1] in ("up", "l1", "l2", "l3")]
    assert len(layers) == 4 and not any(m.startswith(summary["root"]) for m in layers)


@pytest.mark.timeout(TEST_TIMEOUT_S)
def test_overlay_mixed_has_an_overlay_between_tmpfs_devices(tmp_path: Path,
                                                             base: Path) -> None:
    summary = build(Layout.OVERLAY_MIXED, tmp_path, base)["summary"]
    rows = table(summary)
    assert summary["premise"] is None
    assert [d[1] for d in summary["devices"]] == [".", "dev01", "dev02"]
    assert rows["dev01/l3/f0"][1] >> 62 == 3 and rows["dev01"][4] == 1
    assert rows["file 0000"][1] == rows["dev02/file 0000"][1]
    assert rows["file 0000"][0] != rows["dev02/file 0000"][0]


@pytest.mark.timeout(TEST_TIMEOUT_S)
def test_btrfs_snapshot_shares_its_origins_numbers_on_its_own_device(tmp_path: Path,
                                                                      base: Path) -> None:
    summary = build(Layout.BTRFS, tmp_path, base)["summary"]
    rows = table(summary)
    assert summary["premise"] is None
    assert [d[1] for d in summary["devices"]] == [
        ".", "dev01", "dev01/sv1", "dev01/sv2", "dev01/snap"]
    assert len({d[2] for d in summary["devices"]}) == 5
    assert {rows[p][1] for p in ("dev01", "dev01/sv1", "dev01/sv2", "dev01/snap")} == {256}
    for name in ("file 0000", "sub/inner", "link-a", "twin-same"):
        sv1, sv2, snap = (rows[f"dev01/{s}/{name}"] for s in ("sv1", "sv2", "snap"))
        assert sv1[1] == sv2[1] == snap[1] and len({sv1[0], sv2[0], snap[0]}) == 3
    assert len(summary["loops"]) == 1  # detached afterwards: run_child checked


@pytest.mark.timeout(TEST_TIMEOUT_S)
@pytest.mark.parametrize("kind", [Layout.XFS, Layout.EXT4])
def test_formatted_device_repeats_the_tmpfs_numbers(kind: Layout, tmp_path: Path,
                                                     base: Path) -> None:
    summary = build(kind, tmp_path, base)["summary"]
    rows = table(summary)
    assert summary["premise"] is None
    target = next(k for k in summary["mounts"] if k.endswith("/dev01"))
    assert summary["mounts"][target][0] == kind.value
    # The tmpfs devices start where the formatted one's files start.
    inos = {rows[f"{prefix}file 0000"][1] for prefix in ("", "dev01/", "dev02/")}
    assert len(inos) == 1 and inos != {2}
    assert len({rows[f"{prefix}file 0000"][0] for prefix in ("", "dev01/", "dev02/")}) == 3


@pytest.mark.timeout(TEST_TIMEOUT_S)
def test_scripted_numbers_reach_each_remap_branch(tmp_path: Path, base: Path) -> None:
    summary = build(Layout.SCRIPTED, tmp_path, base)["summary"]
    rows = table(summary)
    assert summary["premise"] is None
    for device in scripted_devices():
        for entry in device.spec:
            path = f"{device.relpath}/{entry.path}" if entry.path else device.relpath
            assert rows[path][1] == entry.ino, path
    model, first = model_walk(summary)
    assert first == {".": (1, 1), "dev01": (2, 3), "dev02": (10, 7), "dev03": (138, 15),
                     "dev04": (256, 17)}
    result = model.result()
    assert not result.fullmap_reached
    collided = {path for group in result.collisions() for file in group
                for path, row in rows.items() if (row[0], row[1]) == (file.dev, file.ino)}
    assert "dev01/g7v0" in collided and "dev04/t0001a" in collided
    assert not any(p.startswith(("dev02/", "dev03/")) for p in collided)


@pytest.mark.timeout(TEST_TIMEOUT_S)
def test_scripted_fullmap_overflows_the_affixes(tmp_path: Path, base: Path) -> None:
    summary = build(Layout.SCRIPTED_FULLMAP, tmp_path, base)["summary"]
    assert summary["premise"] is None
    assert 66_000 <= len(summary["entries"]) <= 67_000
    assert summary["took"] < FULLMAP_BUILD_LIMIT_S
    model, first = model_walk(summary)
    assert first["dev05"] == (261, 17)
    result = model.result()
    assert result.fullmap_reached and result.warnings
    fullmapped = {model.see(SeenFile(row[1], row[2])).branch for row in summary["entries"]}
    assert fullmapped == {RemapBranch.SUFFIX, RemapBranch.FULLMAP}


@pytest.mark.timeout(TEST_TIMEOUT_S)
@pytest.mark.parametrize("kind", [Layout.OVERLAY, Layout.OVERLAY_MIXED, Layout.BTRFS,
                                  Layout.XFS, Layout.EXT4, Layout.SCRIPTED])
def test_an_exception_in_the_block_leaves_nothing(kind: Layout, tmp_path: Path,
                                                  base: Path) -> None:
    result = run_child({"kind": kind.value, "files": 2, "base": str(base), "raise": "error"},
                       tmp_path / "tmp")
    assert result["raised"] == "boom"
    assert result["summary"]["mounts"]  # it did mount, and run_child saw it all go


@pytest.mark.timeout(TEST_TIMEOUT_S)
@pytest.mark.parametrize("kind", [Layout.BTRFS, Layout.SCRIPTED])
def test_ctrl_c_in_the_block_leaves_nothing(kind: Layout, tmp_path: Path, base: Path) -> None:
    result = run_child({"kind": kind.value, "files": 2, "base": str(base),
                        "raise": "interrupt"}, tmp_path / "tmp")
    assert result["raised"] == "KeyboardInterrupt"


@pytest.mark.timeout(TEST_TIMEOUT_S)
def test_loop_layouts_are_unavailable_rootless(tmp_path: Path, base: Path) -> None:
    probe = subprocess.run([*NOBODY, "unshare", "-Urm", "true"], capture_output=True,
                           check=False)
    if probe.returncode != 0:
        pytest.skip(f"unprivileged user namespaces are disabled here: {probe.stderr!r}")
    result = run_child({"kind": Layout.BTRFS.value, "files": 2, "base": str(base)},
                       tmp_path / "tmp", prefix=NOBODY)
    assert result["kind"] == "user+mount"
    assert result["unavailable"] == ("btrfs layout skipped: loop devices need real root, and "
                                     "this harness runs in a user namespace (rootless)")


HOLDER = r"""
import json, sys, time
from pathlib import Path
from harness.config import Layout
from harness.host.layout import ExportLayout
from harness.errors import LayoutRequirementMissing
from harness.host.export import build_export
from harness.host.namespace import enter_private_namespace

enter_private_namespace()
try:
    with build_export(ExportLayout(files_per_device=2, kind=Layout.BTRFS)) as export:
        source = next(line.split(" - ")[1].split()[1] for line in open("/proc/self/mountinfo")
                      if line.split()[4] == str(export.root / "dev01"))
        name = source.rsplit("/", 1)[1]
        backing = Path(f"/sys/block/{name}/loop/backing_file").read_text().strip()
        print(json.dumps({"loop": name, "backing": backing}), flush=True)
        time.sleep(60)
except LayoutRequirementMissing as exc:
    print(json.dumps({"missing": str(exc)}), flush=True)
"""


def _still_attached(name: str, backing: str) -> bool:
    try:
        return Path(f"/sys/block/{name}/loop/backing_file").read_text().strip() == backing
    except OSError:
        return False


@pytest.mark.timeout(TEST_TIMEOUT_S)
def test_a_sigkilled_harness_leaks_no_loop_device() -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER], stdout=subprocess.PIPE,
                              text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout is not None
        ready, _, _ = select.select([holder.stdout], [], [], CHILD_TIMEOUT_S / 2)
        assert ready, "the holder did not build its btrfs export in time"
        said = json.loads(holder.stdout.readline())
        if "missing" in said:
            pytest.skip(said["missing"].splitlines()[0])
        assert _still_attached(said["loop"], said["backing"])
        holder.send_signal(signal.SIGKILL)  # no finally, no ExitStack: only the kernel
        holder.wait(timeout=10)
        # Autoclear: the device goes once the namespace's mount of it is gone.
        deadline = time.monotonic() + 10
        while _still_attached(said["loop"], said["backing"]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _still_attached(said["loop"], said["backing"])
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
