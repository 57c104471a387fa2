"""Every Debian suite, pure parts: the backports pin, sid's kernel package split,
bullseye's NSS module, the pins lock file and the grid's table and exit code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from harness.commands.grid import Cell, grid_exit_code, grid_json, grid_markdown, grid_text
from harness.errors import ImageBuildError, UsageError
from harness.image.apt import PackageInfo, Suite, preferences
from harness.image.build import _find_vmlinuz, kernel_parts
from harness.image.initramfs import nss_modules
from harness.image.recipe import load_recipe
from harness.qemu.debian import SUITES
from harness.qemu.pins import load_pins, parse_pins, render_pins
from harness.verdicts.common import Status


def test_backports_win_only_where_a_suite_prefers_them() -> None:
    # The archive publishes backports NotAutomatic (priority 100): without the pin the
    # candidate of bookworm-backports' qemu-system-x86 was bookworm's 7.2 (measured).
    assert preferences(SUITES["bookworm"]) == ""
    pin = preferences(SUITES["bookworm-backports"])
    # n= (the codename): the archive's a= is "oldstable-backports", which moves.
    assert pin == "Package: *\nPin: release n=bookworm-backports\nPin-Priority: 900\n"


def test_sid_kernel_metapackage_resolves_to_its_parts() -> None:
    recipe = load_recipe("debian-sid-x86_64")
    meta = PackageInfo("linux-image-7.2.13+deb14-amd64", "7.2.13-1", (
        "linux-base", "dracut", "linux-base-7.2.13+deb14-amd64",
        "linux-binary-7.2.13+deb14-amd64", "linux-modules-7.2.13+deb14-amd64"))
    assert kernel_parts(meta, recipe.kernel_parts) == [
        "linux-base-7.2.13+deb14-amd64", "linux-binary-7.2.13+deb14-amd64",
        "linux-modules-7.2.13+deb14-amd64"]
    assert kernel_parts(meta, ()) == []  # a recipe whose kernel package holds the files
    older = PackageInfo("linux-image-6.12.38+deb13-amd64", "6.12.38-1", ("kmod",))
    with pytest.raises(ImageBuildError, match="depends on no package for some of"):
        kernel_parts(older, recipe.kernel_parts)


def test_vmlinuz_is_found_in_either_layout(tmp_path: Path) -> None:
    old = tmp_path / "old"
    (old / "boot").mkdir(parents=True)
    (old / "boot" / "vmlinuz-6.1.0-57-amd64").write_bytes(b"k")
    assert _find_vmlinuz(old) == (old / "boot" / "vmlinuz-6.1.0-57-amd64", "6.1.0-57-amd64")
    split = tmp_path / "split"
    (split / "usr/lib/modules/7.2.13+deb14-amd64").mkdir(parents=True)
    (split / "usr/lib/modules/7.2.13+deb14-amd64/vmlinuz").write_bytes(b"k")
    assert _find_vmlinuz(split)[1] == "7.2.13+deb14-amd64"
    assert _find_vmlinuz(tmp_path / "none") == (None, "")


def test_a_glibc_with_nss_files_apart_gets_it_in_the_image(tmp_path: Path) -> None:
    bullseye = tmp_path / "bullseye"
    (bullseye / "lib/x86_64-linux-gnu").mkdir(parents=True)
    (bullseye / "lib/x86_64-linux-gnu/libnss_files-2.31.so").write_bytes(b"so")
    (bullseye / "lib/x86_64-linux-gnu/libnss_files.so.2").symlink_to("libnss_files-2.31.so")
    found = nss_modules(bullseye)
    assert list(found) == ["/lib/x86_64-linux-gnu/libnss_files.so.2"]
    assert found["/lib/x86_64-linux-gnu/libnss_files.so.2"].read_bytes() == b"so"
    assert nss_modules(tmp_path / "built-in") == {}


def test_the_shipped_pins_name_every_suite_and_round_trip() -> None:
    pins = load_pins()
    assert set(pins) == set(SUITES)
    assert parse_pins(render_pins(pins), "x") == pins


@pytest.mark.parametrize(("text", "said"), [
    ('[pins]\nsidd = "1"\n', "pins.sidd = '1' is not a known suite"),
    ("[pins]\nsid = 11\n", "pins.sid = 11 is not a known suite"),
    ('[other]\nx = "1"\n', "only a [pins] table is expected"),
    ("[pins\n", "is not valid TOML"),
])
def test_a_bad_pins_file_names_the_key(text: str, said: str) -> None:
    with pytest.raises(UsageError, match=re.escape(said)):
        parse_pins(text, "pins.toml")


def _cell(version: str, counts: dict[Status, int], code: int, known: tuple[str, ...] = (),
          ) -> Cell:
    return Cell(qemu=f"debian:{version}", qemu_version=version, qemu_package="", guest="g",
                kernel="6.1.0-57-amd64", counts=tuple(counts.items()), known=known,
                unreproduced=(), seconds=10.4, exit_code=code)


def test_a_failing_cell_fails_the_grid_even_beside_one_that_could_not_run() -> None:
    good = _cell("7.2.22", {Status.PASS: 42, Status.KNOWN: 3}, 0, ("qemu-remap-unkeyed-bits",))
    broken = _cell("11.1.3", {Status.PASS: 44, Status.FAIL: 1}, 1)
    unrun = _cell("5.2.0", {Status.ERROR: 45}, 2)
    assert grid_exit_code([good]) == 0
    assert grid_exit_code([good, unrun]) == 2
    assert grid_exit_code([unrun, broken, good]) == 1
    assert grid_exit_code([]) == 2


def test_the_grid_renders_each_cell_once_in_every_form() -> None:
    cells = [_cell("7.2.22", {Status.PASS: 42, Status.KNOWN: 3}, 0, ("qemu-remap-unkeyed-bits",)),
             _cell("11.1.3", {Status.PASS: 44, Status.FAIL: 1}, 1)]
    text = grid_text(cells).splitlines()
    assert text[1].split() == ["7.2.22", "6.1.0-57-amd64", "42", "pass,", "3", "known",
                               "qemu-remap-unkeyed-bits", "10"]
    assert text[-1] == "2 cells in 21 s"
    markdown = grid_markdown(cells).splitlines()
    assert markdown[0] == "| QEMU | guest kernel | rows | known issues reproduced | s |"
    assert markdown[3] == "| 11.1.3 | 6.1.0-57-amd64 | 44 pass, 1 fail | - | 10 |"
    data = grid_json(cells)
    assert data["exit_code"] == 1 and data["cells"][1]["counts"]["fail"] == 1
    assert data["cells"][0]["rows"] == 45


def test_a_suite_of_the_grid_names_its_pockets() -> None:
    assert SUITES["sid"] == Suite("sid", ("sid",))
    assert SUITES["bullseye"].security == "bullseye-security"
