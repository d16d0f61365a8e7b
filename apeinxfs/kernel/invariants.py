"""Invariants: every redundant index of the kernel checked against its source of truth.

The kernel keeps indices beside its tasks so that dispatch is cheap: state counts, the run
queue's heaps, tenant and agent counters, the GPUs' batches and open slots, KV pools and
prefix-block refcounts, per-tenant usage, held tasks, wake-ups of ancestors. The source of
truth is the tasks themselves (their state, GPU, pages, tree links). `check_invariants`
walks the state once per component, O(state), and raises `InvariantError` naming every
disagreement. The test suite runs it after every event, `apeinxfs replay --verify` after
every journal row, the daemon after every commit when `daemon.check_invariants = true`.

Read-only: it changes nothing and emits nothing. It does not check policy (whether the
right task runs), only that the books agree with each other.
"""
from __future__ import annotations

import collections
from collections.abc import Hashable, Iterator
from operator import attrgetter
from typing import TYPE_CHECKING

from .memory import KVManager
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
    problems = [*check_tasks(kernel, live), *check_trees(kernel, live), *check_gpus(kernel, running),
                *check_kv(kernel.kv, running), *check_queue(kernel, runnable),
                *check_accounts(kernel, runnable, running), *check_usage(kernel, live), *check_deadlines(kernel, live)]
    if problems:
        raise InvariantError(f"{len(problems)} kernel invariant(s) broken at version {kernel.version}:\n  "
                             + "\n  ".join(problems))


def check_tasks(kernel: Kernel, live: list[Task]) -> Iterator[str]:
    """State counts are the tasks' states; pids are below next_pid; a task has an exit line once
    it has exited, and a GPU while it runs. (Exited tasks never change: only live ones are read.)"""
    counts = collections.Counter(task.state for task in live)
    counts[State.EXITED] = len(kernel.tasks) - len(live)
    table = kernel.tasks
    if {state: n for state, n in table.state_counts.items() if n} != {state: n for state, n in counts.items() if n}:
        yield f"state counts {table.state_counts} are not the tasks' {dict(counts)}"
    if table and max(table) >= table.next_pid:
        yield f"next pid {table.next_pid} is not past the largest, {max(table)}"
    for task in live:
        if task.exit is not None or (task.gpu is not None) != (task.state is State.RUNNING):
            yield f"task {task.pid}: state {task.state} but exit {task.exit!r} and gpu {task.gpu}"


def check_trees(kernel: Kernel, live: list[Task]) -> Iterator[str]:
    """Parent and children links agree; a child is in its parent's tenant and agent; a root is its
    own agent; woken ancestors are in `changed`. (A link is made when a live task is submitted.)"""
    tasks = kernel.tasks
    for task in live:
        parent = tasks.get(task.parent) if task.parent is not None else None
        if task.parent is None and task.agent != task.pid:
            yield f"task {task.pid}: a root task but agent {task.agent}"
        if task.parent is not None and (parent is None or task.pid not in parent.children):
            yield f"task {task.pid}: parent {task.parent} does not list it as a child"
        if parent is not None and (task.agent, task.tenant) != (parent.agent, parent.tenant):
            yield (f"task {task.pid}: agent/tenant {task.agent}/{task.tenant}, "
                   f"its parent's {parent.agent}/{parent.tenant}")
        for child in task.children:
            if child not in tasks or tasks[child].parent != task.pid:
                yield f"task {task.pid}: child {child} does not name it as parent"
    if unreported := tasks.woken_unreported():
        yield f"tasks {sorted(unreported)}: ancestors woken, but not in `changed` themselves"


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


def check_kv(kv: KVManager, running: list[Task]) -> Iterator[str]:
    """Leases are the running tasks'; a pool's used pages are its private pages plus cached blocks;
    block refcounts are the leases' references; the idle blocks are those with none."""
    if kv.holders.keys() != {task.pid for task in running}:
        yield f"KV leases {sorted(kv.holders)} are not the running tasks"
    private: collections.Counter[int] = collections.Counter()
    refs: list[collections.Counter[bytes]] = [collections.Counter() for _ in kv.pools]
    for task in kv.holders.values():
        if task.kv_pages != len(task.kv_blocks) + task.kv_private or task.kv_gpu is None or task.kv_gpu != task.gpu:
            yield (f"task {task.pid}: lease of {task.kv_pages} pages on gpu {task.kv_gpu} "
                   "is not its blocks and private pages")
            continue
        private[task.kv_gpu] += task.kv_private
        refs[task.kv_gpu].update(task.kv_blocks)
    for gpu, (pool, cache) in enumerate(zip(kv.pools, kv.caches)):
        if pool.pages_used != private[gpu] + len(cache.refs) or pool.pages_used > pool.pages_total:
            yield (f"gpu {gpu}: {pool.pages_used} pages used of {pool.pages_total}, but {private[gpu]} private "
                   f"+ {len(cache.refs)} cached")
        if {key: n for key, n in cache.refs.items() if n} != dict(refs[gpu]):
            yield f"gpu {gpu}: prefix block refcounts are not the leases' references"
        if set(cache.idle) != {key for key, n in cache.refs.items() if n == 0}:
            yield f"gpu {gpu}: idle blocks are not the cached blocks nobody references"


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


def check_usage(kernel: Kernel, live: list[Task]) -> Iterator[str]:
    """A tenant's live count and reserved tokens are its live tasks'; held tasks are its own."""
    tenants, usages = kernel.tenancy.tenants, kernel.tenancy.usage
    want = {name: [0, 0] for name in usages}
    for task in live:
        unserved = task.spec.max_tokens - task.tokens_out + (task.tokens_in if task.started_us is None else 0)
        tenant = want.setdefault(task.tenant, [0, 0])
        tenant[0], tenant[1] = tenant[0] + 1, tenant[1] + unserved
        if task.tenant not in tenants or task.tenant not in usages:
            yield f"task {task.pid}: live in tenant {task.tenant}, which does not exist or has no usage"
    for name, usage in usages.items():
        if [usage.live, usage.reserved] != want[name]:
            yield f"tenant {name}: live {usage.live}, reserved {usage.reserved}; its tasks' are {want[name]}"
        if any(task.tenant != name for task in usage.held):
            yield f"tenant {name}: holds another tenant's task"


def check_deadlines(kernel: Kernel, live: list[Task]) -> Iterator[str]:
    """Every live task with a deadline has it in the deadline heap."""
    due = kernel.tasks.deadline_entries()
    for task in live:
        if task.deadline_at_us is not None and (task.deadline_at_us, task.pid) not in due:
            yield f"task {task.pid}: deadline {task.deadline_at_us} is not in the deadline heap"
