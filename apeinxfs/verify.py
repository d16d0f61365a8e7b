"""`apeinxfs replay`: re-run a state directory's journal through a fresh kernel.

    apeinxfs replay --verify [--json] STATE_DIR   check the journal reproduces its trace
    apeinxfs replay STATE_DIR [PID]               print the rebuilt trace, or one task's timeline

`--verify` boots a kernel from each boot record in the journal (journal.py), applies every
journal row in order, and compares the trace lines each row emits, and the row's CRC, with
what the daemon recorded when it applied that row, and checks the kernel's invariants
after each: exit 0 when all are identical, 1 naming the first divergent row, 2 when the
journal cannot be verified at all. Rows with no trace row (journaled before the journal
kept them, not yet written by a live daemon, or lost in a crash) are replayed but not
compared; one of them that raises is quarantined as the daemon's recovery does
(recovery.py), and reported. The lines replayed are also compared with the trace archive
(archive.py, STATE_DIR/trace/) from its first line on: a line changed, missing or written
twice there diverges too; lines it has beyond the journal (a live daemon's) are not
compared. A recorded line is also taken as the replayed one in today's words (kernel/trace.py `reworded`: a
dispatch's `POLICY: backfill past N (` became `POLICY: backfill past pid N (`) with each URL's credentials hidden
(`alike`), in the whole line or in each reason of its row as the kernel hides them: a journal written before the
kernel hid them holds them in its trace; a replayed line that shows them again diverges. A task the journal does
not hold is shown from the archive, and the whole trace's older lines too, each URL's credentials hidden
(archive.shown): the files keep them as written. Where the journal
was compacted behind snapshots (compaction.py), the replays start from the oldest and
newest usable snapshot instead of row 1 (and from row 1 too while the journal holds it). It opens the
journal read-only, in one snapshot, so it runs beside a live daemon. It changes nothing,
and it is not the daemon's recovery (runtime.py), though it replays the same way.
"""
import argparse
import itertools
import json
import os
import sys
from collections.abc import Callable

import attrs

from . import archive, statefile
from .compaction import Start, compacted_away, rebound, starts, structural
from .journal import LAST, Emitted, Journal, Unreadable, row_crc
from .kernel import Kernel
from .kernel.config import KernelConfig, kernel_config_from_dict
from .kernel.endpoints import redacted
from .kernel.invariants import InvariantError
from .kernel.events import stamped_of_row
from .kernel.trace import HEADER, escape, reworded
from .nodes.replay import archived, show, show_archived
from .recovery import RowFailed, apply_row, rebuild

NO_LINE = "(no line)"


@attrs.frozen
class Divergence:
    """The first journal row whose replay differs from what was recorded."""

    seq: int
    kind: str
    time_us: int | None
    expected: str
    got: str

    def __str__(self) -> str:
        when = "" if self.time_us is None else f", time_us {self.time_us}"
        return f"DIVERGED at journal row {self.seq} ({self.kind}{when}): expected {self.expected} got {self.got}"


class Diverged(Exception):
    """Raised with the Divergence that stops a verification."""


class CannotReplay(Exception):
    """The journal cannot be replayed at all: missing, without a boot record, a config not understood."""


@attrs.define
class Report:
    """What a verification found: rows replayed, rows and lines compared, the first divergence."""

    events: int = 0
    checked: int = 0
    lines: int = 0
    archived: int = 0
    divergence: Divergence | None = None
    quarantined: list[str] = attrs.Factory(list)  # rows recovery goes on without (recovery.py)
    origins: list[str] = attrs.Factory(list)  # where the replays started: row 1, snapshots
    skipped: list[str] = attrs.Factory(list)  # snapshots not used, and why

    def __str__(self) -> str:
        return (self._verdict() + "".join(f"\nQUARANTINED {q}: replayed without it, as the daemon starts"
                                          for q in self.quarantined)
                + "".join(f"\nSNAPSHOT NOT USED: {why}" for why in self.skipped))

    def _verdict(self) -> str:
        if self.divergence:
            return f"{self.divergence}\n({self.checked} events matched before it)"
        text = f"OK: {self.events} events, {self.lines} trace lines, identical"
        if self.archived:
            text += f"; {self.archived} lines of the trace archive identical"
        if self.origins != ["row 1"]:
            text += f"; replayed from {' and from '.join(self.origins)}"
        unchecked = self.events - self.checked
        if unchecked:
            text += (f"; {unchecked} events have no trace row (journaled before the journal kept them, "
                     "pending in a live daemon, or lost in a crash) and were replayed unchecked")
        return text


HIDDEN_IN = ("reason", "what")  # the events' texts that the kernel hides a URL's credentials in as it applies them


# -- replaying rows ----------------------------------------------------------------------------


