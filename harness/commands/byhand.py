"""A shell script that reproduces one case without the harness (for bug reports).

It builds the same multi-device tmpfs export inside a private mount namespace,
starts QEMU with the command line the harness used (minus the harness's own QMP
socket, with an SSH port it picks free) and says how to look at the collision from
the guest, the guest's host key pinned.  Its directories come from mktemp and are
removed when QEMU ends (Ctrl-C included).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import replace
from pathlib import Path

from ..config import Layout
from ..errors import UsageError
from ..host.layout import ExportLayout
from ..host.truth import (
    ODD_NAME,
    ROOT_STEP,
    SPECIAL_FIFO,
    SPECIAL_LINK,
    SPECIAL_SOCKET,
    SUBDIR,
    SUBDIR_FILE,
    TWIN_DIR,
    TWIN_ENTRY,
    TWIN_EPOCH,
    TWIN_MTIME,
    TWIN_SAME,
)
from ..qemu.cmdline import kernel_append, mount_options, render_command
from ..qemu.spec import ExportSpec, MachineSpec

# Shell variables of the script's inner half: the export and the overlay's layers
# (beside the export, never in it: ``host.overlay``), both in the script's mktemp
# directory, whose name it checks holds no character the shell would split or glob.
EXPORT_VAR = "$EXPORT"
LAYERS_VAR = "$LAYERS"
# What the command line is rendered with, then replaced by the shell variables.
_EXPORT_MARK = "/MDH-BYHAND-EXPORT"
_PORT_MARK = "127.0.0.1:0-:22"
_MARKS = re.compile(f"({re.escape(_EXPORT_MARK)}|{re.escape(_PORT_MARK)})")
_SHELL_MARKS = {_EXPORT_MARK: '"$EXPORT"', _PORT_MARK: '127.0.0.1:"$PORT"-:22'}
# Picks a free port for the guest's SSH forward (the host has Python: the harness ran).
_FREE_PORT = ('import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); '
              "print(s.getsockname()[1])")
# The overlay layout as ``host.overlay`` builds it: the upper and three lower layers
# (each a tmpfs, files made in the same order), the mount options, the file size.
OVERLAY_UPPER = "up"
OVERLAY_LOWERS = ("l1", "l2", "l3")
OVERLAY_OPTIONS = "xino=on,index=off,redirect_dir=off,metacopy=off"
OVERLAY_FILE_BYTES = 32


# What the by-hand script binds the socket with (the host has Python: the harness runs).
_BIND_SOCKET = "import socket, sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])"


def populate_function() -> str:
    """The shell function that fills one device (DIR LABEL FILES INDEX) in the
    harness's order, twins and special files included (``build.populate``).

    Names as ``export.device_file_names`` makes them: "file NNNN", the last one of
    two or more being the name with a newline (single-quoted, so sh keeps it).
    """
    odd = shlex.quote(ODD_NAME)
    return (
        'populate() {  # DIR LABEL FILES INDEX\n'
        '    i=0; while [ "$i" -lt "$3" ]; do\n'
        '        f=$(printf "file %04d" "$i")\n'
        f'        if [ "$3" -ge 2 ] && [ "$i" -eq $(($3 - 1)) ]; then f={odd}; fi\n'
        '        printf "%s/%s\\n" "$2" "$f" > "$1/$f"\n'
        '        i=$((i + 1)); done\n'
        '    mkdir "$1/sub"; printf "%s/sub/inner\\n" "$2" > "$1/sub/inner"\n'
        '    printf "%s/link-a\\n" "$2" > "$1/link-a"; ln "$1/link-a" "$1/link-b"\n'
        f'    printf "%s/{TWIN_SAME}\\n" "$2" > "$1/{TWIN_SAME}"\n'
        f'    printf "%s/{TWIN_MTIME}\\n" "$2" > "$1/{TWIN_MTIME}"\n'
        f'    mkdir "$1/{TWIN_DIR}"; printf "%s\\n" "$2" > '
        f'"$1/{TWIN_DIR}/{TWIN_ENTRY}$(printf %03d "$4")"\n'
        f'    touch -d @{TWIN_EPOCH} "$1/{TWIN_SAME}" "$1/{TWIN_DIR}"\n'
        f'    touch -d @$(({TWIN_EPOCH} + 4 * $4)) "$1/{TWIN_MTIME}"\n'
        f'    ln -s {SUBDIR}/{SUBDIR_FILE} "$1/{SPECIAL_LINK}"; mkfifo "$1/{SPECIAL_FIFO}"\n'
        # Bound from inside the directory: AF_UNIX paths are limited to 107 bytes.
        f'    (cd "$1" && python3 -c {shlex.quote(_BIND_SOCKET)} {SPECIAL_SOCKET})\n'
        '}\n'
    )


def script(spec: MachineSpec, export: ExportSpec, layout: ExportLayout, root: bool) -> str:
    """The whole reproduction script for ``export`` shared by ``spec``'s QEMU.

    The outer half makes a directory with mktemp, picks a free port, writes a
    known_hosts file pinning the image's host key, prints the ssh command and
    re-runs the script inside a private mount namespace (a user namespace too
    without root), so its mounts vanish with QEMU; then it removes the directory,
    which on its side of the namespace holds only empty mount points.
    """
    shared = replace(export, path=Path(_EXPORT_MARK))
    hand = replace(spec, exports=(shared,))
    append = kernel_append(hand.exports, hand.extra_append)
    argv = render_command(hand, console_path=Path("/dev/stdout"), qmp_fd=None, host_port=0,
                          append=append)
    unshare = "unshare --mount --propagation private" if root else "unshare -Urm"
    return "\n".join([
        "#!/bin/sh",
        f"# Reproduce multidevs={export.mode.value} by hand on the {layout.kind.value} layout:",
        f"# {_LAYOUT_TEXT.get(layout.kind, 'see docs/checks.md')}.",
        "set -eu",
        'if [ "${1:-}" != inner ]; then',
        *("    " + line for line in _outer_lines(spec, export, unshare)),
        "fi",
        'EXPORT="$2/export" LAYERS="$2/layers" PORT="$3"',
        *_build_lines(layout),
        "exec " + _shell_line(argv),
    ]) + "\n"


def _outer_lines(spec: MachineSpec, export: ExportSpec, unshare: str) -> list[str]:
    """The script's outer half: its directory, port, pinned host key and ssh hint."""
    key = " ".join(spec.image.host_key_pub.read_text().split()[:2])  # type and base64
    ssh = (f"ssh -i {shlex.quote(str(spec.image.client_key))} -o StrictHostKeyChecking=yes "
           "-o UserKnownHostsFile=$dir/known_hosts -p $port root@127.0.0.1 "
           f"{shlex.quote(_look(export))}")
    return [
        'dir=$(mktemp -d "${TMPDIR:-/tmp}/mdh-byhand.XXXXXXXX")',
        # Only empty mount points are on this side: the mounts live in the namespace.
        "trap 'rm -rf \"$dir\"' EXIT; trap 'exit 130' INT TERM",
        'case $dir in *[!A-Za-z0-9_./-]*)',
        '    echo "$0: $dir: TMPDIR must hold only letters, digits and _ . / -" >&2; exit 2;;',
        "esac",
        f"port=$(python3 -c {shlex.quote(_FREE_PORT)})",
        f"printf '[127.0.0.1]:%s %s\\n' \"$port\" {shlex.quote(key)} > \"$dir/known_hosts\"",
        f'echo "guest (once it booted): {ssh}" >&2',
        f'{unshare} sh "$0" inner "$dir" "$port"',
        "exit",
    ]


