"""ReapOrder: which exited task retention may reap next, kept beside the task table, fairly among tenants.

Retention (retention.py) reaps beyond `retention.tasks` exited tasks, one count over the whole
node so that its state stays bounded, but as cgroup-style fairness would choose: the oldest
reapable task of the tenant keeping the most exited tasks goes first (ties: the tenant whose
oldest reapable task exited first), so one tenant's churn of tiny tasks reaps its own results,
not another's finished task. By `task_age_s` it reaps the oldest reapable task of all. A task is
reapable once it has exited with no children left (the task table lists it here then, and takes
it out as it reaps it); each tenant's reapable tasks are a heap of (exit time µs, pid), and two
LazyHeaps over the tenants that have one give the oldest and the fullest in O(log tenants).
Not here: when to reap (retention.py), what a reap forgets (tasktable.py, retention.py).
"""
from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator

import attrs

from .lazyheap import LazyHeap
from .task import State, Task

Entry = tuple[int, int]  # (exit time µs, pid)


@attrs.define
class ReapOrder:
    """Each tenant's reapable tasks and count of exited tasks kept, and the tenants ordered by age and by count."""

    heaps: dict[str, list[Entry]] = attrs.Factory(dict)  # tenant -> its reapable tasks (a tenant with none: not listed)
    exited: dict[str, int] = attrs.Factory(dict)  # tenant -> its exited tasks kept (none: not listed)
    oldest_first: LazyHeap = attrs.Factory(LazyHeap)  # tenant -> (its oldest entry..., tenant)
    fullest_first: LazyHeap = attrs.Factory(LazyHeap)  # tenant -> (-its exited, its oldest entry..., tenant)
    by_age: Entry | None = None  # the oldest reapable task of all, peeked at each change
    by_count: Entry | None = None  # the oldest reapable task of the fullest tenant, peeked at each change

    @classmethod
    def of(cls, tasks: Iterable[Task]) -> ReapOrder:
        """The order of `tasks` (a snapshot's task table, migrated: migrations.py)."""
        order = cls()
        for task in tasks:
            if task.state is State.EXITED:
                order.exit(task)
        return order

    def exit(self, task: Task) -> bool:
        """`task` exited: its tenant keeps one more exited task, reapable without children; whether it is the
        oldest reapable task of all now."""
        self.exited[task.tenant] = self.exited.get(task.tenant, 0) + 1
        if not task.children:
            return self.add(task)
        self._rank(task.tenant)
        return False

    def add(self, task: Task) -> bool:
        """List the exited `task` (no children left) as reapable; whether it is now the oldest of all."""
        assert task.exited_us is not None, "a reapable task has exited"
        heapq.heappush(self.heaps.setdefault(task.tenant, []), (task.exited_us, task.pid))
        self._rank(task.tenant)
        return self.by_age == (task.exited_us, task.pid)

    def take(self, task: Task) -> None:
        """`task`, its tenant's oldest reapable task, is reaped."""
        heap = self.heaps[task.tenant]
        assert heap[0] == (task.exited_us, task.pid), f"task {task.pid} is not its tenant's oldest reapable"
        heapq.heappop(heap)
        self.exited[task.tenant] -= 1
        if not self.exited[task.tenant]:
            del self.exited[task.tenant]
        if not heap:
            del self.heaps[task.tenant]
        self._rank(task.tenant)

    def oldest(self) -> Entry | None:
        """The reapable task that exited first (pid order among equals), if any."""
        return self.by_age

    def fullest(self) -> Entry | None:
        """The oldest reapable task of the tenant keeping the most exited tasks among those with one, if any."""
        return self.by_count

    def _rank(self, tenant: str) -> None:
        """Place `tenant` in both orders after a change of its heap or count (out of them without a reapable
        task), and peek both: a peek drops stale entries, so it is made only here, where a replay makes it too,
        never by a reader (a snapshot's twin holds the same heaps)."""
        heap = self.heaps.get(tenant)
        if heap:
            self.oldest_first.set(tenant, (*heap[0], tenant))
            self.fullest_first.set(tenant, (-self.exited[tenant], *heap[0], tenant))
        else:
            self.oldest_first.discard(tenant)
            self.fullest_first.discard(tenant)
        self.by_age, self.by_count = self._first(self.oldest_first), self._first(self.fullest_first)

    def _first(self, order: LazyHeap) -> Entry | None:
        """The oldest reapable task of the tenant first in `order`, if any."""
        tenant = order.peek()
        return None if tenant is None else self.heaps[tenant][0]

    def problems(self, tasks: Iterable[Task]) -> Iterator[str]:
        """What disagrees with `tasks` (for TaskTable.index_problems): each tenant's reapable tasks and exited
        count, and the tenants' places in both orders."""
        expected = ReapOrder.of(tasks)
        if {tenant: sorted(heap) for tenant, heap in self.heaps.items()} != \
                {tenant: sorted(heap) for tenant, heap in expected.heaps.items()}:
            yield f"reapable tasks of tenants {sorted(self.heaps)[:5]} are not their exited tasks without children"
        if self.exited != expected.exited:
            yield f"exited tasks kept by tenant {dict(self.exited)} are not the tasks' {dict(expected.exited)}"
        if any({key: mine.prio(key) for key in mine} != {key: theirs.prio(key) for key in theirs} for mine, theirs in
               [(self.oldest_first, expected.oldest_first), (self.fullest_first, expected.fullest_first)]):
            yield "the tenants' places in the reap orders are not their reapable tasks' and exited counts'"
        if (self.oldest(), self.fullest()) != (expected.oldest(), expected.fullest()):
            yield f"the next to reap by age and by count {self.oldest(), self.fullest()} are not " \
                  f"{expected.oldest(), expected.fullest()}"