def apply_checked(kernel: Kernel, row: tuple, quarantined: dict) -> list[str]:
    """Apply one raw journal row (a quarantined one only traces that it is) and check the kernel's
    invariants; the trace lines it emitted. Raises RowFailed if the row raises, Diverged if an
    invariant breaks."""
    with Emitted(kernel.trace) as emitted:
        apply_row(kernel, row, quarantined)
    try:
        kernel.check_invariants()
    except InvariantError as broken:
        raise Diverged(Divergence(row[0], row[2], row[1], "kernel invariants that hold", str(broken))) from None
    return emitted.text.splitlines()


def contiguous(journal: Journal):
    """journal.rows, raising Diverged at the first missing row."""
    def rows(after: int, upto: int):
        want = after + 1
        for row in journal.rows(after, upto):
            if row[0] != want:
                raise missing(want)
            yield row
            want += 1
    return rows


def missing(seq: int) -> Diverged:
    return Diverged(Divergence(seq, "missing", None, "a journal row", "none"))


def beginning(config: dict) -> Start:
    """Row 1, with a fresh kernel booted with `config` (a boot record's)."""
    try:
        kernel_config = kernel_config_from_dict(config)
        Kernel(kernel_config)
    except Exception as exc:  # a config from another version, or an edited one
        raise CannotReplay(f"cannot boot the recorded kernel config: {exc}") from None
    return Start(lambda: Kernel(kernel_config), 0, config)


def boot_kernel(journal: Journal, origin: Start, upto: int, quarantined: dict) -> Kernel:
    """The origin's kernel after rows origin.seq+1..upto, as the daemon's recovery rebuilt it: a row that
    raises is quarantined (recovery.py) and added to `quarantined`."""
    return rebuild(origin.fresh, contiguous(journal), origin.seq, upto, quarantined, apply_checked)


# -- verifying ---------------------------------------------------------------------------------


def verify(journal: Journal, archive_dir: str | None = None, snapshot_dir: str | None = None) -> Report:
    """Replay the rows from row 1 if the journal has them all, and from the oldest and newest usable
    snapshot in `snapshot_dir`, each under its boot's config; compare each row's trace with the recorded
    one, and with the archive in `archive_dir` if given. The report of the first that diverges, else
    the first's, naming every origin and each snapshot not used."""
    boots, skipped = recorded_boots(journal), []
    origins = replay_origins(journal, boots, snapshot_dir, skipped)
    reports = []
    for origin in origins:
        reports.append(verify_from(journal, boots, origin, archive_dir))
        if reports[-1].divergence:
            break
    report = reports[-1] if reports[-1].divergence else reports[0]
    report.origins, report.skipped = [origin.name for origin in origins], skipped
    return report


def replay_origins(journal: Journal, boots: list, snapshot_dir: str | None, skipped: list[str]) -> list[Start]:
    """Row 1 if the journal holds it; the oldest usable snapshot if not; the newest usable one. CannotReplay
    when rows were compacted and no snapshot can be used."""
    first, last = journal.first_seq(), journal.last_seq
    found = [] if snapshot_dir is None else list(starts(snapshot_dir, config_after(boots), first, last, skipped))
    origins = [beginning(boots[0].config)] if first == 1 else found[-1:]
    if not origins:
        raise CannotReplay(compacted_away(first, snapshot_dir, skipped))
    return origins + [origin for origin in found[:1] if origin.seq != origins[0].seq]


def config_after(boots: list) -> Callable[[int], KernelConfig | None]:
    """seq -> the kernel config the rows after it ran with first; None if boots after it ran with several
    that differ in more than LIVE_KEYS (compaction.py)."""
    def config(seq: int) -> KernelConfig | None:
        configs = [boot.config for boot in boots if boot.upto > seq]
        same = configs and all(structural(config) == structural(configs[0]) for config in configs)
        return kernel_config_from_dict(configs[0]) if same else None
    return config


def verify_from(journal: Journal, boots: list, origin: Start, archive_dir: str | None) -> Report:
    """Replay the rows after `origin` under their boot's config and compare them (verify)."""
    boots = [attrs.evolve(boot, after_row=max(boot.after_row, origin.seq), traced_to=max(boot.traced_to, origin.seq))
             for boot in boots if boot.upto > origin.seq]
    report, kernel, quarantined = Report(events=boots[0].after_row - origin.seq), None, {}
    archived_lines = ArchiveCheck(archive_dir)
    try:
        for boot in boots:
            if kernel is None:
                kernel = boot_kernel(journal, origin, boot.after_row, quarantined)
                archived_lines.check(origin.seq, "snapshot", None, kernel.trace.lines_after(0).decode().splitlines())
            elif origin.seq and structural(boot.config) == structural(origin.config):
                kernel = rebound(kernel, kernel_config_from_dict(boot.config))  # admins or time zone changed
            elif boot.config != origin.config:
                origin = beginning(boot.config)  # a snapshot is an origin only while the config stays its own
                kernel = boot_kernel(journal, origin, boot.after_row, quarantined)
            kernel = check_boot(kernel, journal, boot, report, quarantined, archived_lines,
                                lambda seq, start=origin: boot_kernel(journal, start, seq, quarantined))
    except Diverged as diverged:
        report.divergence = diverged.args[0]
    report.archived = archived_lines.compared
    report.quarantined = [str(q) for q in sorted(quarantined.values(), key=lambda q: q.seq)]
    return report


