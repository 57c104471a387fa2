"""The --via libvirt path's pure part: domain XML, reading back argv and logs, rejections."""

from __future__ import annotations

import json
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import pytest

from harness.config import Accel, Mode
from harness.libvirt.backend import virtiofsd_binary
from harness.libvirt.domain import (
    QEMU_NS,
    VIRTIOFS_REJECTION,
    DomainSpec,
    Filesystem,
    fsdev_options,
    multidevs_failures,
    qemu_output,
    rejection_specs,
    render_domain_xml,
    split_qemu_opts,
    virtiofs_failures,
)
from harness.qemu.cmdline import forwarded_port
from harness.verdicts.common import Status
from harness.verdicts.rejection import Attempt, judge_rejection

ODD = Path("/tmp/a&b <c> 'd' \"e\"/export,1")


def _spec(*filesystems: Filesystem, accel: Accel = Accel.TCG) -> DomainSpec:
    return DomainSpec(
        name="mdh-lv-test-remap",
        accel=accel,
        emulator=Path("/usr/bin/qemu-system-x86_64"),
        kernel=Path("/cache/vmlinux"),
        initrd=Path("/cache/initrd.cpio"),
        cmdline="console=ttyS0 mdh_9p=mdh0:/mnt/mdh0:trans=virtio",
        console=Path("/logs/remap/console.log"),
        filesystems=filesystems,
    )


def _parse(spec: DomainSpec) -> ET.Element:
    return ET.fromstring(render_domain_xml(spec))


def _filesystems(root: ET.Element) -> list[ET.Element]:
    return root.findall("./devices/filesystem")


def _attr(element: ET.Element, path: str, name: str) -> str | None:
    """Attribute ``name`` of the element at ``path`` below ``element``, which must exist."""
    found = element.find(path)
    assert found is not None, f"no {path} in {ET.tostring(element, encoding='unicode')}"
    return found.get(name)


@pytest.mark.parametrize("mode", [Mode.REMAP, Mode.WARN, Mode.FORBID])
def test_mode_becomes_the_multidevs_attribute(mode: Mode) -> None:
    root = _parse(_spec(Filesystem.for_mode("mdh0", Path("/x"), mode)))
    (fs,) = _filesystems(root)
    assert fs.get("multidevs") == mode.value
    assert fs.get("type") == "mount" and fs.get("accessmode") == "passthrough"
    assert _attr(fs, "source", "dir") == "/x"
    assert _attr(fs, "target", "dir") == "mdh0"
    assert fs.find("driver") is None  # libvirt's default: 9p


def test_default_mode_leaves_the_attribute_out() -> None:
    xml = render_domain_xml(_spec(Filesystem.for_mode("mdh0", Path("/x"), Mode.DEFAULT)))
    (fs,) = _filesystems(ET.fromstring(xml))
    assert "multidevs" not in fs.attrib
    assert "multidevs" not in xml


def test_one_filesystem_per_export_in_order() -> None:
    modes = [Mode.REMAP, Mode.WARN, Mode.FORBID, Mode.DEFAULT]
    root = _parse(_spec(*(Filesystem.for_mode(f"mdh{i}", Path(f"/e{i}"), m)
                          for i, m in enumerate(modes))))
    found = [(_attr(fs, "target", "dir"), fs.get("multidevs"))
             for fs in _filesystems(root)]
    assert found == [("mdh0", "remap"), ("mdh1", "warn"), ("mdh2", "forbid"), ("mdh3", None)]


def test_paths_with_xml_special_characters_survive() -> None:
    odd_console = Path("/logs/<&>/con'sole\".log")
    spec = replace(_spec(Filesystem.for_mode("mdh0", ODD, Mode.REMAP)), console=odd_console,
                   cmdline="console=ttyS0 a<b&c")
    xml = render_domain_xml(spec)
    assert "a<b" not in xml and "&amp;" in xml  # escaped by the serializer, not by hand
    root = ET.fromstring(xml)
    (fs,) = _filesystems(root)
    assert _attr(fs, "source", "dir") == str(ODD)
    assert _attr(root, "./devices/serial/source", "path") == str(odd_console)
    assert root.findtext("./os/cmdline") == "console=ttyS0 a<b&c"


