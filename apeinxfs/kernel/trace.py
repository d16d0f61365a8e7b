"""The trace: CSV lines with a strictly increasing seq, the newest kept whole and per task.

`/trace/events` serves `buffer`. A task's lines (`/tasks/PID/events`) and a tenant's
(`/tenants/NAME/events`) are chains through it: for each line, by seq, the seq of the same
task's and the same tenant's line before it (arrays of 8-byte ints, appended to at the end
of the trace; a task holds only its last line's seq). They are copied out when read: most
are never read, and a copy of each line per view made every line cost three copies.
The trace is an output of the kernel, rebuilt by replaying the journal, so its seqs are
the same after a restart.

It is a ring (ring.py) of `retention.trace_lines` lines: with its oldest lines go the views'
oldest; those not yet in the trace archive (archive.py), where every line stays, are held.

The task and tenant views are what a tenant's users read, so a line there names no other
tenant: in its detail, another tenant's name becomes "another tenant" and `pid N` of
another tenant's task "another tenant's task" (a fair preemption names whom it made room
for). The whole trace (/trace/events, admins only) keeps every name.
"""
from __future__ import annotations

import bisect
import re
from array import array
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import attrs

from .ring import Ring, drop_lines

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


class TraceLog(Ring):
    """The event log of one kernel: its newest `limit` lines (at least 7/8 of them once it has that many)."""

    HEADER = HEADER

    def __init__(self, node: str, tasks: Mapping[int, Task] | None = None, limit: int = 100_000):
        super().__init__(limit)
        self.node = node
        self.tasks = {} if tasks is None else tasks  # pid -> task: whose a pid in a detail is
        self._task_prev = array("q")  # by seq - first: the seq of the same task's line before, 0 if none
        self._tenant_prev = array("q")  # by seq - first: the same for its tenant
        self._tenant_last: dict[str, int] = {}  # tenant -> the seq of its last line
        self._tenant_views: dict[str, TenantView] = {}  # tenant -> its lines read so far
        self._others: dict[str, tuple[int, re.Pattern[bytes]]] = {}  # tenant -> (tenants known, what to redact for it)

    def emit(self, time_us: int, kind: str, task: Task | None = None, detail: str = "", gpu: int | None = None) -> None:
        """Append one line; it is also the task's last line and its tenant's. Past `limit` lines the oldest go."""
        self.seq = seq = self.seq + 1
        gpu_text = "" if gpu is None else gpu
        detail = escape(detail)
        if task is None:
            self._task_prev.append(0)
            self._tenant_prev.append(0)
            self._add(f'{seq},{time_us},{kind},,,,{gpu_text},{self.node},"{detail}"\n'.encode())
        else:
            self._task_prev.append(task.trace_last)
            task.trace_last = seq
            self._tenant_prev.append(self._tenant_last.get(task.tenant, 0))
            self._tenant_last[task.tenant] = seq
            self._add(f'{seq},{time_us},{kind},{task.pid},{task.tenant},{task.model},{gpu_text},{self.node},"{detail}"\n'.encode())

    def _indexes(self) -> tuple[array[int], ...]:
        return self._starts, self._task_prev, self._tenant_prev

    def of_task(self, task: Task) -> bytes:
        """The task's lines kept (a header alone if none): a few, copied at every read."""
        return HEADER + b"".join(map(self._redactor(task.tenant), self._chain(task.trace_last, self._task_prev)))

    def of_tenant(self, tenant: str) -> bytearray:
        """The lines kept of `tenant`'s tasks (a header alone if none yet)."""
        return self.tenant_view(tenant)[0]

    def tenant_view(self, tenant: str) -> tuple[bytearray, int]:
        """(The header and the lines kept of `tenant`'s tasks, bytes of its lines dropped before them): the
        lines read before are not copied again."""
        view = self._tenant_views.setdefault(tenant, TenantView())
        last = self._tenant_last.get(tenant, 0)
        view.add(self._chain(last, self._tenant_prev, after=view.last), self._redactor(tenant))
        view.drop_before(self.first)
        return view.text, view.dropped

    def _chain(self, last: int, prev: array[int], after: int = 0) -> list[int]:
        """The seqs kept of a chain that ends at `last`, oldest first, from the first one after seq `after`."""
        seqs: list[int] = []
        after, first = max(after, self.first - 1), self.first
        while last > after:
            seqs.append(last)
            last = prev[last - first]
        seqs.reverse()
        return seqs

    def _line(self, seq: int) -> bytearray:
        index = seq - self.first
        end = self._starts[index + 1] - self.dropped if seq < self.seq else len(self.buffer)
        return self.buffer[self._starts[index] - self.dropped:end]

    def _redactor(self, tenant: str) -> Callable[[int], bytearray]:
        """seq -> its line as `tenant`'s users may read it: other tenants and their pids unnamed."""
        pattern = self._pattern(tenant)

        def redacted(match: re.Match[bytes]) -> bytes:
            if match[1] is None:
                return b"another tenant"
            task = self.tasks.get(int(match[1]))  # a reaped task's tenant is unknown: it is not named
            return bytes(match[0]) if task is not None and task.tenant == tenant else b"another tenant's task"

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


@attrs.define
class TenantView:
    """A tenant's lines as its users read them (redacted), kept from one read to the next: the header,
    then its lines, whose seqs and starts (plus `dropped`) are indexed beside them; the lines the
    trace drops go from here at the next read."""

    text: bytearray = attrs.Factory(lambda: bytearray(HEADER))
    last: int = 0  # the seq of the last line added
    dropped: int = 0  # bytes of its lines dropped (lines the ring dropped before a read added them never count)
    _seqs: array[int] = attrs.Factory(lambda: array("q"))
    _starts: array[int] = attrs.Factory(lambda: array("q"))

    def add(self, seqs: list[int], render: Callable[[int], bytearray]) -> None:
        for seq in seqs:
            self._seqs.append(seq)
            self._starts.append(len(self.text) + self.dropped)
            self.text += render(seq)
        if seqs:
            self.last = seqs[-1]

    def drop_before(self, first: int) -> None:
        """Drop the lines before seq `first`."""
        count = bisect.bisect_left(self._seqs, first)
        if not count:
            return
        self.dropped += drop_lines(self.text, len(HEADER), self._starts, self.dropped, count)
        del self._seqs[:count], self._starts[:count]
