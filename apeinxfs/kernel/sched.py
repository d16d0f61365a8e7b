"""Scheduling: entity accounts (virtual token counters) and the run queues of the policies.

- `Accounts`: a counter per tenant and per agent (a root task and its children), charged
  cost * 100 / weight as tokens are served (VTC: input and output tokens cost apart). An
  entity that becomes active again is lifted to the least counter of its active siblings
  (kept in a heap), so idle time is not banked.
- `FlatQueue`: fcfs (arrival order) and greedy (highest prio, then arrival).
- `FairQueue`: least counter first at each level: tenant, then agent, then task (its
  vruntime); `fair` adds a deadline boost (and the kernel's preemption), `vtc` does not.
  The boost (boost.py) goes first only for a tenant within a slice of the least backlogged
  counter: it orders a tenant's service within its fair share, and never takes it beyond.
Every queue keeps lazy-deletion heaps, so push, remove, re-key and peek are O(log n).
The kernel decides when and where tasks run; a queue only says which is next, and why.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import attrs

from .boost import Boosts
from .invariants import grouped
from .lazyheap import LazyHeap
from .task import State, Task

# A level of a task's accounts: (its tenant or agent, that entity's key, the heap of its active
# peers, all its peers by key).
Level = tuple["Entity", Any, LazyHeap, Mapping[Any, "Entity"]]

NICE_0_WEIGHT = 1024
VSCALE = 1024
COUNTER_SCALE = 100


def prio_weight(prio: int) -> int:
    """CFS-style geometric weight: prio 5 is 1024 and each step is worth 1.25x."""
    return round(NICE_0_WEIGHT * 1.25 ** (prio - 5))


def vruntime_delta(tokens: int, weight: int) -> int:
    """Virtual runtime for `tokens` served at `weight`, in 1/1024 of a nice-0 token."""
    return tokens * VSCALE * NICE_0_WEIGHT // weight


@attrs.define
class Entity:
    """A tenant or an agent: its weight, virtual counter and tasks below it."""

    name: str
    weight: int
    counter: float = 0.0
    runnable: int = 0
    running: int = 0

    @property
    def active(self) -> bool:
        return bool(self.runnable or self.running)

    @property
    def state(self) -> str:
        return "running" if self.running else "queued" if self.runnable else "idle"


class Accounts:
    """Counters of every tenant and agent, kept whatever the policy."""

    def __init__(self, tenants: dict[str, int]) -> None:
        self.tenants = {name: Entity(name, weight) for name, weight in tenants.items()}
        self.agents: dict[int, Entity] = {}
        self.active_tenants = LazyHeap()
        self.active_agents = {name: LazyHeap() for name in tenants}
        self.active_weight = 0  # the active tenants' weights summed: what a slot share divides by
        self._levels_of: dict[int, tuple[Level, Level]] = {}  # agent -> its _levels
        self._charged: dict[Any, Level] = {}  # key (a tenant's name, an agent's pid) -> its level, charged since the last settle

    def of_tenant(self, name: str) -> Entity | None:
        """Tenant `name`'s counter and counts, or None if the scheduler has no such tenant."""
        return self.tenants.get(name)

    def tenant(self, task: Task) -> Entity:
        return self.tenants[task.tenant]

    def set_tenant(self, name: str, weight: int) -> None:
        """Add a tenant, or give one a new weight (its counter so far stands)."""
        entity = self.tenants.get(name)
        if entity is None:
            self.tenants[name], self.active_agents[name] = Entity(name, weight), LazyHeap()
            return
        if entity.active:
            self.active_weight += weight - entity.weight
        entity.weight = weight

    def remove_tenant(self, name: str) -> None:
        """Forget a removed tenant (it has no live tasks) and its agents."""
        entity = self.tenants.pop(name)
        del self.active_agents[name]
        for agent, levels in list(self._levels_of.items()):
            if levels[0][0] is entity:
                del self._levels_of[agent]
                self.agents.pop(agent, None)

    def forget_agent(self, agent: int) -> None:
        """Forget an agent none of whose tasks is left (its root task was reaped, after all the others)."""
        self.agents.pop(agent, None)
        self._levels_of.pop(agent, None)
        self._charged.pop(agent, None)  # keyed as charge() keys it: the agent's pid

    def agent(self, task: Task) -> Entity:
        agent = self.agents.get(task.agent)
        if agent is None:
            agent = self.agents[task.agent] = Entity(str(task.agent), task.weight)
        return agent

    def _levels(self, task: Task) -> tuple[Level, Level]:
        """(entity, its key, the heap of its active peers, all peers) for tenant and agent.

        Built once per agent: every task of an agent (a root task and its children) is of its tenant."""
        levels = self._levels_of.get(task.agent)
        if levels is None:
            levels = self._levels_of[task.agent] = (
                (self.tenant(task), task.tenant, self.active_tenants, self.tenants),
                (self.agent(task), task.agent, self.active_agents[task.tenant], self.agents))
        return levels

    def charge(self, task: Task, cost: float) -> None:
        """Add to the counters; the active heaps are brought up to date lazily, before a lift."""
        for level in self._levels(task):
            entity = level[0]
            entity.counter += cost * COUNTER_SCALE / entity.weight
            self._charged[level[1]] = level

    def _settle(self) -> None:
        for entity, key, active, _ in self._charged.values():
            if entity.active:
                active.set(key, (entity.counter, key))
        self._charged.clear()

    def count(self, task: Task, field: str, delta: int) -> list[tuple[Entity, float]]:
        """Add `delta` to runnable/running of the task's entities; return the lifts made.

        An active heap is read only to lift an entity that becomes active, so it is settled
        then; an entity active before and after keeps its entry (current, or in `_charged`)."""
        levels, lifts = self._levels(task), []
        tenant = levels[0][0]
        was_active = tenant.active
        for entity, key, active, peers in levels:
            if delta > 0 and not entity.active:
                self._settle()
                least = active.peek()
                lifts += self._lift(entity, None if least is None else peers[least].counter)
                setattr(entity, field, getattr(entity, field) + delta)
                active.set(key, (entity.counter, key))
            else:
                setattr(entity, field, getattr(entity, field) + delta)
                if not entity.active:
                    active.discard(key)
        if tenant.active != was_active:
            self.active_weight += tenant.weight if tenant.active else -tenant.weight
        return lifts

    def slice(self, slice_tokens: int) -> float:
        """A slice in counter units: `slice_tokens` of service to a tenant of the active tenants' mean
        weight. Weights are ratios (cgroup v2): scaling them all scales every counter step and the
        slice alike, so 1:2:3:4 behaves as 100:200:300:400 does."""
        return slice_tokens * COUNTER_SCALE * len(self.active_tenants) / self.active_weight

    def start(self, task: Task) -> None:
        """The task goes from runnable to running: its tenant and agent stay active, so no lift
        and no heap changes."""
        tenant, agent = self.tenants[task.tenant], self.agents[task.agent]  # both counted when it was queued
        tenant.runnable, tenant.running = tenant.runnable - 1, tenant.running + 1
        agent.runnable, agent.running = agent.runnable - 1, agent.running + 1

    @staticmethod
    def _lift(entity: Entity, floor: float | None) -> list[tuple[Entity, float]]:
        """Raise a newly active entity to `floor`, the least counter of its active peers."""
        if floor is None or floor <= entity.counter:
            return []
        before, entity.counter = entity.counter, floor
        return [(entity, before)]