def test_ssh_forward_is_bound_to_localhost_only() -> None:
    root = _parse(_spec())
    args = [a.get("value") for a in root.iter(f"{{{QEMU_NS}}}arg")]
    netdev = args[args.index("-netdev") + 1]
    assert netdev is not None
    assert "hostfwd=tcp:127.0.0.1:0-:22" in netdev.split(",")
    # No other forward, and nothing on all interfaces.
    assert netdev.count("hostfwd=") == 1 and "0.0.0.0" not in netdev
    device = json.loads(args[args.index("-device") + 1] or "")
    assert device["driver"] == "virtio-net-pci" and device["netdev"] in netdev
    assert device["romfile"] == ""


def test_a_qemu_before_6_2_gets_its_nic_as_key_value() -> None:
    # QEMU 5.2 has no JSON -device: "'{"driver":"virtio-net-pci"' is not a valid device
    # model name", and every domain failed to start.
    root = _parse(replace(_spec(), device_json=False))
    args = [a.get("value") for a in root.iter(f"{{{QEMU_NS}}}arg")]
    assert args[args.index("-device") + 1] == \
        "virtio-net-pci,id=mdhnet-nic,netdev=mdhnet,romfile="


def test_qemu_namespace_is_declared_on_the_root() -> None:
    xml = render_domain_xml(_spec())
    assert f'xmlns:qemu="{QEMU_NS}"' in xml.splitlines()[0]


def test_no_network_renders_no_commandline() -> None:
    root = _parse(replace(_spec(), network=False))
    assert root.find(f"{{{QEMU_NS}}}commandline") is None


def test_tcg_domain_shape() -> None:
    root = _parse(_spec())
    assert root.get("type") == "qemu"
    assert root.findtext("name") == "mdh-lv-test-remap"
    assert _attr(root, "memory", "unit") == "MiB"
    assert root.findtext("memory") == "256" and root.findtext("vcpu") == "1"
    assert _attr(root, "./os/type", "machine") == "q35"
    assert root.findtext("./os/kernel") == "/cache/vmlinux"
    assert root.findtext("./os/initrd") == "/cache/initrd.cpio"
    assert root.findtext("./devices/emulator") == "/usr/bin/qemu-system-x86_64"
    assert _attr(root, "./devices/serial", "type") == "file"
    assert root.findtext("./cpu/model") == "qemu64"
    assert [f.get("name") for f in root.findall("./cpu/feature")] == ["rdrand"]
    assert {root.findtext(e) for e in ("on_poweroff", "on_reboot", "on_crash")} == {"destroy"}
    assert root.find("memoryBacking") is None
    label = root.find("seclabel")
    assert label is not None and label.get("relabel") == "no"
    assert label.findtext("label") == "+0:+0"


def test_kvm_domain_uses_the_host_cpu() -> None:
    root = _parse(_spec(accel=Accel.KVM))
    assert root.get("type") == "kvm"
    assert _attr(root, "cpu", "mode") == "host-passthrough"


def test_auto_accel_is_refused() -> None:
    with pytest.raises(ValueError,
                       match=r"^DomainSpec needs a resolved accelerator \(kvm or tcg\)$"):
        _spec(accel=Accel.AUTO)


# --- reading back ------------------------------------------------------------------------


def test_split_qemu_opts_unescapes_double_commas() -> None:
    assert split_qemu_opts("local,path=/a,,b,multidevs=remap") == [
        "local", "path=/a,b", "multidevs=remap",
    ]
    assert split_qemu_opts("a,,,b") == ["a,", "b"]


ARGV = [
    "/usr/bin/qemu-system-x86_64", "-name", "guest=x",
    "-fsdev", "local,security_model=passthrough,multidevs=remap,id=fsdev-fs0,path=/e/0",
    "-device", '{"driver":"virtio-9p-pci","id":"fs0","fsdev":"fsdev-fs0","mount_tag":"mdh0"}',
    "-fsdev", "local,security_model=passthrough,id=fsdev-fs1,path=/e/a,,b",
    "-fsdev", '{"driver":"local","id":"fsdev-fs2","path":"/e/2","multidevs":"forbid"}',
]


def test_fsdev_options_read_qemuopts_and_json() -> None:
    found = fsdev_options(ARGV)
    assert [f["path"] for f in found] == ["/e/0", "/e/a,b", "/e/2"]
    assert found[0]["driver"] == "local" and found[0]["multidevs"] == "remap"
    assert "multidevs" not in found[1]
    assert found[2]["multidevs"] == "forbid"


def test_multidevs_check_passes_a_right_command_line() -> None:
    result = multidevs_failures(ARGV, [(Path("/e/0"), "remap"), (Path("/e/a,b"), None),
                                       (Path("/e/2"), "forbid")])
    assert all(problems == [] for problems in result.values())


