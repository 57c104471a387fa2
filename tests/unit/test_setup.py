"""scripts/setup picks its package table from os-release, and refuses a distro it does
not know with exit 2 and a message naming it (``--print-packages`` installs nothing)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SETUP = Path(__file__).resolve().parents[2] / "scripts" / "setup"

DEBIAN_12 = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n' \
    "VERSION_CODENAME=bookworm\n"
DEBIAN_13 = 'PRETTY_NAME="Debian GNU/Linux 13 (trixie)"\nID=debian\nVERSION_ID="13"\n' \
    "VERSION_CODENAME=trixie\n"
UBUNTU_2404 = 'PRETTY_NAME="Ubuntu 24.04.1 LTS"\nID=ubuntu\nID_LIKE=debian\n' \
    'VERSION_ID="24.04"\nVERSION_CODENAME=noble\nUBUNTU_CODENAME=noble\n'
MINT_22 = 'PRETTY_NAME="Linux Mint 22"\nID=linuxmint\nID_LIKE="ubuntu debian"\n' \
    'VERSION_ID="22"\nVERSION_CODENAME=wilma\nUBUNTU_CODENAME=noble\n'
UBUNTU_2204 = 'PRETTY_NAME="Ubuntu 22.04.4 LTS"\nID=ubuntu\nID_LIKE=debian\n' \
    'VERSION_ID="22.04"\nVERSION_CODENAME=jammy\nUBUNTU_CODENAME=jammy\n'
FEDORA = 'PRETTY_NAME="Fedora Linux 40"\nID=fedora\nVERSION_ID=40\n'


def print_packages(tmp_path: Path, os_release: str,
                   **env: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "os-release"
    path.write_text(os_release)
    return subprocess.run(
        [str(SETUP), "--print-packages"], capture_output=True, text=True, check=False,
        env={**os.environ, "MDH_OS_RELEASE": str(path), **env}, timeout=30,
    )


@pytest.mark.parametrize(("os_release", "table", "pkgconfig"), [
    (DEBIAN_12, "debian bookworm", "pkg-config"),
    (DEBIAN_13, "debian trixie", "pkgconf"),
    (UBUNTU_2404, "ubuntu noble", "pkgconf"),
    (MINT_22, "ubuntu noble", "pkgconf"),  # a derivative, through UBUNTU_CODENAME
])
def test_known_distro_gets_its_column(tmp_path: Path, os_release: str, table: str,
                                      pkgconfig: str) -> None:
    result = print_packages(tmp_path, os_release)
    assert result.returncode == 0, result.stderr
    header, *names = result.stdout.splitlines()
    assert header.endswith(f": {table}")
    assert pkgconfig in names
    assert {"qemu-system-x86", "debian-archive-keyring", "libvirt-daemon-system"} <= set(names)
    assert {"btrfs-progs", "xfsprogs", "e2fsprogs"} <= set(names)  # the disk layouts
    assert len(names) == 18


def test_unknown_release_names_the_distro_and_the_override(tmp_path: Path) -> None:
    result = print_packages(tmp_path, UBUNTU_2204)
    assert result.returncode == 2
    assert result.stdout == ""
    assert "no package table for Ubuntu 22.04.4 LTS" in result.stderr
    assert "VERSION_CODENAME=jammy" in result.stderr
    assert "MDH_SETUP_DISTRO=ubuntu:noble" in result.stderr


def test_non_debian_family_is_refused(tmp_path: Path) -> None:
    result = print_packages(tmp_path, FEDORA)
    assert result.returncode == 2
    assert "unsupported host Fedora Linux 40 (ID=fedora" in result.stderr


def test_override_picks_a_table(tmp_path: Path) -> None:
    result = print_packages(tmp_path, UBUNTU_2204, MDH_SETUP_DISTRO="ubuntu:noble")
    assert result.returncode == 0, result.stderr
    assert "as ubuntu noble by MDH_SETUP_DISTRO" in result.stdout.splitlines()[0]
