"""The deadline boost of the `fair` queue: earliest deadline first, among the tenants within their share.

`Boosts` keeps the queued tasks that have a deadline, by tenant, and says which of them goes
before counter order: the earliest deadline within `boost_us`, among the tenants whose counter
is at most a slice above the least counter of the backlogged tenants (as EEVDF serves the
earliest deadline among the eligible). A tenant that gives every task a near deadline is
boosted until it is a slice ahead, then waits in counter order like any other: deadlines order
a tenant's service, and never add to it. A peek looks at the first WALKED urgent tenants by
deadline, then the least backlogged one (not a sort of them all): where more urgent tenants
than that are ahead, another tenant within waits in counter order. Not the queue (sched.py
`FairQueue`, which asks at each peek) nor expiry (the kernel exits a task whose deadline passes).
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from .invariants import grouped
from .lazyheap import LazyHeap
from .task import Task

if TYPE_CHECKING:
    from .sched import Accounts

NEVER = float("inf")
WALKED = 4  # the tenants a peek looks at in deadline order, at most, before the least backlogged one


class Boosts:
    """The queued deadlines by tenant, and which task a deadline boost serves first (none if `boost_us` is None)."""

    def __init__(self, accounts: Accounts, boost_us: int | None) -> None:
        self.accounts, self.boost_us = accounts, boost_us
        self._of: dict[str, LazyHeap] = {}  # tenant -> its queued tasks with a deadline, by (deadline, pid)
        self._earliest = LazyHeap()  # the tenants in _of, by their earliest (deadline, pid)
        self.at = NEVER  # no boost before then (the earliest deadline seen, less boost_us)

    @classmethod
    def of(cls, tasks: Iterable[Task], accounts: Accounts, boost_us: int | None) -> Boosts:
        """The boosts of the queued `tasks` (kernel/migrations.py: a queue that kept its deadlines in one heap)."""
        boosts = cls(accounts, boost_us)
        for task in tasks:
            if task.deadline_at_us is not None:
                boosts.add(task, task.deadline_at_us)
        return boosts

    def add(self, task: Task, deadline_us: int) -> None:
        """Queue the task's deadline with its tenant's."""
        deadlines = self._of.get(task.tenant)
        if deadlines is None:
            deadlines = self._of[task.tenant] = LazyHeap()
        deadlines.set(task.pid, (deadline_us, task.pid))
        self._earliest.set(task.tenant, (deadlines.prio(deadlines.peek()), task.tenant))
        if self.boost_us is not None:
            self.at = min(self.at, deadline_us - self.boost_us)

    def discard(self, task: Task) -> None:
        """Take the task's deadline out of its tenant's, if it is there (the queue calls it only for a task with
        a deadline: most have none)."""
        deadlines = self._of.get(task.tenant)
        if deadlines is None or task.pid not in deadlines:
            return
        deadlines.discard(task.pid)
        if deadlines:
            self._earliest.set(task.tenant, (deadlines.prio(deadlines.peek()), task.tenant))
        else:
            del self._of[task.tenant]
            self._earliest.discard(task.tenant)

    def boosted(self, now_us: int, least: str, slice_tokens: int) -> int | None:
        """The pid of the earliest deadline within boost_us of the tenants at most a slice (`slice_tokens`) above
        the counter of `least` (the least backlogged tenant), else None; no boost is looked for again until the
        earliest deadline is within boost_us. Its tenant is mostly within; when it is not, the next urgent
        tenants by deadline are looked at, up to WALKED of them in all (not a sort per peek), then `least`."""
        earliest = self._earliest.peek()
        self.at = NEVER if earliest is None else self._urgent_from(earliest)
        if now_us < self.at:
            return None
        tenants = self.accounts.tenants
        most = tenants[least].counter + self.accounts.slice(slice_tokens)
        if tenants[earliest].counter <= most:
            return self._of[earliest].peek()  # type: ignore[no-any-return]  # a pid
        for tenant in [*self._earliest.least(WALKED)[1:], least]:
            if tenant in self._of and now_us >= self._urgent_from(tenant) and tenants[tenant].counter <= most:
                return self._of[tenant].peek()  # type: ignore[no-any-return]  # a pid
        return None

    def _urgent_from(self, tenant: str) -> float:
        """When the tenant's earliest queued deadline comes within boost_us (never without a boost_us)."""
        deadline_us = self._earliest.prio(tenant)[0][0]
        return NEVER if self.boost_us is None else deadline_us - self.boost_us

    def index_problems(self, name: str, members: Iterable[Task]) -> Iterator[str]:
        """Yield what disagrees between the queue `name`'s members and the deadlines kept (for invariants.py)."""
        if {tenant: set(heap) for tenant, heap in self._of.items()} != \
                grouped((task.tenant, task.pid) for task in members if task.deadline_at_us is not None):
            yield f"{name} queue: its deadline heaps are not its members with a deadline, by tenant"
        earliest = {tenant: (heap.prio(heap.peek()), tenant) for tenant, heap in self._of.items()}
        if {tenant: self._earliest.prio(tenant) for tenant in self._earliest} != earliest:
            yield f"{name} queue: its tenants by earliest deadline are not its deadline heaps' earliest"
