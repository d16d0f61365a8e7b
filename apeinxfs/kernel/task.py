"""A task: one inference request's state, counters, output and own trace lines.

Mutable on purpose (the kernel updates it in place on every step); only the kernel
writes to it. `slots` keep 100,000 of them small.
"""
import enum
from typing import TYPE_CHECKING

import attrs

from .spec import TaskSpec

if TYPE_CHECKING:
    from .billing import Meter


class State(enum.Enum):
    """Task states of docs/apeinxfs.5.md, with their /proc-style letter."""

    NEW = ("N", "new")
    QUEUED = ("Q", "queued")
    RUNNING = ("R", "running")
    PREEMPTED = ("P", "preempted")
    STOPPED = ("T", "stopped")
    EXITED = ("Z", "exited")

    def __str__(self) -> str:
        return f"{self.value[0]} ({self.value[1]})"


@attrs.define(slots=True, eq=False)
class Task:
    """One task. `exit` is the `wait` line once it has ended, else None."""

    pid: int
    spec: TaskSpec
    model: str
    tenant: str
    uid: int
    submitted_us: int
    tokens_in: int
    weight: int
    deadline_at_us: int | None
    state: State = State.NEW
    vruntime: int = 0
    tokens_out: int = 0
    kv_pages: int = 0
    gpu: int | None = None
    prefilled: bool = False
    cached_tokens: int = 0  # context tokens whose KV is in place without prefill (prefix hits, swap)
    # Its KV lease while it holds pages (memory.py writes these, on the task: no object per dispatch):
    kv_gpu: int | None = None  # the GPU of its pages
    kv_blocks: tuple[bytes, ...] = ()  # the shared prefix blocks it references there
    kv_private: int = 0  # its private pages
    kv_holds: int = 0  # the context tokens those hold (so growing by a token that fits is one comparison)
    first_token_us: int | None = None
    exit: str | None = None
    exited_us: int | None = None
    parent: int | None = None
    agent: int = 0
    children: list[int] = attrs.Factory(list)
    run_tokens: int = 0
    kv_preemptions: int = 0
    started_us: int | None = None  # first dispatch: the prompt is charged then
    prompt_estimated: bool = False  # tokens_in is the estimate, which the engine's count replaces (tenancy.meter_serve)
    # the prompt's least count, which its KV is placed at while the estimate (still reserved, charged and billed in
    # tokens_in) could fit in no GPU pool and the engine has not counted it; None: placed at tokens_in
    placed_prompt: int | None = None
    # its own uid's stop dropped its KV: the prefills up to its next token are charged (runqueue.py); a task stopped
    # by a release before this field continues with it False: one recompute free
    prefill_owed: bool = False
    meter: "Meter | None" = None  # the billing segment running now
    output: bytearray = attrs.Factory(bytearray)
    trace_last: int = 0  # the seq of its last trace line (trace.py chains its lines back from it)

    @property
    def context_tokens(self) -> int:
        """Tokens the engine holds KV for: the prompt (as placed) plus what was generated."""
        return self.kv_prompt_tokens + self.tokens_out

    @property
    def kv_prompt_tokens(self) -> int:
        """The prompt's tokens its KV is placed at: placed_prompt if set, else tokens_in."""
        return self.tokens_in if self.placed_prompt is None else self.placed_prompt

    @property
    def done(self) -> bool:
        return self.state is State.EXITED

    @property
    def runnable(self) -> bool:
        return self.state in (State.QUEUED, State.PREEMPTED)
