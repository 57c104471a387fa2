"""Typed, frozen configuration shared by every module.

Data flows one way: these values are built once (by the CLI or the pytest
plugin) and handed down to the export, image, machine, verdicts and report code.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import NamedTuple, TypeVar

from .errors import UsageError

MAX_DEVICES = 128


# Where a long step reports what it is doing: one line at a time, to the terminal.
Progress = Callable[[str], None]


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


def quiet(_: str) -> None:
    """A Progress that says nothing (library callers, tests)."""


def said_once(progress: Progress) -> Progress:
    """``progress`` that passes each distinct line on once: exports of one layout are
    built alike and say alike things (eight overlay exports, eight identical lines)."""
    said: set[str] = set()

    def say(message: str) -> None:
        if message not in said:
            said.add(message)
            progress(message)

    return say

# -fsdev ...,multidevs= first shipped in QEMU 4.2; "9pfs: make multidevs=remap
# default" landed in QEMU 10.0.
MULTIDEVS_SINCE = Version(4, 2, 0)
# The known QEMU and kernel bugs shipped with the harness (package data, TOML).
KNOWN_ISSUES_FILE = "known_issues.toml"
# Where the image puts the witness tools (GNU tar, coreutils, rsync, findutils) in the
# guest: the image writes them there and the agent's witness script runs them from there.
GUEST_TOOLS_DIR = "/opt/mdh/bin"
REMAP_DEFAULT_SINCE = Version(10, 0, 0)
# "9pfs: make multidevs=remap default" landed during the 10.0 cycle, when QEMU's
# VERSION read 9.2.50: builds from then until 10.0.0 may have it or not.
REMAP_DEFAULT_FROM_DEV = Version(9, 2, 50)
MAX_FILES_PER_DEVICE = 100_000
# The -sandbox syscall sets denied where the binary knows them (libvirt denies the same
# and spawn).  spawn stays allowed: saved states are written and read through
# "exec:cat" migration, which forks.  Checked with the default matrix on QEMU 7.2 and
# Debian's 10.0.2: a denied syscall kills QEMU, which the rows would show.
SANDBOX_DENY = ("obsolete", "elevateprivileges", "resourcecontrol")
# Files of a built export in all (devices x files per device), each bound passing alone
# (128 x 100,000 is 12.8 million files).  Measured per file: a 4 KiB tmpfs page on the
# host (plus its inode) and ~550 bytes of host truth in the harness; the guest looks at
# ~1,600 paths/s under TCG, and each look must end within the 180 s command deadline.
# 200,000 files: ~1 GB and ~125 s per look; twice the scale run (64 x 1,563).
MAX_EXPORT_FILES = 200_000
# Paths of a user's tree (``--export``) a run walks at most: each is stat'ed twice and
# read back by readdir in the guest, ~1,600 paths/s under TCG, and every look of an
# export must finish within the command deadline (180 s under TCG), so a run of the
# default matrix (six exports of the tree) stays within minutes.
DEFAULT_MAX_PATHS = 20_000


class Mode(StrEnum):
    """A value of QEMU's ``-fsdev ...,multidevs=`` option; DEFAULT means "not given"."""

    REMAP = "remap"
    WARN = "warn"
    FORBID = "forbid"
    DEFAULT = "default"

    @property
    def qemu_value(self) -> str | None:
        """The option value to put on the command line, None to leave it out."""
        return None if self is Mode.DEFAULT else self.value


ALL_MODES: tuple[Mode, ...] = (Mode.REMAP, Mode.WARN, Mode.FORBID, Mode.DEFAULT)


class Cache(StrEnum):
    """A value of the guest's 9p ``cache=`` mount option.

    LOOSE and FSCACHE keep an inode cache: the Linux client then reuses a cached inode
    for any file whose qid (type, path, version) matches, so under multidevs=warn
    files on different host devices can share one guest inode (their data, mtime,
    locks and dentries).  NONE and MMAP look every file up anew.
    """

    NONE = "none"
    MMAP = "mmap"
    LOOSE = "loose"
    FSCACHE = "fscache"

    @property
    def reuses_inodes(self) -> bool:
        """True where the client may take one file's cached inode for another's."""
        return self in (Cache.LOOSE, Cache.FSCACHE)


ALL_CACHES: tuple[Cache, ...] = (Cache.NONE, Cache.MMAP, Cache.LOOSE, Cache.FSCACHE)
# none shows QEMU's ids as they are; loose is where collisions turn into aliasing.
DEFAULT_CACHES: tuple[Cache, ...] = (Cache.NONE, Cache.LOOSE)


class Check(StrEnum):
    """A check family: one kind of question asked of an export (``checks.registry``
    implements each).  Declared in report order."""

    IDS = "ids"
    OPERATIONS = "operations"
    CROSS_DEVICE = "cross_device"
    RUNTIME_MOUNT = "runtime_mount"
    HELD_FD = "held_fd"
    BIND = "bind"
    REMOUNT = "remount"


