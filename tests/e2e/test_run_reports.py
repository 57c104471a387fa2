"""The main job end to end through the CLI: table, JSON and JUnit as promised."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from harness.guest.ssh import connect_with_retry
from harness.host.truth import ODD_NAME, device_file_names
from harness.results import ENVIRONMENT_KEYS

from .helpers import needs_root, run_harness
from .leaks import assert_no_qemu_left

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the default run's reports are written (JSON, JUnit, Markdown)."""
    return tmp_path_factory.mktemp("reports")


@pytest.fixture(scope="module")
def reports(report_dir: Path) -> tuple[subprocess.CompletedProcess[str], dict[str, Any],
                                       ET.Element]:
    out = report_dir
    # COLUMNS=80 and a pipe (run_harness captures): the table must not follow either.
    result = run_harness(["run", "--accel", "tcg", "--json", str(out / "run.json"),
                          "--junit", str(out / "run.xml"), "--markdown", str(out / "run.md")],
                         timeout=200, env={**os.environ, "COLUMNS": "80"})
    data = json.loads((out / "run.json").read_text()) if (out / "run.json").exists() else {}
    junit = ET.parse(out / "run.xml").getroot() if (out / "run.xml").exists() else ET.Element("x")
    assert_no_qemu_left()
    return result, data, junit


def _result(data: dict[str, Any], case: str) -> dict[str, Any]:
    matches = [r for r in data["results"] if r["case"] == case]
    assert len(matches) == 1, f"{case} not exactly once in {[r['case'] for r in data['results']]}"
    found: dict[str, Any] = matches[0]
    return found


def test_run_exits_0_and_prints_the_table(reports: tuple[Any, Any, Any],
                                          report_dir: Path) -> None:
    result, _, _ = reports
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["case", "layout", "exp", "observed", "witnesses", "verdict"]
    table = lines[:lines.index("expectations:")]
    assert max(len(line) for line in table) <= 100, result.stdout
    for case in ("remap", "warn", "forbid", "default", "control-remap", "operations-forbid",
                 "cross_device-remap", "runtime_mount-warn", "bind-default", "remount-remap"):
        assert any(line.startswith(case + " ") and line.endswith("PASS")
                   for line in table), case
    assert re.search(r"^remap\s+overlay\s+E\d+\s.*\sKNOWN$", result.stdout, re.M), result.stdout
    # Each expectation once, in the legend under the table.
    assert result.stdout.count("id collisions, one warning\n") == 1, result.stdout
    summary = lines[-1]
    assert summary.startswith("42/45 rows passed (3 known)") and "MSR" not in summary
    markdown = (report_dir / "run.md").read_text().splitlines()
    assert markdown[0] == "| case | layout | expectation | observed | witnesses | verdict |"
    assert len(markdown) == 2 + 45 + 2 and markdown[-1] == summary
    assert "| `remap@overlay` | overlay | single device (control): unique ids, no message | " \
        "9 collisions, 0 denied, no message | intact | **KNOWN (qemu-remap-unkeyed-bits)** |" \
        in markdown
    assert "booting guest" in result.stderr, "progress must be shown while guests boot"


