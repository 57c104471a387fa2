"""The direct backend: guests run by QEMU started by the harness itself
(``qemu.machine.Machine``), in the harness's private mount namespace."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from ..config import Via
from ..environment import Environment
from ..guest.lifecycle import Guest
from ..host.namespace import enter_private_namespace
from ..plan import GuestPlan, RunOptions
from ..progress import Progress
from ..qemu.machine import Machine
from ..qemu.spec import ExportSpec
from ..results import ResultRow


class QemuBackend:
    """Guests run by QEMU directly (``machine.Machine``)."""

    via = Via.QEMU
    live_stderr = True

    def __init__(self, env: Environment, cpus: int, progress: Progress) -> None:
        self.env = env
        self.cpus = cpus
        self.progress = progress

    def start(
        self, plan: GuestPlan, exports: Sequence[ExportSpec], log_dir: Path
    ) -> AbstractContextManager[Guest]:
        spec = self.env.machine_spec(exports, log_dir, cpus=self.cpus)
        return Machine(spec, progress=self.progress, name=plan.name)

    def command_failures(
        self, guest: Guest, exports: Sequence[ExportSpec]
    ) -> Mapping[Path, Sequence[str]]:
        # The harness rendered the command line itself; unit tests cover that.
        return {}

    def facts(self, guest: Guest) -> tuple[tuple[str, str], ...]:
        return ()

    def extra_rows(self, log_root: Path) -> list[ResultRow]:
        return []


@contextmanager
def qemu_backend(env: Environment, options: RunOptions, progress: Progress,
                 log_dir: Path) -> Iterator[QemuBackend]:
    """The direct backend for one run, once the harness is in a private namespace."""
    ns = enter_private_namespace()
    progress(f"mounts live in a private {ns.kind.value} namespace")
    yield QemuBackend(env, options.guest_cpus, progress)
