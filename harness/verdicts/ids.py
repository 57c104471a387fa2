"""Pure judgement side of the ids family: host truth, guest view, stderr -> a verdict.

Everything here is pure, so every rule is unit-tested with hand-made truths and
observations. A verdict carries exact failures (which paths collided with which, which
message was missing or repeated, which foreign path was readable), because "remap
failed" alone sends a developer back to square one.

What each mode must show, on an export spanning several host devices whose inode
numbers repeat across devices (the premise; without it the run is inconclusive):

* remap (and the default from QEMU 10.0): guest (dev, ino) is a bijection with host
  (dev, ino), stable between passes, readdir's d_ino agrees with lstat, no message,
  every path stat-able, every witness (``witnesses``: busybox and GNU tar, cp -a,
  rsync -aH, du, find run over the export) intact.
* warn (and the default for QEMU 4.2 to 9.x): at least one guest id collision, the
  warning exactly once, no ENODEV. Broken witnesses are the expected damage and
  only recorded.
* forbid: every path on the root device stat-able, every path on another device
  (its mount point included) ENODEV, the forbid message exactly once.

A single-device export is the control: whatever the mode, no message, no collision,
everything stat-able and every witness intact.

On top, per cache mode (``harm``): remap (and the default from 10.0) lets nothing
alias in any cache mode; warn (and the default before 10.0) lets nothing alias with
cache none or mmap, and with loose or fscache only the twins whose qids collide
(predicted from the host truth), recording that harm.  A kernel WARNING, BUG or
Oops in the guest's log fails any row.  When several exports of one mode share a
QEMU, only the first can show the mode's message (once per process).
"""

from __future__ import annotations

import errno
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..agent.harm import HarmObservation
from ..agent.stat import GuestObservation, GuestResult, GuestStat
from ..config import Cache, Layout, Mode
from ..host.truth import EntryKind, HostTruth, kind_of_mode, layout_premise
from ..version import Version
from .common import (
    Behaviour,
    Expectation,
    QemuMessages,
    Status,
    Verdict,
    _capped,
    _errno_text,
    _join,
    decided_behaviour,
    find_multidevs_messages,
    message_failures,
    outside_failures,
)
from .harm import Harm, HarmProbe, assess, harm_rules, predict
from .kernel import kernel_failures, kernel_lines
from .predict import denied_paths
from .remap import (
    RemapCheck,
    check_remap,
    fullmap_warning_failures,
    remap_failures,
    remap_notes,
)
from .witnesses import Witness

_CONTROL_TEXT = "single device (control): unique ids, no message"


@dataclass(frozen=True)
class Collision:
    """One guest id shared by several distinct host files."""

    guest_id: tuple[int, int]
    # (path, host st_dev, host st_ino), one per distinct host file, in truth order.
    host_files: tuple[tuple[str, int, int], ...]

    def describe(self) -> str:
        """One line naming the guest id and every host file behind it."""
        files = _join(f"{path!r} (host dev {dev}, ino {ino})" for path, dev, ino in self.host_files)
        dev, ino = self.guest_id
        return f"guest id (dev {dev}, ino {ino}) is shared by {files}"


# How many colliding ids a JSON row lists (the count is always whole).
JSON_COLLISIONS = 50


