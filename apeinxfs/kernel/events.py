"""The kernel's inputs: every state change is one of these records, applied in order.

Each record is journaled before it is applied (see journal.py), so replaying the journal
rebuilds the same state and the same trace. `to_row`/`from_row` are the journal's
encoding: a kind name and a JSON body.
"""
import json

import attrs

from .spec import TaskCommand, TaskSpec


@attrs.frozen
class Submit:
    """A new task from a submit line, by Unix user `uid`."""

    spec: TaskSpec
    uid: int = 0


@attrs.frozen
class Kill:
    """Kill task `pid` (/ctl/kill or `kill` in its ctl file)."""

    pid: int
    uid: int = 0


@attrs.frozen
class Control:
    """A stop / cont / prio command for task `pid`."""

    pid: int
    command: TaskCommand
    uid: int = 0


@attrs.frozen
class Chunk:
    """What one engine step did for one task: prefilled `prefill` tokens, produced `text`."""

    pid: int
    text: str
    tokens: int
    prefill: int = 0


@attrs.frozen
class Step:
    """One engine step on GPU `gpu`: a chunk per task in the batch."""

    gpu: int
    chunks: tuple[Chunk, ...] = attrs.field(converter=tuple)


@attrs.frozen
class Failed:
    """The driver gave up on task `pid` (engine down, protocol error)."""

    pid: int
    reason: str


@attrs.frozen
class Rejected:
    """A write that was refused: recorded so the trace keeps the reason across restarts."""

    path: str
    reason: str
    uid: int = 0


@attrs.frozen
class SetPolicy:
    """Switch the scheduling policy (a write to /sched/policy)."""

    policy: str
    uid: int = 0


@attrs.frozen
class Tick:
    """Time passed: deadlines up to now are checked."""


@attrs.frozen
class Restart:
    """The daemon started again on this journal: running tasks go back to the queue."""


KINDS = {cls.__name__.lower(): cls for cls in (Submit, Kill, Control, Step, Failed, Rejected, SetPolicy, Tick, Restart)}


_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))  # json.dumps(..., separators=) builds one per call


def to_row(event) -> tuple[str, str]:
    """(kind, JSON body) for the journal."""
    return type(event).__name__.lower(), _COMPACT_JSON.encode(attrs.asdict(event))


def from_row(kind: str, body: str):
    """The record a journal row holds."""
    data = json.loads(body)
    if kind == "submit":
        return Submit(spec=TaskSpec(**data["spec"]), uid=data["uid"])
    if kind == "control":
        return Control(pid=data["pid"], command=TaskCommand(**data["command"]), uid=data["uid"])
    if kind == "step":
        return Step(gpu=data["gpu"], chunks=[Chunk(**c) for c in data["chunks"]])
    return KINDS[kind](**data)
