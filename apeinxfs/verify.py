"""`apeinxfs replay`: re-run a state directory's journal through a fresh kernel.

    apeinxfs replay --verify [--json] STATE_DIR   check the journal reproduces its trace
    apeinxfs replay STATE_DIR [PID]               print the rebuilt trace, or one task's timeline

`--verify` boots a kernel from each boot record in the journal (journal.py), applies every
journal row in order, and compares the trace lines each row emits, and the row's CRC, with
what the daemon recorded when it applied that row: exit 0 when all are identical, 1 naming
the first divergent row, 2 when the journal cannot be verified at all. Rows with no trace
row (journaled before the journal kept them, not yet written by a live daemon, or lost in
a crash) are replayed but not compared. The lines replayed are also compared with the
trace archive (archive.py, STATE_DIR/trace/) from its first line on: a line changed,
missing or written twice there diverges too; lines it has beyond the journal (a live
daemon's) are not compared. A task the journal does not hold is shown from the archive.
It opens the journal read-only, in one snapshot, so it runs beside a live daemon. It
changes nothing, and it is not the daemon's recovery (runtime.py), though it replays the
same way.
"""
import argparse
import json
import os
import sys

import attrs

from . import archive
from .journal import LAST, Emitted, Journal, row_crc
from .kernel import Kernel
from .kernel.config import kernel_config_from_dict
from .kernel.events import stamped_of_row
from .nodes.replay import archived, show, show_archived

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

    def __str__(self) -> str:
        if self.divergence:
            return f"{self.divergence}\n({self.checked} events matched before it)"
        text = f"OK: {self.events} events, {self.lines} trace lines, identical"
        if self.archived:
            text += f"; {self.archived} lines of the trace archive identical"
        unchecked = self.events - self.checked
        if unchecked:
            text += (f"; {unchecked} events have no trace row (journaled before the journal kept them, "
                     "pending in a live daemon, or lost in a crash) and were replayed unchecked")
        return text


# -- replaying rows ----------------------------------------------------------------------------


def apply_row(kernel: Kernel, seq: int, time_us: int, kind: str, body: str) -> list[str]:
    """Apply one raw journal row (each step of a steps row); the trace lines it emitted. A row the
    kernel cannot take diverges."""
    try:
        with Emitted(kernel.trace) as emitted:
            for at_us, event in stamped_of_row(time_us, kind, body):
                kernel.apply(event, at_us)
    except Exception as exc:  # a bad row can fail anywhere: in JSON, a record's validator, the kernel
        raise Diverged(Divergence(seq, kind, time_us, "a row the kernel applies",
                                  f"{type(exc).__name__}: {exc}")) from None
    return emitted.text.splitlines()


def replayed(kernel: Kernel, journal: Journal, after: int, upto: int):
    """Apply rows after < seq <= upto to `kernel`; yield (seq, time_us, kind, body, lines) for each."""
    want = after + 1
    for seq, time_us, kind, body in journal.rows(after, upto):
        if seq != want:
            raise missing(want)
        yield seq, time_us, kind, body, apply_row(kernel, seq, time_us, kind, body)
        want += 1


def missing(seq: int) -> Diverged:
    return Diverged(Divergence(seq, "missing", None, "a journal row", "none"))


def boot_kernel(journal: Journal, config: dict, after: int) -> Kernel:
    """A kernel booted with `config` that has applied rows 1..after, as the daemon did at that boot."""
    try:
        kernel = Kernel(kernel_config_from_dict(config))
    except Exception as exc:  # a config from another version, or an edited one
        raise CannotReplay(f"cannot boot the recorded kernel config: {exc}") from None
    for _ in replayed(kernel, journal, 0, after):
        pass
    return kernel


# -- verifying ---------------------------------------------------------------------------------


def verify(journal: Journal, archive_dir: str | None = None) -> Report:
    """Replay every row under its boot's config and compare each row's trace with the recorded one,
    and with the archive in `archive_dir` if given."""
    boots = recorded_boots(journal)
    report, kernel, config = Report(events=boots[0].after_row), None, None
    archived_lines = ArchiveCheck(archive_dir)
    try:
        for boot in boots:
            if boot.config != config:
                kernel, config = boot_kernel(journal, boot.config, boot.after_row), boot.config
            check_boot(kernel, journal, boot, report, archived_lines)
    except Diverged as diverged:
        report.divergence = diverged.args[0]
    report.archived = archived_lines.compared
    return report


