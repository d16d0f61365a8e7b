"""The kernel's inputs: every state change is one of these records, applied in order.

Each record is journaled (see journal.py; engine steps in a batch at most PROGRESS_S
after they were applied, runtime.py), so replaying the journal rebuilds the same state and
the same trace. `to_row`/`from_row` are the journal's encoding: a kind name and a JSON
body; `steps_to_row`/`stamped_of_row` that of a `steps` row, several steps with their
times in one compact row.
"""
import json
import re
import typing
from collections.abc import Iterable

import attrs

from .access import PID_MAX, UID_MAX, id_bound
from .config import ModelConfig
from .kvmem import COUNT_ENGINE, COUNT_WORDS
from .spec import TaskCommand, TaskSpec
from .tenant_config import TenantConfig, tenant_from_dict

OMITTED_AT_DEFAULT = "omitted_at_default"  # a field a journal row holds only when not its default (to_row)
TOKENS_MAX = 1 << 30  # the most tokens one chunk may count: beyond any context, short of what would overflow a sum
SURROGATE = re.compile("[\ud800-\udfff]")  # a str holds one only alone (JSON's "\\ud800"): no UTF-8 for it


@attrs.frozen
class ByCaller:
    """Who caused an event: the caller's uid, its process id and tenant (for the trace and audit)."""

    uid: int = attrs.field(default=0, kw_only=True, validator=id_bound(UID_MAX))
    caller_pid: int = attrs.field(default=0, kw_only=True, validator=id_bound(PID_MAX))
    caller_tenant: str | None = attrs.field(default=None, kw_only=True)


@attrs.frozen
class NewTask(ByCaller):
    """An event that adds a task; `counting`: how its prompt tokens are counted and billed (kvmem.py), in
    every row it is journaled in: from_row gives a row without it, of older code, the rule of its time."""

    counting: int = attrs.field(default=COUNT_ENGINE, kw_only=True,
                                validator=attrs.validators.in_((COUNT_WORDS, COUNT_ENGINE)))


@attrs.frozen
class Submit(NewTask):
    """A new task from a submit line, by Unix user `uid`; `note` says what a policy rule changed."""

    spec: TaskSpec
    note: str = ""


@attrs.frozen
class Kill(ByCaller):
    """Kill task `pid` (/ctl/kill or `kill` in its ctl file)."""

    pid: int


@attrs.frozen
class Control(ByCaller):
    """A stop / cont / prio command for task `pid`."""

    pid: int
    command: TaskCommand


def well_formed(text: str) -> str:
    """`text` with each lone surrogate (an engine's JSON may escape one) replaced by U+FFFD: a task's output
    is UTF-8, and a surrogate has none (a chunk holding one would raise in the middle of its step). The regex
    runs only on text that cannot be encoded: most non-ASCII text (CJK, accents) is encoded faster than searched."""
    if text.isascii():
        return text
    try:
        text.encode()
    except UnicodeEncodeError:
        return SURROGATE.sub("\ufffd", text)
    return text


@attrs.frozen
class Chunk:
    """What one engine step did for one task: prefilled `prefill` tokens, produced `text`.

    `prefill`: the prompt tokens of the request the engine started, as it counts them (cached ones
    included; a resumed task's request holds its text so far too), once; the first a task gets is
    billed as its prompt (tenancy.py). `final`: the engine ended the sequence (end of text, a stop
    word, its own limit), so the task is done with the tokens it has, even short of max_tokens.
    """

    pid: int
    text: str = attrs.field(converter=well_formed)  # cleaned where every driver's chunk is built
    tokens: int = attrs.field(validator=id_bound(TOKENS_MAX, "a token count"))
    prefill: int = attrs.field(default=0, validator=id_bound(TOKENS_MAX, "a token count"))
    final: bool = False


def _chunks(chunks: Iterable[Chunk]) -> tuple[Chunk, ...]:
    return tuple(chunks)


@attrs.frozen
class Step:
    """One engine step on GPU `gpu`: a chunk per task in the batch."""

    gpu: int
    chunks: tuple[Chunk, ...] = attrs.field(converter=_chunks)


@attrs.frozen
class Failed:
    """The driver gave up on task `pid` (engine down, protocol error)."""

    pid: int
    reason: str


@attrs.frozen
class Interrupted:
    """Task `pid`'s engine stopped serving it midway (its stream broke, its engine went away): it goes
    back to the queue with the text it has and resumes from there (engines.py)."""

    pid: int
    reason: str


