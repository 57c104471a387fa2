"""A QEMU outside the system prefix: its firmware folder, -L, and bisect exit codes."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness.cli import bisect_code, main
from harness.config import Accel
from harness.environment import find_datadirs
from harness.errors import UsageError
from harness.image.artefacts import GuestImage
from harness.libvirt.domain import QEMU_NS, DomainSpec, render_domain_xml
from harness.qemu.cmdline import machine_args
from harness.qemu.debian import QEMU, SUITES, build_root, cached_builds, suite_of
from harness.qemu.spec import MachineSpec


def _tree(root: Path, *files: str) -> None:
    for name in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")


def test_build_tree_uses_its_pc_bios(tmp_path: Path) -> None:
    _tree(tmp_path, "build/qemu-system-x86_64", "build/pc-bios/linuxboot_dma.bin",
          "build/pc-bios/bios-256k.bin")
    binary = tmp_path / "build/qemu-system-x86_64"
    assert find_datadirs(binary, host=(tmp_path / "host",)) == (tmp_path / "build/pc-bios",)


def test_a_build_without_the_bios_gets_the_hosts_firmware_after_its_own(
        tmp_path: Path) -> None:
    # A build of Debian's source: its blobs are dropped, so QEMU could not load
    # bios-256k.bin; Debian's three host directories follow its own, in order.
    _tree(tmp_path, "build/qemu-system-x86_64", "build/pc-bios/linuxboot_dma.bin",
          "host/qemu/x", "host/seabios/bios-256k.bin")
    host = (tmp_path / "host/qemu", tmp_path / "host/seabios", tmp_path / "host/ipxe")
    assert find_datadirs(tmp_path / "build/qemu-system-x86_64", host=host) == (
        tmp_path / "build/pc-bios", tmp_path / "host/qemu", tmp_path / "host/seabios")
    _tree(tmp_path, "bare/qemu-system-x86_64")
    assert find_datadirs(tmp_path / "bare/qemu-system-x86_64", host=host) == host[:2]


def test_unpacked_package_uses_its_share_qemu(tmp_path: Path) -> None:
    _tree(tmp_path, "usr/bin/qemu-system-x86_64", "usr/share/qemu/linuxboot_dma.bin",
          "usr/share/qemu/bios-256k.bin")
    assert find_datadirs(tmp_path / "usr/bin/qemu-system-x86_64", host=()) == (
        tmp_path / "usr/share/qemu",)


def test_an_unpacked_debian_prefix_passes_its_split_firmware_too(tmp_path: Path) -> None:
    # Debian's qemu-system-data holds no BIOS: SeaBIOS and iPXE are packages of their
    # own, in share/seabios and lib/ipxe/qemu of the same prefix.
    _tree(tmp_path, "usr/bin/qemu-system-x86_64", "usr/share/qemu/linuxboot_dma.bin",
          "usr/share/seabios/bios-256k.bin", "usr/lib/ipxe/qemu/efi-virtio.rom")
    assert find_datadirs(tmp_path / "usr/bin/qemu-system-x86_64",
                         host=(tmp_path / "none",)) == (
        tmp_path / "usr/share/qemu", tmp_path / "usr/share/seabios",
        tmp_path / "usr/lib/ipxe/qemu")


def test_a_folder_without_qemus_roms_is_not_taken(tmp_path: Path) -> None:
    _tree(tmp_path, "bin/qemu-system-x86_64", "bin/pc-bios/README", "share/qemu/other.bin")
    assert find_datadirs(tmp_path / "bin/qemu-system-x86_64", host=()) == ()


def test_system_binaries_keep_their_built_in_path() -> None:
    assert find_datadirs(Path("/usr/bin/qemu-system-x86_64")) == ()


def test_override_wins_in_its_order_and_each_must_exist(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    given = (tmp_path / "b", tmp_path / "a")
    assert find_datadirs(Path("/usr/bin/qemu-system-x86_64"), given) == given
    with pytest.raises(UsageError, match=f"--qemu-datadir {tmp_path / 'missing'} is not a"):
        find_datadirs(Path("/usr/bin/qemu"), (tmp_path / "a", tmp_path / "missing"))


def _spec(datadirs: tuple[Path, ...]) -> MachineSpec:
    image = GuestImage(Path("/i"), "r", "k", "6.1", Path("/i/vmlinux"), Path("/i/vmlinuz"),
                       Path("/i/initrd"), Path("/i/h"), Path("/i/c"), Path("/i/c.pub"))
    return MachineSpec(qemu=Path("/q"), accel=Accel.TCG, image=image, log_dir=Path("/l"),
                       datadirs=datadirs)


def test_minus_l_comes_first_once_per_directory_in_order_and_only_when_set() -> None:
    assert machine_args(_spec((Path("/opt/q,1/share"), Path("/fw"))))[:4] == [
        "-L", "/opt/q,1/share", "-L", "/fw"]
    assert "-L" not in machine_args(_spec(()))


def test_libvirt_passes_minus_l_on_the_qemu_command_line() -> None:
    spec = DomainSpec(name="d", accel=Accel.TCG, emulator=Path("/q"), kernel=Path("/k"),
                      initrd=Path("/i"), cmdline="", console=Path("/c"),
                      datadirs=(Path("/opt/share/qemu"), Path("/opt/share/seabios")))
    args = [a.get("value") for a in ET.fromstring(render_domain_xml(spec)).iter(
        f"{{{QEMU_NS}}}arg")]
    assert args[:4] == ["-L", "/opt/share/qemu", "-L", "/opt/share/seabios"]


@pytest.mark.parametrize(("code", "bisect"), [(0, 0), (1, 1), (2, 125), (130, 130)])
def test_bisect_code(code: int, bisect: int) -> None:
    assert bisect_code(code) == bisect


def test_a_bad_command_line_under_bisect_skips_the_commit(
        capsys: pytest.CaptureFixture[str]) -> None:
    """argparse's exit 2 would make ``git bisect run`` call the commit bad."""
    assert main(["run", "--bisect", "--devices", "three"]) == 125
    assert "error: argument --devices: not a whole number: 'three'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["run", "--devices", "three"])
    assert info.value.code == 2


def test_debian_qemu_cache_paths(tmp_path: Path) -> None:
    suite = SUITES["bookworm-backports"]
    root = build_root(tmp_path, QEMU, suite, "1:10.0.2+ds-2~bpo12+1")
    assert root == tmp_path / "qemu" / "bookworm-backports-1_10.0.2+ds-2~bpo12+1"
    assert cached_builds(tmp_path, QEMU, suite) == []
    # A tree without its manifest (a fetch killed before the end) is no build.
    _tree(root, "usr/bin/qemu-system-x86_64", "usr/bin/mdh-qemu-system-x86_64")
    assert cached_builds(tmp_path, QEMU, suite) == []


def test_a_debian_suite_is_named_or_refused_naming_the_suites() -> None:
    assert suite_of("/usr/bin/qemu-system-x86_64") is None
    assert suite_of("debian:sid") is SUITES["sid"]
    with pytest.raises(UsageError) as info:
        suite_of("debian:nosuchsuite")
    assert info.value.message == ("--qemu debian:nosuchsuite: Debian has no suite "
                                  "'nosuchsuite' that serves QEMU here")
    assert info.value.hint is not None and "debian:bullseye" in info.value.hint \
        and "debian:sid" in info.value.hint