def _look(export: ExportSpec) -> str:
    """What to run in the guest to see the ids."""
    return f"cd {export.mount_point} && ls -i -R ."


def _shell_line(argv: list[str]) -> str:
    """``argv`` as one shell line, the export path and SSH port as "$EXPORT", "$PORT"."""
    words = []
    for arg in argv:
        pieces = _MARKS.split(arg)
        if len(pieces) == 1:
            words.append(shlex.quote(arg))
            continue
        words.append("".join(_SHELL_MARKS.get(piece) or (shlex.quote(piece) if piece else "")
                             for piece in pieces))
    return " ".join(words)


_LAYOUT_TEXT = {
    Layout.STANDARD: "tmpfs devices in one 9p export, files created in the same order on "
    "each so inode numbers repeat",
    Layout.LOOP: "the root tmpfs holds only dev01, both roots one entry and one mtime",
    Layout.EXPORT: "your own tree, bound read-only with the mounts under it",
    Layout.OVERLAY: "the export is an overlayfs (xino=on) over a tmpfs upper and three "
    "tmpfs lowers made alike, so the layers' files differ only in the top inode bits",
}


def _build_lines(layout: ExportLayout) -> list[str]:
    """The shell lines that build ``layout``'s export at EXPORT_VAR."""
    if layout.kind is Layout.LOOP:
        return _loop_lines(layout)
    if layout.kind is Layout.OVERLAY:
        return _overlay_lines(layout)
    if layout.kind is Layout.STANDARD:
        return _standard_lines(layout)
    if layout.kind is Layout.EXPORT and layout.source is not None:
        return _tree_lines(layout.source)
    raise UsageError(f"the by-hand script cannot build the {layout.kind.value} layout",
                     hint="reproduce by hand with --layout standard, loop or overlay")


