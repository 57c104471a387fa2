"""Render the result schema (``results``) as a terminal table, JSON and JUnit XML.

One function per format; every JSON key is documented in docs/reports.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import sys
import textwrap
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .config import Layout, Transport
from .errors import ReportWriteError, UsageError
from .results import EXIT_ERROR, EnvironmentRecord, ResultRow, RunResults
from .verdicts.common import Status
from .verdicts.ids import JSON_COLLISIONS, ids_verdict

# Colliding guest ids listed per row of a user's tree (``--export``), worst first.
EXPORT_SHOWN = 5
# Failure lines of a known-issue row shown in the table (the evidence, briefly).
KNOWN_SHOWN = 4


def _witness_text(row: ResultRow) -> str:
    ids = ids_verdict(row.verdict)
    if ids is None or ids.witnesses_intact is None:
        return "n/a"
    ran = [w for w in ids.witnesses if w.ran]
    broken = sum(1 for w in ran if not w.intact)
    return f"{broken}/{len(ran)} broken" if broken else "intact"


def _guest_text(row: ResultRow) -> str:
    return row.guest.kernel if row.guest else "-"


def _qemu_text(row: ResultRow) -> str:
    env = row.environment
    return f"{env.qemu.version} ({env.qemu.binary})" if env else "-"


def _layout_text(row: ResultRow) -> str:
    return row.layout or "-"


def _transport_text(row: ResultRow) -> str:
    return row.transport or "-"


def _verdict_text(row: ResultRow) -> str:
    known = f" ({row.known_issue.id})" if row.known_issue else ""
    return row.status.value.upper() + known


def _qemu_version(row: ResultRow) -> str:
    # The table column; the summary line and JUnit name the binaries in full.
    return str(row.environment.qemu.version) if row.environment else "-"


def table(report: RunResults, wide: bool = False) -> str:
    """The verdict table, then every failure and note behind the name of its row.

    By default the table fits ``TABLE_WIDTH`` columns whatever the terminal (a CI log
    gets the same table): each row's expectation is a key into a legend printed once
    below it, the observed text is the row's figure (its counts), a known row says
    KNOWN (the issue is named under "known issues"), and an observed text too long for
    what is left wraps within its column.  ``wide`` is the full table: the expectation
    in every row, as wide as the longest cell.  Layout, transport, guest and qemu
    columns are added when the rows are about more than one of them."""
    lines = _wide_lines(report) if wide else _narrow_lines(report)
    for title, attribute in (("failures", "failures"), ("notes", "notes")):
        found = [(r.case, text) for r in report.rows for text in getattr(r, attribute)
                 if r.status is not Status.KNOWN or attribute == "notes"]
        if found:
            lines += ["", f"{title}:"] + [f"  [{case}] {text}" for case, text in found]
    lines += _known_lines(report)
    return "\n".join(lines)


# The narrow table's width: an 80-column terminal wraps it once at most, a 100-column
# one or a CI log viewer not at all.
TABLE_WIDTH = 100
# Below this the observed column is not narrowed further (a row then wraps more).
_OBSERVED_MIN = 20
_GAP = "  "


def _extra_columns(report: RunResults) -> list[tuple[str, Callable[[ResultRow], str]]]:
    """The columns that tell rows apart only when the run spans several values."""
    return [(title, label) for title, value, label in (
        ("layout", _layout_text, _layout_text),
        ("transport", _transport_text, _transport_text),
        ("guest", _guest_text, _guest_text),
        ("qemu", _qemu_text, _qemu_version)) if len({value(r) for r in report.rows}) > 1]


def _wide_lines(report: RunResults) -> list[str]:
    headers = ["case", "expectation", "observed", "witnesses", "verdict"]
    rows = [[r.case, r.verdict.expectation, r.verdict.observed, _witness_text(r),
             _verdict_text(r)] for r in report.rows]
    for title, label in _extra_columns(report):
        headers.insert(1, title)
        for row, result in zip(rows, report.rows, strict=True):
            row.insert(1, label(result))
    return _render(headers, [[row] for row in rows])


def _short_case(row: ResultRow, layout_shown: bool) -> str:
    # With a layout column the case's own "@layout" says it twice.
    suffix = f"@{row.layout}"
    return row.case.removesuffix(suffix) if layout_shown and row.layout else row.case


def _narrow_lines(report: RunResults) -> list[str]:
    extra = _extra_columns(report)
    keys = expectation_keys(report)
    layout_shown = any(title == "layout" for title, _ in extra)
    headers = ["case", *(title for title, _ in extra), "exp", "observed", "witnesses",
               "verdict"]
    cells = [[_short_case(r, layout_shown), *(label(r) for _, label in extra),
              keys[r.verdict.expectation], r.verdict.figure or r.verdict.observed,
              _witness_text(r), r.status.value.upper()] for r in report.rows]
    observed = headers.index("observed")
    others = sum(max(len(c) for c in (h, *(row[i] for row in cells)))
                 for i, h in enumerate(headers) if i != observed)
    room = max(_OBSERVED_MIN, TABLE_WIDTH - others - len(_GAP) * (len(headers) - 1))
    rows = []
    for row in cells:
        pieces = textwrap.wrap(row[observed], room, break_long_words=False,
                               break_on_hyphens=False) or [""]
        rows.append([row[:observed] + [pieces[0]] + row[observed + 1:]]
                    + [[""] * observed + [piece] + [""] * (len(row) - observed - 1)
                       for piece in pieces[1:]])
    legend = ["", "expectations:"]
    for text, key in keys.items():
        legend += textwrap.wrap(text, TABLE_WIDTH, initial_indent=f"  {key:<4}",
                                subsequent_indent=" " * 6, break_long_words=False,
                                break_on_hyphens=False)
    return _render(headers, rows) + legend


def expectation_keys(report: RunResults) -> dict[str, str]:
    """Each distinct expectation text of the rows, in order of first appearance, with
    its legend key (E1, E2, ...)."""
    texts = dict.fromkeys(r.verdict.expectation for r in report.rows)
    return {text: f"E{n}" for n, text in enumerate(texts, 1)}


def _render(headers: list[str], rows: list[list[list[str]]]) -> list[str]:
    """Headers, a rule and each row (one or more lines), every column padded to its
    widest cell."""
    flat = [line for row in rows for line in row]
    widths = [max(len(str(line[i])) for line in (headers, *flat)) for i in range(len(headers))]
    out = [_GAP.join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip(),
           _GAP.join("-" * w for w in widths)]
    out += [_GAP.join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
            for line in flat]
    return out


def markdown(report: RunResults) -> str:
    """The verdict table as Markdown (a GitHub step summary, a GitLab artifact): every
    row with its full expectation and observed text, the known issue by name, then the
    failures behind the name of their row and the summary line."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    extra = _extra_columns(report)
    headers = ["case", *(title for title, _ in extra), "expectation", "observed",
               "witnesses", "verdict"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(c) for c in (
        f"`{r.case}`", *(label(r) for _, label in extra), r.verdict.expectation,
        r.verdict.observed, _witness_text(r), f"**{_verdict_text(r)}**")) + " |"
        for r in report.rows]
    failures = [(r.case, text) for r in report.rows if r.status is not Status.KNOWN
                for text in r.failures]
    if failures:
        lines += ["", "Failures:", ""] + [f"- `{case}`: {cell(text)}" for case, text in failures]
    lines += ["", summary_line(report)]
    return "\n".join(lines) + "\n"