def test_json_has_the_promised_keys_and_values(reports: tuple[Any, Any, Any]) -> None:
    _, data, _ = reports
    assert data["qemu"]["binary"].endswith("qemu-system-x86_64")
    assert data["qemu"]["version"].count(".") == 2
    assert data["qemu"]["multidevs_supported"] is True
    assert data["accel"]["used"] == "tcg" and data["accel"]["reason"]
    assert data["guest"]["kernel"].endswith("-amd64")
    for result in data["results"]:
        # The known issues of docs/known-issues.md: the overlay's remap collision, and
        # forbid's held fid reaching the device mounted over it.
        if result["status"] == "known" and result["check"] == "held_fd":
            assert result["case"] == "held_fd-forbid"
            assert result["known_issue"]["id"] == "qemu-forbid-held-fid"
            continue
        if result["status"] == "known":
            assert (result["layout"], result["mode"]) == ("overlay", "remap"), result
            assert result["known_issue"]["id"] == "qemu-remap-unkeyed-bits"
            continue
        assert result["passed"] is True and result["failures"] == []
        assert result["guest"]["kernel"] == data["guest"]["kernel"]
        assert result["guest"]["plan"] in ("remap+forbid+warn", "control+default")
        if result["check"] not in ("ids", "bind"):
            continue
        for key in ("mode", "passed", "host_devices", "files_checked", "guest_collisions",
                    "denied", "qemu_message", "witnesses", "boot_seconds", "failures"):
            assert key in result, key
        assert result["status"] == "pass"
    checks = {r["check"] for r in data["results"]}
    assert checks == {"ids", "operations", "cross_device", "runtime_mount", "held_fd", "bind",
                      "remount"}
    # Every export got the cache mode asked for, as this guest's kernel spells it.
    assert {(r["cache"], r["mounted_cache"]) for r in data["results"]} == {
        ("none", "no cache option"),
        ("loose", "cache=0xf" if data["guest"]["kernel"].startswith("6.12") else "loose")}
    # remap+loose is judged beside warn+loose, which showed its predicted harm.
    assert "the probe's power is shown: warn+loose on this QEMU showed its predicted " \
        "harm" in _result(data, "remap+loose")["notes"]
    assert data["exit_code"] == 0 and data["accel"]["fell_back"] in (True, False)
    warn, remap, forbid = (_result(data, m) for m in ("warn", "remap", "forbid"))
    assert warn["guest_collisions"] > 0
    assert {t for t, w in warn["witnesses"].items() if w["intact"] is False} == {
        "busybox-tar", "tar", "cp", "rsync", "du", "find"}, warn["witnesses"]
    assert "file ID collisions" in warn["qemu_message"]
    assert remap["guest_collisions"] == 0
    assert len(remap["witnesses"]) == 6
    assert all(w["intact"] and w["rc"] == 0 for w in remap["witnesses"].values())
    assert remap["qemu_message"] is None and remap["host_devices"] == 3
    assert forbid["denied"] > 0 and "multidevs=forbid" in forbid["qemu_message"]
    assert _result(data, "control-warn")["host_devices"] == 1


def test_junit_has_one_testcase_per_case(reports: tuple[Any, Any, Any]) -> None:
    _, data, junit = reports
    cases = [case.get("name") for case in junit.iter("testcase")]
    assert sorted(cases) == sorted(r["case"] for r in data["results"])
    assert junit.get("failures") == "0"
    skipped = [case.get("name") for case in junit.iter("testcase")
               if case.find("skipped") is not None]
    assert sorted(skipped) == ["held_fd-forbid", "remap+loose@overlay", "remap@overlay"]
    assert junit.get("skipped") == "3"


def test_overlay_remap_collides_as_the_model_predicts(reports: tuple[Any, Any, Any]) -> None:
    """The finding: remap (QEMU 7.2) gives l2/fN and l3/fN one qid; the guest's numbers
    are the model's at every path, so the row is the known issue, not news."""
    _, data, _ = reports
    row = _result(data, "remap@overlay")
    assert row["status"] == "known" and row["host_devices"] == 1
    model = row["remap_model"]
    assert model["agrees"] is True and model["differences"] == []
    pairs = {tuple(p["paths"]) for p in model["predicted_collisions"]}
    assert ("l2/f0", "l3/f0") in pairs and ("l2", "l3") in pairs
    assert all(p["why"].startswith("bits 62-61 dropped:") for p in model["predicted_collisions"])
    assert row["guest_collisions"] == len(pairs) == 9
    loose = _result(data, "remap+loose@overlay")
    assert loose["status"] == "known"
    assert loose["witnesses"]["cp"]["intact"] is False
    assert "'l3/f0' has the content of 'l2/f0'" in loose["witnesses"]["cp"]["detail"]
    for case in ("warn@overlay", "forbid@overlay", "default@overlay"):
        other = _result(data, case)
        assert other["status"] == "pass" and other["guest_collisions"] == 0, other
        assert other["remap_model"] is None  # QEMU 7.2 passes the numbers through


