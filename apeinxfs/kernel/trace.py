"""The trace: CSV lines with a strictly increasing seq, kept whole and per task.

`/trace/events` serves `buffer`. A task's lines (`/tasks/PID/events`) and a tenant's
(`/tenants/NAME/events`) are kept as where they start in `buffer`, 8 bytes a line, and
copied out when read: most are never read, and a copy per view made every line cost three.
The trace is an output of the kernel, rebuilt by replaying the journal, so its seqs are
the same after a restart.
"""
import collections
from array import array

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


class Lines:
    """Some of the trace's lines, as where each starts in the trace's buffer; read as a CSV
    text of their own, copied out of the buffer a line at a time as they are read."""

    __slots__ = ("starts", "_text", "_copied")

    def __init__(self):
        self.starts = array("q")
        self._text, self._copied = bytearray(HEADER), 0  # the header and the lines copied out so far

    def text(self, buffer: bytearray) -> bytearray:
        """The header and the lines; those copied out before are not copied again."""
        for index in range(self._copied, len(self.starts)):
            start = self.starts[index]
            self._text += buffer[start:buffer.index(b"\n", start) + 1]
        self._copied = len(self.starts)
        return self._text


def lines_at(buffer: bytearray, starts) -> bytes:
    """The header and the lines that start at `starts` in `buffer`, as one text."""
    return HEADER + b"".join(buffer[start:buffer.index(b"\n", start) + 1] for start in starts)


class TraceLog:
    """The event log of one kernel."""

    def __init__(self, node: str):
        self.node = node
        self.seq = 0
        self.buffer = bytearray(HEADER)
        self._tenants: dict[str, Lines] = collections.defaultdict(Lines)

    def emit(self, time_us: int, kind: str, task=None, detail: str = "", gpu=None) -> None:
        """Append one line; it is also one of the task's own lines and its tenant's."""
        self.seq = seq = self.seq + 1
        gpu = "" if gpu is None else gpu
        if task is None:
            self.buffer += f'{seq},{time_us},{kind},,,,{gpu},{self.node},"{escape(detail)}"\n'.encode()
            return
        start, buffer = len(self.buffer), self.buffer
        buffer += f'{seq},{time_us},{kind},{task.pid},{task.tenant},{task.model},{gpu},{self.node},"{escape(detail)}"\n'.encode()
        task.trace_starts.append(start)
        self._tenants[task.tenant].starts.append(start)

    def of_task(self, task) -> bytes:
        """The task's lines (a header alone if none yet): a few, copied at every read."""
        return lines_at(self.buffer, task.trace_starts)

    def of_tenant(self, tenant: str) -> bytearray:
        """The lines of `tenant`'s tasks (a header alone if none yet)."""
        return self._tenants[tenant].text(self.buffer)