def _known_lines(report: RunResults) -> list[str]:
    """The table's account of known issues: each known bug once (its title, wrapped to
    the table's width, and how to reproduce it), then each row it explains with the
    first of its failures (the evidence); and each known bug that did not reproduce."""
    lines: list[str] = []
    explained: dict[str, list[ResultRow]] = {}
    for row in report.rows:
        if row.known_issue is not None:
            explained.setdefault(row.known_issue.id, []).append(row)
    if explained:
        lines += ["", "known issues (failures a known bug explains; not counted as news):"]
    for rows in explained.values():
        issue = rows[0].known_issue
        assert issue is not None  # grouped by it above
        lines += textwrap.wrap(f"{issue.id}: {issue.title}", TABLE_WIDTH, initial_indent="  ",
                               subsequent_indent="      ", break_long_words=False,
                               break_on_hyphens=False)
        lines.append(f"    reproduce: {issue.reproducer}")
        for row in rows:
            lines.append(f"    [{row.case}]")
            lines += [f"      {text}" for text in row.failures[:KNOWN_SHOWN]]
            if len(row.failures) > KNOWN_SHOWN:
                lines.append(f"      ... ({len(row.failures) - KNOWN_SHOWN} more in the "
                             "JSON report)")
    absent = [(r.case, i.id) for r in report.rows for i in r.unreproduced]
    if absent:
        lines += ["", "known issues that did not reproduce (fixed? --strict-known fails):"]
        lines += [f"  [{case}] {issue_id}" for case, issue_id in absent]
    return lines


