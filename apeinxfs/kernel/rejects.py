"""The `reject` trace lines of refused writes (events.Rejected), applied for the kernel.

One line per journaled refusal, `PATH: REASON (uid U)`, audited when it is a denial; before it, when
the daemon left some of the uid's refusals unjournaled (Runtime.reject, `[limits] reject_lines`), one
line `N more refused writes by uid U suppressed` (`N more denials ...` for a denial, whose window is its
own, also in the audit trail: every denial is there, alone or counted). Which refusals are journaled is the
daemon's choice, not this module's: it only applies what the journal says, so a replay writes the same lines.
"""
from typing import TYPE_CHECKING

from . import events as ev
from .endpoints import redacted

if TYPE_CHECKING:
    from .kernel import Kernel


def apply_rejected(kernel: "Kernel", event: ev.Rejected) -> None:
    """Count the refusal (and those it sums up), and write its lines."""
    kernel.counters.rejected += 1 + event.suppressed
    reason = redacted(event.reason)  # an old row's reason may hold a URL's password
    if event.suppressed:
        what = "denials" if event.denial else "refused writes"
        summary = f"{event.suppressed} more {what} by uid {event.uid} suppressed"
        kernel.emit("reject", None, summary)
        if event.denial:
            kernel.audit.record(kernel.now_us, event, "denials", "suppressed", summary)
    if event.denial:
        kernel.audit.record(kernel.now_us, event, event.path, "denied", reason)
    kernel.emit("reject", None, f"{event.path}: {reason} (uid {event.uid})")
