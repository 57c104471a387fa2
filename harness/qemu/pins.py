"""The Debian QEMUs the suite is pinned to: one lock file, ``harness/qemu-pins.toml``.

Each Debian suite's ``qemu-system-x86`` version that the suite's newest-QEMU test and
the measured compatibility grid (docs/grid.md) ran on.  Debian's archive serves only
the current version of each suite, so a pin goes stale when the suite moves on; the
test that uses it then says which pin and the command that moves it, and skips:
an archive change never fails CI.  ``multidevs-harness qemu pin --update`` writes
what the archive serves now.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path

from ..errors import UsageError
from .debian import SUITES

PINS_FILE = "qemu-pins.toml"
_HEADER = """\
# The Debian QEMUs the suite is pinned to: qemu-system-x86's version per suite.
# tests/e2e/test_debian_qemu.py runs the newest (sid's) over a small matrix, and
# docs/grid.md was measured on these.  Debian serves only a suite's current version:
# when one moves on, the test skips naming the pin.  Move every pin to what the archive
# serves now with:  multidevs-harness qemu pin --update
"""


def pins_path() -> Path:
    """The lock file in the harness's own tree (written by ``qemu pin --update``)."""
    return Path(str(resources.files("harness").joinpath(PINS_FILE)))


def parse_pins(text: str, where: str) -> dict[str, str]:
    """Suite -> pinned version; UsageError naming ``where`` and the key for a suite
    the harness does not know or a value that is not a version string."""
    try:
        data = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError) as exc:
        raise UsageError(f"{where} is not valid TOML: {exc}",
                         hint="fix it, or rewrite it with: multidevs-harness qemu pin "
                         "--update") from exc
    pins = data.get("pins", {})
    if set(data) - {"pins"} or not isinstance(pins, dict):
        raise UsageError(f"{where}: only a [pins] table is expected",
                         hint="see the comment at its top")
    for suite, version in pins.items():
        if suite not in SUITES or not isinstance(version, str) or not version:
            raise UsageError(f"{where}: pins.{suite} = {version!r} is not a known suite "
                             "with a version string",
                             hint=f"suites: {', '.join(SUITES)}")
    return dict(pins)


def load_pins(path: Path | None = None) -> dict[str, str]:
    """The pins of the lock file (``path``, else the harness's own)."""
    path = path or pins_path()
    return parse_pins(path.read_text(), str(path))


def render_pins(pins: Mapping[str, str]) -> str:
    """The lock file's text: the header and one line per suite, in SUITES' order."""
    lines = [_HEADER, "[pins]"]
    lines += [f'{suite} = "{pins[suite]}"' for suite in SUITES if suite in pins]
    return "\n".join(lines) + "\n"