def test_multidevs_check_names_a_wrong_missing_or_extra_value() -> None:
    result = multidevs_failures(ARGV, [(Path("/e/0"), "warn"), (Path("/e/a,b"), "remap"),
                                       (Path("/e/2"), None), (Path("/nowhere"), "remap")])
    wrong = result[Path("/e/0")][0]
    assert "generated multidevs=remap" in wrong and "expected multidevs=warn" in wrong
    assert "generated none" in result[Path("/e/a,b")][0]
    assert "expected no multidevs option" in result[Path("/e/2")][0]
    assert "0 -fsdev" in result[Path("/nowhere")][0]


LOG = """\
2026-11-24 20:44:56.381+0000: starting up libvirt version: 9.0.0, qemu version: 7.2.22
LC_ALL=C \\
/usr/bin/qemu-system-x86_64 \\
-name guest=x \\
-fsdev local,multidevs=warn,id=fsdev-fs0,path=/e \\
-msg timestamp=on
2026-11-24 20:44:56.381+0000: Domain id=1 is tainted: custom-argv
2026-11-24T20:45:01.526980Z qemu-system-x86_64: warning: 9p: Multiple devices detected
2026-11-24 20:45:09.000+0000: shutting down, reason=destroyed
"""


def test_qemu_output_drops_the_header_and_command_and_timestamps() -> None:
    text = qemu_output(LOG)
    assert "LC_ALL" not in text and "-fsdev" not in text and "starting up" not in text
    assert "qemu-system-x86_64: warning: 9p: Multiple devices detected" in text.splitlines()
    assert "shutting down" in text


def test_qemu_output_keeps_only_the_last_boot() -> None:
    again = LOG.replace("Multiple devices detected", "first boot") + LOG
    assert "first boot" not in qemu_output(again)


def test_qemu_output_of_a_log_without_header_is_the_log() -> None:
    assert qemu_output("2026-11-24T20:45:01.5Z qemu: hello") == "qemu: hello"


def test_forwarded_port_reads_info_usernet() -> None:
    usernet = (
        "Hub -1 (mdhnet):\n"
        "  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ\n"
        "  TCP[HOST_FORWARD]  10       127.0.0.1 45675       10.0.2.15    22     0     0\n"
    )
    assert forwarded_port(usernet) == 45675
    assert forwarded_port(usernet.replace("127.0.0.1", "0.0.0.0")) is None
    assert forwarded_port("Hub -1 (mdhnet):\n") is None


# --- rejections --------------------------------------------------------------------------


def test_rejection_passes_when_every_call_is_refused_for_multidevs() -> None:
    verdict = judge_rejection(
        "remap", "virtiofs", "refuse",
        [Attempt("defineXML", f"unsupported: {VIRTIOFS_REJECTION}"),
         Attempt("createXML", f"unsupported: {VIRTIOFS_REJECTION}")],
        (VIRTIOFS_REJECTION,),
    )
    assert verdict.status is Status.PASS and verdict.failures == ()
    assert verdict.observed == "defineXML: refused, createXML: refused"


def test_rejection_fails_when_libvirt_accepts() -> None:
    verdict = judge_rejection(
        "remap", "virtiofs", "refuse",
        [Attempt("defineXML", None), Attempt("createXML", f"x {VIRTIOFS_REJECTION}")],
        (VIRTIOFS_REJECTION,),
    )
    assert verdict.status is Status.FAIL
    assert verdict.failures == ("libvirt accepted the domain in defineXML; it must refuse it",)


def test_a_refusal_for_another_reason_is_inconclusive() -> None:
    # Proves nothing about multidevs: exit 2, not a finding (libvirt 9.0 refused every
    # domain on Debian's QEMU 10.0 with "An error occurred, but the cause is unknown").
    verdict = judge_rejection(
        "bogus", "path", "refuse", [Attempt("createXML", "Cannot find 'virtiofsd' binary")],
        ("multidevs", "bogus"),
    )
    assert verdict.status is Status.INCONCLUSIVE and "not for multidevs" in verdict.failures[0]


def test_an_acceptance_outranks_an_unrelated_refusal() -> None:
    verdict = judge_rejection(
        "remap", "virtiofs", "refuse",
        [Attempt("defineXML", None), Attempt("createXML", "cause unknown")],
        (VIRTIOFS_REJECTION,),
    )
    assert verdict.status is Status.FAIL and len(verdict.failures) == 2