class FlatQueue:
    """Runnable tasks by `level` (greedy: prio, highest first; fcfs: one level), each level a
    LazyHeap ordered by `key`: a task's level is found among a few, and within it tasks mostly
    arrive in order (pid, arrival), so they join the heap's sorted run rather than its heap."""

    preempts = False

    def __init__(self, name: str, key: Callable[[Task], tuple[Any, ...]], why: str,
                 level: Callable[[Task], int]) -> None:
        self.name, self._key, self._level, self.reason = name, key, level, why  # the same reason for every task
        self._levels, self._by_level = LazyHeap(), dict[int, LazyHeap]()  # the levels with queued tasks; level -> LazyHeap of them
        self._tasks: dict[int, tuple[Task, int]] = {}  # pid -> (task, its level)

    def __len__(self) -> int:
        return len(self._tasks)

    def push(self, task: Task) -> None:
        level = self._level(task)
        self._tasks[task.pid] = task, level
        heap = self._by_level.get(level)
        if heap is None:
            heap = self._by_level[level] = LazyHeap()
        heap.set(task.pid, self._key(task))
        self._levels.set(level, (level,))

    def remove(self, task: Task) -> None:
        queued = self._tasks.pop(task.pid, None)
        if queued is not None:
            heap = self._by_level[queued[1]]
            heap.discard(task.pid)
            if not heap:
                self._levels.discard(queued[1])

    def rekey(self, task: Task) -> None:
        """Counters do not order a flat queue."""

    def why(self, set_aside: Iterable[Task]) -> str:
        """Why the last peek chose its task: the same reason for every task."""
        return self.reason

    def peek(self, now_us: int, slice_tokens: int) -> Task | None:
        """The next task in level order (a flat queue boosts no deadline: `now_us` and `slice_tokens` unused)."""
        level = self._levels.peek()
        return None if level is None else self._tasks[self._by_level[level].peek()][0]

    def tasks(self) -> list[Task]:
        return [self._tasks[pid][0] for level in self._levels.ordered() for pid in self._by_level[level].ordered()]

    def index_problems(self) -> Iterator[str]:
        """Yield what disagrees between the queued tasks and the per-level heaps (for invariants.py)."""
        by_level = {pid: level for level, heap in self._by_level.items() for pid in heap}
        if by_level != {pid: level for pid, (_task, level) in self._tasks.items()}:
            yield f"{self.name} queue: its level heaps do not hold exactly its tasks"
        if set(self._levels) != {level for level, heap in self._by_level.items() if heap}:
            yield f"{self.name} queue: its levels are not those with queued tasks"