@dataclass(frozen=True, kw_only=True)
class IdsVerdict(Verdict):
    """The judgement of one mode on one export by the ids rules: the collisions, the
    denied paths, QEMU's message, the witnesses and the harm probe's findings."""

    mode: Mode
    collisions: tuple[Collision, ...]
    denied: int  # paths that got ENODEV in pass 1
    files_checked: int
    qemu_message: str | None
    witnesses: tuple[Witness, ...]  # empty: no witness ran (not asked, not observed)
    host_devices: int
    # What the harm probe found (None: no probe: a control, forbid, or not asked).
    harm: Harm | None = None
    # The guest kernel's log lines about 9p, netfs, FS-Cache, the VFS or trouble.
    dmesg: tuple[str, ...] = ()
    # Where QEMU remaps (remap, the default from 10.0): the model's ids held against
    # the guest's (None where QEMU passes host inode numbers through).
    remap: RemapCheck | None = None

    @property
    def witnesses_intact(self) -> bool | None:
        """Whether every witness that ran was intact; None when none ran."""
        ran = [w.intact for w in self.witnesses if w.ran]
        return all(ran) if ran else None

    def details(self) -> dict[str, Any]:
        return {
            "mode": self.mode.value,
            "host_devices": self.host_devices,
            "files_checked": self.files_checked,
            "guest_collisions": len(self.collisions),
            "collisions": [
                {"guest_id": list(c.guest_id),
                 "host_files": [{"path": p, "dev": d, "ino": i} for p, d, i in c.host_files]}
                for c in self.collisions[:JSON_COLLISIONS]
            ],
            "denied": self.denied,
            "qemu_message": self.qemu_message,
            "witnesses": {w.tool: {"intact": w.intact, "detail": w.detail, "rc": w.rc}
                          for w in self.witnesses},
            **self._harm_details(),
            "remap_model": None if self.remap is None else {
                "agrees": self.remap.agrees,
                "compared": self.remap.compared,
                "differences": list(self.remap.differences),
                "predicted_collisions": [
                    {"paths": list(p.paths), "why": p.why} for p in self.remap.predicted],
                "branches": dict(self.remap.branches),
                "fullmap_reached": self.remap.fullmap_reached,
            },
        }

    def _harm_details(self) -> dict[str, Any]:
        harm = self.harm
        return {
            "aliased": None if harm is None else [
                {"path": a.path, "how": a.how, "from": a.source} for a in harm.aliased],
            "predicted_aliasing": None if harm is None else list(harm.predicted),
            "cwd_moved": None if harm is None else harm.cwd_moved,
            "access_errors": None if harm is None else [
                {"path": path, "op": op, "errno": code} for path, op, code in harm.errors],
            "dmesg": list(self.dmesg),
        }


def collision_failure(collision: Collision) -> str:
    """The failure line of a collision where the mode promises none (one wording, so
    ``reproduce`` can tell which failures its collision table already says)."""
    return f"collision: {collision.describe()}"


def ids_verdict(verdict: Verdict) -> IdsVerdict | None:
    """``verdict`` when the ids rules made it (the rows that carry collisions, witnesses,
    harm and the remap model), else None: the one place a row's kind is asked."""
    return verdict if isinstance(verdict, IdsVerdict) else None


def _result_text(result: GuestResult) -> str:
    if isinstance(result, GuestStat):
        return f"(dev {result.dev}, ino {result.ino})"
    return _errno_text(result)


def find_collisions(truth: HostTruth, obs_pass: Mapping[str, GuestResult]) -> tuple[Collision, ...]:
    """Guest ids that stand for more than one distinct host file in one pass.

    Hard links are one host file (same host dev and ino), so a link pair sharing a
    guest id is correct, not a collision. Paths the guest could not stat are ignored.
    """
    owners: dict[tuple[int, int], dict[tuple[int, int], str]] = {}
    for entry in truth.entries:
        result = obs_pass.get(entry.path)
        if isinstance(result, GuestStat):
            owners.setdefault(result.guest_id, {}).setdefault(entry.file_id, entry.path)
    return tuple(
        Collision(guest_id, tuple((path, dev, ino) for (dev, ino), path in files.items()))
        for guest_id, files in owners.items()
        if len(files) > 1
    )


def _stability_failures(truth: HostTruth, observation: GuestObservation) -> list[str]:
    failures: list[str] = []
    for number in range(1, len(observation.passes)):
        before, after = observation.passes[number - 1], observation.passes[number]
        for path in truth.paths:
            old, new = before.get(path), after.get(path)
            if old is None or new is None:
                continue
            old_id = old.guest_id if isinstance(old, GuestStat) else old
            new_id = new.guest_id if isinstance(new, GuestStat) else new
            if old_id == new_id and type(old) is type(new):
                continue
            what = (
                "guest id"
                if isinstance(old, GuestStat) and isinstance(new, GuestStat)
                else "result"
            )
            failures.append(
                f"{what} of {path!r} changed between pass {number} and pass {number + 1}: "
                f"{_result_text(old)} -> {_result_text(new)}"
            )
    return _capped(failures, "paths changed between passes")