@attrs.frozen
class EngineHealth:
    """Model `model`'s engine became reachable (`up`) or not (`reason`): while it is down nothing
    of that model is dispatched and its queued tasks wait (engines.py). `gpus`: those of the one
    endpoint it is about, for a model with endpoints (endpoints.py); empty: the model's engine."""

    model: str
    up: bool
    reason: str = ""
    gpus: tuple[int, ...] = attrs.field(default=(), converter=tuple[int, ...])


@attrs.frozen
class EngineKV:
    """The engine of `model` on GPUs `gpus` (empty: its one engine, on every GPU) reports `tokens`
    tokens held in its KV cache; the kernel reconciles its books of those GPUs with it (kvreport.py)."""

    model: str
    gpus: tuple[int, ...] = attrs.field(converter=tuple[int, ...])
    tokens: int


@attrs.frozen
class Rejected(ByCaller):
    """A write that was refused: recorded so the trace keeps the reason across restarts."""

    path: str
    reason: str
    errno: int = 0
    denial: bool = False  # refused for who the caller is (role, namespace, policy, quota): audited
    # the uid's refusals (denials if `denial`) before it left unrecorded by `[limits] reject_lines`; a row
    # leaves it out when 0 (to_row), so older code reads every row but a summary
    suppressed: int = attrs.field(default=0, validator=attrs.validators.ge(0), metadata={OMITTED_AT_DEFAULT: True})


@attrs.frozen
class SetPolicy(ByCaller):
    """Switch the scheduling policy (a write to /sched/policy)."""

    policy: str


@attrs.frozen
class SetTenant(ByCaller):
    """Create a tenant or replace its settings (/ctl/tenants, /tenants/NAME/*); `what` was written."""

    tenant: TenantConfig
    what: str


@attrs.frozen
class RemoveTenant(ByCaller):
    """Remove a tenant that has no live tasks."""

    name: str


@attrs.frozen
class SetModel(ByCaller):
    """Add a model at runtime (/ctl/models); `what` was written. Its driver starts on every GPU."""

    model: ModelConfig
    what: str


@attrs.frozen
class RemoveModel(ByCaller):
    """Remove a model that has no live tasks; its driver stops."""

    name: str


@attrs.frozen
class SetRules(ByCaller):
    """Policy rules (canonical texts) to append, or to replace the whole list with."""

    rules: tuple[str, ...] = attrs.field(converter=tuple[str, ...])
    replace: bool = False


@attrs.frozen
class GpuMemory:
    """NVML read a real GPU's free memory: new tasks are placed there only into what is really free."""

    gpu: int
    free_mib: int


@attrs.frozen
class PidBlock:
    """The cluster (etcd) granted this node pids `first`..`first + count - 1`, unique cluster-wide:
    journaled so that a replay gives every task the pid it had (kernel/tasktable.py)."""

    first: int
    count: int


@attrs.frozen
class Placed(ByCaller):
    """Where the cluster placed a write's tasks (`pids`, as ranges), on node `node`, and why: a
    trace line only, since the tasks' own events are on the node that runs them."""

    node: str
    pids: str
    reason: str


@attrs.frozen
class Adopt(NewTask):
    """The cluster moved task `pid` here from node `origin`, whose lease expired, in its epoch `epoch`:
    it goes on under the same pid, with no parent here, from the `tokens` tokens of `output` that node
    last replicated (none: it starts afresh)."""

    pid: int
    spec: TaskSpec
    origin: str
    epoch: int
    output: str = ""
    tokens: int = attrs.field(default=0, validator=attrs.validators.ge(0))


@attrs.frozen
class MovedAway:
    """Live task `pid` was moved to node `node` while this node had lost its lease: it stops here
    without an exit line (the task's exit is the new node's)."""

    pid: int
    node: str


@attrs.frozen
class Shared:
    """The cluster's log of settings changes (etcd, cluster/shared.py) is applied here up to its entry at
    etcd revision `revision`, written on node `node`: journaled with that entry's events, or alone with
    the reason this node `refused` them. Entries apply in revision order, each once."""

    revision: int
    node: str
    refused: str = ""


@attrs.frozen
class Fence:
    """A cluster node's engines are `held` (its lease may have expired, so its tasks may have been moved)
    or released (it checked with etcd which tasks are still its own): while held, no batch goes to an
    engine, nothing is dispatched, and engine steps change nothing."""

    held: bool
    reason: str


@attrs.frozen
class Tick:
    """Time passed: deadlines up to now are checked."""


@attrs.frozen
class Restart:
    """The daemon started again on this journal: running tasks go back to the queue."""