def test_known_issues_can_be_emptied_or_made_strict(tmp_path: Path) -> None:
    """With no known issues the overlay collision is a failure (exit 1); an issue that
    does not reproduce passes, unless --strict-known."""
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    base = ["run", "--accel", "tcg", "--modes", "remap", "--cache", "none", "--checks", "ids",
            "--no-control", "--no-witness"]
    unknown = run_harness([*base, "--layout", "overlay", "--known-issues", str(empty)],
                          timeout=200)
    assert unknown.returncode == 1, unknown.stdout + unknown.stderr
    assert "remap@overlay" in unknown.stdout and "FAIL" in unknown.stdout
    standing = tmp_path / "standing.toml"
    standing.write_text(
        '[[issue]]\nid = "never-here"\ntitle = "t"\ncomponent = "qemu"\nmodes = ["remap"]\n'
        'layouts = ["standard"]\nfailures = ["^collision: "]\nreproducer = "r"\n')
    lenient = run_harness([*base, "--layout", "standard", "--known-issues", str(standing)],
                          timeout=200)
    assert lenient.returncode == 0, lenient.stdout + lenient.stderr
    assert "known issues not reproduced: never-here" in lenient.stdout
    strict = run_harness([*base, "--layout", "standard", "--known-issues", str(standing),
                          "--strict-known"], timeout=200)
    assert strict.returncode == 1, strict.stdout + strict.stderr


def test_probe_json_carries_the_environment_block() -> None:
    result = run_harness(["probe", "--accel", "tcg", "--json"], timeout=100)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    keys = {f"{group}.{key}" for group in data for key in data[group]}
    assert keys == set(ENVIRONMENT_KEYS)
    assert data["qemu"]["multidevs_supported"] is True
    assert data["accel"] == {"used": "tcg", "reason": "TCG requested (--accel tcg)",
                             "fell_back": False}
    assert data["guest"]["kernel"].endswith("-amd64")


@needs_root  # the by-hand script mounts tmpfs
def test_reproduce_shows_collisions_and_writes_a_faithful_script(tmp_path: Path) -> None:
    result = run_harness(["reproduce", "--mode", "warn", "--accel", "tcg",
                          "--logs", str(tmp_path / "logs")], timeout=200)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "-> PASS" in result.stdout
    # One guest id, three host files: "guest (dev D, ino I) <- 'dev01/file 0000' (...), ..."
    collided = r"^guest \(dev \d+, ino \d+\) <- 'dev01/file 0000' \(host dev \d+, ino \d+\), '"
    assert re.search(collided, result.stdout, re.MULTILINE), result.stdout
    assert "file ID collisions" in result.stdout
    script = Path(re.search(r"host:  sh (\S+)", result.stdout).group(1))  # type: ignore[union-attr]
    # Run the script's export half, then list what it built instead of starting QEMU.
    listing = tmp_path / "listing"
    lines = script.read_text().splitlines()
    assert lines[-1].startswith("exec ") and "multidevs=warn" in lines[-1]
    lines[-1] = ("cd $EXPORT && find . -mindepth 1 -type f -exec sh -c "
                 f"'printf \"%s\\0%s\\0\" \"$1\" \"$(cat \"$1\")\"' _ {{}} \\; > {listing}")
    trimmed = tmp_path / "export-only.sh"
    trimmed.write_text("\n".join(lines) + "\n")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    subprocess.run(["sh", str(trimmed)], check=True, timeout=60,
                   env={**os.environ, "TMPDIR": str(tmp)})
    # The script's mounts die with its namespace, and it removes its mktemp directory.
    assert list(tmp.iterdir()) == []
    fields = listing.read_bytes().split(b"\0")[:-1]
    built = {fields[i].decode()[2:]: fields[i + 1].decode() for i in range(0, len(fields), 2)}
    names = device_file_names(8)
    assert ODD_NAME in names
    for device in ("", "dev01/", "dev02/"):
        label = device.rstrip("/") or "dev00"
        for name in (*names, "sub/inner", "link-a", "link-b"):
            expected = f"{label}/{'link-a' if name == 'link-b' else name}"
            assert built.pop(device + name) == expected, device + name
        # The twins, as the harness builds them (export._add_twins).
        for name in ("twin-same", "twin-mtime"):
            assert built.pop(device + name) == f"{label}/{name}", device + name
        assert built.pop(f"{device}twin-dir/only-d{int(label[3:]):03d}") == label
    assert built == {}


