"""SSH round trip side of the operation families ``operations`` and ``cross_device``.

Each family lays its own fixture into its export on the host right before it asks
the guest (over 9p the export is mounted cache=none, so the guest sees it at once;
over virtiofs, cache=auto, the guest has looked at nothing of that export yet, so it
has nothing cached to miss it by), runs the
operations through ``mdh-agent ops`` in one SSH round trip, and reads the host state
back where the rule needs it.  Verdicts are ``verdicts.ops``'s.
"""

from __future__ import annotations

import errno
import os
import shlex
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..agent.ops import (
    OPERATIONS,
    OpRequest,
    OpsAnswer,
    encode_requests,
    ops_command,
    parse_ops_output,
)
from ..config import Cache, Check, Transport
from ..errors import GuestOutputError
from ..guest.lifecycle import Guest
from ..host.truth import TWIN_SAME, Export
from ..plan import ExportPlan, FamilyRules, Placement
from ..qemu.spec import ExportSpec
from ..verdicts.harm import qid
from ..verdicts.ops import (
    TWIN_TARGET,
    CrossSeen,
    OpCase,
    OperationsSeen,
    OpsVerdict,
    judge_cross_device,
    judge_operations,
)
from .family import Judging

OPS_DIR = "ops"
XDEV_DIR = "xdev"
XATTR = "user.mdh"
KINDS = ("file", "dir", "symlink", "missing", "mountpoint")
_TARGET = "target"  # what every fixture symlink points at: a file beside it

# What each operation gives on an ordinary filesystem (a tmpfs seen through 9p, as
# root), per kind of target: 0 or the errno.  Measured on 6.1 and 6.12 guests; the
# xattr operations on files, directories and mount points are measured on the host
# at run time instead (tmpfs has user xattrs only from Linux 6.6).
_ERRORS: dict[str, dict[str, int]] = {
    "file": {"opendir": errno.ENOTDIR, "readlink": errno.EINVAL, "mkdir": errno.EEXIST,
             "rmdir": errno.ENOTDIR, "creat": errno.EEXIST, "symlink": errno.EEXIST},
    "dir": {"readlink": errno.EINVAL, "unlink": errno.EISDIR, "mkdir": errno.EEXIST,
            "creat": errno.EEXIST, "link": errno.EPERM, "symlink": errno.EEXIST,
            "truncate": errno.EISDIR},
    # The guest VFS refuses user xattrs on a symlink before 9p is asked.
    "symlink": {"opendir": errno.ENOTDIR, "mkdir": errno.EEXIST, "rmdir": errno.ENOTDIR,
                "creat": errno.EEXIST, "symlink": errno.EEXIST, "getxattr": errno.ENODATA,
                "setxattr": errno.EPERM},
    "missing": {op: errno.ENOENT for op in OPERATIONS if op not in ("mkdir", "creat", "symlink")},
    "mountpoint": {"readlink": errno.EINVAL, "unlink": errno.EISDIR, "mkdir": errno.EEXIST,
                   "rmdir": errno.EBUSY, "creat": errno.EEXIST, "link": errno.EPERM,
                   "symlink": errno.EEXIST, "truncate": errno.EISDIR},
}
_XATTR_KINDS = ("file", "dir", "mountpoint")
# Renaming a mount point would move a host mount if anything let it through.
_SKIP = {("mountpoint", "rename")}


@dataclass(frozen=True)
class OpsRun:
    """What one ops round trip gave: the agent's answer, the output of the shell text
    run after it, and the kernel log read last (``dmesg -c``: what these calls caused)."""

    answer: OpsAnswer
    after: str
    dmesg: str


