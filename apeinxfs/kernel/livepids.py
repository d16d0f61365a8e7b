"""Each tenant's live pids, kept beside the task table as tasks come and exit, and when each last changed.

`LivePids` is what a node's live keys are read from (cluster/records.py `LiveRanges`) without a walk of the
whole task table: `changes` counts every change of a tenant's live pids, and `marks` holds, for each tenant
listed, the count at its last change, so a reader that kept `changes` at its last look reads again only the
tenants `changed_since` then (a tenant no longer listed has no live task left). Not here: which tasks are
live; the task table (tasktable.py) calls `add` when a task comes and `discard` when it exits.
The counters (`changes`, the marks and their order) count the changes this index saw: an index built from a
snapshot's tasks (`of`, a migration) starts them afresh, so two kernels of the same tasks may differ there.
No decision of the kernel reads them, only a reader's own look (LiveRanges, which reads a table it did not
look at last from the start), so they are not part of the state two kernels are compared by: the pids are.
"""
from __future__ import annotations

import collections
from collections.abc import Iterable, Iterator

import attrs

from .task import State, Task


@attrs.define
class LivePids:
    """Tenant -> its live pids (a tenant with none is not listed), with the marks of their changes."""

    by_tenant: dict[str, set[int]] = attrs.Factory(dict)
    marks: dict[str, int] = attrs.Factory(dict)  # tenant -> `changes` at its last change (listed tenants alone)
    changes: int = 0  # changes of a tenant's live pids so far

    @classmethod
    def of(cls, tasks: Iterable[Task]) -> LivePids:
        """The index of `tasks`' live ones (a snapshot's task table, migrated: migrations.py), its counters
        afresh."""
        index = cls()
        for task in tasks:
            if task.state is not State.EXITED:
                index.add(task.tenant, task.pid)
        return index

    def add(self, tenant: str, pid: int) -> None:
        self.by_tenant.setdefault(tenant, set()).add(pid)
        self._mark(tenant)

    def discard(self, tenant: str, pid: int) -> None:
        """Pid `pid` of `tenant` is live no more; the tenant is no longer listed once it has none."""
        pids = self.by_tenant[tenant]
        pids.discard(pid)
        self._mark(tenant)
        if not pids:
            del self.by_tenant[tenant], self.marks[tenant]

    def _mark(self, tenant: str) -> None:
        self.changes += 1
        self.marks[tenant] = self.changes

    def changed_since(self, changes: int) -> Iterator[str]:
        """The listed tenants whose live pids changed after `changes` (a value of `changes`)."""
        return (tenant for tenant, mark in self.marks.items() if mark > changes)

    def problems(self, live: list[Task]) -> Iterator[str]:
        """What disagrees with the `live` tasks (for TaskTable.index_problems): each tenant's pids are its live
        tasks', every listed tenant has a mark, and none is past `changes`."""
        found: dict[str, set[int]] = collections.defaultdict(set)
        for task in live:
            found[task.tenant].add(task.pid)
        if wrong := sorted(tenant for tenant in self.by_tenant.keys() | found.keys()
                           if self.by_tenant.get(tenant) != found.get(tenant)):
            yield f"live pids of tenants {wrong[:5]} are not their live tasks'"
        if self.marks.keys() != self.by_tenant.keys() or any(mark > self.changes for mark in self.marks.values()):
            yield (f"live pids' marks {sorted(self.marks.items())[:5]} are not one per tenant listed, "
                   f"up to {self.changes}")
