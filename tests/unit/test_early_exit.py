"""What a QEMU that exits before its guest is up is quoted as, and the hint that goes
with it: QEMU's own firmware messages (7.2's texts) name the file and --qemu-datadir;
anything else points at the logs."""

from __future__ import annotations

from pathlib import Path

from harness.guest.lifecycle import early_exit_hint, last_words

LOGS = Path("/logs/g")
DEBIAN = "/usr/share/qemu, /usr/share/seabios, /usr/lib/ipxe/qemu"


def test_the_last_three_nonblank_lines_are_quoted() -> None:
    stderr = "a\n\nb\nc\n  d  \n\n"
    assert last_words(stderr) == ["b", "c", "d"]
    assert last_words("") == []


def test_a_missing_bios_names_the_file_the_l_directories_and_the_option() -> None:
    said = ["qemu: could not load PC BIOS 'bios-256k.bin'"]
    argv = ["qemu", "-L", "/a", "-m", "256", "-L", "/b"]
    assert early_exit_hint(said, argv, LOGS) == (
        "QEMU did not find its firmware: -L /a -L /b has no 'bios-256k.bin'; pass the "
        f"directory that holds it with --qemu-datadir DIR (repeatable; Debian's QEMU looks "
        f"in {DEBIAN}); logs in /logs/g")


def test_a_missing_option_rom_without_l_blames_qemus_own_directories() -> None:
    said = ['qemu-system-x86_64: -device virtio-net-pci,netdev=net0: failed to find '
            'romfile "efi-virtio.rom"']
    assert early_exit_hint(said, ["qemu"], LOGS).startswith(
        "QEMU did not find its firmware: QEMU's own directories have no 'efi-virtio.rom'; ")
    loader = ["Could not open option rom 'linuxboot_dma.bin': No such file or directory"]
    assert "no 'linuxboot_dma.bin'; " in early_exit_hint(loader, ["qemu"], LOGS)


def test_a_build_without_slirp_names_the_configure_option() -> None:
    said = ["qemu-system-x86_64: -netdev user,id=net0,hostfwd=tcp:127.0.0.1:0-:22: network "
            "backend 'user' is not compiled into this binary"]
    assert early_exit_hint(said, ["qemu"], LOGS) == (
        "this QEMU has no user networking, which the guest's SSH needs: configure it with "
        "--enable-slirp (libslirp-dev; scripts/build-qemu does); logs in /logs/g")


def test_any_other_exit_points_at_the_logs() -> None:
    said = ["qemu-system-x86_64: -fsdev local,id=f0: cannot find path"]
    assert early_exit_hint(said, ["qemu", "-L", "/a"], LOGS) == (
        "QEMU's own words are above; its stderr and command line are in /logs/g")