ALL_CHECKS: tuple[Check, ...] = tuple(Check)


class Layout(StrEnum):
    """The shape of the host tree behind an export (``--layout``)."""

    # A tmpfs root with further tmpfs mounts populated alike: inode numbers repeat.
    STANDARD = "standard"
    # The root tmpfs holds only the mount point dev01 and both roots get one entry and
    # one mtime, so under warn the root and dev01 share a qid (type, path and
    # version): a client with an inode cache takes dev01 for its own parent.  Always
    # two devices, the files in dev01/sub.
    LOOP = "loop"
    # The export root is an overlayfs (xino=on) over a tmpfs upper and three tmpfs
    # lowers populated alike: one st_dev, the layer number in the inode's top bits.
    OVERLAY = "overlay"
    # A tmpfs root with an overlayfs (as above) mounted at dev01 and a tmpfs at dev02.
    OVERLAY_MIXED = "overlay-mixed"
    # A btrfs image on a loop device: subvolumes and a read-only snapshot of one (its
    # own st_dev, its origin's inode numbers), beside a tmpfs.
    BTRFS = "btrfs"
    # XFS and ext4 images on loop devices beside tmpfs devices (other numbering schemes).
    XFS = "xfs"
    EXT4 = "ext4"
    # FUSE filesystems whose inode numbers the harness chooses (``host.scripted_fs``):
    # top bits set, numbers differing only in bits a remap key ignores, a device first
    # seen after 255 keys (QEMU's 16-bit key truncation).
    SCRIPTED = "scripted"
    # As scripted, plus one device with 65,536 prefixes: QEMU's remap table overflows
    # into its full map and warns "Potential degraded performance".  ~66,000 files.
    SCRIPTED_FULLMAP = "scripted-fullmap"
    # The user's own tree (``run --export PATH``), bind-mounted read-only with the
    # mounts under it and exported with readonly=on: never built, never written.
    EXPORT = "export"


# The layouts the harness builds (``--layout``); EXPORT is the user's tree (``--export``).
ALL_LAYOUTS: tuple[Layout, ...] = tuple(k for k in Layout if k is not Layout.EXPORT)
# The layouts of the default matrix: the standard tmpfs export and the overlay that
# makes remap collide (cheap: tmpfs layers, no loop devices, no FUSE).
DEFAULT_LAYOUTS: tuple[Layout, ...] = (Layout.STANDARD, Layout.OVERLAY)


class Transport(StrEnum):
    """How an export reaches the guest: 9p (``-fsdev``, the multidevs modes) or virtiofs
    (a vhost-user-fs device served by virtiofsd, which has no multidevs option: whether
    it announces submounts decides what the guest sees)."""

    NINEP = "9p"
    VIRTIOFS = "virtiofs"


ALL_TRANSPORTS: tuple[Transport, ...] = tuple(Transport)
DEFAULT_TRANSPORTS: tuple[Transport, ...] = (Transport.NINEP,)
class VirtiofsCache(StrEnum):
    """virtiofsd's --cache policies the harness runs: a virtiofs row's cache."""

    AUTO = "auto"


# virtiofsd's --cache policy for every virtiofs export: its own default, what people run.
VIRTIOFS_CACHE = VirtiofsCache.AUTO
# The virtiofs rows' names, by whether virtiofsd announces submounts: where a 9p row
# names its multidevs mode (in a row name, a known issue's ``modes``), a virtiofs row
# names its setting.
VIRTIOFS_ROWS = {True: "virtiofs", False: "virtiofs-nosubmounts"}


@dataclass(frozen=True)
class RowKey:
    """Which result row an export feeds.  ``str()`` is the row's name, the one place
    the names' grammar is written, and nothing parses a name back: ``warn`` (cache=none,
    the standard layout), ``warn+loose@overlay``, ``control-warn`` (the mode's
    single-device control), ``operations-forbid`` and ``cross_device-warn+loose`` (a
    family other than ids), ``virtiofs-nosubmounts@overlay`` (virtiofs rows name
    virtiofsd's setting where 9p rows name the mode), ``operations-virtiofs``."""

    check: Check
    mode: Mode
    cache: Cache = Cache.NONE
    layout: Layout = Layout.STANDARD
    transport: Transport = Transport.NINEP
    # Virtiofs only: whether virtiofsd announces submounts.
    submounts: bool = True
    # The mode's single-device control export (ids).
    control: bool = False

    def __str__(self) -> str:
        if self.transport is Transport.VIRTIOFS:
            name = VIRTIOFS_ROWS[self.submounts]
        elif self.control:
            name = f"control-{self.mode.value}"
        else:
            name = self.mode.value if self.cache is Cache.NONE \
                else f"{self.mode.value}+{self.cache.value}"
        name = name if self.layout is Layout.STANDARD else f"{name}@{self.layout.value}"
        return name if self.check is Check.IDS else f"{self.check.value}-{name}"