def _coverage_failures(truth: HostTruth, observation: GuestObservation) -> list[str]:
    if not observation.passes:
        return ["no stat pass was observed"]
    failures = []
    for number, results in enumerate(observation.passes, start=1):
        missing = [path for path in truth.paths if path not in results]
        failures += _capped(
            [f"{path!r} was not observed in pass {number}" for path in missing], "unobserved paths"
        )
    return failures


def _kind_failures(truth: HostTruth, first: Mapping[str, GuestResult]) -> list[str]:
    failures = []
    for entry in truth.entries:
        result = first.get(entry.path)
        # The guest's st_mode comes from QEMU's host lstat, so the file type must match.
        if isinstance(result, GuestStat) and kind_of_mode(result.mode) is not entry.kind:
            failures.append(
                f"{entry.path!r} is a {entry.kind} on the host but a "
                f"{kind_of_mode(result.mode)} in the guest"
            )
    return _capped(failures, "type mismatches")


def _nlink_failures(truth: HostTruth, first: Mapping[str, GuestResult],
                    excused: frozenset[str]) -> list[str]:
    """Every stat-able path's st_nlink must be the host's: QEMU's getattr passes the
    host's lstat through (9P2000.L), so a count that differs is a file taken for
    another or a lost hard link.  ``excused``: paths an inode cache may alias (warn,
    predicted), whose count may then be their twin's."""
    failures = [
        f"{entry.path!r} has st_nlink {result.nlink} in the guest, {entry.nlink} on the host"
        for entry in truth.entries
        if isinstance(result := first.get(entry.path), GuestStat)
        and result.nlink != entry.nlink and entry.path not in excused
    ]
    return _capped(failures, "st_nlink differences")


def _hard_link_failures(truth: HostTruth, first: Mapping[str, GuestResult]) -> list[str]:
    failures = []
    for paths in truth.by_file_id.values():
        if len(paths) < 2:
            continue
        ids = {
            result.guest_id for path in paths if isinstance(result := first.get(path), GuestStat)
        }
        if len(ids) > 1:
            shown = _join(f"{path!r} {_result_text(first[path])}" for path in paths)
            failures.append(f"hard links of one host file got different guest ids: {shown}")
    return _capped(failures, "split hard links")


def _unstatable(
    truth: HostTruth, first: Mapping[str, GuestResult], devices: set[int] | None
) -> list[str]:
    failures = []
    for entry in truth.entries:
        result = first.get(entry.path)
        if isinstance(result, int) and (devices is None or entry.device in devices):
            failures.append(f"{entry.path!r} is not stat-able in the guest: {_errno_text(result)}")
    return _capped(failures, "unstat-able paths")


def _dirent_failures(truth: HostTruth, observation: GuestObservation,
                     mount_points: frozenset[str] = frozenset()) -> list[str]:
    """readdir must list the host's names with the d_ino that lstat gives.

    Used where ids must be unique: QEMU stats every entry under remap (and on a single
    device d_ino is st_ino anyway), so a d_ino differing from lstat's st_ino is a
    second id for one file, which confuses find, du and tar as much as a collision.
    ``mount_points`` may differ: where a transport passes the host's readdir through
    (virtiofs), a mount point's d_ino is the covered directory's, as on the host.
    """
    first = observation.passes[0]
    children: dict[str, set[str]] = {}
    for path in truth.paths:
        if path != ".":
            parent, _, name = path.rpartition("/")
            children.setdefault(parent or ".", set()).add(name)
    failures: list[str] = []
    for directory, code in observation.dirent_errors.items():
        if directory not in truth.partial:
            failures.append(f"readdir of {directory!r} failed: {_errno_text(code)}")
    for directory, entries in observation.dirents.items():
        if directory in truth.partial:
            continue  # the host could not list it whole either (a user's tree)
        # A multiset: a name listed twice is a broken readdir (tar and cp would copy
        # it twice), not one name.
        listed = Counter(name for name, _ in entries)
        failures += [f"readdir of {directory!r} lists {name!r} {count} times"
                     for name, count in sorted(listed.items()) if count > 1]
        for name, d_ino in entries:
            child = name if directory == "." else f"{directory}/{name}"
            result = first.get(child)
            if isinstance(result, GuestStat) and result.ino != d_ino \
                    and child not in mount_points:
                failures.append(
                    f"readdir of {directory!r} gives {name!r} d_ino {d_ino}, "
                    f"but lstat gives ino {result.ino}"
                )
        host = children.get(directory, set())
        for name in sorted(host - set(listed)):
            failures.append(f"readdir of {directory!r} does not list {name!r}")
        for name in sorted(set(listed) - host):
            failures.append(
                f"readdir of {directory!r} lists {name!r}, which the host does not have"
            )
    return _capped(failures, "readdir problems")