def run_ops(guest: Guest, mount_point: str, requests: list[OpRequest],
            after: str = "") -> OpsRun:
    """Run ``requests`` in the guest below ``mount_point``, then the shell text
    ``after``, then read the kernel log."""
    script = f"{ops_command(mount_point)}\necho @@AFTER\n{after}\necho @@DMESG\ndmesg -c\n"
    result = guest.run(f"sh -c {shlex.quote(script)}", stdin=encode_requests(requests))
    text = result.stdout.decode(errors="replace")
    ops_text, found, rest = text.partition("@@AFTER\n")
    rest, found_dmesg, dmesg = rest.rpartition("@@DMESG\n")
    if not found or not found_dmesg:
        raise GuestOutputError(f"guest ops script failed (rc {result.rc})",
                               hint=f"see {guest.console_path}",
                               details=result.stderr.decode(errors="replace")[-2000:])
    return OpsRun(parse_ops_output(ops_text, requests), rest, dmesg)


def _xattr_natural(directory: Path) -> int:
    """0 when the host filesystem takes user xattrs, else the errno it refuses with."""
    probe = directory / ".xattr-probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, XATTR, b"1")
        return 0
    except OSError as exc:
        return exc.errno or errno.EIO
    finally:
        probe.unlink()


def guest_xattr(spec: ExportSpec, host: int) -> int:
    """What the guest's user xattr calls on a file, a directory or a mount point give:
    over 9p the host filesystem's answer (``host``), over virtiofs EOPNOTSUPP whatever
    the host does: virtiofsd serves xattrs only with ``--xattr``, which the harness
    does not pass (its getxattr and setxattr answer ENOSYS without it), and Linux's
    FUSE client answers ENOSYS with EOPNOTSUPP (fs/fuse/xattr.c, and it stops asking)."""
    return errno.EOPNOTSUPP if spec.transport is Transport.VIRTIOFS else host


def _lay_targets(base: Path, xattr: int) -> None:
    """A file, an empty directory and a symlink per operation under ``base/ops``, so
    no operation's outcome depends on another's."""
    ops = base / OPS_DIR
    ops.mkdir()
    (ops / _TARGET).write_bytes(b"target\n")
    for op in OPERATIONS:
        (ops / f"file-{op}").write_bytes(f"file-{op}\n".encode())
        (ops / f"dir-{op}").mkdir()
        (ops / f"symlink-{op}").symlink_to(_TARGET)
    if xattr == 0:
        for path in (ops / "file-getxattr", ops / "dir-getxattr", base):
            os.setxattr(path, XATTR, b"host")


def _natural(kind: str, op: str, xattr: int, guest_mounts: bool) -> int:
    if kind in _XATTR_KINDS and op in ("getxattr", "setxattr"):
        return xattr
    if guest_mounts and (kind, op) == ("mountpoint", "link"):
        # The guest sees the device as a mount of its own, as the host does: linkat
        # compares the two paths' mounts (EXDEV) before the VFS refuses to link a
        # directory (EPERM) (fs/namei.c do_linkat); measured on the host alike.
        return errno.EXDEV
    return _ERRORS[kind].get(op, 0)


def operation_cases(relpath: str, device: int, xattr: int, kinds: tuple[str, ...],
                    guest_mounts: bool = False) -> list[OpCase]:
    """Every operation on every kind of target of one device (``relpath`` from the
    export root; the mount point kind is the device's root itself).  ``guest_mounts``:
    the guest sees each device as a mount of its own (virtiofs with submounts), not
    one mount for the whole export as through 9p."""
    prefix = "" if relpath == "." else f"{relpath}/"
    cases = []
    for kind in kinds:
        for op in OPERATIONS:
            if op == "readdir" or (kind, op) in _SKIP:
                continue
            if kind == "mountpoint":
                path = relpath
            else:
                name = f"absent-{op}" if kind == "missing" else f"{kind}-{op}"
                path = f"{prefix}{OPS_DIR}/{name}"
            second = _TARGET if op == "symlink" else f"{path}.to" if op in ("rename", "link") \
                else ""
            cases.append(OpCase(op, kind, device, path, second,
                                _natural(kind, op, xattr, guest_mounts)))
    return cases


