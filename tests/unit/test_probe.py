"""Version parsing and ordering, and require_multidevs on probe results."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import QemuTooOld
from harness.qemu.probe import QemuInfo, require_multidevs
from harness.version import Version


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)", (7, 2, 22)),
        (
            "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\n"
            "Copyright (c) 2003-2022 Fabrice Bellard and the QEMU Project developers\n",
            (7, 2, 22),
        ),
        ("QEMU emulator version 4.1.0", (4, 1, 0)),
        ("version 10.0.0 (v10.0.0)", (10, 0, 0)),
        ("QEMU emulator version 8.2.2 (qemu-8.2.2-1.fc40)", (8, 2, 2)),
        ("QEMU emulator version 2.11.1(Debian 1:2.11+dfsg-1ubuntu7.41)", (2, 11, 1)),
        ("QEMU PC emulator version 0.12", (0, 12, 0)),
        ("qemu emulator VERSION 9.1.50 (v9.1.0-1234-gdeadbeef)", (9, 1, 50)),
    ],
)
def test_parse_text(text: str, expected: tuple[int, int, int]) -> None:
    assert Version.parse(text) == Version(*expected)


@pytest.mark.parametrize("text", ["", "hello world", "version", "version x.y.z", "7.2.22"])
def test_parse_garbage_raises(text: str) -> None:
    with pytest.raises(ValueError, match="no 'version X.Y.Z' in"):
        Version.parse(text)


def test_parse_query_version_answer() -> None:
    answer = {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2"}
    assert Version.parse(answer) == Version(7, 2, 22)
    assert Version.parse(answer["qemu"]) == Version(7, 2, 22)  # type: ignore[arg-type]  # the inner dict is a Mapping[str, int]


@pytest.mark.parametrize(
    "answer",
    [
        {"qemu": "7.2.22"},
        {"qemu": {"major": 7, "minor": 2}},
        {"qemu": {"major": "7", "minor": 2, "micro": 0}},
        {"qemu": {"major": True, "minor": 2, "micro": 0}},
        {},
    ],
)
def test_parse_bad_query_version_answer(answer: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="query-version answer"):
        Version.parse(answer)


def test_ordering_and_text() -> None:
    assert Version(4, 1, 0) < Version(4, 2, 0) < Version(4, 10, 0)
    assert Version(10, 0, 0) > Version(9, 2, 99)
    assert str(Version(7, 2, 22)) == "7.2.22"
    assert Version(7, 2, 22) == (7, 2, 22)
    assert sorted([Version(7, 2, 0), Version(4, 2, 1), Version(4, 2, 0)]) == [
        Version(4, 2, 0),
        Version(4, 2, 1),
        Version(7, 2, 0),
    ]


def _info(version: Version, multidevs: bool) -> QemuInfo:
    return QemuInfo(Path("/opt/qemu"), version, multidevs, True, False)


def test_require_multidevs_accepts_4_2_with_the_parameter() -> None:
    require_multidevs(_info(Version(4, 2, 0), True))


def test_require_multidevs_names_the_old_version() -> None:
    with pytest.raises(QemuTooOld, match=r"^/opt/qemu is QEMU 4\.1\.0; multidevs needs "
                       r"QEMU >= 4\.2\n") as caught:
        require_multidevs(_info(Version(4, 1, 0), False))
    assert caught.value.message == "/opt/qemu is QEMU 4.1.0; multidevs needs QEMU >= 4.2"
    assert caught.value.exit_code == 2
    assert "--qemu PATH" in caught.value.hint


def test_require_multidevs_when_the_parameter_is_missing() -> None:
    with pytest.raises(QemuTooOld, match=r"^/opt/qemu is QEMU 7\.2\.0 but lists no "
                       r"'multidevs' parameter for -fsdev") as caught:
        require_multidevs(_info(Version(7, 2, 0), False))
    assert caught.value.message.startswith(
        "/opt/qemu is QEMU 7.2.0 but lists no 'multidevs' parameter for -fsdev"
    )
    assert "multidevs needs QEMU >= 4.2" in caught.value.message