class Via(StrEnum):
    """Who starts the guests: QEMU run by the harness, or libvirtd."""

    QEMU = "qemu"
    LIBVIRT = "libvirt"


class Accel(StrEnum):
    """The accelerator asked for; AUTO is resolved to KVM or TCG by a probe."""

    AUTO = "auto"
    KVM = "kvm"
    TCG = "tcg"


class Start(StrEnum):
    """How a guest came up: booted cold, or restored from a saved state."""

    COLD = "cold"
    RESTORED = "restored"


class EndHow(StrEnum):
    """How the harness's shutdown found and left QEMU."""

    QUIT = "quit"  # answered QMP quit (or was asked to) and exited by itself in time
    KILLED = "killed"  # still running at the quit's deadline: SIGKILLed by the harness
    GONE = "gone"  # had already exited when the harness came to stop it


@dataclass(frozen=True)
class QemuEnd:
    """How one guest's QEMU ended, and where its own stderr begins in the log (a
    rejected saved state's QEMU writes before it, and is not this guest's)."""

    how: EndHow
    status: int | None  # its exit status (negative: the signal); None: would not die
    stderr_from: int = 0
    quit_seconds: float = 0.0  # how long the harness waited after quit


class BootMethod(StrEnum):
    """How the kernel is handed to QEMU."""

    # The uncompressed vmlinux entered through its PVH note: skips the firmware's
    # real-mode setup and the kernel's self-decompression (about 2.5 s under TCG).
    PVH = "pvh"
    # The distro's compressed bzImage through SeaBIOS/linuxboot: what people write by
    # hand, kept as the benchmark's baseline.
    BZIMAGE = "bzimage"


def timeout_scale_from_env() -> float:
    """$MDH_TIMEOUT_SCALE as a positive factor for every deadline (1 when unset)."""
    text = os.environ.get("MDH_TIMEOUT_SCALE", "").strip()
    if not text:
        return 1.0
    try:
        scale = float(text)
    except ValueError:
        scale = 0.0
    if not 0 < scale <= 100:
        raise UsageError(
            f"MDH_TIMEOUT_SCALE must be a number in (0, 100], got {text!r}",
            hint="for example MDH_TIMEOUT_SCALE=2 doubles every boot and command deadline",
        )
    return scale


@dataclass(frozen=True)
class Timeouts:
    """Harness deadlines in seconds; all sit below the tests' pytest-timeout."""

    boot: float
    command: float
    shutdown: float = 10.0
    qmp: float = 10.0

    @classmethod
    def for_accel(cls, accel: Accel, scale: float = 1.0) -> Timeouts:
        """TCG emulates every instruction, so it gets several times KVM's budget."""
        if accel is Accel.KVM:
            return cls(boot=30.0 * scale, command=60.0 * scale)
        return cls(boot=90.0 * scale, command=180.0 * scale)


@dataclass(frozen=True)
class AccelDecision:
    """The accelerator actually used and why (recorded in every report)."""

    used: Accel
    reason: str
    fell_back: bool = False


@dataclass(frozen=True)
class GuestImage:
    """The built artefacts of one guest recipe, all inside one cache directory."""

    directory: Path
    recipe: str
    cache_key: str
    kernel_release: str
    vmlinux: Path
    vmlinuz: Path
    initrd: Path
    host_key_pub: Path
    client_key: Path
    client_key_pub: Path
    cache_hit: bool = False
    # Release of the modules in the initramfs; "" when the kernel needs none (9p and
    # virtio built in).  Differs from kernel_release only in a --modules variant.
    modules_release: str = ""
    # The recipe's virtiofs modules (fuse, virtiofs) neither in the kernel's tree nor
    # built in: such an image boots for 9p, and its virtiofs rows are errors naming them.
    missing_modules: tuple[str, ...] = ()


@dataclass(frozen=True)
class ExportSpec:
    """One 9p export: a host directory shared under ``tag`` with one multidevs mode."""

    tag: str
    path: Path
    mode: Mode
    mount_point: str
    # cache=none makes every guest stat reach QEMU, so guest ids are QEMU's qids and
    # not whatever an inode cache merged.
    cache: Cache = Cache.NONE
    security_model: str = "none"
    readonly: bool = False
    # VIRTIOFS: served by a virtiofsd of its own, ``mode`` and ``cache`` unused; the
    # daemon announces submounts (each host device its own guest superblock) or not.
    transport: Transport = Transport.NINEP
    submounts: bool = True


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