def host_tree(root: Path, top: str) -> dict[str, bytes | None]:
    """Relative path (from ``root``) -> content of every file below ``root/top``,
    None for a directory; a symlink is its text, prefixed ``->`` (``_content``)."""
    found: dict[str, bytes | None] = {}
    start = root / top
    for directory, dirs, files in os.walk(start):
        here = Path(directory)
        found[here.relative_to(root).as_posix()] = None
        for name in dirs:
            if (here / name).is_symlink():
                files.append(name)
        for name in files:
            path = here / name
            rel = path.relative_to(root).as_posix()
            found[rel] = _content(path)
    return found


def _content(path: Path) -> bytes:
    """What ``host_tree`` records of a non-directory: a symlink's text (``->``), a
    FIFO's or socket's kind (never opened: a FIFO would block), a file's bytes."""
    mode = path.lstat().st_mode
    if stat.S_ISLNK(mode):
        return b"->" + os.fsencode(os.readlink(path))
    if not stat.S_ISREG(mode):
        return b"special " + oct(stat.S_IFMT(mode)).encode()
    return path.read_bytes()


def _described_tree(root: Path, top: str) -> dict[str, str]:
    """The host tree below ``top`` with each path's mode and xattr, for change checks."""
    described = {}
    for path, content in host_tree(root, top).items():
        st = os.lstat(root / path)
        try:
            attr = os.getxattr(root / path, XATTR, follow_symlinks=False)
        except OSError:
            attr = b""
        described[path] = f"{content!r} mode {st.st_mode:o} xattr {attr!r}"
    return described


class OperationsCheck:
    """Every operation on every kind of target, on the root device and a foreign one."""

    # Its calls ask what any filesystem answers, and virtiofs answers them without a mode.
    rules = FamilyRules(Check.OPERATIONS, Placement.TRAILING, virtiofs=True)

    def observe(self, guest: Guest, spec: ExportSpec, export: Export,
                plan: ExportPlan) -> OperationsSeen:
        foreign = export.devices[1]
        host_xattr = _xattr_natural(export.root)
        _lay_targets(export.root, host_xattr)
        _lay_targets(foreign.path, host_xattr)
        xattr = guest_xattr(spec, host_xattr)
        submounts = spec.transport is Transport.VIRTIOFS and spec.submounts
        cases = operation_cases(".", 0, xattr, KINDS[:4])
        cases += operation_cases(foreign.relpath, foreign.index, xattr, KINDS, submounts)
        before = _described_tree(export.root, foreign.relpath)
        requests = [OpRequest(c.op, c.path, c.path2) for c in cases]
        requests.append(OpRequest("readdir", "."))
        run = run_ops(guest, spec.mount_point, requests)
        answer = run.answer
        after = _described_tree(export.root, foreign.relpath)
        changes = [f"{path}: {before.get(path, 'absent')} -> {after.get(path, 'absent')}"
                   for path in sorted(set(before) | set(after))
                   if before.get(path) != after.get(path)]
        seen = OperationsSeen(
            tuple(cases), answer.errnos[:-1], answer.listings.get(len(cases)),
            answer.errnos[-1], tuple(d.relpath for d in export.devices[1:] if "/" not in
                                     d.relpath),
            tuple(changes), export.truth.device_count, run.dmesg)
        return seen

    def judge(self, judging: Judging, seen: OperationsSeen) -> OpsVerdict:
        return judge_operations(judging.plan.mode, judging.qemu_version, seen,
                                judging.stderr, judging.stderr_outside,
                                judging.command_failures, judging.spec.transport)


_MOVES = {"mv-file": "file", "mv-dir": "dir"}