class ArchiveCheck:
    """The trace archive's lines, compared in order with the lines the replay emits."""

    def __init__(self, directory: str | None):
        self._lines, self._directory = archive.lines(directory) if directory else iter(()), directory or ""
        self.compared = 0
        self._next = self._take()

    def _take(self) -> tuple[int, str] | None:
        """(seq, line) of the next archived line; None past the last."""
        line = next(self._lines, None)
        if line is None:
            return None
        return archive.seq_of(line, self._directory), line.decode(errors="replace").rstrip("\n")

    def check(self, seq: int, kind: str, time_us: int | None, lines: list[str], row: tuple | None = None) -> None:
        """Compare journal row `seq`'s replayed `lines` (of `row`, if one was applied) with the archive's; lines
        before its first are not."""
        for line in lines:
            if self._next is None:
                return
            line_seq = int(line.split(",", 1)[0])
            if not self.compared and line_seq < self._next[0]:  # older files were dropped (retention)
                continue
            while not self.compared and self._next is not None and self._next[0] < line_seq:
                self._next = self._take()  # lines before the first replayed (a snapshot's, not all of which it holds)
            if self._next is None:
                return
            if line_seq != self._next[0] or not alike(self._next[1], line, row):
                raise Diverged(Divergence(seq, kind, time_us, f"{self._next[1]} (in the trace archive)", line))
            self.compared += 1
            self._next = self._take()


def recorded_boots(journal: Journal) -> list:
    boots = journal.boots()
    if not boots:
        raise CannotReplay("the journal has no boot record: which kernel config it ran is unknown")
    return boots


def check_boot(kernel: Kernel, journal: Journal, boot, report: Report, quarantined: dict,
               archived_lines: ArchiveCheck, reboot: Callable[[int], Kernel]) -> Kernel:
    """Replay one boot's rows; compare each up to `boot.traced_to` with its trace row, all with the
    archive. A row the daemon applied and traced must apply again; one without a trace row (lost
    in a crash before the daemon applied it, or written by hand) is quarantined if it raises, as
    the next start's recovery does (`reboot(seq)` rebuilds the kernel up to it). The kernel, rebuilt if a
    row was quarantined."""
    traces = journal.traces(boot.after_row, boot.traced_to)
    trace = next(traces, None)
    for row in contiguous(journal)(boot.after_row, boot.upto):
        seq, time_us, kind, body = row
        report.events += 1
        traced = trace is not None and trace[0] == seq
        try:
            lines = apply_checked(kernel, row, quarantined)
            applied = None if seq in quarantined else row  # its events, unless only its quarantine was traced
        except RowFailed as failed:
            if traced:
                reason = failed.args[0].reason
                raise Diverged(Divergence(seq, kind, time_us, "a row the kernel applies", reason)) from None
            quarantined[seq] = failed.args[0]
            kernel = reboot(seq)
            continue
        if seq <= boot.traced_to:
            if difference := compare(trace if traced else None, seq, row_crc(kind, body), lines, applied):
                raise Diverged(Divergence(seq, kind, time_us, *difference))
            report.checked += 1
            report.lines += len(lines)
        archived_lines.check(seq, kind, time_us, lines, applied)
        if traced:
            trace = next(traces, None)
    if trace is not None:  # traced rows that the journal no longer has
        raise missing(trace[0])
    return kernel


def compare(trace, seq: int, crc: int, lines: list[str], row: tuple | None) -> tuple[str, str] | None:
    """(expected, got) for the first difference between journal row `seq`'s trace row and its replay (of `row`,
    None for a quarantined row's)."""
    if trace is None or trace[0] != seq:
        return "the row's recorded trace", "none"
    recorded = trace[2].splitlines()
    for index in range(max(len(recorded), len(lines))):
        want = recorded[index] if index < len(recorded) else NO_LINE
        have = lines[index] if index < len(lines) else NO_LINE
        if not alike(want, have, row):
            return want, have
    if trace[1] != crc:
        return f"the row as applied (crc32 {trace[1]:08x})", f"an altered row (crc32 {crc:08x})"
    return None