def summary_line(report: RunResults) -> str:
    """One line for the end of the terminal output."""
    counts = {s: sum(r.status is s for r in report.rows) for s in Status}
    others = ", ".join(f"{counts[s]} {s.value}" for s in Status
                       if s is not Status.PASS and counts[s])
    record = report.environment.as_dict()
    accel = record["accel"]
    # The reason (a QEMU assertion, say) was said once, on the accelerator line at the
    # start, and is in every report; the summary only says that it fell back.
    note = " (fell back from KVM: see the accelerator line)" if accel["fell_back"] else ""
    envs = report.environments or (report.environment,)
    qemus = ", ".join(dict.fromkeys(f"{e.qemu.version} ({e.qemu.binary})" for e in envs))
    kernels = ", ".join(dict.fromkeys(str(e.guest_kernel) for e in envs))
    absent = report.unreproduced
    unreproduced = f"; known issues not reproduced: {', '.join(absent)}" if absent else ""
    return (
        f"{counts[Status.PASS]}/{len(report.rows)} rows passed"
        f"{' (' + others + ')' if others else ''} in {report.wall_seconds:.1f} s "
        f"under {accel['used']}{note}; QEMU {qemus}; guest kernel {kernels}{unreproduced}"
    )


def row_dict(row: ResultRow, logs_kept: bool = True) -> dict[str, Any]:
    """The JSON object of one result row (keys documented in docs/reports.md).

    ``log_dir`` is null when the run's logs were removed (a passing run).
    """
    verdict = row.verdict
    data: dict[str, Any] = {
        "case": row.case,
        "check": row.check,
        "transport": row.transport,
        "layout": row.layout,
        "known_issue": None if row.known_issue is None else {
            "id": row.known_issue.id, "title": row.known_issue.title,
            "reproducer": row.known_issue.reproducer,
            "reference": row.known_issue.reference},
        "known_unreproduced": [issue.id for issue in row.unreproduced],
        "cache": row.cache,
        "mounted_cache": row.mounted_cache,
        "via": row.via.value,
        "status": row.status.value,
        "passed": row.passed,
        "inconclusive": row.status is Status.INCONCLUSIVE,
        "expectation": verdict.expectation,
        "observed": verdict.observed,
        "failures": list(row.failures),
        "notes": list(row.notes),
        "guest": None if row.guest is None else {
            "name": row.guest.name, "kernel": row.guest.kernel, "build": row.guest.build,
            "plan": row.guest.plan},
        "boot": None if row.start is None else row.start.value,
        "boot_seconds": None if row.boot_seconds is None else round(row.boot_seconds, 3),
        "observe_seconds": None if row.observe_seconds is None
        else round(row.observe_seconds, 3),
        "log_dir": None if row.log_dir is None or not logs_kept else str(row.log_dir),
        "qemu_command": row.qemu_command,
        "guest_command": row.guest_command,
        "backend": dict(row.backend),
        "qemu": None if row.environment is None else {
            "binary": str(row.environment.qemu.binary),
            "version": str(row.environment.qemu.version)},
    }
    data.update(verdict.details())
    if row.transport == Transport.VIRTIOFS:
        data["mode"] = None  # multidevs is 9p's: a virtiofs row has no mode
    return data


