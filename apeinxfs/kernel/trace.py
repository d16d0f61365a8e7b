"""The trace: CSV lines with a strictly increasing seq, kept whole and per task.

`/trace/events` serves `buffer`; each task keeps its own lines for `/tasks/PID/events`,
and each tenant its tasks' lines for `/tenants/NAME/events`.
The trace is an output of the kernel, rebuilt by replaying the journal, so its seqs are
the same after a restart.
"""
import collections

HEADER = b"seq,time_us,type,pid,tenant,model,gpu,node,detail\n"


def quote(text: str) -> str:
    """A CSV field that is always quoted, on one line."""
    return '"' + escape(text) + '"'


def escape(text: str) -> str:
    """The inside of quote(text): most texts have nothing to escape, and a scan is cheaper than four replaces."""
    if '"' not in text and "\\" not in text and "\n" not in text and "\r" not in text:
        return text
    one_line = text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
    return one_line.replace('"', '""')


class TraceLog:
    """The event log of one kernel."""

    def __init__(self, node: str):
        self.node = node
        self.seq = 0
        self.buffer = bytearray(HEADER)
        self.by_tenant: dict[str, bytearray] = collections.defaultdict(lambda: bytearray(HEADER))

    def emit(self, time_us: int, kind: str, task=None, detail: str = "", gpu=None) -> None:
        """Append one line; it also goes to the task's own events and its tenant's."""
        self.seq = seq = self.seq + 1
        gpu = "" if gpu is None else gpu
        if task is None:
            self.buffer += f'{seq},{time_us},{kind},,,,{gpu},{self.node},"{escape(detail)}"\n'.encode()
            return
        line = f'{seq},{time_us},{kind},{task.pid},{task.tenant},{task.model},{gpu},{self.node},"{escape(detail)}"\n'.encode()
        self.buffer += line
        if not task.events:
            task.events += HEADER
        task.events += line
        self.by_tenant[task.tenant] += line

    def of_tenant(self, tenant: str) -> bytearray:
        """The lines of `tenant`'s tasks (a header alone if none yet)."""
        return self.by_tenant[tenant]