class ArchiveCheck:
    """The trace archive's lines, compared in order with the lines the replay emits."""

    def __init__(self, directory: str | None):
        self._lines = archive.lines(directory) if directory else iter(())
        self.compared = 0
        self._next = self._take()

    def _take(self) -> tuple[int, str] | None:
        """(seq, line) of the next archived line; None past the last."""
        line = next(self._lines, None)
        return None if line is None else (int(line.split(b",", 1)[0]), line.decode().rstrip("\n"))

    def check(self, seq: int, kind: str, time_us: int, lines: list[str]) -> None:
        """Compare journal row `seq`'s replayed `lines` with the archive's; lines before its first are not."""
        for line in lines:
            if self._next is None:
                return
            line_seq = int(line.split(",", 1)[0])
            if not self.compared and line_seq < self._next[0]:  # older files were dropped (retention)
                continue
            if (line_seq, line) != self._next:
                raise Diverged(Divergence(seq, kind, time_us, f"{self._next[1]} (in the trace archive)", line))
            self.compared += 1
            self._next = self._take()


def recorded_boots(journal: Journal) -> list:
    boots = journal.boots()
    if not boots:
        raise CannotReplay("the journal has no boot record: which kernel config it ran is unknown")
    return boots


def check_boot(kernel: Kernel, journal: Journal, boot, report: Report, archived_lines: ArchiveCheck) -> None:
    """Replay one boot's rows; compare each up to `boot.traced_to` with its trace row, all with the archive."""
    traces = journal.traces(boot.after_row, boot.traced_to)
    for seq, time_us, kind, body, lines in replayed(kernel, journal, boot.after_row, boot.upto):
        report.events += 1
        if seq <= boot.traced_to:
            if difference := compare(next(traces, None), seq, row_crc(kind, body), lines):
                raise Diverged(Divergence(seq, kind, time_us, *difference))
            report.checked += 1
            report.lines += len(lines)
        archived_lines.check(seq, kind, time_us, lines)
    if (left := next(traces, None)) is not None:  # traced rows that the journal no longer has
        raise missing(left[0])


def compare(trace, seq: int, crc: int, lines: list[str]) -> tuple[str, str] | None:
    """(expected, got) for the first difference between journal row `seq`'s trace row and its replay."""
    if trace is None or trace[0] != seq:
        return "the row's recorded trace", "none"
    recorded = trace[2].splitlines()
    for index in range(max(len(recorded), len(lines))):
        want = recorded[index] if index < len(recorded) else NO_LINE
        have = lines[index] if index < len(lines) else NO_LINE
        if want != have:
            return want, have
    if trace[1] != crc:
        return f"the row as applied (crc32 {trace[1]:08x})", f"an altered row (crc32 {crc:08x})"
    return None


# -- the command -------------------------------------------------------------------------------


def open_journal(state_dir: str) -> Journal:
    """The state directory's journal, read-only, inside one read transaction (a fixed snapshot)."""
    path = os.path.join(state_dir, "journal.db")
    if not os.path.isfile(path):
        raise CannotReplay(f"no journal at {path}")
    journal = Journal(path, readonly=True)
    journal.db.execute("BEGIN")
    return journal


def rebuilt(journal: Journal) -> Kernel:
    """The kernel as the last boot would rebuild it now: its config, every row."""
    try:
        return boot_kernel(journal, recorded_boots(journal)[-1].config, LAST)
    except Diverged as diverged:
        raise CannotReplay(str(diverged.args[0])) from None


def timeline(journal: Journal, pid: int | None, archive_dir: str) -> str:
    """The whole rebuilt trace, or task `pid`'s timeline as /replay/PID shows it (from the archive
    for a task the journal no longer holds)."""
    kernel = rebuilt(journal)
    if pid is None:
        return kernel.trace.buffer.decode()
    if pid in kernel.tasks:
        return show(kernel, kernel.tasks[pid])
    if (task := archived(pid, archive.task_lines(archive_dir, pid))) is not None:
        return show_archived(task)
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
    except CannotReplay as exc:
        print(f"apeinxfs replay: {exc}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    journal, archive_dir = open_journal(args.state_dir), os.path.join(args.state_dir, "trace")
    try:
        if not args.verify:
            sys.stdout.write(timeline(journal, args.pid, archive_dir))
            return 0
        report = verify(journal, archive_dir)
    finally:
        journal.close()
    print(json.dumps({"ok": report.divergence is None, **attrs.asdict(report)}) if args.json else report)
    return 0 if report.divergence is None else 1