def alike(recorded: str, replayed: str, row: tuple | None = None) -> bool:
    """Whether a recorded trace line is the replayed one, as recorded or in today's words (`reworded`) with each
    URL's credentials hidden: the kernel hides them as it applies a row, and a journal written before it did holds
    them in its trace. They are hidden in the whole line, or in each text of journal row `row` that the kernel
    hides them in (fields_hidden)."""
    if recorded == replayed:
        return True
    recorded = reworded(bytearray(recorded.encode())).decode()
    if recorded == replayed or redacted(recorded) == replayed:
        return True
    return row is not None and fields_hidden(recorded, row) == replayed


def fields_hidden(line: str, row: tuple) -> str:
    """`line` with each URL's credentials hidden in the texts of `row`'s events that the kernel hides them in (a
    reason, a model change's `what`), each on its own as the kernel does: in the whole line an `@` ending may read
    otherwise (`http://u:p@h@0` ending a reason ends in a GPU; followed by `;` in the line, it ends in a host)."""
    _seq, time_us, kind, body = row
    texts = (getattr(event, name, None) for _at, event in stamped_of_row(time_us, kind, body) for name in HIDDEN_IN)
    for text in texts:
        if isinstance(text, str):
            line = line.replace(escape(text), escape(redacted(text)))
    return line


# -- the command -------------------------------------------------------------------------------


def open_journal(state_dir: str) -> Journal:
    """The state directory's journal, read-only, inside one read transaction (a fixed snapshot)."""
    path = os.path.join(state_dir, "journal.db")
    if not os.path.isfile(path):
        raise CannotReplay(f"no journal at {path}")
    try:
        journal = Journal(path, readonly=True)
    except Unreadable as exc:
        raise CannotReplay(str(exc)) from None
    journal.db.execute("BEGIN")
    return journal


def rebuilt(journal: Journal, snapshot_dir: str | None = None) -> Kernel:
    """The kernel as the last boot would rebuild it now: from the newest usable snapshot, else from row 1
    with its config."""
    boots = recorded_boots(journal)
    newest = replay_origins(journal, boots, snapshot_dir, [])[-1]
    try:
        return boot_kernel(journal, newest if newest.seq else beginning(boots[-1].config), LAST, {})
    except Diverged as diverged:
        raise CannotReplay(str(diverged.args[0])) from None


def whole_trace(kernel: Kernel, archive_dir: str) -> str:
    """The trace a rebuilt kernel holds, after the archived lines before its first (a kernel started from
    a snapshot may not hold them all), as they are shown (archive.shown)."""
    first = kernel.trace.first
    older = itertools.takewhile(lambda line: archive.seq_of(line, archive_dir) < first, archive.lines(archive_dir))
    return (HEADER + archive.shown(b"".join(older)) + kernel.trace.lines_after(0)).decode()  # hidden at once: 1.4x


def timeline(journal: Journal, pid: int | None, archive_dir: str, snapshot_dir: str | None = None) -> str:
    """The whole rebuilt trace, or task `pid`'s timeline as /replay/PID shows it (from the archive
    for a task the rebuilt kernel does not hold)."""
    kernel = rebuilt(journal, snapshot_dir)
    if pid is None:
        return whole_trace(kernel, archive_dir)
    if pid in kernel.tasks:
        return show(kernel, kernel.tasks[pid])
    if (task := archived(pid, *archive.task_lines(archive_dir, pid))) is not None:
        return show_archived(kernel, task)
    raise CannotReplay(f"no task {pid} in the journal or the trace archive")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="apeinxfs replay", description=__doc__.split("\n\n")[0])
    parser.add_argument("--verify", action="store_true", help="check the journal reproduces its recorded trace")
    parser.add_argument("--json", action="store_true", help="with --verify: print the report as JSON")
    parser.add_argument("state_dir", help="the daemon's state directory (holds journal.db)")
    parser.add_argument("pid", nargs="?", type=int, help="without --verify: show this task's timeline")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    try:
        return run(args)
    except (CannotReplay, statefile.Untrusted) as exc:
        print(f"apeinxfs replay: {exc}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    journal, archive_dir = open_journal(args.state_dir), os.path.join(args.state_dir, "trace")
    snapshot_dir = os.path.join(args.state_dir, "snapshots")
    try:
        if not args.verify:
            sys.stdout.write(timeline(journal, args.pid, archive_dir, snapshot_dir))
            return 0
        report = verify(journal, archive_dir, snapshot_dir)
    finally:
        journal.close()
    print(json.dumps({"ok": report.divergence is None, **attrs.asdict(report)}) if args.json else report)
    return 0 if report.divergence is None else 1
