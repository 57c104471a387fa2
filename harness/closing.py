"""A resource closed when its ``with`` block ends, however the block ends."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class Closing:
    """``with resource:`` yields the resource and calls its ``close()`` on the way out:
    the one way the harness's sessions (SSH to a guest, QMP to QEMU) are scoped.  A
    subclass implements ``close``, which must be safe to call twice."""

    def close(self) -> None:
        """Release the resource."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
