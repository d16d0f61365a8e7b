"""The trace: CSV lines with a strictly increasing seq, kept whole and per task.

`/trace/events` serves `buffer`. A task's lines (`/tasks/PID/events`) and a tenant's
(`/tenants/NAME/events`) are chains through it: for each line, by seq, the seq of the same
task's and the same tenant's line before it (arrays of 8-byte ints, appended to at the end
of the trace; a task holds only its last line's seq). They are copied out when read: most
are never read, and a copy of each line per view made every line cost three copies.
The trace is an output of the kernel, rebuilt by replaying the journal, so its seqs are
the same after a restart.

The task and tenant views are what a tenant's users read, so a line there names no other
tenant: in its detail, another tenant's name becomes "another tenant" and `pid N` of
another tenant's task "another tenant's task" (a fair preemption names whom it made room
for). The whole trace (/trace/events, admins only) keeps every name.
"""
from __future__ import annotations

import re
from array import array
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .task import Task

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

    def __init__(self, node: str, tasks: Mapping[int, Task] | None = None):
        self.node = node
        self.tasks = {} if tasks is None else tasks  # pid -> task: whose a pid in a detail is
        self.seq = 0
        self.buffer = bytearray(HEADER)
        self._starts = array("q", [0])  # by seq: where the line starts in `buffer` (seq 0: none)
        self._task_prev = array("q", [0])  # by seq: the seq of the same task's line before, 0 if none
        self._tenant_prev = array("q", [0])  # by seq: the same for its tenant
        self._tenant_last: dict[str, int] = {}  # tenant -> the seq of its last line
        self._tenant_text: dict[str, tuple[bytearray, int]] = {}  # tenant -> (its lines read so far, last seq)
        self._others: dict[str, tuple[int, re.Pattern[bytes]]] = {}  # tenant -> (tenants known, what to redact for it)

    def emit(self, time_us: int, kind: str, task: Task | None = None, detail: str = "", gpu: int | None = None) -> None:
        """Append one line; it is also the task's last line and its tenant's."""
        self.seq = seq = self.seq + 1
        gpu_text = "" if gpu is None else gpu
        detail = escape(detail)
        self._starts.append(len(self.buffer))
        if task is None:
            self.buffer += f'{seq},{time_us},{kind},,,,{gpu_text},{self.node},"{detail}"\n'.encode()
            self._task_prev.append(0)
            self._tenant_prev.append(0)
            return
        self.buffer += f'{seq},{time_us},{kind},{task.pid},{task.tenant},{task.model},{gpu_text},{self.node},"{detail}"\n'.encode()
        self._task_prev.append(task.trace_last)
        task.trace_last = seq
        self._tenant_prev.append(self._tenant_last.get(task.tenant, 0))
        self._tenant_last[task.tenant] = seq

    def lines_after(self, seq: int) -> bytes:
        """The lines after seq `seq`, in order (what the trace archive has not written yet)."""
        return bytes(self.buffer[self._starts[seq + 1]:]) if seq < self.seq else b""

    def of_task(self, task: Task) -> bytes:
        """The task's lines (a header alone if none yet): a few, copied at every read."""
        return HEADER + b"".join(map(self._redactor(task.tenant), self._chain(task.trace_last, self._task_prev)))

    def of_tenant(self, tenant: str) -> bytearray:
        """The lines of `tenant`'s tasks (a header alone if none yet); those read before are not copied again."""
        text, copied = self._tenant_text.get(tenant) or (bytearray(HEADER), 0)
        last = self._tenant_last.get(tenant, 0)
        text += b"".join(map(self._redactor(tenant), self._chain(last, self._tenant_prev, after=copied)))
        self._tenant_text[tenant] = (text, last)
        return text

    @staticmethod
    def _chain(last: int, prev: array[int], after: int = 0) -> list[int]:
        """The seqs of a chain that ends at `last`, oldest first, from the first one after seq `after`."""
        seqs: list[int] = []
        while last > after:
            seqs.append(last)
            last = prev[last]
        seqs.reverse()
        return seqs

    def _line(self, seq: int) -> bytearray:
        start = self._starts[seq]
        return self.buffer[start:self._starts[seq + 1] if seq < self.seq else len(self.buffer)]

    def _redactor(self, tenant: str) -> Callable[[int], bytearray]:
        """seq -> its line as `tenant`'s users may read it: other tenants and their pids unnamed."""
        pattern = self._pattern(tenant)

        def redacted(match: re.Match[bytes]) -> bytes:
            if match[1] is None:
                return b"another tenant"
            task = self.tasks.get(int(match[1]))
            return bytes(match[0]) if task is None or task.tenant == tenant else b"another tenant's task"

        def line(seq: int) -> bytearray:
            head, _, detail = self._line(seq).partition(b',"')  # no column before the detail holds `,"`
            return head + b',"' + pattern.sub(redacted, detail)
        return line

    def _pattern(self, tenant: str) -> re.Pattern[bytes]:
        """`pid N`, and the names of the other tenants that have tasks, as whole words."""
        known, pattern = self._others.get(tenant, (-1, None))
        if pattern is None or known != len(self._tenant_last):
            others = sorted((name.encode() for name in self._tenant_last if name != tenant), key=len, reverse=True)
            names = b"|".join(map(re.escape, others)) or b"(?!)"
            pattern = re.compile(rb"(?<![^\s(])(?:pid[ =]([0-9]+)|(?:" + names + rb"))(?=$|[\s),;:'\"])")
            self._others[tenant] = (len(self._tenant_last), pattern)
        return pattern
