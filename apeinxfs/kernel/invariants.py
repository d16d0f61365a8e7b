"""Invariants: every redundant index of the kernel checked against its source of truth.

The kernel keeps indices beside its tasks so that dispatch is cheap: state counts, the run
queue's heaps, tenant and agent counters, the GPUs' batches, KV pools and prefix-block
refcounts, per-tenant usage, held tasks, wake-ups of ancestors. The source of truth is the
tasks themselves (their state, GPU, pages, tree links). Each component checks its own books
(`index_problems` of TaskTable, KVManager, Tenancy and the run queues); this module checks
what spans components (batches, queue membership, accounts) and `check_invariants` gathers
it all, O(state), raising `InvariantError` naming every disagreement. The test suite runs it after every event, `apeinxfs replay --verify` after
every journal row, the daemon after every commit when `daemon.check_invariants = true`.

Read-only: it changes nothing and emits nothing. It does not check policy (whether the
right task runs), only that the books agree with each other.
"""
from __future__ import annotations

import collections
from collections.abc import Hashable, Iterable, Iterator
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from .task import State, Task

if TYPE_CHECKING:
    from .kernel import Kernel

RUNNABLE = (State.QUEUED, State.PREEMPTED)


class InvariantError(AssertionError):
    """Redundant kernel state disagrees with its source; the message lists every disagreement."""


def check_invariants(kernel: Kernel) -> None:
    """Raise InvariantError if any component's books disagree with the tasks."""
    live = [task for task in kernel.tasks.values() if task.state is not State.EXITED]
    runnable = [task for task in live if task.state in RUNNABLE]
    running = [task for task in live if task.state is State.RUNNING]
    problems = [*kernel.tasks.index_problems(live), *check_gpus(kernel, running), *kernel.kv.index_problems(running),
                *check_queue(kernel, runnable), *check_accounts(kernel, runnable, running),
                *kernel.tenancy.index_problems(live), *kernel.engines.kv_reports.index_problems(),
                *kernel.counters.index_problems()]
    if problems:
        raise InvariantError(f"{len(problems)} kernel invariant(s) broken at version {kernel.version}:\n  "
                             + "\n  ".join(problems))


def check_gpus(kernel: Kernel, running: list[Task]) -> Iterator[str]:
    """A running task is in its GPU's batch and nothing else is; no batch is over its slots; the
    tasks fairness may preempt are running."""
    on_gpus = {pid: gpu.config.index for gpu in kernel.gpus for pid in gpu.running}
    if on_gpus != {task.pid: task.gpu for task in running}:
        yield f"GPU batches {sorted(on_gpus.items())} are not the running tasks and their GPUs"
    for gpu in kernel.gpus:
        for pid, task in gpu.running.items():
            if kernel.tasks.get(pid) is not task:
                yield f"gpu {gpu.config.index}: batch entry {pid} is not task {pid}"
    for gpu in kernel.gpus:
        if len(gpu.running) > gpu.config.slots:
            yield f"gpu {gpu.config.index}: {len(gpu.running)} tasks in a batch of {gpu.config.slots} slots"
    preemptible = kernel.reclaim.preemptible
    if not preemptible.keys() <= on_gpus.keys():
        yield f"preemptible {sorted(preemptible.keys() - on_gpus.keys())} are not running"


def check_queue(kernel: Kernel, runnable: list[Task]) -> Iterator[str]:
    """The run queue holds only runnable tasks, each once, and every runnable task is in it, held
    back by its tenant or stalled for its model's engine; its heaps agree with it. (A held task
    that is stopped and continued, or re-prioritised, goes back in the queue while its stale entry
    stays in the held list: the hold is decided again when it reaches the head, and a release
    pushes it again, which changes nothing.)"""
    held = {task.pid for usage in kernel.tenancy.usage.values() for task in usage.held}
    held |= {pid for stalled in kernel.engines.book.stalled.values() for pid in stalled}  # waiting for a down engine
    queued = [task.pid for task in kernel.runq.tasks()]
    runnable_pids = {task.pid for task in runnable}
    if len(queued) != len(kernel.runq) or len(set(queued)) != len(queued) or not set(queued) <= runnable_pids:
        yield f"run queue {sorted(queued)} is not a set of runnable tasks {sorted(runnable_pids)}"
    if not runnable_pids <= set(queued) | held:
        missing = sorted(runnable_pids - set(queued) - held)
        yield f"runnable tasks {missing} are not in the run queue, held or stalled"
    yield from kernel.runq.index_problems()


def check_accounts(kernel: Kernel, runnable: list[Task], running: list[Task]) -> Iterator[str]:
    """Each tenant's and agent's runnable/running counts are its tasks'; the active heaps hold the
    active entities; the active weight is theirs summed; the tenants are the kernel's."""
    accounts = kernel.accounts
    tenants = kernel.tenancy.tenants
    if accounts.tenants.keys() != tenants.keys():
        yield f"scheduler tenants {sorted(accounts.tenants)} are not the tenants {sorted(tenants)}"
    for level, entities in (("tenant", accounts.tenants), ("agent", accounts.agents)):
        key = attrgetter(level)
        want = _pairs(collections.Counter(map(key, runnable)), collections.Counter(map(key, running)))
        have = {name: (e.runnable, e.running) for name, e in entities.items() if e.runnable or e.running}
        if have != want:
            yield f"{level} counts (runnable, running) {have} are not their tasks' {want}"
        active = set(accounts.active_tenants) if level == "tenant" else \
            {agent for heap in accounts.active_agents.values() for agent in heap}
        if active != want.keys():
            yield f"active {level} heap {sorted(active, key=str)} is not the active {level}s {sorted(want, key=str)}"
    weight = sum(accounts.tenants[name].weight for name in accounts.active_tenants if name in accounts.tenants)
    if accounts.active_weight != weight:
        yield f"active weight {accounts.active_weight} is not the active tenants' {weight}"


def _pairs(runnable: collections.Counter[Hashable],
           running: collections.Counter[Hashable]) -> dict[Hashable, tuple[int, int]]:
    """{key: (runnable, running)} of every key in either."""
    return {key: (runnable[key], running[key]) for key in runnable.keys() | running.keys()}


def grouped(pairs: Iterable[tuple[Any, Any]]) -> dict[Any, set[Any]]:
    """{key: {value, ...}} of (key, value) pairs: how the run queues' index checks (sched.py) group tasks."""
    groups: dict[Any, set[Any]] = collections.defaultdict(set)
    for key, value in pairs:
        groups[key].add(value)
    return groups
