"""Command functions of the ctl files: /ctl/submit, /ctl/kill and /tasks/PID/ctl.

Each turns complete lines into kernel events. A write is all or nothing: every line is
parsed and checked first; if any is refused, nothing is applied, the refusal is journaled
(so the trace keeps its reason) and the write fails with the first line's errno, with an
`error: ...` reply for each refused line.
"""
from ..kernel.errors import ApeinxError
from ..kernel.events import Control, Kill, Submit
from ..kernel.grammar import parse_pid, parse_submit, parse_task_command
from .base import decode_line


def run_lines(rt, path: str, raw_lines: list[bytes], caller, to_event) -> list[str]:
    """Parse and check every line, then commit them together; replies in order."""
    events, errors = [], []
    for number, raw in enumerate(raw_lines, 1):
        try:
            line = decode_line(raw)
            if line.strip():
                event = to_event(line, caller)
                rt.kernel.check(event)
                events.append(event)
        except ApeinxError as exc:
            errors.append((number, exc))
    if errors:
        _refuse(rt, path, errors, caller, len(raw_lines))
    return [str(r) if r is not None else "ok" for r in rt.commit_checked(events)] if events else []


def _refuse(rt, path, errors, caller, count) -> None:
    where = (lambda n: f"line {n}: ") if count > 1 else (lambda n: "")
    replies = [f"{where(n)}{exc.reason}" for n, exc in errors]
    first = errors[0][1]
    rt.reject(path, first, caller.uid)
    raise type(first)(replies[0], replies)


def submit(rt):
    """/ctl/submit: one task per line, replies are pids."""
    return lambda lines, caller: run_lines(
        rt, "/ctl/submit", lines, caller, lambda line, c: Submit(spec=parse_submit(line), uid=c.uid))


def kill(rt):
    """/ctl/kill: one pid per line."""
    return lambda lines, caller: run_lines(
        rt, "/ctl/kill", lines, caller, lambda line, c: Kill(pid=parse_pid(line), uid=c.uid))


def task_ctl(rt, pid: int):
    """/tasks/PID/ctl: kill | stop | cont | prio N."""
    def to_event(line, caller):
        command = parse_task_command(line)
        if command.verb == "kill":
            return Kill(pid=pid, uid=caller.uid)
        return Control(pid=pid, command=command, uid=caller.uid)
    return lambda lines, caller: run_lines(rt, f"/tasks/{pid}/ctl", lines, caller, to_event)
