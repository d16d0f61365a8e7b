"""Retention: exited tasks are reaped beyond `retention.tasks` (the tenant keeping the most first) or `task_age_s`.

Beyond `retention.tasks` exited tasks on the node (one bound, so the state stays bounded),
the oldest reapable task of the tenant keeping the most exited tasks goes first
(reaporder.py), so one tenant's churn reaps its own results, not another's; past
`task_age_s`, the oldest reapable task of all. At one event the aged go before any
reaped for the count, which they may bring within `tasks`.

Reaping is part of applying every event (the kernel calls `reap` after it): the limits are
in the kernel's config, which the journal's boot row records, so a replay reaps the same
tasks at the same events and a reaped task costs no journal row. A task goes only once
it has exited and has no children left (tasktable.py), so a parent outlives its children;
its pid is never reused (the table's next_pid only grows). What the kernel forgets of it:
its table entry, its agent's scheduler account once its root task goes, an engine
outage's books of it. What stays: its bill rows and audit lines (kept per tenant and
period, not per task) and its trace lines in the archive. Not here: the trace ring
(trace.py keeps `trace_lines` lines).
"""
from __future__ import annotations

from .config import MemoryRetention
from .counters import Counters
from .engines import EngineWatch
from .sched import Accounts
from .task import State, Task
from .tasktable import TaskTable

TICK_SLACK_US = 1_000_000  # an idle daemon reaps by age once a second at most: each tick is a journal row


class Reaper:
    """Forgets exited tasks beyond the retention limits, and the books kept of them elsewhere."""

    def __init__(self, limits: MemoryRetention, tasks: TaskTable, accounts: Accounts, engines: EngineWatch,
                 counters: Counters):
        self.limits, self._tasks, self._accounts, self._engines, self._counters = limits, tasks, accounts, engines, counters

    def reap(self, now_us: int) -> None:
        """Reap while more exited tasks than `tasks` are kept, or the oldest reapable one is older than `task_age_s`."""
        tasks = self._tasks
        while (task := self._next(now_us)) is not None:
            tasks.reap(task.pid)
            if task.agent == task.pid:  # a root task goes last of its tree: no task of its agent is left
                self._accounts.forget_agent(task.agent)
            self._engines.forget_task(task)
            self._counters.reaped += 1

    def _next(self, now_us: int) -> Task | None:
        """The task to reap now, if any: the oldest reapable of all once older than `task_age_s`; else, past `tasks`
        exited tasks, the oldest reapable of the tenant keeping the most (reaporder.py). The aged go first: reaping
        them may bring the count within `tasks`, and a task reaped for the count first would be one too many."""
        tasks = self._tasks
        oldest = tasks.oldest_reapable()
        if oldest is not None and self._exited_us(oldest) + self.limits.task_age_us <= now_us:
            return oldest
        return tasks.fullest_tenants_reapable() if tasks.count(State.EXITED) > self.limits.tasks else None

    @staticmethod
    def _exited_us(task: Task) -> int:
        assert task.exited_us is not None, "a reapable task has exited"
        return task.exited_us

    def next_us(self) -> int | None:
        """When the oldest reapable task is due by age (a tick then reaps it with those exited in the second after)."""
        oldest = self._tasks.oldest_reapable()
        return None if oldest is None else self._exited_us(oldest) + self.limits.task_age_us + TICK_SLACK_US