def environment_json(record: EnvironmentRecord) -> dict[str, Any]:
    """``probe --json``: the environment block alone."""
    return dict(record.as_dict())


def to_json(report: RunResults) -> dict[str, Any]:
    """``run --json``: the environment block, the run's facts and every row."""
    return {
        **report.environment.as_dict(),
        "passed": report.passed,
        "exit_code": report.exit_code,
        "wall_seconds": round(report.wall_seconds, 3),
        "log_dir": report.log_dir if report.logs_kept else None,
        "known_unreproduced": list(report.unreproduced),
        "qemu_warnings_on_harness_options": list(report.own_option_notices),
        "environments": [environment_json(e) for e in report.environments],
        "results": [row_dict(r, report.logs_kept) for r in report.rows],
    }


def check_destination(path: Path, option: str) -> None:
    """Refuse a report path that cannot be written, before anything boots (exit 2).

    Found only after the run, the report would be lost with the run's work.  A
    directory is refused.  A device or pipe (``/dev/null``, ``>(jq .)``) must be
    writable, as the report is written through it.  Otherwise the parents are made now
    (the writers would make them anyway) and a file is created and removed beside the
    report, since the writers replace it atomically.
    """
    import tempfile

    if is_stdout(path):
        return
    try:
        with contextlib.suppress(FileNotFoundError):
            path.stat()  # a loop of symbolic links (ELOOP) is no place for a report
        if path.is_dir():
            raise IsADirectoryError(21, "Is a directory")
        if _streamed(path):
            if not os.access(path, os.W_OK):
                raise PermissionError(13, "Permission denied")
            return
        target = _regular_target(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}."):
            pass
    except OSError as exc:
        raise UsageError(f"{option} {path} cannot be written: {exc.strerror}",
                         hint=f"pass {option} a file in a writable directory") from exc


def check_destinations(reports: Sequence[tuple[str, Path]],
                       inputs: Sequence[tuple[str, Path]]) -> None:
    """Refuse, before anything boots (exit 2), report paths that are no report's place:
    each as ``check_destination``; a path that is also another report's (one would
    overwrite the other), or that is one of the run's inputs or under one (``inputs``:
    option and path, e.g. ``--kernel``, the ``--export`` tree): the report would
    replace the kernel, the known-issues list, QEMU itself or a file of the tree under
    test.  A character device (``/dev/null``, stdout's terminal) is exempt, since a
    report is written through it and never replaces it.
    """
    placed: list[tuple[str, Path]] = []
    for option, path in reports:
        if _is_char_device(path):
            check_destination(path, option)
            continue
        for other_option, other in placed:
            if _same_file(path, other):
                raise UsageError(f"{option} {path} is also the {other_option} report's path; "
                                 "one report would overwrite the other",
                                 hint=f"give {option} and {other_option} a file each")
        for input_option, source in inputs:
            if _same_file(path, source) or _under(path, source):
                raise UsageError(f"{option} {path} is "
                                 f"{'under ' if _under(path, source) else ''}the "
                                 f"{input_option} this run reads; the report would "
                                 f"{'write into' if _under(path, source) else 'replace'} it",
                                 hint=f"pass {option} a file of its own")
        # Last: it makes the report's parent directories.
        check_destination(path, option)
        placed.append((option, path))


