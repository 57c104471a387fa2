"""The vocabulary every module shares: the StrEnums (modes, caches, checks, layouts,
transports, ...), the row key, the bounds and the releases the harness knows about,
and the one parser of a comma-separated list of an enum's values.

Only names live here, so every module may import it.  Each type built from them sits
beside its owner: an export's shape in ``host.layout``, the machine's spec in
``qemu.spec``, a built image in ``image.artefacts``, the machine as the user names it
in ``machine_options``, deadlines in ``timeouts``, progress lines in ``progress``,
release numbers in ``version``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

from .errors import UsageError
from .version import Version

MAX_DEVICES = 128

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
    # FUSE filesystems whose inode numbers the harness chooses (``host.scripted_mount``):
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


class BootMethod(StrEnum):
    """How the kernel is handed to QEMU."""

    # The uncompressed vmlinux entered through its PVH note: skips the firmware's
    # real-mode setup and the kernel's self-decompression (about 2.5 s under TCG).
    PVH = "pvh"
    # The distro's compressed bzImage through SeaBIOS/linuxboot: what people write by
    # hand, kept as the benchmark's baseline.
    BZIMAGE = "bzimage"


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