def test_the_cache_axis_shows_the_harm_where_it_belongs(reports: tuple[Any, Any, Any]) -> None:
    """Done when: remap rows alias nothing in any cache mode, warn + none aliases
    nothing, warn + loose shows the predicted harm (and only it)."""
    _, data, _ = reports
    assert {r["cache"] for r in data["results"]} == {"none", "loose"}
    for case in ("remap", "remap+loose", "warn"):
        row = _result(data, case)
        assert row["aliased"] == [] and row["cwd_moved"] is False, row
        assert row["access_errors"] == [], row
    for case in ("remap", "remap+loose", "control-remap"):
        witnesses = _result(data, case)["witnesses"]
        assert len(witnesses) == 6 and all(w["intact"] for w in witnesses.values()), witnesses
    loose = _result(data, "warn+loose")
    assert loose["cache"] == "loose" and loose["status"] == "pass", loose["failures"]
    assert len(loose["aliased"]) > 0
    assert {a["path"] for a in loose["aliased"]} <= set(loose["predicted_aliasing"])
    assert not any("twin-mtime" in p for p in loose["predicted_aliasing"])
    # QEMU printed the warning once, for "warn": the later export cannot see it.
    assert _result(data, "warn")["qemu_message"] is not None
    assert loose["qemu_message"] is None
    assert any(n.startswith("message already printed") for n in loose["notes"])
    assert _result(data, "forbid+loose")["aliased"] is None  # no twins reachable


def _ops(row: dict[str, Any]) -> dict[tuple[str, str, int], int]:
    return {(o["op"], o["target"], o["device"]): o["result"] for o in row["operations"]}


def test_families_show_what_each_mode_does(reports: tuple[Any, Any, Any]) -> None:
    _, data, _ = reports
    forbid = _ops(_result(data, "operations-forbid"))
    remap = _ops(_result(data, "operations-remap"))
    assert {result for (_, _, device), result in forbid.items() if device == 1} == {19}
    assert forbid[("creat", "missing", 0)] == 0 and forbid[("readlink", "symlink", 0)] == 0
    assert forbid[("stat", "missing", 0)] == 2  # ENOENT: the root device answers normally
    assert remap[("unlink", "file", 1)] == 0 and remap[("rmdir", "mountpoint", 1)] == 16
    for mode, errno_, mv in (("remap", 18, 0), ("warn", 18, 0), ("forbid", 19, 1)):
        row = _result(data, f"cross_device-{mode}")
        steps = [(o["op"], o["result"]) for o in row["operations"]]
        assert steps == [("rename", errno_), ("link", errno_), ("rename", errno_),
                         ("rename", errno_), ("mv", mv), ("mv", mv)], mode
    # With an inode cache, warn's rename between twins (one guest inode) is a silent
    # no-op: 0, the host unchanged; remap's stays EXDEV.
    for case, result in (("warn+loose", 0), ("remap+loose", 18), ("forbid+loose", 19)):
        row = _result(data, f"cross_device-{case}")
        twin = [o["result"] for o in row["operations"] if o["target"] == "twin"]
        assert twin == [result] and row["status"] == "pass", row
    assert _result(data, "runtime_mount-remap")["observed"].endswith(" 0 collisions")
    assert not _result(data, "runtime_mount-warn")["observed"].endswith(" 0 collisions")
    assert _result(data, "runtime_mount-forbid")["observed"].startswith("0 of ")
    for mode in ("remap", "warn", "forbid", "default"):
        bind = _result(data, f"bind-{mode}")
        assert bind["guest_collisions"] == 0 and bind["qemu_message"] is None
        seen, _, total = _result(data, f"remount-{mode}")["observed"].partition(" of ")
        assert total.startswith(f"{seen} paths unchanged"), mode


