"""The shape of the multi-device tree an export is built from (``ExportLayout``),
checked against the harness's bounds when it is made.

Pure (the plan and the host truth read it, and both are pure): the host's builders
make the tree, this only says what it should look like.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import (
    DEFAULT_MAX_PATHS,
    MAX_DEVICES,
    MAX_EXPORT_FILES,
    MAX_FILES_PER_DEVICE,
    Layout,
)
from ..errors import UsageError


@dataclass(frozen=True)
class ExportLayout:
    """Shape of the multi-device tree built on the host."""

    devices: int = 3
    files_per_device: int = 8
    nested: bool = False
    kind: Layout = Layout.STANDARD
    # The user's tree (Layout.EXPORT only) and how many of its paths may be walked.
    source: Path | None = None
    max_paths: int = DEFAULT_MAX_PATHS

    @property
    def loop(self) -> bool:
        """True for the loop layout (see ``Layout.LOOP``)."""
        return self.kind is Layout.LOOP

    def __post_init__(self) -> None:
        if (self.kind is Layout.EXPORT) != (self.source is not None):
            raise UsageError(
                "the export layout is the user's tree: it needs a source, and only it has one",
                hint="pass --export PATH (and no --layout) to check your own tree",
            )
        if self.max_paths < 1:
            raise UsageError(f"--max-paths must be at least 1, got {self.max_paths}",
                             hint=f"the default is {DEFAULT_MAX_PATHS}")
        if self.loop and (self.devices != 2 or self.nested):
            raise UsageError(
                "the loop layout is exactly two devices, not nested",
                hint="--layout loop sets them itself; drop --devices and --nested",
            )
        if not 1 <= self.devices <= MAX_DEVICES:
            raise UsageError(
                f"--devices must be between 1 and {MAX_DEVICES}, got {self.devices}",
                hint="1 gives the single-device control export; 3 is the default",
            )
        if not 1 <= self.files_per_device <= MAX_FILES_PER_DEVICE:
            raise UsageError(
                f"--files must be between 1 and {MAX_FILES_PER_DEVICE}, got "
                f"{self.files_per_device}",
                hint="it counts files per device; the default is 8",
            )
        if self.devices * self.files_per_device > MAX_EXPORT_FILES:
            raise UsageError(
                f"--devices {self.devices} x --files {self.files_per_device} is "
                f"{self.devices * self.files_per_device:,} files; at most "
                f"{MAX_EXPORT_FILES:,} fit (each is ~5 KiB of host memory, and the guest "
                "must look at them all within the 180 s command deadline under TCG)",
                hint=f"lower --files to {MAX_EXPORT_FILES // self.devices:,} or fewer for "
                f"{self.devices} devices",
            )