def witness_notes(witnesses: Sequence[Witness], judged: bool) -> list[str]:
    """Witnesses not run, and under warn/forbid (not ``judged``: those modes promise
    nothing about the tools) which ones broke: that is the harm, recorded."""
    notes = [f"witness {w.tool} not run: {w.detail}" for w in witnesses if not w.ran]
    broken = [w.tool for w in witnesses if w.ran and not w.intact]
    if broken and not judged:
        notes.insert(0, f"witnesses broken: {', '.join(broken)} (results[].witnesses and "
                        f"reproduce say how)")
    return notes


def _witness_failures(witnesses: Sequence[Witness]) -> list[str]:
    return [f"witness {w.tool} not intact: {w.detail}" for w in witnesses
            if w.ran and not w.intact]


def unique_id_failures(
    truth: HostTruth, observation: GuestObservation, witnesses: Sequence[Witness],
    mount_points: frozenset[str] = frozenset(),
) -> list[str]:
    """Rules shared by remap, the single-device control and virtiofs with submounts:
    everything stat-able, no collision, hard links one id, readdir agreeing with lstat
    (but at ``mount_points``, see ``_dirent_failures``), every witness intact."""
    first = observation.passes[0]
    failures = _unstatable(truth, first, None)
    failures += _capped(
        [collision_failure(c) for c in find_collisions(truth, first)], "collisions"
    )
    failures += _hard_link_failures(truth, first)
    failures += _dirent_failures(truth, observation, mount_points)
    failures += _witness_failures(witnesses)
    return failures


def _predicted_loop(first: Mapping[str, GuestResult], path: str,
                    allowed: frozenset[str]) -> bool:
    """``path`` failed with ELOOP where the prediction allows it: an inode cache took a
    colliding directory for its twin (Linux 6.12 with loose or fscache; "VFS: Lookup
    of ... would have caused loop").  That is the one errno this harm is known to
    give, on the colliding paths alone: any other errno, or ELOOP elsewhere, fails."""
    return path in allowed and first.get(path) == errno.ELOOP


def _file_collision_expected(truth: HostTruth) -> bool:
    """Whether distinct regular files on different devices share an inode number, so
    warn must show a collision among files, not only among directories."""
    seen: dict[int, int] = {}
    for entry in truth.entries:
        if entry.kind is EntryKind.FILE and seen.setdefault(entry.ino, entry.dev) != entry.dev:
            return True
    return False


def _collision_failures(truth: HostTruth, first: Mapping[str, GuestResult],
                        allowed: frozenset[str]) -> list[str]:
    collisions = find_collisions(truth, first)
    # warn passes st_ino through: files collide exactly where their host numbers do.
    unexplained = [f"collision of files with different host inode numbers: {c.describe()}"
                   for c in collisions if len({ino for _, _, ino in c.host_files}) > 1]
    if unexplained:
        return _capped(unexplained, "unexplained collisions")
    # An inode cache that made the colliding paths unreachable (ELOOP) hides the
    # collision behind worse harm: that counts as having shown it.
    if any(_predicted_loop(first, path, allowed) for path in allowed):
        return []
    if not truth.repeated_inodes():
        return []  # nothing repeats (a layout that chose its numbers): nothing may collide
    if not collisions:
        return [f"expected at least one guest id collision (host inode numbers repeat "
                f"across {truth.device_count} devices), found none"]
    files = [c for c in collisions
             if any(truth.by_path[path].kind is EntryKind.FILE for path, _, _ in c.host_files)]
    if not files and _file_collision_expected(truth):
        return ["expected guest id collisions among regular files (their host inode numbers "
                "repeat across devices), found them only among directories"]
    return []