def test_loop_layout_gives_eloop_on_6_12_only_where_predicted(tmp_path: Path) -> None:
    """--layout loop on Debian 13's 6.12: under warn + loose every path below dev01
    is ELOOP (the predicted harm, noted; the row passes), while warn + none and remap
    + loose reach everything."""
    out = tmp_path / "loop.json"
    result = run_harness(
        ["run", "--accel", "tcg", "--layout", "loop", "--modes", "remap,warn",
         "--cache", "none,loose", "--checks", "ids", "--no-control", "--no-witness",
         "--guest", "debian-trixie-x86_64", "--json", str(out)], timeout=200)
    assert_no_qemu_left()
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(out.read_text())
    loose = _result(data, "warn+loose@loop")
    assert {"path": "dev01", "op": "opendir", "errno": 40} in loose["access_errors"]
    assert any("would have caused loop" in line for line in loose["dmesg"]), loose["dmesg"]
    assert "predicted harm: 'dev01' is not stat-able: errno 40 (ELOOP)" in loose["notes"]
    for case in ("warn@loop", "remap@loop", "remap+loose@loop"):
        row = _result(data, case)
        assert row["access_errors"] == [] and not any("ELOOP" in n for n in row["notes"]), row


@needs_root  # the by-hand script mounts the overlay's layers
@pytest.mark.timeout(300)
def test_the_overlay_by_hand_script_reproduces_the_finding_on_its_own(tmp_path: Path) -> None:
    """reproduce --layout overlay --mode remap explains the collision, and the script it
    writes, run with no harness at all, boots a guest in which l2/f0 and l3/f0 share one
    inode number while the host's differ."""
    result = run_harness(["reproduce", "--layout", "overlay", "--mode", "remap", "--accel",
                          "tcg", "--logs", str(tmp_path / "logs")], timeout=200)
    assert result.returncode == 0, result.stdout + result.stderr  # known: not news
    assert "-> KNOWN" in result.stdout, result.stdout
    # Each collision once, with the model's explanation beneath it, and nowhere else:
    # the failure list, the model's heading and the table each said it before.
    explained = (r"^guest \(dev \d+, ino 44\) <- 'l2/f0' \(host dev \d+, ino \d+\), 'l3/f0' "
                 r"\(host dev \d+, ino \d+\)\n    remap model: bits 62-61 dropped")
    assert re.search(explained, result.stdout, re.MULTILINE), result.stdout
    collisions = re.findall(r"^guest \(dev", result.stdout, re.MULTILINE)
    assert len(collisions) == 9 and result.stdout.count("bits 62-61 dropped") == 9, result.stdout
    assert "'l2/f0'" not in result.stdout.split("collisions (guest id <- host files):")[0]
    assert "QEMU 7.2" in result.stdout or "QEMU " in result.stdout
    script = Path(re.search(r"host:  sh (\S+)", result.stdout).group(1))  # type: ignore[union-attr]
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = subprocess.Popen(["sh", str(script)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ, "TMPDIR": str(tmp)})
    try:
        assert proc.stderr is not None
        # The script says how to reach its guest: its own port and known_hosts file.
        hint = proc.stderr.readline()
        found = re.search(r"ssh -i (\S+) -o StrictHostKeyChecking=yes "
                          r"-o UserKnownHostsFile=(\S+) -p (\d+) root@127.0.0.1", hint)
        assert found is not None, hint
        key, known, port = Path(found[1]), Path(found[2]), int(found[3])
        assert known.parent.parent == tmp
        host_key = key.with_name("host_key.pub")
        assert known.read_text().split()[1:] == host_key.read_text().split()[:2]
        with connect_with_retry("127.0.0.1", port, key, host_key,
                                time.monotonic() + 150, lambda: _still_running(proc)) as ssh:
            ids = ssh.run("stat -c '%n %i' /mnt/mdh0/l2/f0 /mnt/mdh0/l3/f0 /mnt/mdh0/l1/f0")
        inos = dict(line.split() for line in ids.stdout.decode().splitlines())
        assert inos["/mnt/mdh0/l2/f0"] == inos["/mnt/mdh0/l3/f0"] == "44", ids
        assert inos["/mnt/mdh0/l1/f0"] != "44"
    finally:
        # Ctrl-C: QEMU ends, and the script removes its directory.
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert_no_qemu_left()
    assert list(tmp.iterdir()) == []


def _still_running(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is not None:
        raise AssertionError(f"the by-hand script exited with {proc.returncode}")
