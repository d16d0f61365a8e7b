"""Command functions of the ctl files: /ctl/submit, /ctl/kill and /tasks/PID/ctl.

Each turns complete lines into kernel events. A write is all or nothing: every line is
parsed and checked first; if any is refused, nothing is applied, the refusal is journaled
(so the trace keeps its reason) and the write fails with the first line's errno, with an
`error: ...` reply for each refused line (the first REFUSED_MAX of them). `check_anywhere` runs
the same checks on a cluster write's lines as a dry run (nothing applied) before they are
placed over the nodes, so such a write is refused whole as here.
"""
from ..kernel.errors import ApeinxError, Denied, Hidden, NoDriver
from ..kernel.events import Control, Kill, Submit
from ..kernel.grammar import parse_pid, parse_submit, parse_task_command
from .base import decode_line

REFUSED_MAX = 20  # refused lines checked and reported per write


def run_lines(rt, raw_lines: list[bytes], caller, to_event) -> list[str]:
    """Parse and admit every line (each counting those before it), then commit them together."""
    def event(raw: bytes):
        line = decode_line(raw)
        return to_event(line, caller) if line.strip() else None
    events = checked(rt, enumerate(raw_lines, 1), len(raw_lines), event,
                     lambda event, now, batch: rt.kernel.admit(event, now, batch, rt.elsewhere))
    return [str(r) if r is not None else "ok" for r in rt.commit_checked(events)] if events else []


def checked(rt, numbered, count: int, to_event, admit) -> list:
    """The events of a write's `count` lines, `numbered` (number, line) and made by `to_event(line)` (None for a
    blank one), each admitted by `admit(event, now, batch)` counting those before it; the write's refusal
    (journaled by the write's handle, nodes/base.py) if a line is refused. Checking stops at the REFUSED_MAX-th
    refused line: the write fails anyway, and a megabyte of junk lines must not cost seconds and a reply of tens
    of megabytes."""
    events, errors, batch, now = [], [], {}, rt.clock.now_us()
    for number, line in numbered:
        if not line:  # an empty line, skipped without decoding: a flood of newlines stays cheap
            continue
        try:
            if (event := to_event(line)) is not None:
                events.append(admit(event, now, batch))
        except ApeinxError as exc:
            errors.append((number, exc))
            if len(errors) == REFUSED_MAX:
                break
    if errors:
        _refuse(errors, count)
    return events


def check_anywhere(rt, specs: dict, count: int, caller, anywhere) -> None:
    """A submit write of `count` lines checked whole as this node would admit it, but for what only the node
    running a line can know (SubmitChecks.admit_anywhere: a dry run): `specs`, its lines' parsed with the
    caller's tenant by their index in the write (those left to their node left out), a child of a task on
    another node seen as the caller would see that task there (`anywhere.parents`); its refusal raised as this
    node's would be."""
    def to_event(spec):
        caller.identity.require("user", "submitting")
        if spec.parent in anywhere.parents:  # a child of a task on another node: its tenant as published
            check_visible(spec.parent, anywhere.parents[spec.parent], caller)
        return as_submit(rt, spec, caller)
    checked(rt, ((index + 1, spec) for index, spec in specs.items()), count, to_event,
            lambda event, now, batch: rt.kernel.submits.admit_anywhere(event, now, batch, rt.elsewhere, anywhere))


def _refuse(errors, count) -> None:
    where = (lambda n: f"line {n}: ") if count > 1 else (lambda n: "")
    replies = [f"{where(n)}{exc.reason}" for n, exc in errors]
    if len(errors) == REFUSED_MAX and errors[-1][0] < count:
        replies.append(f"lines {errors[-1][0] + 1}..{count}: not checked ({REFUSED_MAX} lines refused already)")
    raise type(errors[0][1])(replies[0], replies)


def submit(rt):
    """/ctl/submit: one task per line, replies are pids; a task goes into its caller's tenant, and runs here."""
    def to_event(line, caller):
        caller.identity.require("user", "submitting")
        event = as_submit(rt, parse_submit(line, caller.tenant), caller)
        check_runnable(rt, event.spec)
        return event
    return lambda lines, caller: run_lines(rt, lines, caller, to_event)


def check_runnable(rt, spec) -> None:
    """Refuse (ENXIO) a task of a model whose driver cannot be built here (enginehost.CannotRun): it would
    only fail at once. Judged by the node that runs the line; not in check_anywhere's dry run, since another
    node may run that model."""
    model = rt.kernel.models.name_of(spec)
    if (cannot_run := rt.cannot_run.get(model)) is not None:
        raise NoDriver(cannot_run.why(model))


def as_submit(rt, spec, caller) -> Submit:
    """The Submit of `spec` by the caller, if it may run in its tenant (in_tenant)."""
    return Submit(spec=in_tenant(rt, spec, caller), uid=caller.uid, caller_pid=caller.pid)


def in_tenant(rt, spec, caller):
    """The spec, parsed with the caller's tenant for one its line does not name (parse_submit), if it may
    run there: in the caller's tenant, or in one an admin names; a child's is its parent's."""
    identity = caller.identity
    if spec.parent is not None:
        visible_task(rt, spec.parent, caller)
        return spec
    if spec.tenant is None:
        raise Denied(f"uid {caller.uid} belongs to no tenant: ask an admin to add it to one")
    if not identity.admin and spec.tenant != caller.tenant:
        raise Hidden(f"no tenant {spec.tenant!r} for uid {caller.uid}")
    return spec


def visible_task(rt, pid: int, caller):
    """Task `pid` if it exists for the caller; another tenant's is as if it did not exist."""
    task = rt.kernel.tasks.get(pid)
    check_visible(pid, None if task is None else task.tenant, caller)
    return task


def check_visible(pid: int, tenant: str | None, caller) -> None:
    """Hidden (no such task) if task `pid`, of `tenant` (None: unknown here), is another tenant's for the caller."""
    if not caller.identity.sees(tenant):
        raise Hidden(f"no task {pid}")


def by(caller) -> dict:
    return {"uid": caller.uid, "caller_pid": caller.pid, "caller_tenant": caller.tenant}


def kill(rt):
    """/ctl/kill: one pid per line, of the caller's tenant (any, for an admin)."""
    def to_event(line, caller):
        caller.identity.require("user", "killing a task")
        pid = parse_pid(line)
        visible_task(rt, pid, caller)
        return Kill(pid=pid, **by(caller))
    return lambda lines, caller: run_lines(rt, lines, caller, to_event)


def task_ctl(rt, pid: int):
    """/tasks/PID/ctl: kill | stop | cont | prio N."""
    def to_event(line, caller):
        caller.identity.require("user", "controlling a task")
        command = parse_task_command(line)
        if command.verb == "kill":
            return Kill(pid=pid, **by(caller))
        return Control(pid=pid, command=command, **by(caller))
    return lambda lines, caller: run_lines(rt, lines, caller, to_event)
