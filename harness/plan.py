"""Planning a run: what was asked, which guests to boot with which exports, in what order.

Pure: no guest is booted here.  ``plan_guests`` decides which modes may share a
QEMU process (its messages are printed once per process), ``apply_checks`` adds
each further check family's exports to the guests of their modes, and ``row_rank``
puts the result rows in the order a reader expects.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path

from .agent.stat import AGENT_THREADS, STAT_PASSES
from .config import (
    ALL_CHECKS,
    DEFAULT_CACHES,
    DEFAULT_LAYOUTS,
    DEFAULT_TRANSPORTS,
    REMAP_DEFAULT_FROM_DEV,
    VIRTIOFS_ROWS,
    Cache,
    Check,
    Layout,
    Mode,
    RowKey,
    Transport,
    Via,
)
from .errors import UsageError
from .host.layout import ExportLayout
from .machine_options import MachineOptions
from .version import Version

# Observation order inside a shared guest.  remap goes first so that a remap that
# wrongly prints a multi-device message is caught in remap's own stderr slice.
_SHARED_ORDER = (Mode.REMAP, Mode.FORBID, Mode.WARN)

# What a run does unless --checks says otherwise: every family costing seconds at most.
DEFAULT_CHECKS = ALL_CHECKS


class Placement(StrEnum):
    """Where a family's exports sit among a run's guests."""

    # The mode rows themselves (``ids``): ``plan_guests`` lays them out, one export per
    # mode, layout and cache mode, with the controls.
    MODES = "modes"
    # One small export per multi-device mode, observed after the mode's ids export in
    # the same QEMU.  It needs no fresh multi-device message (QEMU prints each once per
    # process): such a family judges "the mode's own message at most once, no other",
    # and the ids row before it holds the exactly-once rule.
    TRAILING = "trailing"
    # One export per mode in the control guest, right after the (silent) controls and
    # before anything that may print a message: for a family whose export is one
    # device whatever the mode, so it must say nothing (``bind``).
    CONTROL = "control"


# Two devices: the root one and one foreign; two files each keep the mounts cheap.
FAMILY_LAYOUT = ExportLayout(devices=2, files_per_device=2)


@dataclass(frozen=True)
class FamilyRules:
    """Everything the planner, the pool and the report need to know about one check
    family, declared by the family itself (its ``rules`` in ``checks``) and handed to
    the planner by ``checks.registry``: the planner keeps no table of families."""

    name: Check
    placement: Placement
    # The export of a TRAILING or CONTROL family (MODES families use the run's layouts).
    layout: ExportLayout = FAMILY_LAYOUT
    # The one mode whose promise the family asks about (held_fd: only forbid promises
    # that a device it denies stays untouched); None: every mode.
    only_mode: Mode | None = None
    # Whether it creates, renames, mounts or binds in the export: a writing family
    # never runs over the user's own tree (--export).
    writes: bool = True
    # Whether it also gets one export per inode-caching cache mode of the run (loose,
    # fscache): cross_device, whose rename between twins sharing a guest inode is a
    # silent no-op there.
    per_inode_cache: bool = False
    # Whether it runs over virtiofs too (in the virtiofs guests, judged without a mode).
    virtiofs: bool = False
    # Whether it mounts on the host after QEMU started: a backend that starts QEMU in
    # a mount namespace of its own (libvirt) cannot run it (``checks_for``).
    mounts_after_start: bool = False
    # Whether its exports run the witnesses (when the run asks for them).
    witness: bool = True

    def runs_under(self, mode: Mode) -> bool:
        """Whether the family asks its question under ``mode``."""
        return self.only_mode is None or self.only_mode is mode


def _by_name(families: Sequence[FamilyRules], checks: Collection[Check],
             placement: Placement | None = None) -> list[FamilyRules]:
    """The families of ``checks`` (placed as ``placement``, when given), in the
    registry's order, which is the report's."""
    return [f for f in families if f.name in checks
            and (placement is None or f.placement is placement)]


@dataclass(frozen=True)
class RunOptions:
    """What ``multidevs-harness run`` was asked to do."""

    modes: tuple[Mode, ...]
    # The shape of the standard export (devices, files, nested); the other layouts
    # take its file count (see ``layout_shape``).
    layout: ExportLayout
    # Host layouts: each gets its own ids exports (one per mode and cache mode).
    layouts: tuple[Layout, ...] = DEFAULT_LAYOUTS
    # The guest's 9p cache modes: each (mode, cache) pair is a row on its own device.
    caches: tuple[Cache, ...] = DEFAULT_CACHES
    # Accelerator, kernel, modules, cold boots, firmware; its qemu and guest are
    # replaced by each of ``qemus`` and ``guests``.
    machine: MachineOptions = MachineOptions()
    # QEMU binaries to run the whole matrix on, in order; empty: the default one.
    qemus: tuple[str, ...] = ()
    # Guest recipes to run the whole matrix on, in order; empty: the default recipe.
    guests: tuple[str, ...] = ()
    logs: Path | None = None
    control: bool = True
    witness: bool = True
    jobs: int = 0
    via: Via = Via.QEMU
    share: bool = True
    # 1 pass + readdir is the scale run's budget; the matrix looks twice with lstat.
    passes: int = STAT_PASSES
    # A second vCPU and agent threads only pay off for very large exports.
    guest_cpus: int = 1
    agent_threads: int = AGENT_THREADS
    # Check families to run; see ``apply_checks``.
    checks: tuple[Check, ...] = DEFAULT_CHECKS
    # The known-issues list (None: the harness's own); --strict-known: a known issue
    # that did not reproduce fails the run.
    known_issues: Path | None = None
    strict_known: bool = False
    # The user's tree (``--export``; Layout.EXPORT in ``layouts``): only the families
    # that write nothing run (``FamilyRules.writes``).
    export: ExportLayout | None = None
    # 9p rows (every mode), virtiofs rows (with and without submounts), or both.
    transports: tuple[Transport, ...] = DEFAULT_TRANSPORTS


@dataclass(frozen=True)
class ExportPlan:
    """One export of a guest: its mode and shape, the check family that observes and
    judges it, and the guest's 9p cache mode; ``key`` is the result row it feeds.

    ``message_printed``: an earlier export of the same mode in this guest's QEMU has
    already shown its multi-device message (QEMU prints each once per process), so
    this export's slice of stderr cannot be expected to show it again.
    """

    mode: Mode
    layout: ExportLayout
    check: Check = Check.IDS
    cache: Cache = Cache.NONE
    message_printed: bool = False
    # Whether this export runs the witnesses (when the run asks for them; see
    # ``plan_guests``): each costs ~1.3 s of guest time under TCG.
    witness: bool = True
    # lstat passes of the ids observation and the agent's threads (``RunOptions``).
    passes: int = STAT_PASSES
    agent_threads: int = AGENT_THREADS
    # VIRTIOFS: served by virtiofsd, ``mode`` and ``cache`` unused (multidevs and cache=
    # are 9p's); ``submounts``: whether the daemon announces them.
    transport: Transport = Transport.NINEP
    submounts: bool = True
    # The mode's single-device control (``plan_guests``).
    control: bool = False

    @property
    def key(self) -> RowKey:
        """The result row this export feeds."""
        return RowKey(self.check, self.mode, self.cache, self.layout.kind, self.transport,
                      self.submounts, self.control)

    @property
    def row(self) -> str:
        """The name of the result row this export feeds."""
        return str(self.key)


# Layouts the mode guests (and the check families) are planned around.
_MAIN_LAYOUTS = (Layout.STANDARD, Layout.LOOP)
# Layouts whose export is one host device (the overlay's layers share its st_dev):
# judged as a control, and no multi-device message can come of them.
SINGLE_DEVICE_LAYOUTS = (Layout.OVERLAY,)
# Too many files for the witnesses' copies under TCG (~66,000).
NO_WITNESS_LAYOUTS = (Layout.SCRIPTED_FULLMAP,)


def layout_shape(kind: Layout, base: ExportLayout,
                 export: ExportLayout | None = None) -> ExportLayout:
    """The export shape of layout ``kind``: the standard one is ``base``; loop is two
    devices; the overlay one; the user's tree is ``export`` (``RunOptions.export``);
    the others keep ``base``'s file count and say they are multi-device (their
    builders decide the exact devices)."""
    if kind is Layout.STANDARD:
        return base
    if kind is Layout.EXPORT:
        if export is None:
            raise UsageError("the export layout is the user's tree and none was given",
                             hint="pass --export PATH")
        return export
    devices = 1 if kind in SINGLE_DEVICE_LAYOUTS else 2 if kind is Layout.LOOP else max(
        base.devices, 2)
    return ExportLayout(devices=devices, files_per_device=base.files_per_device, kind=kind)


def _witnessed(mode: Mode, layout: ExportLayout) -> bool:
    """Whether an export's witnesses can say something: not under forbid (it denies the
    other devices by design: every tool just fails), not on a layout too large for
    them, and on a single-device layout only where QEMU may remap (remap; the default
    from 10.0): warn and forbid pass one device's numbers through, as for a control,
    whose first export already runs them."""
    if mode is Mode.FORBID or layout.kind in NO_WITNESS_LAYOUTS:
        return False
    return layout.devices > 1 or mode in (Mode.REMAP, Mode.DEFAULT)


def mode_exports(mode: Mode, layouts: Sequence[ExportLayout],
                 caches: Sequence[Cache]) -> tuple[ExportPlan, ...]:
    """One export per layout and cache mode for ``mode``, in the order asked; every
    multi-device one after the first is marked ``message_printed`` (they share one
    QEMU, which prints the mode's message once)."""
    exports: list[ExportPlan] = []
    printed = False
    for layout in layouts:
        for cache in caches:
            exports.append(ExportPlan(
                mode, layout, cache=cache,
                message_printed=printed and layout.devices > 1,
                witness=_witnessed(mode, layout)))
            printed = printed or layout.devices > 1
    return tuple(exports)


@dataclass(frozen=True)
class GuestPlan:
    """One guest to boot: a name and its exports, in the order they are observed."""

    name: str
    exports: tuple[ExportPlan, ...]


def plan_guests(
    modes: Sequence[Mode], layout: ExportLayout, control: bool, share: bool = True,
    caches: Sequence[Cache] = (Cache.NONE,), layouts: Sequence[Layout] = (Layout.STANDARD,),
    export: ExportLayout | None = None,
) -> list[GuestPlan]:
    """Group the requested modes and the control exports into guests.

    QEMU prints each multi-device message at most once per process, and warn and
    the default (before QEMU 10) share one message, so they never share a guest.
    Inside a guest, exports are observed one after another and each is judged only
    on the stderr QEMU wrote while it was observed, so one mode's message cannot be
    taken for another's.  With ``share=False`` every mode gets a guest of its own.
    The control guest holds a single-device export per mode (it must stay silent)
    and, when sharing, the default mode's exports last.

    Every mode gets one export per layout and cache mode, side by side in its guest;
    only the first multi-device one can see the mode's message (see
    ``ExportPlan.message_printed``).  Controls use the standard layout's single device
    with cache=none only: a single device has no twins to alias.

    Witnesses run where their verdict says something: every mode but forbid (which
    denies the other devices by design, so every tool just fails) and the first
    control (a single device behaves alike in every mode; one control shows that the
    witnesses themselves raise no false alarm).
    """
    single = ExportLayout(devices=1, files_per_device=min(layout.files_per_device, 64))
    with_control = control and layout.devices > 1
    controls = [ExportPlan(m, single, witness=index == 0, control=True)
                for index, m in enumerate(modes)]
    main = [layout_shape(k, layout) for k in layouts if k in _MAIN_LAYOUTS]
    quiet = [layout_shape(k, layout) for k in layouts if k in SINGLE_DEVICE_LAYOUTS]
    apart = [layout_shape(k, layout, export) for k in layouts
             if k not in _MAIN_LAYOUTS and k not in SINGLE_DEVICE_LAYOUTS]
    silent = [e for m in modes for e in mode_exports(m, quiet, caches)]
    if not share:
        # A guest per mode; the single-device layouts still apart from every message
        # (a backend without live stderr judges each export on the whole of it).
        guests = [GuestPlan(m.value, mode_exports(m, main, caches)) for m in modes]
        quiet_guest = GuestPlan("control" if with_control else "quiet",
                                (*(controls if with_control else ()), *silent))
        guests += [quiet_guest] if quiet_guest.exports else []
    else:
        guests = _shared_guests(modes, main, caches, "")
        default = guests.pop() if guests and guests[-1].name == Mode.DEFAULT.value else None
        if with_control:
            # Single-device layouts print nothing in any mode: they ride with the
            # silent controls, before the default's exports.
            guests.append(GuestPlan("control+default" if default else "control",
                                    (*controls, *silent, *(default.exports if default else ()))))
        else:
            guests += [g for g in (GuestPlan("quiet", tuple(silent)), default) if g and g.exports]
    for shape in apart:  # each further layout in guests of its own: one QEMU has 24 slots
        guests += _shared_guests(modes, [shape], caches, f"@{shape.kind.value}") if share \
            else [GuestPlan(f"{m.value}@{shape.kind.value}", mode_exports(m, [shape], caches))
                  for m in modes]
    return guests


def _shared_guests(modes: Sequence[Mode], shapes: Sequence[ExportLayout],
                   caches: Sequence[Cache], suffix: str) -> list[GuestPlan]:
    """remap, forbid and warn in one guest and the default in another (it shares
    warn's message before QEMU 10), each mode with an export per layout and cache."""
    shared = [m for m in _SHARED_ORDER if m in modes]
    guests = []
    if shared and shapes:
        guests.append(GuestPlan("+".join(m.value for m in shared) + suffix, tuple(
            e for m in shared for e in mode_exports(m, shapes, caches))))
    if Mode.DEFAULT in modes and shapes:
        guests.append(GuestPlan(Mode.DEFAULT.value + suffix,
                                mode_exports(Mode.DEFAULT, shapes, caches)))
    return guests


def virtiofs_guests(layout: ExportLayout, layouts: Sequence[Layout],
                    families: Sequence[FamilyRules], checks: Sequence[Check],
                    settings: Sequence[bool] = (True, False)) -> list[GuestPlan]:
    """Two guests of their own, one per virtiofsd setting (submounts announced or
    not), each with an export of every layout of the run (a MODES family asked),
    judged by the virtiofs rules (``verdicts.virtiofs``), then one export per further
    family of ``checks`` that runs over virtiofs (a multi-device run only, as for 9p).
    virtiofs has no multidevs option: ``mode`` is DEFAULT ("not given") and unused.
    Witnesses run where the layout and the family allow them."""
    asked = [f for f in _by_name(families, checks) if f.virtiofs]
    shapes = [layout_shape(kind, layout) for kind in layouts] \
        if any(f.placement is Placement.MODES for f in asked) else []
    extras = [f for f in asked if f.placement is not Placement.MODES] \
        if layout.devices > 1 else []
    guests = []
    for submounts in settings:
        ids = [ExportPlan(Mode.DEFAULT, shape,
                          witness=shape.kind not in NO_WITNESS_LAYOUTS,
                          transport=Transport.VIRTIOFS, submounts=submounts)
               for shape in shapes]
        extra = [ExportPlan(Mode.DEFAULT, family.layout, family.name,
                            transport=Transport.VIRTIOFS,
                            submounts=submounts, witness=family.witness)
                 for family in extras]
        if ids or extra:
            guests.append(GuestPlan(VIRTIOFS_ROWS[submounts], (*ids, *extra)))
    return guests


# The submount settings each backend can ask for: libvirt (9.0) starts virtiofsd
# itself and its XML has no way to turn submounts off (1.13 announces them by
# default), so --via libvirt has the submount rows alone.
VIRTIOFS_SETTINGS = {Via.QEMU: (True, False), Via.LIBVIRT: (True,)}


def _family_caches(family: FamilyRules, caches: Sequence[Cache]) -> list[Cache]:
    """cache=none, then (``per_inode_cache`` families only) every cache mode that
    reuses inodes."""
    extra = [c for c in caches if c.reuses_inodes] if family.per_inode_cache else []
    return [Cache.NONE, *extra]


def apply_checks(plan: GuestPlan, families: Sequence[FamilyRules], checks: Sequence[Check],
                 done: Collection[Mode] = ()) -> GuestPlan:
    """``plan`` (from ``plan_guests``: MODES exports only) with the families of
    ``checks``: the mode exports (and controls) kept only if a MODES family is asked
    for, then the CONTROL families' exports (one per control), then one export per
    TRAILING family and multi-device mode of the guest, in the registry's order.

    The matrix applies it to each guest, so every TRAILING family's export shares the
    QEMU of its mode's ids export and comes after it; a CONTROL family joins the
    control guest after the controls and before anything that may print a message.
    A single-device run has no foreign device to operate on and gets no TRAILING
    exports; a run without controls gets no CONTROL rows.  Modes in ``done`` got their
    families in an earlier guest (a further layout's guest).
    """
    controls = [e for e in plan.exports if e.control]
    others = [e for e in plan.exports if not e.control]
    caches = list(dict.fromkeys(e.cache for e in others))
    # One family export per mode, however many cache exports the mode has.
    modes = list(dict.fromkeys(e.mode for e in others
                               if e.layout.devices > 1 and e.mode not in done))
    beside_controls = [ExportPlan(e.mode, f.layout, f.name, witness=f.witness)
                       for f in _by_name(families, checks, Placement.CONTROL)
                       for e in controls if f.runs_under(e.mode)]
    extra = [ExportPlan(mode, f.layout, f.name, cache=cache, witness=f.witness)
             for f in _by_name(families, checks, Placement.TRAILING)
             for mode in modes if f.runs_under(mode)
             for cache in _family_caches(f, caches)]
    if not _by_name(families, checks, Placement.MODES):
        controls, others = [], []
    return GuestPlan(plan.name, (*controls, *beside_controls, *others, *extra))


def checks_for(via: Via, families: Sequence[FamilyRules],
               checks: Sequence[Check]) -> tuple[tuple[Check, ...], tuple[Check, ...]]:
    """The families ``via`` can run, and those it cannot: libvirt starts QEMU in a
    mount namespace of its own, a copy taken at start that our private "/" never
    propagates into, so a family that mounts after start would test nothing there."""
    if via is Via.QEMU:
        return tuple(checks), ()
    late = {f.name for f in families if f.mounts_after_start}
    return (tuple(c for c in checks if c not in late), tuple(c for c in checks if c in late))


def row_rank(families: Sequence[FamilyRules], modes: Sequence[Mode],
             caches: Sequence[Cache] = (Cache.NONE,),
             layouts: Sequence[Layout] = (Layout.STANDARD,)) -> dict[str, int]:
    """Sort keys for result rows: modes in the order asked for (each with its layouts
    and cache modes in the order asked), then their controls, then each further
    family's rows (registry order, then modes as asked), then the virtiofs rows.

    Rows missing from the map (the libvirt rejection checks) sort after all of them.
    """
    further = [f for f in families if f.placement is not Placement.MODES]
    ids, virtiofs = Check.IDS, Transport.VIRTIOFS
    keys = [RowKey(ids, m, c, k) for m in modes for k in layouts for c in caches]
    keys += [RowKey(ids, m, control=True) for m in modes]
    keys += [RowKey(f.name, m, c) for f in further for m in modes if f.runs_under(m)
             for c in _family_caches(f, caches)]
    keys += [RowKey(ids, Mode.DEFAULT, layout=k, transport=virtiofs, submounts=submounts)
             for submounts in (True, False) for k in layouts]
    keys += [RowKey(f.name, Mode.DEFAULT, transport=virtiofs, submounts=submounts)
             for submounts in (True, False) for f in further if f.virtiofs]
    return {str(key): i for i, key in enumerate(keys)}


@dataclass(frozen=True)
class RunPlan:
    """Every guest of one run on one QEMU and guest recipe, complete before the first
    boot: each guest's exports with their families, and the families ``via`` cannot
    run (with why)."""

    guests: tuple[GuestPlan, ...]
    skipped: tuple[Check, ...] = ()
    # Families asked for that write to the export, left out of a run over the user's
    # own tree (``--export``), which is never written.
    writing_skipped: tuple[Check, ...] = ()


def plan_run(options: RunOptions, families: Sequence[FamilyRules], live_stderr: bool,
             qemu_version: Version | None = None) -> RunPlan:
    """The whole plan of ``options`` with the families of ``families`` (the registry's
    ``RULES``): guests (``plan_guests``; one guest per mode when the backend cannot
    read QEMU's stderr live), the families joined to them (``apply_checks``, less
    those ``options.via`` cannot run), and each export's observation options resolved
    (witnesses only where both the plan and the run want them, and where
    ``qemu_version``'s default may remap: ``_default_witnessed``)."""
    checks, skipped = checks_for(options.via, families, options.checks)
    writing: tuple[Check, ...] = ()
    if Layout.EXPORT in options.layouts:
        writes = {f.name for f in families if f.writes}
        writing = tuple(c for c in checks if c in writes)
        checks = tuple(c for c in checks if c not in writes)
    guests = plan_guests(options.modes, options.layout, options.control,
                         options.share and live_stderr, options.caches, options.layouts,
                         options.export) if Transport.NINEP in options.transports else []
    trailing = {f.name for f in families if f.placement is Placement.TRAILING}
    done: set[Mode] = set()
    planned_guests = []
    for guest in guests:
        planned_guests.append(apply_checks(guest, families, checks, done))
        done |= {e.mode for e in planned_guests[-1].exports if e.check in trailing}
    if Transport.VIRTIOFS in options.transports:
        planned_guests += virtiofs_guests(options.layout, options.layouts, families, checks,
                                          VIRTIOFS_SETTINGS[options.via])
    complete = []
    for planned in planned_guests:
        exports = tuple(replace(e, witness=e.witness and options.witness
                                and _default_witnessed(e, qemu_version),
                                passes=_passes(e, options), agent_threads=options.agent_threads)
                        for e in planned.exports)
        if exports:
            complete.append(GuestPlan(planned.name, exports))
    return RunPlan(tuple(complete), skipped, writing)


def _default_witnessed(export: ExportPlan, version: Version | None) -> bool:
    """``_witnessed`` gives a single-device export under the default mode witnesses
    because the default may be remap (10.0 on); a QEMU known to be older (below the
    9.2.50 development version that made it so) passes one device's numbers through
    as warn does, where the plan runs none: they could only repeat the control's."""
    if export.mode is not Mode.DEFAULT or export.layout.devices > 1 or version is None:
        return True
    return version >= REMAP_DEFAULT_FROM_DEV


def _passes(export: ExportPlan, options: RunOptions) -> int:
    """lstat passes for ``export``: one on the ~66,000-file layout (readdir's d_ino,
    checked against that pass, is its second look, as in the scale run), else the
    run's."""
    return 1 if export.layout.kind in NO_WITNESS_LAYOUTS else options.passes


def default_jobs() -> int:
    """Guests booted at once: one per CPU (TCG keeps one core busy per guest), at most 4."""
    return max(1, min(4, len(os.sched_getaffinity(0))))


def refuse_empty_selection(options: RunOptions, families: Sequence[FamilyRules]) -> None:
    """Refuse (UsageError, before anything is probed or booted) a selection that plans
    no row at all: each family asked is named with why it got none, e.g. the modes it
    runs under, instead of a run that ends in "0/0 rows passed"."""
    if plan_run(options, families, live_stderr=True).guests:
        return
    checks, skipped = checks_for(options.via, families, options.checks)
    modes = ",".join(m.value for m in options.modes)
    reasons = [f"--via {options.via.value} cannot run {check} (QEMU starts in a mount "
               "namespace of its own, which host mounts made later never reach)"
               for check in skipped]
    rules = {f.name: f for f in families}
    reasons += [_why_no_rows(rules[check], families, options, modes) for check in checks]
    raise UsageError(f"--checks {','.join(c.value for c in options.checks)} with --modes "
                     f"{modes} selects no rows: " + "; ".join(reasons),
                     hint="each clause names what to change: add a mode the family "
                     "runs under, drop the option that leaves it out, or pick other --checks")


def _why_no_rows(family: FamilyRules, families: Sequence[FamilyRules], options: RunOptions,
                 modes: str) -> str:
    """Why ``family`` planned no row under ``options`` (one clause)."""
    check = family.name
    if Layout.EXPORT in options.layouts and family.writes:
        read_only = ",".join(f.name.value for f in families if not f.writes)
        return (f"{check} writes into the export and an --export tree is never written "
                f"(over --export only {read_only} runs)")
    if Transport.NINEP not in options.transports and not family.virtiofs:
        return f"{check} runs over 9p only, and --transport is virtiofs"
    if family.only_mode is not None:
        return f"{check} runs under {family.only_mode} only, not under {modes}"
    if family.placement is Placement.CONTROL and not options.control:
        return f"{check} runs in the control guest, which --no-control leaves out"
    if family.placement is not Placement.MODES and options.layout.devices < 2:
        return f"{check} runs on a multi-device export, and --devices is 1"
    return f"{check} runs under {','.join(m.value for m in Mode)}, and plans no row here"