def _lay_cross(export: Export) -> tuple[list[OpCase], dict[str, str]]:
    """Sources on the root device, an empty destination directory on device 1."""
    root, foreign = export.root, export.devices[1].relpath
    source = root / XDEV_DIR
    source.mkdir()
    for name in ("rename-file", "link-file", "mv-file"):
        (source / name).write_bytes(f"{XDEV_DIR}/{name}\n".encode())
    for name, files in (("rename-dir", ("inner",)), ("mv-dir", ("a", "b"))):
        (source / name).mkdir()
        for file in files:
            (source / name / file).write_bytes(f"{XDEV_DIR}/{name}/{file}\n".encode())
    (root / foreign / XDEV_DIR).mkdir()
    dest = f"{foreign}/{XDEV_DIR}"
    cases = [OpCase("rename", "file", 0, f"{XDEV_DIR}/rename-file", f"{dest}/rename-file"),
             OpCase("link", "file", 0, f"{XDEV_DIR}/link-file", f"{dest}/link-file"),
             OpCase("rename", "dir", 0, f"{XDEV_DIR}/rename-dir", f"{dest}/rename-dir"),
             # Onto an existing file that shares the source's qid under warn.
             OpCase("rename", TWIN_TARGET, 0, TWIN_SAME, f"{foreign}/{TWIN_SAME}")]
    moves = {f"{XDEV_DIR}/{name}": f"{dest}/{name}" for name in _MOVES}
    return cases, moves


def _cross_state(root: Path, tops: Sequence[str], twins: Sequence[str]
                 ) -> dict[str, bytes | None]:
    """The host side of the cross-device cases: both trees and both twins."""
    state = {k: v for top in tops for k, v in host_tree(root, top).items()}
    state.update({twin: (root / twin).read_bytes() for twin in twins if (root / twin).exists()})
    return state


class CrossDeviceCheck:
    """rename, link and busybox mv from the root device to another; host read back."""

    # A rename between twins that share a guest inode is a silent no-op under an
    # inode-caching cache mode (loose, fscache): each gets an export of its own.
    rules = FamilyRules(Check.CROSS_DEVICE, Placement.TRAILING, per_inode_cache=True,
                        virtiofs=True)

    def observe(self, guest: Guest, spec: ExportSpec, export: Export,
                plan: ExportPlan) -> CrossSeen:
        cases, moves = _lay_cross(export)
        foreign = export.devices[1].relpath
        tops = (XDEV_DIR, f"{foreign}/{XDEV_DIR}")
        twins = (TWIN_SAME, f"{foreign}/{TWIN_SAME}")
        before = _cross_state(export.root, tops, twins)
        point = shlex.quote(spec.mount_point)
        # busybox mv falls back to copy + unlink on EXDEV; its exit status is the outcome.
        mv = "".join(f"(cd {point} && mv {shlex.quote(src)} {shlex.quote(dst.rpartition('/')[0])}"
                     f"/) 2>/dev/null; echo {name} $?\n"
                     for (src, dst), name in zip(moves.items(), _MOVES, strict=True))
        run = run_ops(guest, spec.mount_point,
                      [OpRequest(c.op, c.path, c.path2) for c in cases], mv)
        answer, text = run.answer, run.after
        results = dict(line.split(" ", 1) for line in text.splitlines() if " " in line)
        raw: list[tuple[OpCase, int]] = list(zip(cases, answer.errnos, strict=True))
        for name, kind in _MOVES.items():
            status = results.get(name, "")
            if not status.isdigit():
                raise GuestOutputError(f"no exit status of the guest's mv of {name}",
                                       details=text[-2000:])
            raw.append((OpCase("mv", kind, 0, f"{XDEV_DIR}/{name}", moves[f"{XDEV_DIR}/{name}"]),
                        int(status)))
        after = _cross_state(export.root, tops, twins)
        share = len({qid(export.truth.by_path[p], remapped=False) for p in twins}) == 1
        return CrossSeen(tuple(raw), before, after, moves,
                                     export.truth.device_count,
                                     twins_may_alias=share and Cache(spec.cache).reuses_inodes,
                                     dmesg=run.dmesg)

    def judge(self, judging: Judging, seen: CrossSeen) -> OpsVerdict:
        return judge_cross_device(judging.plan.mode, judging.qemu_version, seen,
                                  judging.stderr, judging.stderr_outside,
                                  judging.command_failures, judging.spec.transport)

