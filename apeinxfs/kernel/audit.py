"""The audit trail: every administrative act and every denial, as CSV lines.

Written by the kernel when it applies the events that carry them (tenant and policy
changes, kills of another user's task, refused writes that were denials), so, like the
trace, it is rebuilt by replaying the journal and its seqs survive restarts. Served at
/trace/audit to admins. Any user can cause denials at will, so it is a ring (ring.py) of
`retention.audit_lines` lines; the daemon holds those not yet in the audit archive
(archive.py, STATE_DIR/audit/), where every line stays.
"""
from .events import ByCaller
from .ring import Ring
from .trace import quote

HEADER = b"seq,time_us,uid,pid,tenant,action,result,detail\n"


class AuditLog(Ring):
    """Who (uid, the caller's pid, its tenant) did what, and how it ended: the newest `limit` lines."""

    HEADER = HEADER

    def record(self, time_us: int, event: ByCaller, action: str, result: str, detail: str) -> None:
        """Append one line; the event says who (uid, caller_pid, caller_tenant)."""
        self.seq += 1
        self._add((f"{self.seq},{time_us},{event.uid},{event.caller_pid},{event.caller_tenant or ''},"
                   f"{action},{result},"
                   f"{quote(detail)}\n").encode())
