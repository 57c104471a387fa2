"""A QEMU release number, read from ``--version`` text or a QMP answer.

Its own module, stdlib only: the vocabulary (the releases multidevs and its remap
default shipped in), the probe, the plan and the pure verdicts all compare versions,
and none of them should have to load anything else for it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import NamedTuple

_VERSION_RE = re.compile(r"version\s+(\d+)\.(\d+)(?:\.(\d+))?", re.IGNORECASE)


class Version(NamedTuple):
    """A QEMU release number (major, minor, micro); a tuple, so ordered and comparable with
    literal version tuples: ``v >= (4, 2, 0)``."""

    major: int
    minor: int
    micro: int = 0

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.micro}"

    @classmethod
    def parse(cls, source: str | Mapping[str, object]) -> Version:
        """Read a version from ``--version`` text or a QMP ``query-version`` answer.

        Text: the first ``version X.Y[.Z]`` (so "QEMU emulator version 7.2.22
        (Debian ...)" gives 7.2.22).  Mapping: either the whole query-version
        return value or its ``qemu`` member.  Raises ValueError when nothing fits.
        """
        if isinstance(source, str):
            match = _VERSION_RE.search(source)
            if match is None:
                snippet = source.strip().splitlines()[0][:80] if source.strip() else "nothing"
                raise ValueError(f"no 'version X.Y.Z' in {snippet!r}")
            major, minor, micro = match.groups()
            return cls(int(major), int(minor), int(micro or 0))
        inner = source.get("qemu", source)
        if not isinstance(inner, Mapping):
            raise ValueError(f"query-version answer has no 'qemu' object: {source!r}")
        numbers = [inner.get(key) for key in ("major", "minor", "micro")]
        if not all(isinstance(n, int) and not isinstance(n, bool) for n in numbers):
            raise ValueError(f"query-version answer has no integer major/minor/micro: {source!r}")
        major_n, minor_n, micro_n = (int(str(n)) for n in numbers)
        return cls(major_n, minor_n, micro_n)
