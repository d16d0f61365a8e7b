"""The daemon's health: ok, or degraded while the journal cannot be written.

When a journal write fails (a full disk, an I/O error, a read-only file system), nothing
of the commit that needed it happened, and the daemon goes degraded instead of down
(runtime.py): reads go on, every state change is refused with the storage's errno, and
the drivers get no batches, so running tasks pause where the kernel has them and no token
is made that could not be journaled. The kernel applies a `JournalFailed` event then,
which writes the `degraded` trace line; that event is journaled, at the time it was
applied and with the trace it emitted, in the first transaction that works again, after
the engine steps applied before it and still waiting (runtime.py `progress`) and
together with the `JournalRecovered` that ends the episode: nothing was journaled in
between, so a replay emits the same lines with the same seqs. A daemon that stops while
degraded never journals the episode (there was nothing else to keep from it).

This module holds the state and does those two steps; it does not wake readers or retry
(runtime.py does); `show` renders it as /health (nodes/tree.py), with the loops' bugs (supervise.py).
"""
import errno

import attrs

from .journal import Emitted
from .kernel.errors import Degraded
from .kernel.events import JournalFailed, JournalRecovered


@attrs.frozen
class Fault:
    """Why the daemon is degraded: the failed write's error, since when, and the applied
    `JournalFailed` with the trace it emitted, waiting to be journaled."""

    error: Degraded
    since_us: int
    event: JournalFailed
    emitted: Emitted


class Health:
    """Ok (`fault` None) or degraded (`fault` says why)."""

    def __init__(self):
        self.fault: Fault | None = None

    def refuse(self) -> None:
        """Raise Degraded, with the storage's errno and its reason, while the journal cannot be written."""
        if self.fault is not None:
            error = self.fault.error
            raise Degraded(error.errno, f"{error.reason}; state changes are refused until it can be")

    def fail(self, kernel, error: Degraded, now_us: int) -> None:
        """Go degraded: apply (not journal) the JournalFailed event, keeping its trace for later."""
        event = JournalFailed(errno=error.errno, reason=error.reason)
        with Emitted(kernel.trace) as emitted:
            kernel.apply(event, now_us)
        self.fault = Fault(error, now_us, event, emitted)

    def recover(self, kernel, journal, now_us: int) -> bool:
        """Journal the episode (JournalFailed at its time, then JournalRecovered) and apply its end;
        False, changing nothing, while the journal still cannot be written."""
        fault = self.fault
        recovered = JournalRecovered(errno=fault.error.errno, since_us=fault.since_us)
        try:
            failed_seq, recovered_seq = journal.append([(fault.since_us, fault.event), (now_us, recovered)])
        except Degraded:
            return False
        journal.keep_trace(failed_seq, fault.emitted)
        with journal.recording(recovered_seq, kernel.trace):
            kernel.apply(recovered, now_us)
        self.fault = None
        return True


def show(health: Health, supervisor=None, snapshotter=None, clock=None, views=None) -> str:
    """/health: `Key:<TAB>value` lines: State ok, or degraded with Errno, Reason and Since (µs); a `Warning`
    while snapshots are not written and one from a start that found journal rows lost (compaction.py), if
    `snapshotter` is given, and one while the daemon's time is ahead of the host's (clock.py), if `clock` is
    given, and one while most inodes of the tenants' views are in use (nodes/views.py), if `views` is given;
    then a `Bug` line for each background loop that failed and was restarted (supervise.py), if
    `supervisor` is given."""
    bugs = "" if supervisor is None else supervisor.show()
    said = [snapshotter and snapshotter.lost, snapshotter and snapshotter.warning(), clock and clock.ahead(),
            views and views.warning()]
    warnings = "".join(f"Warning:\t{warning}\n" for warning in said if warning)
    fault = health.fault
    if fault is None:
        return "State:\tok\n" + warnings + bugs
    rows = [("State", "degraded"), ("Errno", errno.errorcode.get(fault.error.errno, fault.error.errno)),
            ("Reason", fault.error.reason), ("Since", fault.since_us)]
    return "".join(f"{key}:\t{value}\n" for key, value in rows) + warnings + bugs
