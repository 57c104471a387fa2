"""What the harness remembers between invocations: the QEMU probe's answers and
whether KVM runs a guest on this host.

Both are slow to find out (a QEMU process each; the KVM liveness boot waits up to 4 s
on a host where /dev/kvm opens but KVM hangs) and change only when something they
depend on changes.  So each answer is stored under the cache root with the key it
was found under, and reused only while that key still holds:

- the probe: the binary's identity (path, inode, size, mtime);
- KVM liveness: the host's boot id, /dev/kvm's identity (device number, inode,
  mtime), the QEMU binary's and the kernel's identity, the firmware directory, and
  the machine and CPU options the liveness boot uses.

Files are written whole (temporary file, then rename) with mode 0600, only into a
cache that exists and passes the cache's checks; one that
cannot be read or parsed is treated as absent, so the answer is found again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from ..cachefs import check_dir, private_dir, write_atomic
from ..errors import CacheDirError
from ..version import Version
from .cmdline import MACHINE_TYPE
from .probe import KVM_DEVICE, QemuInfo, kvm_device_usable
from .snapshot import file_identity as state_file_identity

# Bumped when a stored answer's meaning or shape changes.
FORMAT = 1
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
# The machine and CPU the liveness boot uses (accel._liveness_args): another choice
# there is another question.
LIVENESS_MACHINE = f"-machine {MACHINE_TYPE} -cpu host"


def file_identity(path: Path) -> str:
    """A file's identity as saved states key it (``snapshot.file_identity``), or
    "missing: PATH" when it cannot be stat'ed: a rebuilt, replaced or copied file is
    another file."""
    try:
        return state_file_identity(path)
    except OSError:
        return f"missing: {path}"


def device_identity(path: Path = KVM_DEVICE) -> str:
    """A device node's identity (its device number, inode and mtime): a /dev/kvm
    passed into a container afresh, or recreated by a module reload, is another."""
    try:
        st = os.stat(path)
    except OSError:
        return f"missing: {path}"
    return f"{path}:rdev={st.st_rdev}:ino={st.st_ino}:mtime={st.st_mtime_ns}"


def host_boot_id(source: Path = BOOT_ID) -> str:
    """The running kernel's boot id; "" when unreadable (then nothing is reused
    across boots anyway, since the other parts of the key still must match)."""
    try:
        return source.read_text().strip()
    except OSError:
        return ""


@dataclass(frozen=True)
class LivenessKey:
    """Everything that could change whether KVM runs a guest here."""

    boot_id: str
    kvm_device: str
    qemu: str
    kernel: str
    datadir: str
    machine: str = LIVENESS_MACHINE

    def digest(self) -> str:
        """A short name for the key (the file name); the whole key is stored and
        compared too, so a collision cannot reuse a wrong answer."""
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:20]


def liveness_key(qemu: Path, kernel: Path, datadirs: Sequence[Path]) -> LivenessKey:
    """The key of a KVM liveness answer for ``qemu`` booting ``kernel`` here, now."""
    return LivenessKey(boot_id=host_boot_id(), kvm_device=device_identity(),
                       qemu=file_identity(qemu), kernel=file_identity(kernel),
                       datadir=":".join(map(str, datadirs)))


@dataclass(frozen=True)
class Liveness:
    """One KVM liveness answer and when it was found (seconds since the epoch)."""

    alive: bool
    detail: str
    decided_at: float


# --- files ----------------------------------------------------------------------------


def read_record(path: Path) -> dict[str, object] | None:
    """A stored JSON object, or None when it is absent, unreadable, not JSON, not an
    object or of another format: the caller then finds the answer again."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return None
    return data


def write_record(path: Path, data: Mapping[str, object]) -> None:
    """Store ``data`` (plus the format) atomically with mode 0600, in a cache that
    exists and passes the cache's checks (``cachefs``): a remembered answer never
    creates the cache, nor writes into one that is refused.  A cache that cannot be
    written costs only speed, so errors are swallowed: the next run asks again."""
    directory = path.parent
    with contextlib.suppress(OSError, CacheDirError):
        check_dir(directory.parent, follow=True)
        private_dir(directory)
        write_atomic(path, json.dumps({"format": FORMAT, **data}, sort_keys=True).encode())


# --- KVM liveness ---------------------------------------------------------------------


def _liveness_path(root: Path, key: LivenessKey) -> Path:
    return root / f"kvm-{key.digest()}.json"


def load_liveness(root: Path, key: LivenessKey) -> Liveness | None:
    """The liveness answer stored under exactly ``key``, or None."""
    data = read_record(_liveness_path(root, key))
    if data is None or data.get("key") != asdict(key):
        return None
    alive, detail, at = data.get("alive"), data.get("detail"), data.get("decided_at")
    if not isinstance(alive, bool) or not isinstance(detail, str) \
            or not isinstance(at, int | float):
        return None
    return Liveness(alive, detail, float(at))


