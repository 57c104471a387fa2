"""The remembered probe answers and KVM liveness: keys, files, reuse and re-decision."""

from __future__ import annotations

import json
import os
import stat
from dataclasses import replace
from pathlib import Path

import pytest

from harness.config import Accel
from harness.errors import KvmUnavailable
from harness.qemu.accel import decide_accel
from harness.qemu.probe import QemuInfo
from harness.qemu.remembered import (
    Liveness,
    LivenessKey,
    RememberedLiveness,
    device_identity,
    file_identity,
    host_boot_id,
    load_liveness,
    load_probe,
    store_liveness,
    store_probe,
)
from harness.version import Version

KEY = LivenessKey(boot_id="b1", kvm_device="/dev/kvm:rdev=1:ino=2:mtime=3",
                  qemu="/usr/bin/q:1:2:3:4", kernel="/k:1:2:3:4", datadir="")
DEAD = "/dev/kvm opens but a guest kernel printed nothing within 4 s under KVM"


class Probe:
    """A liveness probe that counts its calls."""

    def __init__(self, alive: bool, detail: str = DEAD) -> None:
        self.answer, self.calls = (alive, detail), 0

    def __call__(self) -> tuple[bool, str]:
        self.calls += 1
        return self.answer


@pytest.mark.parametrize("change", [
    {"boot_id": "b2"}, {"kvm_device": "/dev/kvm:rdev=1:ino=2:mtime=4"},
    {"qemu": "/usr/bin/q:1:2:3:5"}, {"kernel": "/k2:1:2:3:4"}, {"datadir": "/fw"},
    {"machine": "-machine pc -cpu host"},
])
def test_every_part_of_the_key_matters(tmp_path: Path, change: dict[str, str]) -> None:
    store_liveness(tmp_path, KEY, Liveness(False, DEAD, 1.0))
    other = replace(KEY, **change)
    assert other.digest() != KEY.digest()
    assert load_liveness(tmp_path, other) is None
    assert load_liveness(tmp_path, KEY) == Liveness(False, DEAD, 1.0)


def test_the_whole_key_is_compared_not_only_the_file_name(tmp_path: Path) -> None:
    store_liveness(tmp_path, KEY, Liveness(False, DEAD, 1.0))
    path = tmp_path / f"kvm-{KEY.digest()}.json"
    data = json.loads(path.read_text())
    data["key"]["qemu"] = "/elsewhere"
    path.write_text(json.dumps(data))
    assert load_liveness(tmp_path, KEY) is None


@pytest.mark.parametrize("content", ["", "{not json", "[1, 2]", '{"format": 99}',
                                     '{"format": 1, "key": null}'])
def test_a_corrupt_file_is_decided_again(tmp_path: Path, content: str) -> None:
    (tmp_path / f"kvm-{KEY.digest()}.json").write_text(content)
    probe = Probe(False)
    remembered = RememberedLiveness(tmp_path, KEY, probe)
    assert remembered() == (False, DEAD)
    assert probe.calls == 1 and remembered.cached is None
    # ... and the new answer replaced the corrupt file.
    assert load_liveness(tmp_path, KEY) is not None


def test_files_are_private_and_written_whole(tmp_path: Path) -> None:
    store_liveness(tmp_path, KEY, Liveness(True, "ok", 1.0))
    files = list(tmp_path.iterdir())
    assert [f.name for f in files] == [f"kvm-{KEY.digest()}.json"]  # no temporary left
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600


def test_answers_of_an_earlier_boot_are_dropped(tmp_path: Path) -> None:
    old = replace(KEY, boot_id="b0")
    store_liveness(tmp_path, old, Liveness(False, DEAD, 1.0))
    store_liveness(tmp_path, KEY, Liveness(False, DEAD, 2.0))
    assert load_liveness(tmp_path, old) is None
    assert len(list(tmp_path.glob("kvm-*.json"))) == 1


def test_a_remembered_answer_is_reused_without_probing(tmp_path: Path) -> None:
    first = Probe(False)
    assert RememberedLiveness(tmp_path, KEY, first)() == (False, DEAD)
    again = Probe(True, "would be wrong")
    remembered = RememberedLiveness(tmp_path, KEY, again)
    assert remembered() == (False, DEAD)
    assert (first.calls, again.calls) == (1, 0)
    assert remembered.cached is not None and not remembered.cached.alive


def test_a_remembered_kvm_works_is_checked_again_unless_trusted(tmp_path: Path) -> None:
    store_liveness(tmp_path, KEY, Liveness(True, "banner after 0.2 s", 1.0))
    trusted = Probe(False)
    assert RememberedLiveness(tmp_path, KEY, trusted)() == (True, "banner after 0.2 s")
    checked = Probe(False)
    remembered = RememberedLiveness(tmp_path, KEY, checked, trust_alive=False)
    assert remembered() == (False, DEAD)
    assert (trusted.calls, checked.calls) == (0, 1)
    assert load_liveness(tmp_path, KEY) is not None
    remembered.forget()
    assert load_liveness(tmp_path, KEY) is None


def test_accel_kvm_fails_fast_on_a_remembered_kvm_unusable(tmp_path: Path) -> None:
    store_liveness(tmp_path, KEY, Liveness(False, DEAD, 1.0))
    probe = Probe(True)
    info = QemuInfo(Path("/usr/bin/q"), Version(7, 2, 0), True, True, True)
    with pytest.raises(KvmUnavailable, match="KVM cannot run a guest here: /dev/kvm opens"):
        decide_accel(Accel.KVM, info, RememberedLiveness(tmp_path, KEY, probe))
    assert probe.calls == 0


def test_probe_answers_follow_the_binary(tmp_path: Path) -> None:
    binary = tmp_path / "qemu"
    binary.write_text("#!/bin/sh\n")
    cache = tmp_path / "cache"
    store_probe(cache, QemuInfo(binary, Version(7, 2, 22), True, True, False, "Debian 1",
                                ("obsolete", "elevateprivileges")))
    found = load_probe(cache, binary)
    assert found is not None
    # Every answer comes back, the -sandbox sets included (a remembered probe that
    # lost them would run QEMU without the sandbox it could have).
    assert (found.version, found.multidevs_supported, found.sandbox_supported,
            found.package, found.sandbox_deny) == (Version(7, 2, 22), True, True, "Debian 1",
                                                   ("obsolete", "elevateprivileges"))
    os.utime(binary, ns=(1, 1))  # another build of the same path
    assert load_probe(cache, binary) is None
    # Storing for the changed binary drops the stale answer.
    store_probe(cache, QemuInfo(binary, Version(8, 0, 0), True, True, False))
    assert len(list(cache.glob("probe-*.json"))) == 1


def test_identities_of_missing_things() -> None:
    assert file_identity(Path("/nonexistent/q")) == "missing: /nonexistent/q"
    assert device_identity(Path("/nonexistent/kvm")) == "missing: /nonexistent/kvm"
    assert host_boot_id(Path("/nonexistent/boot_id")) == ""
