"""The virtiofs transport on a real guest: the real virtiofsd holds both settings'
promises, in the ids rows and the operation families; one that never announces
submounts (a wrapper around the real one) turns the ``virtiofs`` rows red, directly
and under libvirt.  Nothing the run started may outlive it."""

from __future__ import annotations

import errno
import json
import time
from pathlib import Path
from typing import Any

import pytest

from harness.errors import ArchiveUnreachable
from harness.qemu.virtiofsd import find_virtiofsd

from .helpers import (
    HARNESS_TIMEOUT,
    libvirt_missing,
    needs_qemu,
    needs_root,
    virtiofsd_wrapper,
)
from .leaks import Sandbox, kept_log_dirs

pytestmark = [needs_qemu, needs_root]

# The standard layout alone, virtiofs rows only: two cold guests, one export each
# for ids and one per operation family.
RUN = ["run", "--accel", "tcg", "--transport", "virtiofs", "--checks",
       "ids,operations,cross_device,bind", "--layout", "standard"]
SETTINGS = ("virtiofs", "virtiofs-nosubmounts")


def _run(tmp_path: Path, *extra: str) -> tuple[int, dict[str, dict[str, Any]], str]:
    sandbox = Sandbox(tmp_path / "sandbox")
    report = tmp_path / "report.json"
    result = sandbox.run([*RUN, *extra, "--json", str(report)], timeout=HARNESS_TIMEOUT)
    output = result.stdout + result.stderr
    sandbox.assert_clean(kept_log_dirs(result.stderr))
    rows = {row["case"]: row for row in json.loads(report.read_text())["results"]}
    return result.returncode, rows, output


def _wrapper(tmp_path: Path) -> Path:
    try:
        real = find_virtiofsd(None)
    except ArchiveUnreachable as exc:
        pytest.skip(f"no virtiofsd to wrap: {exc.message}")
    return virtiofsd_wrapper(tmp_path, real.command)


def _results(row: dict[str, Any], op: str, target: str) -> set[int]:
    return {o["result"] for o in row["operations"] if o["op"] == op and o["target"] == target}


@pytest.mark.timeout(200)
def test_the_real_virtiofsd_holds_both_settings(tmp_path: Path) -> None:
    rc, rows, output = _run(tmp_path)
    assert rc == 0, output
    assert sorted(rows) == sorted(f"{family}{s}" for s in SETTINGS
                                  for family in ("", "operations-", "cross_device-", "bind-"))
    announced, plain = rows["virtiofs"], rows["virtiofs-nosubmounts"]
    assert announced["transport"] == "virtiofs" and announced["mode"] is None
    assert announced["observed"].startswith("0 collisions, 3 guest st_dev for 3 host devices")
    assert all(w["intact"] for w in announced["witnesses"].values()), announced["witnesses"]
    assert announced["aliased"] == [] and announced["cwd_moved"] is False
    assert plain["status"] == "pass", plain["failures"]
    assert plain["guest_collisions"] > 0
    assert "1 guest st_dev for 3 host devices" in plain["observed"]
    assert any(n.startswith("measured without submounts") for n in plain["notes"])
    assert announced["boot"] == plain["boot"] == "cold"
    for setting in SETTINGS:
        ops, cross = rows[f"operations-{setting}"], rows[f"cross_device-{setting}"]
        assert ops["status"] == cross["status"] == "pass", ops["failures"] + cross["failures"]
        assert ops["observed"] == "143 of 143 operations as expected, 0 messages"
        # No --xattr for virtiofsd: the FUSE client answers EOPNOTSUPP.
        assert _results(ops, "getxattr", "file") == {errno.EOPNOTSUPP}
        # EXDEV either way: the guest's VFS refuses between submounts, and without them
        # virtiofsd passes the host's answer through; mv copies.
        assert _results(cross, "rename", "file") == _results(cross, "link", "file") \
            == _results(cross, "rename", "twin") == {errno.EXDEV}
        assert _results(cross, "mv", "file") == _results(cross, "mv", "dir") == {0}
    # One host file through two binds: three guest st_dev with submounts (known),
    # one id without.
    split = rows["bind-virtiofs"]
    assert split["status"] == "known", split["failures"]
    assert split["known_issue"]["id"] == "virtiofs-submount-bind-split"
    assert any(f.startswith("hard links of one host file got different guest ids: "
                            "'bind-a/inner'") for f in split["failures"])
    assert rows["bind-virtiofs-nosubmounts"]["status"] == "pass"
    assert "1 guest st_dev for 1 host device" in rows["bind-virtiofs-nosubmounts"]["observed"]
    # Linking a mount point: EXDEV where the guest sees a mount of its own (submounts),
    # EPERM (a directory) where it sees one mount for the whole export.
    assert _results(rows["operations-virtiofs"], "link", "mountpoint") == {errno.EXDEV}
    assert _results(rows["operations-virtiofs-nosubmounts"], "link", "mountpoint") \
        == {errno.EPERM}