def store_liveness(root: Path, key: LivenessKey, answer: Liveness) -> None:
    """Remember ``answer`` under ``key``; answers of earlier host boots go."""
    for old in root.glob("kvm-*.json") if root.is_dir() else ():
        record = read_record(old)
        stale_key = record.get("key") if record else None
        if not isinstance(stale_key, dict) or stale_key.get("boot_id") != key.boot_id:
            with contextlib.suppress(OSError):
                old.unlink()
    write_record(_liveness_path(root, key), {"key": asdict(key), "alive": answer.alive,
                                             "detail": answer.detail,
                                             "decided_at": answer.decided_at})


def forget_liveness(root: Path, key: LivenessKey) -> None:
    """Drop the answer stored under ``key`` (it turned out wrong)."""
    with contextlib.suppress(OSError):
        _liveness_path(root, key).unlink()


class RememberedLiveness:
    """The KVM liveness check as ``decide_accel`` calls it, answered from the cache
    when the key still holds, else by ``probe`` (whose answer is then stored).

    ``cached`` says, after a call, whether the answer came from the cache.
    ``trust_alive=False`` re-checks a remembered "KVM works" (cheap where KVM works)
    instead of trusting it; a remembered "KVM unusable" is always reused.
    """

    def __init__(self, root: Path, key: LivenessKey, probe: Callable[[], tuple[bool, str]],
                 *, trust_alive: bool = True) -> None:
        self.root, self.key, self.probe, self.trust_alive = root, key, probe, trust_alive
        self.cached: Liveness | None = None

    def __call__(self) -> tuple[bool, str]:
        found = load_liveness(self.root, self.key)
        if found is not None and (self.trust_alive or not found.alive):
            self.cached = found
            return found.alive, found.detail
        alive, detail = self.probe()
        store_liveness(self.root, self.key, Liveness(alive, detail, time.time()))
        return alive, detail

    def forget(self) -> None:
        """Drop the stored answer (a remembered "KVM works" that stopped working)."""
        forget_liveness(self.root, self.key)


def cached_note(answer: Liveness) -> str:
    """How the terminal says an accelerator decision was reused."""
    when = time.strftime("%H:%M:%S", time.localtime(answer.decided_at))
    return f"cached: decided at {when} in this boot of the host"


# --- the QEMU probe -------------------------------------------------------------------


def _probe_path(root: Path, identity: str) -> Path:
    return root / f"probe-{hashlib.sha256(identity.encode()).hexdigest()[:20]}.json"


def load_probe(root: Path, binary: Path) -> QemuInfo | None:
    """The probe's stored answers for ``binary`` as it is now, or None.  Whether
    /dev/kvm opens is the host's, not the binary's, so it is asked afresh."""
    identity = file_identity(binary)
    data = read_record(_probe_path(root, identity))
    if data is None or data.get("identity") != identity:
        return None
    version, package = data.get("version"), data.get("package")
    multidevs, sandbox = data.get("multidevs"), data.get("sandbox")
    deny, monitor_object = data.get("sandbox_deny"), data.get("monitor_object")
    if not (isinstance(version, list) and len(version) == 3
            and all(isinstance(n, int) for n in version)
            and isinstance(package, str) and isinstance(multidevs, bool)
            and isinstance(sandbox, bool) and isinstance(monitor_object, bool)
            and isinstance(deny, list) and all(isinstance(d, str) for d in deny)):
        return None  # another format (or an older harness's): probe again
    return QemuInfo(binary=binary, version=Version(*version), multidevs_supported=multidevs,
                    sandbox_supported=sandbox, kvm_device=kvm_device_usable(),
                    package=package, sandbox_deny=tuple(deny),
                    monitor_object=monitor_object)


def store_probe(root: Path, info: QemuInfo) -> None:
    """Remember the probe's answers for ``info.binary`` under its identity; answers
    for binaries since changed or gone (a test's wrapper script) go."""
    for old in root.glob("probe-*.json") if root.is_dir() else ():
        record = read_record(old) or {}
        binary = record.get("binary")
        if not isinstance(binary, str) or file_identity(Path(binary)) != record.get("identity"):
            with contextlib.suppress(OSError):
                old.unlink()
    identity = file_identity(info.binary)
    write_record(_probe_path(root, identity), {
        "binary": str(info.binary), "identity": identity, "version": list(info.version),
        "package": info.package, "multidevs": info.multidevs_supported,
        "sandbox": info.sandbox_supported, "sandbox_deny": list(info.sandbox_deny),
        "monitor_object": info.monitor_object})


def remembered_probe(root: Path, binary: Path,
                     probe: Callable[[Path], QemuInfo]) -> tuple[QemuInfo, bool]:
    """``probe(binary)``'s answers, from the cache while the binary is unchanged;
    the flag says whether they came from the cache."""
    found = load_probe(root, binary)
    if found is not None:
        return found, True
    info = probe(binary)
    store_probe(root, info)
    return info, False