@dataclass(frozen=True)
class MachineOptions:
    """The machine a command runs its guests on, as a user names it: which QEMU, which
    guest recipe or kernel, which accelerator, cold or restored boots.  One type for
    run (once per ``--qemu`` and ``--guest``), exec, reproduce, the pytest plugin and
    the benchmark; ``environment.prepare`` turns it into a prepared Environment."""

    qemu: str | None = None
    accel: Accel = Accel.AUTO
    kernel: Path | None = None
    # A modules tree for a self-built --kernel.
    modules: Path | None = None
    # A guest recipe name (a folder of guests/); None: the default recipe.
    guest: str | None = None
    # Boot every guest cold instead of restoring a saved state.
    cold: bool = False
    # QEMU's firmware directories (-L, one each, in order); (): found beside the binary
    # or QEMU's own.
    qemu_datadirs: tuple[Path, ...] = ()
    # Whether guests serve virtiofs exports (a virtiofsd is then found once), and which
    # virtiofsd (--virtiofsd; None: the host's, else Debian trixie's, cached).
    virtiofs: bool = False
    virtiofsd: Path | None = None


@dataclass(frozen=True)
class MachineSpec:
    """Everything needed to render one QEMU command line and run it."""

    qemu: Path
    accel: Accel
    image: GuestImage
    log_dir: Path
    exports: tuple[ExportSpec, ...] = ()
    boot: BootMethod = BootMethod.PVH
    memory_mb: int = 256
    cpus: int = 1
    # -sandbox on; the environment sets it from the probe (not every build has it).
    sandbox: bool = False
    # The -sandbox sets denied besides the default one (a subset of SANDBOX_DENY the
    # binary knows; from the probe).
    sandbox_deny: tuple[str, ...] = ()
    extra_append: tuple[str, ...] = ()
    # False renders the untuned command line people write by hand (bench baseline).
    tuned: bool = True
    # Firmware directories for a QEMU outside the system prefix (one -L each, searched
    # in order); (): QEMU's own.
    datadirs: tuple[Path, ...] = ()
    # Saved guest states live here (boot by restore); None: every boot is cold.
    state_cache: Path | None = None
    # The binary has the monitor-qmp object type (the probe asked): the QMP monitor
    # is an -object, not the -mon that QEMU 11.1 deprecates.
    monitor_object: bool = False
    timeouts: Timeouts = field(default_factory=lambda: Timeouts.for_accel(Accel.TCG))
    # How to start virtiofsd (its argv before the harness's options) for virtiofs exports.
    virtiofsd: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.accel is Accel.AUTO:
            raise ValueError("MachineSpec needs a resolved accelerator (kvm or tcg)")


# A vocabulary enum a comma-separated option names members of.
EnumT = TypeVar("EnumT", bound=StrEnum)


def parse_enum_list(text: str, allowed: Sequence[EnumT], what: str,
                    example: str) -> tuple[EnumT, ...]:
    """Parse a comma-separated list of the values of ``allowed``, in order, without
    repeats, into its members; an unknown or missing name is a UsageError naming the
    valid ones (``what``) or showing ``example``."""
    by_name = {member.value: member for member in allowed}
    chosen: list[EnumT] = []
    for raw in text.split(","):
        name = raw.strip().lower()
        if not name:
            continue
        if name not in by_name:
            raise UsageError(f"unknown {what} {raw.strip()!r}",
                             hint=f"choose from {','.join(by_name)}")
        if by_name[name] not in chosen:
            chosen.append(by_name[name])
    if not chosen:
        raise UsageError(f"no {what} given", hint=f"for example {example}")
    return tuple(chosen)


def parse_modes(text: str) -> tuple[Mode, ...]:
    """Parse ``remap,warn`` into modes."""
    return parse_enum_list(text, ALL_MODES, "multidevs mode",
                           "--modes remap,warn,forbid,default")


def parse_checks(text: str) -> tuple[Check, ...]:
    """Parse ``ids,operations`` into check families, rejecting unknown ones."""
    return parse_enum_list(text, ALL_CHECKS, "check family",
                           f"--checks {Check.IDS},{Check.OPERATIONS}")


def parse_layouts(text: str) -> tuple[Layout, ...]:
    """Parse ``standard,overlay`` into host layouts."""
    return parse_enum_list(text, ALL_LAYOUTS, "layout", "--layout standard,overlay")


def parse_transports(text: str) -> tuple[Transport, ...]:
    """Parse ``9p,virtiofs`` into transports."""
    return parse_enum_list(text, ALL_TRANSPORTS, "transport", "--transport 9p,virtiofs")


def parse_caches(text: str) -> tuple[Cache, ...]:
    """Parse ``none,loose`` into 9p cache modes."""
    return parse_enum_list(text, ALL_CACHES, "9p cache mode", "--cache none,loose")
