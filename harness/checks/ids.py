"""SSH round trip side of the ``ids`` family: guest ids against host ids, QEMU's
messages, the harm of colliding ids and the witnesses.  Also the two SSH round trips the
families share: ``collect`` (harm probe, stat passes, kernel log) and ``run_witnesses``;
an ids export with witnesses does both in one round trip where it can (``observe_ids``)."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass, replace

from ..agent.collect import PATHS_FILE, GuestView, collection_script, parse_collection
from ..agent.harm import printf_command
from ..agent.stat import (
    AGENT_THREADS,
    STAT_PASSES,
    encode_paths,
)
from ..agent.witnesses import WitnessRuns, parse_witness_output, witness_script
from ..config import Check, Layout, Mode, Transport
from ..errors import GuestOutputError
from ..guest.lifecycle import Guest
from ..guest.shell import Shell
from ..guest.ssh import CommandResult
from ..host.truth import EntryKind, Export, HostTruth, layout_premise
from ..plan import ExportPlan, FamilyRules, Placement
from ..qemu.spec import ExportSpec
from ..verdicts.common import _capped
from ..verdicts.harm import HarmProbe, harm_probe
from ..verdicts.ids import HarmInput, IdsVerdict, judge
from ..verdicts.remap import FULLMAP_WARNING
from ..verdicts.virtiofs import judge_virtiofs
from ..verdicts.witnesses import Witness, judge_witnesses
from .family import Judging


def _witness_inputs(truth: HostTruth) -> tuple[list[str], list[str]]:
    """The paths whose copies are read back (no FIFO or socket: a read would block)
    and the special ones whose copies are lstat'ed instead."""
    paths = [e.path for e in truth.entries if e.kind is not EntryKind.OTHER]
    specials = [e.path for e in truth.entries if e.kind in (EntryKind.SYMLINK, EntryKind.OTHER)]
    return paths, specials


def finished(guest: Shell, result: CommandResult, text: str, what: str) -> str:
    """``text`` (a script's part of ``result``'s output) if it got to its end, else the
    error naming the script and the guest's console."""
    if "@@DONE" not in text:
        raise GuestOutputError(f"guest {what} script failed (rc {result.rc})",
                               hint=f"see {guest.console_path}",
                               details=result.stderr.decode(errors="replace")[-2000:])
    return text


def run_witnesses(guest: Shell, mount_point: str, truth: HostTruth) -> WitnessRuns:
    """Run every witness over ``mount_point`` in ``guest``: the copies' files are read
    back, their symlinks, FIFOs and sockets lstat'ed (a FIFO is never opened)."""
    paths, specials = _witness_inputs(truth)
    result = guest.run(f"sh -c {shlex.quote(witness_script(mount_point, specials))}",
                       stdin=encode_paths(paths))
    text = finished(guest, result, result.stdout.decode(errors="replace"), "witness")
    return parse_witness_output(text, paths, specials)


def collect(
    guest: Shell,
    mount_point: str,
    paths: Sequence[str],
    passes: int = STAT_PASSES,
    threads: int = AGENT_THREADS,
    harm: Sequence[str] = (),
) -> GuestView:
    """Run the collection script in ``guest`` over ``paths`` and parse what it printed;
    ``harm`` (pairs of paths) adds the harm probe."""
    script = collection_script(mount_point, passes, threads, harm)
    result = guest.run(f"sh -c {shlex.quote(script)}", stdin=encode_paths(paths))
    text = finished(guest, result, result.stdout.decode(errors="replace"), "collection")
    return parse_collection(text, paths, passes, harm)


class IdsCheck:
    """Guest ids against host ids, QEMU's messages, the harm and the witnesses
    (``verdicts.ids.judge``)."""

    # The mode rows themselves; it only reads the export, so it alone runs over the
    # user's own tree (--export), and over virtiofs it is the virtiofs rows.
    rules = FamilyRules(Check.IDS, Placement.MODES, writes=False, virtiofs=True)

    def observe(self, guest: Guest, spec: ExportSpec, export: Export,
                plan: ExportPlan) -> IdsSeen:
        probe = _probe(spec, export)
        if export.witness_skip is not None:
            plan = replace(plan, witness=False)
        return observe_ids(guest, spec.mount_point, export.truth, plan,
                           harm=probe.paths if probe else ())

    def judge(self, judging: Judging, seen: IdsSeen) -> IdsVerdict:
        view = seen.view
        truth = judging.export.truth
        probe = _probe(judging.spec, judging.export)
        harm = None
        if probe is not None and view.harm is not None:
            harm = HarmInput(probe, view.harm, judging.spec.mount_point, judging.spec.cache)
        if judging.spec.transport is Transport.VIRTIOFS:
            return judge_virtiofs(
                judging.spec.submounts, truth, view.observation, judging.stderr,
                witnesses_of(truth, seen), stderr_outside=judging.stderr_outside, harm=harm,
                dmesg=seen.dmesg,
                premise_failure=layout_premise(judging.export.layout.kind, truth))
        verdict = judge(
            judging.plan.mode, judging.qemu_version, truth, view.observation, judging.stderr,
            witnesses_of(truth, seen),
            stderr_outside=judging.stderr_outside, command_failures=judging.command_failures,
            message_printed=judging.plan.message_printed, harm=harm,
            dmesg=seen.dmesg, layout=judging.export.layout.kind,
            fullmap_printed=FULLMAP_WARNING in judging.stderr_before,
        )
        return replace(verdict, notes=verdict.notes + _export_notes(judging.export))