def _overlay_lines(layout: ExportLayout) -> list[str]:
    """The overlay layout (``host.overlay``): each layer a tmpfs with data/ and work/,
    ``files_per_device`` files of 32 bytes in data/<layer>, a hard-link pair on the
    first lower; the overlay mounted with xino on the export directory."""
    layers = (OVERLAY_UPPER, *OVERLAY_LOWERS)
    lowerdir = ":".join(f"{LAYERS_VAR}/{name}/data" for name in OVERLAY_LOWERS)
    upper = f"{LAYERS_VAR}/{OVERLAY_UPPER}"
    return [
        f"mkdir -p {EXPORT_VAR} {LAYERS_VAR}",
        f"for l in {' '.join(layers)}; do",
        f'    mkdir "{LAYERS_VAR}/$l"; mount -t tmpfs -o size=4m tmpfs "{LAYERS_VAR}/$l"',
        f'    mkdir "{LAYERS_VAR}/$l/data" "{LAYERS_VAR}/$l/work" "{LAYERS_VAR}/$l/data/$l"',
        f'    i=0; while [ "$i" -lt {layout.files_per_device} ]; do',
        f'        printf "%-{OVERLAY_FILE_BYTES - 1}s\\n" "$l/f$i" > "{LAYERS_VAR}/$l/data/$l/f$i"',
        '        i=$((i + 1)); done',
        f'    if [ "$l" = {OVERLAY_LOWERS[0]} ]; then',
        f'        printf "%-{OVERLAY_FILE_BYTES - 1}s\\n" "$l/link-a" > '
        f'"{LAYERS_VAR}/$l/data/$l/link-a"',
        f'        ln "{LAYERS_VAR}/$l/data/$l/link-a" "{LAYERS_VAR}/$l/data/$l/link-b"; fi',
        f'    touch -d @{TWIN_EPOCH} "{LAYERS_VAR}/$l/data/$l"/* "{LAYERS_VAR}/$l/data/$l"',
        "done",
        f"mount -t overlay overlay -o lowerdir={lowerdir},upperdir={upper}/data,"
        f"workdir={upper}/work,{OVERLAY_OPTIONS} {EXPORT_VAR}",
        f"touch -d @{TWIN_EPOCH + ROOT_STEP} {EXPORT_VAR}",
        f"# On the host: ls -i {EXPORT_VAR}/l2 {EXPORT_VAR}/l3 (distinct numbers, bits 63-62)",
    ]


def _loop_lines(layout: ExportLayout) -> list[str]:
    """The loop layout (``export._build_loop``): the root holds only dev01, dev01 only
    sub; both roots one entry, one mtime and inode 1, so their qids match."""
    return [
        f"mkdir -p {EXPORT_VAR}",
        f"mount -t tmpfs tmpfs {EXPORT_VAR}",
        f"mkdir {EXPORT_VAR}/dev01; mount -t tmpfs tmpfs {EXPORT_VAR}/dev01",
        f"mkdir {EXPORT_VAR}/dev01/sub",
        f'i=0; while [ "$i" -lt {layout.files_per_device} ]; do',
        f'    f=$(printf "file %04d" "$i"); echo "dev01/sub/$f" > "{EXPORT_VAR}/dev01/sub/$f"',
        '    i=$((i + 1)); done',
        f"touch -d @{TWIN_EPOCH} {EXPORT_VAR}/dev01 {EXPORT_VAR}",
    ]


def _tree_lines(source: Path) -> list[str]:
    """The user's tree (``host.usertree``): bound with its mounts, each made read-only;
    QEMU's command line adds readonly=on."""
    return [
        f"mkdir -p {EXPORT_VAR}",
        f"mount --rbind {shlex.quote(str(source))} {EXPORT_VAR}",
        f"findmnt -R -n -r -o TARGET {EXPORT_VAR} | while read -r m; do",
        '    mount -o remount,bind,ro "$(printf "%b" "$m")"; done',
    ]


def _standard_lines(layout: ExportLayout) -> list[str]:
    files = layout.files_per_device
    return [
        populate_function().rstrip(),
        f"mkdir -p {EXPORT_VAR}",
        f"mount -t tmpfs tmpfs {EXPORT_VAR}",
        f"populate {EXPORT_VAR} dev00 {files} 0",
        f"n=1; while [ $n -lt {layout.devices} ]; do",
        '    d=$(printf "dev%02d" "$n")',
        f'    mkdir "{EXPORT_VAR}/$d"; mount -t tmpfs tmpfs "{EXPORT_VAR}/$d"',
        f'    populate "{EXPORT_VAR}/$d" "$d" {files} "$n"; n=$((n + 1))',
        "done",
        "# Device roots last, with distinct mtimes, as the harness does (export.root_time).",
        f'n=0; for d in . $(cd {EXPORT_VAR} && ls -d dev[0-9]* 2>/dev/null); do',
        f'    touch -d @$(({TWIN_EPOCH} + {ROOT_STEP} * (n + 1))) "{EXPORT_VAR}/$d"; '
        'n=$((n + 1)); done',
    ]


def guest_hint(spec: MachineSpec, export: ExportSpec) -> str:
    """How to reach the guest started by the script and look at the ids."""
    return (
        f"the script prints the ssh command (its port, the guest's host key pinned), "
        f"which runs {shlex.quote(_look(export))}   (the guest mounted it as: "
        f"mount -t 9p -o {mount_options(export)} {export.tag} {export.mount_point})"
    )