def _warn_failures(truth: HostTruth, observation: GuestObservation,
                   allowed: frozenset[str]) -> list[str]:
    """warn's rules; ``allowed``: paths an inode cache may make unreachable with ELOOP
    (predicted harm), noted by ``_extra`` instead."""
    first = observation.passes[0]
    failures = _collision_failures(truth, first, allowed)
    denied = [path for path in truth.paths if first.get(path) == errno.ENODEV]
    failures += _capped(
        [f"{path!r} was denied (ENODEV), which only multidevs=forbid may do" for path in denied],
        "denied paths",
    )
    others = [
        f"{path!r} is not stat-able in the guest: {_errno_text(result)}"
        for path in truth.paths
        if isinstance(result := first.get(path), int) and result != errno.ENODEV
        and not _predicted_loop(first, path, allowed)
    ]
    failures += _capped(others, "unstat-able paths")
    failures += _hard_link_failures(truth, first)
    return failures


def _forbid_failures(truth: HostTruth, observation: GuestObservation) -> list[str]:
    first = observation.passes[0]
    # Off the root's device, or below such a path (the lookup fails on the way there:
    # a user's tree may hold the root's filesystem again below another one).
    denied = frozenset(denied_paths(truth))
    failures = _capped(
        [f"{entry.path!r} is not stat-able in the guest: {_errno_text(result)}"
         for entry in truth.entries
         if entry.path not in denied and isinstance(result := first.get(entry.path), int)],
        "unstat-able paths")
    foreign: list[str] = []
    for entry in truth.entries:
        if entry.path not in denied:
            continue
        result = first.get(entry.path)
        if isinstance(result, GuestStat):
            foreign.append(
                f"foreign path {entry.path!r} (device {entry.device}) was stat-able under "
                f"multidevs=forbid, expected ENODEV"
            )
        elif result is not None and result != errno.ENODEV:
            foreign.append(
                f"foreign path {entry.path!r} (device {entry.device}) failed with "
                f"{_errno_text(result)}, expected ENODEV"
            )
    failures += _capped(foreign, "foreign paths not denied")
    failures += _capped(
        [collision_failure(c) for c in find_collisions(truth, first)], "collisions"
    )
    failures += _hard_link_failures(truth, first)
    return failures


def _observed_text(collisions: int, denied: int, messages: QemuMessages) -> str:
    parts = [
        f"{len(lines)} {name}{'' if len(lines) == 1 else 's'}"
        for lines, name in (
            (messages.warn, "warning"),
            (messages.forbid, "forbid message"),
            (messages.unknown, "unrecognised message"),
        )
        if lines
    ]
    said = ", ".join(parts) if parts else "no message"
    plural = "" if collisions == 1 else "s"
    return f"{collisions} collision{plural}, {denied} denied, {said}"


def observation_failures(truth: HostTruth, observation: GuestObservation,
                         excused: frozenset[str] = frozenset()) -> list[str]:
    """What every export's observation must show whatever the mode or transport: every
    path in every pass, the host's file types and st_nlink (but ``excused`` paths'),
    results stable between passes."""
    failures = _coverage_failures(truth, observation)
    if not observation.passes:
        return failures
    first = observation.passes[0]
    failures += _kind_failures(truth, first)
    failures += _nlink_failures(truth, first, excused)
    return failures + _stability_failures(truth, observation)


def _rule_failures(
    expectation: Expectation, control: bool, truth: HostTruth, observation: GuestObservation,
    witnesses: Sequence[Witness], allowed: frozenset[str] = frozenset(),
) -> list[str]:
    """The observation rules of one mode (module docstring), as exact failures."""
    failures = observation_failures(truth, observation, allowed)
    if not observation.passes:
        return failures
    if control:
        return failures + unique_id_failures(truth, observation, witnesses)
    if expectation is Expectation.UNIQUE_IDS:
        # Stability needs a second look: another lstat pass, or readdir's d_ino
        # (checked against lstat for every entry) for the scale run.
        if len(observation.passes) < 2 and not observation.dirents:
            failures.append("only 1 stat pass and no readdir observed; a second look is "
                            "needed to show ids are stable")
        return failures + unique_id_failures(truth, observation, witnesses)
    if expectation is Expectation.COLLIDE_AND_WARN:
        return failures + _warn_failures(truth, observation, allowed)
    return failures + _forbid_failures(truth, observation)