@attrs.frozen
class Migrated:
    """The daemon started from `snapshot`, written by an older apeinxfs, whose objects of `classes` it migrated
    (kernel/migrations.py): only traced."""

    snapshot: str
    classes: str


@attrs.frozen
class JournalFailed:
    """The journal could not be written (`errno`, `reason`): the daemon went degraded. Applied when
    it happened, journaled once the journal can be written again (health.py), at its own time."""

    errno: int
    reason: str


@attrs.frozen
class JournalRecovered:
    """The journal can be written again after failing since `since_us`: the daemon resumes."""

    errno: int
    since_us: int


Event = (Submit | Kill | Control | Step | Failed | Rejected | SetPolicy | Tick | Restart | Migrated | SetTenant
         | RemoveTenant | SetRules | SetModel | RemoveModel | GpuMemory | JournalFailed | JournalRecovered
         | Interrupted | EngineHealth | EngineKV | PidBlock | Placed | Adopt | MovedAway | Shared
         | Fence)
KINDS: dict[str, type[Event]] = {cls.__name__.lower(): cls for cls in typing.get_args(Event)}


JOURNAL_JSON = json.JSONEncoder(separators=(",", ":"), default=str)  # the journal's; json.dumps(..., separators=) builds one per call


def to_row(event: Event) -> tuple[str, str]:
    """(kind, JSON body) for the journal; decimals (a model's prices) as their exact text."""
    return type(event).__name__.lower(), JOURNAL_JSON.encode(attrs.asdict(event, filter=_journaled))


def _journaled(field: "attrs.Attribute[typing.Any]", value: typing.Any) -> bool:
    """Whether a row holds the field: not one that older code lacks while it has its default."""
    return not (field.metadata.get(OMITTED_AT_DEFAULT) and value == field.default)


_STEPS_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
CHUNK_DEFAULTS = (None, None, 1, 0, 0)  # a chunk's fields in a steps row: pid, text, tokens, prefill, final


def steps_to_row(stamped: list[tuple[int, Step]]) -> tuple[int, str, str]:
    """(time_us, "steps", body): engine steps in one row, at the first one's time. The body is
    [[µs after it, gpu, [[pid, text, tokens, prefill, final], ...]], ...], each chunk without the
    trailing fields that have their usual value (1 token, no prefill, not final)."""
    first = stamped[0][0]
    body = [[time_us - first, step.gpu, [_chunk_fields(chunk) for chunk in step.chunks]] for time_us, step in stamped]
    return first, "steps", _STEPS_JSON.encode(body)


def _chunk_fields(chunk: Chunk) -> list[int | str]:
    fields: list[int | str] = [chunk.pid, chunk.text, chunk.tokens, chunk.prefill, int(chunk.final)]
    while len(fields) > 2 and fields[-1] == CHUNK_DEFAULTS[len(fields) - 1]:
        fields.pop()
    return fields


def stamped_of_row(time_us: int, kind: str, body: str) -> list[tuple[int, Event]]:
    """The (time_us, event) pairs a journal row holds: one, or a steps row's steps."""
    if kind != "steps":
        return [(time_us, from_row(kind, body))]
    return [(time_us + after, Step(gpu=gpu, chunks=[_chunk(*fields) for fields in chunks]))
            for after, gpu, chunks in json.loads(body)]


def _chunk(pid: int, text: str, tokens: int = 1, prefill: int = 0, final: int = 0) -> Chunk:
    return Chunk(pid=pid, text=text, tokens=_journaled_count(tokens), prefill=_journaled_count(prefill),
                 final=bool(final))


def _journaled_count(value: typing.Any) -> typing.Any:
    """A count as a journal row holds it: a whole-number float (journaled before drivers checked counts to be
    ints) as that int; anything else as it is, for Chunk's validator to judge."""
    return int(value) if type(value) is float and value.is_integer() else value


def from_row(kind: str, body: str) -> Event:
    """The record a journal row holds."""
    data = json.loads(body)
    if kind in ("submit", "adopt"):
        return KINDS[kind](**{"counting": COUNT_WORDS, **data, "spec": TaskSpec(**data["spec"])})
    if kind == "control":
        return Control(**{**data, "command": TaskCommand(**data["command"])})
    if kind == "settenant":
        return SetTenant(**{**data, "tenant": tenant_from_dict(data["tenant"])})
    if kind == "setmodel":
        return SetModel(**{**data, "model": ModelConfig(**data["model"])})
    if kind == "step":
        return Step(gpu=data["gpu"], chunks=[_chunk(**c) for c in data["chunks"]])
    return KINDS[kind](**data)
