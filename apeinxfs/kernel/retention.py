"""Retention: exited tasks are reaped, the oldest first, beyond `retention.tasks` or `task_age_s`.

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
        tasks, keep, age_us = self._tasks, self.limits.tasks, self.limits.task_age_us
        while (oldest := tasks.oldest_reapable()) is not None and (
                tasks.count(State.EXITED) > keep or self._exited_us(oldest) + age_us <= now_us):
            tasks.reap(oldest.pid)
            if oldest.agent == oldest.pid:  # a root task goes last of its tree: no task of its agent is left
                self._accounts.forget_agent(oldest.agent)
            self._engines.forget_task(oldest)
            self._counters.reaped += 1

    @staticmethod
    def _exited_us(task: Task) -> int:
        assert task.exited_us is not None, "a reapable task has exited"
        return task.exited_us

    def next_us(self) -> int | None:
        """When the oldest reapable task is due by age (a tick then reaps it with those exited in the second after)."""
        oldest = self._tasks.oldest_reapable()
        return None if oldest is None else self._exited_us(oldest) + self.limits.task_age_us + TICK_SLACK_US