def _expectation_text(mode: Mode, behaviour: Behaviour, control: bool,
                      qemu_version: Version) -> str:
    if control:
        return _CONTROL_TEXT
    text = behaviour.expectation.text
    if mode is Mode.DEFAULT:
        return behaviour.text(f"{text} (default of QEMU {qemu_version})")
    return text


@dataclass(frozen=True)
class HarmInput:
    """The harm probe of one export: which twins, what the guest showed, where it was
    mounted, and the cache mode it was mounted with."""

    probe: HarmProbe
    seen: HarmObservation
    mount_point: str
    cache: Cache


@dataclass(frozen=True)
class _Extra:
    """What a row adds beyond the ids rules: harm, kernel log, a repeated message."""

    harm: Harm | None
    failures: tuple[str, ...]
    notes: tuple[str, ...]
    dmesg: tuple[str, ...]
    # Paths an inode cache may make unreachable here (warn, loose/fscache, predicted).
    allowed: frozenset[str] = frozenset()


def _unreachable_notes(truth: HostTruth, first: Mapping[str, GuestResult],
                       allowed: frozenset[str]) -> list[str]:
    return _capped([f"predicted harm: {path!r} is not stat-able: {_errno_text(errno.ELOOP)}"
                    for path in truth.paths if _predicted_loop(first, path, allowed)],
                   "unstat-able paths")


def _extra(expectation: Expectation, control: bool, truth: HostTruth, harm: HarmInput | None,
           dmesg: str, message_printed: bool, first: Mapping[str, GuestResult]) -> _Extra:
    """Harm (multi-device, not forbid), kernel trouble (every row), and the note that
    a message was already printed by this QEMU for an earlier export."""
    failures: list[str] = []
    notes: list[str] = []
    found = None
    allowed: frozenset[str] = frozenset()
    if harm is not None and not control and expectation is not Expectation.DENY_FOREIGN:
        unique = expectation is Expectation.UNIQUE_IDS
        prediction = predict(truth, unique)
        found = assess(truth, harm.probe, harm.seen, harm.mount_point, prediction)
        failures, notes = harm_rules(found, unique, harm.cache)
        if not unique and harm.cache.reuses_inodes:
            allowed = prediction.may_alias
            notes += _unreachable_notes(truth, first, allowed)
    kept, _ = kernel_lines(dmesg)
    failures += kernel_failures(dmesg)
    if message_printed and not control and expectation is not Expectation.UNIQUE_IDS:
        notes.append("message already printed by this QEMU (once per process) for an "
                     "earlier export of this mode")
    return _Extra(found, tuple(failures), tuple(notes), kept, allowed)


def _denied(truth: HostTruth, first: Mapping[str, GuestResult]) -> int:
    return sum(1 for path in truth.paths if first.get(path) == errno.ENODEV)


def _premise(truth: HostTruth, expectation: Expectation, layout: Layout | None) -> str | None:
    """Why the row proves nothing (its inconclusive failure), or None: the layout's own
    premise, else that an inode number repeats across the export's devices.  A user's
    tree (``Layout.EXPORT``) needs it under warn only: unique ids and denials are
    promised on any multi-device tree; warn's collision is not."""
    if layout is Layout.EXPORT and expectation is not Expectation.COLLIDE_AND_WARN:
        return None
    reason = layout_premise(layout, truth) if layout is not None else None if \
        truth.premise_holds else (f"the export spans {truth.device_count} host devices but "
                                  "no inode number repeats across them")
    return f"premise failed: {reason}, so this row proves nothing (inconclusive)" \
        if reason else None


def _harm_text(harm: Harm | None) -> str:
    if harm is None:
        return ""
    moved = {None: "", True: ", cwd moved", False: ", cwd stayed"}[harm.cwd_moved]
    codes = sorted({errno.errorcode.get(code, str(code)) for _, _, code in harm.errors if code})
    errors = f", {len(harm.errors)} access error{'s' * (len(harm.errors) != 1)} " \
        f"({', '.join(codes)})" if codes else ""
    return f"; {len({a.path for a in harm.aliased})} aliased{errors}{moved}"


