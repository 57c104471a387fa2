"""The by-hand reproduction script printed by ``reproduce``."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from harness.commands.byhand import EXPORT_VAR, guest_hint, populate_function, script
from harness.config import Accel, Layout, Mode
from harness.errors import UsageError
from harness.host.layout import ExportLayout
from harness.image.artefacts import GuestImage
from harness.qemu.spec import ExportSpec, MachineSpec

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICLoFt9ZJDDzRx+0itph7ZAQpZAHpnGD7s1C6R1YgJfI"


def _spec(tmp: Path) -> tuple[MachineSpec, ExportSpec]:
    image = GuestImage(
        directory=tmp, recipe="r", cache_key="k", kernel_release="6.1",
        vmlinux=tmp / "vmlinux", vmlinuz=tmp / "vmlinuz", initrd=tmp / "initrd",
        host_key_pub=tmp / "h.pub", client_key=tmp / "c", client_key_pub=tmp / "c.pub",
    )
    (tmp / "h.pub").write_text(HOST_KEY + " root@mdh-guest\n")
    export = ExportSpec(tag="mdh0", path=tmp / "x", mode=Mode.WARN, mount_point="/mnt/mdh0")
    return MachineSpec(qemu=Path("/usr/bin/qemu-system-x86_64"), accel=Accel.TCG,
                       image=image, log_dir=tmp, exports=(export,)), export


def test_script_builds_the_export_and_runs_qemu_without_the_harness(tmp_path: Path) -> None:
    spec, export = _spec(tmp_path)
    text = script(spec, export, ExportLayout(devices=3, files_per_device=2), root=True)
    assert 'unshare --mount --propagation private sh "$0" inner "$dir" "$port"' in text
    assert 'path="$EXPORT",security_model=none,multidevs=warn' in text
    assert 'hostfwd=tcp:127.0.0.1:"$PORT"-:22' in text
    assert "fd=" not in text, "the harness's QMP socket cannot exist by hand"
    assert "while [ $n -lt 3 ]" in text
    # The script is valid shell.
    checked = subprocess.run(["sh", "-n"], input=text, text=True, capture_output=True,
                             check=False)
    assert checked.returncode == 0, checked.stderr


def test_rootless_script_uses_a_user_namespace(tmp_path: Path) -> None:
    spec, export = _spec(tmp_path)
    text = script(spec, export, ExportLayout(devices=2), root=False)
    assert 'unshare -Urm sh "$0" inner "$dir" "$port"' in text


def test_loop_script_builds_the_loop_layout(tmp_path: Path) -> None:
    spec, export = _spec(tmp_path)
    text = script(spec, export, ExportLayout(devices=2, files_per_device=2, kind=Layout.LOOP),
                  root=True)
    assert f"mkdir {EXPORT_VAR}/dev01/sub" in text and "populate" not in text
    assert f"touch -d @1700000000 {EXPORT_VAR}/dev01 {EXPORT_VAR}" in text
    checked = subprocess.run(["sh", "-n"], input=text, text=True, capture_output=True,
                             check=False)
    assert checked.returncode == 0, checked.stderr


def test_overlay_script_builds_the_overlay_as_the_harness_does(tmp_path: Path) -> None:
    spec, export = _spec(tmp_path)
    text = script(spec, export, ExportLayout(devices=1, files_per_device=3,
                                             kind=Layout.OVERLAY), root=True)
    assert ("mount -t overlay overlay -o lowerdir=$LAYERS/l1/data:"
            "$LAYERS/l2/data:$LAYERS/l3/data,"
            "upperdir=$LAYERS/up/data,workdir=$LAYERS/up/work,"
            f"xino=on,index=off,redirect_dir=off,metacopy=off {EXPORT_VAR}") in text
    assert 'while [ "$i" -lt 3 ]' in text
    checked = subprocess.run(["sh", "-n"], input=text, text=True, capture_output=True,
                             check=False)
    assert checked.returncode == 0, checked.stderr


def test_a_layout_the_script_cannot_build_is_refused(tmp_path: Path) -> None:
    spec, export = _spec(tmp_path)
    with pytest.raises(UsageError, match="the by-hand script cannot build the btrfs layout"):
        script(spec, export, ExportLayout(devices=2, kind=Layout.BTRFS), root=True)


def _tree(root: Path) -> dict[str, tuple[str, bytes | str | None]]:
    """Relative path -> (kind, content: a file's bytes, a symlink's text), never
    opening a FIFO or socket."""
    import stat as st

    found: dict[str, tuple[str, bytes | str | None]] = {}
    for path in sorted(root.rglob("*")):
        mode = path.lstat().st_mode
        rel = path.relative_to(root).as_posix()
        if st.S_ISLNK(mode):
            found[rel] = ("symlink", os.readlink(path))
        elif st.S_ISREG(mode):
            found[rel] = ("file", path.read_bytes())
        else:
            found[rel] = (oct(st.S_IFMT(mode)), None)
    return found


def test_the_shell_populate_builds_what_the_harness_builds(tmp_path: Path) -> None:
    from harness.host.populate import populate

    shell, harness = tmp_path / "shell", tmp_path / "harness"
    shell.mkdir()
    harness.mkdir()
    subprocess.run(["sh", "-c", populate_function() + 'populate "$1" dev01 3 1', "sh",
                    str(shell)], check=True)
    populate(harness, "dev01", 3, 1)
    built = _tree(harness)
    assert _tree(shell) == built
    assert built["special-link"] == ("symlink", "sub/inner")
    assert built["special-fifo"][0] == oct(0o010000)
    assert built["special-socket"][0] == oct(0o140000)


def test_script_uses_a_fresh_directory_a_free_port_and_the_pinned_host_key(
    tmp_path: Path
) -> None:
    """No fixed /tmp path or port (two scripts at once, or a planted symlink), and the
    guest's host key is known: checking it is never turned off."""
    spec, export = _spec(tmp_path)
    text = script(spec, export, ExportLayout(devices=2, files_per_device=2), root=True)
    assert "/tmp/mdh-byhand-" not in text and "10022" not in text
    assert "StrictHostKeyChecking=no" not in text
    assert "StrictHostKeyChecking=yes" in text and "UserKnownHostsFile" in text
    assert "StrictHostKeyChecking=no" not in guest_hint(spec, export)
    # The outer half alone, run for real: a known_hosts file with the image's key for
    # the port it picked, the ssh command on stderr, the directory gone afterwards.
    outer = text.replace('{unshare} sh "$0" inner "$dir" "$port"'.format(
        unshare="unshare --mount --propagation private"),
        'cat "$dir/known_hosts"; echo "$dir" > "$0.dir"')
    (tmp_path / "tmp").mkdir()
    probe = tmp_path / "outer.sh"
    probe.write_text(outer)
    done = subprocess.run(["sh", str(probe)], capture_output=True, text=True, check=False,
                          env={**os.environ, "TMPDIR": str(tmp_path / "tmp")}, timeout=30)
    assert done.returncode == 0, done.stderr
    port = int(done.stdout.split("]:")[1].split()[0])
    assert done.stdout == f"[127.0.0.1]:{port} {HOST_KEY}\n"
    assert f'-p {port} root@127.0.0.1' in done.stderr and "StrictHostKeyChecking=yes" in \
        done.stderr
    used = Path((tmp_path / "outer.sh.dir").read_text().strip())
    assert used.parent == tmp_path / "tmp" and not used.exists()
    assert list((tmp_path / "tmp").iterdir()) == []
