"""The --via libvirt path, pure part: domain XML in, what libvirt made of it out.

Everything here is text and data: the transient domain XML the harness hands to
``virDomainCreateXML``, and the readers of what came back (the QEMU argv libvirt
generated, QEMU's stderr inside libvirt's domain log, the SSH port in ``info
usernet``), plus the two domains libvirt must refuse.  No daemon, no
guest; the unit tests cover all of it.

The XML is built with ElementTree, so a path holding ``&``, ``<`` or quotes is
escaped by the serializer, never by hand.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from ..config import Accel, Mode
from ..qemu.cmdline import datadir_args
from ..version import Version

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
ET.register_namespace("qemu", QEMU_NS)

# The guest's NIC, added through <qemu:commandline> (see ``net_args``).
NETDEV_ID = "mdhnet"
SSH_ADDRESS = "127.0.0.1"
MACHINE = "q35"
# The first QEMU that takes -device as JSON.
JSON_DEVICE_SINCE = Version(6, 2, 0)
TCG_CPU_MODEL = "qemu64"
# Same reason as the direct path's qemu64,+rdrand: without RDRAND the guest kernel's
# CRNG, and so dropbear's getrandom(), waits ~1.4 s for jitter entropy under TCG.
TCG_CPU_FEATURES = ("rdrand",)

# What libvirt 9.0 says (checked in libvirt_driver_qemu.so and on a real daemon).
VIRTIOFS_REJECTION = "virtiofs does not support multidevs"
BOGUS_MULTIDEVS = "bogus"

# "-msg timestamp=on" (libvirt's default) prefixes QEMU's own messages.
_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z\s+")
_LOG_START = "starting up libvirt version"


@dataclass(frozen=True)
class Filesystem:
    """One ``<filesystem>``: a host directory shared under ``tag``.

    ``multidevs`` is the attribute's literal value, None to leave it out (what
    Mode.DEFAULT means); a string, not a Mode, so the rejection check can say
    ``bogus``.  ``driver`` None is libvirt's default (9p, "path"); "virtiofs" asks
    for virtiofs.
    """

    tag: str
    source: Path
    multidevs: str | None
    driver: str | None = None
    # virtiofs: the virtiofsd libvirtd starts (``<binary path=...>``); None lets libvirt
    # look one up through its vhost-user descriptors.
    binary: Path | None = None

    @classmethod
    def for_mode(cls, tag: str, source: Path, mode: Mode) -> Filesystem:
        """The 9p filesystem the matrix uses for ``mode``."""
        return cls(tag=tag, source=source, multidevs=mode.qemu_value)


@dataclass(frozen=True)
class DomainSpec:
    """Everything one transient domain needs; rendered by ``render_domain_xml``."""

    name: str
    accel: Accel
    emulator: Path
    kernel: Path
    initrd: Path
    cmdline: str
    console: Path
    filesystems: tuple[Filesystem, ...] = ()
    memory_mib: int = 256
    vcpus: int = 1
    # virtiofs needs guest RAM QEMU can share (with virtiofsd).
    shared_memory: bool = False
    network: bool = True
    # Firmware directories (one -L each) for a QEMU outside the system prefix.
    datadirs: tuple[Path, ...] = ()
    # QEMU takes -device as JSON (6.2 and later; see ``net_args``).
    device_json: bool = True

    def __post_init__(self) -> None:
        if self.accel is Accel.AUTO:
            raise ValueError("DomainSpec needs a resolved accelerator (kvm or tcg)")


def domain_type(accel: Accel) -> str:
    """libvirt's domain type: 'kvm', or 'qemu' for TCG."""
    return "kvm" if accel is Accel.KVM else "qemu"


def net_args(host_port: int = 0, device_json: bool = True) -> list[str]:
    """QEMU arguments for user networking with the guest's SSH on 127.0.0.1 only.

    libvirt 9.0's slirp ``<interface type='user'>`` has no port forward;
    ``<portForward>`` needs the passt backend (one more package, and the host port
    chosen in advance, racing other processes for it).  So the NIC is given to QEMU
    through ``<qemu:commandline>``, as on the direct path: port 0 lets QEMU bind a
    free port itself, and ``info usernet`` tells which.  The device is written as
    JSON: QEMU creates ``-device`` options given as key=value before all JSON ones,
    whatever their order, and libvirt's JSON root ports need slot 1.  A QEMU before
    6.2 has no JSON ``-device`` (5.2: "'{"driver":"virtio-net-pci"' is not a valid
    device model name"), and libvirt gives it key=value devices too: key=value then.
    """
    device = {
        "driver": "virtio-net-pci",
        "id": f"{NETDEV_ID}-nic",
        "netdev": NETDEV_ID,
        # An empty romfile skips loading the NIC's iPXE boot ROM.
        "romfile": "",
    }
    return [
        "-netdev", f"user,id={NETDEV_ID},hostfwd=tcp:{SSH_ADDRESS}:{host_port}-:22",
        "-device", json.dumps(device, separators=(",", ":")) if device_json else
        ",".join(f"{key}={value}" for key, value in device.items()).replace(
            "driver=", "", 1),
    ]  # fmt: skip


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrib: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrib)
    if text is not None:
        element.text = text
    return element