class FairQueue:
    """Least counter first: tenant, then agent within it, then task within that.

    A tenant's preempted tasks go before its agents' new work, oldest first: they hold
    service already paid for (swapped KV, tokens generated), and a tenant that always started
    new requests instead would spread its share over ever more unfinished ones. An agent's
    queued tasks are the task itself while it is the only one (most agents: a root task
    without children), else a LazyHeap of them by vruntime. A deadline boost (`boost_us` not
    None) goes before that order for a tenant within its share (boost.py)."""

    def __init__(self, name: str, accounts: Accounts, boost_us: int | None, preempts: bool) -> None:
        self.name, self.accounts, self.boost_us, self.preempts = name, accounts, boost_us, preempts
        self._tenants, self._agents = LazyHeap(), dict[str, LazyHeap]()  # tenant -> its agents with queued tasks
        self._tasks: dict[int, Task | LazyHeap] = {}  # agent -> its one queued task, or a heap of them
        self._members, self._boosts = dict[int, Task](), Boosts(accounts, boost_us)
        self._resumes: dict[str, LazyHeap] = {}  # tenant -> its preempted tasks, by pid
        self._chosen: str | None = None  # the tenant whose task the last peek chose; None: a deadline boost

    def __len__(self) -> int:
        return len(self._members)

    def push(self, task: Task) -> None:
        self._members[task.pid] = task
        if task.deadline_at_us is not None:
            self._boosts.add(task, task.deadline_at_us)
        if task.state is State.PREEMPTED:
            self._resumes.setdefault(task.tenant, LazyHeap()).set(task.pid, (task.pid,))
        else:
            self._queue_in_agent(task)
            agents = self._agents.get(task.tenant)
            if agents is None:
                agents = self._agents[task.tenant] = LazyHeap()
            agents.set(task.agent, (self.accounts.agent(task).counter, task.agent))
        self.rekey(task)

    def _queue_in_agent(self, task: Task) -> None:
        """Add the task to its agent's queued tasks."""
        tasks = self._tasks.get(task.agent)
        if tasks is None:
            self._tasks[task.agent] = task
            return
        if not isinstance(tasks, LazyHeap):  # a second task: the agent's tasks need a heap
            alone, tasks = tasks, LazyHeap()
            tasks.set(alone.pid, (alone.vruntime, alone.pid))
            self._tasks[task.agent] = tasks
        tasks.set(task.pid, (task.vruntime, task.pid))

    def remove(self, task: Task) -> None:
        if self._members.pop(task.pid, None) is None:
            return
        if task.deadline_at_us is not None:
            self._boosts.discard(task)
        resumes = self._resumes.get(task.tenant)
        if resumes and task.pid in resumes:
            resumes.discard(task.pid)
        elif self._unqueue_from_agent(task):  # the agent has nothing queued: it leaves its tenant's heap
            self._agents[task.tenant].discard(task.agent)
        if not self._queued(task.tenant):
            self._tenants.discard(task.tenant)

    def _queued(self, tenant: str) -> bool:
        """Whether the tenant has a task in the queue: a preempted one or an agent's."""
        return bool(self._resumes.get(tenant) or self._agents.get(tenant))

    def _unqueue_from_agent(self, task: Task) -> bool:
        """Take the task out of its agent's queued tasks; whether none are left."""
        tasks = self._tasks[task.agent]
        if isinstance(tasks, LazyHeap):
            tasks.discard(task.pid)
            if tasks:
                return False
        del self._tasks[task.agent]
        return True

    def rekey(self, task: Task) -> None:
        """Re-order the task's tenant (and agent) after their counters changed, if they have queued work."""
        if not self._queued(task.tenant):
            return
        self._tenants.set(task.tenant, (self.accounts.tenant(task).counter, task.tenant))
        if task.agent in self._tasks:
            self._agents[task.tenant].set(task.agent, (self.accounts.agent(task).counter, task.agent))

    def peek(self, now_us: int, slice_tokens: int) -> Task | None:
        """An urgent deadline of a tenant within `slice_tokens` of the least counter (boost.py), else least first."""
        if now_us >= self._boosts.at and \
                (urgent := self._boosts.boosted(now_us, self._tenants.peek(), slice_tokens)) is not None:
            self._chosen = None
            return self._members[urgent]
        tenant = self._chosen = self._tenants.peek()
        if tenant is None:
            return None
        resumes = self._resumes.get(tenant)
        if resumes:
            return self._members[resumes.peek()]
        tasks = self._tasks[self._agents[tenant].peek()]
        return tasks if not isinstance(tasks, LazyHeap) else self._members[tasks.peek()]

    def why(self, set_aside: Iterable[Task]) -> str:
        """Why the last peek chose its task: worded only when asked (at a dispatch, before the queue
        changes), not at every peek. `set_aside`: queued tasks a dispatch pass took out of the queue for
        the while (backfill, kernel/moves.py); their tenants are backlogged too."""
        tenant = self._chosen
        if tenant is None:
            return "deadline boost"
        backlogged = len(self._tenants) + len({t.tenant for t in set_aside if t.tenant not in self._tenants})
        return f"least counter: tenant {tenant} of {backlogged} backlogged"

    def tasks(self) -> list[Task]:
        return sorted(self._members.values(), key=lambda t: (self.accounts.tenant(t).counter, t.pid))

    def index_problems(self) -> Iterator[str]:
        """Yield what disagrees between the queued tasks and the tenant, agent, task, resume and
        deadline heaps (for invariants.py)."""
        members = self._members.values()
        resumed = {tenant: set(heap) for tenant, heap in self._resumes.items() if heap}
        if resumed != grouped((task.tenant, task.pid) for task in members if task.state is State.PREEMPTED):
            yield f"{self.name} queue: its resume heaps are not its preempted members"
        new = [task for task in members if task.state is not State.PREEMPTED]
        queued = {agent: set(tasks) if isinstance(tasks, LazyHeap) else {tasks.pid} for agent, tasks in self._tasks.items()}
        if queued != grouped((task.agent, task.pid) for task in new):
            yield f"{self.name} queue: its agents' queued tasks are not its members"
        by_tenant = {tenant: set(heap) for tenant, heap in self._agents.items() if heap}
        if by_tenant != grouped((task.tenant, task.agent) for task in new):
            yield f"{self.name} queue: its tenants' agent heaps are not the agents with queued tasks"
        if set(self._tenants) != set(by_tenant) | set(resumed):
            yield f"{self.name} queue: its tenant heap is not the tenants with queued tasks"
        yield from self._boosts.index_problems(self.name, members)


def make_queue(policy: str, accounts: Accounts, boost_us: int) -> FairQueue | FlatQueue:
    """The run queue of `policy`: fair | vtc | fcfs | greedy; `fair` boosts deadlines within `boost_us` for the
    tenants within a slice of the least backlogged counter (boost.py; the slice is the peek's)."""
    if policy == "fair":
        return FairQueue("fair", accounts, boost_us, preempts=True)
    if policy == "vtc":
        return FairQueue("vtc", accounts, None, preempts=False)
    if policy == "fcfs":
        return FlatQueue("fcfs", _arrival, "earliest arrival", level=_one_level)
    return FlatQueue("greedy", _pid, "highest priority", level=_higher_prio_first)


# A flat queue's keys and levels are named functions, not lambdas, so that a queue can be
# pickled into a snapshot (kernel/state.py).
def _arrival(task: Task) -> tuple[int, int]:
    return task.submitted_us, task.pid


def _pid(task: Task) -> tuple[int]:
    return (task.pid,)


def _one_level(task: Task) -> int:
    return 0


def _higher_prio_first(task: Task) -> int:
    return -task.spec.prio


POLICIES = ("fair", "vtc", "fcfs", "greedy")
