"""Rebuilding a kernel from journal rows, so that no single row can stop a daemon from starting.

Every event is checked before it is journaled, and applying a checked event does not
raise. If one row still does (a kernel bug, a row written by another version, an edited
file), recovery must not replay it into the same failure at every start: that row is
quarantined. The kernel is rebuilt from the first row without it (its apply may have
left half-done changes), a `quarantine` trace line stands in its place, and recovery
carries on. The daemon (runtime.py) and `apeinxfs replay --verify` (verify.py) rebuild
through the same function, so both quarantine the same rows and emit the same lines.

Pure apart from logging: rows come from a function; nothing is written.
"""
import ctypes
import logging

import attrs

from .kernel.events import stamped_of_row

log = logging.getLogger(__name__)


@attrs.frozen
class Quarantined:
    """A journal row whose decode or apply raised: recovery goes on without it."""

    seq: int
    kind: str
    time_us: int
    reason: str

    def __str__(self) -> str:
        return f"journal row {self.seq} ({self.kind}, time_us {self.time_us}): {self.reason}"


class RowFailed(Exception):
    """Raised with the Quarantined record of the row whose decode or apply raised."""


def apply_row(kernel, row: tuple, quarantined: dict) -> None:
    """Apply one raw journal row (seq, time_us, kind, body); a quarantined one only traces that it is."""
    seq, time_us, kind, body = row
    if seq in quarantined:
        kernel.trace.emit(max(kernel.now_us, time_us), "quarantine", None,
                          f"journal row {seq} ({kind}) skipped: {quarantined[seq].reason}")
        return
    try:
        for at_us, event in stamped_of_row(time_us, kind, body):  # a steps row holds several
            kernel.apply(event, at_us)
    except Exception as exc:  # anything: JSON, a record's validator, a kernel bug, RecursionError
        raise RowFailed(Quarantined(seq, kind, time_us, f"{type(exc).__name__}: {exc}")) from exc


def rebuild(fresh_kernel, rows, after: int, upto: int, quarantined: dict, apply=apply_row, may_quarantine=None):
    """`fresh_kernel()` (a kernel that has applied rows 1..after) after applying rows after+1..upto
    with `apply` (`rows(after, upto)` yields them). A row that raises joins `quarantined` (seq ->
    Quarantined, kept by the caller) and the kernel is rebuilt from a fresh one; each bad row
    costs one rebuild. With `may_quarantine` (seqs), a row not among them that raises raises RowFailed
    (a rollback's rebuild: a bug that every row meets must not quarantine the journal, stepbugs.py)."""
    while True:
        kernel = fresh_kernel()
        try:
            for row in rows(after, upto):
                apply(kernel, row, quarantined)
            return kernel
        except RowFailed as failed:
            record = failed.args[0]
            if may_quarantine is not None and record.seq not in may_quarantine:
                raise
            log.error("quarantined %s; rebuilding the kernel without it", record)
            quarantined[record.seq] = record


def give_back_freed_memory() -> None:
    """Hand the heap's free pages back to the system (glibc's malloc_trim), after a rebuild (a start, a
    rollback: stepbugs.py). Loading a snapshot frees its bytes and the unpickler's memo at once, about 13 MB
    at 10,000 tasks, which glibc would otherwise keep in the daemon's RSS for good (bench/soak.py: RSS after
    a restart); a rollback frees a whole kernel and its pickle."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to give back this way
        pass
