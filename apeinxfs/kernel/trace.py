"""The trace: CSV lines with a strictly increasing seq, the newest kept whole and per task.

`/trace/events` serves `buffer`. A task's lines (`/tasks/PID/events`) and a tenant's
(`/tenants/NAME/events`) are chains through it: for each line, by seq, the seq of the same
task's and the same tenant's line before it (arrays of 8-byte ints, appended to at the end
of the trace; a task holds only its last line's seq). They are copied out when read: most
are never read, and a copy of each line per view made every line cost three copies. A view
(`TenantView`) keeps what it copied from one read to the next, so each line is rendered once a run.
A task's view renders its lines only as far as a read reaches, but a stat of the file (its size)
renders them all: the first stat or lookup of a task's events renders its lines, later ones only
the lines new since, and a read what it reaches beyond them. The tasks' views are a cache beside
the kernel, not in it (`TaskViews`, held by the Runtime): a snapshot's layout is the kernel's alone.
The trace is an output of the kernel, rebuilt by replaying the journal, so its seqs are
the same after a restart.

It is a ring (ring.py) of `retention.trace_lines` lines: with its oldest lines go the views'
oldest; those not yet in the trace archive (archive.py), where every line stays, are held.

The task and tenant views are what a tenant's users read, so a line there names no other
tenant: in its detail, another tenant's name becomes "another tenant" and `pid N` of
another tenant's task "another tenant's task" (a fair preemption names whom it made room
for; a dispatch in the old words, `backfill past N (`, is read in today's first: `reworded`).
The whole trace (/trace/events, admins only) keeps every name. The names redacted are
those of the tenants with lines (a removed tenant's until the lines before its removal are
gone: `forget`); one pattern of them all serves every view, the viewer's own name kept by
`_redact`, so it costs O(tenants) to build, not one pattern per viewer. That pattern is a
cache, not state: a snapshot holds none.
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


_OLD_BACKFILL = re.compile(rb'[0-9]+,[0-9]+,dispatch,[^"]*,"[a-z]+: backfill past (?=[0-9]+ \()')


def reworded(line: bytearray) -> bytearray:
    """A trace line in the words the kernel writes now: a dispatch traced before its backfill named the pid it
    passed as `pid N` (so that the views hide another tenant's) read `POLICY: backfill past N (`; other lines
    are as they are."""
    match = _OLD_BACKFILL.match(line)
    return line if match is None else line[:match.end()] + b"pid " + line[match.end():]


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
        self._removed: dict[str, int] = {}  # removed tenant -> the last seq before its removal: forgotten once dropped
        self._pattern: re.Pattern[bytes] | None = None  # `pid N` and the names in _tenant_last; None: build it again

    def __getstate__(self) -> dict[str, object]:
        """The state without the pattern: a cache, built again at the first read."""
        return vars(self) | {"_pattern": None}

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
            prev = self._tenant_last.get(task.tenant, 0)
            if not prev:
                self._pattern = None  # a tenant new to the trace: its name is redacted from now on
            self._tenant_prev.append(prev)
            self._tenant_last[task.tenant] = seq
            self._add(f'{seq},{time_us},{kind},{task.pid},{task.tenant},{task.model},{gpu_text},{self.node},"{detail}"\n'.encode())

    def _indexes(self) -> tuple[array[int], ...]:
        return self._starts, self._task_prev, self._tenant_prev

    def rewrite(self, change: Callable[[str], str]) -> bool:
        """Ring.rewrite; the tenants' views, copies of the lines, are read afresh from the lines changed."""
        changed = super().rewrite(change)
        if changed:
            self._tenant_views.clear()
        return changed

    def forget(self, tenant: str) -> None:
        """`tenant` was removed: its view goes now, its name and chain once the lines up to now are dropped
        (they may name it); a tenant of that name that has lines again by then is kept."""
        self._tenant_views.pop(tenant, None)
        self._removed[tenant] = self.seq
        self._forget_dropped()

    def trim(self) -> None:
        first = self.first
        super().trim()
        if self.first != first and self._removed:  # trim runs at every line past the limit, mostly dropping none
            self._forget_dropped()

    def _forget_dropped(self) -> None:
        """Forget the removed tenants whose lines up to their removal are all dropped."""
        gone = [name for name, seq in self._removed.items() if seq < self.first]
        for name in gone:
            if self._tenant_last.get(name, 0) <= self._removed.pop(name):
                self._tenant_last.pop(name, None)
                self._pattern = None

    def of_task(self, task: Task, view: TenantView | None = None, end: int | None = None) -> bytearray:
        """The header and the task's lines kept, as its users read them, rendered at least up to byte `end`
        if there (None: all of them). In `view`, the task's kept from an earlier read (TaskViews), a line is
        rendered once, at the first read that reaches it; without one, all are rendered afresh."""
        view = TenantView() if view is None else view
        view.add(self._chain(task.trace_last, self._task_prev, after=view.last))
        view.drop_before(self.first)
        view.render(self._redactor(task.tenant), end)
        return view.text

    def of_tenant(self, tenant: str) -> bytearray:
        """The lines kept of `tenant`'s tasks (a header alone if none yet)."""
        return self.tenant_view(tenant)[0]

    def tenant_view(self, tenant: str) -> tuple[bytearray, int]:
        """(The header and the lines kept of `tenant`'s tasks, bytes of its lines dropped before them): the
        lines read before are not copied again."""
        view = self._tenant_views.setdefault(tenant, TenantView())
        view.add(self._chain(self._tenant_last.get(tenant, 0), self._tenant_prev, after=view.last))
        view.render(self._redactor(tenant))
        view.drop_before(self.first)
        return view.text, view.dropped

    def _chain(self, last: int, prev: array[int], after: int = 0) -> array[int]:
        """The seqs kept of a chain that ends at `last`, oldest first, from the first one after seq `after`."""
        seqs = array("q")
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
        redact = self._line_redactor(tenant)
        return lambda seq: redact(self._line(seq))

    def redact_lines(self, tenant: str, lines: bytes) -> bytes:
        """CSV `lines`, the header first (a reaped task's, from the trace archive), as `tenant`'s users may read
        them: the views' hiding, with the tenants and tasks the kernel knows now."""
        header, _, body = lines.partition(b"\n")
        redact = self._line_redactor(tenant)
        return header + b"\n" + b"".join(redact(bytearray(line)) for line in body.splitlines(keepends=True))

    def _line_redactor(self, tenant: str) -> Callable[[bytearray], bytearray]:
        """A line -> the line as `tenant`'s users may read it: other tenants and their pids unnamed in its detail."""
        pattern, own, inside = self._names(), tenant.encode(), self._name_inside(tenant)

        def redacted(match: re.Match[bytes]) -> bytes:
            if match[1] is None:
                return b"another tenant"
            task = self.tasks.get(int(match[1]))  # a reaped task's tenant is unknown: it is not named
            return bytes(match[0]) if task is not None and task.tenant == tenant else b"another tenant's task"

        def line(text: bytearray) -> bytearray:
            head, _, detail = reworded(text).partition(b',"')  # no column before the detail holds `,"`
            return head + b',"' + _redact(pattern, detail, own, inside, redacted)
        return line

    def _names(self) -> re.Pattern[bytes]:
        """`pid N`, and the names of the tenants that have lines, as whole words: the longest name first."""
        if self._pattern is None:
            names = sorted((name.encode() for name in self._tenant_last), key=len, reverse=True)
            alternatives = b"|".join(map(re.escape, names)) or b"(?!)"
            self._pattern = re.compile(rb"(?<![^\s(])(?:pid[ =]([0-9]+)|(?:" + alternatives + rb"))" + _WORD_END)
        return self._pattern

    def _name_inside(self, tenant: str) -> bytes | None:
        """The longest other tenant's name that `tenant` starts with as a whole word (`a` in `a:b`): what a
        pattern without `tenant` matches where this one matches `tenant`."""
        own = tenant.encode()
        ends = [end for end in range(len(own) - 1, 0, -1) if _WORD_END_BYTES.find(own[end:end + 1]) >= 0]
        return next((own[:end] for end in ends if own[:end].decode() in self._tenant_last), None)


_WORD_END = rb"(?=$|[\s),;:'\"])"
_WORD_END_BYTES = b" \t\n\r\f\v),;:'\""  # what ends a word: whitespace (bytes' \s) and these


def _redact(pattern: re.Pattern[bytes], detail: bytearray, own: bytes, inside: bytes | None,
            redacted: Callable[[re.Match[bytes]], bytes]) -> bytes:
    """`pattern.sub(redacted, detail)` as if `pattern` did not hold `own`: where it matches `own`, the
    shorter name `inside` is redacted instead if there is one, else the search goes on one byte later."""
    parts: list[bytes | bytearray] = []
    done = at = 0
    while (match := pattern.search(detail, at)) is not None:
        start = match.start()
        if match[1] is not None or match[0] != own:
            parts += [detail[done:start], redacted(match)]
            done = at = match.end()
        elif inside is not None:
            parts += [detail[done:start], b"another tenant"]
            done = at = start + len(inside)
        else:
            at = start + 1
    return b"".join(parts) + detail[done:]


@attrs.define
class TenantView:
    """Lines of the trace as the users of a tenant, or of a task, read them (redacted), kept from one read to the
    next: the header, then its lines rendered so far, whose starts (plus `dropped`) are indexed beside the
    seqs of all its lines; the lines after those wait for a read that reaches them (`render`). The lines the
    trace drops go from here at the next read."""

    text: bytearray = attrs.Factory(lambda: bytearray(HEADER))
    last: int = 0  # the seq of the last line added
    dropped: int = 0  # bytes of its lines dropped (lines dropped before they were rendered never count)
    _seqs: array[int] = attrs.Factory(lambda: array("q"))  # of its lines, rendered or not
    _starts: array[int] = attrs.Factory(lambda: array("q"))  # of its lines rendered: the first len(_starts)

    def add(self, seqs: array[int]) -> None:
        """Lines after `last`, oldest first, to render when a read reaches them."""
        self._seqs += seqs
        if seqs:
            self.last = seqs[-1]

    def render(self, render: Callable[[int], bytearray], end: int | None = None) -> None:
        """Render lines waiting until the text holds `end` bytes (None: all of them)."""
        seqs, starts, text = self._seqs, self._starts, self.text
        while len(starts) < len(seqs) and (end is None or len(text) < end):
            starts.append(len(text) + self.dropped)
            text += render(seqs[len(starts) - 1])

    def drop_before(self, first: int) -> None:
        """Drop the lines before seq `first`."""
        count = bisect.bisect_left(self._seqs, first)
        rendered = min(count, len(self._starts))
        if rendered:
            self.dropped += drop_lines(self.text, len(HEADER), self._starts, self.dropped, rendered)
            del self._starts[:rendered]
        del self._seqs[:count]


class TaskViews:
    """The tasks' events as their users read them, a `TenantView` kept for each task read: a cache beside the
    kernel, never in it (held by the Runtime), so that a snapshot's layout is the kernel's alone. Once the trace
    has dropped lines (`prune`, after each change and at each read), the views of the tasks reaped go and the
    others drop those lines; a trace not seen before (a kernel recovered) starts them afresh."""

    def __init__(self) -> None:
        self._views: dict[int, TenantView] = {}  # pid -> its lines read so far
        self._trace: TraceLog | None = None  # the trace of the views
        self._first = 0  # the trace's first seq at the last prune

    def of_task(self, trace: TraceLog, task: Task, end: int | None = None) -> bytearray:
        """TraceLog.of_task in the task's view kept: a line rendered at the first read that reaches it."""
        self.prune(trace)
        return trace.of_task(task, self._views.setdefault(task.pid, TenantView()), end)

    def prune(self, trace: TraceLog) -> None:
        """Forget the views of tasks reaped and the lines dropped, if `trace` dropped any since the last prune."""
        if trace is self._trace and trace.first == self._first:
            return
        if trace is not self._trace:
            self._views, self._trace = {}, trace
        self._first = trace.first
        self._views = {pid: view for pid, view in self._views.items() if pid in trace.tasks}
        for view in self._views.values():
            view.drop_before(trace.first)
