"""/replay/PID: one task's timeline, rebuilt from its trace lines (which the journal rebuilds).

A task the kernel no longer holds (reaped, or compacted out of the journal) is shown from
its lines in the trace archive (archive.py), as an `Archived` task, with the same hiding of
other tenants as a live task's lines.
"""
import csv
import io

import attrs


@attrs.frozen
class Archived:
    """What a task's archived lines tell of it: its submit line's name and uid, its exit line's state."""

    pid: int
    name: str
    model: str
    tenant: str
    uid: int
    exit: str | None
    lines: bytes


def show(kernel, task) -> str:
    head = f"pid {task.pid} {task.spec.name} model={task.model} tenant={task.tenant} exit={task.exit or '-'}\n"
    return head + timeline(kernel.trace.of_task(task))


def show_archived(kernel, task: Archived) -> str:
    """As `show`: the archived lines as the task's tenant reads them (kernel/trace.py's hiding of other tenants)."""
    head = f"pid {task.pid} {task.name} model={task.model} tenant={task.tenant} exit={task.exit or '-'}\n"
    return head + timeline(kernel.trace.redact_lines(task.tenant, task.lines))


def archived(pid: int, lines: bytes) -> Archived | None:
    """Task `pid` as its archived `lines` (CSV with the header) show it; None without any line."""
    rows = rows_of(lines)
    if not rows:
        return None
    fields = dict(word.split("=", 1) for word in detail_of(rows, "submit").split() if "=" in word)
    uid = fields.get("uid", "")
    exit_detail = detail_of(rows, "exit")
    return Archived(pid=pid, name=fields.get("name", "-"), model=rows[0]["model"], tenant=rows[0]["tenant"],
                    uid=int(uid) if uid.isdigit() else 0, exit=exit_detail.split(";")[0] or None, lines=lines)


def rows_of(lines: bytes) -> list[dict]:
    return list(csv.DictReader(io.StringIO(lines.decode())))


def detail_of(rows: list[dict], kind: str) -> str:
    """The detail of the first line of type `kind` ('' if none)."""
    return next((row["detail"] for row in rows if row["type"] == kind), "")


def timeline(lines: bytes) -> str:
    """One line per trace line: seconds since the first, type, GPU, detail."""
    rows = rows_of(lines)
    if not rows:
        return ""
    start = int(rows[0]["time_us"])
    return "".join(f"{(int(r['time_us']) - start) / 1e6:+12.6f}s  {r['type']:<12} "
                   f"{'gpu=' + r['gpu'] + ' ' if r['gpu'] else ''}{r['detail']}\n" for r in rows)