def _cpu(root: ET.Element, accel: Accel) -> None:
    if accel is Accel.KVM:
        _sub(root, "cpu", mode="host-passthrough", check="none")
        return
    cpu = _sub(root, "cpu", mode="custom", match="exact", check="none")
    _sub(cpu, "model", TCG_CPU_MODEL, fallback="forbid")
    for feature in TCG_CPU_FEATURES:
        _sub(cpu, "feature", policy="require", name=feature)


def _filesystem(devices: ET.Element, fs: Filesystem) -> None:
    attrib = {"type": "mount", "accessmode": "passthrough"}
    if fs.multidevs is not None:
        attrib["multidevs"] = fs.multidevs
    element = _sub(devices, "filesystem", **attrib)
    if fs.driver is not None:
        _sub(element, "driver", type=fs.driver)
    if fs.binary is not None:
        _sub(element, "binary", path=str(fs.binary))
    _sub(element, "source", dir=str(fs.source))
    _sub(element, "target", dir=fs.tag)


def render_domain_xml(spec: DomainSpec) -> str:
    """The transient domain for ``spec``, as a string for ``createXML``.

    Direct kernel boot (PVH vmlinux, initrd, command line), q35 with ACPI like the
    direct path, serial console into a file libvirt opens for QEMU, no USB, no
    balloon, no graphics.  The guest powers off or reboots (panic=-1) into
    ``destroy``: a transient domain then simply disappears.  QEMU runs as root with
    no relabelling, as on the direct path: it reads the image from root's cache and
    libvirt must not chown the harness's files.
    """
    root = ET.Element("domain", type=domain_type(spec.accel))
    _sub(root, "name", spec.name)
    _sub(root, "memory", str(spec.memory_mib), unit="MiB")
    _sub(root, "vcpu", str(spec.vcpus))
    if spec.shared_memory:
        backing = _sub(root, "memoryBacking")
        _sub(backing, "source", type="memfd")
        _sub(backing, "access", mode="shared")
    os_ = _sub(root, "os")
    _sub(os_, "type", "hvm", arch="x86_64", machine=MACHINE)
    _sub(os_, "kernel", str(spec.kernel))
    _sub(os_, "initrd", str(spec.initrd))
    _sub(os_, "cmdline", spec.cmdline)
    features = _sub(root, "features")
    _sub(features, "acpi")
    _cpu(root, spec.accel)
    for event in ("on_poweroff", "on_reboot", "on_crash"):
        _sub(root, event, "destroy")
    devices = _sub(root, "devices")
    _sub(devices, "emulator", str(spec.emulator))
    for fs in spec.filesystems:
        _filesystem(devices, fs)
    serial = _sub(devices, "serial", type="file")
    _sub(serial, "source", path=str(spec.console))
    _sub(serial, "target", port="0")
    _sub(devices, "controller", type="usb", model="none")
    _sub(devices, "memballoon", model="none")
    seclabel = _sub(root, "seclabel", type="static", model="dac", relabel="no")
    _sub(seclabel, "label", "+0:+0")
    extra = datadir_args(spec.datadirs)
    extra += net_args(device_json=spec.device_json) if spec.network else []
    if extra:
        commandline = _sub(root, f"{{{QEMU_NS}}}commandline")
        for arg in extra:
            _sub(commandline, f"{{{QEMU_NS}}}arg", value=arg)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


# --- reading back what libvirt did ---------------------------------------------------