def is_stdout(path: Path) -> bool:
    """True if ``path`` means the harness's own stdout: ``-``, ``/dev/stdout``, or any
    name of the file descriptor 1 has open.  A report there is printed: opening the
    name would truncate a redirected file, replacing it would detach the redirection."""
    if str(path) in ("-", "/dev/stdout", "/dev/fd/1", "/proc/self/fd/1"):
        return True
    try:
        mine, named = os.fstat(1), path.stat()
    except OSError:
        return False
    return (mine.st_dev, mine.st_ino) == (named.st_dev, named.st_ino)


def _streamed(path: Path) -> bool:
    """True if ``path`` exists and is neither a regular file nor a directory (a device,
    a FIFO, a pipe's /dev/fd entry): a report goes through it, it is never replaced."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def _is_char_device(path: Path) -> bool:
    try:
        return stat.S_ISCHR(path.stat().st_mode)
    except OSError:
        return False


def _regular_target(path: Path) -> Path:
    """The file a report at ``path`` replaces: a symbolic link's target, so the link
    goes on naming the report instead of being turned into a file."""
    return Path(os.path.realpath(path))


def _under(path: Path, tree: Path) -> bool:
    """True if ``path`` lies inside the directory ``tree`` (symbolic links resolved)."""
    return os.path.realpath(path).startswith(os.path.realpath(tree).rstrip("/") + "/")


def _same_file(one: Path, other: Path) -> bool:
    """The same file by either name: one resolved path, or one inode (a hard link)."""
    if os.path.realpath(one) == os.path.realpath(other) or is_stdout(one) and is_stdout(other):
        return True
    try:
        return os.path.samefile(one, other)
    except OSError:
        return False


def _write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a file beside it: a reader (or a run killed
    mid-write) never leaves half a report.  A device or pipe is written through
    instead: replacing ``/dev/null`` would leave a regular file in its place.  A
    failure (``/dev/full``, a disk filled during the run) is ours to say, not a fault."""
    try:
        _write_to(path, data)
    except OSError as exc:
        raise ReportWriteError(f"the report {path} could not be written: {exc.strerror}",
                               hint="the table above holds the rows; pass a path on a "
                               "filesystem with room (or a device that takes writes)") from exc


def _write_to(path: Path, data: bytes) -> None:
    if is_stdout(path):
        _print(data)
        return
    if _streamed(path):
        if stat.S_ISSOCK(path.stat().st_mode):
            # A listening socket (a log collector's) takes the report as one stream.
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as peer:
                peer.connect(os.fspath(path))
                peer.sendall(data)
            return
        with path.open("wb") as stream:
            stream.write(data)
        return
    target = _regular_target(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        partial.write_bytes(data)
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)


def _print(data: bytes) -> None:
    # Straight to descriptor 1, after whatever was printed before; a reader that went
    # away takes the report and nothing else (as the CLI's own printing).
    sys.stdout.flush()
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(1, view):]
    except BrokenPipeError:
        pass


def write_json(data: dict[str, Any], path: Path) -> None:
    """Write a JSON document (parents created)."""
    # default=str: a listing's paths (image list) are written as their text.
    _write(path, (json.dumps(data, indent=2, default=str) + "\n").encode())


def write_text(text: str, path: Path) -> None:
    """Write a text report, e.g. Markdown (parents created)."""
    _write(path, text.encode())


def _junit_outcome(case: ET.Element, row: ResultRow) -> None:
    text = "\n".join(row.failures) + f"\nlogs: {row.log_dir}\n"
    message = "; ".join(row.failures)[:1000]
    if row.status is Status.FAIL:
        ET.SubElement(case, "failure", message=message, type="regression").text = text
    elif row.status in (Status.ERROR, Status.INCONCLUSIVE):
        ET.SubElement(case, "error", message=message, type=row.status.value).text = text
    elif row.known_issue is not None:
        issue = row.known_issue
        ET.SubElement(case, "skipped", message=f"known issue {issue.id}: {issue.title}"
                      ).text = f"reproduce: {issue.reproducer}\n{text}"