@pytest.mark.timeout(200)
def test_a_virtiofsd_without_submounts_turns_the_virtiofs_rows_red(tmp_path: Path) -> None:
    wrapper = _wrapper(tmp_path)
    rc, rows, output = _run(tmp_path, "--virtiofsd", str(wrapper), "--no-witness")
    assert rc == 1, output
    assert rows["virtiofs"]["status"] == "fail"
    assert any("stands for 3 host devices" in f for f in rows["virtiofs"]["failures"]), \
        rows["virtiofs"]["failures"]
    assert any(f.startswith("collision: ") for f in rows["virtiofs"]["failures"])
    # The mount point is no guest mount any more: the VFS refuses the link (EPERM).
    assert rows["operations-virtiofs"]["failures"] == [
        "link on mountpoint 'dev01' (device 1) gave errno 1 (EPERM), expected errno 18 "
        "(EXDEV)"]
    # cross_device cannot tell: EXDEV comes from the host then (recorded, not a failure).
    assert rows["cross_device-virtiofs"]["status"] == "pass"
    assert {rows[f"{f}virtiofs-nosubmounts"]["status"]
            for f in ("", "operations-", "cross_device-", "bind-")} == {"pass"}
    # Forced off, the binds are no submounts either: the split does not reproduce.
    assert rows["bind-virtiofs"]["status"] == "pass"
    assert rows["bind-virtiofs"]["known_unreproduced"] == ["virtiofs-submount-bind-split"]


@pytest.mark.timeout(200)
def test_a_mount_point_looked_at_before_its_submount_is_the_known_issue(tmp_path: Path) -> None:
    # overlay-mixed has no harm probe, which would enter every device first.
    rc, rows, output = _run(tmp_path, "--checks", "ids", "--layout", "overlay-mixed",
                            "--no-witness")
    assert rc == 0, output
    announced = rows["virtiofs@overlay-mixed"]
    assert announced["status"] == "known", announced["failures"]
    assert announced["known_issue"]["id"] == "virtiofs-submount-stat-before-automount"
    changed = [f for f in announced["failures"] if "changed between pass 1 and pass 2" in f]
    # dev01 (the overlay) and dev02 (a tmpfs): st_ino kept, st_dev borrowed, then its own.
    assert [f.split("'")[1] for f in changed] == ["dev01", "dev02"], announced["failures"]
    assert any(f.startswith("collision: ") and "'.' (host dev" in f
               for f in announced["failures"])
    assert rows["virtiofs-nosubmounts@overlay-mixed"]["status"] == "pass"


# --- --via libvirt: libvirtd starts virtiofsd itself -----------------------------------

LIBVIRT_RUN = ["--via", "libvirt", "--no-witness"]


def _libvirt_daemons() -> set[int]:
    """virtiofsd processes libvirt started (it alone passes ``-o source=``)."""
    found = set()
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0") if entry.name.isdigit() else []
        except OSError:
            continue
        if any(a.endswith(b"virtiofsd") for a in argv) and b"-o" in argv:
            found.add(int(entry.name))
    return found


def _libvirt_run(tmp_path: Path, *extra: str) -> tuple[int, dict[str, dict[str, Any]], str]:
    reason = libvirt_missing()
    if reason:
        pytest.skip(reason)
    before = _libvirt_daemons()
    result = _run(tmp_path, *LIBVIRT_RUN, "--logs", str(tmp_path / "logs"), *extra)
    deadline = time.monotonic() + 10
    while (left := _libvirt_daemons() - before) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"virtiofsd started by libvirtd still running: {sorted(left)}"
    return result


@pytest.mark.timeout(200)
def test_libvirt_serves_virtiofs_with_submounts(tmp_path: Path) -> None:
    rc, rows, output = _libvirt_run(tmp_path)
    assert rc == 0, output
    assert sorted(rows) == ["cross_device-virtiofs", "operations-virtiofs",
                            "reject-invalid-multidevs", "reject-virtiofs-multidevs", "virtiofs"]
    assert {row["via"] for row in rows.values()} == {"libvirt"}
    assert rows["virtiofs"]["observed"].startswith("0 collisions, 3 guest st_dev for 3 host")
    assert {r["status"] for r in rows.values()} == {"pass"}
    # What libvirt 9.0 told virtiofsd, as the script it runs recorded it.
    logs = sorted(Path(rows["virtiofs"]["log_dir"]).glob("fs*-virtiofsd.log"))
    assert len(logs) == 3, logs
    first = logs[0].read_text().splitlines()[0]
    assert first.startswith("virtiofsd options from libvirtd: --fd="), first
    assert " -o source=" in first and "submounts" not in first


@pytest.mark.timeout(200)
def test_libvirt_with_a_virtiofsd_without_submounts_turns_the_virtiofs_rows_red(
        tmp_path: Path) -> None:
    rc, rows, output = _libvirt_run(tmp_path, "--virtiofsd", str(_wrapper(tmp_path)))
    assert rc == 1, output
    assert rows["virtiofs"]["status"] == rows["operations-virtiofs"]["status"] == "fail"
    assert any("stands for 3 host devices" in f for f in rows["virtiofs"]["failures"])