def _remap_failures(remap: RemapCheck | None, collisions: Sequence[Collision],
                    qemu_stderr: str, fullmap_printed: bool) -> list[str]:
    """The model's explanation of each collision it predicted, and the rule on QEMU's
    full-map warning (expected exactly where the model's table overflows, once per
    process)."""
    explained = remap_failures(remap, (frozenset((d, i) for _, d, i in c.host_files)
                                       for c in collisions)) if remap is not None else []
    return explained + fullmap_warning_failures(remap, qemu_stderr, fullmap_printed)


def judge(
    mode: Mode,
    qemu_version: Version,
    truth: HostTruth,
    observation: GuestObservation,
    qemu_stderr: str,
    witnesses: Sequence[Witness] = (),
    *,
    stderr_outside: str = "",
    command_failures: Sequence[str] = (),
    message_printed: bool = False,
    harm: HarmInput | None = None,
    dmesg: str = "",
    layout: Layout | None = None,
    fullmap_printed: bool = False,
) -> IdsVerdict:
    """Judge one mode's export: the rules of the module docstring, as exact failures.
    ``qemu_stderr``: QEMU's stderr while this export alone was observed (outside every
    observation: ``stderr_outside``); ``command_failures``: libvirt's command line;
    ``message_printed``/``fullmap_printed``: this QEMU showed the mode's message / its
    full-map warning before (it prints each once per process); ``layout``: the layout
    whose premise (``host.truth.layout_premise``) the row needs (None: none)."""
    control = truth.device_count <= 1
    messages = find_multidevs_messages(qemu_stderr)
    first = observation.passes[0] if observation.passes else {}
    collisions, denied = find_collisions(truth, first), _denied(truth, first)
    behaviour = decided_behaviour(mode, qemu_version, bool(messages.warn or collisions))
    expectation = behaviour.expectation
    extra = _extra(expectation, control, truth, harm, dmesg, message_printed, first)
    notes = ([behaviour.note] if behaviour.note and not control else []) + list(extra.notes)
    remap = check_remap(truth, first, harm.probe.paths if harm else ()) \
        if expectation is Expectation.UNIQUE_IDS and first else None
    notes += remap_notes(remap) if remap is not None else []
    premise = _premise(truth, expectation, layout)
    if premise is not None:
        status, failures = Status.INCONCLUSIVE, [premise]
    else:
        failures = _rule_failures(expectation, control, truth, observation, witnesses,
                                  extra.allowed)
        failures += _remap_failures(remap, collisions, qemu_stderr, fullmap_printed)
        failures += message_failures(None if control else expectation, messages,
                                      message_printed)
        failures += outside_failures(stderr_outside)
        failures += [*command_failures, *extra.failures]
        status = Status.FAIL if failures else Status.PASS
        notes += witness_notes(witnesses, control or expectation is Expectation.UNIQUE_IDS)
    return IdsVerdict(
        mode=mode,
        expectation=_expectation_text(mode, behaviour, control, qemu_version),
        observed=_observed_text(len(collisions), denied, messages) + _harm_text(extra.harm),
        figure=_observed_text(len(collisions), denied, messages),
        status=status,
        failures=tuple(failures),
        collisions=collisions,
        denied=denied,
        files_checked=len(truth.entries), qemu_message=next(iter(messages.all), None),
        witnesses=tuple(witnesses), host_devices=truth.device_count, notes=tuple(notes),
        harm=extra.harm, dmesg=extra.dmesg, remap=remap,
    )


def unobserved(mode: Mode, devices: int, reason: str, status: Status) -> IdsVerdict:
    """The verdict of an export whose guest never got to be observed, or died under test.

    ``status`` is ERROR when the check could not run (the guest did not boot: a bad
    kernel, a missing package, a slow host) and FAIL when QEMU or the guest kernel
    died while the export was being observed (a crash under test is a regression).
    """
    return IdsVerdict(
        mode=mode,
        expectation="(not judged)",
        observed="not observed: " + ("the guest crashed under test" if status is Status.FAIL
                                     else "the check could not run"),
        status=status,
        failures=(reason,),
        collisions=(),
        denied=0,
        files_checked=0,
        qemu_message=None,
        witnesses=(),
        host_devices=devices,
    )