def to_junit(report: RunResults) -> ET.Element:
    """JUnit XML: one testcase per row; fail is a <failure>, error and inconclusive
    an <error> (CI retries those), each carrying the exact reasons."""
    statuses = [r.status for r in report.rows]
    suite = ET.Element(
        "testsuite", name="multidevs-harness", tests=str(len(report.rows)),
        failures=str(statuses.count(Status.FAIL)),
        errors=str(statuses.count(Status.ERROR) + statuses.count(Status.INCONCLUSIVE)),
        skipped=str(statuses.count(Status.KNOWN)),
        time=f"{report.wall_seconds:.3f}",
    )
    props = ET.SubElement(suite, "properties")
    for name, value in report.environment.properties():
        ET.SubElement(props, "property", name=name, value=value)
    several_qemus = len({_qemu_text(r) for r in report.rows}) > 1
    for row in report.rows:
        guest = row.guest.name if row.guest else "libvirt"
        # Case names recur once per QEMU: the version keeps them apart.
        name = f"{row.case} [{_qemu_text(row)}]" if several_qemus else row.case
        case = ET.SubElement(suite, "testcase", classname=f"multidevs.{row.via.value}.{guest}",
                             name=name, time=f"{row.boot_seconds or 0.0:.3f}")
        _junit_outcome(case, row)
        out = ET.SubElement(case, "system-out")
        out.text = "".join(f"{line}\n" for line in (
            f"status: {row.status.value}", f"expectation: {row.verdict.expectation}",
            f"observed: {row.verdict.observed}", *(f"note: {n}" for n in row.notes)))
    return suite


def write_junit(report: RunResults, path: Path) -> None:
    """Write the JUnit XML report (parents created)."""
    _write(path, _xml(to_junit(report)))


def _xml(root: ET.Element) -> bytes:
    ET.indent(root)
    data: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return data + b"\n"


def write_unrun(message: str, json_path: Path | None, junit_path: Path | None,
                markdown_path: Path | None = None) -> None:
    """Reports of a run that ended before it had rows (bad input, a harness fault):
    exit code 2 and the reason, so a CI job that reads them sees why, not nothing."""
    if markdown_path is not None:
        write_text(f"**multidevs-harness did not run** (exit {EXIT_ERROR}): {message}\n",
                   markdown_path)
    if json_path is not None:
        write_json({"passed": False, "exit_code": EXIT_ERROR, "error": message,
                    "results": []}, json_path)
    if junit_path is not None:
        suite = ET.Element("testsuite", name="multidevs-harness", tests="1", failures="0",
                           errors="1", skipped="0", time="0.000")
        case = ET.SubElement(suite, "testcase", classname="multidevs", name="run")
        ET.SubElement(case, "error", message=message[:1000], type="error").text = message
        _write(junit_path, _xml(suite))


def export_collisions(report: RunResults) -> str:
    """Per row over the user's tree (``run --export``), the worst collisions (most
    host files behind one guest id first): guest id <- host paths with (st_dev,
    st_ino); and which rows showed none."""
    lines = ["collisions in your tree (guest id <- host files), worst first:"]
    for row in report.rows:
        ids = ids_verdict(row.verdict)
        if row.layout is not Layout.EXPORT or ids is None:
            continue
        worst = sorted(ids.collisions, key=lambda c: -len(c.host_files))
        lines.append(f"  {row.case}: {len(worst)} guest ids shared, {ids.denied} denied")
        for collision in worst[:EXPORT_SHOWN]:
            dev, ino = collision.guest_id
            lines.append(f"    guest (dev {dev}, ino {ino}) <- " + ", ".join(
                f"{path!r} (host dev {os.major(hdev)}:{os.minor(hdev)}, ino {hino})"
                for path, hdev, hino in collision.host_files))
        if len(worst) > EXPORT_SHOWN:
            lines.append(f"    ... and {len(worst) - EXPORT_SHOWN} more (--json lists "
                         f"{JSON_COLLISIONS})")
    return "\n".join(lines)
