"""The run queue in force: the policy's queue (sched.py) over the tenants' and agents' accounts.

`RunQueue` owns the queue of the policy in force (replaced, same tasks, on a policy switch)
and charges the accounts: it says which runnable task is next and why, counts tasks in and
out of their tenant and agent (lifting an entity that becomes active, with a `lift` trace
line), and charges what was served. Which GPU a task runs on, and when, is the kernel's.
"""
from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, KeysView

import attrs

from . import events as ev
from .config import SchedConfig
from .counters import Counters
from .gpus import Gpu
from .sched import Accounts, FairQueue, FlatQueue, make_queue, prio_weight, vruntime_delta
from .seams import Host
from .task import Task


class RunQueue:
    """Who runs next under the policy in force, and the accounts that decide it."""

    def __init__(self, sched: SchedConfig, accounts: Accounts, counters: Counters, host: Host):
        self.accounts, self._sched, self._counters, self._host = accounts, sched, counters, host
        self._queue = self._make(sched.policy)
        self._models: dict[str, int] = {}  # model -> its tasks in the queue (none: not a key)
        self._tenants: dict[str, int] = {}  # tenant -> its tasks in the queue (none: not a key)

    def _make(self, policy: str) -> FairQueue | FlatQueue:
        return make_queue(policy, self.accounts, int(self._sched.deadline_boost_s * 1e6))

    @property
    def name(self) -> str:
        """The policy in force."""
        return self._queue.name

    @property
    def preempts(self) -> bool:
        """Whether the policy preempts for fairness (`fair`)."""
        return self._queue.preempts

    def why(self, set_aside: Iterable[Task]) -> str:
        """Why the last peek chose its task; `set_aside`: queued tasks a dispatch pass holds out of the queue."""
        return self._queue.why(set_aside)

    def __len__(self) -> int:
        return len(self._queue)

    def peek(self, now_us: int) -> Task | None:
        """The task that runs next, at `now_us` (deadlines may boost one)."""
        return self._queue.peek(now_us, self._sched.slice_tokens)

    def tasks(self) -> list[Task]:
        """The queued tasks, in the policy's order."""
        return self._queue.tasks()

    def queued_models(self) -> KeysView[str]:
        """The models that have tasks in the queue."""
        return self._models.keys()

    def queued_of(self, tenant: str) -> int:
        """How many tasks of tenant `tenant` are in the queue."""
        return self._tenants.get(tenant, 0)

    def push(self, task: Task) -> None:
        """Queue a runnable task (again), its counts unchanged: held, stalled or re-prioritised."""
        self._change(self._queue.push, task)

    def remove(self, task: Task) -> None:
        """Take a task out of the queue, if it is there, its counts unchanged."""
        self._change(self._queue.remove, task)

    def _change(self, change: Callable[[Task], None], task: Task) -> None:
        """Push or remove the task, and count it in or out of its model's and its tenant's queued tasks if that
        changed the queue (a task pushed again, or removed when it is not there, changes nothing)."""
        before = len(self._queue)
        change(task)
        if delta := len(self._queue) - before:
            _add(self._models, task.model, delta)
            _add(self._tenants, task.tenant, delta)

    def enqueue(self, task: Task) -> None:
        """A task becomes runnable: counted with its tenant and agent, then queued."""
        self.count(task, "runnable", +1)
        self.push(task)

    def count(self, task: Task, field: str, delta: int) -> None:
        """Add `delta` to the runnable or running count of the task's tenant and agent."""
        for entity, before in self.accounts.count(task, field, delta):
            self._counters.count(task.tenant, "lifts")
            self._host.emit("lift", task, f"{entity.name} counter {before:.1f} -> {entity.counter:.1f}: "
                                          "active again, raised to the least active counter")

    def start(self, task: Task) -> None:
        """The queue's head is dispatched: out of the queue, from runnable to running."""
        self.remove(task)
        self.accounts.start(task)

    def reprioritise(self, task: Task, prio: int) -> None:
        self.remove(task)
        task.spec = attrs.evolve(task.spec, prio=prio)
        task.weight = prio_weight(prio)
        if task.runnable:
            self.push(task)

    def charge(self, task: Task, gpu: Gpu, chunk: ev.Chunk) -> None:
        """VTC cost of what was served: input and output tokens apart, output dearer under KV pressure.

        A prefill is charged up to the first token after the task's submission, or after its own
        `stop` dropped its KV (`prefill_owed`: the task's uid asked for the recompute; an operator's
        stop is like a preemption). Any other prefill after the first token recomputes a context
        dropped by a preemption the kernel chose, and was paid for once."""
        sched = self._sched
        pressure = 1 + sched.pressure_cost * task.kv_pages / max(1, gpu.pool.pages_total)
        owed = task.tokens_out == chunk.tokens or task.prefill_owed  # nothing generated before this chunk or since own stop
        prefill = chunk.prefill if owed else 0
        if chunk.tokens:
            task.prefill_owed = False
        self.accounts.charge(task, sched.input_cost * prefill + sched.output_cost * chunk.tokens * pressure)
        task.vruntime += vruntime_delta(chunk.tokens, task.weight)

    def rekey(self, task: Task) -> None:
        """Re-order the task's tenant and agent after a charge."""
        self._queue.rekey(task)

    def set_policy(self, policy: str) -> str:
        """Switch to `policy`'s queue: the same runnable tasks, re-queued in pid order; the old policy's name."""
        old, self._queue = self._queue, self._make(policy)
        for task in sorted(old.tasks(), key=lambda t: t.pid):
            self._queue.push(task)
        return old.name

    def index_problems(self) -> list[str]:
        """What disagrees between the queued tasks and the queue's heaps and counts by model and by tenant (for
        invariants.py)."""
        queued = self._queue.tasks()
        counts = {"model": (self._models, count_by(queued, "model")),
                  "tenant": (self._tenants, count_by(queued, "tenant"))}
        return list(self._queue.index_problems()) + [f"queued tasks by {key} {kept} are not the queue's {counted}"
                                                     for key, (kept, counted) in counts.items() if kept != counted]


def _add(counts: dict[str, int], key: str, delta: int) -> None:
    """Add `delta` to `counts[key]`, a key counted down to none no longer kept."""
    if left := counts.get(key, 0) + delta:
        counts[key] = left
    else:
        del counts[key]


def count_by(tasks: Iterable[Task], attribute: str) -> dict[str, int]:
    """value -> how many of `tasks` have it as `attribute` (none: not a key): `RunQueue._models` (by "model")
    and `_tenants` (by "tenant") of queued `tasks`."""
    return dict(collections.Counter(getattr(task, attribute) for task in tasks))