def _export_notes(export: Export) -> tuple[str, ...]:
    """What a user's tree kept from the row: skipped witnesses, paths not seen whole
    (recorded, not held against QEMU), the harm probe (no twins were built there)."""
    if export.layout.kind is not Layout.EXPORT:
        return ()
    unseen = [f"not seen whole on the host: {line}" for line in export.unseen]
    return (*([export.witness_skip] if export.witness_skip else ()),
            *_capped(unseen, "paths not seen whole"),
            "harm probe not run: the tree has no twins built for it")


# Layouts whose devices carry the twins (``host.truth.TWIN_*``) the probe needs.
_TWIN_LAYOUTS = (Layout.STANDARD, Layout.LOOP)


def _probe(spec: ExportSpec, export: Export) -> HarmProbe | None:
    """The twins to probe for aliasing: none under forbid (the twins on other devices
    are denied), on a single device or on a layout without twins."""
    if spec.mode is Mode.FORBID or export.layout.kind not in _TWIN_LAYOUTS:
        return None
    return harm_probe([device.relpath for device in export.devices], export.layout.loop)


@dataclass(frozen=True)
class IdsSeen:
    """The collection (harm probe, stat passes, kernel log) and the witnesses run after
    it (None: not asked)."""

    view: GuestView
    witnesses: WitnessRuns | None

    @property
    def dmesg(self) -> str:
        """The guest kernel's log over the whole observation, witnesses included."""
        return self.view.dmesg + (self.witnesses.dmesg if self.witnesses else "")


# The largest read-back list spelled out in the script (``printf``) rather than sent
# on stdin: the script is one argument of ``sh -c``, which Linux caps at 128 KiB.
_INLINE_PATHS_MAX = 32 << 10
_WITNESS_PATHS = "/tmp/mdh-wpaths"


def _witness_paths_line(paths: Sequence[str], truth: HostTruth) -> str | None:
    """The script line giving the witnesses' read-back paths beside the collection's:
    none when they are the collection's own (its paths file is read), a ``printf``
    into their own file when the list is small, else None (a second round trip)."""
    if tuple(paths) == truth.paths:
        return ""
    line = f"{printf_command(encode_paths(paths))} > {_WITNESS_PATHS}"
    return line if len(line) <= _INLINE_PATHS_MAX else None


def observe_ids(guest: Shell, mount_point: str, truth: HostTruth, plan: ExportPlan,
                harm: Sequence[str] = ()) -> IdsSeen:
    """One export's ids (and ``harm`` pairs), then the witnesses if asked, in one round
    trip: the witness script reads back the collection's paths file, or (a FIFO or
    socket among the paths, whose copies are never opened) a list of its own spelled
    out in the script; only a list too long for that takes a second round trip."""
    paths, specials = _witness_inputs(truth)
    inline = _witness_paths_line(paths, truth) if plan.witness else None
    if inline is None:
        view = collect(guest, mount_point, truth.paths, plan.passes, plan.agent_threads,
                       harm=harm)
        return IdsSeen(view, run_witnesses(guest, mount_point, truth) if plan.witness
                       else None)
    script = (collection_script(mount_point, plan.passes, plan.agent_threads, harm,
                                keep_paths=not inline)
              + (inline + "\n" if inline else "")
              + witness_script(mount_point, specials,
                               paths_file=_WITNESS_PATHS if inline else PATHS_FILE))
    result = guest.run(f"sh -c {shlex.quote(script)}", stdin=encode_paths(truth.paths))
    collected, done, witnessed = result.stdout.decode(errors="replace").partition("@@DONE\n")
    view = parse_collection(finished(guest, result, collected + done, "collection"),
                            truth.paths, plan.passes, harm)
    runs = parse_witness_output(finished(guest, result, witnessed, "witness"), paths,
                                specials)
    return IdsSeen(view, runs)


def witnesses_of(truth: HostTruth, seen: IdsSeen) -> tuple[Witness, ...]:
    """The witnesses judged against ``truth`` (the first stat pass says why a listing
    tool skipped a path)."""
    passes = seen.view.observation.passes
    return judge_witnesses(truth, seen.witnesses, passes[0] if passes else {})