def test_no_call_made_is_the_harness_s_error() -> None:
    verdict = judge_rejection("bogus", "path", "refuse", [], ("multidevs",))
    assert verdict.status is Status.ERROR
    assert verdict.failures == ("no libvirt call was made",)


def test_rejection_specs_are_otherwise_valid_domains() -> None:
    specs = rejection_specs("mdh-lv-t", Path("/q"), Path("/k"), Path("/i"), Path("/c"),
                            Path("/src"), Accel.TCG)
    by_case = {r.case: r for r in specs}
    assert (by_case["reject-virtiofs-multidevs"].attribute,
            by_case["reject-invalid-multidevs"].attribute) == ("remap", "bogus")
    virtiofs = ET.fromstring(render_domain_xml(by_case["reject-virtiofs-multidevs"].spec))
    (fs,) = _filesystems(virtiofs)
    assert _attr(fs, "driver", "type") == "virtiofs"
    assert fs.get("multidevs") == "remap"
    # virtiofs needs shared guest memory; without it libvirt would refuse for that.
    assert _attr(virtiofs, "./memoryBacking/access", "mode") == "shared"
    bogus = ET.fromstring(render_domain_xml(by_case["reject-invalid-multidevs"].spec))
    assert _filesystems(bogus)[0].get("multidevs") == "bogus"
    assert {r.spec.name for r in specs} == {"mdh-lv-t-reject-virtiofs",
                                                   "mdh-lv-t-reject-invalid"}


# --- virtiofs exports through libvirtd's own virtiofsd ---------------------------------


def test_a_virtiofs_filesystem_names_its_daemon_and_shares_the_guest_ram() -> None:
    fs = Filesystem("mdh0", ODD, None, driver="virtiofs", binary=Path("/logs/libvirt/virtiofsd"))
    root = _parse(replace(_spec(fs), shared_memory=True))
    (element,) = _filesystems(root)
    assert element.get("multidevs") is None
    assert _attr(element, "driver", "type") == "virtiofs"
    assert _attr(element, "binary", "path") == "/logs/libvirt/virtiofsd"
    assert _attr(element, "source", "dir") == str(ODD)
    assert _attr(root, "./memoryBacking/source", "type") == "memfd"
    assert _attr(root, "./memoryBacking/access", "mode") == "shared"
    assert _parse(_spec(Filesystem("mdh0", ODD, "remap"))).find("./devices/filesystem/binary") \
        is None


# What libvirt 9.0 generated for a virtiofs export and a 9p one (measured).
VHOST_DEVICE = ('{"driver":"vhost-user-fs-pci","id":"fs0","chardev":"chr-vu-fs0",'
                '"tag":"mdh0","bus":"pci.1","addr":"0x0"}')


def test_each_virtiofs_export_needs_one_vhost_user_fs_device_with_its_tag() -> None:
    argv = ["qemu", "-device", VHOST_DEVICE, "-device", "virtio-9p-pci,id=fs1,mount_tag=mdh1"]
    assert virtiofs_failures(argv, [(Path("/e0"), "mdh0")]) == {Path("/e0"): []}
    assert virtiofs_failures(argv, [(Path("/e1"), "mdh1")]) == {Path("/e1"): [
        "the QEMU command line libvirt generated has 0 vhost-user-fs devices with tag=mdh1, "
        "expected exactly 1"]}
    twice = [*argv, "-device", "vhost-user-fs-pci,chardev=c,tag=mdh0"]
    assert virtiofs_failures(twice, [(Path("/e0"), "mdh0")])[Path("/e0")][0].startswith(
        "the QEMU command line libvirt generated has 2 vhost-user-fs devices")


def test_libvirt_runs_a_script_that_logs_its_options_and_execs_the_daemon(
        tmp_path: Path) -> None:
    command = ("/c/ld-linux-x86-64.so.2", "--library-path", "/c/lib dir", "/c/virtiofsd")
    script = virtiofsd_binary(command, tmp_path / "libvirt")
    assert script.stat().st_mode & 0o111
    result = subprocess.run([str(script), "--fd=3", "-o", "source=/x"], capture_output=True,
                            text=True, env={"PATH": "/nonexistent"}, check=False)
    # exec of the (absent) loader fails, after the options were written to stderr.
    assert result.stderr.startswith("virtiofsd options from libvirtd: --fd=3 -o source=/x\n")
    assert "'/c/lib dir'" in script.read_text() and result.returncode == 127