def split_qemu_opts(text: str) -> list[str]:
    """Split a QemuOpts string on single commas; ``,,`` is an escaped comma."""
    parts: list[str] = []
    current: list[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        if char == ",":
            if text[index + 1 : index + 2] == ",":
                current.append(",")
                index += 2
                continue
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
        index += 1
    parts.append("".join(current))
    return parts


def fsdev_options(argv: Sequence[str]) -> list[dict[str, str]]:
    """Every ``-fsdev`` of ``argv`` as a dict; the backend is under key "driver".

    Reads both QemuOpts (what libvirt 9.0 writes) and JSON (should a later libvirt
    switch), so the check does not silently find nothing.
    """
    found: list[dict[str, str]] = []
    for flag, value in zip(argv, argv[1:], strict=False):
        if flag != "-fsdev":
            continue
        if value.lstrip().startswith("{"):
            try:
                data = json.loads(value)
            except ValueError:
                data = None
            if isinstance(data, dict):
                found.append({str(k): str(v) for k, v in data.items()})
                continue
        options: dict[str, str] = {}
        for index, item in enumerate(split_qemu_opts(value)):
            key, sep, val = item.partition("=")
            if not sep and index == 0:
                options["driver"] = item
            else:
                options[key] = val
        found.append(options)
    return found


def multidevs_failures(
    argv: Sequence[str], expected: Sequence[tuple[Path, str | None]]
) -> dict[Path, list[str]]:
    """Check that the generated QEMU command line carries each export's multidevs.

    ``expected`` pairs an export's host path with the multidevs value it must have
    (None: the option must be absent).  Returns, per export path, what is wrong
    (an empty list when the command line is right).
    """
    by_path: dict[str, list[dict[str, str]]] = {}
    for options in fsdev_options(argv):
        by_path.setdefault(options.get("path", ""), []).append(options)
    failures: dict[Path, list[str]] = {}
    for path, wanted in expected:
        problems: list[str] = []
        matches = by_path.get(str(path), [])
        if len(matches) != 1:
            problems.append(
                f"the QEMU command line libvirt generated has {len(matches)} -fsdev "
                f"options for path={path}, expected exactly 1"
            )
        for options in matches:
            got = options.get("multidevs")
            if got != wanted:
                want_text = "no multidevs option" if wanted is None else f"multidevs={wanted}"
                got_text = "none" if got is None else f"multidevs={got}"
                problems.append(
                    f"libvirt generated {got_text} for path={path}, expected {want_text}"
                )
        failures[path] = problems
    return failures


def device_options(argv: Sequence[str]) -> list[dict[str, str]]:
    """Every ``-device`` of ``argv`` as a dict (JSON, as libvirt 9.0 writes them, or
    QemuOpts, whose first word is the driver)."""
    found: list[dict[str, str]] = []
    for flag, value in zip(argv, argv[1:], strict=False):
        if flag != "-device":
            continue
        try:
            data = json.loads(value) if value.lstrip().startswith("{") else None
        except ValueError:
            data = None
        if isinstance(data, dict):
            found.append({str(k): str(v) for k, v in data.items()})
            continue
        parts = split_qemu_opts(value)
        options = dict(item.partition("=")[::2] for item in parts[1:])
        found.append({"driver": parts[0], **options})
    return found


def virtiofs_failures(argv: Sequence[str], exports: Sequence[tuple[Path, str]]
                      ) -> dict[Path, list[str]]:
    """Check that the generated QEMU command line has one vhost-user-fs device per
    virtiofs export (``exports``: host path and tag), so a row is never judged on a
    guest that got its export some other way."""
    tags = [d.get("tag") for d in device_options(argv)
            if d.get("driver", "").startswith("vhost-user-fs")]
    return {path: [] if tags.count(tag) == 1 else [
        f"the QEMU command line libvirt generated has {tags.count(tag)} vhost-user-fs "
        f"devices with tag={tag}, expected exactly 1"] for path, tag in exports}


def qemu_output(domain_log: str) -> str:
    """QEMU's own stderr from libvirt's domain log, timestamps stripped.

    The log starts each boot with libvirt's header and the command line (lines
    continued with a backslash); what follows is QEMU's stderr, interleaved with a
    few libvirt lines ("Domain id=N is tainted", "shutting down"), which never
    carry a multi-device message.  Only the last boot counts.
    """
    lines = domain_log.splitlines()
    starts = [i for i, line in enumerate(lines) if _LOG_START in line]
    index = starts[-1] + 1 if starts else 0
    # Skip the command line: every line but its last ends with a backslash.
    while index < len(lines) and lines[index].endswith("\\"):
        index += 1
    if starts and index < len(lines):
        index += 1
    return "\n".join(_TIMESTAMP.sub("", line) for line in lines[index:])


# --- the rejections libvirt promises ---------------------------------------------------


@dataclass(frozen=True)
class Rejection:
    """A domain libvirt must refuse: what it tries, and the words the refusal must hold."""

    case: str
    spec: DomainSpec
    attribute: str  # the multidevs attribute value tried
    driver: str  # the filesystem driver it was tried on
    expectation: str
    must_contain: tuple[str, ...]


def rejection_specs(
    name_prefix: str, emulator: Path, kernel: Path, initrd: Path, console: Path,
    source: Path, accel: Accel,
) -> tuple[Rejection, ...]:
    """The two domains libvirt must refuse.

    Both are otherwise complete domains (virtiofs with the shared memory it needs),
    so nothing but multidevs can be the reason for the refusal.
    """
    base = DomainSpec(
        name=f"{name_prefix}-reject", accel=accel, emulator=emulator, kernel=kernel,
        initrd=initrd, cmdline="console=ttyS0", console=console, network=False,
    )
    virtiofs = replace(
        base, name=f"{name_prefix}-reject-virtiofs", shared_memory=True,
        filesystems=(Filesystem("mdhfs", source, Mode.REMAP.value, driver="virtiofs"),),
    )
    bogus = replace(
        base, name=f"{name_prefix}-reject-invalid",
        filesystems=(Filesystem("mdhfs", source, BOGUS_MULTIDEVS),),
    )
    return (
        Rejection("reject-virtiofs-multidevs", virtiofs, Mode.REMAP.value, "virtiofs",
                  "libvirt refuses multidevs on a virtiofs filesystem (define and create)",
                  (VIRTIOFS_REJECTION,)),
        Rejection("reject-invalid-multidevs", bogus, BOGUS_MULTIDEVS, "path",
                  f"libvirt refuses multidevs='{BOGUS_MULTIDEVS}' (define and create)",
                  ("multidevs", BOGUS_MULTIDEVS)),
    )
